"""Drive the LeapOCR jobs of one batch from the triggerer: submit what is queued, poll what runs, concurrently.

Everything here is async: the connection is looked up with ``aget_connection``, HTTP goes through the async SDK,
and the few blocking things (reading a file, a ledger write) run in a thread. The trigger keeps at most
``max_jobs_in_flight`` jobs per API key running in this triggerer, records every job id in the warehouse ledger
the moment it exists, and yields exactly one event with the outcome of every document of the batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent
from leapocr import Format, ProcessOptions

from invoiceflow import config, storage, warehouse
from invoiceflow.leapocr.hooks import (
    LeapOcrApi,
    LeapOcrAuthError,
    LeapOcrCreditsExhausted,
    LeapOcrHook,
    LeapOcrRejected,
    LeapOcrSubmissionUnknown,
    LeapOcrUnavailable,
)

log = logging.getLogger(__name__)

#: Event statuses. ``done``: every document reached an outcome; ``timeout``: the deadline passed first (unfinished
#: documents are ``timeout``); ``error``: the trigger could not go on (e.g. bad credentials).
DONE, TIMEOUT, ERROR = "done", "timeout", "error"
EVENT_STATUSES = (DONE, TIMEOUT, ERROR)
#: Polls of one job at the base interval before its polling backs off: most normal invoices finish within them.
FAST_POLL_ROUNDS = 6
#: Seconds between progress log lines while no document finishes.
PROGRESS_LOG_SECONDS = 10.0
#: Completed jobs of this process whose durations predict when a new job will be done (per API key).
DURATION_SAMPLES = 32
#: Per-document outcomes.
COMPLETED, FAILED, TIMED_OUT, WAITING = "completed", "failed", "timeout", "waiting_for_credits"
#: Content types LeapOCR accepts, with the file extension it derives the type from.
EXTENSIONS = {"pdf": ".pdf", "png": ".png", "jpeg": ".jpg", "tiff": ".tiff"}


class InflightGate:
    """Jobs in flight per API key in this process, shared by every trigger of the triggerer's event loop.

    The count is derived from the live batch runs (their running jobs plus submissions under way), so a trigger
    that ends in any way, cancellation included, can never leak a slot.
    """

    _gates: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, InflightGate]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.members: weakref.WeakSet[_BatchRun] = weakref.WeakSet()
        self.freed = asyncio.Event()
        self.durations: collections.deque[float] = collections.deque(maxlen=DURATION_SAMPLES)

    @classmethod
    def for_key(cls, fingerprint: str, capacity: int) -> InflightGate:
        gates = cls._gates.setdefault(asyncio.get_running_loop(), {})
        gate = gates.setdefault(fingerprint, cls(capacity))
        gate.capacity = capacity
        return gate

    def free(self) -> int:
        used = sum(len(member.running) + member.submitting for member in self.members)
        return max(0, self.capacity - used)

    def notify_freed(self) -> None:
        """A job finished somewhere: wake the triggers whose queued documents wait for a slot."""
        self.freed.set()
        self.freed = asyncio.Event()

    async def wait_freed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.freed.wait(), timeout)

    def observe_duration(self, seconds: float) -> None:
        """A job submitted here was seen done ``seconds`` after its submission."""
        self.durations.append(seconds)

    def expected_duration(self) -> float | None:
        """When a new job is likely done: the lower quartile of recent durations (``None`` until there are 4).

        Durations are measured up to the poll that saw the job done, so they overshoot by up to a poll interval;
        the lower quartile keeps the first poll close to the real finish without drifting late.
        """
        if len(self.durations) < 4:
            return None
        return sorted(self.durations)[len(self.durations) // 4]


def _monotonic() -> float:
    """The poll schedule's clock (a seam for tests, which replace it together with :func:`_sleep`)."""
    return time.monotonic()


async def _sleep(seconds: float) -> None:
    """The trigger's waits between polls (a seam for tests: patching ``asyncio.sleep`` itself would also stop
    every other event loop of the process, such as a test server's)."""
    await asyncio.sleep(seconds)


class PollSchedule:
    """When to poll each running job, so a job is looked at when it is likely done, not on a global beat.

    A new job is first polled after the duration jobs of this API key usually take (or the base interval while
    that is unknown), then every ``base`` seconds; after ``FAST_POLL_ROUNDS`` polls that found it running, its
    interval grows by half per poll up to ``cap`` (long documents). Jobs due within a quarter interval of each
    other are polled together, so the trigger wakes once for them.
    """

    def __init__(self, base: float, cap: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.cap, self.clock = base, cap, clock
        self.due_at: dict[str, float] = {}
        self.polls: dict[str, int] = {}
        self.submitted_at: dict[str, float] = {}

    def add(self, job_id: str, *, expected: float | None = None, submitted: bool = False) -> None:
        """Track a job: one just submitted here (``submitted``) or one adopted from the ledger (polled now)."""
        now = self.clock()
        self.polls[job_id] = 0
        if submitted:
            self.submitted_at[job_id] = now
            self.due_at[job_id] = now + max(self.base, expected or 0.0)
        else:
            self.due_at[job_id] = now

    def due(self) -> list[str]:
        horizon = self.clock() + self.base / 4
        return [job_id for job_id, at in self.due_at.items() if at <= horizon]

    def still_running(self, job_id: str) -> None:
        self.polls[job_id] += 1
        extra = self.polls[job_id] - FAST_POLL_ROUNDS
        interval = self.base if extra <= 0 else min(self.base * 1.5**extra, self.cap)
        self.due_at[job_id] = self.clock() + interval

    def finished(self, job_id: str) -> float | None:
        """Stop tracking a job; returns how long it ran since its submission here (``None`` if adopted)."""
        self.due_at.pop(job_id, None)
        self.polls.pop(job_id, None)
        submitted = self.submitted_at.pop(job_id, None)
        return None if submitted is None else self.clock() - submitted

    def wait(self) -> float:
        """Seconds until the next job is due (the base interval when none runs)."""
        if not self.due_at:
            return self.base
        return max(0.0, min(self.due_at.values()) - self.clock())


def process_options(submission: dict[str, Any], content_type: str | None) -> ProcessOptions:
    """LeapOCR options of one document: a template slug, or a schema chosen by document type, model, instructions."""
    if submission.get("template_slug"):
        return ProcessOptions(template_slug=submission["template_slug"])
    schema = submission["schemas"].get(content_type or "", submission["schemas"]["default"])
    return ProcessOptions(
        format=Format.STRUCTURED,
        schema=schema,
        model=submission.get("model") or None,
        instructions=submission.get("instructions") or None,
    )


def leapocr_file_name(name: str, content_type: str | None) -> str:
    """The name LeapOCR sees: its extension must match the content (LeapOCR derives the type from it)."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem + EXTENSIONS.get(content_type or "", "." + name.rsplit(".", 1)[-1])


async def submit_document(
    api: LeapOcrApi,
    engine: Any,
    sha: str,
    document: tuple[str, str, str | None],
    submission: dict[str, Any],
    inflight: set[asyncio.Future[str]] | None = None,
) -> str:
    """Upload one document and write its job id to the ledger at once; returns the job id.

    While it uploads, the document holds a ``submitting`` reservation in the ledger, so concurrent tasks and
    triggers count it against the in-flight cap, and a re-created trigger waits for it instead of submitting a
    twin. Reservation, upload and record are shielded from cancellation as one unit: a triggerer shutting down
    lets it finish and record its job, and never leaves a reservation without an upload behind it.

    The job id goes into the reservation right before the request that starts the job: if that request's answer
    is lost, the job is followed instead of failing the document; if the process is killed there, whoever finds
    the stale reservation asks LeapOCR about that job instead of uploading (and paying) again.
    """
    path, name, content_type = document
    run_id = submission.get("run_id")
    started: list[str] = []

    async def note_start(job_id: str) -> None:
        started.append(job_id)
        await asyncio.to_thread(warehouse.note_starting_job, engine, sha, job_id)

    async def upload_and_record() -> str:
        await asyncio.to_thread(warehouse.reserve_submission, engine, sha, run_id, api.fingerprint)
        try:
            data = await asyncio.to_thread(storage.read_bytes, path)
            options = process_options(submission, content_type)
            job_id = await api.submit_file(
                data, leapocr_file_name(name, content_type), options, before_complete=note_start
            )
        except LeapOcrSubmissionUnknown as exc:
            if not started:
                await asyncio.to_thread(warehouse.release_submission, engine, sha)
                raise
            job_id = started[-1]
            log.warning("LeapOCR %s: %s; following job %s instead of uploading again", sha[:12], exc, job_id)
        except Exception:  # LeapOCR answered no, or the start of a job was never asked for
            await asyncio.to_thread(warehouse.release_submission, engine, sha)
            raise
        except BaseException:  # killed: a job whose start was asked for stays noted in the reservation
            if not started:
                await asyncio.to_thread(warehouse.release_submission, engine, sha)
            raise
        await asyncio.to_thread(warehouse.record_job, engine, sha, job_id, run_id, api.fingerprint)
        return job_id

    upload = asyncio.ensure_future(upload_and_record())
    if inflight is not None:  # the caller keeps its API client open until these finish
        inflight.add(upload)
        upload.add_done_callback(inflight.discard)
    return await asyncio.shield(upload)


#: A reservation older than this belongs to a process that died mid-upload (uploads time out after 300 s).
STALE_RESERVATION_SECONDS = 600.0


#: Submission failures that fail only their document (the API refused the file, or it cannot be read).
DOCUMENT_FAILURES = (LeapOcrRejected, LeapOcrSubmissionUnknown, OSError)
#: Submission failures after which the document goes back in the queue (busy or unreachable API: try later).
REQUEUE_FAILURES = (LeapOcrUnavailable,)


def load_schemas(schema: str | dict[str, str]) -> dict[str, dict[str, Any]]:
    """``schema`` is a name in ``include/schemas/`` or ``{content type: name, "default": name}``."""
    names = {"default": schema} if isinstance(schema, str) else dict(schema)
    if "default" not in names:
        names["default"] = "invoice"
    loaded = {}
    for kind, name in names.items():
        path = config.schema_dir() / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"extraction schema {name!r} not found at {path}")
        loaded[kind] = json.loads(path.read_text())
    return loaded


class LeapOcrJobsTrigger(BaseTrigger):
    """Submit the queued documents of a batch and wait for all its jobs; yield one event.

    :param jobs: ``{job_id: document_sha256}`` already submitted (and in the ledger) when the task deferred.
    :param end_time: epoch seconds after which unfinished documents are reported as timed out.
    :param queued: document hashes still to submit (as slots free up under the per-key cap).
    :param submission: how to submit: ``schemas`` (by content type), or ``template_slug``; ``model``,
        ``instructions``, ``run_id`` and ``credit_budget`` (stop submitting once the run used that many credits).
    :param poll_interval: wait between polls of a job; a job is first polled when jobs of this API key are
        usually done, and after ``FAST_POLL_ROUNDS`` polls that found it running its interval grows by half per
        poll up to ``max_poll_interval`` (see :class:`PollSchedule`).
    """

    def __init__(
        self,
        jobs: dict[str, str],
        end_time: float,
        leapocr_conn_id: str = LeapOcrHook.default_conn_name,
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
        queued: list[str] | None = None,
        submission: dict[str, Any] | None = None,
        warehouse_conn_id: str = config.WAREHOUSE_CONN_ID,
    ) -> None:
        super().__init__()
        self.jobs = dict(jobs)
        self.end_time = end_time
        self.leapocr_conn_id = leapocr_conn_id
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.queued = list(queued or [])
        self.submission = dict(submission or {})
        self.warehouse_conn_id = warehouse_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "invoiceflow.leapocr.triggers.LeapOcrJobsTrigger",
            {
                "jobs": self.jobs,
                "end_time": self.end_time,
                "leapocr_conn_id": self.leapocr_conn_id,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "queued": self.queued,
                "submission": self.submission,
                "warehouse_conn_id": self.warehouse_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            api = await LeapOcrHook(self.leapocr_conn_id).aget_api()
            async with api:
                status, message = await _BatchRun(self, api, outcomes).run()
        except Exception as exc:
            yield TriggerEvent(
                {"status": ERROR, "message": f"{type(exc).__name__}: {exc}", "documents": outcomes}
            )
            return
        yield TriggerEvent({"status": status, "message": message, "documents": outcomes})


class _BatchRun:
    """One execution of a trigger: the state that lives only while it runs."""

    def __init__(
        self, trigger: LeapOcrJobsTrigger, api: LeapOcrApi, outcomes: dict[str, dict[str, Any]]
    ) -> None:
        self.t = trigger
        self.api = api
        self.outcomes = outcomes
        self.running: dict[str, str] = dict(trigger.jobs)
        self.queued: list[str] = list(trigger.queued)
        self.stop_reason: str | None = None
        self.engine: Any = None
        self.submitting = 0
        self.reserved: set[str] = set()
        self.inflight: set[asyncio.Future[str]] = set()
        self.gate = InflightGate.for_key(api.fingerprint, api.max_jobs_in_flight)
        self.schedule = PollSchedule(trigger.poll_interval, trigger.max_poll_interval, clock=_monotonic)
        for job_id in self.running:
            self.schedule.add(job_id)
        self.last_progress_log = 0.0
        #: (processed, total) pages of each running job, from its last poll
        self.pages: dict[str, tuple[int, int]] = {}

    async def run(self) -> tuple[str, str]:
        self.engine = await warehouse.aget_engine(self.t.warehouse_conn_id)
        if self.queued:
            await self._adopt_jobs_from_ledger()
        self.gate.members.add(self)
        try:
            return await self._loop()
        finally:
            self.gate.members.discard(self)
            if self.inflight:  # cancelled mid-upload: let the uploads finish and record their jobs first
                await asyncio.gather(*self.inflight, return_exceptions=True)

    async def _adopt_jobs_from_ledger(self) -> None:
        """Jobs another instance submitted are in the ledger: poll them, never resubmit.

        A document reserved by an upload still under way elsewhere waits (it is neither queued nor running) until
        that upload records its job or gives up, or until the reservation is stale (its process died).
        """
        candidates = self.queued + sorted(self.reserved)
        ledger = await asyncio.to_thread(warehouse.jobs_for, self.engine, candidates)
        for sha in candidates:
            row = ledger.get(sha)
            if row and row["status"] in warehouse.RECONNECTABLE_JOB_STATES:
                if row["job_id"] not in self.running:
                    self.running[row["job_id"]] = sha
                    self.schedule.add(row["job_id"])
                target = None
            elif row and row["status"] == "submitting":
                stale = time.time() - (row["reserved_at"] or 0) > STALE_RESERVATION_SECONDS
                if not stale:
                    target = "reserved"
                elif row["job_id"]:
                    target = await self._resolve_orphan(sha, row["job_id"])
                else:
                    self.t.log.warning(
                        "Reservation of %s is stale (its process died before starting a job): submitting again",
                        sha[:12],
                    )
                    target = "queued"
            else:
                target = "queued"
            in_queue, in_reserved = sha in self.queued, sha in self.reserved
            if in_queue and target != "queued":
                self.queued.remove(sha)
            if in_reserved and target != "reserved":
                self.reserved.discard(sha)
            if target == "queued" and not in_queue:
                self.queued.append(sha)
            if target == "reserved":
                self.reserved.add(sha)

    async def _resolve_orphan(self, sha: str, job_id: str) -> str | None:
        """A dead process asked LeapOCR to start ``job_id`` and never heard back: follow that job if it exists.

        Returns where the document goes: ``None`` (running: adopted), ``queued`` (the job does not exist, so
        nothing was started or billed) or ``reserved`` (LeapOCR cannot say right now: ask again later).
        """
        try:
            await self.api.job_status(job_id)
        except LeapOcrRejected as exc:
            if not exc.not_found:
                raise
            await asyncio.to_thread(warehouse.release_submission, self.engine, sha)
            self.t.log.warning("Stale upload of %s never started job %s: submitting again", sha[:12], job_id)
            return "queued"
        except LeapOcrUnavailable:
            return "reserved"
        await asyncio.to_thread(
            warehouse.record_job,
            self.engine,
            sha,
            job_id,
            self.t.submission.get("run_id"),
            self.api.fingerprint,
        )
        self.t.log.warning(
            "Stale upload of %s had started job %s: following it, not uploading again", sha[:12], job_id
        )
        self.running[job_id] = sha
        self.schedule.add(job_id)
        return None

    async def _loop(self) -> tuple[str, str]:
        while True:
            await self._poll()
            if self.reserved:
                await self._adopt_jobs_from_ledger()
            await self._submit_queued()  # right away into the slots the poll freed
            if not self.running and not self.reserved and (not self.queued or self.stop_reason):
                for sha in self.queued:
                    self.outcomes[sha] = {"status": WAITING, "job_id": None, "error": self.stop_reason}
                failed = sum(1 for o in self.outcomes.values() if o["status"] != COMPLETED)
                return DONE, f"{len(self.outcomes)} documents finished, {failed} not completed" + (
                    f"; stopped submitting: {self.stop_reason}" if self.stop_reason else ""
                )
            if time.time() >= self.t.end_time:
                for job_id, sha in self.running.items():
                    self.outcomes[sha] = {
                        "status": TIMED_OUT,
                        "job_id": job_id,
                        "error": "job did not finish before the deadline",
                    }
                for sha in [*self.queued, *self.reserved]:
                    self.outcomes[sha] = {
                        "status": TIMED_OUT,
                        "job_id": None,
                        "error": "never submitted before the deadline",
                    }
                return TIMEOUT, f"{len(self.running) + len(self.queued)} documents unfinished at the deadline"
            wait = self.schedule.wait()
            if (self.queued and not self.stop_reason) or self.reserved:
                wait = min(wait, self.t.poll_interval)  # documents waiting for a slot: look again soon
            if self.queued and not self.stop_reason and not self.gate.free():
                await self.gate.wait_freed(wait)  # a slot freed by any trigger wakes us at once
            else:
                await _sleep(wait)

    # ------------------------------------------------------------------------------------------ submission

    async def _submit_queued(self) -> None:
        if not self.queued or self.stop_reason:
            return
        # The ledger counts jobs of every process (tasks still deferring, other triggerers); the gate counts
        # submissions under way in this one.
        elsewhere = await asyncio.to_thread(warehouse.jobs_in_flight, self.engine, self.api.fingerprint)
        slots = min(self.gate.free(), self.api.max_jobs_in_flight - elsewhere, len(self.queued))
        if slots and self.t.submission.get("credit_budget") is not None:
            slots = min(slots, await self._budget_left())
        if slots <= 0:
            return
        batch, self.queued = self.queued[:slots], self.queued[slots:]
        self.submitting = len(batch)
        try:
            documents = await asyncio.to_thread(warehouse.document_paths, self.engine, batch)
            results = await asyncio.gather(
                *(
                    submit_document(
                        self.api, self.engine, sha, documents[sha], self.t.submission, self.inflight
                    )
                    for sha in batch
                ),
                return_exceptions=True,
            )
        finally:
            self.submitting = 0
        for sha, result in zip(batch, results, strict=True):
            if isinstance(result, LeapOcrCreditsExhausted):
                self.stop_reason = str(result)
                self.queued.insert(0, sha)
            elif isinstance(result, LeapOcrAuthError):
                raise result
            elif isinstance(result, REQUEUE_FAILURES):
                self.t.log.warning("LeapOCR busy, %s goes back in the queue: %s", sha[:12], result)
                self.queued.append(sha)
            elif isinstance(result, DOCUMENT_FAILURES):
                self.outcomes[sha] = {"status": FAILED, "job_id": None, "error": str(result)}
            elif isinstance(result, BaseException):
                raise result
            else:
                self.running[result] = sha
                self.schedule.add(result, expected=self.gate.expected_duration(), submitted=True)

    async def _budget_left(self) -> int:
        """Documents we may still submit under the run's credit budget (each costs at least one credit)."""
        budget = int(self.t.submission["credit_budget"])
        used = await asyncio.to_thread(
            warehouse.credits_used_by_run, self.engine, self.t.submission["run_id"]
        )
        left = budget - used - len(self.running)
        if left <= 0:
            self.stop_reason = f"credit budget of {budget} reached ({used} credits used by this run)"
            self.t.log.warning("LeapOCR: %s; the remaining documents wait for the next run", self.stop_reason)
        return max(0, left)

    # ------------------------------------------------------------------------------------------ polling

    async def _poll(self) -> None:
        """Poll the jobs that are due."""
        jobs = self.schedule.due()
        if not jobs:
            return
        checks = await asyncio.gather(*(self._check(job_id) for job_id in jobs))
        ended: dict[str, str] = {}
        for job_id, (outcome, pages) in zip(jobs, checks, strict=True):
            if outcome is None:
                self.pages[job_id] = pages
                self.schedule.still_running(job_id)
                continue
            if (took := self.schedule.finished(job_id)) is not None and outcome["status"] == COMPLETED:
                self.gate.observe_duration(took)
            self.pages.pop(job_id, None)
            sha = self.running.pop(job_id)
            self.outcomes[sha] = {**outcome, "job_id": job_id}
            ended[job_id] = outcome["status"]
        if ended:
            await asyncio.to_thread(warehouse.mark_jobs_finished_remotely, self.engine, ended)
            self.gate.notify_freed()
        self._log_progress(bool(ended))

    def _log_progress(self, changed: bool) -> None:
        """Progress when documents finished, else at most every ``PROGRESS_LOG_SECONDS`` (polls can be frequent)."""
        now = time.monotonic()
        if not changed and now - self.last_progress_log < PROGRESS_LOG_SECONDS:
            return
        self.last_progress_log = now
        running_pages = [self.pages.get(job_id, (0, 0)) for job_id in self.running]
        self.t.log.info(
            "LeapOCR: %d/%d documents finished, %d queued; running jobs at %d/%d pages",
            len(self.outcomes),
            len(self.outcomes) + len(self.running) + len(self.queued),
            len(self.queued),
            sum(done for done, _ in running_pages),
            sum(total for _, total in running_pages),
        )

    async def _check(self, job_id: str) -> tuple[dict[str, Any] | None, tuple[int, int]]:
        """One job's outcome, or ``None`` and its page progress while it still runs (or the API is busy)."""
        try:
            status = await self.api.job_status(job_id)
        except LeapOcrRejected as exc:
            if exc.not_found:
                return {"status": FAILED, "error": f"job {job_id} not found on the server"}, (0, 0)
            raise
        except LeapOcrUnavailable:
            return None, (0, 0)  # keep polling until the deadline
        state = getattr(status.status, "value", status.status)
        if state == "completed":
            return {"status": COMPLETED, "error": None}, (status.processed_pages, status.total_pages)
        if state == "failed":
            return {"status": FAILED, "error": status.error_message or "job failed"}, (0, 0)
        return None, (status.processed_pages, status.total_pages)


def validate_trigger_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """Fail loudly on an event this operator does not understand (allow-list, never block-list)."""
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES or "documents" not in event:
        raise ValueError(f"unexpected LeapOCR trigger event: {event!r}")
    return event
