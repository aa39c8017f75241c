"""Both DAGs end to end with ``dag.test()`` on real components.

The offline LeapOCR server (driven by the unmodified SDK), the ERP sandbox and the warehouse (SQLite and a fresh
PostgreSQL database) are all real; nothing is mocked. A second run of both DAGs must change nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO, warehouse_connection_json

from invoiceflow import warehouse

SAMPLES = REPO / "include" / "samples"


@pytest.fixture(scope="module")
def dags(airflow_db: None) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    return {dag_id: bag.get_dag(dag_id) for dag_id in ("invoice_ingest", "erp_sync")}


def ground_truth() -> dict[str, dict[str, Any]]:
    """Expected invoice per sample, keyed by the sha256 of the sample's bytes (the document's identity)."""
    return {
        hashlib.sha256(p.with_suffix(".pdf").read_bytes()).hexdigest(): json.loads(p.read_text())
        for p in SAMPLES.glob("*.json")
    }


#: EN 16931 type codes of the samples that are credit notes (their ground truth has positive amounts, as printed).
CREDIT_NOTE_CODES = {"381"}


def warehouse_total(expected: dict[str, Any]) -> float:
    """The total the warehouse stores: negative for a credit note, whose document type carries the sign."""
    credit = expected.get("_doc_type") in CREDIT_NOTE_CODES
    return -expected["total_amount"] if credit else expected["total_amount"]


def fill_inbox(inbox: Path) -> None:
    """The samples, plus what a real inbox also receives: a re-sent copy, junk, an empty and a corrupt file."""
    for pdf in SAMPLES.glob("*.pdf"):
        shutil.copy(pdf, inbox / pdf.name)
    (inbox / "resent").mkdir()
    shutil.copy(SAMPLES / "synthetic-classic-en.pdf", inbox / "resent" / "copy-of-classic.pdf")
    (inbox / "notes.txt").write_text("call the supplier back")
    (inbox / "empty.pdf").write_bytes(b"")
    (inbox / "truncated.pdf").write_bytes((SAMPLES / "synthetic-compact-en.pdf").read_bytes()[:300])


def run(dag: Any) -> str:
    dag_run = dag.test()
    return str(getattr(dag_run.state, "value", dag_run.state))


def table(engine: sa.Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def bills(ledger: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute(
            "SELECT reference, vendor_name, invoice_number, total_amount FROM bills"
        ).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", warehouse_connection_json(url))
    return url


def test_pipeline_end_to_end_and_rerun_changes_nothing(
    dags: dict[str, Any], state_dir: Path, leapocr_connection: str, erp_sandbox: Path, warehouse_url: str
) -> None:
    fill_inbox(state_dir / "inbox")
    truth = ground_truth()

    assert run(dags["invoice_ingest"]) == "success"
    assert run(dags["erp_sync"]) == "success"

    engine = warehouse.engine_for(warehouse_url)
    rows = table(engine, "SELECT * FROM documents")
    documents = {r["sha256"]: r for r in rows}
    # One row per distinct content: the re-sent copy is a second path of a known document, not a new document.
    assert len(rows) == len(truth) + 3
    paths = table(engine, "SELECT path, sha256 FROM document_paths")
    classic_sha = hashlib.sha256((SAMPLES / "synthetic-classic-en.pdf").read_bytes()).hexdigest()
    assert sorted(Path(p["path"]).name for p in paths if p["sha256"] == classic_sha) == [
        "copy-of-classic.pdf",
        "synthetic-classic-en.pdf",
    ]
    by_name = {r["file_name"]: r for r in rows}
    for junk, reason in [
        ("notes.txt", "plain text"),
        ("empty.pdf", "empty"),
        ("truncated.pdf", "corrupt PDF"),
    ]:
        assert by_name[junk]["status"] == "rejected"
        assert reason in by_name[junk]["status_reason"]

    invoices = {r["document_sha256"]: r for r in table(engine, "SELECT * FROM invoices")}
    assert set(invoices) == set(truth)
    for name, expected in truth.items():
        got = invoices[name]
        assert got["invoice_number"] == expected["invoice_number"], name
        assert got["vendor_name"] == expected["vendor_name"], name
        assert float(got["total_amount"]) == pytest.approx(warehouse_total(expected), abs=0.005), name
        credit = expected.get("_doc_type") in CREDIT_NOTE_CODES
        assert got["document_type"] == ("credit_note" if credit else "invoice"), name
        expected_review = "needs_review" if expected.get("_expect_review") else "auto_approved"
        assert got["review_status"] == expected_review, name
        assert documents[name]["status"] == ("needs_review" if expected.get("_expect_review") else "loaded")
    review = next(n for n, t in truth.items() if t.get("_expect_review"))
    issues = table(engine, "SELECT document_sha256, code FROM validation_issues")
    assert {"document_sha256": review, "code": "line_items_do_not_match_subtotal"} in issues

    line_counts = {
        r["document_sha256"]: r["n"]
        for r in table(
            engine, "SELECT document_sha256, COUNT(*) AS n FROM invoice_line_items GROUP BY document_sha256"
        )
    }
    for name, expected in truth.items():
        if expected["line_items"]:
            assert line_counts[name] == len(expected["line_items"]), name

    jobs = table(engine, "SELECT * FROM extraction_jobs")
    assert all(j["status"] == "completed" and j["remote_deleted"] == 1 for j in jobs)
    raw = table(engine, "SELECT raw_pages, credits_used FROM raw_extraction_results")
    assert len(raw) == len(truth) and all(json.loads(r["raw_pages"]) for r in raw)

    outbox = table(engine, "SELECT idempotency_key, status, remote_id FROM erp_outbox")
    approved = [n for n, t in truth.items() if not t.get("_expect_review")]
    assert len(outbox) == len(approved)
    assert all(o["status"] == "posted" and o["remote_id"] for o in outbox)
    ledger = bills(erp_sandbox)
    assert sorted(b[0] for b in ledger) == sorted(o["idempotency_key"] for o in outbox)
    assert sorted(b[2] for b in ledger) == sorted(truth[n]["invoice_number"] for n in approved)
    with sqlite3.connect(erp_sandbox) as conn:
        credits = conn.execute(
            "SELECT invoice_number FROM bills WHERE document_type = 'credit_note'"
        ).fetchall()
    assert credits == [
        (t["invoice_number"],) for n, t in truth.items() if t.get("_doc_type") in CREDIT_NOTE_CODES
    ]

    # Every document ends in exactly one terminal state.
    assert {d["status"] for d in documents.values()} <= warehouse.TERMINAL_STATES

    snapshot = {
        t: table(engine, f"SELECT * FROM {t}") for t in ("documents", "invoices", "invoice_line_items")
    }
    (state_dir / "inbox" / "again-classic.pdf").write_bytes(
        (SAMPLES / "synthetic-classic-en.pdf").read_bytes()
    )
    assert run(dags["invoice_ingest"]) == "success"
    assert run(dags["erp_sync"]) == "success"
    for name, rows in snapshot.items():
        assert table(engine, f"SELECT * FROM {name}") == rows, name
    assert bills(erp_sandbox) == ledger
    assert len(table(engine, "SELECT * FROM document_paths")) == len(paths) + 1
