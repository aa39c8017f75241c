"""Benchmark the ingest DAG's extraction against the offline LeapOCR server.

Two runs on the same documents, each against a fresh server that takes ``--latency`` seconds per (one-page) job and
accepts at most ``--concurrency`` jobs at once (429 beyond):

* **deferrable**: the DAG's own ``extract_batch`` operator, configured as in ``dags/invoice_ingest.py``, over
  batches of ``--batch-size``. Tasks run in as many worker slots as the DAG allows (``max_active_tis_per_dagrun``);
  each submits, records and defers; the triggers run concurrently in one event loop, as in the triggerer; on each
  event the task resumes in a worker slot and stores the results.
* **blocking** (the seed-article approach): the same number of worker slots, each uploading one document and
  blocking on ``wait_until_done`` before taking the next.

The floor is ``docs × latency / concurrency``: the server cannot go faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from invoiceflow import config
from invoiceflow.bench import print_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=200, help="documents to extract (one page each)")
    parser.add_argument("--latency", type=float, default=2.0, help="seconds the server spends per job")
    parser.add_argument("--concurrency", type=int, default=20, help="jobs the server accepts at once")
    parser.add_argument("--batch-size", type=int, default=25, help="documents per mapped task (DAG param)")


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="invoiceflow-bench-extract-"))
    from invoiceflow.demo import airflow_environment

    os.environ.update({k: v for k, v in airflow_environment(workdir).items() if k not in os.environ})
    os.environ["INVOICEFLOW_HOME"] = str(workdir)
    (workdir / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)
    floor = args.docs * args.latency / args.concurrency
    print(f"generating {args.docs} one-page invoices in {workdir / 'inbox'}", flush=True)
    make_documents(workdir / "inbox", args.docs)
    settings = dag_settings()
    print(
        f"DAG settings: {settings['slots']} worker slots for extract_batch, poll interval {settings['poll_interval']}s",
        flush=True,
    )

    wall = run_deferrable(workdir, args, settings)
    print(f"deferrable (DAG operator + triggers): {wall:.1f}s", flush=True)
    blocking = run_blocking(workdir, args, settings["slots"])
    print(f"blocking wait_until_done in {settings['slots']} slots: {blocking:.1f}s", flush=True)
    print(f"floor docs x latency / concurrency: {floor:.1f}s")
    print_result(
        {
            "docs": args.docs,
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "slots": settings["slots"],
            "wall_s": round(wall, 2),
            "floor_s": round(floor, 2),
            "floor_ratio": round(wall / floor, 3),
            "blocking_wall_s": round(blocking, 2),
            "speedup_vs_blocking": round(blocking / wall, 2),
        }
    )
    return 0


def make_documents(inbox: Path, count: int) -> None:
    from invoiceflow.samples import LANGS, LAYOUTS, generate_invoice

    inbox.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        data, _ = generate_invoice(n, LAYOUTS[n % len(LAYOUTS)], LANGS[n % len(LANGS)], n_items=3)
        (inbox / f"bench-{n:05d}.pdf").write_bytes(data)


def dag_settings() -> dict[str, Any]:
    """How the DAG configures its extraction task, read from the DAG itself."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(config.PROJECT_ROOT / "dags"))
    task = bag.dags["invoice_ingest"].get_task("extract_batch")
    return {
        "slots": task.partial_kwargs.get("max_active_tis_per_dagrun") or 16,
        "poll_interval": task.partial_kwargs.get("poll_interval", 2.0),
        "max_poll_interval": task.partial_kwargs.get("max_poll_interval", 30.0),
    }


def start_server(stack: ExitStack, workdir: Path, args: argparse.Namespace, api_key: str) -> str:
    from invoiceflow.demo import background_service, free_port

    port = free_port()
    command = [
        sys.executable, "-m", "invoiceflow.cli", "leapocr-server", "--port", str(port), "--api-key", api_key,
        "--workers", str(args.concurrency), "--latency", str(args.latency),
        "--max-concurrent-jobs", str(args.concurrency),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1"
    stack.enter_context(
        background_service(command, f"{base}/health", workdir / "leapocr-server.log", dict(os.environ))
    )
    return base


def run_deferrable(workdir: Path, args: argparse.Namespace, settings: dict[str, Any]) -> float:
    from airflow.sdk.exceptions import TaskDeferred

    from invoiceflow import ingest, warehouse
    from invoiceflow.leapocr.operators import LeapOcrExtractBatchOperator

    api_key = secrets.token_urlsafe(16)
    with ExitStack() as stack:
        base = start_server(stack, workdir, args, api_key)
        connection = {"conn_type": "leapocr", "host": base, "password": api_key}
        connection["extra"] = {"max_jobs_in_flight": args.concurrency}
        os.environ["AIRFLOW_CONN_LEAPOCR_DEFAULT"] = json.dumps(connection)
        os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(
            {"conn_type": "sqlite", "host": str(workdir / "warehouse.db")}
        )
        engine = warehouse.get_engine()
        warehouse.upgrade(engine)
        ingest.register_inbox(engine, (workdir / "inbox").as_uri())
        batches = ingest.plan_batches(engine, args.batch_size)
        triggerer = Triggerer()
        done: queue.Queue[Any] = queue.Queue()

        def operator(batch: list[str]) -> LeapOcrExtractBatchOperator:
            return LeapOcrExtractBatchOperator(
                task_id="extract_batch",
                document_ids=batch,
                poll_interval=settings["poll_interval"],
                max_poll_interval=settings["max_poll_interval"],
                max_active_tis_per_dagrun=settings["slots"],
            )

        def start_task(batch: list[str]) -> None:
            try:
                operator(batch).execute({"run_id": "bench"})
                done.put((batch, None))
            except TaskDeferred as deferred:
                triggerer.submit(deferred.trigger).add_done_callback(
                    lambda f, b=batch: done.put((b, f.result()))
                )

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=settings["slots"]) as workers:
            for batch in batches:
                workers.submit(start_task, batch)
            resumed = [
                workers.submit(resume, operator(batch), event) for batch, event in _take(done, len(batches))
            ]
            for future in resumed:
                future.result()
        wall = time.perf_counter() - started
        triggerer.stop()
        statuses = warehouse.document_statuses(
            engine, warehouse.jobs_for(engine, [s for b in batches for s in b])
        )
        extracted = sum(1 for s in statuses.values() if s == warehouse.EXTRACTED)
        print(f"deferrable: {extracted}/{args.docs} documents extracted", flush=True)
        if extracted != args.docs:
            raise SystemExit(f"benchmark invalid: only {extracted} of {args.docs} documents were extracted")
    return wall


def _take(done: queue.Queue[Any], count: int) -> Any:
    for _ in range(count):
        yield done.get(timeout=3600)


def resume(op: Any, event: Any) -> None:
    if event is not None:
        op.execute_complete({}, event.payload)


class Triggerer:
    """One event loop in a thread running every trigger concurrently, like Airflow's triggerer."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, trigger: Any) -> Future[Any]:
        async def first_event() -> Any:
            async for event in trigger.run():
                return event
            raise RuntimeError("trigger ended without an event")

        return asyncio.run_coroutine_threadsafe(first_event(), self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def run_blocking(workdir: Path, args: argparse.Namespace, slots: int) -> float:
    """One document per worker slot at a time: upload, then block on ``wait_until_done``."""
    from leapocr import ClientConfig, Format, LeapOCR, ProcessOptions

    schema = json.loads((config.schema_dir() / "invoice.json").read_text())
    files = sorted((workdir / "inbox").glob("*.pdf"))
    api_key = secrets.token_urlsafe(16)
    with ExitStack() as stack:
        base = start_server(stack, workdir, args, api_key)

        def extract_one(path: Path) -> None:
            async def go() -> None:
                async with LeapOCR(api_key, ClientConfig(base_url=base)) as client:
                    job = await client.ocr.process_file(
                        path, ProcessOptions(format=Format.STRUCTURED, schema=schema)
                    )
                    await client.ocr.wait_until_done(job.job_id)

            asyncio.run(go())

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=slots) as pool:
            list(pool.map(extract_one, files))
        return time.perf_counter() - started
