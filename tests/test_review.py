"""Human review: corrections become versions (who, when, what), approval queues the ERP outbox, rejection is final."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from invoiceflow import review, validation, warehouse
from invoiceflow.cli import main


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.upgrade(engine)
    base = {
        "invoice_number": "INV-1",
        "vendor_name": "ACME",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
        "subtotal": 100.0,
        "tax_amount": 19.0,
        "total_amount": 129.0,  # wrong total: needs review
        "line_items": [{"description": "x", "quantity": 1, "unit_price": 100, "line_total": 100.0}],
    }
    docs = {
        "a" * 64: base,
        "b" * 64: {**base, "invoice_number": "INV-2"},
        "c" * 64: {**base, "total_amount": 119.0},
    }
    warehouse.register_files(engine, [warehouse.SeenFile(f"f/{s}", s[:3], 1, None, s, "pdf") for s in docs])
    warehouse.load_batch(engine, "b", validation.validate(docs))
    return engine


def outbox(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(sa.text("SELECT document_sha256, payload FROM erp_outbox"))
        ]


def test_pending_lists_review_and_blocked(engine: sa.Engine) -> None:
    got = {r["document_sha256"][0]: r["review_status"] for r in review.pending(engine)}
    assert got == {"a": "needs_review", "b": "needs_review", "c": "blocked"}


def test_correct_then_approve_stores_versions_and_queues_the_erp(engine: sa.Engine) -> None:
    assert review.correct(engine, "aaaaaa", {"total_amount": 119.0}, by="alice", comment="typo") == 2
    result = review.approve(engine, "aaaaaa", by="bob")
    assert result["status"] == "approved" and result["outbox"] == 1
    shown = review.show(engine, "a" * 64)
    assert shown["review_status"] == "approved" and shown["reviewed_by"] == "bob"
    assert [(v["version"], v["action"], v["changed_by"]) for v in shown["versions"]] == [
        (1, "loaded", "pipeline"),
        (2, "corrected", "alice"),
        (2, "approved", "bob"),
    ]
    assert json.loads(shown["versions"][1]["changes"]) == {"total_amount": [129.0, 119.0]}
    (row,) = outbox(engine)
    assert json.loads(row["payload"])["total_amount"] == 119.0
    assert warehouse.document_statuses(engine, ["a" * 64]) == {"a" * 64: "loaded"}
    # a reload of the batch leaves what a person decided alone
    with pytest.raises(review.ReviewError):
        review.approve(engine, "aaaaaa", by="bob")


def test_blocked_duplicate_cannot_be_approved_but_can_be_rejected(engine: sa.Engine) -> None:
    with pytest.raises(review.ReviewError, match="duplicates"):
        review.approve(engine, "cccccc", by="bob")
    review.reject(engine, "cccccc", by="bob", reason="sent twice")
    assert warehouse.document_statuses(engine, ["c" * 64]) == {"c" * 64: "rejected"}
    assert outbox(engine) == []


def test_correcting_the_number_unblocks_a_duplicate(engine: sa.Engine) -> None:
    review.correct(engine, "cccccc", {"invoice_number": "INV-3"}, by="alice")
    assert review.show(engine, "cccccc")["review_status"] == "needs_review"
    assert review.approve(engine, "cccccc", by="bob")["outbox"] == 1


def test_hitl_decision_is_applied(engine: sa.Engine) -> None:
    decision = {
        "chosen_options": ["Approve"],
        "params_input": {"total_amount": 119.0, "invoice_number": None, "comment": "fixed total"},
        "responded_by_user": {"id": "7", "name": "carol"},
    }
    assert review.apply_decision(engine, "b" * 64, decision)["status"] == "approved"
    assert review.show(engine, "b" * 64)["versions"][1]["changed_by"] == "carol"
    reject = {"chosen_options": ["Reject"], "params_input": {}, "responded_by_user": {"name": "carol"}}
    assert review.apply_decision(engine, "a" * 64, reject)["status"] == "rejected"


def test_cli(engine: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(engine.url)
    assert main(["review", "list", "--url", url]) == 0
    assert "needs_review" in capsys.readouterr().out
    assert (
        main(["review", "approve", "aaaaaa", "--url", url, "--by", "dan", "--set", "total_amount=119.0"]) == 0
    )
    assert main(["review", "reject", "cccccc", "--url", url, "--by", "dan", "--reason", "dup"]) == 0
    assert main(["review", "approve", "bbbbbb", "--url", url]) == 0  # total still wrong, but a person decided
    assert main(["review", "show", "aaaaaa", "--url", url]) == 0
    assert main(["review", "approve", "zzzzzz", "--url", url]) == 2
