"""OCR for scans: rapidocr 3.10 with its bundled default models on onnxruntime, never the network.

Only the default model config is used: any other model type makes rapidocr download from modelscope.cn,
which an offline server must never do.  The engine is loaded once per process (lazy singleton) and calls
are serialised, so the offline server's worker threads share one model in memory.

OCR returns text *lines* with boxes; words get x-ranges apportioned by character count, which is close
enough for column assignment and keeps OCR ~4x faster than rapidocr's per-word boxes.  Coordinates are
scaled to PDF points (A4 width = 595 pt) so the label/table rules see the same geometry as a text layer.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .textlayer import PageText, Word, group_lines

log = logging.getLogger(__name__)

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()
_A4_WIDTH_PT = 595.0
OCR_DPI = 200


def get_engine() -> Any:
    """The process-wide RapidOCR instance (default bundled models; created on first use)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            from rapidocr import RapidOCR

            _ENGINE = RapidOCR(params={"Global.log_level": "error", "Global.use_cls": False})
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        return _ENGINE


def _line_words(text: str, x0: float, x1: float, top: float, bottom: float) -> list[Word]:
    """Split an OCR line into words, giving each an x-range proportional to its characters."""
    tokens = text.split()
    if not tokens:
        return []
    total = sum(len(t) for t in tokens) + (len(tokens) - 1)
    per_char = (x1 - x0) / max(total, 1)
    words: list[Word] = []
    pos = 0
    for token in tokens:
        start = x0 + pos * per_char
        words.append(Word(token, start, start + len(token) * per_char, top, bottom))
        pos += len(token) + 1
    return words


def ocr_image(image: Any, page_number: int = 1) -> PageText:
    """OCR one PIL image into positioned words grouped into lines (points, top-left origin)."""
    import numpy as np

    img = image.convert("RGB")
    width, height = img.size
    scale = _A4_WIDTH_PT / max(width, 1)
    engine = get_engine()
    with _ENGINE_LOCK:
        out = engine(np.asarray(img))
    words: list[Word] = []
    boxes = getattr(out, "boxes", None)
    txts = getattr(out, "txts", None)
    if boxes is not None and txts is not None:
        for box, text in zip(boxes, txts, strict=False):
            xs = [float(p[0]) for p in box]
            ys = [float(p[1]) for p in box]
            # OCR boxes carry padding; shrink vertically so neighbouring lines do not merge.
            top, bottom = min(ys), max(ys)
            pad = (bottom - top) * 0.12
            words.extend(
                _line_words(
                    str(text), min(xs) * scale, max(xs) * scale, (top + pad) * scale, (bottom - pad) * scale
                )
            )
    return PageText(page_number, width * scale, height * scale, group_lines(words))


def ocr_images(images: list[Any]) -> list[PageText]:
    """OCR several page images; a page that fails comes back empty rather than sinking the document."""
    pages: list[PageText] = []
    for index, image in enumerate(images):
        try:
            pages.append(ocr_image(image, index + 1))
        except Exception as exc:  # onnxruntime/opencv errors on odd images must not crash a task
            log.warning("OCR failed on page %d: %s", index + 1, exc)
            pages.append(PageText(index + 1, 0.0, 0.0, []))
    return pages
