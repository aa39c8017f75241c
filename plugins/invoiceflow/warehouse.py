"""The warehouse: connection, migrations, and every read and write the pipeline makes.

One module so the SQL lives in one place. All statements are parameterised and portable between PostgreSQL (a
``warehouse_default`` connection) and SQLite (the embedded default). Writes that belong together share one
transaction, and every write is an idempotent upsert keyed on a natural key, so re-running any task is safe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from invoiceflow import config

log = logging.getLogger(__name__)

#: Document states. The last four are terminal: every document ends in exactly one of them. The open ones are
#: picked up again by the next run (``waiting_for_credits``: the account ran dry or the run's credit budget did).
REGISTERED, EXTRACTING, EXTRACTED = "registered", "extracting", "extracted"
WAITING_FOR_CREDITS = "waiting_for_credits"
LOADED, NEEDS_REVIEW, REJECTED, FAILED = "loaded", "needs_review", "rejected", "failed"
TERMINAL_STATES = frozenset({LOADED, NEEDS_REVIEW, REJECTED, FAILED})
OPEN_STATES = (REGISTERED, WAITING_FOR_CREDITS, EXTRACTING, EXTRACTED)

AUTO_APPROVED = "auto_approved"


# --------------------------------------------------------------------------------------------------- connection


def url_from_airflow_connection(conn: Any) -> str:
    """Build a SQLAlchemy URL from an Airflow connection (``postgres`` or ``sqlite`` type)."""
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    if conn_type in {"postgres", "postgresql"}:
        return sa.URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    raise ValueError(
        f"warehouse connection {conn.conn_id!r} has unsupported type {conn_type!r}; use postgres or sqlite"
    )


def resolve_url(conn_id: str = config.WAREHOUSE_CONN_ID) -> str:
    """The warehouse URL: the Airflow connection if it exists, else the embedded SQLite file."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # the SDK raises different not-found types inside and outside a task
        if "isn't defined" not in str(exc) and type(exc).__name__ != "AirflowNotFoundException":
            raise
        log.info("No %r connection: using the embedded SQLite warehouse", conn_id)
        return config.embedded_warehouse_url()
    return url_from_airflow_connection(conn)


@functools.cache
def engine_for(url: str) -> Engine:
    """One pooled engine per URL per process."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def get_engine(conn_id: str = config.WAREHOUSE_CONN_ID) -> Engine:
    return engine_for(resolve_url(conn_id))


async def aget_engine(conn_id: str = config.WAREHOUSE_CONN_ID) -> Engine:
    """For the triggerer: the connection is looked up asynchronously (queries then go through a thread)."""
    from airflow.sdk import BaseHook

    try:
        conn = await BaseHook.aget_connection(conn_id)
    except Exception as exc:
        if "isn't defined" not in str(exc) and type(exc).__name__ != "AirflowNotFoundException":
            raise
        return engine_for(config.embedded_warehouse_url())
    return engine_for(url_from_airflow_connection(conn))


# --------------------------------------------------------------------------------------------------- migrations


def upgrade(engine: Engine, migrations_dir: Path | None = None) -> list[str]:
    """Apply the ``sql/migrations/*.sql`` files not applied yet, each in its own transaction; returns their names."""
    migrations_dir = migrations_dir or config.sql_dir() / "migrations"
    files = sorted(migrations_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations found in {migrations_dir}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
                "applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
        )
        done = set(conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars())
    applied = []
    for path in files:
        if path.name in done:
            continue
        with engine.begin() as conn:
            for statement in _split_sql(path.read_text()):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text("INSERT INTO schema_migrations (version) VALUES (:v)"), {"v": path.name})
        log.info("Applied migration %s", path.name)
        applied.append(path.name)
    return applied


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (our migrations keep ``;`` out of literals and comments)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# --------------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class SeenFile:
    """A file listed in the inbox, hashed and typed."""

    path: str
    file_name: str
    size_bytes: int
    modified_at: str | None
    sha256: str
    content_type: str | None
    rejection: str | None = None


def known_paths(engine: Engine) -> dict[str, tuple[int, str | None]]:
    """Paths already registered, with the size and mtime they had, so unchanged files are not re-read."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT path, size_bytes, modified_at FROM document_paths"))
        return {r.path: (r.size_bytes, r.modified_at) for r in rows}


def register_files(engine: Engine, files: Sequence[SeenFile], run_id: str | None = None) -> list[str]:
    """Record files by content hash; returns the hashes that are new documents (never seen before).

    A file whose bytes were already seen only gets its path recorded, so it is never processed again.
    """
    new: list[str] = []
    with engine.begin() as conn:
        for f in files:
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO documents (sha256, file_name, first_path, size_bytes, content_type, status, "
                    "status_reason, landed_at, dag_run_id) VALUES (:sha, :name, :path, :size, :ctype, :status, "
                    ":reason, :landed, :run) ON CONFLICT (sha256) DO NOTHING"
                ),
                {
                    "sha": f.sha256,
                    "name": f.file_name,
                    "path": f.path,
                    "size": f.size_bytes,
                    "ctype": f.content_type,
                    "status": REJECTED if f.rejection else REGISTERED,
                    "reason": f.rejection,
                    "landed": f.modified_at,
                    "run": run_id,
                },
            ).rowcount
            if inserted:
                new.append(f.sha256)
            conn.execute(
                sa.text(
                    "INSERT INTO document_paths (path, sha256, size_bytes, modified_at) "
                    "VALUES (:path, :sha, :size, :mtime) ON CONFLICT (path) DO UPDATE SET "
                    "sha256 = excluded.sha256, size_bytes = excluded.size_bytes, modified_at = excluded.modified_at"
                ),
                {"path": f.path, "sha": f.sha256, "size": f.size_bytes, "mtime": f.modified_at},
            )
    return new


def open_documents(engine: Engine) -> list[str]:
    """Documents not yet in a terminal state (new ones, and any an earlier run left half-done)."""
    stmt = sa.text(
        "SELECT sha256 FROM documents WHERE status IN :states ORDER BY registered_at, sha256"
    ).bindparams(sa.bindparam("states", expanding=True))
    with engine.connect() as conn:
        return list(conn.execute(stmt, {"states": list(OPEN_STATES)}).scalars())


def document_paths(engine: Engine, shas: Sequence[str]) -> dict[str, tuple[str, str, str | None]]:
    """``sha256 -> (path, file_name, content_type)`` of the first path each document was seen at."""
    if not shas:
        return {}
    stmt = sa.text(
        "SELECT sha256, first_path, file_name, content_type FROM documents WHERE sha256 IN :shas"
    ).bindparams(sa.bindparam("shas", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(stmt, {"shas": list(shas)})
        return {r.sha256: (r.first_path, r.file_name, r.content_type) for r in rows}


def document_statuses(engine: Engine, shas: Sequence[str]) -> dict[str, str]:
    if not shas:
        return {}
    stmt = sa.text("SELECT sha256, status FROM documents WHERE sha256 IN :shas").bindparams(
        sa.bindparam("shas", expanding=True)
    )
    with engine.connect() as conn:
        return {r.sha256: r.status for r in conn.execute(stmt, {"shas": list(shas)})}


def set_document_status(conn: Connection, sha: str, status: str, reason: str | None = None) -> None:
    conn.execute(
        sa.text(
            "UPDATE documents SET status = :status, status_reason = :reason, updated_at = CURRENT_TIMESTAMP "
            "WHERE sha256 = :sha"
        ),
        {"status": status, "reason": reason, "sha": sha},
    )


def fail_document(engine: Engine, sha: str, reason: str) -> None:
    """Terminal failure of one document, with the reason a person can act on."""
    with engine.begin() as conn:
        set_document_status(conn, sha, FAILED, reason)


# --------------------------------------------------------------------------------------------------- job ledger


def jobs_for(engine: Engine, shas: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ledger rows (``job_id``, ``status``) of these documents."""
    if not shas:
        return {}
    stmt = sa.text(
        "SELECT document_sha256, job_id, status, error_message FROM extraction_jobs WHERE document_sha256 IN :shas"
    ).bindparams(sa.bindparam("shas", expanding=True))
    with engine.connect() as conn:
        return {r.document_sha256: dict(r._mapping) for r in conn.execute(stmt, {"shas": list(shas)})}


def record_job(
    engine: Engine, sha: str, job_id: str, run_id: str | None = None, fingerprint: str | None = None
) -> None:
    """Store a submitted job *before* deferring, so a retry reconnects instead of paying twice."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO extraction_jobs (document_sha256, job_id, status, dag_run_id, api_key_fingerprint) "
                "VALUES (:sha, :job, 'submitted', :run, :key) ON CONFLICT (document_sha256) DO UPDATE SET "
                "job_id = excluded.job_id, status = 'submitted', error_message = NULL, finished_at = NULL, "
                "remote_deleted = 0, dag_run_id = excluded.dag_run_id, "
                "api_key_fingerprint = excluded.api_key_fingerprint"
            ),
            {"sha": sha, "job": job_id, "run": run_id, "key": fingerprint},
        )
        set_document_status(conn, sha, EXTRACTING)


def jobs_in_flight(engine: Engine, fingerprint: str) -> int:
    """Jobs submitted with this API key and not finished yet, across every task and run."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM extraction_jobs WHERE api_key_fingerprint = :key AND status = 'submitted'"
            ),
            {"key": fingerprint},
        ).scalar_one()


def wait_for_credits(engine: Engine, shas: Sequence[str], reason: str) -> None:
    """Leave documents open (not failed): the next run submits them once credits are there."""
    with engine.begin() as conn:
        for sha in shas:
            set_document_status(conn, sha, WAITING_FOR_CREDITS, reason)


def credits_used_by_run(engine: Engine, run_id: str) -> int:
    """Credits charged for the documents a DAG run submitted (the run's budget is checked against this)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COALESCE(SUM(r.credits_used), 0) FROM raw_extraction_results r "
                "JOIN extraction_jobs j ON j.document_sha256 = r.document_sha256 WHERE j.dag_run_id = :run"
            ),
            {"run": run_id},
        ).scalar_one()


def finish_job_failed(engine: Engine, sha: str, status: str, message: str) -> None:
    """A job that failed or timed out fails only its document, with the server's message."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE extraction_jobs SET status = :status, error_message = :msg, finished_at = :now "
                "WHERE document_sha256 = :sha"
            ),
            {"status": status, "msg": message, "now": _now(), "sha": sha},
        )
        set_document_status(conn, sha, FAILED, f"extraction {status}: {message}")


def store_extraction(
    engine: Engine,
    sha: str,
    job_id: str,
    raw_pages: list[dict[str, Any]],
    merged: dict[str, Any],
    *,
    model: str | None,
    credits_used: int | None,
    total_pages: int | None,
) -> None:
    """Keep the raw pages for audit and the merged invoice for loading, and close the ledger row."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw_extraction_results (document_sha256, job_id, model, credits_used, total_pages, "
                "raw_pages, merged_invoice) VALUES (:sha, :job, :model, :credits, :pages, :raw, :merged) "
                "ON CONFLICT (document_sha256) DO UPDATE SET job_id = excluded.job_id, model = excluded.model, "
                "credits_used = excluded.credits_used, total_pages = excluded.total_pages, "
                "raw_pages = excluded.raw_pages, merged_invoice = excluded.merged_invoice"
            ),
            {
                "sha": sha,
                "job": job_id,
                "model": model,
                "credits": credits_used,
                "pages": total_pages,
                "raw": json.dumps(raw_pages),
                "merged": json.dumps(merged),
            },
        )
        conn.execute(
            sa.text(
                "UPDATE extraction_jobs SET status = 'completed', finished_at = :now, error_message = NULL "
                "WHERE document_sha256 = :sha"
            ),
            {"now": _now(), "sha": sha},
        )
        set_document_status(conn, sha, EXTRACTED)


def mark_remote_deleted(engine: Engine, sha: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE extraction_jobs SET remote_deleted = 1 WHERE document_sha256 = :sha"),
            {"sha": sha},
        )


def extracted_invoices(engine: Engine, shas: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Merged invoices of the documents in ``extracted`` state (or already loaded: reloads are idempotent)."""
    if not shas:
        return {}
    stmt = sa.text(
        "SELECT r.document_sha256, r.merged_invoice FROM raw_extraction_results r "
        "JOIN documents d ON d.sha256 = r.document_sha256 "
        "WHERE r.document_sha256 IN :shas AND d.status IN ('extracted', 'loaded', 'needs_review')"
    ).bindparams(sa.bindparam("shas", expanding=True))
    with engine.connect() as conn:
        return {
            r.document_sha256: json.loads(r.merged_invoice) for r in conn.execute(stmt, {"shas": list(shas)})
        }


# --------------------------------------------------------------------------------------------------- load


@dataclass
class ValidatedInvoice:
    """One invoice ready to load: normalised header, its line items and the issues validation found."""

    document_sha256: str
    header: dict[str, Any]
    line_items: list[dict[str, Any]]
    issues: list[dict[str, str]] = field(default_factory=list)

    @property
    def review_status(self) -> str:
        return NEEDS_REVIEW if self.issues else AUTO_APPROVED


HEADER_COLUMNS = (
    "invoice_number",
    "vendor_name",
    "invoice_date",
    "due_date",
    "currency",
    "subtotal",
    "tax_amount",
    "total_amount",
    "purchase_order_number",
)
LINE_COLUMNS = ("description", "quantity", "unit_price", "line_total")


def idempotency_key(vendor_name: str, invoice_number: str) -> str:
    """The ERP key of an invoice: its identity (vendor + number, normalised), not the file it came in."""
    identity = f"{' '.join(vendor_name.casefold().split())}|{''.join(invoice_number.casefold().split())}"
    return "inv-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def erp_payload(inv: ValidatedInvoice) -> dict[str, Any]:
    return {
        **{k: inv.header.get(k) for k in HEADER_COLUMNS},
        "line_items": [{k: li.get(k) for k in LINE_COLUMNS} for li in inv.line_items],
    }


def load_batch(engine: Engine, batch_id: str, invoices: Sequence[ValidatedInvoice]) -> dict[str, int]:
    """Staging, then one set-based merge into the core tables, all in one transaction.

    Re-running the same batch rewrites the same rows (upsert on the document hash) and never duplicates. Approved
    invoices enter the ERP outbox in the same transaction, so an invoice is never loaded without its outbox row.
    """
    shas = [inv.document_sha256 for inv in invoices]
    params = {"batch": batch_id}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM staging_invoice_line_items WHERE batch_id = :batch"), params)
        conn.execute(sa.text("DELETE FROM staging_invoices WHERE batch_id = :batch"), params)
        if not invoices:
            return {"invoices": 0, "line_items": 0, "needs_review": 0, "outbox": 0}
        cols = ", ".join(HEADER_COLUMNS)
        binds = ", ".join(f":{c}" for c in HEADER_COLUMNS)
        conn.execute(
            sa.text(
                f"INSERT INTO staging_invoices (batch_id, document_sha256, {cols}, review_status, review_issues) "
                f"VALUES (:batch, :sha, {binds}, :review_status, :review_issues)"
            ),
            [
                {
                    "batch": batch_id,
                    "sha": inv.document_sha256,
                    **{c: inv.header.get(c) for c in HEADER_COLUMNS},
                    "review_status": inv.review_status,
                    "review_issues": json.dumps([i["code"] for i in inv.issues]),
                }
                for inv in invoices
            ],
        )
        line_rows = [
            {"batch": batch_id, "sha": inv.document_sha256, "n": n, **{c: li.get(c) for c in LINE_COLUMNS}}
            for inv in invoices
            for n, li in enumerate(inv.line_items, start=1)
        ]
        if line_rows:
            conn.execute(
                sa.text(
                    "INSERT INTO staging_invoice_line_items (batch_id, document_sha256, line_number, "
                    f"{', '.join(LINE_COLUMNS)}) VALUES (:batch, :sha, :n, {', '.join(':' + c for c in LINE_COLUMNS)})"
                ),
                line_rows,
            )
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in (*HEADER_COLUMNS, "review_status", "review_issues")
        )
        conn.execute(
            sa.text(
                f"INSERT INTO invoices (document_sha256, {cols}, review_status, review_issues) "
                f"SELECT document_sha256, {cols}, review_status, review_issues FROM staging_invoices "
                f"WHERE batch_id = :batch ON CONFLICT (document_sha256) DO UPDATE SET {updates}, "
                "loaded_at = CURRENT_TIMESTAMP"
            ),
            params,
        )
        in_batch = sa.bindparam("shas", expanding=True)
        conn.execute(
            sa.text("DELETE FROM invoice_line_items WHERE document_sha256 IN :shas").bindparams(in_batch),
            {"shas": shas},
        )
        conn.execute(
            sa.text(
                f"INSERT INTO invoice_line_items (document_sha256, line_number, {', '.join(LINE_COLUMNS)}) "
                f"SELECT document_sha256, line_number, {', '.join(LINE_COLUMNS)} FROM staging_invoice_line_items "
                "WHERE batch_id = :batch"
            ),
            params,
        )
        conn.execute(
            sa.text("DELETE FROM validation_issues WHERE document_sha256 IN :shas").bindparams(in_batch),
            {"shas": shas},
        )
        issue_rows = [
            {"sha": inv.document_sha256, "code": i["code"], "message": i["message"]}
            for inv in invoices
            for i in inv.issues
        ]
        if issue_rows:
            conn.execute(
                sa.text(
                    "INSERT INTO validation_issues (document_sha256, code, message) VALUES (:sha, :code, :message)"
                ),
                issue_rows,
            )
        outbox = 0
        for inv in invoices:
            set_document_status(conn, inv.document_sha256, LOADED if not inv.issues else NEEDS_REVIEW)
            if not inv.issues:
                outbox += _enqueue_outbox(conn, inv)
        conn.execute(sa.text("DELETE FROM staging_invoice_line_items WHERE batch_id = :batch"), params)
        conn.execute(sa.text("DELETE FROM staging_invoices WHERE batch_id = :batch"), params)
    return {
        "invoices": len(invoices),
        "line_items": len(line_rows),
        "needs_review": sum(1 for inv in invoices if inv.issues),
        "outbox": outbox,
    }


def _enqueue_outbox(conn: Connection, inv: ValidatedInvoice) -> int:
    """Insert the outbox row of an approved invoice once; an invoice already queued (or posted) is left alone."""
    payload = json.dumps(erp_payload(inv), sort_keys=True, default=str)
    return conn.execute(
        sa.text(
            "INSERT INTO erp_outbox (idempotency_key, document_sha256, payload, payload_hash, status) "
            "VALUES (:key, :sha, :payload, :hash, 'pending') ON CONFLICT DO NOTHING"
        ),
        {
            "key": idempotency_key(inv.header["vendor_name"], inv.header["invoice_number"]),
            "sha": inv.document_sha256,
            "payload": payload,
            "hash": hashlib.sha256(payload.encode()).hexdigest(),
        },
    ).rowcount


# --------------------------------------------------------------------------------------------------- ERP outbox

#: Outbox states the relay still has to act on. ``unknown`` means sent without an answer: read back first.
RELAY_STATES = ("pending", "unknown")


def outbox_keys_to_relay(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT idempotency_key FROM erp_outbox WHERE status IN ('pending', 'unknown') ORDER BY created_at"
            )
        )
        return list(rows.scalars())


def outbox_rows(engine: Engine, keys: Sequence[str]) -> list[dict[str, Any]]:
    if not keys:
        return []
    stmt = sa.text(
        "SELECT idempotency_key, document_sha256, payload, status, attempts FROM erp_outbox "
        "WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown') ORDER BY idempotency_key"
    ).bindparams(sa.bindparam("keys", expanding=True))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt, {"keys": list(keys)})]


def mark_outbox_in_flight(engine: Engine, keys: Iterable[str]) -> None:
    """Before sending: a crash from here on leaves ``unknown``, which is read back before any resend."""
    stmt = sa.text(
        "UPDATE erp_outbox SET status = 'unknown', attempts = attempts + 1, updated_at = CURRENT_TIMESTAMP "
        "WHERE idempotency_key IN :keys"
    ).bindparams(sa.bindparam("keys", expanding=True))
    with engine.begin() as conn:
        conn.execute(stmt, {"keys": list(keys)})


def record_outbox_outcomes(
    engine: Engine, outcomes: Iterable[tuple[str, str, str | None, str | None]]
) -> None:
    """Store ``(key, status, remote_id, error)`` per item, in one transaction."""
    with engine.begin() as conn:
        for key, status, remote_id, error in outcomes:
            conn.execute(
                sa.text(
                    "UPDATE erp_outbox SET status = :status, remote_id = COALESCE(:remote, remote_id), "
                    "last_error = :error, updated_at = CURRENT_TIMESTAMP WHERE idempotency_key = :key"
                ),
                {"status": status, "remote": remote_id, "error": error, "key": key},
            )


# --------------------------------------------------------------------------------------------------- reporting


def document_report(engine: Engine) -> list[dict[str, Any]]:
    """One row per document: what the demo prints and what an operator checks first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.file_name, d.status AS document_status, d.status_reason, i.vendor_name, i.invoice_number, "
                "i.total_amount, i.currency, i.review_status, o.status AS erp_status, o.remote_id "
                "FROM documents d LEFT JOIN invoices i ON i.document_sha256 = d.sha256 "
                "LEFT JOIN erp_outbox o ON o.document_sha256 = d.sha256 ORDER BY d.file_name"
            )
        )
        return [dict(r._mapping) for r in rows]


def _now() -> datetime:
    return datetime.now(UTC)
