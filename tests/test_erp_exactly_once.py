"""Exactly-once ERP sync (issue 6): 500 approved invoices through each sandbox dialect under injected faults.

Per mode, the sandbox answers ~5% of calls with 500/503 before writing and drops ~5% of write responses after
committing (the ambiguous case); the first relay pass is killed twice: once inside the connector right after the
ERP committed a batch (``KeyboardInterrupt``), once before a request left (``SystemExit``). The relay then runs
again, batches in parallel as the DAG maps them, until nothing is left. Then:

- the ledger holds exactly one bill per invoice, each carrying our marker, and nothing else (no duplicate, no loss);
- every outbox row is terminal (``posted``/``duplicate``) and its remote id is the ledger's id for that bill.

Rate limits run on a fake clock that the connectors' and the relay's sleeps advance, so nothing waits for real.
One more run goes through the real ``erp_sync`` DAG with ``dag.test()`` (Xero dialect, faults, after a kill).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from conftest import REPO, warehouse_connection_json

from invoiceflow import warehouse
from invoiceflow.counts import sum_counts
from invoiceflow.erp import relay
from invoiceflow.erp.sandbox import running_sandbox

N_INVOICES = 500
VENDORS = [f"Supplier {n:02d} Ltd" for n in range(25)]
ERROR_RATE = 0.05  # 5xx before any write
DROP_RATE = 0.05  # committed, then the connection drops
TERMINAL = {"posted", "duplicate", "rejected", "dead_letter"}


class FakeClock:
    """The sandbox's rate-limit clock; every sleep of the connector or the relay advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 10_000.0
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.slept += seconds


def make_invoices(n: int) -> list[warehouse.ValidatedInvoice]:
    invoices = []
    for i in range(n):
        net = 100 + (i * 37) % 900
        tax = round(net * 0.2, 2)
        header = {
            "invoice_number": f"EO-{i:05d}",
            "vendor_name": VENDORS[i % len(VENDORS)],
            "invoice_date": f"2026-0{1 + i % 9}-{1 + i % 28:02d}",
            "due_date": f"2026-0{1 + i % 9}-28",
            "currency": "EUR",
            "subtotal": float(net),
            "tax_amount": tax,
            "total_amount": round(net + tax, 2),
        }
        lines = [
            {
                "description": "Goods",
                "quantity": 1,
                "unit_price": float(net - 10),
                "line_total": float(net - 10),
            },
            {"description": "Freight", "quantity": 2, "unit_price": 5.0, "line_total": 10.0},
        ]
        invoices.append(warehouse.ValidatedInvoice(f"{i + 1:064x}", header, lines))
    return invoices


@pytest.fixture(scope="module")
def approved_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with 500 approved invoices, each loaded together with its outbox row (built once, copied)."""
    path = tmp_path_factory.mktemp("exactly-once") / "warehouse.db"
    engine = warehouse.engine_for(f"sqlite:///{path}")
    warehouse.upgrade(engine)
    invoices = make_invoices(N_INVOICES)
    warehouse.register_files(
        engine,
        [
            warehouse.SeenFile(f"file:///inbox/{i}.pdf", f"{i}.pdf", 10, None, inv.document_sha256, "pdf")
            for i, inv in enumerate(invoices)
        ],
    )
    assert warehouse.load_batch(engine, "exactly-once", invoices)["outbox"] == N_INVOICES
    engine.dispose()
    return path


@pytest.fixture
def engine(approved_db: Path, tmp_path: Path) -> Any:
    copy = tmp_path / "warehouse.db"
    shutil.copy(approved_db, copy)
    return warehouse.engine_for(f"sqlite:///{copy}")


def connection(mode: str, url: str, **extra: Any) -> Any:
    from airflow.sdk import Connection

    if mode == "sandbox":
        return Connection(conn_id="erp_default", conn_type="http", host=url)
    if mode == "xero":
        return Connection(
            conn_id="erp_default",
            conn_type="xero",
            host=url,
            login="cid",
            password="csecret",
            extra=json.dumps({"tenant_id": "tenant-1", **extra}),
        )
    return Connection(
        conn_id="erp_default",
        conn_type="quickbooks",
        host=url,
        login="cid",
        password="csecret",
        extra=json.dumps({"realm_id": "9130", "refresh_token": "rt-0", **extra}),
    )


def outbox(engine: Any) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT idempotency_key, status, remote_id, last_error, attempts, failures FROM erp_outbox"
        )
        return {r.idempotency_key: dict(r._mapping) for r in rows}


def ledger_bills(ledger: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute("SELECT reference, id, invoice_number FROM bills").fetchall()


def assert_exactly_once(engine: Any, ledger: Path) -> dict[str, int]:
    rows = outbox(engine)
    assert len(rows) == N_INVOICES
    not_terminal = {k: r["status"] for k, r in rows.items() if r["status"] not in TERMINAL}
    assert not not_terminal, f"rows left to relay: {not_terminal}"
    stuck = {
        k: (r["status"], r["last_error"])
        for k, r in rows.items()
        if r["status"] not in ("posted", "duplicate")
    }
    assert not stuck, f"valid invoices not posted: {stuck}"
    bills = ledger_bills(ledger)
    per_reference: dict[str, list[str]] = {}
    for reference, bill_id, _number in bills:
        per_reference.setdefault(reference, []).append(bill_id)
    duplicates = {ref: ids for ref, ids in per_reference.items() if len(ids) > 1}
    assert not duplicates, f"posted twice: {duplicates}"
    assert set(per_reference) == set(rows), "lost or foreign bills in the ledger"
    for key, row in rows.items():
        assert row["remote_id"] == per_reference[key][0], key
    statuses: dict[str, int] = {}
    for row in rows.values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return statuses


def killing(connector: Any, *, after_commit_on: int, before_send_on: int) -> Callable[..., Any]:
    """``post_bills`` that kills the worker on the n-th call after the ERP answered, and on another before sending."""
    real = connector.post_bills
    calls = {"n": 0}

    def post_bills(bills: list[dict], batch_key: str) -> Any:
        calls["n"] += 1
        if calls["n"] == before_send_on:
            raise SystemExit("worker killed before the request left")
        outcomes = real(bills, batch_key)
        if calls["n"] == after_commit_on:
            raise KeyboardInterrupt("worker killed after the ERP committed")
        return outcomes

    return post_bills


def relay_until_quiet(
    engine: Any, connector: Any, clock: FakeClock, rounds: int = 12
) -> list[dict[str, int]]:
    """What successive DAG runs do: plan, relay the batches in parallel (the DAG's concurrency), repeat."""
    results: list[dict[str, int]] = []
    for _ in range(rounds):
        batches = relay.plan_batches(engine, relay.batch_size(connector))
        if not batches:
            return results
        with ThreadPoolExecutor(relay.RELAY_CONCURRENCY) as pool:
            results.extend(
                pool.map(lambda b: relay.relay_batch(engine, connector, b, sleep=clock.sleep), batches)
            )
    raise AssertionError(
        f"outbox not drained after {rounds} rounds: {warehouse.outbox_status_counts(engine)}"
    )


@pytest.mark.parametrize("mode", ["sandbox", "xero", "quickbooks"])
def test_exactly_once_through_faults_and_a_killed_task(
    mode: str, engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches (the DAG's INVOICEFLOW_ERP_BATCH_SIZE cap) mean ~100 writes per mode, so a 10% fault rate
    # really hits both kinds of fault; the DAG test below runs with the connector's own batch size.
    monkeypatch.setenv("INVOICEFLOW_ERP_BATCH_SIZE", "5")
    clock = FakeClock()
    ledger = tmp_path / "erp.db"
    extra = {"throttle_wait": 60} if mode == "quickbooks" else {}
    with running_sandbox(
        ledger, mode=mode, seed=6, error_rate=ERROR_RATE, drop_rate=DROP_RATE, clock=clock
    ) as url:
        with relay.connector_for(connection(mode, url, **extra), sleep=clock.sleep) as connector:
            assert connector.max_batch == {"sandbox": 50, "xero": 50, "quickbooks": 30}[mode]
            size = relay.batch_size(connector)
            assert size == 5
            batches = relay.plan_batches(engine, size)
            assert sum(map(len, batches)) == N_INVOICES and max(map(len, batches)) == size

            # First pass: the task dies right after the ERP committed batch 2, and again before batch 4 left.
            kill = killing(connector, after_commit_on=2, before_send_on=4)
            with mock.patch.object(connector, "post_bills", side_effect=kill):
                for batch in batches[:1]:
                    relay.relay_batch(engine, connector, batch, sleep=clock.sleep)
                with pytest.raises(KeyboardInterrupt):
                    relay.relay_batch(engine, connector, batches[1], sleep=clock.sleep)
                relay.relay_batch(engine, connector, batches[2], sleep=clock.sleep)
                with pytest.raises(SystemExit):
                    relay.relay_batch(engine, connector, batches[3], sleep=clock.sleep)
            rows = outbox(engine)
            assert {rows[k]["status"] for k in batches[1]} == {"unknown"}  # sent, answer never stored
            assert {rows[k]["status"] for k in batches[3]} == {"unknown"}  # marked before the send
            committed = {b[0] for b in ledger_bills(ledger)}
            assert set(batches[1]) <= committed and not set(batches[3]) & committed

            results = relay_until_quiet(engine, connector, clock)
        faults = httpx.get(f"{url}/api/admin/stats").json()["faults"]
        print(
            f"{mode}: faults {faults}, fake time slept {clock.slept:.0f}s, relay outcomes {sum_counts(results)}"
        )
        assert faults["errors"] > 0 and faults["drops"] > 0  # both kinds of fault really happened

        with sqlite3.connect(ledger) as conn:
            injected = conn.execute("SELECT COUNT(*) FROM bills").fetchone()[0]
        assert injected == N_INVOICES
    statuses = assert_exactly_once(engine, ledger)
    assert statuses == {"posted": N_INVOICES}
    # The killed-after-commit batch was linked by read-back, not re-sent.
    assert sum(r.get("posted", 0) for r in results) >= len(batches[1])


def test_unknown_is_read_back_before_any_resend_and_dead_letter_after_failures(
    engine: Any, tmp_path: Path
) -> None:
    """An ERP that never answers: rows stay unknown (read back each round), then go to dead_letter, and an
    analyst's requeue reads back first, so the bill the ERP did store is linked, not posted again."""
    ledger = tmp_path / "erp.db"
    with (
        running_sandbox(ledger, drop_rate=1.0, seed=1) as url,
        relay.connector_for(connection("sandbox", url), sleep=lambda _s: None) as connector,
    ):
        (batch, *_) = relay.plan_batches(engine, 5)
        assert relay.relay_batch(engine, connector, batch, max_failures=3) == {"unknown": 5}
        assert relay.relay_batch(engine, connector, batch, max_failures=3) == {"posted": 5}
        assert relay.relay_batch(engine, connector, batch, max_failures=3) == {}
    assert {r["status"] for k, r in outbox(engine).items() if k in batch} == {"posted"}
    assert len(ledger_bills(ledger)) == 5  # dropped answers were read back, never re-posted

    with (
        running_sandbox(tmp_path / "erp2.db", error_rate=1.0, seed=1) as url,
        relay.connector_for(connection("sandbox", url), sleep=lambda _s: None) as connector,
    ):
        batch = relay.plan_batches(engine, 5)[0]
        counts = [relay.relay_batch(engine, connector, batch, max_failures=2) for _ in range(3)]
    rows = outbox(engine)
    assert {rows[k]["status"] for k in batch} == {"dead_letter"}, counts
    attention = {r["idempotency_key"]: r for r in warehouse.outbox_attention(engine)}
    assert set(batch) <= set(attention)
    assert all(attention[k]["last_error"] and attention[k]["invoice_number"] for k in batch)
    assert relay.plan_batches(engine, 500)[0][0] not in batch  # dead letters are not relayed again

    assert warehouse.requeue_outbox(engine, batch) == len(batch)
    with (
        running_sandbox(tmp_path / "erp2.db") as url,
        relay.connector_for(connection("sandbox", url), sleep=lambda _s: None) as connector,
    ):
        assert relay.relay_batch(engine, connector, batch) == {"posted": 5}
    assert len(ledger_bills(tmp_path / "erp2.db")) == 5


def test_rate_limit_leaves_rows_pending_and_backs_off(engine: Any) -> None:
    from invoiceflow.erp import ErpRateLimitedError

    class Limited:
        max_batch = 50

        def __init__(self) -> None:
            self.calls = 0

        def post_bills(self, bills: list[dict], batch_key: str) -> Any:
            self.calls += 1
            raise ErpRateLimitedError("429", retry_after=7.0, problem="minute")

        def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
            raise AssertionError("pending rows need no read-back")

    sleeps: list[float] = []
    batch = relay.plan_batches(engine, 50)[0]
    connector = Limited()
    assert relay.relay_batch(engine, connector, batch, sleep=sleeps.append, rate_limit_waits=2) == {
        "rate_limited": 50
    }
    assert sleeps == [7.0, 7.0] and connector.calls == 3
    rows = outbox(engine)
    assert {rows[k]["status"] for k in batch} == {"pending"}
    assert {rows[k]["failures"] for k in batch} == {0}


def test_changed_payload_is_dead_lettered_not_sent(engine: Any) -> None:
    key = relay.plan_batches(engine, 1)[0][0]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE erp_outbox SET payload = replace(payload, 'EO-', 'XX-') WHERE idempotency_key = ?", (key,)
        )
    connector = mock.Mock(max_batch=50)
    assert relay.relay_batch(engine, connector, [key]) == {"dead_letter": 1}
    connector.post_bills.assert_not_called()
    assert outbox(engine)[key]["status"] == "dead_letter"


# ---------------------------------------------------------------------------------------------------- the DAG


def test_erp_sync_dag_finishes_a_killed_run_exactly_once(
    airflow_db: None, engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    ledger = tmp_path / "erp.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", warehouse_connection_json(str(engine.url)))
    with running_sandbox(
        ledger, mode="xero", seed=61, error_rate=ERROR_RATE, drop_rate=DROP_RATE, time_scale=600
    ) as url:
        conn = connection("xero", url)
        monkeypatch.setenv(
            "AIRFLOW_CONN_ERP_DEFAULT",
            json.dumps(
                {
                    "conn_type": "xero",
                    "host": url,
                    "login": "cid",
                    "password": "csecret",
                    "extra": {"tenant_id": "tenant-1"},
                }
            ),
        )
        # A worker dies after the ERP committed its batch: the rows are unknown when the DAG runs.
        with relay.connector_for(conn) as connector:
            batch = relay.plan_batches(engine, relay.batch_size(connector))[0]
            kill = killing(connector, after_commit_on=1, before_send_on=0)
            with (
                mock.patch.object(connector, "post_bills", side_effect=kill),
                pytest.raises(KeyboardInterrupt),
            ):
                relay.relay_batch(engine, connector, batch)
        assert {outbox(engine)[k]["status"] for k in batch} == {"unknown"}

        dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("erp_sync")
        for _ in range(3):  # a DAG run per asset event; a retry-exhausted batch is picked up by the next one
            state = str(getattr(dag.test().state, "value", None))
            if not relay.plan_batches(engine, 50):
                break
        assert state == "success"
    assert assert_exactly_once(engine, ledger) == {"posted": N_INVOICES}
