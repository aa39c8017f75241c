"""Scoring rules of issue 4, and the eval runner's output contract (last line = JSON with three keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoiceflow.evaluation import field_correct, match_line_items, score_document, summarize
from invoiceflow.samples import generate_invoice


@pytest.mark.parametrize(
    ("name", "pred", "truth", "ok"),
    [
        ("invoice_number", "inv 2024 07", "INV202407", True),
        ("invoice_number", "INV-2024-08", "INV-2024-07", False),
        ("purchase_order_number", " po-1 ", "PO-1", True),
        ("vendor_name", "Lieferant GmbH", "Lieferant GmbH", True),
        ("vendor_name", "GmbH", "Lieferant GmbH", False),  # a fragment scores 100 on token-set ratio
        ("vendor_name", "Lieferant GmbH Berlin", "Lieferant GmbH", True),
        ("vendor_name", "Kunden AG", "Lieferant GmbH", False),
        ("invoice_date", "2024-03-05", "2024-03-05", True),
        ("invoice_date", "05.03.2024", "2024-03-05", False),
        ("currency", "eur", "EUR", True),
        ("currency", "USD", "EUR", False),
        ("total_amount", 100.004, 100.0, True),
        ("total_amount", 100.01, 100.0, False),
        ("total_amount", "100.00", 100.0, False),  # numbers, not strings
        ("due_date", None, None, True),
        ("due_date", "2024-01-01", None, False),  # a null truth needs a null prediction
        ("subtotal", None, 5.0, False),
    ],
)
def test_field_rules(name: str, pred: object, truth: object, ok: bool) -> None:
    assert field_correct(name, pred, truth) is ok


def test_line_items_one_to_one_and_micro_f1() -> None:
    truth = [
        {"description": "Widget large", "line_total": 10.0},
        {"description": "Widget large", "line_total": 10.0},
        {"description": "Service hours", "line_total": 50.0},
    ]
    pred = [
        {"description": "Widget large", "line_total": 10.0},
        {"description": "Widget", "line_total": 10.0},  # less than half as long: no match
        {"description": "Service hours", "line_total": 50.01},  # different total: no match
        {"description": "Widget large", "line_total": 10.0},
    ]
    assert match_line_items(pred, truth) == 2
    score = score_document({"line_items": pred}, {"line_items": truth})
    summary = summarize([score])
    assert summary.precision == pytest.approx(2 / 4) and summary.recall == pytest.approx(2 / 3)
    assert summary.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_metadata_and_unscored_are_skipped() -> None:
    truth = {"invoice_number": "A1", "due_date": "2024-01-01", "_pages": 1, "_unscored": ["due_date", "line_items"],
             "line_items": [{"description": "x", "line_total": 1.0}]}  # fmt: skip
    score = score_document({"invoice_number": "a1"}, truth)
    assert score.fields == {"invoice_number": True} and not score.lines_scored


def test_eval_cli_prints_json_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from invoiceflow.cli import main

    for seed, layout, lang in [(1, "classic", "en"), (2, "modern", "de")]:
        data, truth = generate_invoice(seed, layout, lang)
        (tmp_path / f"{layout}-{lang}.pdf").write_bytes(data)
        (tmp_path / f"{layout}-{lang}.json").write_text(json.dumps(truth))
    assert main(["eval", str(tmp_path), "--no-einvoice"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert set(last) == {"header_accuracy", "line_item_f1", "pages_per_s"}
    assert last["header_accuracy"] == 1.0 and last["line_item_f1"] == 1.0
    assert any("header-field accuracy" in line for line in out)


def test_extract_cli_writes_one_json_per_input(tmp_path: Path) -> None:
    from invoiceflow.cli import main

    data, truth = generate_invoice(3, "compact", "en")
    src = tmp_path / "in" / "bill.pdf"
    src.parent.mkdir()
    src.write_bytes(data)
    assert main(["extract", str(src), "--out", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out" / "bill.json").read_text())
    assert got["invoice_number"] == truth["invoice_number"] and got["total_amount"] == truth["total_amount"]


def test_parallel_eval_scores_like_a_sequential_one(tmp_path: Path) -> None:
    """Documents are extracted ``jobs`` at a time; scores and their order do not depend on it."""
    from invoiceflow.evaluation import evaluate_directory

    for seed, layout, lang in [
        (1, "classic", "en"),
        (2, "modern", "de"),
        (3, "compact", "fr"),
        (4, "classic", "de"),
    ]:
        data, truth = generate_invoice(seed, layout, lang)
        truth["invoice_number"] = (
            truth["invoice_number"] if seed != 3 else "WRONG-1"
        )  # one miss, to see it kept
        (tmp_path / f"{seed}-{layout}-{lang}.pdf").write_bytes(data)
        (tmp_path / f"{seed}-{layout}-{lang}.json").write_text(json.dumps(truth))
    sequential = evaluate_directory(tmp_path, use_einvoice=False, jobs=1)
    parallel = evaluate_directory(tmp_path, use_einvoice=False, jobs=2)
    assert [s.name for s in parallel.scores] == sorted(s.name for s in parallel.scores)
    assert [(s.name, s.fields, s.lines_matched) for s in parallel.scores] == [
        (s.name, s.fields, s.lines_matched) for s in sequential.scores
    ]
    assert parallel.pages == sequential.pages == 4
    assert parallel.summary.per_field["invoice_number"] == (3, 4)
    assert parallel.seconds > 0


def test_document_type_is_scored_only_where_the_truth_has_it(tmp_path: Path) -> None:
    """The Factur-X credit note (type 381): its ground truth has no document_type, so adding the field to the
    extraction changes no score; a ground truth that states it gets it scored (and right)."""
    from invoiceflow.evaluation import evaluate_directory

    sample = Path(__file__).resolve().parents[1] / "include" / "samples" / "avoir-fr-type381-basic"
    truth = json.loads(sample.with_suffix(".json").read_text())
    assert "document_type" not in truth
    (tmp_path / "without").mkdir()
    (tmp_path / "with").mkdir()
    for folder, extra in (("without", {}), ("with", {"document_type": "credit_note"})):
        (tmp_path / folder / "avoir.pdf").write_bytes(sample.with_suffix(".pdf").read_bytes())
        (tmp_path / folder / "avoir.json").write_text(json.dumps({**truth, **extra}))
    without = evaluate_directory(tmp_path / "without", use_einvoice=True, jobs=1)
    assert "document_type" not in without.scores[0].fields
    assert without.summary.header_accuracy == 1.0 and without.summary.f1 == 1.0
    stated = evaluate_directory(tmp_path / "with", use_einvoice=True, jobs=1)
    assert stated.scores[0].fields["document_type"] is True
    assert stated.summary.header_correct == without.summary.header_correct + 1
    wrong = score_document({"document_type": "invoice"}, {"document_type": "credit_note"})
    assert wrong.fields == {"document_type": False}
