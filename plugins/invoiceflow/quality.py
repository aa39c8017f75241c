"""Great Expectations checkpoint on the core warehouse tables, with Data Docs (HTML) in a configured folder.

How it runs: a GX SQL data source on the warehouse itself (``add_postgres`` / ``add_sqlite``, from the warehouse
engine's URL) with one table asset per core table (``invoices``, ``invoice_line_items``), one expectation suite and
one ``ValidationDefinition`` each, run together by one ``gx.Checkpoint`` whose ``UpdateDataDocsAction`` writes the
Data Docs into ``INVOICEFLOW_DATA_DOCS_DIR`` (default ``<state dir>/data_docs``). No table is read into Python: GX
compiles every expectation to SQL aggregates (counts of unexpected rows, ``GROUP BY ... HAVING`` for uniqueness) that
the database evaluates, and fetches at most a small sample of failing values, so the check scales with the
database, not with the worker's memory. The checks a built-in expectation cannot state on one table (they compare
tables or compute over columns) are ``UnexpectedRowsExpectation`` s: one SQL query each that returns the offending
rows, ``{batch}`` being the asset's table.

Expectations:

* not-null keys (content hash, review status, document type; line items' hash and line number);
* uniqueness: content hash, vendor + normalised number among live invoices (not a duplicate, not rejected; the
  partial unique index ``ux_invoices_vendor_number`` states the same), line numbers per invoice;
* review status in the known set;
* row counts: invoices never outnumber documents, and the live (not rejected) invoices are exactly as many as the
  documents in ``loaded`` or ``needs_review``: the load writes one invoice and sets one of those two states in the same
  transaction, and review moves a document to ``rejected`` exactly when it rejects its invoice. So an empty or partial
  load (documents marked loaded whose invoices are missing) fails, and so do invoices without a loaded document; an
  empty warehouse (nothing loaded yet) passes. Each count comparison is one SQL statement, so it reads one snapshot
  and a load committing meanwhile cannot make it fail;
* every line item belongs to an invoice (PostgreSQL has no foreign key there, migration 0012);
* totals consistency, with the validation tolerance (``INVOICEFLOW_TOTALS_TOLERANCE``, default 0.02): subtotal + tax =
  total for approved invoices (``auto_approved`` and ``approved``), and, for ``auto_approved`` ones, the line totals
  add up to the subtotal (or to the total when neither subtotal nor tax is printed), as
  :mod:`invoiceflow.validation` requires before it approves. A person may approve an invoice whose line items do not
  add up (the review corrects header fields only), so that check leaves person-approved invoices alone.

A failed expectation raises :class:`QualityCheckFailed` naming each one. GX is imported here, inside the task (it
takes about 2 s to import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from invoiceflow import config

SITE_NAME = "invoiceflow"
CHECKPOINT_NAME = "warehouse_quality"
#: Validation definition name -> table. Each gets its own suite ``core_<name>``.
TABLES = {"invoices": "invoices", "line_items": "invoice_line_items"}
REVIEW_STATUSES = ["auto_approved", "needs_review", "blocked", "approved", "rejected"]


class QualityCheckFailed(AirflowFailException):
    """At least one expectation failed; the message lists them. Fails the task without retries: the data won't
    change by trying again."""


def data_docs_dir() -> Path:
    return Path(os.environ.get("INVOICEFLOW_DATA_DOCS_DIR", config.state_dir() / "data_docs")).resolve()


def expectations(tolerance: float | None = None) -> dict[str, list[Any]]:
    """The expectations per validation definition (see :data:`TABLES`)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    tol = repr(float(config.totals_tolerance() if tolerance is None else tolerance))
    live = Column("duplicate_of").is_null() & (Column("review_status") != "rejected")
    return {
        "invoices": [
            gxe.ExpectColumnValuesToNotBeNull(column="document_sha256"),
            gxe.ExpectColumnValuesToNotBeNull(column="review_status"),
            gxe.ExpectColumnValuesToNotBeNull(column="document_type"),
            gxe.ExpectColumnValuesToBeUnique(column="document_sha256"),
            gxe.ExpectColumnValuesToBeInSet(column="review_status", value_set=REVIEW_STATUSES),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["vendor_key", "invoice_number_norm"],
                row_condition=live,
                ignore_row_if="any_value_is_missing",
                description="vendor + normalised invoice number unique among live invoices",
            ),
            gxe.UnexpectedRowsExpectation(
                description="invoices never outnumber documents",
                unexpected_rows_query=(
                    "SELECT i.n AS invoices, d.n AS documents "
                    "FROM (SELECT COUNT(*) AS n FROM {batch} b) i "
                    "CROSS JOIN (SELECT COUNT(*) AS n FROM documents) d WHERE i.n > d.n"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description="live invoice count equals loaded + needs_review document count",
                unexpected_rows_query=(
                    "SELECT i.n AS live_invoices, d.n AS loaded_or_needs_review_documents "
                    "FROM (SELECT COUNT(*) AS n FROM {batch} b WHERE b.review_status <> 'rejected') i "
                    "CROSS JOIN (SELECT COUNT(*) AS n FROM documents WHERE status IN ('loaded', 'needs_review')) d "
                    "WHERE i.n <> d.n"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description=f"totals consistent: subtotal + tax = total (within {tol}) for approved invoices",
                unexpected_rows_query=(
                    "SELECT document_sha256, subtotal, tax_amount, total_amount FROM {batch} "
                    "WHERE review_status IN ('auto_approved', 'approved') AND subtotal IS NOT NULL "
                    f"AND tax_amount IS NOT NULL AND total_amount IS NOT NULL "
                    f"AND ABS(subtotal + tax_amount - total_amount) > {tol}"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description=f"line totals consistent: they add up to the subtotal (within {tol}) "
                "for auto-approved invoices",
                unexpected_rows_query=(
                    "SELECT i.document_sha256, i.subtotal, i.total_amount, l.line_total_sum FROM {batch} i "
                    "JOIN (SELECT document_sha256, SUM(line_total) AS line_total_sum FROM invoice_line_items "
                    "WHERE line_total IS NOT NULL GROUP BY document_sha256) l "
                    "ON l.document_sha256 = i.document_sha256 WHERE i.review_status = 'auto_approved' AND ("
                    f"(i.subtotal IS NOT NULL AND ABS(l.line_total_sum - i.subtotal) > {tol}) OR "
                    "(i.subtotal IS NULL AND i.tax_amount IS NULL AND i.total_amount IS NOT NULL "
                    f"AND ABS(l.line_total_sum - i.total_amount) > {tol}))"
                ),
            ),
        ],
        "line_items": [
            gxe.ExpectColumnValuesToNotBeNull(column="document_sha256"),
            gxe.ExpectColumnValuesToNotBeNull(column="line_number"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["document_sha256", "line_number"]),
            gxe.UnexpectedRowsExpectation(
                description="every line item belongs to an invoice",
                unexpected_rows_query=(
                    "SELECT l.document_sha256, l.line_number FROM {batch} l "
                    "LEFT JOIN invoices i ON i.document_sha256 = l.document_sha256 "
                    "WHERE i.document_sha256 IS NULL"
                ),
            ),
        ],
    }


def _add_warehouse_source(context: Any, engine: Engine) -> Any:
    """A GX SQL data source on the warehouse (the same URL as ``engine``; GX builds its own SQLAlchemy engine)."""
    url = engine.url.render_as_string(hide_password=False)
    sources = context.data_sources
    if engine.dialect.name == "postgresql":
        return sources.add_postgres("warehouse", connection_string=url)
    if engine.dialect.name == "sqlite":
        return sources.add_sqlite("warehouse", connection_string=url)
    return sources.add_sql("warehouse", connection_string=url)


def _label(definition: str, result: Any) -> str:
    """``<definition>: <expectation type> <column(s)> (<description>): <what was found>``."""
    cfg = result.expectation_config
    columns = cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or ""
    label = f"{definition}: {cfg.type}"
    if columns:
        label += f" {columns}"
    if cfg.description:
        label += f" ({cfg.description})"
    found = result.result or {}
    info = result.exception_info or {}
    errors = [info] if "raised_exception" in info else [i for i in info.values() if isinstance(i, dict)]
    if raised := [e for e in errors if e.get("raised_exception")]:
        label += f": error {str(raised[0].get('exception_message')).splitlines()[0]}"
    elif found.get("unexpected_count") is not None:
        label += f": {found['unexpected_count']} unexpected"
    elif cfg.type == "unexpected_rows_expectation" and found.get("observed_value") is not None:
        label += f": {found['observed_value']} unexpected row(s)"
    elif found.get("observed_value") is not None:
        label += f": observed {found['observed_value']}"
    return label


def run_checkpoint(engine: Engine, docs_dir: Path | None = None) -> dict[str, Any]:
    """Validate the core tables through the checkpoint, which builds the Data Docs; raise
    :class:`QualityCheckFailed` when an expectation fails."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    docs_dir = docs_dir or data_docs_dir()
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        site_name=SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = _add_warehouse_source(context, engine)
    definitions = []
    for name, suite_expectations in expectations().items():
        asset = source.add_table_asset(name, table_name=TABLES[name])
        suite = context.suites.add(gx.ExpectationSuite(name=f"core_{name}", expectations=suite_expectations))
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(
                    name=name, data=asset.add_batch_definition_whole_table(name), suite=suite
                )
            )
        )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=CHECKPOINT_NAME,
            validation_definitions=definitions,
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])],
            result_format="SUMMARY",
        )
    )
    try:
        result = checkpoint.run()
    finally:  # no connection left open: GX made two engines (connection test, validation)
        source.get_engine().dispose()
        source.get_execution_engine().engine.dispose()
    runs = {r.suite_name: r for r in result.run_results.values()}
    by_name = {d.name: runs.get(d.suite.name) for d in definitions}
    failed = [
        _label(name, r)
        for name, suite_result in by_name.items()
        for r in (suite_result.results if suite_result else [])
        if not r.success
    ]
    summary = {
        "checkpoint": CHECKPOINT_NAME,
        "success": bool(result.success),
        "expectations": sum(len(r.results) for r in by_name.values() if r),
        "failed": len(failed),
        "data_docs": str(docs_dir / "index.html"),
    }
    if failed or not result.success:
        raise QualityCheckFailed(
            f"{len(failed)} expectation(s) failed (Data Docs: {summary['data_docs']}): {failed}"
        )
    return summary


__all__ = ["QualityCheckFailed", "data_docs_dir", "expectations", "run_checkpoint"]
