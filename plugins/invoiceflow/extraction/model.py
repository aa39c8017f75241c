"""Result types, the error type and schema helpers shared by the extraction modules."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_RELATIVE_PATH = Path("include") / "schemas" / "invoice.json"

# Used only if include/schemas/invoice.json cannot be found (e.g. the package is installed elsewhere);
# mirrors its top-level property names so extraction still returns the warehouse shape.
_FALLBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "document_type": {"type": ["string", "null"], "enum": ["invoice", "credit_note", None]},
        "invoice_number": {"type": ["string", "null"]},
        "vendor_name": {"type": ["string", "null"]},
        "invoice_date": {"type": ["string", "null"], "format": "date"},
        "due_date": {"type": ["string", "null"], "format": "date"},
        "currency": {"type": ["string", "null"]},
        "subtotal": {"type": ["number", "null"]},
        "tax_amount": {"type": ["number", "null"]},
        "total_amount": {"type": ["number", "null"]},
        "purchase_order_number": {"type": ["string", "null"]},
        "line_items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": ["string", "null"]},
                    "quantity": {"type": ["number", "null"]},
                    "unit_price": {"type": ["number", "null"]},
                    "line_total": {"type": ["number", "null"]},
                },
            },
        },
    },
}


class UnsupportedDocument(ValueError):
    """Raised when a file cannot be extracted; ``reason`` is a human message suitable for a review queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class PageExtraction:
    """Fields found on one page; keys are the schema's top-level properties, missing values are None."""

    page_number: int
    result: dict[str, Any]
    confidence: float = 0.0


@dataclass
class ExtractionResult:
    """All pages of one document plus where the values came from (einvoice-cii/-ubl, text-layer, none)."""

    pages: list[PageExtraction] = field(default_factory=list)
    source: str = "none"

    def merged(self) -> dict[str, Any]:
        """Document-level view: first non-None value per field across pages, line items concatenated.

        ``document_type`` is ``credit_note`` if any page says so (a credit note stays one whichever page names it).
        """
        if not self.pages:
            return {}
        out: dict[str, Any] = {}
        for page in self.pages:
            for key, value in page.result.items():
                if isinstance(value, list):
                    out.setdefault(key, [])
                    out[key].extend(value)
                elif out.get(key) is None or (key == "document_type" and value == "credit_note"):
                    out[key] = value
        return out


def _find_schema_file() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / SCHEMA_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1)
def default_schema() -> dict[str, Any]:
    """The project's invoice schema (include/schemas/invoice.json), so field names stay in one place."""
    path = _find_schema_file()
    if path is None:
        return _FALLBACK_SCHEMA
    return json.loads(path.read_text(encoding="utf-8"))


def schema_fields(schema: dict[str, Any] | None) -> tuple[list[str], str | None, list[str]]:
    """Split a schema into (scalar header fields, name of the line-item array or None, line-item keys)."""
    props: dict[str, Any] = (schema or default_schema()).get("properties", {}) or {}
    header: list[str] = []
    items_key: str | None = None
    item_fields: list[str] = []
    for name, spec in props.items():
        types = spec.get("type") if isinstance(spec, dict) else None
        is_array = types == "array" or (isinstance(types, list) and "array" in types)
        if is_array and items_key is None:
            items_key = name
            item_props = (spec.get("items") or {}).get("properties") or {}
            item_fields = list(item_props)
        elif not is_array:
            header.append(name)
    return header, items_key, item_fields


def shape_result(
    schema: dict[str, Any] | None, values: dict[str, Any], items: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Project extracted values onto the schema: unknown keys dropped, absent keys None (never invented)."""
    header, items_key, item_fields = schema_fields(schema)
    out: dict[str, Any] = {name: values.get(name) for name in header}
    if items_key is not None:
        out[items_key] = [{k: item.get(k) for k in item_fields} for item in (items or [])]
    return out


def empty_result(schema: dict[str, Any] | None) -> dict[str, Any]:
    """A page result with every field None and no line items."""
    return shape_result(schema, {}, [])
