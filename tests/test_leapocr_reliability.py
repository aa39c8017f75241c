"""200 documents through the extraction operator and triggers against a faulty LeapOCR server.

10% of API calls answer 429 (with Retry-After), 5% answer 5xx, 5% of jobs fail, and one trigger is killed mid-poll
and re-created from its serialized form (as after a triggerer restart). Every document must end in exactly one
terminal extraction state, the server must have seen each document's content exactly once, and no warehouse row
may be duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from airflow.sdk.exceptions import TaskDeferred

from invoiceflow import ingest, warehouse
from invoiceflow.leapocr.operators import LeapOcrExtractBatchOperator
from invoiceflow.leapocr.server import running_server
from invoiceflow.leapocr.triggers import LeapOcrJobsTrigger
from invoiceflow.samples import LANGS, LAYOUTS, generate_invoice

DOCS = 200
BATCH = 25
KEY = "reliability-key"


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for n in range(DOCS):
        data, _ = generate_invoice(1000 + n, LAYOUTS[n % len(LAYOUTS)], LANGS[n % len(LANGS)], n_items=2)
        (folder / f"doc-{n:03d}.pdf").write_bytes(data)
    return folder


async def run_triggers(triggers: list[LeapOcrJobsTrigger], engine: Any) -> list[dict[str, Any]]:
    """All triggers concurrently, as in the triggerer; the first is killed mid-poll and re-created."""

    async def first_event(trigger: LeapOcrJobsTrigger) -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    victim = triggers[0]
    _, kwargs = victim.serialize()
    ledger_before = len(recorded(engine, victim.queued))
    tasks = [asyncio.ensure_future(first_event(t)) for t in triggers]
    deadline = time.monotonic() + 60
    while len(recorded(engine, victim.queued)) <= ledger_before:  # it submitted some of its queue itself
        assert time.monotonic() < deadline, "the victim trigger never submitted a queued document"
        await asyncio.sleep(0.01)
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    tasks[0] = asyncio.ensure_future(first_event(LeapOcrJobsTrigger(**kwargs)))
    return list(await asyncio.gather(*tasks))


def recorded(engine: Any, shas: list[str]) -> dict[str, str]:
    rows = warehouse.jobs_for(engine, shas)
    return {
        sha: row["job_id"] for sha, row in rows.items() if row["status"] in warehouse.RECONNECTABLE_JOB_STATES
    }


def test_faulty_server_every_document_once_and_exactly_one_terminal_state(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    engine = warehouse.engine_for(f"sqlite:///{db}")
    warehouse.upgrade(engine)
    ingest.register_inbox(engine, inbox.as_uri())
    batches = ingest.plan_batches(engine, BATCH)
    assert sum(map(len, batches)) == DOCS

    faults = {"rate_429": 0.10, "retry_after": 0.05, "rate_5xx": 0.05, "fail_rate": 0.05, "seed": 2026}
    with running_server(api_key=KEY, workers=8, **faults) as base_url:
        connection = {
            "conn_type": "leapocr",
            "host": base_url,
            "password": KEY,
            "extra": {"max_jobs_in_flight": 16},
        }
        monkeypatch.setenv("AIRFLOW_CONN_LEAPOCR_DEFAULT", json.dumps(connection))
        operators = [
            LeapOcrExtractBatchOperator(
                task_id="extract_batch", document_ids=b, poll_interval=0.05, max_active_tis_per_dagrun=4
            )
            for b in batches
        ]
        triggers = []
        for op in operators:
            with pytest.raises(TaskDeferred) as deferred:
                op.execute({"run_id": "reliability"})
            triggers.append(deferred.value.trigger)
        assert triggers[0].queued, "the victim must still have documents to submit when it is killed"
        events = asyncio.run(run_triggers(triggers, engine))
        for op, event in zip(operators, events, strict=True):
            assert event["status"] == "done", event["message"]
            op.execute_complete({}, event)
        stats = httpx.get(
            base_url.removesuffix("/api/v1") + "/_admin/stats", headers={"X-API-KEY": KEY}
        ).json()

    with engine.connect() as conn:
        documents = conn.execute(
            sa.text("SELECT sha256, file_name, status, status_reason FROM documents")
        ).all()
        jobs = conn.execute(sa.text("SELECT document_sha256, job_id, status FROM extraction_jobs")).all()
        raw = conn.execute(sa.text("SELECT document_sha256 FROM raw_extraction_results")).all()

    statuses = Counter(d.status for d in documents)
    assert len(documents) == DOCS
    assert set(statuses) <= {"extracted", "failed"}, statuses
    assert statuses["failed"] == stats["faults"]["failed_jobs"] > 0
    assert all(d.status_reason for d in documents if d.status == "failed")
    assert all("simulated" in d.status_reason for d in documents if d.status == "failed")
    assert stats["faults"]["429"] > 0 and stats["faults"]["5xx"] > 0

    # The server saw each document's content exactly once: no retry, reconnect or restart submitted twice.
    by_content = stats["jobs_by_file_sha256"]
    expected = {hashlib.sha256((inbox / f"doc-{n:03d}.pdf").read_bytes()).hexdigest() for n in range(DOCS)}
    assert set(by_content) == expected
    assert set(by_content.values()) == {1}
    assert stats["jobs_submitted"] == DOCS

    # No warehouse row duplicated: one ledger row and at most one raw result per document.
    assert len(jobs) == len({j.document_sha256 for j in jobs}) == DOCS
    assert len({j.job_id for j in jobs}) == DOCS
    assert len(raw) == len({r.document_sha256 for r in raw}) == statuses["extracted"]
