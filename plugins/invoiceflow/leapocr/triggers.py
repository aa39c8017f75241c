"""Poll the LeapOCR jobs of one batch from the triggerer, concurrently, without blocking its event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from leapocr import APIError

from invoiceflow.leapocr.hooks import LeapOcrHook

#: Event statuses. ``done``: every job reached ``completed`` or ``failed`` (see the per-job outcomes);
#: ``timeout``: the deadline passed first; ``error``: polling itself broke (e.g. bad credentials).
DONE, TIMEOUT, ERROR = "done", "timeout", "error"
EVENT_STATUSES = (DONE, TIMEOUT, ERROR)


class LeapOcrJobsTrigger(BaseTrigger):
    """Wait for a batch of LeapOCR jobs and yield exactly one event with the outcome of each job.

    :param jobs: ``{job_id: document_sha256}`` of the jobs to wait for.
    :param end_time: epoch seconds after which unfinished jobs are reported as timed out.
    :param poll_interval: first wait between polls; it grows by half each round up to ``max_poll_interval``.
    """

    def __init__(
        self,
        jobs: dict[str, str],
        end_time: float,
        leapocr_conn_id: str = LeapOcrHook.default_conn_name,
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.jobs = dict(jobs)
        self.end_time = end_time
        self.leapocr_conn_id = leapocr_conn_id
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "invoiceflow.leapocr.triggers.LeapOcrJobsTrigger",
            {
                "jobs": self.jobs,
                "end_time": self.end_time,
                "leapocr_conn_id": self.leapocr_conn_id,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            client = await LeapOcrHook(self.leapocr_conn_id).aget_client()
            async with client:
                status, message = await self._poll_until_finished(client, outcomes)
        except Exception as exc:
            yield TriggerEvent({"status": ERROR, "message": f"{type(exc).__name__}: {exc}", "jobs": outcomes})
            return
        yield TriggerEvent({"status": status, "message": message, "jobs": outcomes})

    async def _poll_until_finished(self, client: Any, outcomes: dict[str, dict[str, Any]]) -> tuple[str, str]:
        interval = self.poll_interval
        while True:
            pending = [job_id for job_id in self.jobs if job_id not in outcomes]
            checks = await asyncio.gather(*(self._check(client, job_id) for job_id in pending))
            progress = []
            for job_id, (outcome, pages) in zip(pending, checks, strict=True):
                if outcome is not None:
                    outcomes[job_id] = outcome
                else:
                    progress.append(pages)
            if len(outcomes) == len(self.jobs):
                failed = sum(1 for o in outcomes.values() if o["status"] != "completed")
                return DONE, f"{len(outcomes)} jobs finished, {failed} failed"
            done_pages = sum(p[0] for p in progress)
            total_pages = sum(p[1] for p in progress)
            self.log.info(
                "LeapOCR: %d/%d jobs finished; running jobs at %d/%d pages",
                len(outcomes),
                len(self.jobs),
                done_pages,
                total_pages,
            )
            if time.time() >= self.end_time:
                for job_id in pending:
                    if job_id not in outcomes:
                        outcomes[job_id] = {
                            "status": "timeout",
                            "error": "job did not finish before the deadline",
                        }
                return TIMEOUT, f"{len(pending)} jobs still running at the deadline"
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    @staticmethod
    async def _check(client: Any, job_id: str) -> tuple[dict[str, Any] | None, tuple[int, int]]:
        """One job's terminal outcome, or ``None`` and its page progress while it still runs."""
        try:
            status = await client.ocr.get_job_status(job_id)
        except APIError as exc:
            if exc.status_code == 404:
                return {"status": "failed", "error": f"job {job_id} not found on the server"}, (0, 0)
            if exc.status_code in (401, 403):
                raise
            return None, (0, 0)  # 429/5xx: try again next round
        state = getattr(status.status, "value", status.status)
        if state == "completed":
            return {"status": "completed", "error": None}, (status.processed_pages, status.total_pages)
        if state == "failed":
            return {"status": "failed", "error": status.error_message or "job failed"}, (0, 0)
        return None, (status.processed_pages, status.total_pages)


def validate_trigger_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """Fail loudly on an event this operator does not understand (allow-list, never block-list)."""
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES or "jobs" not in event:
        raise ValueError(f"unexpected LeapOCR trigger event: {event!r}")
    return event
