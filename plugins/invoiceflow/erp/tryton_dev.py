"""A throw-away real Tryton server for integration tests and demos (SQLite, loopback only).

``running_trytond(workdir)`` creates a database with the ``account_invoice`` module, sets up the minimum a supplier
invoice needs to be *posted* (a company in EUR, the default English chart of accounts from the template, a fiscal
year with monthly periods and invoice sequences) and runs ``trytond`` on 127.0.0.1 until the ``with`` block ends.
It yields a :class:`TrytonServer` (URL, database, admin credentials) that fits a ``tryton`` Airflow connection.

Timing: module activation takes most of the ~15-30 s; the resulting database file can be reused across runs
(``reuse=True`` keeps ``<workdir>/<db>.sqlite`` when it exists).

The accounting setup runs with proteus in a *separate process* (``python -m invoiceflow.erp.tryton_dev setup``) so
that trytond's process-wide configuration never leaks into the caller (pytest, Airflow).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ADMIN_LOGIN = "admin"


@dataclass(frozen=True)
class TrytonServer:
    url: str
    database: str
    login: str
    password: str
    workdir: Path


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install trytond (dev dependency group)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(workdir: Path, port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "trytond.conf"
    conf.write_text(
        "[database]\n"
        "uri = sqlite://\n"
        f"path = {workdir}\n"
        "[web]\n"
        f"listen = 127.0.0.1:{port}\n"
        "[session]\n"
        "timeout = 3600\n"
    )
    return conf


def create_database(workdir: Path, database: str, password: str, port: int = 0) -> Path:
    """``trytond-admin --all`` with account_invoice, then the accounting setup (both in subprocesses)."""
    conf = write_config(workdir, port or _free_port())
    (workdir / f"{database}.sqlite").touch()
    passfile = workdir / "admin.pass"
    passfile.write_text(password)
    env = {**os.environ, "TRYTONPASSFILE": str(passfile)}
    try:
        subprocess.run(
            [
                _bin("trytond-admin"),
                "-c",
                str(conf),
                "-d",
                database,
                "--all",
                "-u",
                "account_invoice",
                "--activate-dependencies",
            ],
            input="\n",  # no e-mail for admin (asked on a fresh database)
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"trytond-admin failed: {exc.stderr[-2000:]}") from exc
    finally:
        passfile.unlink(missing_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "invoiceflow.erp.tryton_dev", "setup", str(conf), database],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"Tryton accounting setup failed: {exc.stderr[-2000:]}") from exc
    return conf


def _setup_accounting(conf: str, database: str) -> None:
    """Company, chart of accounts, fiscal year with periods and invoice sequences (proteus, in-process)."""
    from proteus import config as pconfig
    from trytond.modules.account.tests.tools import create_chart, create_fiscalyear
    from trytond.modules.account_invoice.tests.tools import set_fiscalyear_invoice_sequences
    from trytond.modules.company.tests.tools import create_company

    cfg = pconfig.set_trytond(database, config_file=conf)
    create_company(currency="EUR", config=cfg)
    create_chart(config=cfg)
    today = dt.date.today()
    # Wide enough for test invoices dated last year to next year.
    fiscalyear = create_fiscalyear(
        today=(
            today.replace(year=today.year - 1, month=1, day=1),
            today.replace(year=today.year + 1, month=12, day=31),
        ),
        config=cfg,
    )
    fiscalyear = set_fiscalyear_invoice_sequences(fiscalyear, config=cfg)
    fiscalyear.click("create_period")


@contextlib.contextmanager
def running_trytond(workdir: Path, database: str = "ap", *, reuse: bool = False) -> Iterator[TrytonServer]:
    """Create (or reuse) the database and run ``trytond`` on a free loopback port for the ``with`` block."""
    workdir = Path(workdir)
    password_file = workdir / "admin.secret"
    db_file = workdir / f"{database}.sqlite"
    if not (reuse and db_file.exists() and db_file.stat().st_size > 0 and password_file.exists()):
        password = secrets.token_urlsafe(16)
        db_file.unlink(missing_ok=True)
        create_database(workdir, database, password)
        password_file.write_text(password)
    password = password_file.read_text()
    port = _free_port()
    conf = write_config(workdir, port)
    log = (workdir / "trytond.log").open("ab")
    proc = subprocess.Popen(
        [_bin("trytond"), "-c", str(conf), "-d", database],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"trytond exited with {proc.returncode}; see {workdir / 'trytond.log'}")
            try:
                response = httpx.post(
                    f"{url}/{database}/rpc/",
                    json={
                        "id": 0,
                        "method": "common.db.login",
                        "params": [ADMIN_LOGIN, {"password": password}],
                    },
                    timeout=5,
                )
                if response.status_code == 200 and response.json().get("result"):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("trytond did not answer within 60 s")
            time.sleep(0.2)
        yield TrytonServer(url, database, ADMIN_LOGIN, password, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoiceflow.erp.tryton_dev")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="accounting setup of an activated database (internal)")
    setup.add_argument("conf")
    setup.add_argument("database")
    args = parser.parse_args(argv)
    if args.command == "setup":
        _setup_accounting(args.conf, args.database)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
