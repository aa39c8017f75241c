"""Extract a batch of documents with LeapOCR: submit, record, defer, then fetch, merge and store the results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from invoiceflow import config, storage, warehouse
from invoiceflow.leapocr.hooks import LeapOcrAuthError, LeapOcrCreditsExhausted, LeapOcrHook
from invoiceflow.leapocr.results import merge_pages
from invoiceflow.leapocr.triggers import (
    COMPLETED,
    DOCUMENT_FAILURES,
    ERROR,
    REQUEUE_FAILURES,
    WAITING,
    LeapOcrJobsTrigger,
    load_schemas,
    submit_document,
    validate_trigger_event,
)


class LeapOcrExtractBatchOperator(BaseOperator):
    """Extract the invoices of one batch of documents (content hashes) through the LeapOCR API.

    The task submits as many documents as the per-key in-flight cap allows, writes each job id to the warehouse
    ledger right after submission and before deferring, and defers to :class:`LeapOcrJobsTrigger`, which submits
    the rest as slots free up and polls everything. A retried task reconnects to the jobs in the ledger instead of
    paying for them twice. Standalone XML e-invoices are read locally and exactly (LeapOCR does not take XML).
    Returns the batch's document hashes for the load step.

    :param schema: a schema name in ``include/schemas/``, or ``{content type: name, "default": name}``.
    :param template_slug: a LeapOCR template instead of a schema (then model and instructions are not sent).
    :param credit_budget: stop submitting once this DAG run has used that many credits; the rest waits.
    :param delete_remote_after_fetch: delete the remote job once its result is stored (retention).
    """

    template_fields: Sequence[str] = (
        "document_ids",
        "schema",
        "template_slug",
        "model",
        "instructions",
        "credit_budget",
        "delete_remote_after_fetch",
    )

    def __init__(
        self,
        *,
        document_ids: Sequence[str],
        leapocr_conn_id: str = LeapOcrHook.default_conn_name,
        warehouse_conn_id: str = config.WAREHOUSE_CONN_ID,
        schema: str | dict[str, str] = "invoice",
        template_slug: str | None = None,
        model: str | None = None,
        instructions: str | None = None,
        credit_budget: int | None = None,
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
        job_timeout: timedelta = timedelta(hours=2),
        delete_remote_after_fetch: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.document_ids = document_ids
        self.leapocr_conn_id = leapocr_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.schema = schema
        self.template_slug = template_slug
        self.model = model
        self.instructions = instructions
        self.credit_budget = credit_budget
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.job_timeout = job_timeout
        self.delete_remote_after_fetch = delete_remote_after_fetch

    # ------------------------------------------------------------------------------------------ submit and defer

    def execute(self, context: Any) -> list[str]:
        engine = warehouse.get_engine(self.warehouse_conn_id)
        shas = list(self.document_ids)
        statuses = warehouse.document_statuses(engine, shas)
        ledger = warehouse.jobs_for(engine, shas)
        running = {
            row["job_id"]: sha
            for sha, row in ledger.items()
            if row["status"] in warehouse.RECONNECTABLE_JOB_STATES
            and statuses.get(sha) == warehouse.EXTRACTING
        }
        if running:
            self.log.info("Reconnecting to %d LeapOCR jobs already submitted for this batch", len(running))
        open_docs = [
            sha
            for sha in shas
            if statuses.get(sha) in (warehouse.REGISTERED, warehouse.WAITING_FOR_CREDITS)
            and ledger.get(sha, {}).get("status") not in warehouse.RECONNECTABLE_JOB_STATES
        ]
        # An upload reserved by a task that died may or may not have created a job: the trigger waits for the
        # reservation to resolve or go stale rather than submit a twin right away.
        reserved = [sha for sha in open_docs if ledger.get(sha, {}).get("status") == "submitting"]
        todo = [sha for sha in open_docs if sha not in reserved]
        documents = warehouse.document_paths(engine, todo)
        for sha in [s for s in todo if documents[s][2] == "xml"]:
            self._extract_locally(engine, sha, *documents[sha][:2])
            todo.remove(sha)
        submission = self._submission(context)
        queued = todo
        if todo:
            try:
                submitted, queued = asyncio.run(self._first_wave(engine, todo, documents, submission))
            except LeapOcrAuthError as exc:
                raise AirflowFailException(
                    f"{exc} (connection {self.leapocr_conn_id!r}); not retrying"
                ) from exc
            running.update(submitted)
        queued = [*queued, *reserved]
        if not running and not queued:
            return shas
        self.defer(
            trigger=LeapOcrJobsTrigger(
                jobs=running,
                end_time=time.time() + self.job_timeout.total_seconds(),
                leapocr_conn_id=self.leapocr_conn_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                queued=queued,
                submission=submission,
                warehouse_conn_id=self.warehouse_conn_id,
            ),
            method_name="execute_complete",
            timeout=self.job_timeout + timedelta(minutes=5),
        )
        return shas  # unreachable: defer() raises

    def _submission(self, context: Any) -> dict[str, Any]:
        """Everything the trigger needs to submit documents: JSON-serialisable, schemas loaded once here."""
        return {
            "schemas": {} if self.template_slug else load_schemas(self.schema),
            "template_slug": self.template_slug or None,
            "model": self.model or None,
            "instructions": self.instructions or None,
            "run_id": context.get("run_id"),
            "credit_budget": None if self.credit_budget in (None, "") else int(self.credit_budget),
        }

    async def _first_wave(
        self,
        engine: Any,
        todo: list[str],
        documents: dict[str, tuple[str, str, str | None]],
        submission: dict[str, Any],
    ) -> tuple[dict[str, str], list[str]]:
        """Submit what the in-flight cap allows right now; the trigger submits the rest as jobs finish."""
        async with LeapOcrHook(self.leapocr_conn_id).get_api() as api:
            # Concurrent tasks each read the ledger before any of them writes: a fair share keeps them from
            # overshooting the cap together; the triggers fill the rest as slots free up.
            share = -(-api.max_jobs_in_flight // max(1, self.max_active_tis_per_dagrun or 1))
            slots = min(share, api.max_jobs_in_flight - warehouse.jobs_in_flight(engine, api.fingerprint))
            if submission["credit_budget"] is not None:
                used = warehouse.credits_used_by_run(engine, submission["run_id"])
                slots = min(slots, submission["credit_budget"] - used)
            wave, queued = todo[: max(0, slots)], todo[max(0, slots) :]
            submitted: dict[str, str] = {}
            for index, sha in enumerate(wave):
                try:
                    job_id = await submit_document(api, engine, sha, documents[sha], submission)
                except LeapOcrCreditsExhausted as exc:
                    self.log.warning("%s: the trigger retries the remaining documents", exc)
                    return submitted, wave[index:] + queued
                except REQUEUE_FAILURES as exc:
                    self.log.warning("LeapOCR busy (%s): the trigger submits the rest as slots free up", exc)
                    return submitted, wave[index:] + queued
                except DOCUMENT_FAILURES as exc:
                    warehouse.fail_document(engine, sha, f"LeapOCR submission failed: {exc}")
                    continue
                submitted[job_id] = sha
                self.log.info("Submitted %s as LeapOCR job %s", documents[sha][1], job_id)
            return submitted, queued

    def _extract_locally(self, engine: Any, sha: str, path: str, name: str) -> None:
        """Standalone XML e-invoices carry the invoice exactly; no OCR (and no credits) needed."""
        from invoiceflow.extraction import UnsupportedDocument, extract_pages

        try:
            result = extract_pages(storage.read_bytes(path), name)
        except UnsupportedDocument as exc:
            warehouse.fail_document(engine, sha, f"e-invoice could not be read: {exc}")
            return
        pages = [
            {"page_number": p.page_number, "result": p.result, "confidence": p.confidence, "id": None}
            for p in result.pages
        ]
        job_id = f"local:{result.source}"
        warehouse.record_job(engine, sha, job_id)
        warehouse.store_extraction(
            engine,
            sha,
            job_id,
            pages,
            merge_pages(pages),
            model=result.source,
            credits_used=0,
            total_pages=len(pages),
        )
        self.log.info("Read e-invoice %s locally (%s)", name, result.source)

    # ------------------------------------------------------------------------------------------ resume

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        event = validate_trigger_event(event)
        engine = warehouse.get_engine(self.warehouse_conn_id)
        if event["status"] == ERROR:
            if "LeapOcrAuthError" in event["message"]:
                raise AirflowFailException(f"LeapOCR: {event['message']}; not retrying")
            raise AirflowException(
                f"LeapOCR trigger failed: {event['message']} (a retry reconnects to the jobs)"
            )
        self.log.info("LeapOCR trigger: %s (%s)", event["status"], event["message"])
        ledger = warehouse.jobs_for(engine, list(self.document_ids))
        completed = []
        for sha, outcome in event["documents"].items():
            if sha not in ledger and outcome["status"] != WAITING and outcome.get("job_id"):
                self.log.warning("Ignoring document %s: not in this batch's ledger", sha[:12])
            elif outcome["status"] == COMPLETED:
                completed.append((outcome["job_id"], sha))
            elif outcome["status"] == WAITING:
                warehouse.wait_for_credits(engine, [sha], outcome.get("error") or "out of credits")
            elif sha in ledger:
                warehouse.finish_job_failed(
                    engine, sha, outcome["status"], outcome.get("error") or "unknown error"
                )
            else:
                warehouse.fail_document(
                    engine, sha, f"extraction {outcome['status']}: {outcome.get('error')}"
                )
        if completed:
            asyncio.run(self._store_results(engine, completed))
        return list(self.document_ids)

    async def _store_results(self, engine: Any, completed: list[tuple[str, str]]) -> None:
        async with LeapOcrHook(self.leapocr_conn_id).get_api() as api:
            for job_id, sha in completed:
                pages, facts = await api.fetch_results(job_id)
                warehouse.store_extraction(engine, sha, job_id, pages, merge_pages(pages), **facts)
                if self.delete_remote_after_fetch:
                    try:
                        await api.delete_job(job_id)
                    except Exception as exc:  # the result is safe; a leftover remote copy expires on its own
                        self.log.warning("Could not delete LeapOCR job %s (kept remotely): %s", job_id, exc)
                        continue
                    warehouse.mark_remote_deleted(engine, sha)
