"""Score extraction results against ground truth, and run the engine over a folder of documents.

The scoring rules are the ones issue 4 fixes, so that everyone's numbers agree:

* header fields: invoice/PO numbers equal ignoring whitespace and case; vendor name
  ``fuzz.token_set_ratio`` >= 90 *and* at least half as long as the truth (a fragment such as "GmbH" is
  wrong); dates equal as ISO strings; currency equal as ISO code; amounts within 0.005 as numbers; a null
  truth needs a null prediction.  Keys starting with ``_`` are metadata; fields in ``_unscored`` are skipped.
* line items: one-to-one matching; a predicted line matches a true line when the line totals are equal and
  the description has token-set ratio >= 80 and is at least half as long; micro-averaged P/R/F1.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

ID_FIELDS = {"invoice_number", "purchase_order_number"}
DATE_FIELDS = {"invoice_date", "due_date"}
MONEY_FIELDS = {"subtotal", "tax_amount", "total_amount"}
VENDOR_FIELDS = {"vendor_name"}
LINE_ITEMS_KEY = "line_items"
DOCUMENT_SUFFIXES = {".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".xml"}

VENDOR_MIN_RATIO = 90.0
DESCRIPTION_MIN_RATIO = 80.0
AMOUNT_TOLERANCE = 0.005


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(float(value)) else None
    return None


def _fuzzy_ok(pred: Any, truth: str, min_ratio: float) -> bool:
    """Fuzzy text match that also refuses fragments: a short substring scores 100 on token-set ratio."""
    if not isinstance(pred, str) or not pred.strip():
        return False
    if len(pred.strip()) * 2 < len(truth.strip()):
        return False
    return fuzz.token_set_ratio(pred, truth) >= min_ratio


def field_correct(name: str, pred: Any, truth: Any) -> bool:
    """Whether one header field is right under the issue's rules."""
    if truth is None:
        return pred is None or (isinstance(pred, str) and not pred.strip())
    if pred is None:
        return False
    if name in MONEY_FIELDS or (_as_number(truth) is not None and name not in ID_FIELDS):
        p, t = _as_number(pred), _as_number(truth)
        return p is not None and t is not None and abs(p - t) < AMOUNT_TOLERANCE
    if name in VENDOR_FIELDS:
        return _fuzzy_ok(pred, str(truth), VENDOR_MIN_RATIO)
    if name in ID_FIELDS:
        return "".join(str(pred).split()).casefold() == "".join(str(truth).split()).casefold()
    if name in DATE_FIELDS:
        return str(pred).strip() == str(truth).strip()
    if name == "currency":
        return str(pred).strip().upper() == str(truth).strip().upper()
    return " ".join(str(pred).split()).casefold() == " ".join(str(truth).split()).casefold()


def line_matches(pred: dict[str, Any], truth: dict[str, Any]) -> bool:
    """A predicted line matches a true one: equal line total and a similar, not fragmentary, description."""
    p, t = _as_number(pred.get("line_total")), _as_number(truth.get("line_total"))
    if p is None or t is None or abs(p - t) >= AMOUNT_TOLERANCE:
        return False
    return _fuzzy_ok(pred.get("description"), str(truth.get("description") or ""), DESCRIPTION_MIN_RATIO)


def match_line_items(pred: Sequence[dict[str, Any]], truth: Sequence[dict[str, Any]]) -> int:
    """Size of a maximum one-to-one matching (augmenting paths), so greedy order cannot cost a match."""
    edges = [[j for j, t in enumerate(truth) if line_matches(p, t)] for p in pred]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(augment(i, set()) for i in range(len(pred)))


@dataclass
class DocumentScore:
    """Per-document outcome: which header fields were right, and line-item counts (None = unscored)."""

    name: str
    fields: dict[str, bool] = field(default_factory=dict)
    lines_matched: int = 0
    lines_predicted: int = 0
    lines_true: int = 0
    lines_scored: bool = False


def score_document(pred: dict[str, Any], truth: dict[str, Any], name: str = "") -> DocumentScore:
    """Score one merged prediction against its ground-truth JSON."""
    unscored = set(truth.get("_unscored") or [])
    score = DocumentScore(name=name)
    for key, value in truth.items():
        if key.startswith("_") or key in unscored:
            continue
        if key == LINE_ITEMS_KEY:
            predicted = [p for p in (pred.get(key) or []) if isinstance(p, dict)]
            true_lines = list(value or [])
            score.lines_scored = True
            score.lines_predicted = len(predicted)
            score.lines_true = len(true_lines)
            score.lines_matched = match_line_items(predicted, true_lines)
            continue
        if isinstance(value, list | dict):
            continue
        score.fields[key] = field_correct(key, pred.get(key), value)
    return score


@dataclass
class Summary:
    """Aggregate over documents: per-field accuracy, header accuracy, micro line-item P/R/F1."""

    per_field: dict[str, tuple[int, int]]
    header_correct: int
    header_total: int
    precision: float
    recall: float
    f1: float

    @property
    def header_accuracy(self) -> float:
        return self.header_correct / self.header_total if self.header_total else 0.0


def summarize(scores: Iterable[DocumentScore]) -> Summary:
    """Micro-averaged figures: every scored field and every line counts once."""
    per_field: dict[str, list[int]] = {}
    matched = predicted = true = 0
    for s in scores:
        for name, ok in s.fields.items():
            bucket = per_field.setdefault(name, [0, 0])
            bucket[0] += int(ok)
            bucket[1] += 1
        if s.lines_scored:
            matched += s.lines_matched
            predicted += s.lines_predicted
            true += s.lines_true
    correct = sum(c for c, _ in per_field.values())
    total = sum(n for _, n in per_field.values())
    precision = matched / predicted if predicted else (1.0 if not true else 0.0)
    recall = matched / true if true else (1.0 if not predicted else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Summary(
        per_field={k: (c, n) for k, (c, n) in per_field.items()},
        header_correct=correct,
        header_total=total,
        precision=precision,
        recall=recall,
        f1=f1,
    )


# ---------------------------------------------------------------- synthetic scans


def scan_pdf_pages(data: bytes, seed: int, dpi: int = 200) -> list[Any]:
    """Render each PDF page like a cheap office scan: grey, slightly rotated, blurred, noisy.

    Deterministic for a seed, so scan figures are reproducible.  Rendering happens inside ``open_pdf``
    (PDFium is not thread-safe).
    """
    import numpy as np
    from PIL import Image, ImageFilter

    from invoiceflow.extraction.pdf import render_pages

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out: list[Image.Image] = []
    for page in render_pages(data, dpi=dpi):
        img = page.convert("L")
        img = img.rotate(rng.uniform(-1.2, 1.2), resample=Image.BILINEAR, expand=False, fillcolor=255)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.7)))
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + nrng.normal(0.0, 12.0, arr.shape)
        specks = nrng.random(arr.shape)
        arr[specks < 0.0008] = 0
        arr[specks > 0.9992] = 255
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L"))
    return out


def images_to_tiff(images: Sequence[Any]) -> bytes:
    """Pack page images into one multi-page TIFF, the shape a scanner hands over."""
    buf = io.BytesIO()
    images[0].save(buf, format="TIFF", save_all=True, append_images=list(images[1:]), compression="raw")
    return buf.getvalue()


# ---------------------------------------------------------------- runner


@dataclass
class EvalRun:
    summary: Summary
    scores: list[DocumentScore]
    pages: int
    seconds: float

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0


def find_documents(directory: Path) -> list[tuple[Path, Path]]:
    """(document, ground truth) pairs: every supported file with a same-named .json beside it."""
    pairs: list[tuple[Path, Path]] = []
    for path in sorted(Path(directory).iterdir()):
        if path.suffix.lower() in DOCUMENT_SUFFIXES and path.with_suffix(".json").is_file():
            pairs.append((path, path.with_suffix(".json")))
    return pairs


def _warm_up_ocr() -> None:
    from invoiceflow.extraction import ocr_backend

    if ocr_backend() == "rapidocr":
        from invoiceflow.extraction.ocr import get_engine

        get_engine()


def default_jobs() -> int:
    """Documents extracted at once: one per core, at most two (the OCR engine shares one model)."""
    return max(1, min(2, os.cpu_count() or 1))


def evaluate_directory(
    directory: Path,
    *,
    use_einvoice: bool = True,
    scan: bool = False,
    schema: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    jobs: int | None = None,
) -> EvalRun:
    """Extract every document in ``directory`` and score it.

    Scans are rendered and the OCR models loaded first, not timed; the documents are then extracted ``jobs``
    at a time (like the offline server's workers) and the wall time of that whole run is the time pages/s is
    computed from.
    """
    from invoiceflow.extraction import UnsupportedDocument, extract_pages

    inputs: list[tuple[Path, dict[str, Any], bytes, str]] = []
    for doc, gt in find_documents(directory):
        truth = json.loads(gt.read_text(encoding="utf-8"))
        data, name = doc.read_bytes(), doc.name
        if scan and doc.suffix.lower() == ".pdf":
            data = images_to_tiff(scan_pdf_pages(data, seed=zlib.crc32(doc.name.encode())))
            name = doc.with_suffix(".tiff").name
        inputs.append((doc, truth, data, name))

    def extract(item: tuple[Path, dict[str, Any], bytes, str]) -> tuple[dict[str, Any], int, str | None]:
        _doc, _truth, data, name = item
        try:
            result = extract_pages(data, name, schema, use_einvoice=use_einvoice)
            return result.merged(), len(result.pages), None
        except UnsupportedDocument as exc:
            return {}, 1, exc.reason

    if any(not name.lower().endswith((".pdf", ".xml")) for *_rest, name in inputs):
        _warm_up_ocr()  # the models load once per process (a server's start), not inside a document's time
    workers = max(1, jobs if jobs is not None else default_jobs())
    started = time.perf_counter()
    if workers > 1 and len(inputs) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
            outputs = list(pool.map(extract, inputs))
    else:
        outputs = [extract(item) for item in inputs]
    seconds = time.perf_counter() - started

    scores: list[DocumentScore] = []
    pages = 0
    for (doc, truth, _data, _name), (merged, n_pages, unsupported) in zip(inputs, outputs, strict=True):
        pages += n_pages
        if unsupported is not None and progress:
            progress(f"{doc.name}: unsupported ({unsupported})")
        score = score_document(merged, truth, doc.name)
        scores.append(score)
        if progress:
            wrong = [k for k, ok in score.fields.items() if not ok]
            lines = (
                f"{score.lines_matched}/{score.lines_true}/{score.lines_predicted}"
                if score.lines_scored
                else "-"
            )
            progress(f"{doc.name}: fields {len(score.fields) - len(wrong)}/{len(score.fields)} "
                     f"wrong={wrong} lines(match/true/pred)={lines}")  # fmt: skip
    return EvalRun(summarize(scores), scores, pages, seconds)


def report_lines(run: EvalRun) -> list[str]:
    """Human-readable figures, then one JSON object as the last line (for scripts)."""
    s = run.summary
    lines = ["per-field accuracy:"]
    for name, (correct, total) in sorted(s.per_field.items()):
        lines.append(f"  {name:<24} {correct:>4}/{total:<4} {correct / total:7.1%}")
    lines.append(f"header-field accuracy: {s.header_correct}/{s.header_total} = {s.header_accuracy:.1%}")
    lines.append(f"line items: precision {s.precision:.1%}  recall {s.recall:.1%}  F1 {s.f1:.1%}")
    lines.append(
        f"documents {len(run.scores)}, pages {run.pages}, {run.seconds:.2f} s, {run.pages_per_s:.2f} pages/s"
    )
    lines.append(
        json.dumps(
            {
                "header_accuracy": round(s.header_accuracy, 4),
                "line_item_f1": round(s.f1, 4),
                "pages_per_s": round(run.pages_per_s, 3),
            }
        )
    )
    return lines
