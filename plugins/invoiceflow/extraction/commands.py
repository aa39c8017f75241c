"""``invoiceflow extract`` and ``invoiceflow eval``: the offline engine from the command line.

Kept here (not in cli.py) so the engine's owners can change its options without touching the shared CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_OCR_CHOICES = ("rapidocr", "tesseract")


def _add_ocr_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ocr",
        choices=_OCR_CHOICES,
        help="OCR backend for scans (sets INVOICEFLOW_OCR_BACKEND; default rapidocr, tesseract needs the "
        "Debian tesseract-ocr packages)",
    )


def _apply_ocr_argument(args: argparse.Namespace) -> None:
    if getattr(args, "ocr", None):
        os.environ["INVOICEFLOW_OCR_BACKEND"] = args.ocr


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="PDF, PNG, JPEG, TIFF or XML files"
    )
    parser.add_argument("--schema", type=Path, help="JSON schema whose properties name the fields to extract")
    parser.add_argument(
        "--no-einvoice",
        action="store_true",
        help="ignore embedded/standalone e-invoice XML; extract visually",
    )
    parser.add_argument(
        "--out", type=Path, help="write DIR/<file base name>.json per input instead of printing"
    )
    _add_ocr_argument(parser)


def run_extract(args: argparse.Namespace) -> int:
    """Print the merged JSON for one file, or write one JSON per input with --out; 1 if any file failed."""
    from invoiceflow.extraction import UnsupportedDocument, extract_pages

    _apply_ocr_argument(args)
    schema = json.loads(args.schema.read_text(encoding="utf-8")) if args.schema else None
    if args.out is None and len(args.paths) > 1:
        print("several inputs need --out DIR", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in args.paths:
        try:
            result = extract_pages(path.read_bytes(), path.name, schema, use_einvoice=not args.no_einvoice)
        except (UnsupportedDocument, OSError) as exc:
            print(f"{path}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
            status = 1
            continue
        text = json.dumps(result.merged(), indent=2, ensure_ascii=False)
        if args.out is None:
            print(text)
        else:
            target = args.out / f"{path.stem}.json"
            target.write_text(text + "\n", encoding="utf-8")
            print(f"{path} -> {target} ({result.source})", file=sys.stderr)
    return status


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="documents with ground-truth JSON beside them")
    parser.add_argument(
        "--no-einvoice", action="store_true", help="ignore e-invoice XML (measure the visual path)"
    )
    parser.add_argument(
        "--scan", action="store_true", help="render PDFs as noisy 200-dpi scans first (measure the OCR path)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print one line per document")
    parser.add_argument(
        "--jobs", "-j", type=int, default=None, help="documents extracted at once (default: cores, at most 2)"
    )
    _add_ocr_argument(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Print per-field accuracy, header accuracy, line-item P/R/F1, pages/s; last line is one JSON object."""
    from invoiceflow.evaluation import evaluate_directory, find_documents, report_lines

    _apply_ocr_argument(args)

    if not args.dir.is_dir() or not find_documents(args.dir):
        print(f"{args.dir}: no documents with ground-truth JSON", file=sys.stderr)
        return 2
    progress = (lambda msg: print(msg, file=sys.stderr)) if getattr(args, "verbose", False) else None
    run = evaluate_directory(
        args.dir,
        use_einvoice=not args.no_einvoice,
        scan=args.scan,
        progress=progress,
        jobs=getattr(args, "jobs", None),
    )
    for line in report_lines(run):
        print(line)
    return 0
