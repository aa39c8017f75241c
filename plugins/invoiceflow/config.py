"""Settings shared by the DAGs, the CLI and the servers.

Everything is read from the environment at call time (never at import), so the same code serves the demo, the
tests and a production deployment. Secrets never live here: they come from Airflow connections.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

LEAPOCR_CONN_ID = "leapocr_default"
WAREHOUSE_CONN_ID = "warehouse_default"
ERP_CONN_ID = "erp_default"

#: Dataset emitted when a load finished; the ERP sync DAG is scheduled on it.
INVOICES_ASSET_URI = "invoiceflow://warehouse/invoices"


def state_dir() -> Path:
    """Where the embedded default keeps its state (`.invoiceflow/` at the repo root unless overridden)."""
    return Path(os.environ.get("INVOICEFLOW_HOME", PROJECT_ROOT / ".invoiceflow")).resolve()


def inbox_url() -> str:
    """The inbox the ingest DAG lists: a local folder by default, any fsspec URL (``s3://...``) in production."""
    return os.environ.get("INVOICEFLOW_INBOX", (state_dir() / "inbox").as_uri())


def schema_dir() -> Path:
    """Folder of the JSON schemas sent to LeapOCR (``include/schemas``)."""
    return Path(os.environ.get("INVOICEFLOW_SCHEMA_DIR", PROJECT_ROOT / "include" / "schemas"))


def sql_dir() -> Path:
    """Folder of the warehouse migrations and views (``sql/``)."""
    return Path(os.environ.get("INVOICEFLOW_SQL_DIR", PROJECT_ROOT / "sql"))


def embedded_warehouse_url() -> str:
    """The SQLite warehouse used when no ``warehouse_default`` connection is configured."""
    return f"sqlite:///{state_dir() / 'warehouse.db'}"


def batch_size() -> int:
    """Documents per mapped extraction task; keeps the fan-out far below ``max_map_length`` (1024)."""
    return int(os.environ.get("INVOICEFLOW_BATCH_SIZE", "25"))


def erp_batch_size() -> int:
    """Bills per ERP request (Xero accepts at most 50)."""
    return int(os.environ.get("INVOICEFLOW_ERP_BATCH_SIZE", "50"))


def totals_tolerance() -> float:
    """Absolute tolerance of the arithmetic checks (validation and the quality checkpoint), in currency units."""
    return float(os.environ.get("INVOICEFLOW_TOTALS_TOLERANCE", "0.02"))
