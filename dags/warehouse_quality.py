"""
### warehouse_quality

Runs a Great Expectations checkpoint on the core warehouse tables after each load (scheduled on the
`invoiceflow://warehouse/invoices` asset that `invoice_ingest` emits) and builds Data Docs (HTML) into
`INVOICEFLOW_DATA_DOCS_DIR` (default `<state dir>/data_docs`).

1. **checkpoint** runs a `gx.Checkpoint` over a GX SQL data source on the warehouse (table assets `invoices` and
   `invoice_line_items`; the database computes every check, no table is read into the worker) and its
   `UpdateDataDocsAction` writes the Data Docs. Checks: row counts (live invoices = documents `loaded` or
   `needs_review`, invoices never outnumber documents), not-null keys, uniqueness (content hash, vendor + normalised
   number among live invoices, line numbers), every line item belongs to an invoice, and totals consistency
   (subtotal + tax = total, line totals = subtotal). A failed expectation fails the task (red in the grid, no
   retries) with the failed expectations in the log and the Data Docs path. GX is imported inside the task (about
   2 s).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

from invoiceflow import config, warehouse


@dag(
    dag_id="warehouse_quality",
    schedule=[Asset(name="invoices", uri=config.INVOICES_ASSET_URI)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["invoiceflow", "quality", "great-expectations"],
    default_args={"owner": "invoiceflow", "retries": 2, "retry_delay": timedelta(seconds=30)},
)
def warehouse_quality() -> None:
    @task(retries=2)
    def checkpoint() -> dict:
        from invoiceflow import quality

        return quality.run_checkpoint(warehouse.get_engine())

    checkpoint()


warehouse_quality()
