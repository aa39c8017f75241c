"""Extract a batch of documents with LeapOCR: submit, record, defer, then fetch, merge and store the results."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from leapocr import APIError, Format, LeapOCR, LeapOCRError, ProcessOptions

from invoiceflow import config, storage, warehouse
from invoiceflow.leapocr.hooks import LeapOcrHook
from invoiceflow.leapocr.results import fetch_all_pages, merge_pages
from invoiceflow.leapocr.triggers import DONE, ERROR, LeapOcrJobsTrigger, validate_trigger_event

#: File names LeapOCR needs to see (it picks the content type from the extension).
EXTENSIONS = {"pdf": ".pdf", "png": ".png", "jpeg": ".jpg", "tiff": ".tiff"}
#: Jobs submitted at once by one task.
SUBMIT_CONCURRENCY = 8


class LeapOcrExtractBatchOperator(BaseOperator):
    """Extract the invoices of one batch of documents (content hashes) through the LeapOCR API.

    Each job id is written to the warehouse ledger right after submission and before deferring, so a retried task
    reconnects to its jobs instead of paying for them twice. Standalone XML e-invoices are read locally and
    exactly (LeapOCR does not take XML). Returns the batch's document hashes for the load step.
    """

    template_fields: Sequence[str] = ("document_ids", "schema_name", "model", "instructions")

    def __init__(
        self,
        *,
        document_ids: Sequence[str],
        leapocr_conn_id: str = LeapOcrHook.default_conn_name,
        warehouse_conn_id: str = config.WAREHOUSE_CONN_ID,
        schema_name: str = "invoice",
        model: str | None = None,
        instructions: str | None = None,
        poll_interval: float = 2.0,
        job_timeout: timedelta = timedelta(hours=2),
        delete_after_fetch: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.document_ids = document_ids
        self.leapocr_conn_id = leapocr_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.schema_name = schema_name
        self.model = model
        self.instructions = instructions
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.delete_after_fetch = delete_after_fetch

    # ------------------------------------------------------------------------------------------ submit and defer

    def execute(self, context: Any) -> list[str]:
        engine = warehouse.get_engine(self.warehouse_conn_id)
        shas = list(self.document_ids)
        statuses = warehouse.document_statuses(engine, shas)
        ledger = warehouse.jobs_for(engine, shas)
        running = {
            row["job_id"]: sha
            for sha, row in ledger.items()
            if row["status"] == "submitted" and statuses.get(sha) == warehouse.EXTRACTING
        }
        if running:
            self.log.info("Reconnecting to %d LeapOCR jobs already submitted for this batch", len(running))
        new = [sha for sha in shas if statuses.get(sha) == warehouse.REGISTERED and sha not in ledger]
        run_id = context.get("run_id")
        running.update(self._submit(engine, new, run_id))
        if not running:
            return shas
        self.defer(
            trigger=LeapOcrJobsTrigger(
                jobs=running,
                end_time=time.time() + self.job_timeout.total_seconds(),
                leapocr_conn_id=self.leapocr_conn_id,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            timeout=self.job_timeout + timedelta(minutes=5),
        )
        return shas  # unreachable: defer() raises

    def _submit(self, engine: Any, shas: list[str], run_id: str | None) -> dict[str, str]:
        """Submit new documents; returns ``{job_id: sha}``. Each job is in the ledger before this returns."""
        if not shas:
            return {}
        documents = warehouse.document_paths(engine, shas)
        local = [sha for sha in shas if documents[sha][2] == "xml"]
        for sha in local:
            self._extract_locally(engine, sha, documents[sha][0], documents[sha][1])
        remote = [sha for sha in shas if sha not in local]
        if not remote:
            return {}
        schema = self._schema()
        return asyncio.run(self._submit_remote(engine, remote, documents, schema, run_id))

    async def _submit_remote(
        self,
        engine: Any,
        shas: list[str],
        documents: dict[str, tuple[str, str, str | None]],
        schema: dict[str, Any],
        run_id: str | None,
    ) -> dict[str, str]:
        submitted: dict[str, str] = {}
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        options = ProcessOptions(
            format=Format.STRUCTURED, schema=schema, model=self.model, instructions=self.instructions or None
        )
        async with LeapOcrHook(self.leapocr_conn_id).get_client() as client:

            async def submit_one(sha: str) -> None:
                path, name, content_type = documents[sha]
                async with gate:
                    job_id = await self._submit_file(client, sha, path, name, content_type, options, engine)
                if job_id is not None:
                    warehouse.record_job(engine, sha, job_id, run_id)
                    submitted[job_id] = sha
                    self.log.info("Submitted %s as LeapOCR job %s", name, job_id)

            results = await asyncio.gather(*(submit_one(sha) for sha in shas), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Jobs already submitted are in the ledger: the retry reconnects to them and submits only the rest.
            raise AirflowException(
                f"{len(errors)} of {len(shas)} submissions failed; first: {errors[0]}"
            ) from errors[0]
        return submitted

    async def _submit_file(
        self,
        client: LeapOCR,
        sha: str,
        path: str,
        name: str,
        content_type: str | None,
        options: ProcessOptions,
        engine: Any,
    ) -> str | None:
        """Upload one file; a document LeapOCR refuses as bad input fails alone, with the API's reason."""
        data = await asyncio.to_thread(storage.read_bytes, path)
        handle = io.BytesIO(data)
        handle.name = Path(name).stem + EXTENSIONS.get(content_type or "", Path(name).suffix)
        try:
            result = await client.ocr.process_file(handle, options)
        except APIError as exc:
            if exc.status_code == 401:
                raise AirflowException(
                    f"LeapOCR rejected the API key of connection {self.leapocr_conn_id!r} (HTTP 401)"
                ) from exc
            if exc.status_code in (400, 413, 415, 422):
                warehouse.fail_document(
                    engine, sha, f"LeapOCR refused the file (HTTP {exc.status_code}): {exc}"
                )
                return None
            raise
        except LeapOCRError as exc:
            if exc.status_code is None and type(exc).__name__ in {"FileError", "ValidationError"}:
                warehouse.fail_document(engine, sha, f"LeapOCR SDK refused the file: {exc}")
                return None
            raise
        return str(result.job_id)

    def _extract_locally(self, engine: Any, sha: str, path: str, name: str) -> None:
        """Standalone XML e-invoices carry the invoice exactly; no OCR (and no credits) needed."""
        from invoiceflow.extraction import UnsupportedDocument, extract_pages

        try:
            result = extract_pages(storage.read_bytes(path), name, self._schema())
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

    def _schema(self) -> dict[str, Any]:
        path = config.schema_dir() / f"{self.schema_name}.json"
        if not path.is_file():
            raise AirflowException(f"extraction schema {self.schema_name!r} not found at {path}")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------------------------------ resume

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        event = validate_trigger_event(event)
        engine = warehouse.get_engine(self.warehouse_conn_id)
        if event["status"] == ERROR:
            raise AirflowException(
                f"polling LeapOCR failed: {event['message']} (a retry reconnects to the jobs)"
            )
        self.log.info("LeapOCR trigger: %s (%s)", event["status"], event["message"])
        ledger = warehouse.jobs_for(engine, list(self.document_ids))
        by_job = {row["job_id"]: sha for sha, row in ledger.items()}
        completed = []
        for job_id, outcome in event["jobs"].items():
            sha = by_job.get(job_id)
            if sha is None:
                self.log.warning("Ignoring job %s: not in this batch's ledger", job_id)
            elif outcome["status"] == "completed":
                completed.append((job_id, sha))
            else:
                warehouse.finish_job_failed(
                    engine, sha, outcome["status"], outcome.get("error") or "unknown error"
                )
                self.log.warning(
                    "Document %s: LeapOCR job %s %s: %s", sha[:12], job_id, outcome["status"], outcome
                )
        if completed:
            asyncio.run(self._store_results(engine, completed))
        if event["status"] != DONE:
            self.log.warning("Batch finished with status %s: %s", event["status"], event["message"])
        return list(self.document_ids)

    async def _store_results(self, engine: Any, completed: list[tuple[str, str]]) -> None:
        async with LeapOcrHook(self.leapocr_conn_id).get_client() as client:
            for job_id, sha in completed:
                pages, facts = await fetch_all_pages(client, job_id)
                warehouse.store_extraction(engine, sha, job_id, pages, merge_pages(pages), **facts)
                if self.delete_after_fetch:
                    await self._delete_remote(client, engine, job_id, sha)

    async def _delete_remote(self, client: LeapOCR, engine: Any, job_id: str, sha: str) -> None:
        """The result is stored, so the remote copy (an invoice with personal data) can go."""
        try:
            await client.ocr.delete_job(job_id)
        except APIError as exc:
            if exc.status_code != 404:
                self.log.warning("Could not delete LeapOCR job %s (kept remotely): %s", job_id, exc)
                return
        warehouse.mark_remote_deleted(engine, sha)
