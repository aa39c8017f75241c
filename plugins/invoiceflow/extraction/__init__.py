"""Offline invoice extraction: exact e-invoice XML first, then the PDF text layer; images await OCR.

Public API (used by the DAGs and the API service)::

    detect_type(data, filename) -> "pdf" | "png" | "jpeg" | "tiff" | "xml"   # raises UnsupportedDocument
    extract_pages(data, filename, schema=None, *, use_einvoice=True) -> ExtractionResult
"""

from __future__ import annotations

import io
import logging
from typing import Any

from .einvoice import embedded_xml, parse_einvoice_xml
from .fields import extract_header, extract_line_items
from .model import (
    ExtractionResult,
    PageExtraction,
    UnsupportedDocument,
    default_schema,
    empty_result,
    schema_fields,
    shape_result,
)
from .sniff import detect_type
from .textlayer import read_pdf_text

__all__ = [
    "ExtractionResult",
    "PageExtraction",
    "UnsupportedDocument",
    "default_schema",
    "detect_type",
    "extract_pages",
]

log = logging.getLogger(__name__)


def _blank_pages(count: int, schema: dict[str, Any] | None) -> list[PageExtraction]:
    return [
        PageExtraction(page_number=i + 1, result=empty_result(schema), confidence=0.0) for i in range(count)
    ]


def _image_page_count(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return max(int(getattr(img, "n_frames", 1) or 1), 1)


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


def _text_layer_result(data: bytes, schema: dict[str, Any] | None) -> ExtractionResult:
    header_fields, _items_key, _item_fields = schema_fields(schema)
    try:
        texts = read_pdf_text(data)
    except Exception as exc:  # pdfium opened it in detect_type; still never crash on odd files
        log.warning("text layer unreadable: %s", exc)
        return ExtractionResult(pages=_blank_pages(1, schema), source="none")
    if not any(page.has_text for page in texts):
        return ExtractionResult(pages=_blank_pages(len(texts), schema), source="none")

    per_page: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    carried = None
    for index, page in enumerate(texts):
        if not page.has_text:
            per_page.append(({}, []))
            carried = None
            continue
        try:
            values = extract_header(page, first_page=index == 0)
            items, carried = extract_line_items(page, carried)
        except Exception as exc:  # a heuristic bug must degrade to "not found", not to a failed task
            log.warning("field extraction failed on page %d: %s", index + 1, exc)
            values, items, carried = {}, [], None
        per_page.append((values, items))

    found = {f for values, _ in per_page for f, v in values.items() if v is not None and f in header_fields}
    doc_conf = round(len(found) / len(header_fields), 3) if header_fields else 0.0
    pages = [
        PageExtraction(
            page_number=page.page_number,
            result=shape_result(schema, values, items),
            confidence=doc_conf if page.has_text else 0.0,
        )
        for page, (values, items) in zip(texts, per_page, strict=True)
    ]
    return ExtractionResult(pages=pages, source="text-layer")


def extract_pages(
    data: bytes, filename: str, schema: dict[str, Any] | None = None, *, use_einvoice: bool = True
) -> ExtractionResult:
    """Extract schema fields page by page.

    E-invoice XML (embedded Factur-X/ZUGFeRD or standalone CII/UBL) is read exactly and put on page 1;
    otherwise the PDF text layer is parsed with label rules.  Images and image-only PDFs return empty pages
    (source "none") until OCR is added.  ``use_einvoice=False`` ignores XML so the visual path can be
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
        return ExtractionResult(pages=_blank_pages(_image_page_count(data), schema), source="none")

    if use_einvoice:
        xml = embedded_xml(data)
        parsed = parse_einvoice_xml(xml) if xml else None
        if parsed is not None:
            from .pdf import pdf_page_count

            return _einvoice_result(parsed, pdf_page_count(data), schema)
    return _text_layer_result(data, schema)
