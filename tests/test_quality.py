"""The Great Expectations checkpoint on SQLite and PostgreSQL: passes on a clean warehouse and writes Data Docs
through the checkpoint's action, fails naming the expectation on a broken one, never reads a table into pandas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from invoiceflow import quality, validation, warehouse

A, B = "a" * 64, "b" * 64


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wh.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(url: str) -> sa.Engine:
    return loaded(url)


def loaded(url: str) -> sa.Engine:
    """Two auto-approved invoices with their line items (10 + 1.9 = 11.9 and 40 + 7.6 = 47.6)."""
    engine = warehouse.engine_for(url)
    warehouse.upgrade(engine)
    warehouse.register_files(engine, [warehouse.SeenFile(f"f/{s}", s, 1, None, s, "pdf") for s in (A, B)])
    first = {
        "invoice_number": "INV-1",
        "vendor_name": "ACME",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
        "subtotal": 10.0,
        "tax_amount": 1.9,
        "total_amount": 11.9,
        "line_items": [{"description": "x", "line_total": 10.0}],
    }
    second = {
        **first,
        "invoice_number": "INV-2",
        "invoice_date": "2026-03-08",
        "subtotal": 40.0,
        "tax_amount": 7.6,
        "total_amount": 47.6,
        "line_items": [{"description": "y", "line_total": 15.0}, {"description": "z", "line_total": 25.0}],
    }
    warehouse.load_batch(engine, "b", validation.validate({A: first, B: second}))
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT document_sha256, review_status FROM invoices")).all())
    assert statuses == {A: "auto_approved", B: "auto_approved"}
    return engine


def corrupt(url: str, *statements: str) -> None:
    """Write past the application (SQLite: a plain connection, so foreign keys are off, as in a manual fix)."""
    raw = sa.create_engine(url, poolclass=NullPool)
    with raw.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    raw.dispose()


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts checkpoint runs and Data Docs actions; any ``pandas.read_sql*`` fails the test."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    calls = {"checkpoint": 0, "data_docs_action": 0}

    def spy(cls: type, method: str, key: str) -> None:
        original = getattr(cls, method)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls[key] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapper)

    spy(gx.Checkpoint, "run", "checkpoint")
    spy(UpdateDataDocsAction, "run", "data_docs_action")

    def no_pandas(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a table was read into pandas")

    for name in ("read_sql", "read_sql_query", "read_sql_table"):
        monkeypatch.setattr(pd, name, no_pandas)
    yield calls


def test_checkpoint_passes_in_sql_and_its_action_builds_data_docs(
    engine: sa.Engine, tmp_path: Path, spies: dict[str, int]
) -> None:
    docs = tmp_path / "docs"
    summary = quality.run_checkpoint(engine, docs)
    assert summary["failed"] == 0 and summary["success"] and summary["expectations"] >= 14
    assert summary["checkpoint"] == quality.CHECKPOINT_NAME
    assert spies == {"checkpoint": 1, "data_docs_action": 1}
    assert "<html" in (docs / "index.html").read_text().lower()
    pages = sorted(p.name for p in (docs / "validations").rglob("*.html"))
    assert pages == ["warehouse-invoices.html", "warehouse-line_items.html"]


def test_an_empty_warehouse_passes(tmp_path: Path) -> None:
    """Nothing loaded yet (documents only registered): nothing is missing."""
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.upgrade(engine)
    warehouse.register_files(engine, [warehouse.SeenFile("f/a", A, 1, None, A, "pdf")])
    assert quality.run_checkpoint(engine, tmp_path / "docs")["failed"] == 0


C = "c" * 64

#: One broken row per check; each must be named, and nothing else may fail.
BROKEN = {
    "subtotal + tax = total": f"UPDATE invoices SET total_amount = 99 WHERE document_sha256 = '{B}'",
    "line totals consistent": f"UPDATE invoice_line_items SET line_total = 3 WHERE document_sha256 = '{A}'",
    "every line item belongs to an invoice": (
        "INSERT INTO invoice_line_items (document_sha256, line_number, description, line_total) "
        f"VALUES ('{'f' * 64}', 1, 'ghost', 5.0)"
    ),
    # a document marked loaded whose invoice never arrived: what an empty or partial load leaves
    "live invoice count equals loaded + needs_review document count": (
        "INSERT INTO documents (sha256, file_name, first_path, size_bytes, status) "
        f"VALUES ('{C}', 'c.pdf', 'f/c', 1, 'loaded')"
    ),
}


def test_broken_rows_fail_naming_each_expectation(
    engine: sa.Engine, url: str, tmp_path: Path, spies: dict[str, int]
) -> None:
    corrupt(url, *BROKEN.values())
    with pytest.raises(quality.QualityCheckFailed) as failed:
        quality.run_checkpoint(engine, tmp_path / "docs")
    message = str(failed.value)
    assert message.startswith(f"{len(BROKEN)} expectation(s) failed")
    for expectation in BROKEN:
        assert f"{expectation}" in message
    assert message.count("1 unexpected row(s)") == len(BROKEN)
    assert spies == {"checkpoint": 1, "data_docs_action": 1}
    assert (tmp_path / "docs" / "index.html").exists()  # the Data Docs show the failures too


def test_an_invoice_without_a_loaded_document_fails(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    engine = loaded(url)
    corrupt(url, f"UPDATE documents SET status = 'failed' WHERE sha256 = '{B}'")
    with pytest.raises(quality.QualityCheckFailed, match="live invoice count equals loaded"):
        quality.run_checkpoint(engine, tmp_path / "docs")


def test_live_duplicate_numbers_fail(engine: sa.Engine, url: str, tmp_path: Path) -> None:
    """Vendor + normalised number unique among live invoices (the partial unique index dropped to let it in);
    a rejected or duplicate-marked one does not count."""
    set_b_to_a = (
        "UPDATE invoices SET invoice_number_norm = (SELECT invoice_number_norm FROM invoices "
        f"WHERE document_sha256 = '{A}') WHERE document_sha256 = '{B}'"
    )
    corrupt(url, f"UPDATE invoices SET duplicate_of = '{A}' WHERE document_sha256 = '{B}'", set_b_to_a)
    assert quality.run_checkpoint(engine, tmp_path / "ok")["failed"] == 0
    corrupt(url, "DROP INDEX ux_invoices_vendor_number", "UPDATE invoices SET duplicate_of = NULL")
    with pytest.raises(
        quality.QualityCheckFailed, match=r"expect_compound_columns_to_be_unique.*live invoices"
    ):
        quality.run_checkpoint(engine, tmp_path / "docs")
