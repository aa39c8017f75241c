"""The ``invoice_review`` DAG run with ``dag.test()``, a person answering its Human-in-the-loop requests.

On Airflow 3.3 ``HITLOperator`` parks each mapped ``review_invoice`` task in ``awaiting_input`` (no trigger), and
``dag.test()`` keeps the run alive until a response recorded from outside flips it back to ``scheduled``. The test runs
``dag.test()`` and answers from a second thread through the Core API's own handler (``PATCH
.../taskInstances/{task_id}/{map_index}/hitlDetails``: it stores the response and resumes the task), called directly
with the metadata-database session, as the api-server would. The reviewer picks the decision from the request's
subject, as a person in Required Actions would. The decisions must end in the warehouse: approved → ``approved`` with
an ERP outbox row and an ``approved_invoices`` asset event (``erp_sync`` is scheduled on it); rejected → ``rejected``
(document too), reason stored, nothing sent. A request nobody answers is timed out by the scheduler's own sweep
(``check_awaiting_input_timeouts``): it resolves to **Keep pending**, the run succeeds and nothing changes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO, warehouse_connection_json

from invoiceflow import review, validation, warehouse

APPROVE, REJECT = "a" * 64, "b" * 64
TIMEOUT = 60


@pytest.fixture(scope="module")
def review_dag(airflow_db: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    return bag.get_dag("invoice_review")


@pytest.fixture(params=["sqlite", "postgres"])
def engine(
    request: pytest.FixtureRequest, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> sa.Engine:
    """Two invoices validation sent to review (their totals don't add up), loaded as the ingest DAG loads them."""
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", warehouse_connection_json(url))
    engine = warehouse.engine_for(url)
    warehouse.upgrade(engine)
    base = {
        "vendor_name": "ACME GmbH",
        "invoice_date": "2026-03-01",
        "currency": "EUR",
        "subtotal": 100.0,
        "tax_amount": 19.0,
        "total_amount": 129.0,
        "line_items": [{"description": "widgets", "quantity": 1, "unit_price": 100.0, "line_total": 100.0}],
    }
    docs = {
        APPROVE: {**base, "invoice_number": "INV-APPROVE"},
        REJECT: {**base, "invoice_number": "INV-REJECT", "invoice_date": "2026-03-09", "subtotal": 50.0},
    }
    warehouse.register_files(
        engine, [warehouse.SeenFile(f"inbox/{s[:3]}.pdf", s, 1, None, s, "pdf") for s in docs]
    )
    warehouse.load_batch(engine, "batch-1", validation.validate(docs))
    assert {r["document_sha256"]: r["review_status"] for r in review.pending(engine)} == {
        APPROVE: "needs_review",
        REJECT: "needs_review",
    }
    return engine


def awaiting_input(dag_id: str) -> list[Any]:
    """Mapped HITL task instances of the running test run that wait for a person, with their request."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy.orm import joinedload

    with create_session() as session:
        rows = session.scalars(
            sa.select(TaskInstance)
            .join(DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id))
            .where(
                TaskInstance.dag_id == dag_id,
                DagRun.state == DagRunState.RUNNING,
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
            )
            .options(joinedload(TaskInstance.hitl_detail))
        ).all()
        return [
            (ti.run_id, ti.task_id, ti.map_index, ti.hitl_detail.subject) for ti in rows if ti.hitl_detail
        ]


def respond(
    dag_id: str, run_id: str, task_id: str, map_index: int, option: str, params: dict[str, Any]
) -> None:
    """Answer a request through the Core API handler the Required Actions page calls."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.utils.session import create_session

    with create_session() as session:
        update_hitl_detail(
            dag_id=dag_id,
            dag_run_id=run_id,
            task_id=task_id,
            map_index=map_index,
            update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option], params_input=params),
            user=SimpleAuthManagerUser(username="alice", role="admin"),
            session=session,
        )


def time_out_waiting_tasks(dag_id: str) -> None:
    """What the scheduler does once ``response_timeout`` has passed: its AWAITING_INPUT timeout sweep, run on the
    waiting tasks with their deadline moved to the past."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        session.execute(
            sa.update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
            .values(trigger_timeout=datetime.now(UTC) - timedelta(seconds=1))
        )
    SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("timeout-sweep")))


def fail_waiting_tasks(dag_id: str) -> None:
    """Let a stuck ``dag.test()`` loop end: it runs until no task of its run is left unfinished."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        session.execute(
            sa.update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
            .values(state=TaskInstanceState.FAILED)
        )


def run_with_reviewer(dag: Any, decide: Any) -> tuple[Any, list[str]]:
    """``dag.test()`` (main thread: the task runner installs signal handlers); a reviewer thread answers each request
    with ``decide(subject)`` (``None``: no answer, the request times out); on an error or past the deadline it fails
    the waiting tasks, so ``dag.test()`` ends."""
    answered: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reviewer() -> None:
        deadline = time.monotonic() + TIMEOUT
        try:
            while not done.wait(0.5):
                if time.monotonic() > deadline:
                    errors.append(TimeoutError(f"dag.test() still running after {TIMEOUT}s"))
                    break
                unanswered = False
                for run_id, task_id, map_index, subject in awaiting_input(dag.dag_id):
                    answer = decide(subject)
                    if answer is None:
                        unanswered = True
                        continue
                    respond(dag.dag_id, run_id, task_id, map_index, *answer)
                    answered.append(subject)
                if unanswered:
                    time_out_waiting_tasks(dag.dag_id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        while errors and not done.wait(0.5):  # tasks may come back (retries): fail them until dag.test() ends
            fail_waiting_tasks(dag.dag_id)

    thread = threading.Thread(target=reviewer, name="reviewer", daemon=True)
    thread.start()
    try:
        dag_run = dag.test()
    finally:
        done.set()
        thread.join(10)
    assert not errors, errors
    return dag_run, answered


def form(**values: Any) -> dict[str, Any]:
    """The review form as the UI submits it: every field, the untouched ones empty."""
    return {**dict.fromkeys([*warehouse.HEADER_COLUMNS, "comment"]), **values}


def decide(subject: str) -> tuple[str, dict[str, Any]]:
    if "INV-APPROVE" in subject:
        return "Approve", form(total_amount=119.0, comment="total mistyped on the scan")
    assert "INV-REJECT" in subject, subject
    return "Reject", form(comment="sent twice by the supplier")


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def asset_events(run_id: str, uri: str) -> list[dict[str, Any]]:
    """The asset events a run emitted for ``uri``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.execute(
            sa.select(AssetEvent.source_task_id, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_run_id == run_id, AssetModel.uri == uri)
        ).all()
        return [{"task_id": task_id, "extra": extra} for task_id, extra in found]


def xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        value = session.scalars(
            sa.select(XComModel.value).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).one()
        return XComModel.deserialize_value(SimpleNamespace(value=value))


def test_approve_and_reject_decisions_flow_through_the_dag_into_the_warehouse(
    review_dag: Any, engine: sa.Engine
) -> None:
    dag_run, answered = run_with_reviewer(review_dag, decide)

    assert str(getattr(dag_run.state, "value", dag_run.state)) == "success"
    assert len(answered) == 2 and {"INV-APPROVE", "INV-REJECT"} == {s.split()[-1] for s in answered}
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
    assert states == {
        ("plan_reviews", -1): "success",
        ("review_invoice", 0): "success",
        ("review_invoice", 1): "success",
        ("apply_decision", 0): "success",
        ("apply_decision", 1): "success",
    }

    invoices = {
        r["document_sha256"]: r
        for r in rows(
            engine, "SELECT document_sha256, review_status, reviewed_by, total_amount FROM invoices"
        )
    }
    documents = {r["sha256"]: r for r in rows(engine, "SELECT sha256, status, status_reason FROM documents")}

    # Approved, with the reviewer's correction stored as version 2: ERP outbox row carries the corrected total.
    approved = invoices[APPROVE]
    assert approved["review_status"] == "approved" and approved["reviewed_by"] == "alice"
    assert float(approved["total_amount"]) == 119.0
    assert documents[APPROVE]["status"] == "loaded"
    (outbox,) = rows(engine, "SELECT document_sha256, status, payload FROM erp_outbox")
    assert outbox["document_sha256"] == APPROVE and outbox["status"] == "pending"
    payload = json.loads(outbox["payload"])
    assert payload["invoice_number"] == "INV-APPROVE" and payload["total_amount"] == 119.0
    versions = rows(
        engine,
        "SELECT version, action, changed_by, changes, comment FROM invoice_versions WHERE document_sha256 = :s "
        "ORDER BY version, changed_at",
        s=APPROVE,
    )
    assert [(v["version"], v["action"], v["changed_by"]) for v in versions] == [
        (1, "loaded", "pipeline"),
        (2, "corrected", "alice"),
        (2, "approved", "alice"),
    ]
    assert json.loads(versions[1]["changes"]) == {"total_amount": [129.0, 119.0]}
    assert versions[1]["comment"] == "total mistyped on the scan"

    # Rejected: terminal, reason stored on the version and the document, never sent to the ERP.
    assert invoices[REJECT]["review_status"] == "rejected" and invoices[REJECT]["reviewed_by"] == "alice"
    assert documents[REJECT]["status"] == "rejected"
    assert documents[REJECT]["status_reason"] == "rejected by alice: sent twice by the supplier"
    (rejected,) = rows(
        engine,
        "SELECT action, changed_by, comment FROM invoice_versions WHERE document_sha256 = :s AND action = 'rejected'",
        s=REJECT,
    )
    assert rejected == {"action": "rejected", "changed_by": "alice", "comment": "sent twice by the supplier"}
    assert review.pending(engine) == []

    # The approval emitted the asset erp_sync is scheduled on (once: the rejection emitted nothing).
    assert asset_events(dag_run.run_id, review.APPROVED_ASSET_URI) == [
        {"task_id": "apply_decision", "extra": {"document_sha256": APPROVE}}
    ]
    # XCom carries document hashes, not invoice texts; the request was read from the warehouse.
    assert sorted(xcom(dag_run, "plan_reviews")) == [APPROVE, REJECT]


def test_unanswered_requests_time_out_to_keep_pending_and_the_run_succeeds(
    review_dag: Any, engine: sa.Engine
) -> None:
    dag_run, answered = run_with_reviewer(review_dag, lambda subject: None)

    assert answered == []
    assert str(getattr(dag_run.state, "value", dag_run.state)) == "success"
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
    assert set(states.values()) == {"success"} and len(states) == 5
    assert {r["document_sha256"]: r["review_status"] for r in review.pending(engine)} == {
        APPROVE: "needs_review",
        REJECT: "needs_review",
    }
    assert rows(engine, "SELECT * FROM invoice_versions") == []
    assert rows(engine, "SELECT * FROM erp_outbox") == []
    assert asset_events(dag_run.run_id, review.APPROVED_ASSET_URI) == []


def test_schedule_matches_the_docs_and_approvals_schedule_erp_sync(review_dag: Any) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetAlias, AssetOrTimeSchedule, CronTriggerTimetable

    # asset-or-hourly, as the docs say
    timetable = review_dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert isinstance(timetable.timetable, CronTriggerTimetable)
    assert timetable.timetable.expression == "0 * * * *"
    assert timetable.asset_condition.uri == "invoiceflow://warehouse/invoices"
    assert "hourly" in review_dag.doc_md and "Keep pending" in review_dag.doc_md
    review_task = review_dag.get_task("review_invoice")
    assert review_task.partial_kwargs["defaults"] == review.KEEP_PENDING
    assert review.KEEP_PENDING in review_task.partial_kwargs["options"]
    # the task applying decisions emits approvals through an alias; erp_sync runs on either asset
    (alias,) = review_dag.get_task("apply_decision").outlets
    assert isinstance(alias, AssetAlias)
    sync = DagBag(dag_folder=str(REPO / "dags")).get_dag("erp_sync")
    scheduled = {asset.uri for asset in sync.timetable.asset_condition.objects}
    assert scheduled == {"invoiceflow://warehouse/invoices", review.APPROVED_ASSET_URI}
    assert type(sync.timetable.asset_condition).__name__ == "AssetAny"
