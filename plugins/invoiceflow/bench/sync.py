"""Benchmark the ERP sync DAG's relay against the sandbox with an ERP's rate limits, compressed in time.

``--invoices`` approved invoices are loaded into a fresh warehouse (each with its outbox row, as the ingest DAG
does). The sandbox runs as a child process in ``--mode`` (``xero``: 60 calls/minute and 5 concurrent per tenant,
50 bills per call; ``quickbooks``: 40 batch calls/minute, 30 bills per call) with its rate-limit windows divided by
``--time-scale`` (60: one scaled minute lasts one second). The relay runs exactly as the DAG runs it: the batches of
``plan_batches`` (the connector's ``max_batch``), each relayed by ``relay_batch`` with its own connector from the
``erp_default`` connection, in as many worker slots as the DAG allows the mapped task
(``max_active_tis_per_dagrun``), repeated until the outbox is drained (a later DAG run).

The ceiling is the ERP's limit: calls per minute x bills per call. Xero's pre-send duplicate check is off (the
outbox already dedupes, and the extra GET per batch would halve the ceiling). ``duplicates`` counts extra ledger
bills for one invoice, ``lost`` invoices without exactly one ledger bill or without a terminal posted state.

What is measured: the relay's *steady-state* throughput against a faithful limiter. Xero's minute limit is "60 calls
in a rolling 60 second window" (XeroAPI/xero-node#262 quoting developer.xero.com), which the sandbox implements as a
sliding window. On a fresh tenant that window lets the first 60 calls through at once, so 3000 invoices (exactly one
window's allowance) drained from cold would only measure our stack's raw speed, and a faster stack (or another time
scale) would report more than the ceiling. In the middle of a long sync the window is always full instead. So before
the clock starts the bench primes the tenant's window the way a sync running at the ceiling leaves it: one cheap
call (Xero ``GET /Contacts``; QuickBooks a one-item batch, which only its batch limit counts) every
``window / limit`` for one scaled minute. The clock starts at the last priming slot; from then on the k-th call of
the relay can be admitted no earlier than ``k x window / limit``, so ``bills_per_min`` can reach but never exceed
``ceiling_per_min`` (``ceiling_share`` <= 1 at any time scale, up to clock granularity) while the limiter is faithful,
and 429s are part of the run as they are in steady state. ``--no-prime`` measures from a cold window (raw stack speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from invoiceflow.bench import print_result

#: ERP limits per mode: (calls per minute, bills per call); the sandbox's defaults for that dialect.
LIMITS = {"xero": (60, 50), "quickbooks": (40, 30)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--invoices", type=int, default=3000, help="approved invoices to post")
    parser.add_argument(
        "--mode", choices=("xero", "quickbooks", "sandbox"), default="xero", help="ERP dialect"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="divide the ERP's rate-limit windows (60: a minute is 1 s)",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of calls answered 5xx before writing"
    )
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of writes committed, answer dropped"
    )
    parser.add_argument("--seed", type=int, default=6, help="seed of the sandbox's fault schedule")
    parser.add_argument(
        "--no-prime",
        dest="prime",
        action="store_false",
        help="start from a cold rate-limit window (measures raw stack speed, not steady state)",
    )


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="invoiceflow-bench-sync-"))
    from invoiceflow.demo import airflow_environment

    os.environ.update({k: v for k, v in airflow_environment(workdir).items() if k not in os.environ})
    os.environ["INVOICEFLOW_HOME"] = str(workdir)
    (workdir / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(
        {"conn_type": "sqlite", "host": str(workdir / "warehouse.db")}
    )

    from invoiceflow import warehouse

    engine = warehouse.get_engine()
    warehouse.upgrade(engine)
    print(f"loading {args.invoices} approved invoices into {workdir / 'warehouse.db'}", flush=True)
    load_invoices(engine, args.invoices)
    slots = dag_slots()
    calls_per_min, per_call = LIMITS.get(args.mode, (None, None))

    with ExitStack() as stack:
        url = start_sandbox(stack, workdir, args)
        os.environ["AIRFLOW_CONN_ERP_DEFAULT"] = json.dumps(connection(args, url))
        primed = prime_window(args, engine) if args.prime else None
        wall, runs, counts, max_batch = relay_all(engine, slots, primed["clock_start"] if primed else None)
        ledger = fetch_ledger(url)
        stats = fetch_stats(url)

    posted = sum(counts.get(s, 0) for s in ("posted", "duplicate"))
    scaled_minutes = wall * args.time_scale / 60.0
    bills_per_min = posted / scaled_minutes if scaled_minutes else 0.0
    ceiling = calls_per_min * min(per_call, max_batch) if calls_per_min else None
    duplicates, lost = check_ledger(engine, ledger)
    print(
        f"mode {args.mode}, time scale {args.time_scale:g}: {args.invoices} invoices in batches of {max_batch}, "
        f"{slots} worker slots (the DAG's relay_batch), {runs} DAG run(s)",
        flush=True,
    )
    if primed:
        print(
            f"rate-limit window primed with {primed['calls']} calls over one scaled minute "
            f"(limit remaining at the last one: {primed['remaining']}); clock starts at its last slot",
            flush=True,
        )
    print(f"relayed {posted} bills in {wall:.2f}s real = {scaled_minutes:.2f} scaled minutes", flush=True)
    print(f"outcomes {counts}; sandbox faults {stats}", flush=True)
    if ceiling:
        print(
            f"achieved {bills_per_min:.0f} bills/min vs ceiling {ceiling} bills/min "
            f"({calls_per_min} calls/min x {min(per_call, max_batch)} bills/call): "
            f"{bills_per_min / ceiling:.1%}",
            flush=True,
        )
    else:
        print(f"achieved {bills_per_min:.0f} bills/min (the native sandbox has no rate limit)", flush=True)
    print(f"ledger: {len(ledger)} bills, duplicates {duplicates}, lost {lost}", flush=True)
    print_result(
        {
            "mode": args.mode,
            "invoices": args.invoices,
            "time_scale": args.time_scale,
            "batch_size": max_batch,
            "slots": slots,
            "dag_runs": runs,
            "wall_s": round(wall, 3),
            "bills_per_min": round(bills_per_min, 1),
            "ceiling_per_min": ceiling,
            "ceiling_share": round(bills_per_min / ceiling, 3) if ceiling else None,
            "measurement": "steady-state (primed window)" if primed else "cold window (raw stack speed)",
            "prime_calls": primed["calls"] if primed else 0,
            "duplicates": duplicates,
            "lost": lost,
            "outcomes": counts,
            "faults": stats,
        }
    )
    return 0 if duplicates == 0 and lost == 0 else 1


def load_invoices(engine: Any, count: int, chunk: int = 500) -> None:
    """Approved invoices, loaded like the ingest DAG loads them (each with its outbox row, one transaction)."""
    from invoiceflow import warehouse

    vendors = [f"Bench Supplier {n:02d}" for n in range(40)]
    for start in range(0, count, chunk):
        invoices = []
        for i in range(start, min(count, start + chunk)):
            net = 100 + (i * 37) % 900
            tax = round(net * 0.2, 2)
            header = {
                "invoice_number": f"BENCH-{i:06d}",
                "vendor_name": vendors[i % len(vendors)],
                "invoice_date": f"2026-0{1 + i % 9}-{1 + i % 28:02d}",
                "due_date": f"2026-0{1 + i % 9}-28",
                "currency": "EUR",
                "subtotal": float(net),
                "tax_amount": tax,
                "total_amount": round(net + tax, 2),
            }
            lines = [
                {"description": "Goods", "quantity": 1, "unit_price": float(net), "line_total": float(net)}
            ]
            invoices.append(warehouse.ValidatedInvoice(f"{i + 1:064x}", header, lines))
        warehouse.register_files(
            engine,
            [
                warehouse.SeenFile(f"file:///bench/{inv.document_sha256[-8:]}.pdf", "x.pdf", 1, None,
                                   inv.document_sha256, "pdf")
                for inv in invoices
            ],
        )  # fmt: skip
        warehouse.load_batch(engine, f"bench-{start}", invoices)


def dag_slots() -> int:
    """How many ``relay_batch`` tasks the DAG runs at once, read from the DAG itself."""
    from airflow.dag_processing.dagbag import DagBag

    from invoiceflow import config

    bag = DagBag(dag_folder=str(config.PROJECT_ROOT / "dags"))
    task = bag.dags["erp_sync"].get_task("relay_batch")
    return int(task.partial_kwargs.get("max_active_tis_per_dagrun") or 16)


def start_sandbox(stack: ExitStack, workdir: Path, args: argparse.Namespace) -> str:
    from invoiceflow.demo import background_service, free_port

    port = free_port()
    command = [
        sys.executable, "-m", "invoiceflow.cli", "erp-sandbox", "--port", str(port),
        "--db", str(workdir / "erp_ledger.db"), "--mode", args.mode, "--time-scale", str(args.time_scale),
        "--seed", str(args.seed), "--error-rate", str(args.error_rate), "--drop-rate", str(args.drop_rate),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    stack.enter_context(
        background_service(command, f"{url}/health", workdir / "erp-sandbox.log", dict(os.environ))
    )
    return url


def connection(args: argparse.Namespace, url: str) -> dict[str, Any]:
    if args.mode == "xero":
        extra = {"tenant_id": "bench-tenant", "precheck_duplicates": False}
        return {"conn_type": "xero", "host": url, "login": "bench", "password": "bench", "extra": extra}
    if args.mode == "quickbooks":
        extra = {
            "realm_id": "4620",
            "refresh_token": "bench-rt",
            "throttle_wait": 60.0 / args.time_scale,
            "batch_calls_per_minute": LIMITS["quickbooks"][0] * args.time_scale,
        }
        return {"conn_type": "quickbooks", "host": url, "login": "bench", "password": "bench", "extra": extra}
    return {"conn_type": "http", "host": url}


def prime_window(args: argparse.Namespace, engine: Any) -> dict[str, Any] | None:
    """Fill the tenant's rolling window as a sync running at the ceiling leaves it (see the module docstring).

    Call j (1..limit) is sent no earlier than ``start + j x window / limit``; the returned ``clock_start`` is the
    last slot, ``start + window``. Calls that arrive late only make the relay's limit stricter, never looser. A
    paced connector (QuickBooks) takes the priming calls' slots from the warehouse pacer, as its relay would have.
    """
    if args.mode not in LIMITS:
        return None
    from airflow.sdk import BaseHook

    from invoiceflow import config
    from invoiceflow.erp import pacing, relay

    limit = LIMITS[args.mode][0]
    window = 60.0 / args.time_scale
    with relay.connector_for(BaseHook.get_connection(config.ERP_CONN_ID)) as c:
        if args.mode == "xero":
            c.tokens.token()

            def call() -> Any:
                return c._request("GET", "/api.xro/2.0/Contacts")

        else:
            if c.tokens is not None:
                c.tokens.token()
            body = json.dumps({"BatchItemRequest": [{"bId": "1", "Query": "select count(*) from Bill"}]})

            def call() -> Any:
                return c._request(
                    "POST", f"{c._path}/batch", content=body, headers={"Content-Type": "application/json"}
                )

        pace = pacing.call_pace(c)
        start = time.perf_counter()
        remaining = None
        for j in range(1, limit + 1):
            if pace:  # a paced connector's sync leaves its slots taken too: take them like the relay does
                delay = pacing.take_call_slot(engine, *pace) - time.time()
            else:
                delay = start + j * window / limit - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            last_slot = time.perf_counter()
            while (response := call()).status_code == 429:
                time.sleep(float(response.headers.get("retry-after") or window / limit))
            remaining = response.headers.get("x-minlimit-remaining", remaining)
    return {"clock_start": last_slot if pace else start + window, "calls": limit, "remaining": remaining}


def relay_all(
    engine: Any, slots: int, clock_start: float | None = None
) -> tuple[float, int, dict[str, int], int]:
    """DAG runs until the outbox is drained: plan, then each batch in a worker slot with its own connector.

    The wall time counts from ``clock_start`` (the primed window's last slot) when given, else from now."""
    from airflow.sdk import BaseHook

    from invoiceflow import config
    from invoiceflow.erp import relay

    def connector() -> Any:
        return relay.connector_for(BaseHook.get_connection(config.ERP_CONN_ID))

    def relay_batch(keys: list[str]) -> dict[str, int]:
        with connector() as c:
            return relay.relay_batch(engine, c, keys)

    totals: dict[str, int] = {}
    runs = 0
    started = time.perf_counter() if clock_start is None else min(clock_start, time.perf_counter())
    with connector() as c:
        max_batch = relay.batch_size(c)
    for runs in range(1, 6):
        with connector() as c:
            batches = relay.plan_batches(engine, relay.batch_size(c))
        if not batches:
            runs -= 1
            break
        with ThreadPoolExecutor(max_workers=slots) as pool:
            for counts in pool.map(relay_batch, batches):
                for key, n in counts.items():
                    totals[key] = totals.get(key, 0) + n
    return time.perf_counter() - started, runs, totals, max_batch


def fetch_ledger(url: str) -> list[dict[str, Any]]:
    import httpx

    return httpx.get(f"{url}/api/admin/ledger", timeout=60).json()["bills"]


def fetch_stats(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/api/admin/stats", timeout=10).json().get("faults", {})


def check_ledger(engine: Any, ledger: list[dict[str, Any]]) -> tuple[int, int]:
    """(extra ledger bills for an invoice, invoices not posted exactly once)."""
    per_ref: dict[str, int] = {}
    for bill in ledger:
        per_ref[bill.get("reference")] = per_ref.get(bill.get("reference"), 0) + 1
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT idempotency_key, status FROM erp_outbox").fetchall()
    duplicates = sum(n - 1 for n in per_ref.values() if n > 1)
    lost = sum(1 for key, status in rows if status not in ("posted", "duplicate") or per_ref.get(key, 0) == 0)
    return duplicates, lost
