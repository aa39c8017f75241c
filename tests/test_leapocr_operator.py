"""The extraction operator against the offline server: ledger before deferring, reconnect on retry, resume."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
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
        "message": "1 documents unfinished at the deadline",
        "documents": {
            failed_sha: {"status": "failed", "job_id": failed_job, "error": "page 2 could not be processed"},
            late_sha: {
                "status": "timeout",
                "job_id": late_job,
                "error": "job did not finish before the deadline",
            },
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


def use_server(monkeypatch: pytest.MonkeyPatch, base_url: str, api_key: str, **extra: Any) -> None:
    conn = {"conn_type": "leapocr", "host": base_url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_LEAPOCR_DEFAULT", json.dumps(conn))


def run_trigger(trigger: LeapOcrJobsTrigger) -> dict[str, Any]:
    async def wait() -> list[Any]:
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(wait())
    return event.payload


def test_worker_dying_between_submit_and_defer_does_not_submit_again(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=OCRService.process_file
    ) as submit:
        op = LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered)
        with (
            mock.patch.object(LeapOcrExtractBatchOperator, "defer", side_effect=SystemExit("worker killed")),
            pytest.raises(SystemExit),
        ):
            op.execute({"run_id": "manual__test"})
        assert submit.call_count == len(registered)
        retried = defer(LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered))
        payload = run_trigger(retried.trigger)
        assert submit.call_count == len(registered), "the retry must reconnect to the jobs in the ledger"
    assert {o["status"] for o in payload["documents"].values()} == {"completed"}


@pytest.fixture
def slow_server(leapocr_api_key: str) -> Any:
    from invoiceflow.leapocr.server import running_server

    with running_server(api_key=leapocr_api_key, workers=4, latency_per_page=0.4) as base_url:
        yield base_url


@pytest.fixture
def three_documents(engine: Any, registered: list[str], tmp_path: Path) -> list[str]:
    inbox = tmp_path / "inbox"
    shutil.copy(SAMPLES / "synthetic-compact-en.pdf", inbox / "third.pdf")
    ingest.register_inbox(engine, inbox.as_uri())
    return warehouse.open_documents(engine)


def test_cap_on_jobs_in_flight_queues_the_rest_for_the_trigger(
    engine: Any,
    three_documents: list[str],
    slow_server: str,
    leapocr_api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_server(monkeypatch, slow_server, leapocr_api_key, max_jobs_in_flight=1)
    op = LeapOcrExtractBatchOperator(
        task_id="extract_batch", document_ids=three_documents, poll_interval=0.05
    )
    deferred = defer(op)
    assert len(deferred.trigger.jobs) == 1
    assert len(deferred.trigger.queued) == 2
    payload = run_trigger(deferred.trigger)
    assert {o["status"] for o in payload["documents"].values()} == {"completed"}
    assert len({o["job_id"] for o in payload["documents"].values()}) == 3
    op.execute_complete({}, payload)
    assert set(warehouse.document_statuses(engine, three_documents).values()) == {"extracted"}


def recorded_jobs(engine: Any, shas: list[str]) -> dict[str, str]:
    """Documents whose job id is in the ledger (not just reserved while uploading)."""
    return {
        sha: row["job_id"]
        for sha, row in warehouse.jobs_for(engine, shas).items()
        if row["status"] in warehouse.RECONNECTABLE_JOB_STATES
    }


def test_trigger_recreated_mid_poll_resumes_from_the_ledger(
    engine: Any,
    three_documents: list[str],
    slow_server: str,
    leapocr_api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As after a triggerer restart: the new instance adopts jobs the old one submitted, and submits no twins."""
    use_server(monkeypatch, slow_server, leapocr_api_key, max_jobs_in_flight=1)
    deferred = defer(
        LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=three_documents, poll_interval=0.05)
    )
    _, kwargs = deferred.trigger.serialize()

    async def interrupted_then_recreated() -> list[Any]:
        first = asyncio.ensure_future(LeapOcrJobsTrigger(**kwargs).run().__anext__())
        deadline = time.monotonic() + 30
        while len(recorded_jobs(engine, three_documents)) < 2:  # the first instance submitted a queued one
            assert time.monotonic() < deadline, "the first trigger instance never submitted a queued document"
            await asyncio.sleep(0.02)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return [event async for event in LeapOcrJobsTrigger(**kwargs).run()]

    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=OCRService.process_file
    ) as submit:
        (event,) = asyncio.run(interrupted_then_recreated())
        assert submit.call_count == 2, "one queued document per instance at most: never the adopted one again"
    documents = event.payload["documents"]
    assert {o["status"] for o in documents.values()} == {"completed"}
    ledger = warehouse.jobs_for(engine, three_documents)
    assert {sha: row["job_id"] for sha, row in ledger.items()} == {
        sha: o["job_id"] for sha, o in documents.items()
    }


def make_reservations_stale(engine: Any) -> None:
    from invoiceflow.leapocr.triggers import STALE_RESERVATION_SECONDS

    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE extraction_jobs SET reserved_at = reserved_at - ? WHERE status = 'submitting'",
            (STALE_RESERVATION_SECONDS + 1,),
        )


def test_process_killed_after_starting_a_job_leaves_it_followed_not_uploaded_again(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    """Killed between asking LeapOCR to start the job and recording it: the job id is already in the reservation."""
    first, second = registered
    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=OCRService.process_file
    ) as submit:
        op = LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=[first], poll_interval=0.05)
        with (
            mock.patch.object(warehouse, "record_job", side_effect=RuntimeError("worker killed")),
            pytest.raises(RuntimeError),
        ):
            op.execute({"run_id": "manual__test"})
        (orphan,) = warehouse.jobs_for(engine, [first]).values()
        assert orphan["status"] == "submitting" and orphan["job_id"], (
            "the started job is noted before it starts"
        )
        make_reservations_stale(engine)
        retried = defer(
            LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered, poll_interval=0.05)
        )
        assert retried.trigger.queued == [first], (
            "a reserved document is left to the trigger, not re-uploaded"
        )
        payload = run_trigger(retried.trigger)
        assert submit.call_count == 2, "one upload per document: the orphan job is followed"
    assert payload["documents"][first] == {"status": "completed", "error": None, "job_id": orphan["job_id"]}
    assert payload["documents"][second]["status"] == "completed"
    assert warehouse.jobs_for(engine, [first])[first]["status"] in warehouse.RECONNECTABLE_JOB_STATES


def test_stale_reservation_without_a_started_job_is_uploaded_again(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    """Killed before asking LeapOCR to start a job (none noted, or one LeapOCR never heard of): nothing was
    billed, so the document is uploaded once more."""
    never_started, unknown_to_server = registered
    for sha in registered:
        warehouse.reserve_submission(engine, sha, "manual__dead", "fingerprint")
    warehouse.note_starting_job(engine, unknown_to_server, "4b1c6f0e-0000-4000-8000-000000000000")
    make_reservations_stale(engine)
    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=OCRService.process_file
    ) as submit:
        deferred = defer(
            LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered, poll_interval=0.05)
        )
        assert sorted(deferred.trigger.queued) == sorted(registered) and submit.call_count == 0
        payload = run_trigger(deferred.trigger)
        assert submit.call_count == 2
    assert {o["status"] for o in payload["documents"].values()} == {"completed"}
    assert payload["documents"][unknown_to_server]["job_id"] != "4b1c6f0e-0000-4000-8000-000000000000"
    assert never_started in payload["documents"]


def test_lost_answer_to_starting_a_job_is_followed_not_failed_or_uploaded_again(
    engine: Any, registered: list[str], leapocr_connection: str
) -> None:
    original = OCRService.process_file

    async def started_but_answer_lost(self: OCRService, *args: Any, **kwargs: Any) -> Any:
        await original(self, *args, **kwargs)  # LeapOCR started the job...
        raise httpx.ReadError("connection reset")  # ...and its answer never arrived

    with mock.patch.object(
        OCRService, "process_file", autospec=True, side_effect=started_but_answer_lost
    ) as submit:
        deferred = defer(
            LeapOcrExtractBatchOperator(task_id="extract_batch", document_ids=registered, poll_interval=0.05)
        )
        assert sorted(deferred.trigger.jobs.values()) == sorted(registered)
        payload = run_trigger(deferred.trigger)
    assert submit.call_count == len(registered)
    assert {o["status"] for o in payload["documents"].values()} == {"completed"}
