"""The synthetic generator: deterministic, arithmetically consistent, and read back exactly by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoiceflow.extraction import extract_pages
from invoiceflow.samples import ALL_LAYOUTS, LANGS, LAYOUTS, generate_invoice, write_samples

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "include" / "samples"
HEADER = [
    "invoice_number", "vendor_name", "invoice_date", "due_date", "currency", "subtotal", "tax_amount",
    "total_amount", "purchase_order_number",
]  # fmt: skip


#: Schema fields the generator's ground truth leaves out: ``document_type`` is optional in ground truth (the
#: evaluation scores a field only where the truth has it).
OPTIONAL_TRUTH_KEYS = {"document_type"}


def _schema_keys() -> set[str]:
    schema = json.loads((REPO / "include" / "schemas" / "invoice.json").read_text())
    return set(schema["properties"])


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_engine_reads_every_layout_exactly(seed: int, layout: str, lang: str) -> None:
    data, truth = generate_invoice(seed, layout, lang)
    result = extract_pages(data, f"{layout}-{lang}.pdf")
    assert result.source == "text-layer"
    merged = result.merged()
    assert {k: merged[k] for k in HEADER} == {k: truth[k] for k in HEADER}
    assert merged["line_items"] == truth["line_items"]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("credit_note", [False, True])
@pytest.mark.parametrize("seed", [0, 7])
def test_ledger_layout_wrapped_codes_summary_table_and_credit_notes(
    seed: int, credit_note: bool, lang: str
) -> None:
    """Wrapped descriptions, article codes on their own line, totals under column titles only; a credit
    note prints negative amounts and is reported with positive ones (the EN 16931 type-381 convention)."""
    data, truth = generate_invoice(seed, "ledger", lang, credit_note=credit_note)
    merged = extract_pages(data, f"ledger-{lang}.pdf").merged()
    assert {k: merged[k] for k in HEADER} == {k: truth[k] for k in HEADER}
    assert merged["line_items"] == truth["line_items"]
    assert truth["total_amount"] > 0
    # The sign lives in the document type, which the text layer reads from the title.
    assert merged["document_type"] == ("credit_note" if credit_note else "invoice")


def test_credit_note_needs_the_ledger_layout() -> None:
    with pytest.raises(ValueError, match="ledger"):
        generate_invoice(0, "classic", "en", credit_note=True)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_ground_truth_is_consistent_and_schema_shaped(layout: str) -> None:
    for lang in LANGS:
        _data, truth = generate_invoice(3, layout, lang)
        assert {k for k in truth if not k.startswith("_")} == _schema_keys() - OPTIONAL_TRUTH_KEYS
        lines = truth["line_items"]
        assert lines, "every invoice has line items"
        for item in lines:
            assert item["line_total"] == round(item["quantity"] * item["unit_price"], 2)
        assert round(sum(i["line_total"] for i in lines), 2) == truth["subtotal"]
        assert round(truth["subtotal"] + truth["tax_amount"], 2) == truth["total_amount"]


def test_generation_is_deterministic() -> None:
    first = generate_invoice(5, "modern", "de")
    second = generate_invoice(5, "modern", "de")
    assert first == second
    assert generate_invoice(6, "modern", "de")[1] != first[1]


def test_two_page_invoice_continues_table_and_puts_totals_on_page_two() -> None:
    data, truth = generate_invoice(0, "classic", "de", n_items=38)
    assert truth["_pages"] == 2
    result = extract_pages(data, "long.pdf")
    assert len(result.pages) == 2
    page1, page2 = (p.result for p in result.pages)
    assert page1["line_items"] and page2["line_items"]
    assert page1["total_amount"] is None and page2["total_amount"] == truth["total_amount"]
    assert page1["line_items"] + page2["line_items"] == truth["line_items"]


def test_mismatch_invoice_prints_inconsistent_subtotal() -> None:
    data, truth = generate_invoice(2, "classic", "en", mismatch=True)
    assert truth["_expect_review"] is True
    assert round(sum(i["line_total"] for i in truth["line_items"]), 2) != truth["subtotal"]
    merged = extract_pages(data, "review.pdf").merged()
    assert merged["subtotal"] == truth["subtotal"]  # the engine reports what is printed, not what adds up


def test_unknown_layout_is_rejected() -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_invoice(0, "fancy", "en")


def test_write_samples_writes_pairs(tmp_path: Path) -> None:
    paths = write_samples(tmp_path, count=6, seed=0)
    assert len(paths) == 6
    layouts, langs, pages = set(), set(), set()
    for pdf in paths:
        truth = json.loads(pdf.with_suffix(".json").read_text())
        assert pdf.read_bytes().startswith(b"%PDF-")
        layouts.add(truth["_layout"])
        langs.add(truth["_lang"])
        pages.add(truth["_pages"])
    assert layouts == set(LAYOUTS) and {"en", "de"} <= langs <= set(LANGS) and 2 in pages


def test_committed_samples_match_their_ground_truth() -> None:
    synthetic = sorted(SAMPLES.glob("synthetic-*.pdf"))
    assert len(synthetic) >= 6, f"expected committed samples in {SAMPLES}"
    review = [p for p in synthetic if json.loads(p.with_suffix(".json").read_text()).get("_expect_review")]
    assert len(review) == 1
    for pdf in synthetic:
        truth = json.loads(pdf.with_suffix(".json").read_text())
        merged = extract_pages(pdf.read_bytes(), pdf.name).merged()
        assert {k: merged[k] for k in HEADER} == {k: truth[k] for k in HEADER}, pdf.name
        assert merged["line_items"] == truth["line_items"], pdf.name
        assert merged["document_type"] == "invoice", pdf.name
    assert (SAMPLES / "NOTICE.md").read_text().count("Apache License 2.0") == 1
