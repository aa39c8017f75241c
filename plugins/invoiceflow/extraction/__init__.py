"""Offline invoice extraction: exact e-invoice XML first, then the PDF text layer, then OCR.

OCR is rapidocr by default; ``INVOICEFLOW_OCR_BACKEND=tesseract`` uses Tesseract instead (Debian packages
``tesseract-ocr`` plus language packs; one language per document).  A backend that is unknown or not installed
raises (OcrBackendError, TesseractUnavailable) instead of quietly returning empty documents.

Public API (used by the DAGs and the API service)::

    detect_type(data, filename) -> "pdf" | "png" | "jpeg" | "tiff" | "xml"   # raises UnsupportedDocument
    extract_pages(data, filename, schema=None, *, use_einvoice=True) -> ExtractionResult
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

from .einvoice import embedded_xml, parse_einvoice_xml
from .fields import extract_document
from .model import (
    ExtractionResult,
    PageExtraction,
    UnsupportedDocument,
    default_schema,
    empty_result,
    shape_result,
)
from .sniff import detect_type
from .tesseract import TesseractUnavailable
from .textlayer import MIN_WORDS_FOR_TEXT_LAYER, PageText, read_pdf_text

__all__ = [
    "ExtractionResult",
    "OcrBackendError",
    "PageExtraction",
    "TesseractUnavailable",
    "UnsupportedDocument",
    "default_schema",
    "detect_type",
    "extract_pages",
    "ocr_backend",
]

log = logging.getLogger(__name__)


def _blank_pages(count: int, schema: dict[str, Any] | None) -> list[PageExtraction]:
    return [
        PageExtraction(page_number=i + 1, result=empty_result(schema), confidence=0.0) for i in range(count)
    ]


def _image_frames(data: bytes) -> list[Any]:
    """Every frame of an image file (multi-page TIFF) as a PIL image."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(data)) as img:
        return [frame.convert("L") for frame in ImageSequence.Iterator(img)]


def _einvoice_result(
    parsed: tuple[str, dict[str, Any], list[dict[str, Any]]], page_count: int, schema: dict[str, Any] | None
) -> ExtractionResult:
    source, values, items = parsed
    first = PageExtraction(page_number=1, result=shape_result(schema, values, items), confidence=1.0)
    rest = [
        PageExtraction(page_number=i + 1, result=empty_result(schema), confidence=1.0)
        for i in range(1, max(page_count, 1))
    ]
    return ExtractionResult(pages=[first, *rest], source=source)


OCR_BACKENDS = ("rapidocr", "tesseract")


class OcrBackendError(ValueError):
    """``INVOICEFLOW_OCR_BACKEND`` names no known OCR backend."""


_CONFIGURATION_ERRORS = (OcrBackendError, TesseractUnavailable)


def ocr_backend() -> str:
    """The OCR engine for scans: ``INVOICEFLOW_OCR_BACKEND`` = rapidocr (default) or tesseract."""
    name = (os.environ.get("INVOICEFLOW_OCR_BACKEND") or "rapidocr").strip().lower()
    if name not in OCR_BACKENDS:
        raise OcrBackendError(f"INVOICEFLOW_OCR_BACKEND={name!r}: use one of {', '.join(OCR_BACKENDS)}")
    return name


def _ocr_pages(images: list[Any]) -> list[PageText]:
    """OCR a document's page images with the configured backend (Tesseract picks one language per document)."""
    if ocr_backend() == "tesseract":
        from .tesseract import ocr_images as tesseract_pages

        return tesseract_pages(images)
    from .ocr import ocr_images

    return ocr_images(images)


def _read_pages(data: bytes, kind: str) -> tuple[list[PageText], str]:
    """Positioned words per page: the PDF text layer, OCR for images and for pages with too little text."""
    if kind != "pdf":
        return _ocr_pages(_image_frames(data)), "ocr"
    texts = read_pdf_text(data)
    thin = [
        i
        for i, p in enumerate(texts)
        if p.word_count < MIN_WORDS_FOR_TEXT_LAYER and (p.has_images or not p.lines)
    ]
    if not thin:
        return texts, "text-layer"
    from .ocr import OCR_DPI
    from .pdf import render_pages

    # the pages are read side by side; a page that fails comes back empty, keeping the thin text layer
    scans = _ocr_pages(render_pages(data, dpi=OCR_DPI, pages=thin))
    for index, scanned in zip(thin, scans, strict=True):
        scanned.page_number = index + 1
        if scanned.word_count > texts[index].word_count:
            texts[index] = scanned
    if len(thin) == len(texts):
        return texts, "ocr"
    return texts, "text-layer+ocr"


def _visual_result(data: bytes, kind: str, schema: dict[str, Any] | None) -> ExtractionResult:
    try:
        texts, source = _read_pages(data, kind)
    except _CONFIGURATION_ERRORS:  # a wrong or uninstalled OCR backend is the operator's to fix, loudly
        raise
    except Exception as exc:  # detect_type vetted the file; still never crash on odd files
        log.warning("document unreadable: %s", exc)
        return ExtractionResult(pages=_blank_pages(1, schema), source="none")
    if not any(page.has_text for page in texts):
        return ExtractionResult(pages=_blank_pages(len(texts) or 1, schema), source="none")
    try:
        per_page, confidence = extract_document(texts, schema)
    except Exception as exc:  # a heuristic bug must degrade to "not found", not to a failed task
        log.warning("field extraction failed: %s", exc)
        return ExtractionResult(pages=_blank_pages(len(texts), schema), source=source)
    pages = [
        PageExtraction(
            page_number=page.page_number,
            result=shape_result(schema, values, items),
            confidence=confidence if page.has_text else 0.0,
        )
        for page, (values, items) in zip(texts, per_page, strict=True)
    ]
    return ExtractionResult(pages=pages, source=source)


def extract_pages(
    data: bytes, filename: str, schema: dict[str, Any] | None = None, *, use_einvoice: bool = True
) -> ExtractionResult:
    """Extract schema fields page by page.

    E-invoice XML (embedded Factur-X/ZUGFeRD or standalone CII/UBL) is read exactly and put on page 1;
    otherwise the PDF text layer is parsed with label rules; images and pages with too little text are
    OCR'd offline (source "ocr" or "text-layer+ocr").  ``use_einvoice=False`` ignores XML so the visual path can be
    evaluated on e-invoices.  Raises UnsupportedDocument for files that cannot be read at all.
    """
    schema = schema or default_schema()
    kind = detect_type(data, filename)

    if kind == "xml":
        if not use_einvoice:
            return ExtractionResult(pages=_blank_pages(1, schema), source="none")
        parsed = parse_einvoice_xml(data)
        if parsed is None:  # detect_type already vetted the root; be defensive anyway
            raise UnsupportedDocument("XML is not a CII or UBL invoice")
        return _einvoice_result(parsed, 1, schema)

    if kind in ("png", "jpeg", "tiff"):
        return _visual_result(data, kind, schema)

    if use_einvoice:
        xml = embedded_xml(data)
        parsed = parse_einvoice_xml(xml) if xml else None
        if parsed is not None:
            from .pdf import pdf_page_count

            return _einvoice_result(parsed, pdf_page_count(data), schema)
    return _visual_result(data, kind, schema)
