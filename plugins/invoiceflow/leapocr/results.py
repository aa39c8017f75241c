"""Fetch every result page of a LeapOCR job and merge the pages into one invoice."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from leapocr import LeapOCR

#: Page size asked of the API (its maximum is 1000; 100 is the SDK default).
PAGE_LIMIT = 100

TOTAL_FIELDS = ("subtotal", "tax_amount", "total_amount")


async def fetch_all_pages(client: LeapOCR, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All result pages of a finished job (``wait_until_done`` only returns the first 100), plus job facts."""
    pages: list[dict[str, Any]] = []
    page = 1
    while True:
        result = await client.ocr.get_results(job_id, page=page, limit=PAGE_LIMIT)
        pages.extend(asdict(p) for p in result.pages)
        if result.pagination is None or page >= result.pagination.total_pages or not result.pages:
            break
        page += 1
    facts = {"model": result.model, "credits_used": result.credits_used, "total_pages": result.total_pages}
    return sorted(pages, key=lambda p: p["page_number"]), facts


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
