"""The batch trigger: serialisation round trip, exactly one event per outcome, async-only connection lookup."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from airflow.triggers.base import TriggerEvent
from leapocr import JobStatus, JobStatusType

from invoiceflow.leapocr.hooks import LeapOcrAuthError, LeapOcrRejected, LeapOcrUnavailable
from invoiceflow.leapocr.triggers import (
    DURATION_SAMPLES,
    FAST_POLL_ROUNDS,
    InflightGate,
    LeapOcrJobsTrigger,
    PollSchedule,
    validate_trigger_event,
)

CLASSPATH = "invoiceflow.leapocr.triggers.LeapOcrJobsTrigger"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def status(
    job_id: str, state: str, *, error: str | None = None, pages: tuple[int, int] = (1, 2)
) -> JobStatus:
    return JobStatus(
        job_id=job_id,
        status=JobStatusType(state),
        processed_pages=pages[0],
        total_pages=pages[1],
        progress=0.0,
        created_at=NOW,
        updated_at=NOW,
        error_message=error,
    )


class FakeApi:
    """Stands in for ``LeapOcrApi``: statuses come from a per-job script."""

    fingerprint = "fake-key"
    max_jobs_in_flight = 8

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = {job: list(steps) for job, steps in script.items()}
        self.job_status = mock.AsyncMock(side_effect=self._next)

    async def _next(self, job_id: str) -> JobStatus:
        step = self.script[job_id].pop(0) if len(self.script[job_id]) > 1 else self.script[job_id][0]
        if isinstance(step, Exception):
            raise step
        return step

    async def __aenter__(self) -> FakeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.fixture(autouse=True)
def ledger(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trigger marks finished jobs in the warehouse ledger: give it an empty, migrated one."""
    from invoiceflow import warehouse

    connection = {"conn_type": "sqlite", "host": f"{tmp_path}/wh.db"}
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps(connection))
    warehouse.upgrade(warehouse.engine_for(f"sqlite:///{tmp_path}/wh.db"))


def make_trigger(jobs: dict[str, str] | None = None, end_time: float | None = None) -> LeapOcrJobsTrigger:
    return LeapOcrJobsTrigger(
        jobs=jobs or {"job-1": "sha-1", "job-2": "sha-2"},
        end_time=time.time() + 3600 if end_time is None else end_time,
        leapocr_conn_id="leapocr_test",
        poll_interval=1.0,
        max_poll_interval=4.0,
    )


class FakeClock:
    """The poll schedule's clock, advanced only by the (mocked) sleeps of the trigger."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def events_of(
    trigger: LeapOcrJobsTrigger, client: FakeApi
) -> tuple[list[TriggerEvent], mock.AsyncMock]:
    clock = FakeClock()
    with (
        mock.patch("invoiceflow.leapocr.triggers.LeapOcrHook.aget_api", mock.AsyncMock(return_value=client)),
        mock.patch("invoiceflow.leapocr.triggers._monotonic", clock),
        mock.patch("invoiceflow.leapocr.triggers._sleep", mock.AsyncMock(side_effect=clock.sleep)) as sleep,
    ):
        return [event async for event in trigger.run()], sleep


def test_serialize_round_trips_through_the_constructor() -> None:
    trigger = make_trigger(end_time=1234.5)
    trigger.queued = ["sha-3"]
    trigger.submission = {"schemas": {"default": {"type": "object"}}, "run_id": "r1", "credit_budget": 10}
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "jobs": {"job-1": "sha-1", "job-2": "sha-2"},
        "end_time": 1234.5,
        "leapocr_conn_id": "leapocr_test",
        "poll_interval": 1.0,
        "max_poll_interval": 4.0,
        "queued": ["sha-3"],
        "submission": {"schemas": {"default": {"type": "object"}}, "run_id": "r1", "credit_budget": 10},
        "warehouse_conn_id": "warehouse_default",
    }
    assert LeapOcrJobsTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.asyncio
async def test_all_jobs_completed_yields_one_done_event_and_backs_off_while_idle() -> None:
    client = FakeApi(
        {
            "job-1": [
                status("job-1", "processing"),
                status("job-1", "processing"),
                status("job-1", "completed"),
            ],
            "job-2": [status("job-2", "pending"), status("job-2", "completed")],
        }
    )
    events, sleep = await events_of(make_trigger(), client)
    assert events == [
        TriggerEvent(
            {
                "status": "done",
                "message": "2 documents finished, 0 not completed",
                "documents": {
                    "sha-1": {"status": "completed", "error": None, "job_id": "job-1"},
                    "sha-2": {"status": "completed", "error": None, "job_id": "job-2"},
                },
            }
        )
    ]
    assert [c.args[0] for c in sleep.await_args_list] == [1.0, 1.0]


@pytest.mark.asyncio
async def test_polling_of_a_job_backs_off_after_its_fast_rounds() -> None:
    still_running = [status("job-1", "processing")] * (FAST_POLL_ROUNDS + 4)
    client = FakeApi(
        {
            "job-1": [*still_running, status("job-1", "completed")],
            "job-2": [*still_running, status("job-2", "processing"), status("job-2", "completed")],
        }
    )
    events, sleep = await events_of(make_trigger(), client)
    assert [e.payload["status"] for e in events] == ["done"]
    delays = [c.args[0] for c in sleep.await_args_list]
    # base interval while the jobs are young, then x1.5 per poll up to the 4 s cap; each job keeps its own pace,
    # so job-1 finishing does not make the trigger poll the long job-2 faster
    assert delays == [1.0] * FAST_POLL_ROUNDS + [1.5, 2.25, 3.375, 4.0, 4.0]
    assert client.job_status.await_count == (FAST_POLL_ROUNDS + 5) + (FAST_POLL_ROUNDS + 6)


def test_poll_schedule_first_polls_a_new_job_when_jobs_are_usually_done() -> None:
    clock = FakeClock()
    schedule = PollSchedule(base=0.3, cap=10.0, clock=clock)
    schedule.add("adopted")  # from the ledger: its age is unknown, poll at once
    schedule.add("new", expected=2.0, submitted=True)
    schedule.add("unknown", expected=None, submitted=True)
    assert schedule.due() == ["adopted"]
    schedule.finished("adopted")
    assert schedule.wait() == pytest.approx(0.3)
    clock.now += 0.3
    assert schedule.due() == ["unknown"]
    schedule.still_running("unknown")
    # 1.95 s after submission: within a quarter interval of "new" (due at 2.0), so both are polled now
    clock.now += 1.65
    assert sorted(schedule.due()) == ["new", "unknown"]
    assert schedule.finished("new") == pytest.approx(1.95)
    assert schedule.finished("adopted") is None


def test_expected_duration_is_the_lower_quartile_of_recent_jobs() -> None:
    gate = InflightGate(capacity=4)
    for seconds in (2.3, 2.1, 2.2):
        gate.observe_duration(seconds)
    assert gate.expected_duration() is None  # too few to predict
    for seconds in (2.05, 9.0, 2.4, 2.15, 2.25):
        gate.observe_duration(seconds)
    assert gate.expected_duration() == 2.15
    for _ in range(DURATION_SAMPLES):
        gate.observe_duration(1.0)
    assert gate.expected_duration() == 1.0  # only recent jobs count


@pytest.mark.asyncio
async def test_failed_job_fails_only_its_document_with_the_server_message() -> None:
    client = FakeApi(
        {
            "job-1": [status("job-1", "failed", error="corrupt PDF: cannot open")],
            "job-2": [status("job-2", "completed")],
        }
    )
    events, _ = await events_of(make_trigger(), client)
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "done"
    assert payload["documents"]["sha-1"] == {
        "status": "failed",
        "error": "corrupt PDF: cannot open",
        "job_id": "job-1",
    }
    assert payload["documents"]["sha-2"]["status"] == "completed"


@pytest.mark.asyncio
async def test_deadline_yields_one_timeout_event_for_unfinished_jobs() -> None:
    client = FakeApi({"job-1": [status("job-1", "completed")], "job-2": [status("job-2", "processing")]})
    events, sleep = await events_of(make_trigger(end_time=time.time() - 1), client)
    assert len(events) == 1
    assert events[0].payload["status"] == "timeout"
    assert events[0].payload["documents"] == {
        "sha-1": {"status": "completed", "error": None, "job_id": "job-1"},
        "sha-2": {"status": "timeout", "error": "job did not finish before the deadline", "job_id": "job-2"},
    }
    sleep.assert_not_awaited()


@pytest.mark.asyncio
async def test_busy_api_is_polled_again_and_a_vanished_job_fails() -> None:
    client = FakeApi(
        {
            "job-1": [
                LeapOcrUnavailable("status of job-1 failed after 6 attempts"),
                status("job-1", "completed"),
            ],
            "job-2": [LeapOcrRejected("status of job-2 refused (HTTP 404): job not found", 404)],
        }
    )
    events, _ = await events_of(make_trigger(), client)
    assert [e.payload["documents"] for e in events] == [
        {
            "sha-1": {"status": "completed", "error": None, "job_id": "job-1"},
            "sha-2": {"status": "failed", "error": "job job-2 not found on the server", "job_id": "job-2"},
        }
    ]


@pytest.mark.asyncio
async def test_authentication_error_yields_one_error_event() -> None:
    client = FakeApi(
        {
            "job-1": [LeapOcrAuthError("LeapOCR rejected the API key (HTTP 401)")],
            "job-2": [status("job-2", "completed")],
        }
    )
    events, _ = await events_of(make_trigger(), client)
    assert len(events) == 1
    assert events[0].payload["status"] == "error"
    assert "LeapOcrAuthError" in events[0].payload["message"]


@pytest.mark.asyncio
async def test_connection_is_looked_up_asynchronously_only(
    leapocr_base_url: str, leapocr_api_key: str, tmp_path: Any
) -> None:
    """In the triggerer a sync lookup breaks the event loop: make it explode and prove it is never used."""
    from airflow.sdk import Connection
    from fpdf import FPDF
    from leapocr import ClientConfig, Format, LeapOCR, ProcessOptions

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Invoice No: T-1  Total: 10.00 EUR")
    path = tmp_path / "t.pdf"
    pdf.output(str(path))
    async with LeapOCR(leapocr_api_key, ClientConfig(base_url=leapocr_base_url)) as client:
        job = await client.ocr.process_file(path, ProcessOptions(format=Format.MARKDOWN))
    connection = Connection(
        conn_id="leapocr_test", conn_type="leapocr", host=leapocr_base_url, password=leapocr_api_key
    )
    warehouse_conn = Connection(conn_id="warehouse_default", conn_type="sqlite", host=f"{tmp_path}/wh.db")
    connections = {"leapocr_test": connection, "warehouse_default": warehouse_conn}
    trigger = make_trigger(jobs={job.job_id: "sha"})
    trigger.poll_interval = 0.05
    with (
        mock.patch(
            "airflow.sdk.BaseHook.get_connection", side_effect=AssertionError("sync lookup in triggerer")
        ),
        mock.patch(
            "airflow.sdk.BaseHook.aget_connection", mock.AsyncMock(side_effect=connections.__getitem__)
        ) as lookup,
    ):
        events = [event async for event in trigger.run()]
    assert sorted(c.args[0] for c in lookup.await_args_list) == ["leapocr_test", "warehouse_default"]
    assert [e.payload["status"] for e in events] == ["done"]
    assert events[0].payload["documents"]["sha"]["status"] == "completed"


@pytest.mark.parametrize("event", [None, {"status": "success", "documents": {}}, {"status": "done"}])
def test_operator_refuses_unknown_events(event: Any) -> None:
    with pytest.raises(ValueError, match="unexpected LeapOCR trigger event"):
        validate_trigger_event(event)
