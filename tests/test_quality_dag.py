"""The ``warehouse_quality`` DAG run with ``dag.test()`` on a real warehouse (SQLite and PostgreSQL).

A loaded warehouse passes the Great Expectations checkpoint and gets Data Docs (HTML) in ``INVOICEFLOW_DATA_DOCS_DIR``;
a corrupted one fails the ``checkpoint`` task, and the error names the failed expectation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO, warehouse_connection_json
from sqlalchemy.pool import NullPool

from invoiceflow import validation, warehouse

A, B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def quality_dag(airflow_db: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    return bag.get_dag("warehouse_quality")


def load_warehouse(url: str) -> sa.Engine:
    """Two clean invoices (with line items) loaded the way the ingest DAG loads them."""
    engine = warehouse.engine_for(url)
    warehouse.upgrade(engine)
    warehouse.register_files(
        engine, [warehouse.SeenFile(f"inbox/{s[:3]}.pdf", s, 1, None, s, "pdf") for s in (A, B)]
    )
    invoice = {
        "invoice_number": "INV-1",
        "vendor_name": "ACME GmbH",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
        "subtotal": 100.0,
        "tax_amount": 19.0,
        "total_amount": 119.0,
        "line_items": [
            {"description": "widgets", "quantity": 2, "unit_price": 30.0, "line_total": 60.0},
            {"description": "gadgets", "quantity": 1, "unit_price": 40.0, "line_total": 40.0},
        ],
    }
    other = {**invoice, "invoice_number": "INV-2", "invoice_date": "2026-03-08", "subtotal": 40.0}
    other.update(tax_amount=7.6, total_amount=47.6, line_items=invoice["line_items"][1:])
    warehouse.load_batch(engine, "batch-1", validation.validate({A: invoice, B: other}))
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT document_sha256, review_status FROM invoices")).all())
    assert statuses == {A: "auto_approved", B: "auto_approved"}
    return engine


@pytest.fixture
def docs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data_docs"
    monkeypatch.setenv("INVOICEFLOW_DATA_DOCS_DIR", str(path))
    return path


def use_warehouse(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", warehouse_connection_json(url))


def run(dag: Any) -> tuple[str, dict[str, str]]:
    dag_run = dag.test()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_checkpoint_passes_on_a_loaded_warehouse_and_writes_data_docs(
    quality_dag: Any,
    state_dir: Path,
    docs_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    load_warehouse(url)
    use_warehouse(url, monkeypatch)

    assert run(quality_dag) == ("success", {"checkpoint": "success"})

    index = docs_dir / "index.html"
    assert index.exists() and "<html" in index.read_text().lower()
    # built by the checkpoint's UpdateDataDocsAction: one page per validation definition (per table)
    validations = sorted(p.name for p in (docs_dir / "validations").rglob("*.html"))
    assert validations == ["warehouse-invoices.html", "warehouse-line_items.html"]


def execute(url: str, statement: str, params: dict[str, Any]) -> None:
    """Write past the application (SQLite: a plain connection, so foreign keys are off, as a bad manual fix)."""
    raw = sa.create_engine(url, poolclass=NullPool)
    with raw.begin() as conn:
        conn.execute(sa.text(statement), params)
    raw.dispose()


def orphan_line_item(url: str) -> None:
    """A line item whose invoice is missing (as a bad manual fix or a broken load would leave it)."""
    execute(
        url,
        "INSERT INTO invoice_line_items (document_sha256, line_number, description, line_total) "
        "VALUES (:sha, 1, 'ghost', 5.0)",
        {"sha": "f" * 64},
    )


def inconsistent_totals(url: str) -> None:
    """An approved invoice whose subtotal + tax no longer add up to its total."""
    execute(url, "UPDATE invoices SET total_amount = 150 WHERE document_sha256 = :sha", {"sha": A})


@pytest.mark.parametrize(
    ("backend", "corrupt", "expectation"),
    [
        (
            "sqlite",
            orphan_line_item,
            "line_items: unexpected_rows_expectation (every line item belongs to an invoice): 1 unexpected row(s)",
        ),
        (
            "postgres",
            inconsistent_totals,
            "invoices: unexpected_rows_expectation (totals consistent: subtotal + tax = total (within 0.02) "
            "for approved invoices): 1 unexpected row(s)",
        ),
    ],
)
def test_checkpoint_fails_visibly_on_a_corrupted_warehouse(
    quality_dag: Any,
    state_dir: Path,
    docs_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
    corrupt: Any,
    expectation: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    load_warehouse(url)
    corrupt(url)
    use_warehouse(url, monkeypatch)

    # A quality failure is deterministic: it fails the task at once (no waiting for the DAG's retries).
    task = quality_dag.get_task("checkpoint")
    errors: list[BaseException] = []
    monkeypatch.setattr(task, "on_failure_callback", [lambda context: errors.append(context["exception"])])

    assert run(quality_dag) == ("failed", {"checkpoint": "failed"})

    (error,) = errors
    assert type(error).__name__ == "QualityCheckFailed"
    assert "1 expectation(s) failed" in str(error)
    assert expectation in str(error)
    assert str(docs_dir / "index.html") in str(error)
    assert (docs_dir / "index.html").exists()  # the Data Docs show the failure too
