"""The read-only ``analyst`` role: it reads the analyst views and nothing else (no raw tables, no payloads, no writes)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from invoiceflow import validation, warehouse

VIEWS = sorted(p.name.split(".")[0] for p in (Path(__file__).parents[1] / "sql" / "views").glob("*.sql"))
VIEWS = [v for v in dict.fromkeys(VIEWS) if not v.startswith("zz_")] + ["extraction_issues"]


@pytest.fixture
def loaded(postgres_url: str) -> str:
    engine = warehouse.engine_for(postgres_url)
    warehouse.upgrade(engine)
    sha = "a" * 64
    warehouse.register_files(
        engine, [warehouse.SeenFile("file:///inbox/a.pdf", "a.pdf", 10, None, sha, "pdf")]
    )
    merged = {
        "invoice_number": "INV-1",
        "vendor_name": "ACME",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
        "subtotal": 10.0,
        "tax_amount": 1.9,
        "total_amount": 11.9,
        "line_items": [{"description": "x", "quantity": 1, "unit_price": 10, "line_total": 10.0}],
    }
    warehouse.store_extraction(
        engine,
        sha,
        "job-1",
        [{"page_number": 1, "confidence": 0.9, "result": merged}],
        merged,
        model="standard-v2",
        credits_used=1,
        total_pages=1,
    )
    warehouse.load_batch(engine, "b", validation.validate({sha: merged}, engine=engine))
    return postgres_url


def analyst(url: str) -> psycopg.Connection:
    parsed = sa.make_url(url)
    return psycopg.connect(
        host=parsed.host, port=parsed.port, dbname=parsed.database, user="analyst", autocommit=True
    )


def test_analyst_reads_every_view(loaded: str) -> None:
    with analyst(loaded) as conn:
        for view in VIEWS:
            conn.execute(f"SELECT * FROM {view}").fetchall()
        (row,) = conn.execute("SELECT vendor_name, total_amount, erp_status FROM invoices_flat").fetchall()
        assert row[0] == "ACME" and float(row[1]) == 11.9 and row[2] == "pending"
        comments = dict(
            conn.execute(
                "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c WHERE c.relkind = 'v'"
            ).fetchall()
        )
        assert all(comments.get(v) for v in VIEWS), comments


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM invoices",
        "SELECT * FROM documents",
        "SELECT raw_pages FROM raw_extraction_results",
        "SELECT payload FROM erp_outbox",
        "SELECT * FROM invoice_versions",
    ],
)
def test_raw_tables_and_audit_payloads_are_refused(loaded: str, sql: str) -> None:
    with analyst(loaded) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO invoices (document_sha256, review_status, review_issues) VALUES ('b', 'x', '[]')",
        "UPDATE invoices SET total_amount = 0",
        "DELETE FROM erp_outbox",
        "CREATE TABLE mine (x INTEGER)",
        "CREATE VIEW mine AS SELECT 1 AS x",
        "DROP VIEW invoices_flat",
    ],
)
def test_writes_are_refused(loaded: str, sql: str) -> None:
    with analyst(loaded) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql)


def test_views_expose_no_payload_columns(loaded: str) -> None:
    with analyst(loaded) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_name = ANY(%s)",
            (VIEWS,),
        ).fetchall()
    assert columns
    assert not [c for c in columns if c[1] in {"payload", "raw_pages", "merged_invoice", "payload_hash"}]


def test_byte_order_migration_keeps_rows_views_and_grants(postgres_url: str, tmp_path: Path) -> None:
    """0042 drops the views over the key and amount columns: upgrading a loaded warehouse brings every view and
    grant back."""
    engine = warehouse.engine_for(postgres_url)
    migrations = Path(__file__).parents[1] / "sql" / "migrations"
    before = tmp_path / "migrations"
    before.mkdir()
    for path in migrations.glob("*.sql"):
        if path.name < "0042":
            (before / path.name).write_text(path.read_text())
    warehouse.upgrade(engine, before)
    sha = "b" * 64
    warehouse.register_files(
        engine, [warehouse.SeenFile("file:///inbox/b.pdf", "b.pdf", 1, None, sha, "pdf")]
    )
    merged = {
        "invoice_number": "INV-7",
        "vendor_name": "ACME",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
    }
    merged |= {"subtotal": 10.0, "tax_amount": 1.9, "total_amount": 11.9, "line_items": []}
    warehouse.load_batch(engine, "b", validation.validate({sha: merged}, engine=engine))

    assert "0042_exact_keys_and_amounts.postgres.sql" in warehouse.upgrade(engine)
    with engine.connect() as conn:
        collations = dict(
            conn.exec_driver_sql(
                "SELECT table_name || '.' || column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND column_name IN ('sha256', 'document_sha256') "
                "AND table_name IN ('documents', 'invoices', 'invoice_line_items', 'erp_outbox')"
            ).all()
        )
    assert collations == dict.fromkeys(
        [
            "documents.sha256",
            "invoices.document_sha256",
            "invoice_line_items.document_sha256",
            "erp_outbox.document_sha256",
        ],
        "C",
    )
    with analyst(postgres_url) as conn:
        for view in VIEWS:
            conn.execute(f"SELECT * FROM {view}").fetchall()
        assert conn.execute("SELECT invoice_number FROM invoices_flat").fetchall() == [("INV-7",)]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM erp_outbox_attention").all() == []
    assert warehouse.upgrade(engine) == []
