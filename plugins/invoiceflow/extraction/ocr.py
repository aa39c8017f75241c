"""OCR for scans: rapidocr 3.10 with its bundled default models on onnxruntime, never the network.

Only the default model config is used: any other model type makes rapidocr download from modelscope.cn,
which an offline server must never do (detection size and thresholds are settings, not other models).
The engine is loaded once per process (lazy singleton) and shared by every thread; ``OCR_THREADS`` pages
are in flight at once (``ocr_images`` runs a document's pages side by side, and so do concurrent callers).

Speed (2 cores): every model call runs on one onnxruntime thread and the parallelism comes from Python
threads (onnxruntime releases the GIL), which wastes nothing on thread spinning when the cores are shared.

* Detection runs on the page scaled to ``DET_MAX_SIDE`` (a third of the work at rapidocr's default size);
  the boxes come back in page pixels and the crops are cut from the full 200-dpi page, so recognition
  loses nothing.  A lower box threshold keeps isolated one-character cells ("1" in a quantity column) that
  the smaller detection image makes fainter.
* Recognition cost is proportional to the crops' width at the model's 48-px height, padding included:
  crops are not padded to rapidocr's 320-px minimum, a batch only takes crops of nearly equal width, and
  vertical text (margin notes) is not read at all.

Words: the recogniser's CTC output gives every character a column in its crop, so each word gets its own
x-range (good for table columns).  The output is decoded here (not by rapidocr) to repair what the model
gets wrong on scans: dropped spaces between words, middle dots for gaps, specks read as dots (``_decode``).
Coordinates are scaled to PDF points (A4 width = 595 pt), and word boxes are trimmed to about the text
height a PDF text layer reports, so the label/table rules see the same geometry as on a text layer.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .textlayer import PageText, Word, group_lines

log = logging.getLogger(__name__)

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()
_POOLS: dict[str, ThreadPoolExecutor] = {}
_A4_WIDTH_PT = 595.0
OCR_DPI = 200
OCR_THREADS = max(1, min(2, os.cpu_count() or 1))
_PAGE_SLOTS = threading.BoundedSemaphore(OCR_THREADS)  # pages in flight at once, whichever thread asks
_REC_MIN_WIDTH = 48  # rapidocr pads every crop to >= 320 px wide; the model does not need it
_REC_BATCH = 6
_BATCH_PADDING = 1.05  # a batch may cost at most 5 % more than its crops' own widths
DET_MAX_SIDE = 1280  # detection image's long side (rapidocr default: the page's, up to 2000 px)
DET_BOX_THRESH = 0.3  # rapidocr default 0.5
# CTC decoding (columns are the recogniser's output steps, 8 input pixels each)
SOFT_SPACE = 0.02  # a blank run where the space class reaches this probability is a space
SOFT_GAP_MIN = 6  # ... and so is a run this many columns wide,
SOFT_GAP_FACTOR = 2.0  # or this many times the line's usual step from one character to the next,
_GAP_EXTRA = 2  # or this many columns more than the usual step with a faint space in it
_FAINT_SPACE = 0.004
_SPACE_LIKE = {"·", "\u2219"}  # the recogniser reads some word gaps as a middle dot ("Zitronensäure·100ml")
_UNSURE_MARK = 0.6  # a dot or comma read with less confidence than this may be a speck of noise
_CASE_ALIKE = set("cosuvwxz")  # lower case looks like upper case, only smaller
_WORD_PAD = 0.2  # share of a detector box's height above and below the text (a text layer's word box)


class _Engine:
    """Detection and recognition from rapidocr's default bundled models, configured for throughput."""

    def __init__(self) -> None:
        from rapidocr import RapidOCR

        base = {"Global.log_level": "error", "Global.use_cls": False}
        self.det_ocr = RapidOCR(
            params={
                **base,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "Det.limit_type": "max",
                "Det.limit_side_len": DET_MAX_SIDE,
                "Det.box_thresh": DET_BOX_THRESH,
            }
        )
        self.rec_ocr = RapidOCR(
            params={
                **base,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "Rec.rec_img_shape": [3, 48, _REC_MIN_WIDTH],
            }
        )
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self.text_score = float(self.det_ocr.cfg.Global.text_score)
        self.det_ocr._load_det_model()  # both models loaded now, not inside the first page's time
        rec = self.rec_ocr._load_rec_model()
        self.charset: list[str] = list(rec.postprocess_op.character)
        self.space_id = len(self.charset) - 1  # rapidocr appends the space class last

    def __call__(self, image: Any) -> Any:  # the plain rapidocr call, for callers that want its output
        return self.det_ocr(image)


def get_engine() -> Any:
    """The process-wide OCR engine (rapidocr default bundled models; created on first use)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def _pool(name: str) -> ThreadPoolExecutor:
    """The process-wide thread pool for one kind of OCR work (``rec``: text crops, ``page``: whole pages),
    created on first use. Pages and their crops need separate pools: a page waits for its crops."""
    with _ENGINE_LOCK:
        if name not in _POOLS:
            _POOLS[name] = ThreadPoolExecutor(max_workers=OCR_THREADS, thread_name_prefix=f"ocr-{name}")
        return _POOLS[name]


@dataclass
class _Read:
    """Greedy CTC output of one crop, over the columns that cover the crop (not the batch padding).

    ``best`` is the winning class per output column, ``prob`` its probability and ``space`` the probability
    of the space class; one column spans ``width / len(best)`` crop pixels.
    """

    best: Any
    prob: Any
    space: Any


def _rec_batches(widths: list[float]) -> list[list[int]]:
    """Crop indexes grouped into recogniser batches, narrowest first.

    Every crop in a batch is padded to the widest one and padding costs as much as text, while a bigger
    batch saves little per column: a batch only takes crops whose padded total stays within
    ``_BATCH_PADDING`` of their own widths.
    """
    batches: list[list[int]] = []
    total = 0.0
    for i in sorted(range(len(widths)), key=lambda k: widths[k]):
        width = widths[i]
        if batches and len(batches[-1]) < _REC_BATCH:
            batch = batches[-1]
            if width * (len(batch) + 1) <= _BATCH_PADDING * (total + width):
                batch.append(i)
                total += width
                continue
        batches.append([i])
        total = width
    return batches


def _recognise(engine: _Engine, crops: list[Any]) -> list[_Read]:
    """Run the recogniser on every crop: batches of similar width, shared out evenly over the threads."""
    import numpy as np

    rec = engine.rec_ocr._load_rec_model()
    _channels, img_h, min_w = rec.rec_image_shape
    ratios = [c.shape[1] / max(c.shape[0], 1) for c in crops]
    batches = _rec_batches([max(r, min_w / img_h) for r in ratios])
    # Biggest batches first, each to the thread with the least work so far, so the threads finish together.
    shards: list[list[list[int]]] = [[] for _ in range(OCR_THREADS)]
    loads = [0.0] * OCR_THREADS
    for batch in sorted(batches, key=lambda b: -len(b) * max(ratios[i] for i in b)):
        k = loads.index(min(loads))
        shards[k].append(batch)
        loads[k] += len(batch) * max(max(ratios[i] for i in batch), min_w / img_h)
    shards = [s for s in shards if s]
    results: list[_Read | None] = [None] * len(crops)

    def run(shard: list[list[int]]) -> None:
        for batch in shard:
            max_ratio = max(min_w / img_h, *(ratios[i] for i in batch))
            tensor = np.concatenate([rec.resize_norm_img(crops[i], max_ratio)[np.newaxis] for i in batch])
            preds = rec.session(tensor.astype(np.float32))
            best = preds.argmax(axis=2)
            prob = np.take_along_axis(preds, best[..., np.newaxis], axis=2)[..., 0]
            space = preds[:, :, engine.space_id]
            cols = preds.shape[1]
            for k, i in enumerate(batch):
                used = max(1, min(cols, round(cols * ratios[i] / max_ratio)))
                results[i] = _Read(best[k, :used].copy(), prob[k, :used].copy(), space[k, :used].copy())

    if len(shards) > 1:
        list(_pool("rec").map(run, shards))
    else:
        for shard in shards:
            run(shard)
    return [r if r is not None else _Read(np.zeros(1, int), np.zeros(1), np.zeros(1)) for r in results]


def _decode(read: _Read, charset: list[str], space_id: int) -> tuple[str, float, list[tuple[str, float]]]:
    """Text, mean character probability and (character, column) list of one crop (greedy CTC).

    General repairs of what the recogniser gets wrong on scans:

    * it often drops the space between two words ("BaurechnungNr.", "42389vom") although the blank
      columns between them show it: the space class is the runner-up there (probability >=
      ``SOFT_SPACE``), or the run of blank columns is much wider than the line's usual step from one
      character to the next.  Either reads as a space, except inside a number ("518,99");
    * it reads some word gaps as a middle dot ("Zitronensäure·100ml");
    * specks of scanner noise become dots: a lone "." word, a dot that starts a word (".rein"), and an
      unsure dot after a word, before a number or inside a number that has its real separator further on
      ("2.60,00"); a sure dot between a word and a number ends the word ("Nr.4711" reads "Nr. 4711");
    * letters whose capital has the same shape come out in the wrong case ("zUGFeRD"), and a capital I
      in a code comes out as a lower-case l ("Cl-2024-3886").
    """
    best, prob, space = read.best.tolist(), read.prob.tolist(), read.space.tolist()
    # (character, column, best space probability in the blank run before it, character probability)
    raw: list[tuple[str, int, float, float]] = []
    prev = 0
    gap_space = 0.0
    for t, cls in enumerate(best):
        if cls == 0:  # blank
            gap_space = max(gap_space, space[t])
            prev = 0
            continue
        if cls == prev:
            continue
        prev = cls
        if cls == space_id or charset[cls] in _SPACE_LIKE:
            raw.append((" ", t, 1.0, 1.0))
        else:
            raw.append((charset[cls], t, gap_space, prob[t]))
        gap_space = 0.0
    steps = sorted(b[1] - a[1] for a, b in pairwise(raw) if a[0] != " " and b[0] != " ")
    step = steps[len(steps) // 2] if steps else 3
    wide = max(SOFT_GAP_MIN, SOFT_GAP_FACTOR * step)
    chars: list[tuple[str, float, float]] = []  # (character, column, probability)
    for k, (ch, col, gap, p) in enumerate(raw):
        if ch == " ":
            if chars and chars[-1][0] != " ":
                chars.append((" ", float(col), 1.0))
            continue
        if chars and chars[-1][0] != " ":
            last_ch, last_col = chars[-1][0], raw[k - 1][1]
            in_number = ch.isdigit() and last_ch in ".,'" and len(chars) > 1 and chars[-2][0].isdigit()
            far = col - last_col
            if not in_number and (
                gap >= SOFT_SPACE or far >= wide or (far >= step + _GAP_EXTRA and gap >= _FAINT_SPACE)
            ):
                chars.append((" ", col - 0.5, 1.0))
        chars.append((ch, float(col), p))
    text = "".join(c[0] for c in chars)
    drop: set[int] = set()
    for m in re.finditer(r"(?:^|(?<= ))\.(?= |$)|(?:^|(?<= ))\.(?=[^\W\d_])", text):
        drop.add(m.start())  # a lone dot, or a dot stuck to the front of a word
    for m in re.finditer(r"(?:^|(?<= ))[.,](?=\d)|(?<=\d)[.,](?=\d+[.,]\d)|(?<=\S)\.(?= |$)", text):
        if chars[m.start()][2] < _UNSURE_MARK:
            drop.add(m.start())  # an unsure dot: before a number, ahead of its real separator, after a word
    glued: set[int] = set()
    for m in re.finditer(r"(?<=[^\W\d_])\.(?=\d)", text):
        _ch, col, p = chars[m.start()]
        if p < _UNSURE_MARK:  # "Musterstraße.12": a speck in the gap between two words
            chars[m.start()] = (" ", col, 1.0)
        else:  # "Datum.2024-08-14", "Nr.4711": a word's dot, then the value, with the space dropped
            glued.add(m.start())
    chars = [c for k, c in enumerate(chars) if k not in drop]
    for k in sorted(glued - drop, reverse=True):
        shift = sum(1 for d in drop if d < k)
        chars.insert(k - shift + 1, (" ", chars[k - shift][1] + 0.5, 1.0))
    out: list[tuple[str, float]] = []
    for ch, col, _p in chars:
        if ch == " " and (not out or out[-1][0] == " "):
            continue
        out.append((ch, col))
    while out and out[-1][0] == " ":
        out.pop()
    # Letters whose capital has the same shape ("zUGFeRD", "uSt."): a capital follows, so it is one too.
    for k in range(len(out) - 1):
        ch, nxt = out[k][0], out[k + 1][0]
        if ch in _CASE_ALIKE and nxt.isupper() and (k == 0 or out[k - 1][0] == " "):
            out[k] = (ch.upper(), out[k][1])
    # In a code of capitals and digits ("CI-2024-3886") a lower-case l is a capital I.
    start = 0
    for end in [*(k for k, c in enumerate(out) if c[0] == " "), len(out)]:
        word = "".join(c for c, _ in out[start:end])
        letters = [ch for ch in word if ch.isalpha() and ch != "l"]
        if (
            "l" in word
            and any(ch.isdigit() for ch in word)
            and letters
            and all(ch.isupper() for ch in letters)
        ):
            for k in range(start, end):
                if out[k][0] == "l":
                    out[k] = ("I", out[k][1])
        start = end + 1
    text = "".join(c for c, _ in out)
    probs = [p for ch, _col, p in chars if ch != " "]
    score = sum(probs) / len(probs) if probs else 0.0
    return text, score, out


def _word_spans(chars: list[tuple[str, float]], columns: int, width: float) -> list[tuple[str, float, float]]:
    """Words of a recognised line with x-ranges in crop pixels, from the CTC column of every character.

    A word spans from half a character before its first character's column to half a character after its
    last; the character width is the line's median step from one character to the next inside a word, so
    wide gaps between words (column titles sharing one detector box) stay gaps.
    """
    per = width / max(columns, 1)
    words: list[list[tuple[str, float]]] = [[]]
    for ch, col in chars:
        if ch == " ":
            if words[-1]:
                words.append([])
            continue
        words[-1].append((ch, col))
    words = [w for w in words if w]
    if not words:
        return []
    steps = sorted(b[1] - a[1] for w in words for a, b in pairwise(w))
    if steps:
        pitch = steps[len(steps) // 2] * per
    else:  # single characters only: share the width
        pitch = width / max(sum(len(w) for w in words) + len(words) - 1, 1)
    step = steps[len(steps) // 2] if steps else 3.0
    out: list[tuple[str, float, float]] = []
    for k, word in enumerate(words):
        first, last = (word[0][1] + 0.5) * per, (word[-1][1] + 0.5) * per
        x0, x1 = max(0.0, first - pitch / 2), min(width, last + pitch / 2)
        if k and word[0][1] - words[k - 1][-1][1] <= 3.5 * step:
            # an ordinary space, not a gutter: keep the words of one phrase together (CTC columns are coarse)
            prev_text, prev_x0, prev_x1 = out[-1]
            mid = (prev_x1 + x0) / 2
            out[-1] = (prev_text, prev_x0, max(prev_x1, mid - 0.15 * pitch))
            x0 = min(x0, mid + 0.15 * pitch)
        out.append(("".join(c for c, _ in word), x0, x1))
    return out


def _skew(boxes: Any) -> float | None:
    """The page's tilt (radians) from the detector's boxes, or None when nothing measures it.

    The boxes come from a scaled-down page, where a box's own slope is only good for long boxes (a 200 px
    box tilted by 0.7 degrees rises by one detection pixel, so most short boxes come out level).  Two more
    measures share the median: the slope of every long box, and the slope between the centres of two boxes
    side by side on one text row (200-600 px apart, vertically closer than half a line: at scan tilts this
    pairs a label with its value, not with the next row).
    """
    import numpy as np

    dx = boxes[:, 1, 0] - boxes[:, 0, 0]
    dy = boxes[:, 1, 1] - boxes[:, 0, 1]
    tall = np.hypot(boxes[:, 3, 0] - boxes[:, 0, 0], boxes[:, 3, 1] - boxes[:, 0, 1])
    wide = (dx > 3 * np.maximum(tall, 1.0)) & (dx > 0)
    if not wide.any():
        return None
    line = float(np.median(tall[wide]))
    slopes = [np.arctan2(dy[wide & (dx > 400)], dx[wide & (dx > 400)])]
    centre = boxes.mean(axis=1)
    ddx = centre[None, :, 0] - centre[:, None, 0]
    ddy = centre[None, :, 1] - centre[:, None, 1]
    pair = (ddx >= 200) & (ddx <= 600) & (np.abs(ddy) < 0.5 * line)
    pair &= (tall[:, None] < 1.5 * line) & (tall[None, :] < 1.5 * line)
    slopes.append(np.arctan2(ddy[pair], ddx[pair]))
    measured = np.concatenate(slopes)
    if len(measured) < 3:  # too little to go on: the boxes' own slopes, as they are
        measured = np.arctan2(dy[wide], dx[wide])
    return float(np.median(measured))


def _deskew(boxes: Any, cx: float, cy: float) -> Any:
    """Rotate box corners so the page's text lines are horizontal.

    A scan tilted by a degree moves the right end of an A4 line by ~10 pt, more than a line height, so a
    label and its amount at the far right would fall on different lines.  The detector's boxes are rotated
    rectangles (corners clockwise from top-left); ``_skew`` measures the tilt from them.
    """
    import numpy as np

    if len(boxes) == 0:
        return boxes
    angle = _skew(boxes)
    if angle is None or abs(angle) < 1e-4 or abs(angle) > 0.2:  # level already, or not a small scan tilt
        return boxes
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = boxes[..., 0] - cx, boxes[..., 1] - cy
    out = np.empty_like(boxes)
    out[..., 0] = cx + x * cos + y * sin
    out[..., 1] = cy - x * sin + y * cos
    return out


def _vertical(boxes: Any) -> Any:
    """Mask of boxes that hold vertical text (a margin note, a rotated stamp), taller than any text line.

    A text layer leaves rotated text out of the reading lines; so does OCR: such a box would otherwise
    join every line it spans into one, and reading it costs as much as a long line.
    """
    import numpy as np

    wide = np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1)
    tall = np.linalg.norm(boxes[:, 3] - boxes[:, 0], axis=1)
    line_height = float(np.median(tall)) if len(tall) else 0.0
    return (tall > 1.5 * wide) & (tall > 2.5 * line_height)


def _detect_and_read(image: Any) -> tuple[Any, list[float], list[_Read], int, int]:
    """Raw OCR of one image: text boxes (image pixels), crop widths, CTC output per box."""
    import numpy as np
    from rapidocr.utils.process_img import get_rotate_crop_image

    img = np.asarray(image.convert("RGB"))
    height, width = img.shape[:2]
    engine = get_engine()
    detector = engine.det_ocr._load_det_model()
    with _PAGE_SLOTS:
        found = detector(img)  # downscaled to DET_MAX_SIDE inside; boxes come back in image pixels
        if found.boxes is None or len(found.boxes) == 0:
            return np.zeros((0, 4, 2), dtype=np.float32), [], [], width, height
        boxes = np.asarray(found.boxes, dtype=np.float32)
        boxes = boxes[~_vertical(boxes)]
        crops = [get_rotate_crop_image(img, box.copy()) for box in boxes]
        recognised = _recognise(engine, crops)
    return boxes, [float(c.shape[1]) for c in crops], recognised, width, height


def ocr_image(image: Any, page_number: int = 1) -> PageText:
    """OCR one PIL image into positioned words grouped into lines (points, top-left origin)."""
    boxes, crop_widths, recognised, width, height = _detect_and_read(image)
    scale = _A4_WIDTH_PT / max(width, 1)
    engine = get_engine()
    min_score = engine.text_score
    words: list[Word] = []
    boxes = _deskew(boxes, width / 2, height / 2)
    for box, crop_w, read in zip(boxes, crop_widths, recognised, strict=True):
        text, score, chars = _decode(read, engine.charset, engine.space_id)
        if not text.strip() or score < min_score:
            continue
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        x0, x1 = min(xs), max(xs)
        # Detector boxes carry padding: trimmed to about a text layer's word height, so close lines of a
        # table header stay apart and gaps between words are judged against the same height.
        top, bottom = min(ys), max(ys)
        pad = (bottom - top) * _WORD_PAD
        to_page = (x1 - x0) / max(crop_w, 1.0)
        for token, a, b in _word_spans(chars, len(read.best), crop_w):
            words.append(
                Word(token, (x0 + a * to_page) * scale, (x0 + b * to_page) * scale, (top + pad) * scale,
                     (bottom - pad) * scale)
            )  # fmt: skip
    return PageText(page_number, width * scale, height * scale, group_lines(words))


def ocr_images(images: list[Any]) -> list[PageText]:
    """OCR several page images (``OCR_THREADS`` at a time); a page that fails comes back empty."""

    def one(index: int) -> PageText:
        try:
            return ocr_image(images[index], index + 1)
        except Exception as exc:  # onnxruntime/opencv errors on odd images must not crash a task
            log.warning("OCR failed on page %d: %s", index + 1, exc)
            return PageText(index + 1, 0.0, 0.0, [])

    if len(images) < 2:
        return [one(i) for i in range(len(images))]
    return list(_pool("page").map(one, range(len(images))))
