"""``make demo``: the whole pipeline on the bundled samples, offline, with no API key and no database server.

Starts the offline LeapOCR server and the ERP sandbox on loopback, drops the samples into the inbox, runs
``invoice_ingest`` then ``erp_sync`` with ``dag.test()``, stops what it started and prints one row per document.
All state lives in ``.invoiceflow/``; a second run finds nothing new, adds no rows and posts no bills.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from invoiceflow import config


def airflow_environment(state: Path) -> dict[str, str]:
    """The Airflow settings of the embedded default (must be in the environment before Airflow is imported)."""
    return {
        "AIRFLOW_HOME": str(state / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(state / "airflow" / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "INVOICEFLOW_HOME": str(state),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it was healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")


@contextlib.contextmanager
def background_service(
    args: list[str], health_url: str, log_file: Path, env: dict[str, str]
) -> Iterator[None]:
    """Run one of our servers as a child process for the duration of the block, logging to ``log_file``."""
    with log_file.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_healthy(health_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def copy_samples(inbox: Path) -> int:
    """Drop the bundled samples into the inbox (files already there are left as they are)."""
    inbox.mkdir(parents=True, exist_ok=True)
    copied = 0
    for sample in sorted((config.PROJECT_ROOT / "include" / "samples").iterdir()):
        if sample.suffix.lower() in {".json", ".md"} or (inbox / sample.name).exists():
            continue
        shutil.copy2(sample, inbox / sample.name)
        copied += 1
    return copied


def run_dag(dag_id: str) -> str:
    """Run one DAG to completion in this process (triggers run inline) and return the run's state."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(config.PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    run = bag.get_dag(dag_id).test()
    return str(getattr(run.state, "value", run.state))


def print_report(rows: list[dict[str, object]]) -> None:
    headers = ("file", "vendor", "invoice number", "total", "review status", "ERP status")
    table = [
        (
            str(r["file_name"]),
            str(r["vendor_name"] or "-"),
            str(r["invoice_number"] or "-"),
            "-"
            if r["total_amount"] is None
            else f"{float(r['total_amount']):.2f} {r['currency'] or ''}".strip(),
            str(r["review_status"] or f"{r['document_status']}: {r['status_reason'] or ''}".strip()),
            str(r["erp_status"] or "-") + (f" ({r['remote_id']})" if r["remote_id"] else ""),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)
    ]
    for row in (headers, tuple("-" * w for w in widths), *table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def row_count(db: Path, table: str) -> int:
    """Rows in a table of one of the demo's SQLite files (0 before the first run)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] if exists else 0


def run_demo() -> int:
    state = config.state_dir()
    env = {**os.environ, **airflow_environment(state)}
    os.environ.update(env)
    (state / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)
    airflow_bin = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow_bin), "db", "migrate"], check=True, env=env, capture_output=True)

    api_key = secrets.token_urlsafe(24)
    ocr_port, erp_port = free_port(), free_port()
    ocr_base = f"http://127.0.0.1:{ocr_port}/api/v1"
    erp_base = f"http://127.0.0.1:{erp_port}"
    os.environ["AIRFLOW_CONN_LEAPOCR_DEFAULT"] = json.dumps(
        {"conn_type": "leapocr", "host": ocr_base, "password": api_key}
    )
    os.environ["AIRFLOW_CONN_ERP_DEFAULT"] = json.dumps({"conn_type": "http", "host": erp_base})
    cli = [sys.executable, "-m", "invoiceflow.cli"]
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"copied {copy_samples(state / 'inbox')} new sample(s) into {state / 'inbox'}")
    counted = {"documents": state / "warehouse.db", "bills": state / "erp_sandbox.db"}
    before = {table: row_count(db, table) for table, db in counted.items()}

    with (
        background_service(
            [*cli, "leapocr-server", "--host", "127.0.0.1", "--port", str(ocr_port), "--api-key", api_key],
            f"{ocr_base}/health",
            logs / "leapocr-server.log",
            env,
        ),
        background_service(
            [
                *cli,
                "erp-sandbox",
                "--host",
                "127.0.0.1",
                "--port",
                str(erp_port),
                "--db",
                str(state / "erp_sandbox.db"),
            ],
            f"{erp_base}/health",
            logs / "erp-sandbox.log",
            env,
        ),
    ):
        states = {dag_id: run_dag(dag_id) for dag_id in ("invoice_ingest", "erp_sync")}

    from invoiceflow import warehouse

    rows = warehouse.document_report(warehouse.engine_for(config.embedded_warehouse_url()))
    print()
    print_report(rows)
    print()
    print("DAG runs: " + ", ".join(f"{dag_id}={state}" for dag_id, state in states.items()))
    added = {table: row_count(db, table) - before[table] for table, db in counted.items()}
    print(f"this run: {added['documents']} new document(s), {added['bills']} bill(s) posted")
    unfinished = [r["file_name"] for r in rows if r["document_status"] not in warehouse.TERMINAL_STATES]
    if unfinished:
        print(f"error: documents left unfinished: {unfinished}", file=sys.stderr)
    return 0 if all(s == "success" for s in states.values()) and not unfinished else 1
