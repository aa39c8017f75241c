"""The extraction operator against the offline server: ledger before deferring, reconnect on retry, resume."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from airflow.sdk.exceptions import TaskDeferred
from conftest import REPO
from leapocr.ocr import OCRService

from invoiceflow import ingest, warehouse
from invoiceflow.leapocr.operators import LeapOcrExtractBatchOperator
from invoiceflow.leapocr.triggers import LeapOcrJobsTrigger

SAMPLES = REPO / "include" / "samples"


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.upgrade(engine)
    return engine


@pytest.fixture
def registered(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("synthetic-classic-en.pdf", "synthetic-classic-de-2pages.pdf"):
        shutil.copy(SAMPLES / name, inbox / name)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT", f'{{"conn_type": "sqlite", "host": "{tmp_path / "wh.db"}"}}'
    )
    ingest.register_inbox(engine, inbox.as_uri())
    return warehouse.open_documents(engine)


def defer(op: LeapOcrExtractBatchOperator) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"run_id": "manual__test"})
    return deferred.value


def test_jobs_are_in_the_ledger_before_deferring_and_a_retry_reconnects(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    op = LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered, poll_interval=0.05)
    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=OCRService.process_file
    ) as submit:
        first = defer(op)
        assert submit.call_count == 2
        assert isinstance(first.trigger, LeapOcrJobsTrigger)
        assert first.method_name == "execute_complete"
        ledger = warehouse.jobs_for(engine, registered)
        assert {row["job_id"]: sha for sha, row in ledger.items()} == first.trigger.jobs
        assert set(warehouse.document_statuses(engine, registered).values()) == {"extracting"}

        retry = defer(LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered))
        assert submit.call_count == 2, "a retry must reconnect, not submit again"
        assert retry.trigger.jobs == first.trigger.jobs

    async def wait() -> list[Any]:
        return [event async for event in first.trigger.run()]

    events = asyncio.run(wait())
    assert len(events) == 1
    assert op.execute_complete({}, events[0].payload) == registered

    statuses = warehouse.document_statuses(engine, registered)
    assert set(statuses.values()) == {"extracted"}
    merged = warehouse.extracted_invoices(engine, registered)
    numbers = {m["invoice_number"] for m in merged.values()}
    assert len(numbers) == 2 and None not in numbers
    jobs = warehouse.jobs_for(engine, registered)
    assert {row["status"] for row in jobs.values()} == {"completed"}
    with engine.connect() as conn:
        deleted = conn.exec_driver_sql(
            "SELECT remote_deleted, total_pages FROM extraction_jobs JOIN "
            "raw_extraction_results USING (document_sha256)"
        ).fetchall()
    assert sorted(deleted) == [(1, 1), (1, 2)]


def test_resume_on_an_unknown_event_fails_loudly(registered: list[str]) -> None:
    op = LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered)
    with pytest.raises(ValueError, match="unexpected LeapOCR trigger event"):
        op.execute_complete({}, {"status": "success"})


def test_failed_and_timed_out_jobs_fail_only_their_documents(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    op = LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered)
    jobs = defer(op).trigger.jobs
    (failed_job, failed_sha), (late_job, late_sha) = sorted(jobs.items())
    event = {
        "status": "timeout",
        "message": "1 jobs still running at the deadline",
        "jobs": {
            failed_job: {"status": "failed", "error": "page 2 could not be processed"},
            late_job: {"status": "timeout", "error": "job did not finish before the deadline"},
        },
    }
    assert op.execute_complete({}, event) == registered
    with engine.connect() as conn:
        rows = dict(
            conn.exec_driver_sql(
                "SELECT sha256, status_reason FROM documents WHERE status = 'failed'"
            ).fetchall()
        )
    assert rows == {
        failed_sha: "extraction failed: page 2 could not be processed",
        late_sha: "extraction timeout: job did not finish before the deadline",
    }
