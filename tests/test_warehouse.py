"""Warehouse load on SQLite and PostgreSQL: layering, duplicates recorded (never crashing the load), idempotent reruns."""

from __future__ import annotations

import gc
import hashlib
import json
from datetime import date
from decimal import Decimal
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
    (message,) = rows(engine, "SELECT message FROM validation_issues WHERE code = 'duplicate_invoice'")
    assert message["message"].endswith(f": document {a[:12]}.")


def test_soft_duplicate_goes_to_review(engine: sa.Engine) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    load(engine, "1", {a: merged("INV-1", 50.0)})
    load(
        engine, "2", {b: merged("INV-2", 50.0, day="2026-03-05"), c: merged("INV-3", 50.0, day="2026-05-01")}
    )
    got = {r["document_sha256"]: r["review_status"] for r in rows(engine, "SELECT * FROM invoices")}
    assert got == {a: "auto_approved", b: "needs_review", c: "auto_approved"}
    issues = rows(engine, "SELECT document_sha256, code, detected_at FROM validation_issues")
    assert [(i["document_sha256"], i["code"]) for i in issues] == [(b, "possible_duplicate")]
    assert issues[0]["detected_at"] is not None


def test_postgres_lookups_by_vendor_and_by_review_status_use_the_lean_indexes(postgres_url: str) -> None:
    """Validation's vendor lookup and the review backlog each have an index, though only two of four remain."""
    engine = warehouse.engine_for(postgres_url)
    warehouse.upgrade(engine)
    plans = {}
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        for name, sql in {
            "vendor": "SELECT * FROM invoices WHERE vendor_key IN ('n:acme gmbh', 'v:7') "
            "AND duplicate_of IS NULL AND review_status <> 'rejected'",
            "backlog": "SELECT * FROM invoices WHERE review_status IN ('needs_review', 'blocked')",
        }.items():
            plans[name] = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
    assert "ux_invoices_vendor_number" in plans["vendor"], plans["vendor"]
    assert "ix_invoices_review_backlog" in plans["backlog"], plans["backlog"]


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
    """PostgreSQL ``COPY``s the outbox rows; the payload must say what ``erp_payload`` says, hashed."""
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


# --------------------------------------------------------------------------------------------------- load paths


def mixed_batch() -> dict[str, dict[str, Any]]:
    """Approved, needs review, a hard duplicate inside the batch, a credit note, several and odd line items."""
    shas = [hashlib.sha256(f"mixed-{i}".encode()).hexdigest() for i in range(6)]
    batch = {
        shas[0]: merged("M-1", 119.0),
        shas[1]: merged("M-2", 50.0),
        shas[2]: merged(" m - 1 ", 119.0),  # same vendor and number as M-1: blocked
        shas[3]: merged("CN-7", -23.8),
        shas[4]: merged("M-4", 125.0),  # totals do not add up: needs review
        shas[5]: merged("M-5", 23.8),
    }
    batch[shas[4]]["subtotal"] = 99.0
    batch[shas[5]]["line_items"] = [
        {"description": 'Ümlaut "quoted"\t\\ €', "quantity": 2.5, "unit_price": 4.0, "line_total": 10.0},
        {"description": "second", "quantity": 1, "unit_price": 10.0, "line_total": 10.0},
        {"description": None, "quantity": None, "unit_price": None, "line_total": None},
    ]
    return batch


def _plain(value: Any) -> Any:
    """One column value comparable across dialects (NUMERIC comes back as Decimal on PostgreSQL, text on SQLite)."""
    if isinstance(value, Decimal | float | int) and not isinstance(value, bool):
        return round(float(value), 6)
    if isinstance(value, date):
        return value.isoformat()
    return value


def snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Everything a load writes, without the load timestamps."""
    queries = {
        "invoices": "SELECT * FROM invoices ORDER BY document_sha256",
        "lines": "SELECT * FROM invoice_line_items ORDER BY document_sha256, line_number",
        "issues": "SELECT document_sha256, code, message, severity FROM validation_issues ORDER BY 1, 2",
        "outbox": "SELECT idempotency_key, document_sha256, payload, payload_hash, status FROM erp_outbox ORDER BY 1",
        "documents": "SELECT sha256, status, status_reason FROM documents ORDER BY sha256",
    }
    out = {}
    for name, sql in queries.items():
        out[name] = [
            {k: _plain(v) for k, v in row.items() if k not in {"loaded_at", "updated_at"}}
            for row in rows(engine, sql)
        ]
    return out


def test_reload_is_a_no_op(engine: sa.Engine) -> None:
    batch = mixed_batch()
    register(engine, *batch)
    validated = validation.validate(batch, engine=engine)
    first = warehouse.load_batch(engine, "m", validated)
    # the empty line item is dropped and flags its invoice (line_item_without_total)
    assert first == {"invoices": 6, "line_items": 7, "needs_review": 2, "blocked": 1, "outbox": 3}
    before = snapshot(engine)
    again = warehouse.load_batch(engine, "m", validated)
    assert again == {**first, "outbox": 0}
    assert snapshot(engine) == before
    assert len(before["outbox"]) == 3 and len(before["lines"]) == 7


def test_postgres_first_load_writes_what_the_sqlite_merge_writes(postgres_url: str, tmp_path: Path) -> None:
    """The COPY-straight-into-core path (PostgreSQL) and the staging + merge path (SQLite): identical rows."""
    batch = mixed_batch()
    snapshots = []
    for url in (postgres_url, f"sqlite:///{tmp_path / 'merge.db'}"):
        engine = warehouse.engine_for(url)
        warehouse.upgrade(engine)
        load(engine, "m", batch)
        snapshots.append(snapshot(engine))
    assert snapshots[0] == snapshots[1]


def test_postgres_copy_path_and_merge_path_write_the_same_rows(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL itself: the same first load through staging and the ON CONFLICT merges (forced), then again
    straight into the core tables after emptying them."""
    engine = warehouse.engine_for(postgres_url)
    warehouse.upgrade(engine)
    batch = mixed_batch()
    register(engine, *batch)
    validated = validation.validate(batch, engine=engine)
    guard = warehouse._guard_postgres
    with monkeypatch.context() as patch:
        patch.setattr(warehouse, "_copy_new_invoices", lambda conn, invoices: False)
        patch.setattr(warehouse, "_guard_postgres", lambda conn, invoices: (guard(conn, invoices)[0], True))
        merged_counts = warehouse.load_batch(engine, "m", validated)
    via_merge = snapshot(engine)
    with engine.begin() as conn:
        for table in ("erp_outbox", "validation_issues", "invoice_line_items", "invoices"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
        conn.exec_driver_sql("UPDATE documents SET status = 'extracted'")
    copied_counts = warehouse.load_batch(engine, "m", validated)
    assert copied_counts == merged_counts
    assert snapshot(engine) == via_merge


def test_new_batch_with_an_already_loaded_document_is_merged(engine: sa.Engine) -> None:
    a, b = "a" * 64, "b" * 64
    load(engine, "1", {a: merged("INV-1")})
    counts = load(engine, "2", {a: merged("INV-1"), b: merged("INV-2", 30.0)})
    assert counts == {"invoices": 2, "line_items": 2, "needs_review": 0, "blocked": 0, "outbox": 1}
    assert [r["document_sha256"] for r in rows(engine, "SELECT * FROM invoices ORDER BY 1")] == [a, b]
    assert len(rows(engine, "SELECT * FROM erp_outbox")) == 2


def test_invoice_already_queued_under_its_key_is_not_queued_again(engine: sa.Engine) -> None:
    """An ERP key already in the outbox without a live duplicate: the first document was loaded before its vendor was
    in the master data (vendor key by name), the second matches the vendor (vendor key by id). The load keeps the
    queued row, as ``ON CONFLICT DO NOTHING`` did, and loads the invoice."""
    a, b = "a" * 64, "b" * 64
    load(engine, "1", {a: merged("INV-9")})
    vid = vendors.upsert_vendor(engine, "ACME GmbH")
    counts = load(engine, "2", {b: merged("INV-9", 30.0)})
    assert counts == {"invoices": 1, "line_items": 1, "needs_review": 0, "blocked": 0, "outbox": 0}
    keys = {r["document_sha256"]: r["vendor_key"] for r in rows(engine, "SELECT * FROM invoices")}
    assert keys == {a: "n:acme gmbh", b: f"v:{vid}"}
    assert [r["document_sha256"] for r in rows(engine, "SELECT * FROM erp_outbox")] == [a]
    assert warehouse.document_statuses(engine, [b]) == {b: "loaded"}


def test_invoice_a_person_reviewed_is_left_alone_when_its_batch_is_loaded_again(engine: sa.Engine) -> None:
    a, b = "a" * 64, "b" * 64
    load(engine, "1", {a: merged("INV-1", 50.0)})
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE invoices SET review_status = 'approved', reviewed_by = 'ann', reviewed_at = CURRENT_TIMESTAMP"
        )
    counts = load(engine, "2", {a: merged("INV-1", 60.0), b: merged("INV-2")})
    assert counts["invoices"] == 1 and counts["outbox"] == 1
    got = {r["document_sha256"]: r for r in rows(engine, "SELECT * FROM invoices")}
    assert float(got[a]["total_amount"]) == 50.0 and got[a]["review_status"] == "approved"
    assert got[b]["review_status"] == "auto_approved"


def test_outbox_payload_text_is_the_compact_sorted_json_of_erp_payload() -> None:
    """Keys sorted, no spaces, UTF-8 as is, decimals and dates as strings; NaN (invalid JSON) becomes null."""
    inv = warehouse.ValidatedInvoice(
        "s" * 64,
        {
            "invoice_number": "N-1",
            "vendor_name": "Ümlaut AG",
            "invoice_date": date(2026, 3, 1),
            "total_amount": 1.5,
        },
        [{"description": 'a "b"', "quantity": Decimal("2.50"), "line_total": float("nan")}, {}],
    )
    row = warehouse._outbox_row(inv)
    payload = warehouse.erp_payload(inv)
    payload["line_items"][0]["line_total"] = None
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert row["payload"] == canonical
    assert '"vendor_name":"Ümlaut AG"' in row["payload"] and '"quantity":"2.50"' in row["payload"]
    assert row["hash"] == hashlib.sha256(row["payload"].encode()).hexdigest()


def test_load_leaves_the_garbage_collector_as_it_found_it(engine: sa.Engine) -> None:
    gc.disable()
    try:
        load(engine, "1", {"a" * 64: merged("INV-1")})
        assert not gc.isenabled()
    finally:
        gc.enable()
    load(engine, "2", {"b" * 64: merged("INV-2")})
    assert gc.isenabled()


def test_postgres_views_count_days_and_months_in_utc(postgres_url: str) -> None:
    """credits_usage and extraction_quality group by the UTC day/month, whatever the session's TimeZone."""
    engine = warehouse.engine_for(postgres_url)
    warehouse.upgrade(engine)
    sha = "d" * 64
    register(engine, sha)
    invoice = merged("INV-1")
    page = {"page_number": 1, "confidence": 0.9, "result": invoice}
    warehouse.store_extraction(
        engine, sha, "job-1", [page], invoice, model="m", credits_used=1, total_pages=1
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE raw_extraction_results SET fetched_at = '2026-03-31 23:30:00+00'")
        conn.exec_driver_sql("SET LOCAL TimeZone = 'Pacific/Kiritimati'")  # UTC+14: already April 1st there
        assert conn.exec_driver_sql("SELECT day FROM credits_usage").scalar() == "2026-03-31"
        assert conn.exec_driver_sql("SELECT month FROM extraction_quality").scalar() == "2026-03"


def test_amounts_keep_their_currency_decimals(engine: sa.Engine) -> None:
    """A Kuwaiti dinar has 1000 fils: 12.345 KWD is stored as 12.345, not rounded to cents."""
    sha = "k" * 64
    invoice = {
        **merged("KW-1"),
        "currency": "KWD",
        "subtotal": 10.5,
        "tax_amount": 1.845,
        "total_amount": 12.345,
    }
    invoice["line_items"] = [{"description": "x", "quantity": 1, "line_total": 10.5}]
    load(engine, "1", {sha: invoice})
    (got,) = rows(engine, "SELECT tax_amount, total_amount, review_status FROM invoices")
    assert Decimal(str(got["total_amount"])) == Decimal("12.345")
    assert Decimal(str(got["tax_amount"])) == Decimal("1.845")
