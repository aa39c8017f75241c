"""Warehouse load on SQLite and PostgreSQL: layering, duplicates recorded (never crashing the load), idempotent reruns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from invoiceflow import validation, vendors, warehouse


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    url = (
        f"sqlite:///{tmp_path / 'wh.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = warehouse.engine_for(url)
    warehouse.upgrade(engine)
    return engine


def merged(
    number: str, total: float = 11.9, vendor: str = "ACME GmbH", day: str = "2026-03-01"
) -> dict[str, Any]:
    return {
        "invoice_number": number,
        "vendor_name": vendor,
        "invoice_date": day,
        "currency": "EUR",
        "subtotal": round(total / 1.19, 2),
        "tax_amount": round(total - round(total / 1.19, 2), 2),
        "total_amount": total,
        "line_items": [{"description": "x", "quantity": 1, "line_total": round(total / 1.19, 2)}],
    }


def register(engine: sa.Engine, *shas: str) -> None:
    warehouse.register_files(
        engine, [warehouse.SeenFile(f"file:///inbox/{s}.pdf", f"{s}.pdf", 1, None, s, "pdf") for s in shas]
    )


def load(engine: sa.Engine, batch: str, invoices: dict[str, dict[str, Any]]) -> dict[str, int]:
    register(engine, *invoices)
    return warehouse.load_batch(engine, batch, validation.validate(invoices, engine=engine))


def rows(engine: sa.Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def test_upgrade_is_safe_to_run_again(engine: sa.Engine) -> None:
    assert warehouse.upgrade(engine) == []


def test_hard_duplicate_is_recorded_blocked_and_never_queued(engine: sa.Engine) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    assert load(engine, "1", {a: merged("INV-1")})["outbox"] == 1
    # same vendor and number (spacing and case differ): in a later batch, and twice inside one batch
    counts = load(engine, "2", {b: merged("inv-1"), c: merged(" INV - 1 ")})
    assert counts == {"invoices": 2, "line_items": 2, "needs_review": 0, "blocked": 2, "outbox": 0}
    got = {r["document_sha256"]: r for r in rows(engine, "SELECT * FROM invoices")}
    assert got[b]["review_status"] == got[c]["review_status"] == "blocked"
    assert got[b]["duplicate_of"] == got[c]["duplicate_of"] == a
    assert [r["document_sha256"] for r in rows(engine, "SELECT document_sha256 FROM erp_outbox")] == [a]
    issues = rows(engine, "SELECT document_sha256, code, severity FROM validation_issues ORDER BY 1")
    assert issues == [
        {"document_sha256": s, "code": "duplicate_invoice", "severity": "blocked"} for s in (b, c)
    ]
    statuses = warehouse.document_statuses(engine, [a, b, c])
    assert statuses == {a: "loaded", b: "needs_review", c: "needs_review"}


def test_duplicate_guard_holds_when_validation_did_not_see_the_original(engine: sa.Engine) -> None:
    a, b = "a" * 64, "b" * 64
    load(engine, "1", {a: merged("INV-1")})
    register(engine, b)
    stale = validation.validate({b: merged("INV-1")})  # no engine: validation cannot know about a
    assert stale[0].review_status == "auto_approved"
    counts = warehouse.load_batch(engine, "2", stale)
    assert counts["blocked"] == 1 and counts["outbox"] == 0


def test_soft_duplicate_goes_to_review(engine: sa.Engine) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    load(engine, "1", {a: merged("INV-1", 50.0)})
    load(
        engine, "2", {b: merged("INV-2", 50.0, day="2026-03-05"), c: merged("INV-3", 50.0, day="2026-05-01")}
    )
    got = {r["document_sha256"]: r["review_status"] for r in rows(engine, "SELECT * FROM invoices")}
    assert got == {a: "auto_approved", b: "needs_review", c: "auto_approved"}


def test_reload_is_idempotent_and_credit_notes_are_a_type(engine: sa.Engine) -> None:
    a = "a" * 64
    note = merged("CN-1", -11.9)
    load(engine, "1", {a: note})
    snapshot = rows(
        engine, "SELECT document_sha256, review_status, document_type, total_amount FROM invoices"
    )
    load(engine, "1", {a: note})
    assert (
        rows(engine, "SELECT document_sha256, review_status, document_type, total_amount FROM invoices")
        == snapshot
    )
    assert snapshot[0]["document_type"] == "credit_note" and snapshot[0]["review_status"] == "auto_approved"
    assert len(rows(engine, "SELECT * FROM invoice_line_items")) == 1
    assert len(rows(engine, "SELECT * FROM erp_outbox")) == 1


def test_vendor_master_match_is_stored_and_unknown_vendors_flagged(engine: sa.Engine) -> None:
    vid = vendors.upsert_vendor(engine, "ACME Supplies GmbH", aliases=["ACME"])
    a, b = "a" * 64, "b" * 64
    load(
        engine,
        "1",
        {a: merged("INV-1", vendor="Acme Supplies"), b: merged("X-1", vendor="Totally Other Ltd")},
    )
    got = {r["document_sha256"]: r for r in rows(engine, "SELECT * FROM invoices")}
    assert got[a]["vendor_id"] == vid and got[a]["vendor_match_score"] >= 90
    assert got[a]["vendor_key"] == f"v:{vid}" and got[a]["review_status"] == "auto_approved"
    assert got[b]["vendor_id"] is None and got[b]["review_status"] == "needs_review"
    assert {"document_sha256": b, "code": "unknown_vendor"} in rows(
        engine, "SELECT document_sha256, code FROM validation_issues"
    )


def test_views_answer_on_both_dialects(engine: sa.Engine) -> None:
    load(engine, "1", {"a" * 64: merged("INV-1"), "b" * 64: merged("CN-1", -5.95)})
    spend = rows(engine, "SELECT * FROM spend_by_vendor_month")
    assert len(spend) == 1 and spend[0]["month"] == "2026-03" and spend[0]["credit_notes"] == 1
    assert float(spend[0]["net_total"]) == pytest.approx(5.95)
    for view in (
        "invoices_flat",
        "line_items_flat",
        "review_backlog",
        "processing_sla",
        "extraction_quality",
        "extraction_issues",
        "credits_usage",
    ):
        rows(engine, f"SELECT * FROM {view}")


def test_outbox_payload_matches_erp_payload_on_both_dialects(engine: sa.Engine) -> None:
    """PostgreSQL builds the outbox payload in SQL from staging; it must say what ``erp_payload`` says, hashed."""
    import hashlib
    import json

    invoices = {"p1": merged("P-1", 119.0), "p2": merged("P-2", 23.8)}
    invoices["p1"]["line_items"] = [
        {"description": "x", "quantity": 1, "unit_price": 90.0, "line_total": 90.0},
        {"description": 'Ümlaut "quoted" \\ €', "quantity": 2.5, "unit_price": 4.0, "line_total": 10.0},
    ]
    register(engine, *invoices)
    validated = validation.validate(invoices, engine=engine)
    assert [inv.review_status for inv in validated] == [warehouse.AUTO_APPROVED] * 2
    assert warehouse.load_batch(engine, "p", validated)["outbox"] == 2
    out = {r["document_sha256"]: r for r in rows(engine, "SELECT * FROM erp_outbox")}
    for inv in validated:
        row = out[inv.document_sha256]
        assert row["idempotency_key"] == warehouse.idempotency_key(
            inv.header["vendor_name"], inv.header["invoice_number"]
        )
        assert row["payload_hash"] == hashlib.sha256(row["payload"].encode()).hexdigest()
        assert json.loads(row["payload"]) == json.loads(json.dumps(warehouse.erp_payload(inv), default=str))
    # a reload replaces line items and issues, never queues twice
    assert warehouse.load_batch(engine, "p2", validated)["outbox"] == 0
    assert rows(engine, "SELECT COUNT(*) AS n FROM invoice_line_items")[0]["n"] == 3
