"""
### erp_sync

Posts approved invoices to the ERP, exactly once. Scheduled on either asset: `invoiceflow://warehouse/invoices`
(`invoice_ingest` emits it after a load: auto-approved invoices) or `invoiceflow://warehouse/approved_invoices`
(`invoice_review` emits it when a person approved invoices), so approvals are posted without waiting for a load.

ERP connection: `erp_default`, any kind `connector_from_connection` knows (native sandbox, Xero, QuickBooks Online,
Tryton, webhook, file export: see `invoiceflow/erp/connectors.py` for the fields).

1. **plan_batches** reads `erp_outbox` rows still to relay (`pending`, or `unknown` after a lost answer) in batches
   of the connector's `max_batch` (Xero 50, QuickBooks 30; `INVOICEFLOW_ERP_BATCH_SIZE` caps it).
2. **relay_batch** (mapped, at most 5 at once per run: Xero's concurrent calls per tenant) reads back `unknown`
   rows from the ERP first, marks the rest in flight, posts them with an idempotency key and stores each item's
   outcome: `posted` (remote id), `duplicate` (the ERP already had it: linked), `rejected` (the ERP's reason),
   `unknown` (no answer: read back next time).
   A rate limit leaves rows `pending` and backs off (the task fails and Airflow retries it later if the limit
   persists). After 5 failures a row goes to `dead_letter`; analysts see rejected and dead-lettered invoices in
   the `erp_outbox_attention` view.
3. **summarize** logs the counts per outcome.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, BaseHook, dag, task

from invoiceflow import config, warehouse
from invoiceflow.counts import sum_counts
from invoiceflow.erp import relay


def _connector():
    return relay.connector_for(BaseHook.get_connection(config.ERP_CONN_ID))


@dag(
    dag_id="erp_sync",
    # either asset; the second is review.APPROVED_ASSET_URI, which invoice_review emits on approvals
    schedule=(
        Asset(name="invoices", uri=config.INVOICES_ASSET_URI)
        | Asset(name="approved_invoices", uri="invoiceflow://warehouse/approved_invoices")
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["invoiceflow", "erp"],
    default_args={"owner": "invoiceflow", "retries": 2, "retry_delay": timedelta(seconds=30)},
)
def erp_sync() -> None:
    @task
    def plan_batches() -> list[list[str]]:
        with _connector() as connector:
            return relay.plan_batches(warehouse.get_engine(), relay.batch_size(connector))

    @task(max_active_tis_per_dagrun=relay.RELAY_CONCURRENCY)
    def relay_batch(keys: list[str]) -> dict[str, int]:
        with _connector() as connector:
            counts = relay.relay_batch(warehouse.get_engine(), connector, keys)
        if counts.get("rate_limited"):
            # The rows are pending again (nothing was applied): let Airflow retry the task after retry_delay.
            raise RuntimeError(f"ERP rate limit: {counts['rate_limited']} bills left pending, retrying later")
        return counts

    @task
    def summarize(results: list[dict[str, int]]) -> dict[str, int]:
        return sum_counts(results)

    summarize(relay_batch.expand(keys=plan_batches()))


erp_sync()
