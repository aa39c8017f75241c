"""
### erp_sync

Posts approved invoices to the ERP, exactly once. Scheduled on the `invoiceflow://warehouse/invoices` asset that
`invoice_ingest` emits after a load.

1. **plan_batches** reads `erp_outbox` rows still to relay (`pending`, or `unknown` after a lost answer) in batches
   of at most 50.
2. **relay_batch** reads back `unknown` rows from the ERP first, marks the rest in flight, posts them with an
   idempotency key and stores each item's outcome (`posted`, `duplicate`, `rejected`, `unknown`).
   ERP connection: `erp_default` (base URL in host, token in password).
3. **summarize** logs the counts per outcome.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, BaseHook, dag, task

from invoiceflow import config, warehouse
from invoiceflow.counts import sum_counts
from invoiceflow.erp import relay


@dag(
    dag_id="erp_sync",
    schedule=[Asset(name="invoices", uri=config.INVOICES_ASSET_URI)],
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
        return relay.plan_batches(warehouse.get_engine(), config.erp_batch_size())

    @task(max_active_tis_per_dagrun=4)
    def relay_batch(keys: list[str]) -> dict[str, int]:
        with relay.client_from_connection(BaseHook.get_connection(config.ERP_CONN_ID)) as client:
            return relay.relay_batch(warehouse.get_engine(), client, keys)

    @task
    def summarize(results: list[dict[str, int]]) -> dict[str, int]:
        return sum_counts(results)

    summarize(relay_batch.expand(keys=plan_batches()))


erp_sync()
