"""OCR for scans: rapidocr 3.10 with its bundled default models on onnxruntime, never the network.

Only the default model config is used: any other model type makes rapidocr download from modelscope.cn,
which an offline server must never do.  The engine is loaded once per process (lazy singleton); pages are
OCR'd one at a time (a lock), so the offline server's worker threads share one model in memory.

Speed: nearly all the time goes into text recognition, so the recogniser runs with one onnxruntime thread
per call and the page's text crops are split over ``OCR_THREADS`` Python threads (onnxruntime releases the
GIL), which keeps both cores busy on the many small crops; detection (one large image) uses onnxruntime's
own thread pool.  Crops are not padded to rapidocr's 320-pixel minimum width (short numbers and words are
most of an invoice), which saves about a quarter of the recognition work without changing the text.

Words: the recogniser's CTC output gives every character a position in its crop, so each word gets its own
x-range (good for table columns) instead of a share of the line by character count.  Coordinates are scaled
to PDF points (A4 width = 595 pt) so the label/table rules see the same geometry as a text layer.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .textlayer import PageText, Word, group_lines

log = logging.getLogger(__name__)

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()
_PAGE_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_A4_WIDTH_PT = 595.0
OCR_DPI = 200
OCR_THREADS = max(1, min(2, os.cpu_count() or 1))
_REC_MIN_WIDTH = 48  # rapidocr pads every crop to >= 320 px wide; the model does not need it


class _Engine:
    """Detection and recognition from rapidocr's default bundled models, configured for throughput."""

    def __init__(self) -> None:
        from rapidocr import RapidOCR

        base = {"Global.log_level": "error", "Global.use_cls": False}
        self.det_ocr = RapidOCR(params=base)
        self.rec_ocr = RapidOCR(
            params={
                **base,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "Rec.rec_img_shape": [3, 48, _REC_MIN_WIDTH],
            }
        )
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self.text_score = float(self.det_ocr.cfg.Global.text_score)

    def __call__(self, image: Any) -> Any:  # the plain rapidocr call, for callers that want its output
        return self.det_ocr(image)


def get_engine() -> Any:
    """The process-wide OCR engine (rapidocr default bundled models; created on first use)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _ENGINE_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=OCR_THREADS, thread_name_prefix="ocr-rec")
        return _POOL


def _recognise(engine: _Engine, crops: list[Any]) -> list[tuple[str, float, Any]]:
    """(text, score, word info) per crop; crops sorted by width and dealt round-robin to the threads."""
    from rapidocr.ch_ppocr_rec import TextRecInput

    rec = engine.rec_ocr._load_rec_model()
    order = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / max(crops[i].shape[0], 1))
    shards = [order[k::OCR_THREADS] for k in range(OCR_THREADS)]
    shards = [s for s in shards if s]

    def run(indices: list[int]) -> Any:
        return rec(TextRecInput(img=[crops[i] for i in indices], return_word_box=True))

    results: list[tuple[str, float, Any]] = [("", 0.0, None)] * len(crops)
    outs = list(_pool().map(run, shards)) if len(shards) > 1 else [run(s) for s in shards]
    for indices, out in zip(shards, outs, strict=True):
        for i, text, score, info in zip(indices, out.txts, out.scores, out.word_results, strict=True):
            results[i] = (str(text), float(score), info)
    return results


def _word_spans(text: str, info: Any, width: float) -> list[tuple[str, float, float]]:
    """Words of a recognised line with x-ranges (crop pixels) from the CTC character positions.

    Falls back to sharing the width by character count when the positions are missing or inconsistent.
    """
    tokens = text.split()
    if not tokens:
        return []
    words = getattr(info, "words", None) or []
    cols = getattr(info, "word_cols", None) or []
    length = float(getattr(info, "line_txt_len", 0.0) or 0.0)
    positions: list[float] = []
    if length > 0 and len(words) == len(cols):
        per = width / length
        for chars, ccols in zip(words, cols, strict=True):
            positions.extend((c + 0.5) * per for c in ccols[: len(chars)])
    if len(positions) != sum(len(t) for t in tokens):
        total = sum(len(t) for t in tokens) + (len(tokens) - 1)
        per_char = width / max(total, 1)
        out, pos = [], 0
        for token in tokens:
            out.append((token, pos * per_char, (pos + len(token)) * per_char))
            pos += len(token) + 1
        return out
    pitch = width / max(len(positions) + len(tokens) - 1, 1)  # a character's width, roughly
    out = []
    k = 0
    for token in tokens:
        first, last = positions[k], positions[k + len(token) - 1]
        out.append((token, max(0.0, first - pitch / 2), min(width, last + pitch / 2)))
        k += len(token)
    return out


def _deskew(boxes: Any, cx: float, cy: float) -> Any:
    """Rotate box corners so the page's text lines are horizontal.

    A scan tilted by a degree moves the right end of an A4 line by ~10 pt, more than a line height, so a
    label and its amount at the far right would fall on different lines.  The detector's boxes are rotated
    rectangles (corners clockwise from top-left); the median slope of the wide ones is the page skew.
    """
    import numpy as np

    if len(boxes) == 0:
        return boxes
    dx = boxes[:, 1, 0] - boxes[:, 0, 0]
    dy = boxes[:, 1, 1] - boxes[:, 0, 1]
    tall = np.hypot(boxes[:, 3, 0] - boxes[:, 0, 0], boxes[:, 3, 1] - boxes[:, 0, 1])
    wide = (dx > 3 * np.maximum(tall, 1.0)) & (dx > 0)
    if not wide.any():
        return boxes
    angle = float(np.median(np.arctan2(dy[wide], dx[wide])))
    if abs(angle) < 1e-4 or abs(angle) > 0.2:  # level already, or not a small scan tilt
        return boxes
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = boxes[..., 0] - cx, boxes[..., 1] - cy
    out = np.empty_like(boxes)
    out[..., 0] = cx + x * cos + y * sin
    out[..., 1] = cy - x * sin + y * cos
    return out


def _detect_and_read(image: Any) -> tuple[Any, list[float], list[tuple[str, float, Any]], int, int]:
    """Raw OCR of one image: text boxes (image pixels), crop widths, (text, score, CTC info) per box."""
    import numpy as np
    from rapidocr.utils.process_img import map_boxes_to_original

    img = np.asarray(image.convert("RGB"))
    height, width = img.shape[:2]
    engine = get_engine()
    with _PAGE_LOCK:
        det = engine.det_ocr
        prepared, op_record = det.preprocess_img(img)
        try:
            crops, det_res = det.detect_and_crop(prepared, op_record)
        except Exception as exc:  # rapidocr raises when it finds no text at all
            log.debug("no text detected: %s", exc)
            return np.zeros((0, 4, 2), dtype=np.float32), [], [], width, height
        boxes = map_boxes_to_original(np.array(det_res.boxes, dtype=np.float32), op_record, height, width)
        recognised = _recognise(engine, crops)
    return boxes, [float(c.shape[1]) for c in crops], recognised, width, height


def ocr_image(image: Any, page_number: int = 1) -> PageText:
    """OCR one PIL image into positioned words grouped into lines (points, top-left origin)."""
    boxes, crop_widths, recognised, width, height = _detect_and_read(image)
    scale = _A4_WIDTH_PT / max(width, 1)
    min_score = get_engine().text_score
    words: list[Word] = []
    boxes = _deskew(boxes, width / 2, height / 2)
    for box, crop_w, (text, score, info) in zip(boxes, crop_widths, recognised, strict=True):
        if not text.strip() or score < min_score:
            continue
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        x0, x1 = min(xs), max(xs)
        # OCR boxes carry padding; shrink vertically so neighbouring lines do not merge.
        top, bottom = min(ys), max(ys)
        pad = (bottom - top) * 0.12
        to_page = (x1 - x0) / max(crop_w, 1.0)
        for token, a, b in _word_spans(text, info, crop_w):
            words.append(
                Word(token, (x0 + a * to_page) * scale, (x0 + b * to_page) * scale, (top + pad) * scale,
                     (bottom - pad) * scale)
            )  # fmt: skip
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
