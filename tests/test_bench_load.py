"""``invoiceflow bench load`` on a small run: it loads through the pipeline, reloads, and cleans up after itself."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from invoiceflow import cli


def test_bench_load_prints_every_figure_and_drops_its_schema(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "load", "--invoices", "300", "--batch-size", "120", "--url", postgres_url]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["invoices"] == result["outbox"] == 300
    assert 300 <= result["line_items"] <= 300 * 7
    for key in ("rows_per_s", "baseline_rows_per_s", "copy_rows_per_s", "reload_rows_per_s"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["rows_per_s"] / result["baseline_rows_per_s"], abs=0.01)
    assert result["copy_share"] == pytest.approx(result["rows_per_s"] / result["copy_rows_per_s"], abs=0.01)
    with sa.create_engine(postgres_url).connect() as conn:
        schemas = conn.exec_driver_sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_load_%%'")
        assert schemas.all() == []
