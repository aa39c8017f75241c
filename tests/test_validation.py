"""Validation: each rule produces its named issue, every issue of a document is collected, clean ones pass."""

from __future__ import annotations

import gc
import random
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import pytest

from invoiceflow import validation
from invoiceflow.validation import MESSAGES, normalise, validate


def invoice(**overrides: Any) -> dict[str, Any]:
    base = {
        "invoice_number": " INV-1 ",
        "vendor_name": "ACME  Supplies GmbH",
        "invoice_date": "2026-03-01",
        "due_date": "2026-03-31",
        "currency": "eur",
        "subtotal": 100.0,
        "tax_amount": 19.0,
        "total_amount": 119.0,
        "purchase_order_number": None,
        "line_items": [
            {"description": "Paper", "quantity": 2, "unit_price": 30, "line_total": 60.0},
            {"description": "Toner", "quantity": 1, "unit_price": 40, "line_total": 40.0},
        ],
    }
    return {**base, **overrides}


def issues_of(merged: dict[str, Any]) -> list[str]:
    (result,) = validate({"doc": merged})
    return [i["code"] for i in result.issues]


def test_clean_invoice_is_auto_approved_and_normalised() -> None:
    (result,) = validate({"doc": invoice()})
    assert result.review_status == "auto_approved"
    assert result.header["invoice_number"] == "INV-1"
    assert result.header["vendor_name"] == "ACME Supplies GmbH"
    assert result.header["currency"] == "EUR"
    assert [li["line_total"] for li in result.line_items] == [60.0, 40.0]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"invoice_number": None}, "missing_invoice_number"),
        ({"vendor_name": "   "}, "missing_vendor_name"),
        ({"total_amount": None}, "missing_total_amount"),
        ({"subtotal": 110.0, "total_amount": 129.0}, "line_items_do_not_match_subtotal"),
        ({"total_amount": 120.0}, "subtotal_plus_tax_does_not_match_total"),
        ({"subtotal": None, "tax_amount": None, "total_amount": 90.0}, "line_items_do_not_match_total"),
        ({"due_date": "2026-02-01"}, "due_date_before_invoice_date"),
        (
            {"invoice_date": (date.today() + timedelta(days=400)).isoformat(), "due_date": None},
            "invoice_date_in_future",
        ),
        ({"invoice_date": "1970-01-01"}, "invoice_date_implausibly_old"),
        ({"invoice_date": "2026-02-30"}, "invalid_date"),
        ({"currency": "euro"}, "invalid_currency"),
        ({"total_amount": "a lot"}, "invalid_amount"),
    ],
)
def test_each_rule_produces_its_issue(overrides: dict[str, Any], code: str) -> None:
    assert code in issues_of(invoice(**overrides))
    assert code in MESSAGES


def test_all_failures_of_a_document_are_collected_at_once() -> None:
    codes = issues_of(
        invoice(invoice_number=None, vendor_name=None, total_amount=125.0, due_date="2026-01-01")
    )
    assert codes == sorted(
        [
            "due_date_before_invoice_date",
            "missing_invoice_number",
            "missing_vendor_name",
            "subtotal_plus_tax_does_not_match_total",
        ]
    )


def test_tolerance_absorbs_rounding_but_not_real_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    assert issues_of(invoice(total_amount=119.01)) == []
    monkeypatch.setenv("INVOICEFLOW_TOTALS_TOLERANCE", "0.001")
    assert issues_of(invoice(total_amount=119.01)) == ["subtotal_plus_tax_does_not_match_total"]


def test_credit_note_with_negative_amounts_is_valid() -> None:
    lines = [{"description": "Return", "quantity": -1, "unit_price": 50, "line_total": -50.0}]
    assert issues_of(invoice(subtotal=-50.0, tax_amount=-9.5, total_amount=-59.5, line_items=lines)) == []


def test_documents_are_judged_independently_in_one_batch() -> None:
    results = validate({"good": invoice(), "bad": invoice(invoice_number=None)})
    assert {r.document_sha256: r.review_status for r in results} == {
        "good": "auto_approved",
        "bad": "needs_review",
    }


def test_normalise_never_invents_values() -> None:
    header, lines, issues = normalise({})
    assert all(value is None for value in header.values())
    assert lines == [] and issues == set()


def _decimal_half_up(value: float, places: int) -> float:
    """The rounding rule ``_round`` implements, spelled out (its fast path must agree everywhere)."""
    try:
        return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return round(value, places)


def test_rounding_is_decimal_half_up_for_every_float() -> None:
    rng = random.Random(5)
    values = [
        2.675,
        1.005,
        0.125,
        2.5,
        -2.5,
        0.5,
        -0.0,
        0.0,
        1e16,
        1e22,
        1e30,
        -1e-7,
        4384.17,
        119.0,
        0.1 + 0.2,
    ]
    values += [rng.uniform(-1e4, 1e4) for _ in range(2000)] + [
        round(rng.uniform(-1e4, 1e4), 2) for _ in range(2000)
    ]
    values += [rng.randint(-(10**6), 10**6) / 1000 for _ in range(2000)]
    for value in values:
        for places in (0, 2, 3, 4, 6):
            got = validation._round(value, places)
            assert got == _decimal_half_up(value, places) and type(got) is float, (value, places)


@pytest.mark.parametrize(
    ("raw", "expected", "issue"),
    [
        (12, 12.0, False),
        (12.5, 12.5, False),
        (True, 1.0, False),
        ("1,234.50", 1234.5, False),
        (" 7 ", 7.0, False),
        ("", None, False),
        (None, None, False),
        (float("nan"), None, True),
        (float("inf"), None, True),
        ("inf", None, True),
        ("a lot", None, True),
        (Decimal("2.50"), 2.5, False),
    ],
)
def test_amounts_are_parsed_like_any_printed_number(raw: Any, expected: float | None, issue: bool) -> None:
    issues: set[str] = set()
    got = validation._amount(raw, issues)
    assert got == expected and (got is None or type(got) is float)
    assert issues == ({"invalid_amount"} if issue else set())


def test_empty_line_item_is_dropped_but_flagged() -> None:
    _, lines, issues = normalise({"line_items": [{}, {"description": " x ", "line_total": 1}]})
    assert lines == [{"description": "x", "quantity": None, "unit_price": None, "line_total": 1.0}]
    assert issues == {"line_item_without_total"}


def test_validate_leaves_the_garbage_collector_as_it_found_it() -> None:
    gc.disable()
    try:
        validate({"doc": invoice()})
        assert not gc.isenabled()
    finally:
        gc.enable()
    validate({"doc": invoice()})
    assert gc.isenabled()
