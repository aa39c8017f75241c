"""Normalise extracted invoices, then validate them with pandera and decide what finance can trust.

Validation is lazy: every problem of a document is collected as a named issue code, so a reviewer sees the whole
list at once. A document with any issue becomes ``needs_review``; a hard duplicate (same vendor and normalised
invoice number as a live invoice) becomes ``blocked`` and never reaches the ERP; the others are ``auto_approved``.
Credit notes are stored with negative amounts (the spend views net them off), whatever sign the extractor reported.

Settings (environment, read at call time):

* ``INVOICEFLOW_TOTALS_TOLERANCE`` absolute tolerance of the arithmetic checks (default 0.02 currency units)
* ``INVOICEFLOW_MAX_FUTURE_DAYS`` how far the invoice date may lie in the future (default 31 days)
* ``INVOICEFLOW_MAX_AGE_YEARS`` how old an invoice may be (default 15 years)
* ``INVOICEFLOW_MAX_TAX_RATE`` highest plausible tax ÷ subtotal (default 0.30)
* ``INVOICEFLOW_SOFT_DUPLICATE_DAYS`` same vendor and amount within this many days: review (default 7)
* vendor matching thresholds: see :mod:`invoiceflow.vendors`
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache, partial
from typing import Any

import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa
from pandera.typing import Series
from sqlalchemy.engine import Engine

from invoiceflow import config
from invoiceflow.document_types import CREDIT_NOTE, printed_document_type
from invoiceflow.extraction.values import CURRENCY_SYMBOLS, parse_amount, parse_date, parse_number
from invoiceflow.vendors import VendorMaster, load_master, name_key
from invoiceflow.warehouse import (
    BLOCKED,
    DERIVED_COLUMNS,
    DUPLICATE_ISSUE,
    HEADER_COLUMNS,
    LINE_COLUMNS,
    ValidatedInvoice,
    cyclic_gc_paused,
    invoice_number_norm,
)

#: Issue codes and the message a reviewer reads.
MESSAGES = {
    "missing_invoice_number": "The invoice number could not be read.",
    "missing_vendor_name": "The vendor name could not be read.",
    "missing_total_amount": "The total amount could not be read.",
    "missing_invoice_date": "The invoice date could not be read.",
    "missing_currency": "The currency could not be read.",
    "line_items_do_not_match_subtotal": "The line totals do not add up to the subtotal.",
    "line_items_do_not_match_total": "The line totals do not add up to the total (no subtotal printed).",
    "subtotal_plus_tax_does_not_match_total": "Subtotal plus tax does not equal the total.",
    "implausible_tax_rate": "Tax divided by subtotal is not a plausible tax rate.",
    "invoice_date_in_future": "The invoice date lies in the future.",
    "invoice_date_implausibly_old": "The invoice date is implausibly old.",
    "due_date_before_invoice_date": "The due date is before the invoice date.",
    "invalid_date": "A date could not be parsed as a calendar date.",
    "ambiguous_date": "A date reads as two different days (03/01/2024: day or month first?).",
    "invalid_currency": "The currency is not a three-letter code.",
    "unknown_currency": "The currency is not in the ISO 4217 list.",
    "invalid_amount": "An amount is not a number.",
    "ambiguous_amount": "An amount reads as two different numbers (1.234: thousands or decimals?).",
    "line_item_without_total": "A line item has no line total.",
    "unknown_vendor": "The vendor is not in the vendors master table.",
    "vendor_match_uncertain": "The vendor only resembles a master vendor: confirm the match.",
    "invalid_vat_id": "The VAT id fails its check digits.",
    "invalid_iban": "The IBAN fails its check digits.",
    DUPLICATE_ISSUE: "Another live invoice has the same vendor and invoice number: blocked from the ERP.",
    "possible_duplicate": "Another invoice of this vendor has the same amount within a few days.",
}

#: Issues that block an invoice from the ERP outright (the others ask for review).
BLOCKING = frozenset({DUPLICATE_ISSUE})

#: ISO 4217 minor units that are not 2 (rounding is currency-aware).
_MINOR_UNITS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


@cache
def iso_currencies() -> frozenset[str]:
    """The ISO 4217 alphabetic codes (pycountry's list, which ships with schwifty)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
#: Printed currency symbols ("€", "fr.") by their casefolded form.
_SYMBOL_CURRENCIES = {symbol.casefold(): code for symbol, code in CURRENCY_SYMBOLS.items()}
#: An amount string float() reads as printed: no grouping, at most two decimals.
_PLAIN_AMOUNT = re.compile(r"-?\d+(?:\.\d{1,2})?")
#: One separator before exactly three digits ("1.234", "€ 12,500"): thousands or decimals, nothing tells which.
_AMBIGUOUS_AMOUNT = re.compile(r"\D*[1-9]\d{0,2}[.,]\d{3}\D*")


def minor_units(currency: str | None) -> int:
    return _MINOR_UNITS.get(currency or "", 2)


def tolerance() -> float:
    """Absolute tolerance for the arithmetic checks, in currency units."""
    return config.totals_tolerance()


def future_days() -> int:
    return int(os.environ.get("INVOICEFLOW_MAX_FUTURE_DAYS", "31"))


def max_age_years() -> int:
    return int(os.environ.get("INVOICEFLOW_MAX_AGE_YEARS", "15"))


def max_tax_rate() -> float:
    return float(os.environ.get("INVOICEFLOW_MAX_TAX_RATE", "0.30"))


def soft_duplicate_days() -> int:
    return int(os.environ.get("INVOICEFLOW_SOFT_DUPLICATE_DAYS", "7"))


def oldest_plausible() -> date:
    today = date.today()
    try:
        return today.replace(year=today.year - max_age_years())
    except ValueError:  # 29 February
        return today.replace(year=today.year - max_age_years(), day=28)


@cache
def _vat_valid(value: str) -> bool:
    from stdnum import vatin

    return bool(vatin.is_valid(value))


@cache
def _iban_valid(value: str) -> bool:
    from schwifty import IBAN

    try:
        IBAN(value)
    except ValueError:
        return False
    return True


def _valid_or_null(values: pd.Series, check: Any) -> pd.Series:
    present = values.notna()
    out = pd.Series(True, index=values.index)
    if present.any():
        out[present] = values[present].map(lambda v: check(str(v)))
    return out.astype(bool)


#: Row-wise checks of the schema. ``ignore_na=False``: pandera's default lets a row whose every column is null pass,
#: and pays a whole-frame ``isna()`` per check for it (most of the schema's time); no row is all null here
#: (``document_sha256`` is the key of each), so the outcome is the same.
_row_check = partial(pa.dataframe_check, ignore_na=False)


class InvoiceHeaderSchema(pa.DataFrameModel):
    """One row per invoice, with the line-item sum and the derived duplicate columns beside the printed amounts."""

    document_sha256: Series[str] = pa.Field(unique=True)
    invoice_number: Series[str] = pa.Field(nullable=False)
    vendor_name: Series[str] = pa.Field(nullable=False)
    total_amount: Series[float] = pa.Field(nullable=False)
    subtotal: Series[float] = pa.Field(nullable=True)
    tax_amount: Series[float] = pa.Field(nullable=True)
    line_total_sum: Series[float] = pa.Field(nullable=True)
    invoice_date: Series[pd.Timestamp] = pa.Field(nullable=False)
    due_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    currency: Series[str] = pa.Field(nullable=False)
    vendor_status: Series[str] = pa.Field(nullable=False)
    vendor_vat_id: Series[str] = pa.Field(nullable=True)
    vendor_iban: Series[str] = pa.Field(nullable=True)
    duplicate_of: Series[str] = pa.Field(nullable=True)
    soft_duplicate_of: Series[str] = pa.Field(nullable=True)

    class Config:
        coerce = True

    @_row_check(name="line_items_do_not_match_subtotal")
    def _lines_match_subtotal(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.line_total_sum.notna() & df.subtotal.notna()
        return ~checkable | ((df.line_total_sum - df.subtotal).abs() <= tolerance())

    @_row_check(name="line_items_do_not_match_total")
    def _lines_match_total(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = (
            df.line_total_sum.notna() & df.subtotal.isna() & df.tax_amount.isna() & df.total_amount.notna()
        )
        return ~checkable | ((df.line_total_sum - df.total_amount).abs() <= tolerance())

    @_row_check(name="subtotal_plus_tax_does_not_match_total")
    def _totals_add_up(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.subtotal.notna() & df.tax_amount.notna() & df.total_amount.notna()
        return ~checkable | ((df.subtotal + df.tax_amount - df.total_amount).abs() <= tolerance())

    @_row_check(name="implausible_tax_rate")
    def _plausible_tax_rate(cls, df: pd.DataFrame) -> Series[bool]:
        # Credit notes have a negative subtotal and tax: the rate stays positive.
        checkable = df.subtotal.notna() & df.tax_amount.notna() & (df.subtotal.abs() > tolerance())
        rate = df.tax_amount / df.subtotal.where(checkable, 1.0)
        return ~checkable | ((rate >= -1e-9) & (rate <= max_tax_rate()))

    @_row_check(name="invoice_date_in_future")
    def _not_in_future(cls, df: pd.DataFrame) -> Series[bool]:
        limit = pd.Timestamp(date.today() + timedelta(days=future_days()))
        return df.invoice_date.isna() | (df.invoice_date <= limit)

    @_row_check(name="invoice_date_implausibly_old")
    def _not_ancient(cls, df: pd.DataFrame) -> Series[bool]:
        return df.invoice_date.isna() | (df.invoice_date >= pd.Timestamp(oldest_plausible()))

    @_row_check(name="due_date_before_invoice_date")
    def _due_after_issue(cls, df: pd.DataFrame) -> Series[bool]:
        checkable = df.invoice_date.notna() & df.due_date.notna()
        return ~checkable | (df.due_date >= df.invoice_date)

    @_row_check(name="unknown_currency")
    def _known_currency(cls, df: pd.DataFrame) -> Series[bool]:
        # A missing currency is ``missing_currency`` (not nullable), not an unknown one as well.
        return df.currency.isna() | df.currency.isin(iso_currencies())

    @_row_check(name="unknown_vendor")
    def _known_vendor(cls, df: pd.DataFrame) -> Series[bool]:
        return df.vendor_name.isna() | (df.vendor_status != "unknown")

    @_row_check(name="vendor_match_uncertain")
    def _certain_vendor(cls, df: pd.DataFrame) -> Series[bool]:
        return df.vendor_status != "uncertain"

    @_row_check(name="invalid_vat_id")
    def _vat_id(cls, df: pd.DataFrame) -> Series[bool]:
        return _valid_or_null(df.vendor_vat_id, _vat_valid)

    @_row_check(name="invalid_iban")
    def _iban(cls, df: pd.DataFrame) -> Series[bool]:
        return _valid_or_null(df.vendor_iban, _iban_valid)

    @_row_check(name=DUPLICATE_ISSUE)
    def _not_hard_duplicate(cls, df: pd.DataFrame) -> Series[bool]:
        return df.duplicate_of.isna()

    @_row_check(name="possible_duplicate")
    def _not_soft_duplicate(cls, df: pd.DataFrame) -> Series[bool]:
        return df.soft_duplicate_of.isna()


# --------------------------------------------------------------------------------------------------- normalise


def _clean_text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join((value if type(value) is str else str(value)).split())
    return text or None


def _amount(value: Any, issues: set[str]) -> float | None:
    kind = type(value)
    if kind is float:  # what extractors return: nothing to parse
        if math.isfinite(value):
            return value
        issues.add("invalid_amount")
        return None
    if kind is int:
        return float(value)
    if value is None or value == "":
        return None
    if kind is str:
        return _printed_amount(value, issues)
    try:
        number = float(value)
    except (TypeError, ValueError):
        issues.add("invalid_amount")
        return None
    if math.isnan(number) or math.isinf(number):
        issues.add("invalid_amount")
        return None
    return number


def _printed_amount(value: str, issues: set[str]) -> float | None:
    """An amount as text (LeapOCR may send strings): float() could misread "1.234,56" as 1.23456.

    Plain "1234.56" is read at once; anything else goes through the extractors' parser (European and US grouping,
    currency signs, "(12.50)"). "1.234" is 1234 or 1.234: an issue, never a guess.
    """
    text = value.strip()
    if not text:
        return None
    if _PLAIN_AMOUNT.fullmatch(text):
        number: float | None = float(text)
    elif _AMBIGUOUS_AMOUNT.fullmatch(text):
        issues.add("ambiguous_amount")
        return None
    else:
        number = parse_number(text)
        if number is None:
            number = parse_amount(text)  # with a currency sign or code; rounded to cents
    if number is None or not math.isfinite(number):
        issues.add("invalid_amount")
        return None
    return number


def _round(value: float | None, places: int) -> float | None:
    """Round half up in decimal (``2.675`` -> ``2.68``), not binary float rounding.

    A float that ``round`` leaves as it is has at most ``places`` decimals in its shortest repr, which the decimal
    rounding would keep as well: returned at once (most amounts), without the ``Decimal`` round trip.
    """
    if value is None:
        return None
    if type(value) is float and round(value, places) == value:
        return value
    try:
        return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return round(value, places)


def _iso_date(value: Any, issues: set[str]) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        return _printed_date(text, issues)


def _printed_date(text: str, issues: set[str]) -> str | None:
    """A date printed otherwise than ISO ("01.03.2024", "1 March 2024"), read by the extractors' parser.

    A slash date whose first two numbers are both possible months (03/01/2024) is an issue: guessing US or
    European order would file the invoice under the wrong day.
    """
    day = parse_date(text)
    if day is None:
        issues.add("invalid_date")
    elif parse_date(text, prefer_dmy=True) != day:
        issues.add("ambiguous_date")
        return None
    return day


def _currency(value: Any, issues: set[str]) -> str | None:
    """ISO 4217 code as printed ("eur"), or the code of a printed symbol ("€", "Fr."); anything else is an issue."""
    text = _clean_text(value)
    if text is None:
        return None
    code = text.upper()
    if _CURRENCY_CODE.fullmatch(code):
        return code
    symbol_code = _SYMBOL_CURRENCIES.get(text.casefold())
    if symbol_code is None:
        issues.add("invalid_currency")
    return symbol_code


def _first(merged: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if merged.get(key) not in (None, ""):
            return merged[key]
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
    currency = header["currency"] = _currency(merged.get("currency"), issues)
    places = minor_units(currency)
    for key in ("subtotal", "tax_amount", "total_amount"):
        header[key] = _round(_amount(merged.get(key), issues), places)
    return header, _normalise_lines(merged.get("line_items") or [], places, issues), issues


def _normalise_lines(
    items: Sequence[Mapping[str, Any]], places: int, issues: set[str]
) -> list[dict[str, Any]]:
    """The line items of ``normalise`` (most of its work: one pass, no per-line helper dicts)."""
    lines = []
    for item in items:
        get = item.get
        description = _clean_text(get("description"))
        quantity = _amount(get("quantity"), issues)
        unit_price = _amount(get("unit_price"), issues)
        line_total = _amount(get("line_total"), issues)
        if line_total is None:
            issues.add("line_item_without_total")
            if description is None and quantity is None and unit_price is None:
                continue  # nothing printed on this line
        else:
            line_total = _round(line_total, places)
        lines.append(
            {
                "description": description,
                "quantity": quantity,
                "unit_price": unit_price,
                "line_total": line_total,
            }
        )
    return lines


def _extras(merged: Mapping[str, Any], header: Mapping[str, Any]) -> dict[str, Any]:
    """What validation derives beside the printed header (document type, VAT id and IBAN if printed)."""
    vat = _clean_text(_first(merged, "vendor_vat_id", "vat_id", "seller_vat_id"))
    iban = _clean_text(_first(merged, "vendor_iban", "iban"))
    credit = _is_credit_note(merged.get("document_type"), header.get("total_amount"))
    return {
        "document_type": "credit_note" if credit else "invoice",
        "vendor_vat_id": vat.replace(" ", "").upper() if vat else None,
        "vendor_iban": iban.replace(" ", "").upper() if iban else None,
    }


def _is_credit_note(printed_type: Any, total: float | None) -> bool:
    """Typed a credit note ("credit_note", "Credit Note", "381", ...: :mod:`invoiceflow.document_types`), or an
    invoice with a negative total."""
    return printed_document_type(printed_type) == CREDIT_NOTE or (total is not None and total < 0)


def _negated(value: float | None) -> float | None:
    return None if value is None else 0.0 - value  # a zero stays 0.0, not -0.0


def _credit_note_signs(header: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    """Store a credit note negative, as the spend views expect; EN 16931 extractors report it positive.

    The sign of the total (else the subtotal) decides; every amount but the quantity flips, so the lines still add
    up to the subtotal and subtotal plus tax to the total.
    """
    reference = header["total_amount"] if header["total_amount"] is not None else header["subtotal"]
    if reference is None or reference <= 0:
        return
    for key in ("subtotal", "tax_amount", "total_amount"):
        header[key] = _negated(header[key])
    for line in lines:
        line["unit_price"] = _negated(line["unit_price"])
        line["line_total"] = _negated(line["line_total"])


# --------------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """What validation needs from the warehouse: the vendors master and the live invoices of the same vendors."""

    vendors: VendorMaster = field(default_factory=VendorMaster)
    existing: list[dict[str, Any]] = field(default_factory=list)


def load_context(engine: Engine, vendor_keys: Sequence[str] | None = None) -> Context:
    """Vendors master plus live invoices (not duplicates, not rejected) of these vendor keys."""
    master = load_master(engine)
    existing: list[dict[str, Any]] = []
    if vendor_keys:
        stmt = sa.text(
            "SELECT document_sha256, vendor_key, invoice_number_norm, invoice_number, total_amount, currency, "
            "invoice_date FROM invoices WHERE vendor_key IN :keys AND duplicate_of IS NULL "
            "AND review_status <> 'rejected'"
        ).bindparams(sa.bindparam("keys", expanding=True))
        with engine.connect() as conn:
            existing = [dict(r._mapping) for r in conn.execute(stmt, {"keys": sorted(set(vendor_keys))})]
    return Context(master, existing)


def _as_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _cents(amount: Any, currency: str | None) -> int | None:
    if amount is None:
        return None
    return round(float(amount) * 10 ** minor_units(currency))


def _find_duplicates(rows: list[dict[str, Any]], existing: list[dict[str, Any]]) -> None:
    """Set ``duplicate_of`` (hard) and ``soft_duplicate_of`` on the rows, against the warehouse and each other.

    The warehouse's live invoices win; inside a batch the first document (by hash) is the original.
    """
    hard: dict[tuple[str, str], str] = {}
    soft: dict[tuple[str, str | None, int], list[tuple[date | None, str, str | None]]] = {}
    batch_shas = {r["document_sha256"] for r in rows}

    def remember(
        sha: str, vkey: str | None, num: str | None, cents: int | None, currency: Any, day: Any
    ) -> None:
        if vkey and num:
            hard.setdefault((vkey, num), sha)
        if vkey and cents is not None:
            soft.setdefault((vkey, currency, cents), []).append((day, sha, num))

    for r in existing:
        if r["document_sha256"] not in batch_shas:
            remember(
                r["document_sha256"],
                r["vendor_key"],
                r["invoice_number_norm"],
                _cents(r["total_amount"], r["currency"]),
                r["currency"],
                _as_date(r["invoice_date"]),
            )
    window = soft_duplicate_days()
    for row in sorted(rows, key=lambda r: r["document_sha256"]):
        sha, vkey, num = row["document_sha256"], row["vendor_key"], row["invoice_number_norm"]
        original = hard.get((vkey, num)) if vkey and num else None
        row["duplicate_of"] = original if original and original != sha else None
        row["soft_duplicate_of"] = None
        cents = _cents(row["total_amount"], row["currency"])
        day = _as_date(row["invoice_date"])
        if not row["duplicate_of"] and vkey and num and cents is not None and day is not None:
            for other_day, other_sha, other_num in soft.get((vkey, row["currency"], cents), []):
                if (
                    other_sha != sha
                    and other_num
                    and other_num != num
                    and other_day
                    and abs((day - other_day).days) <= window
                ):
                    row["soft_duplicate_of"] = other_sha
                    break
        if not row["duplicate_of"]:
            remember(sha, vkey, num, cents, row["currency"], day)


# --------------------------------------------------------------------------------------------------- messages

#: Printed fields whose raw value can explain an issue of ``normalise`` (key in the merged invoice, label).
_PRINTED_DATES = (("invoice_date", "invoice date"), ("due_date", "due date"))
_PRINTED_AMOUNTS = (("subtotal", "subtotal"), ("tax_amount", "tax amount"), ("total_amount", "total amount"))
_LINE_AMOUNTS = (("quantity", "quantity"), ("unit_price", "unit price"), ("line_total", "line total"))


def _money(value: float, currency: str | None) -> str:
    return f"{value:.{minor_units(currency)}f}"


def _printed(value: Any) -> str:
    return repr(value.strip() if type(value) is str else value)


def _printed_values(code: str, merged: Mapping[str, Any]) -> str | None:
    """The printed values behind a ``normalise`` issue: each re-read alone, to see which one raised ``code``."""

    def raises(reader: Any, value: Any) -> bool:
        found: set[str] = set()
        reader(value, found)
        return code in found

    if code in ("invalid_date", "ambiguous_date"):
        parts = [
            f"{label} {_printed(merged.get(key))}"
            for key, label in _PRINTED_DATES
            if raises(_iso_date, merged.get(key))
        ]
    else:  # amounts
        parts = [
            f"{label} {_printed(merged.get(key))}"
            for key, label in _PRINTED_AMOUNTS
            if raises(_amount, merged.get(key))
        ]
        for n, item in enumerate(merged.get("line_items") or [], start=1):
            if isinstance(item, Mapping):
                parts += [
                    f"line {n} {label} {_printed(item.get(key))}"
                    for key, label in _LINE_AMOUNTS
                    if raises(_amount, item.get(key))
                ]
    return ", ".join(parts) or None


def _issue_values(code: str, row: Mapping[str, Any], merged: Mapping[str, Any]) -> str | None:
    """The document's values that explain issue ``code`` (``None``: nothing useful, the generic message stays)."""
    cur = row.get("currency")
    if code in ("line_items_do_not_match_subtotal", "line_items_do_not_match_total"):
        lines = row.get("line_total_sum")
        key, label = ("subtotal", "subtotal") if code.endswith("subtotal") else ("total_amount", "total")
        other = row.get(key)
        if lines is None or other is None:
            return None
        return (
            f"lines {_money(lines, cur)}, {label} {_money(other, cur)} "
            f"(difference {_money(abs(other - lines), cur)})"
        )
    if code == "subtotal_plus_tax_does_not_match_total":
        sub, tax, total = row.get("subtotal"), row.get("tax_amount"), row.get("total_amount")
        if sub is None or tax is None or total is None:
            return None
        return (
            f"{_money(sub, cur)} + {_money(tax, cur)} = {_money(sub + tax, cur)}, total {_money(total, cur)}"
        )
    if code == "implausible_tax_rate":
        sub, tax = row.get("subtotal"), row.get("tax_amount")
        if not sub or tax is None:
            return None
        return (
            f"tax {_money(tax, cur)} / subtotal {_money(sub, cur)} = {tax / sub:.1%} "
            f"(plausible 0% to {max_tax_rate():.0%})"
        )
    if code == "invoice_date_in_future":
        latest = date.today() + timedelta(days=future_days())
        return f"invoice date {row.get('invoice_date')}, latest plausible {latest.isoformat()}"
    if code == "invoice_date_implausibly_old":
        return f"invoice date {row.get('invoice_date')}, oldest plausible {oldest_plausible().isoformat()}"
    if code == "due_date_before_invoice_date":
        return f"due date {row.get('due_date')}, invoice date {row.get('invoice_date')}"
    if code == "unknown_currency":
        return f"currency {_printed(cur)}" if cur else None
    if code == "invalid_currency":
        printed = merged.get("currency")
        return f"currency {_printed(printed)}" if printed not in (None, "") else None
    if code in ("invalid_date", "ambiguous_date", "invalid_amount", "ambiguous_amount"):
        return _printed_values(code, merged)
    if code in (DUPLICATE_ISSUE, "possible_duplicate"):
        other = row.get("duplicate_of" if code == DUPLICATE_ISSUE else "soft_duplicate_of")
        return f"document {str(other)[:12]}" if other else None
    if code == "invalid_vat_id":
        return f"VAT id {row['vendor_vat_id']}" if row.get("vendor_vat_id") else None
    if code == "invalid_iban":
        return f"IBAN {row['vendor_iban']}" if row.get("vendor_iban") else None
    return None


def issue_message(code: str, row: Mapping[str, Any], merged: Mapping[str, Any]) -> str:
    """``MESSAGES[code]`` plus the values of this document that explain it ("...: lines 100.00, subtotal 120.00").

    Called only for issues that exist; a value it cannot format leaves the generic message (never a lost batch).
    """
    generic = MESSAGES[code]
    try:
        values = _issue_values(code, row, merged)
    except (TypeError, ValueError, ArithmeticError):
        return generic
    return f"{generic.removesuffix('.')}: {values}." if values else generic


# --------------------------------------------------------------------------------------------------- validate


def validate(
    invoices: Mapping[str, Mapping[str, Any]],
    context: Context | None = None,
    *,
    engine: Engine | None = None,
) -> list[ValidatedInvoice]:
    """Normalise and validate merged invoices (keyed by document hash); every failure becomes an issue.

    ``context`` (or ``engine``, to read it from the warehouse) supplies the vendors master and the invoices already
    loaded; without either, vendor matching is off and duplicates are looked for inside the batch only.
    """
    with cyclic_gc_paused():  # see there: about 40% of the time went to the collector
        return _validate(invoices, context, engine)


def _validate(
    invoices: Mapping[str, Mapping[str, Any]], context: Context | None, engine: Engine | None
) -> list[ValidatedInvoice]:
    prepared = {sha: normalise(merged) for sha, merged in invoices.items()}
    if not prepared:
        return []
    context = context or Context()
    if engine is not None and not context.vendors:
        context = Context(load_master(engine), context.existing)
    rows = []
    for sha, (header, lines, _) in prepared.items():
        match = context.vendors.match(header["vendor_name"])
        extras = _extras(invoices[sha], header)
        if extras["document_type"] == "credit_note":
            _credit_note_signs(header, lines)
        vendor_key = match.key_prefix or (name_key(header["vendor_name"]) if header["vendor_name"] else None)
        rows.append(
            {
                "document_sha256": sha,
                **{c: header[c] for c in HEADER_COLUMNS},
                **extras,
                "line_total_sum": (
                    _round(sum(li["line_total"] for li in lines if li["line_total"] is not None), 6)
                    if lines
                    else None
                ),
                "vendor_status": match.status,
                "vendor_id": match.vendor_id if match.status == "matched" else None,
                "vendor_match_score": match.score,
                "vendor_key": vendor_key,
                "invoice_number_norm": invoice_number_norm(header["invoice_number"]),
            }
        )
    if engine is not None and not context.existing:
        context.existing = load_context(engine, [r["vendor_key"] for r in rows if r["vendor_key"]]).existing
    _find_duplicates(rows, context.existing)
    frame = pd.DataFrame(rows)
    found = {sha: set(codes) for sha, (_, _, codes) in prepared.items()}
    for sha, code in schema_failures(frame):
        found[sha].add(code)
    results = []
    for row, (sha, (header, lines, _)) in zip(rows, prepared.items(), strict=True):
        issues = [
            {
                "code": code,
                "message": issue_message(code, row, invoices[sha]),
                "severity": BLOCKED if code in BLOCKING else "review",
            }
            for code in sorted(found[sha])
        ]
        derived = {k: row[k] for k in DERIVED_COLUMNS}
        results.append(ValidatedInvoice(sha, header, lines, issues, derived))
    return results


def schema_failures(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Run the pandera schema lazily and turn its failure cases into ``(document_sha256, issue code)`` pairs."""
    try:
        InvoiceHeaderSchema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        if cases["index"].isna().any():
            raise  # a schema-level problem (missing column, bad dtype) is a bug, not a document issue
        codes = (
            cases["check"]
            .astype(str)
            .where(cases["check"] != "not_nullable", "missing_" + cases["column"].astype(str))
        )
        if unknown := set(codes) - set(MESSAGES):
            raise ValueError(f"pandera reported checks without an issue code: {sorted(unknown)}") from err
        shas = frame["document_sha256"].to_numpy()[cases["index"].astype(int).to_numpy()]
        return list(zip(shas, codes, strict=True))
    return []


__all__ = [
    "BLOCKING",
    "LINE_COLUMNS",
    "MESSAGES",
    "Context",
    "InvoiceHeaderSchema",
    "load_context",
    "normalise",
    "validate",
]
