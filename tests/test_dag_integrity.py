"""Every DAG file imports, and every DAG carries what operators need to run it (owner, retries, tags, docs)."""

from __future__ import annotations

import pytest
from conftest import REPO

DAG_IDS = {"invoice_ingest", "erp_sync", "invoice_review", "warehouse_quality"}


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_files_import_without_errors(bag) -> None:
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_has_owner_retries_tags_and_docs(bag, dag_id: str) -> None:
    dag = bag.dags.get(dag_id)
    assert dag.tags and "invoiceflow" in dag.tags
    assert dag.default_args["owner"] == "invoiceflow"
    assert dag.default_args["retries"] >= 2
    assert dag.doc_md and dag_id in dag.doc_md
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id


def test_erp_sync_is_scheduled_on_the_asset_the_ingest_dag_emits(bag) -> None:
    """erp_sync runs after a load and after a reviewer approved something (either asset)."""
    from invoiceflow import review

    ingest, sync = bag.dags.get("invoice_ingest"), bag.dags.get("erp_sync")
    emitted = {outlet.uri for task in ingest.tasks for outlet in task.outlets}
    scheduled = {asset.uri for asset in sync.timetable.asset_condition.objects}
    assert emitted == {"invoiceflow://warehouse/invoices"}
    assert scheduled == emitted | {review.APPROVED_ASSET_URI}
    assert type(sync.timetable.asset_condition).__name__ == "AssetAny"


def test_extraction_fans_out_over_batches_not_files(bag) -> None:
    task = bag.dags.get("invoice_ingest").get_task("extract_batch")
    assert type(task).__name__ == "MappedOperator"
    assert task.operator_class.__module__ == "invoiceflow.leapocr.operators"
