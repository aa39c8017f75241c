"""Test environment: an isolated Airflow home and state folder, set before Airflow is first imported.

Fixtures here start the real components the end-to-end tests need: the offline LeapOCR server, the ERP sandbox,
and a throw-away PostgreSQL database (CI fails, never skips, when PostgreSQL is missing).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="invoiceflow-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(_SESSION_DIR / "airflow" / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "INVOICEFLOW_HOME": str(_SESSION_DIR / "state"),
        "NO_PROXY": "127.0.0.1,localhost",
    }
)
(_SESSION_DIR / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)

PG_DSN = os.environ.get("INVOICEFLOW_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh Airflow metadata database for the session (needed by ``dag.test()``)."""
    from airflow.utils.db import resetdb

    resetdb()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-test ``.invoiceflow`` folder (inbox, embedded warehouse)."""
    state = tmp_path / "state"
    (state / "inbox").mkdir(parents=True)
    monkeypatch.setenv("INVOICEFLOW_HOME", str(state))
    return state


@pytest.fixture(scope="session")
def leapocr_api_key() -> str:
    return "test-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def leapocr_base_url(leapocr_api_key: str) -> Iterator[str]:
    from invoiceflow.leapocr.server import running_server

    with running_server(api_key=leapocr_api_key, workers=4) as base_url:
        yield base_url


@pytest.fixture
def leapocr_connection(leapocr_base_url: str, leapocr_api_key: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Connection ``leapocr_default`` pointing at the offline server."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAPOCR_DEFAULT",
        json.dumps({"conn_type": "leapocr", "host": leapocr_base_url, "password": leapocr_api_key}),
    )
    return leapocr_base_url


@pytest.fixture
def erp_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ERP sandbox on a free port, as connection ``erp_default``; yields its SQLite ledger path."""
    from invoiceflow.erp.sandbox import running_sandbox

    ledger = tmp_path / "erp_sandbox.db"
    with running_sandbox(ledger) as base_url:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": base_url}))
        yield ledger


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import psycopg
    import sqlalchemy as sa

    from invoiceflow import warehouse

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable ({PG_DSN}): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"invoiceflow_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        params = psycopg.conninfo.conninfo_to_dict(PG_DSN)
        url = sa.URL.create(
            "postgresql+psycopg",
            username=params.get("user"),
            password=params.get("password"),
            host=params.get("host"),
            port=int(params.get("port", 5432)),
            database=name,
        ).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            warehouse.engine_for(url).dispose()
            warehouse.engine_for.cache_clear()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def warehouse_connection_json(url: str) -> str:
    """An Airflow connection (JSON form) for a SQLAlchemy warehouse URL."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return json.dumps({"conn_type": "sqlite", "host": parsed.database})
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": parsed.host,
            "port": parsed.port,
            "login": parsed.username,
            "password": parsed.password,
            "schema": parsed.database,
        }
    )
