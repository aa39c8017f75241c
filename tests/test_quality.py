"""The Great Expectations checkpoint: passes on a clean warehouse, fails visibly on a broken one, writes Data Docs."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from invoiceflow import quality, validation, warehouse


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.upgrade(engine)
    shas = ["a" * 64, "b" * 64]
    warehouse.register_files(engine, [warehouse.SeenFile(f"f/{s}", s, 1, None, s, "pdf") for s in shas])
    merged = {
        "invoice_number": "INV-1",
        "vendor_name": "ACME",
        "currency": "EUR",
        "subtotal": 10.0,
        "tax_amount": 1.9,
        "total_amount": 11.9,
        "line_items": [{"description": "x", "line_total": 10.0}],
    }
    warehouse.load_batch(
        engine, "b", validation.validate({shas[0]: merged, shas[1]: {**merged, "invoice_number": "INV-2"}})
    )
    return engine


def test_checkpoint_passes_and_builds_data_docs(engine: sa.Engine, tmp_path: Path) -> None:
    summary = quality.run_checkpoint(engine, tmp_path / "docs")
    assert summary["failed"] == 0 and summary["expectations"] >= 10
    assert (tmp_path / "docs" / "index.html").exists()


def test_failed_expectation_fails_with_the_reason(engine: sa.Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET total_amount = 99 WHERE invoice_number = 'INV-2'"))
    with pytest.raises(quality.QualityCheckFailed, match="totals_consistent"):
        quality.run_checkpoint(engine, tmp_path / "docs")
    assert (tmp_path / "docs" / "index.html").exists()
