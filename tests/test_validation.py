"""Validation: each rule produces its named issue, every issue of a document is collected, clean ones pass."""

from __future__ import annotations

import gc
import math
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
        ({"total_amount": "1.190"}, "ambiguous_amount"),
        ({"invoice_date": "03/01/2026"}, "ambiguous_date"),
        ({"invoice_date": None, "due_date": None}, "missing_invoice_date"),
        ({"currency": None}, "missing_currency"),
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


# --------------------------------------------------------------------------------------- printed (string) values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.234,56", 1234.56),
        ("1 234,56", 1234.56),
        ("€ 1.234,56", 1234.56),
        ("12.50 EUR", 12.5),
        ("-12,50", -12.5),
        ("(12.50)", -12.5),
        ("0,125", 0.125),
    ],
)
def test_printed_amounts_are_read_in_european_and_us_formats(raw: str, expected: float) -> None:
    issues: set[str] = set()
    assert validation._amount(raw, issues) == expected and issues == set()


@pytest.mark.parametrize("raw", ["1.234", "12,500", "€ 1.234", "-1,234"])
def test_amount_with_thousands_or_decimals_unknown_is_an_issue_not_a_guess(raw: str) -> None:
    issues: set[str] = set()
    assert validation._amount(raw, issues) is None
    assert issues == {"ambiguous_amount"}


def test_invoice_with_european_amount_strings_is_read_right() -> None:
    lines = [
        {"description": "Paper", "quantity": "2", "unit_price": "300,00", "line_total": "600,00"},
        {"description": "Toner", "quantity": "1", "unit_price": "400,00", "line_total": "400,00"},
    ]
    merged = invoice(subtotal="1.000,00", tax_amount="190,00", total_amount="€ 1.190,00", line_items=lines)
    (result,) = validate({"doc": merged})
    assert result.issues == []
    assert [result.header[k] for k in ("subtotal", "tax_amount", "total_amount")] == [1000.0, 190.0, 1190.0]
    assert [li["unit_price"] for li in result.line_items] == [300.0, 400.0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("01.03.2026", "2026-03-01"),
        ("1 March 2026", "2026-03-01"),
        ("March 1, 2026", "2026-03-01"),
        ("1. März 2026", "2026-03-01"),
        ("13/03/2026", "2026-03-13"),
        ("03/13/2026", "2026-03-13"),
        ("01-03-2026", "2026-03-01"),
    ],
)
def test_printed_dates_become_iso(raw: str, expected: str) -> None:
    issues: set[str] = set()
    assert validation._iso_date(raw, issues) == expected and issues == set()


def test_slash_date_that_reads_both_ways_is_an_issue_and_others_stay_invalid() -> None:
    issues: set[str] = set()
    assert validation._iso_date("03/01/2026", issues) is None and issues == {"ambiguous_date"}
    issues.clear()
    assert validation._iso_date("01/01/2026", issues) == "2026-01-01" and issues == set()
    assert validation._iso_date("31.02.2026", issues) is None and issues == {"invalid_date"}


def test_invoice_with_printed_dates_is_approved_with_iso_dates() -> None:
    (result,) = validate({"doc": invoice(invoice_date="01.03.2026", due_date="31 March 2026")})
    assert result.issues == []
    assert (result.header["invoice_date"], result.header["due_date"]) == ("2026-03-01", "2026-03-31")


@pytest.mark.parametrize(
    ("raw", "code"), [("€", "EUR"), ("$", "USD"), ("£", "GBP"), (" € ", "EUR"), ("fr.", "CHF")]
)
def test_currency_symbols_become_iso_codes(raw: str, code: str) -> None:
    (result,) = validate({"doc": invoice(currency=raw)})
    assert result.header["currency"] == code and result.issues == []


def test_unreadable_or_unknown_currency_stays_an_issue() -> None:
    assert issues_of(invoice(currency="€€")) == ["invalid_currency", "missing_currency"]
    assert issues_of(invoice(currency="XYZ")) == ["unknown_currency"]


# --------------------------------------------------------------------------------------------- required fields


def test_invoice_without_date_or_currency_goes_to_review() -> None:
    (result,) = validate({"doc": invoice(invoice_date=None, due_date=None, currency=None)})
    assert [i["code"] for i in result.issues] == ["missing_currency", "missing_invoice_date"]
    assert result.review_status == "needs_review"


# ------------------------------------------------------------------------------------------------ credit notes


def _amounts(result: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    header = [result.header[k] for k in ("subtotal", "tax_amount", "total_amount")]
    lines = result.line_items
    return (
        header,
        [li["quantity"] for li in lines],
        [li["unit_price"] for li in lines],
        [li["line_total"] for li in lines],
    )


@pytest.mark.parametrize("printed", ["credit_note", "credit note", "381", "CreditNote", "Credit-Note"])
def test_positive_credit_note_is_stored_negative_and_consistent(printed: str) -> None:
    (result,) = validate({"doc": invoice(document_type=printed)})
    assert result.derived["document_type"] == "credit_note"
    assert _amounts(result) == ([-100.0, -19.0, -119.0], [2.0, 1.0], [-30.0, -40.0], [-60.0, -40.0])
    assert result.issues == [] and result.review_status == "auto_approved"


def test_credit_note_is_negated_once_and_invoices_keep_their_sign() -> None:
    (first,) = validate({"doc": invoice(document_type="381")})
    again = {**first.header, "line_items": first.line_items, "document_type": "381"}
    (second,) = validate({"doc": again})
    assert _amounts(second) == _amounts(first) and second.issues == []
    assert second.header["total_amount"] == -119.0
    for printed in ("invoice", "380", None):
        (result,) = validate({"doc": invoice(document_type=printed)})
        assert result.derived["document_type"] == "invoice" and result.header["total_amount"] == 119.0


def test_credit_note_without_total_takes_the_sign_of_its_subtotal_and_keeps_zero_tax_positive() -> None:
    merged = invoice(document_type="credit_note", total_amount=None, tax_amount=0.0)
    (result,) = validate({"doc": merged})
    assert result.header["subtotal"] == -100.0 and result.header["total_amount"] is None
    assert result.header["tax_amount"] == 0.0 and math.copysign(1.0, result.header["tax_amount"]) == 1.0
    assert [i["code"] for i in result.issues] == ["missing_total_amount"]


# ------------------------------------------------------------------------------------------------ performance


def test_clean_values_never_reach_the_printed_value_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a clean value went through a printed-value parser")

    for name in ("parse_number", "parse_amount", "parse_date"):
        monkeypatch.setattr(validation, name, refuse)
    (result,) = validate({"doc": invoice(subtotal="100.00", tax_amount=Decimal("19"), currency=" EUR ")})
    assert result.issues == []


# ------------------------------------------------------------------------------------------------ issue messages


def messages_of(merged: dict[str, Any]) -> dict[str, str]:
    (result,) = validate({"doc": merged})
    return {i["code"]: i["message"] for i in result.issues}


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        (
            {"subtotal": 120.0, "total_amount": 139.0},
            "line_items_do_not_match_subtotal",
            "The line totals do not add up to the subtotal: lines 100.00, subtotal 120.00 (difference 20.00).",
        ),
        (
            {"subtotal": None, "tax_amount": None, "total_amount": 90.0},
            "line_items_do_not_match_total",
            "The line totals do not add up to the total (no subtotal printed): "
            "lines 100.00, total 90.00 (difference 10.00).",
        ),
        (
            {"total_amount": 120.0},
            "subtotal_plus_tax_does_not_match_total",
            "Subtotal plus tax does not equal the total: 100.00 + 19.00 = 119.00, total 120.00.",
        ),
        (
            {"currency": "JPY", "subtotal": 100, "tax_amount": 19, "total_amount": 120},
            "subtotal_plus_tax_does_not_match_total",
            "Subtotal plus tax does not equal the total: 100 + 19 = 119, total 120.",
        ),
        (
            {"tax_amount": 50.0, "total_amount": 150.0},
            "implausible_tax_rate",
            "Tax divided by subtotal is not a plausible tax rate: "
            "tax 50.00 / subtotal 100.00 = 50.0% (plausible 0% to 30%).",
        ),
        (
            {"due_date": "2026-02-01"},
            "due_date_before_invoice_date",
            "The due date is before the invoice date: due date 2026-02-01, invoice date 2026-03-01.",
        ),
        (
            {"currency": "XYZ"},
            "unknown_currency",
            "The currency is not in the ISO 4217 list: currency 'XYZ'.",
        ),
        (
            {"currency": " euro "},
            "invalid_currency",
            "The currency is not a three-letter code: currency 'euro'.",
        ),
        (
            {"due_date": "2026-02-30"},
            "invalid_date",
            "A date could not be parsed as a calendar date: due date '2026-02-30'.",
        ),
        (
            {"invoice_date": "03/01/2026"},
            "ambiguous_date",
            "A date reads as two different days (03/01/2024: day or month first?): invoice date '03/01/2026'.",
        ),
        ({"total_amount": "a lot"}, "invalid_amount", "An amount is not a number: total amount 'a lot'."),
        (
            {
                "total_amount": "1.190",
                "line_items": [
                    {"description": "Paper", "quantity": 1, "unit_price": "1,000", "line_total": 100.0}
                ],
            },
            "ambiguous_amount",
            "An amount reads as two different numbers (1.234: thousands or decimals?): "
            "total amount '1.190', line 1 unit price '1,000'.",
        ),
    ],
)
def test_issue_message_names_the_values_that_failed(
    overrides: dict[str, Any], code: str, message: str
) -> None:
    assert messages_of(invoice(**overrides))[code] == message


def test_date_messages_name_the_dates_and_the_limit() -> None:
    future = (date.today() + timedelta(days=400)).isoformat()
    latest = (date.today() + timedelta(days=validation.future_days())).isoformat()
    assert messages_of(invoice(invoice_date=future, due_date=None))["invoice_date_in_future"] == (
        f"The invoice date lies in the future: invoice date {future}, latest plausible {latest}."
    )
    old = messages_of(invoice(invoice_date="1970-01-01"))["invoice_date_implausibly_old"]
    assert old == (
        "The invoice date is implausibly old: invoice date 1970-01-01, "
        f"oldest plausible {validation.oldest_plausible().isoformat()}."
    )


def test_duplicate_messages_name_the_other_document() -> None:
    first, second, third = "a" * 64, "b" * 64, "c" * 64
    results = validate(
        {
            first: invoice(),
            second: invoice(),  # same vendor and number: hard duplicate
            third: invoice(invoice_number="INV-2", invoice_date="2026-03-03"),  # same amount, days apart
        }
    )
    by_sha = {r.document_sha256: {i["code"]: i["message"] for i in r.issues} for r in results}
    assert by_sha[first] == {}
    assert (
        by_sha[second][validation.DUPLICATE_ISSUE]
        == f"{MESSAGES[validation.DUPLICATE_ISSUE][:-1]}: document aaaaaaaaaaaa."
    )
    assert (
        by_sha[third]["possible_duplicate"]
        == f"{MESSAGES['possible_duplicate'][:-1]}: document aaaaaaaaaaaa."
    )


def test_codes_without_values_keep_the_generic_message() -> None:
    messages = messages_of(invoice(invoice_number=None, vendor_name=None))
    assert messages == {
        "missing_invoice_number": MESSAGES["missing_invoice_number"],
        "missing_vendor_name": MESSAGES["missing_vendor_name"],
    }
