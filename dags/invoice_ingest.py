"""
### invoice_ingest

Picks up supplier invoices that landed in the inbox and loads them into the warehouse.

1. **register_new_files** lists the inbox (`INVOICEFLOW_INBOX`, any `ObjectStoragePath` URL), records each new file
   in `documents` by the sha256 of its content (seen content is never processed twice) and rejects empty, corrupt or
   unsupported files with the reason.
2. **plan_batches** cuts the open documents into batches (`batch_size` param), one mapped task per batch.
3. **extract_batch** submits a batch to LeapOCR (connection `leapocr_default`) up to the per-key in-flight cap,
   records each job id before deferring; the triggerer submits the rest as jobs finish and polls them all; on
   resume every result page is fetched, merged and stored, and the remote job deleted (param `keep_remote_jobs`).
   Params: `schema` (or per document type), `template_slug`, `model`, `instructions`, `credit_budget`.
4. **validate_and_load** validates with pandera and loads staging then core tables in one transaction.
5. **publish_invoices** emits the `invoiceflow://warehouse/invoices` asset that schedules `erp_sync`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from invoiceflow import config, ingest, warehouse
from invoiceflow.counts import sum_counts
from invoiceflow.leapocr.operators import LeapOcrExtractBatchOperator


@dag(
    dag_id="invoice_ingest",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["invoiceflow", "ingest", "leapocr"],
    default_args={"owner": "invoiceflow", "retries": 2, "retry_delay": timedelta(seconds=30)},
    render_template_as_native_obj=True,
    params={
        "batch_size": Param(
            25, type="integer", minimum=1, maximum=500, description="Documents per mapped task"
        ),
        "schema": Param(
            "invoice",
            type=["string", "object"],
            description='Schema in include/schemas/, or per document type: {"png": "receipt", "default": "invoice"}',
        ),
        "template_slug": Param(
            None, type=["null", "string"], description="A LeapOCR template instead of a schema"
        ),
        "model": Param(
            None, type=["null", "string"], enum=[None, "standard-v2", "pro-v2"], description="LeapOCR model"
        ),
        "instructions": Param(None, type=["null", "string"], maxLength=100, description="Extra instructions"),
        "credit_budget": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="Stop submitting once this run used that many credits",
        ),
        "keep_remote_jobs": Param(
            False, type="boolean", description="Keep LeapOCR jobs after fetching (retention)"
        ),
    },
)
def invoice_ingest() -> None:
    @task
    def register_new_files() -> dict[str, int]:
        engine = warehouse.get_engine()
        warehouse.upgrade(engine)
        return ingest.register_inbox(engine, config.inbox_url(), get_current_context()["run_id"])

    @task
    def plan_batches(registered: dict[str, int]) -> list[list[str]]:
        return ingest.plan_batches(warehouse.get_engine(), int(get_current_context()["params"]["batch_size"]))

    @task(max_active_tis_per_dagrun=8)
    def validate_and_load(document_ids: list[str]) -> dict[str, int]:
        return ingest.validate_and_load(warehouse.get_engine(), document_ids)

    @task(outlets=[Asset(name="invoices", uri=config.INVOICES_ASSET_URI)])
    def publish_invoices(loads: list[dict[str, int]]) -> dict[str, int]:
        return sum_counts(loads)

    batches = plan_batches(register_new_files())
    extracted = LeapOcrExtractBatchOperator.partial(
        task_id="extract_batch",
        schema="{{ params.schema }}",
        template_slug="{{ params.template_slug }}",
        model="{{ params.model }}",
        instructions="{{ params.instructions }}",
        credit_budget="{{ params.credit_budget }}",
        delete_remote_after_fetch="{{ not params.keep_remote_jobs }}",
        poll_interval=0.3,
        max_poll_interval=10.0,
        # Deferred tasks free their worker slot: few slots keep many jobs in flight (the cap is per API key).
        max_active_tis_per_dagrun=4,
    ).expand(document_ids=batches)
    publish_invoices(validate_and_load.expand(document_ids=extracted.output))


invoice_ingest()
