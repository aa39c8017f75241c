"""Normalise extracted invoices, then validate them with pandera and decide what finance can trust.

Validation is lazy: every problem of a document is collected as a named issue code, so a reviewer sees the whole
list at once. A document with any issue becomes ``needs_review``; the others are ``auto_approved``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from invoiceflow.warehouse import HEADER_COLUMNS, LINE_COLUMNS, ValidatedInvoice

#: Issue codes and the message a reviewer reads.
MESSAGES = {
    "missing_invoice_number": "The invoice number could not be read.",
    "missing_vendor_name": "The vendor name could not be read.",
    "missing_total_amount": "The total amount could not be read.",
    "line_items_do_not_match_subtotal": "The line totals do not add up to the subtotal.",
    "line_items_do_not_match_total": "The line totals do not add up to the total (no subtotal printed).",
    "subtotal_plus_tax_does_not_match_total": "Subtotal plus tax does not equal the total.",
    "invoice_date_in_future": "The invoice date lies in the future.",
    "invoice_date_implausibly_old": "The invoice date is implausibly old.",
    "due_date_before_invoice_date": "The due date is before the invoice date.",
    "invalid_date": "A date could not be parsed as a calendar date.",
    "invalid_currency": "The currency is not a three-letter ISO 4217 code.",
    "invalid_amount": "An amount is not a number.",
    "line_item_without_total": "A line item has no line total.",
}

OLDEST_PLAUSIBLE = date(1990, 1, 1)


def tolerance() -> float:
    """Absolute tolerance for the arithmetic checks, in currency units."""
    return float(os.environ.get("INVOICEFLOW_TOTALS_TOLERANCE", "0.02"))


def future_days() -> int:
    return int(os.environ.get("INVOICEFLOW_MAX_FUTURE_DAYS", "31"))


class InvoiceHeaderSchema(pa.DataFrameModel):
    """One row per invoice, with the line-item sum computed beside the printed amounts."""

    document_sha256: Series[str] = pa.Field(unique=True)
    invoice_number: Series[str] = pa.Field(nullable=False)
    vendor_name: Series[str] = pa.Field(nullable=False)
    total_amount: Series[float] = pa.Field(nullable=False)
    subtotal: Series[float] = pa.Field(nullable=True)
    tax_amount: Series[float] = pa.Field(nullable=True)
    line_total_sum: Series[float] = pa.Field(nullable=True)
    invoice_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    due_date: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        coerce = True

    @pa.dataframe_check(name="line_items_do_not_match_subtotal")
    def _lines_match_subtotal(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.line_total_sum.notna() & df.subtotal.notna()
        return ~checkable | ((df.line_total_sum - df.subtotal).abs() <= tolerance())

    @pa.dataframe_check(name="line_items_do_not_match_total")
    def _lines_match_total(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = (
            df.line_total_sum.notna() & df.subtotal.isna() & df.tax_amount.isna() & df.total_amount.notna()
        )
        return ~checkable | ((df.line_total_sum - df.total_amount).abs() <= tolerance())

    @pa.dataframe_check(name="subtotal_plus_tax_does_not_match_total")
    def _totals_add_up(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.subtotal.notna() & df.tax_amount.notna() & df.total_amount.notna()
        return ~checkable | ((df.subtotal + df.tax_amount - df.total_amount).abs() <= tolerance())

    @pa.dataframe_check(name="invoice_date_in_future")
    def _not_in_future(cls, df: pd.DataFrame) -> Series[bool]:
        limit = pd.Timestamp(date.today() + timedelta(days=future_days()))
        return df.invoice_date.isna() | (df.invoice_date <= limit)

    @pa.dataframe_check(name="invoice_date_implausibly_old")
    def _not_ancient(cls, df: pd.DataFrame) -> Series[bool]:
        return df.invoice_date.isna() | (df.invoice_date >= pd.Timestamp(OLDEST_PLAUSIBLE))

    @pa.dataframe_check(name="due_date_before_invoice_date")
    def _due_after_issue(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.invoice_date.notna() & df.due_date.notna()
        return ~checkable | (df.due_date >= df.invoice_date)


# --------------------------------------------------------------------------------------------------- normalise


def _clean_text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _amount(value: Any, issues: set[str]) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(str(value).replace(",", "")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        issues.add("invalid_amount")
        return None
    if math.isnan(number) or math.isinf(number):
        issues.add("invalid_amount")
        return None
    return number


def _iso_date(value: Any, issues: set[str]) -> str | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError:
        issues.add("invalid_date")
        return None


def normalise(merged: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], set[str]]:
    """Trim text, parse dates to ISO and amounts to rounded numbers; problems found here become issues."""
    issues: set[str] = set()
    header: dict[str, Any] = {
        "invoice_number": _clean_text(merged.get("invoice_number")),
        "vendor_name": _clean_text(merged.get("vendor_name")),
        "purchase_order_number": _clean_text(merged.get("purchase_order_number")),
        "invoice_date": _iso_date(merged.get("invoice_date"), issues),
        "due_date": _iso_date(merged.get("due_date"), issues),
    }
    currency = _clean_text(merged.get("currency"))
    if currency is not None:
        currency = currency.upper()
        if not re.fullmatch(r"[A-Z]{3}", currency):
            issues.add("invalid_currency")
            currency = None
    header["currency"] = currency
    for key in ("subtotal", "tax_amount", "total_amount"):
        amount = _amount(merged.get(key), issues)
        header[key] = None if amount is None else round(amount, 2)
    lines = []
    for item in merged.get("line_items") or []:
        line = {
            "description": _clean_text(item.get("description")),
            "quantity": _amount(item.get("quantity"), issues),
            "unit_price": _amount(item.get("unit_price"), issues),
            "line_total": _amount(item.get("line_total"), issues),
        }
        if line["line_total"] is None:
            issues.add("line_item_without_total")
        else:
            line["line_total"] = round(line["line_total"], 2)
        if any(v is not None for v in line.values()):
            lines.append(line)
    return header, lines, issues


# --------------------------------------------------------------------------------------------------- validate


def validate(invoices: Mapping[str, Mapping[str, Any]]) -> list[ValidatedInvoice]:
    """Normalise and validate merged invoices (keyed by document hash); every failure becomes an issue."""
    prepared = {sha: normalise(merged) for sha, merged in invoices.items()}
    if not prepared:
        return []
    frame = pd.DataFrame(
        [
            {
                "document_sha256": sha,
                **{c: header[c] for c in HEADER_COLUMNS},
                "line_total_sum": (
                    round(sum(li["line_total"] for li in lines if li["line_total"] is not None), 2)
                    if lines
                    else None
                ),
            }
            for sha, (header, lines, _) in prepared.items()
        ]
    )
    found = {sha: set(codes) for sha, (_, _, codes) in prepared.items()}
    for sha, code in schema_failures(frame):
        found[sha].add(code)
    return [
        ValidatedInvoice(
            document_sha256=sha,
            header=header,
            line_items=lines,
            issues=[{"code": code, "message": MESSAGES[code]} for code in sorted(found[sha])],
        )
        for sha, (header, lines, _) in prepared.items()
    ]


def schema_failures(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Run the pandera schema lazily and turn its failure cases into ``(document_sha256, issue code)`` pairs."""
    try:
        InvoiceHeaderSchema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        pairs = []
        for case in err.failure_cases.itertuples():
            if case.index is None or (isinstance(case.index, float) and math.isnan(case.index)):
                raise  # a schema-level problem (missing column, bad dtype) is a bug, not a document issue
            sha = frame.loc[int(case.index), "document_sha256"]
            code = f"missing_{case.column}" if case.check == "not_nullable" else str(case.check)
            if code not in MESSAGES:
                raise
            pairs.append((sha, code))
        return pairs
    return []


__all__ = ["LINE_COLUMNS", "MESSAGES", "InvoiceHeaderSchema", "normalise", "validate"]
