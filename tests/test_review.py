"""Human review: corrections become versions (who, when, what) and are validated again, approval queues the ERP
outbox (or fails saying why, changing nothing), rejection is final. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from invoiceflow import review, validation, vendors, warehouse
from invoiceflow.cli import main


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    url = (
        f"sqlite:///{tmp_path / 'wh.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = warehouse.engine_for(url)
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
    url = engine.url.render_as_string(hide_password=False)
    assert main(["review", "list", "--url", url]) == 0
    assert "needs_review" in capsys.readouterr().out
    assert (
        main(["review", "approve", "aaaaaa", "--url", url, "--by", "dan", "--set", "total_amount=119.0"]) == 0
    )
    assert main(["review", "reject", "cccccc", "--url", url, "--by", "dan", "--reason", "dup"]) == 0
    assert main(["review", "approve", "bbbbbb", "--url", url]) == 0  # total still wrong, but a person decided
    assert main(["review", "show", "aaaaaa", "--url", url]) == 0
    assert main(["review", "approve", "zzzzzz", "--url", url]) == 2


def invoice(engine: sa.Engine, sha: str) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.text("SELECT * FROM invoices WHERE document_sha256 = :s"), {"s": sha})
            .one()
            ._mapping
        )


def issue_rows(engine: sa.Engine, sha: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT code, severity FROM validation_issues WHERE document_sha256 = :s ORDER BY code"),
            {"s": sha},
        )
        return [tuple(r) for r in rows]


def test_correction_is_validated_again_derived_columns_and_issues_replaced(engine: sa.Engine) -> None:
    # a: ACME INV-1 with a wrong total; c: the same vendor and number, blocked as a duplicate of a
    assert issue_rows(engine, "a" * 64) == [("subtotal_plus_tax_does_not_match_total", "review")]
    assert invoice(engine, "c" * 64)["vendor_key"] == "n:acme"
    assert review.correct(engine, "aaaaaa", {"total_amount": 119.0}, by="alice") == 2
    a = invoice(engine, "a" * 64)
    assert json.loads(a["review_issues"]) == [] and issue_rows(engine, "a" * 64) == []
    assert a["review_status"] == "needs_review"  # a person still approves it

    # the vendor of c was misread: corrected, its vendor key follows and it no longer duplicates a
    review.correct(engine, "cccccc", {"vendor_name": "  Globex   Corp "}, by="bob", comment="other vendor")
    c = invoice(engine, "c" * 64)
    assert (c["vendor_name"], c["vendor_key"], c["duplicate_of"]) == ("Globex Corp", "n:globex corp", None)
    assert c["review_status"] == "needs_review" and json.loads(c["review_issues"]) == []
    assert issue_rows(engine, "c" * 64) == []
    # ... and back: the duplicate check uses the corrected key, so c is blocked again
    review.correct(engine, "cccccc", {"vendor_name": "ACME"}, by="bob")
    c = invoice(engine, "c" * 64)
    assert (c["vendor_key"], c["duplicate_of"], c["review_status"]) == ("n:acme", "a" * 64, "blocked")
    assert issue_rows(engine, "c" * 64) == [("duplicate_invoice", "blocked")]

    # with a vendors master, a corrected name is matched: vendor id and score are stored
    vendor_id = vendors.upsert_vendor(engine, "Initech GmbH")
    review.correct(engine, "bbbbbb", {"vendor_name": "Initech", "total_amount": 119.0}, by="carol")
    b = invoice(engine, "b" * 64)
    assert (b["vendor_id"], b["vendor_key"]) == (vendor_id, f"v:{vendor_id}")
    assert b["vendor_match_score"] and float(b["vendor_match_score"]) >= 90
    assert json.loads(b["review_issues"]) == [] and issue_rows(engine, "b" * 64) == []

    # the history is as before: who, when, what changed
    versions = review.show(engine, "c" * 64)["versions"]
    assert [(v["version"], v["action"], v["changed_by"]) for v in versions] == [
        (1, "loaded", "pipeline"),
        (2, "corrected", "bob"),
        (3, "corrected", "bob"),
    ]
    assert json.loads(versions[1]["changes"]) == {"vendor_name": ["ACME", "Globex Corp"]}
    assert versions[1]["comment"] == "other vendor"
    with engine.connect() as conn:
        header = conn.execute(
            sa.text("SELECT header FROM invoice_versions WHERE document_sha256 = :s AND version = 3"),
            {"s": "c" * 64},
        ).scalar_one()
    assert json.loads(header)["vendor_name"] == "ACME"


def test_correction_and_its_revalidation_are_one_transaction(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = invoice(engine, "c" * 64), issue_rows(engine, "c" * 64)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash before the version is stored")

    monkeypatch.setattr(review, "_record", fail)
    with pytest.raises(RuntimeError):
        review.correct(engine, "cccccc", {"vendor_name": "Globex"}, by="bob")
    assert (invoice(engine, "c" * 64), issue_rows(engine, "c" * 64)) == before


def test_unreadable_correction_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(review.ReviewError, match="calendar date"):
        review.correct(engine, "aaaaaa", {"invoice_date": "31.02.2026"}, by="bob")
    assert review.show(engine, "aaaaaa")["version"] == 1


def test_approval_that_cannot_be_queued_fails_and_changes_nothing(engine: sa.Engine) -> None:
    assert review.approve(engine, "aaaaaa", by="bob")["outbox"] == 1
    # c has a's vendor name and number (the same ERP key) but is no longer recorded as its duplicate, as when a
    # vendors-master change gives it another vendor key: the outbox insert would be skipped
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE invoices SET vendor_key = 'v:99', duplicate_of = NULL, review_status = 'needs_review' "
                "WHERE document_sha256 = :s"
            ),
            {"s": "c" * 64},
        )
    with pytest.raises(review.ReviewError, match=f"cannot be queued for the ERP: {'a' * 12}"):
        review.approve(engine, "cccccc", by="bob")
    c = review.show(engine, "cccccc")
    assert c["review_status"] == "needs_review" and c["reviewed_by"] is None
    assert [v["action"] for v in c["versions"]] == []
    assert warehouse.document_statuses(engine, ["c" * 64]) == {"c" * 64: "needs_review"}
    assert [r["document_sha256"] for r in outbox(engine)] == ["a" * 64]


def test_approving_an_invoice_already_queued_for_its_document_is_idempotent(engine: sa.Engine) -> None:
    # b was queued when an earlier load auto-approved it; a reload flagged it for review again
    shown = review.show(engine, "bbbbbb")
    header = {k: shown[k] for k in warehouse.HEADER_COLUMNS}
    with engine.begin() as conn:
        queued = warehouse.ValidatedInvoice("b" * 64, header, shown["line_items"])
        assert warehouse._enqueue_outbox(conn, queued) == 1
    result = review.approve(engine, "bbbbbb", by="carol")
    assert result["status"] == "approved" and result["outbox"] == 0
    assert [r["document_sha256"] for r in outbox(engine)] == ["b" * 64]
    assert review.show(engine, "bbbbbb")["review_status"] == "approved"


@pytest.mark.parametrize("decision", [{"chosen_options": ["Keep pending"]}, {"chosen_options": []}, {}])
def test_keep_pending_and_unanswered_decisions_change_nothing(engine: sa.Engine, decision: dict) -> None:
    timed_out = {**decision, "params_input": dict.fromkeys([*warehouse.HEADER_COLUMNS, "comment"])}
    result = review.apply_decision(engine, "a" * 64, {**timed_out, "responded_by_user": None})
    assert result == {"document_sha256": "a" * 64, "status": "needs_review", "version": 1}
    shown = review.show(engine, "a" * 64)
    assert shown["review_status"] == "needs_review" and shown["versions"] == []
    assert outbox(engine) == []
