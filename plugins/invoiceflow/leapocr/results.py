"""Merge the per-page structured results of a LeapOCR job into one invoice."""

from __future__ import annotations

from typing import Any

TOTAL_FIELDS = ("subtotal", "tax_amount", "total_amount")


def merge_pages(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """One invoice from per-page structured results.

    Header fields come from the first page that has them, line items in page order, and the totals from the last
    page that has them (a continued invoice prints running totals on earlier pages).
    """
    merged: dict[str, Any] = {"line_items": []}
    for page in sorted(pages, key=lambda p: p["page_number"]):
        result = page.get("result")
        if not isinstance(result, dict):
            continue
        for key, value in result.items():
            if key == "line_items":
                merged["line_items"].extend(value or [])
            elif value is None:
                merged.setdefault(key, None)
            elif key in TOTAL_FIELDS or merged.get(key) is None:
                merged[key] = value
    return merged
