"""Great Expectations checkpoint on the core warehouse tables, with Data Docs (HTML) in a configured folder.

Expectations: row counts (invoices never outnumber documents, every line item belongs to an invoice), not-null keys,
uniqueness (content hash, vendor + normalised number among live invoices, line numbers per invoice) and totals
consistency (subtotal + tax = total within the validation tolerance for approved invoices). GX is imported here,
inside the task (it takes about 2 s to import). Data Docs go to ``INVOICEFLOW_DATA_DOCS_DIR`` (default
``<state dir>/data_docs``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from invoiceflow import config


class QualityCheckFailed(AirflowFailException):
    """At least one expectation failed; the message lists them. Fails the task without retries: the data won't
    change by trying again."""


def data_docs_dir() -> Path:
    return Path(os.environ.get("INVOICEFLOW_DATA_DOCS_DIR", config.state_dir() / "data_docs")).resolve()


def frames(engine: Engine) -> dict[str, pd.DataFrame]:
    tolerance = float(os.environ.get("INVOICEFLOW_TOTALS_TOLERANCE", "0.02"))
    with engine.connect() as conn:
        invoices = pd.read_sql(
            sa.text(
                "SELECT document_sha256, vendor_key, invoice_number_norm, review_status, document_type, duplicate_of, "
                "subtotal, tax_amount, total_amount FROM invoices"
            ),
            conn,
        )
        lines = pd.read_sql(
            sa.text(
                "SELECT l.document_sha256, l.line_number, CASE WHEN i.document_sha256 IS NULL THEN 0 ELSE 1 END "
                "AS has_invoice FROM invoice_line_items l LEFT JOIN invoices i ON i.document_sha256 = l.document_sha256"
            ),
            conn,
        )
        documents = int(conn.execute(sa.text("SELECT COUNT(*) FROM documents")).scalar_one())
    for col in ("subtotal", "tax_amount", "total_amount"):
        invoices[col] = pd.to_numeric(invoices[col], errors="coerce")
    approved = invoices.review_status.isin(["auto_approved", "approved"])
    gap = (invoices.subtotal + invoices.tax_amount - invoices.total_amount).abs()
    invoices["totals_consistent"] = (~approved | gap.isna() | (gap <= tolerance)).astype(int)
    live = invoices[
        invoices.duplicate_of.isna()
        & (invoices.review_status != "rejected")
        & invoices.vendor_key.notna()
        & invoices.invoice_number_norm.notna()
    ][["vendor_key", "invoice_number_norm"]].reset_index(drop=True)
    return {"invoices": invoices, "line_items": lines, "live_invoices": live, "_documents": documents}  # type: ignore[dict-item]


def run_checkpoint(engine: Engine, docs_dir: Path | None = None) -> dict[str, Any]:
    """Validate the core tables, build Data Docs; raise :class:`QualityCheckFailed` when an expectation fails."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    docs_dir = docs_dir or data_docs_dir()
    docs_dir.mkdir(parents=True, exist_ok=True)
    data = frames(engine)
    documents = data.pop("_documents")
    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        site_name="invoiceflow",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("warehouse")
    suites = {
        "invoices": [
            gxe.ExpectTableRowCountToBeBetween(min_value=0, max_value=documents),
            gxe.ExpectColumnValuesToNotBeNull(column="document_sha256"),
            gxe.ExpectColumnValuesToNotBeNull(column="review_status"),
            gxe.ExpectColumnValuesToNotBeNull(column="document_type"),
            gxe.ExpectColumnValuesToBeUnique(column="document_sha256"),
            gxe.ExpectColumnValuesToBeInSet(
                column="review_status",
                value_set=["auto_approved", "needs_review", "blocked", "approved", "rejected"],
            ),
            gxe.ExpectColumnValuesToBeInSet(column="totals_consistent", value_set=[1]),
        ],
        "live_invoices": [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["vendor_key", "invoice_number_norm"])
        ],
        "line_items": [
            gxe.ExpectColumnValuesToNotBeNull(column="document_sha256"),
            gxe.ExpectColumnValuesToNotBeNull(column="line_number"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["document_sha256", "line_number"]),
            gxe.ExpectColumnValuesToBeInSet(column="has_invoice", value_set=[1]),
        ],
    }
    definitions = []
    for name, expectations in suites.items():
        asset = source.add_dataframe_asset(name)
        batch_definition = asset.add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"core_{name}", expectations=expectations))
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
            )
        )
    results = {}
    for definition in definitions:
        result = definition.run(batch_parameters={"dataframe": data[definition.name]})
        results[definition.name] = result
    context.build_data_docs()
    failed = [
        f"{name}: {r.expectation_config.type} {r.expectation_config.kwargs.get('column') or r.expectation_config.kwargs.get('column_list') or ''}"
        for name, result in results.items()
        for r in result.results
        if not r.success
    ]
    summary = {
        "expectations": sum(len(r.results) for r in results.values()),
        "failed": len(failed),
        "rows": {name: len(frame) for name, frame in data.items()},
        "data_docs": str(docs_dir / "index.html"),
    }
    if failed:
        raise QualityCheckFailed(
            f"{len(failed)} expectation(s) failed (Data Docs: {summary['data_docs']}): {failed}"
        )
    return summary


__all__ = ["QualityCheckFailed", "data_docs_dir", "frames", "run_checkpoint"]
