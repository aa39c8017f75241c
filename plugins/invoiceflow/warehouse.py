"""The warehouse: connection, migrations, and every read and write the pipeline makes.

One module so the SQL lives in one place. All statements are parameterised and portable between PostgreSQL (a
``warehouse_default`` connection) and SQLite (the embedded default). Writes that belong together share one
transaction, and every write is an idempotent upsert keyed on a natural key, so re-running any task is safe.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from invoiceflow import config

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
            # WAL + NORMAL: no fsync per commit (3 ms each here); a crash of the process loses nothing, a power
            # loss may roll back the last commits, which every stage redoes safely (ledger, outbox read-back).
            cur.execute("PRAGMA synchronous=NORMAL")
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
    dialect = engine.dialect.name
    for path in files:
        if path.name in done or not _for_dialect(path, dialect):
            continue
        with engine.begin() as conn:
            for statement in _split_sql(path.read_text(), dialect):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text("INSERT INTO schema_migrations (version) VALUES (:v)"), {"v": path.name})
        log.info("Applied migration %s", path.name)
        applied.append(path.name)
    views = _apply_views(engine, migrations_dir.parent / "views")
    return applied + views


def _for_dialect(path: Path, dialect: str) -> bool:
    """``x.postgres.sql`` runs on PostgreSQL only, ``x.sqlite.sql`` on SQLite only, ``x.sql`` everywhere."""
    suffixes = path.name.split(".")[1:-1]
    return not suffixes or suffixes[-1] == ("postgres" if dialect == "postgresql" else dialect)


def _apply_views(engine: Engine, views_dir: Path) -> list[str]:
    """(Re)create the analyst views of ``sql/views`` when their text changed (or a migration dropped them and forgot
    their version), all in one transaction."""
    files = [p for p in sorted(views_dir.glob("*.sql")) if _for_dialect(p, engine.dialect.name)]
    if not files:
        return []
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    version = f"views@{digest}"
    with engine.begin() as conn:
        applied = conn.execute(sa.text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": version})
        if applied.first():
            return []
        for path in files:
            for statement in _split_sql(path.read_text(), engine.dialect.name):
                conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO schema_migrations (version) VALUES (:v)"), {"v": version})
    log.info("Applied %d view files (%s)", len(files), version)
    return [version]


def _split_sql(script: str, dialect: str = "postgresql") -> list[str]:
    """Split a migration into statements (``;`` stays out of literals and comments, except in ``$$`` bodies).

    ``COMMENT ON`` statements are PostgreSQL-only and skipped on other dialects.
    """
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    statements, current, quoted = [], [], False
    for i, part in enumerate(text.split("$$")):
        if i:
            current.append("$$")
            quoted = not quoted
        if quoted:
            current.append(part)
            continue
        *complete, rest = part.split(";")
        for piece in complete:
            current.append(piece)
            statements.append("".join(current).strip())
            current = []
        current.append(rest)
    statements.append("".join(current).strip())
    statements = [s for s in statements if s]
    if dialect != "postgresql":
        statements = [s for s in statements if not s.upper().startswith("COMMENT ON")]
    return statements


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
        "SELECT document_sha256, job_id, status, error_message, reserved_at FROM extraction_jobs "
        "WHERE document_sha256 IN :shas"
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


def reserve_submission(engine: Engine, sha: str, run_id: str | None, fingerprint: str) -> None:
    """Count a document as in flight while it uploads, so concurrent tasks see it before it has a job id."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO extraction_jobs (document_sha256, job_id, status, dag_run_id, api_key_fingerprint, "
                "reserved_at) VALUES (:sha, '', 'submitting', :run, :key, :now) ON CONFLICT (document_sha256) "
                "DO UPDATE SET job_id = '', status = 'submitting', error_message = NULL, finished_at = NULL, "
                "remote_deleted = 0, dag_run_id = excluded.dag_run_id, "
                "api_key_fingerprint = excluded.api_key_fingerprint, reserved_at = excluded.reserved_at"
            ),
            {"sha": sha, "run": run_id, "key": fingerprint, "now": time.time()},
        )


def release_submission(engine: Engine, sha: str) -> None:
    """The upload failed before a job existed: free the reservation."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM extraction_jobs WHERE document_sha256 = :sha AND status = 'submitting'"),
            {"sha": sha},
        )


def note_starting_job(engine: Engine, sha: str, job_id: str) -> None:
    """The upload is about to ask LeapOCR to start (and bill) ``job_id``: keep it in the reservation, so a lost
    answer or a killed process leaves a job to look up instead of a reason to upload again."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE extraction_jobs SET job_id = :job WHERE document_sha256 = :sha AND status = 'submitting'"
            ),
            {"sha": sha, "job": job_id},
        )


def jobs_in_flight(engine: Engine, fingerprint: str) -> int:
    """Jobs submitted (or uploading) with this API key and not finished yet, across every task and run."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM extraction_jobs WHERE api_key_fingerprint = :key "
                "AND status IN ('submitting', 'submitted')"
            ),
            {"key": fingerprint},
        ).scalar_one()


#: Ledger states of a job whose remote outcome is known but whose result is not stored yet.
REMOTE_DONE_STATES = ("remote_completed", "remote_failed")
#: Ledger states a retried task reconnects to.
RECONNECTABLE_JOB_STATES = ("submitted", *REMOTE_DONE_STATES)


def mark_jobs_finished_remotely(engine: Engine, outcomes: dict[str, str]) -> None:
    """The triggerer saw these jobs end (``{job_id: "completed" | "failed"}``): they no longer count in flight."""
    with engine.begin() as conn:
        for job_id, outcome in outcomes.items():
            conn.execute(
                sa.text(
                    "UPDATE extraction_jobs SET status = :status WHERE job_id = :job AND status = 'submitted'"
                ),
                {"status": f"remote_{outcome}", "job": job_id},
            )


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

BLOCKED = "blocked"
#: The issue a hard duplicate carries (same vendor and normalised number as a live invoice): never sent to the ERP.
DUPLICATE_ISSUE = "duplicate_invoice"
_DUPLICATE_MESSAGE = "Another live invoice has the same vendor and invoice number: blocked from the ERP."


@dataclass
class ValidatedInvoice:
    """One invoice ready to load: normalised header, its line items, the issues validation found and what it derived.

    ``derived`` holds the columns validation computed beside the printed header (``DERIVED_COLUMNS``): document type,
    matched vendor and score, the duplicate keys, VAT id and IBAN. Missing keys get defaults at load time.
    """

    document_sha256: str
    header: dict[str, Any]
    line_items: list[dict[str, Any]]
    issues: list[dict[str, str]] = field(default_factory=list)
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def review_status(self) -> str:
        if any(i.get("severity") == BLOCKED or i["code"] == DUPLICATE_ISSUE for i in self.issues):
            return BLOCKED
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
DERIVED_COLUMNS = (
    "document_type",
    "vendor_id",
    "vendor_match_score",
    "vendor_key",
    "invoice_number_norm",
    "duplicate_of",
    "vendor_vat_id",
    "vendor_iban",
)
_STAGED_COLUMNS = (*HEADER_COLUMNS, *DERIVED_COLUMNS, "review_status", "review_issues")
#: What the load writes per invoice (staging adds ``batch_id``), line item, issue and outbox row.
_INVOICE_COLUMNS = ("document_sha256", *_STAGED_COLUMNS)
_LINE_ROW_COLUMNS = ("document_sha256", "line_number", *LINE_COLUMNS)
_ISSUE_COLUMNS = ("document_sha256", "code", "message", "severity")
_OUTBOX_COLUMNS = ("idempotency_key", "document_sha256", "payload", "payload_hash", "status")
#: Serialises loads on PostgreSQL so the duplicate guard sees every committed invoice (pg_advisory_xact_lock key).
_LOAD_LOCK = 7_302_115_001
#: Outbox payloads encoded (per document of the batch) while the server updates the document states: it needs about
#: 4.5 µs a document (every update HOT), Python about 10 µs a payload, so 2 in 5 keep both busy (measured with the
#: json encoder: 0, 2/5 and all of them took 6.3 s, 5.5 s and 6.4 s for 100k invoices; with orjson and HOT updates
#: 0.25 and 0.4 were within noise); the rest are encoded while the server stores the outbox rows.
_PAYLOADS_DURING_STATES = 0.4
_HEADER_VALUES = operator.itemgetter(*HEADER_COLUMNS)
_DOCUMENT_HASH = operator.attrgetter("document_sha256")
_LINE_VALUES = operator.itemgetter(*LINE_COLUMNS)
_DERIVED_KEYS = frozenset(DERIVED_COLUMNS)


def invoice_number_norm(invoice_number: str | None) -> str | None:
    """An invoice number as compared for duplicates: case-insensitive, whitespace removed."""
    if not invoice_number:
        return None
    return "".join(invoice_number.casefold().split()) or None


def _vendor_name_key(vendor_name: str | None) -> str | None:
    return "n:" + " ".join(vendor_name.casefold().split()) if vendor_name and vendor_name.strip() else None


def idempotency_key(vendor_name: str, invoice_number: str) -> str:
    """The ERP key of an invoice: its identity (vendor + number, normalised), not the file it came in."""
    identity = f"{' '.join(vendor_name.casefold().split())}|{''.join(invoice_number.casefold().split())}"
    return "inv-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def erp_payload(inv: ValidatedInvoice) -> dict[str, Any]:
    """What the outbox sends to the ERP: the header, ``document_type`` (``invoice`` or ``credit_note``: connectors
    post a credit note as the ERP's credit document, never as a bill) and the line items. Amounts follow the
    warehouse convention: a credit note's totals and line totals are negative."""
    return {
        **{k: inv.header.get(k) for k in HEADER_COLUMNS},
        # validation's type, or (not validated, e.g. approved in review) the invoices table's default rule
        "document_type": _derived(inv)["document_type"],
        "line_items": [{k: li.get(k) for k in LINE_COLUMNS} for li in inv.line_items],
    }


def _derived(inv: ValidatedInvoice) -> dict[str, Any]:
    """``DERIVED_COLUMNS`` of an invoice, with defaults for callers that skipped validation (read-only)."""
    if inv.derived.keys() == _DERIVED_KEYS and inv.derived["document_type"]:
        # what validation hands over: complete, nothing to default (the common case, no copy)
        return inv.derived
    out = {c: inv.derived.get(c) for c in DERIVED_COLUMNS}
    if "vendor_key" not in inv.derived:
        out["vendor_key"] = _vendor_name_key(inv.header.get("vendor_name"))
    if "invoice_number_norm" not in inv.derived:
        out["invoice_number_norm"] = invoice_number_norm(inv.header.get("invoice_number"))
    if not out["document_type"]:
        total = inv.header.get("total_amount")
        out["document_type"] = "credit_note" if total is not None and float(total) < 0 else "invoice"
    return out


def _mark_duplicate(inv: ValidatedInvoice, original: str) -> ValidatedInvoice:
    issues = [i for i in inv.issues if i["code"] != DUPLICATE_ISSUE]
    # the same text validation gives the issue when it sees the original itself (validation.issue_message)
    message = f"{_DUPLICATE_MESSAGE.removesuffix('.')}: document {original[:12]}."
    issues.append({"code": DUPLICATE_ISSUE, "message": message, "severity": BLOCKED})
    return replace(
        inv,
        issues=sorted(issues, key=lambda i: i["code"]),
        derived={**inv.derived, **_derived(inv), "duplicate_of": original},
    )


def _values(getter: operator.itemgetter, columns: Sequence[str], mapping: dict[str, Any]) -> tuple[Any, ...]:
    """``mapping``'s values of ``columns`` in order, ``None`` for missing keys (``getter`` is the fast path)."""
    try:
        return getter(mapping)
    except KeyError:
        return tuple(mapping.get(c) for c in columns)


def _invoice_row(inv: ValidatedInvoice) -> tuple[Any, ...]:
    """The ``_INVOICE_COLUMNS`` of one invoice: one tuple, no per-row dict, as COPY and the merges write it."""
    derived = _derived(inv)
    codes = [i["code"] for i in inv.issues]
    return (
        inv.document_sha256,
        *_values(_HEADER_VALUES, HEADER_COLUMNS, inv.header),
        *[derived[c] for c in DERIVED_COLUMNS],
        inv.review_status,
        json.dumps(codes) if codes else "[]",
    )


def _line_rows(invoices: Iterable[ValidatedInvoice]) -> Iterator[tuple[Any, ...]]:
    """The ``_LINE_ROW_COLUMNS`` of every line item, numbered from 1 within its invoice."""
    for inv in invoices:
        sha = inv.document_sha256
        for n, li in enumerate(inv.line_items, start=1):
            yield (sha, n, *_values(_LINE_VALUES, LINE_COLUMNS, li))


def _issue_rows(invoices: Iterable[ValidatedInvoice]) -> list[tuple[str, str, str, str]]:
    return [
        (inv.document_sha256, i["code"], i["message"], i.get("severity") or "review")
        for inv in invoices
        for i in inv.issues
    ]


def insert_issues(conn: Connection, invoices: Iterable[ValidatedInvoice]) -> None:
    """The ``validation_issues`` rows of these invoices, detected now (row by row: the SQLite load and review's
    corrections; the PostgreSQL load ``COPY``s them)."""
    if issue_rows := _issue_rows(invoices):
        conn.execute(
            sa.text(
                "INSERT INTO validation_issues (document_sha256, code, message, severity, detected_at) "
                "VALUES (:sha, :code, :message, :severity, CURRENT_TIMESTAMP)"
            ),
            [dict(zip(("sha", "code", "message", "severity"), r, strict=True)) for r in issue_rows],
        )


def lock_loads(conn: Connection) -> None:
    """PostgreSQL: take the transaction-scoped lock that serialises loads (and review's corrections), so each one's
    duplicate check sees every committed invoice and none takes a vendor + number before the other commits."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOAD_LOCK})


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector, restoring its state after (validation and the load use it).

    Both allocate a few million small objects (dicts per line item, row tuples, payloads) that form no cycles. Each
    allocation burst triggers collections that traverse every live object, the caller's invoices included: about
    40% of validating 100k invoices and 15% of loading them went there. Reference counting frees objects as before;
    a cycle made meanwhile is collected once the collector is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_batch(engine: Engine, batch_id: str, invoices: Sequence[ValidatedInvoice]) -> dict[str, int]:
    """Load validated invoices into the core tables, all in one transaction.

    Re-running the same batch rewrites the same rows (upsert on the document hash) and never duplicates. Approved
    invoices enter the ERP outbox in the same transaction, so an invoice is never loaded without its outbox row.
    Invoices a person already reviewed are left alone. A hard duplicate (same vendor and normalised number as a live
    invoice, in the warehouse or earlier in the batch) is recorded as ``blocked`` with ``duplicate_of``: the
    database's unique index is never what stops it, and it gets no outbox row.

    PostgreSQL: see :func:`_load_postgres` (``COPY`` straight into the core tables for new documents, staging and
    ``INSERT … ON CONFLICT`` merges for reloads). SQLite: staging with parameter batches, then the same merges.
    """
    postgres = engine.dialect.name == "postgresql"
    with cyclic_gc_paused(), engine.begin() as conn:
        if postgres:
            lock_loads(conn)
            # reload merges sort in memory, not on disk; no JIT: the estimates of freshly loaded, not yet analysed
            # tables are wild and made every statement pay ~0.2 s of compiling (the statements are index-driven)
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL jit = off")
        load = _load_postgres if postgres else _load_sqlite
        loaded, line_count, outbox = load(conn, batch_id, _dedupe_in_batch(invoices))
    statuses = [inv.review_status for inv in loaded]
    return {
        "invoices": len(loaded),
        "line_items": line_count,
        "needs_review": statuses.count(NEEDS_REVIEW),
        "blocked": statuses.count(BLOCKED),
        "outbox": outbox,
    }


def _load_postgres(
    conn: Connection, batch_id: str, invoices: list[ValidatedInvoice]
) -> tuple[list[ValidatedInvoice], int, int]:
    """Write each row once, straight into its core table, unless something has to be merged.

    ``invoices`` come in document-hash order (:func:`_dedupe_in_batch`). Invoices and line items: see
    :func:`_write_invoices`. Issues are ``COPY``'d, document states set with one
    ``UPDATE`` per state (pipelined: the first outbox payloads are encoded meanwhile), outbox rows ``COPY``'d
    (:func:`_queue_outbox`).
    """
    if not invoices:
        return [], 0, 0
    invoices, reloaded = _write_invoices(conn, batch_id, invoices)
    if issue_rows := _issue_rows(invoices):
        detected_at = _now()
        _copy(
            conn,
            "validation_issues",
            (*_ISSUE_COLUMNS, "detected_at"),
            ((*r, detected_at) for r in issue_rows),
        )
    approved = [inv for inv in invoices if inv.review_status == AUTO_APPROVED]
    # a reload finds most approved invoices queued already: encode payloads only for the others
    to_queue = _not_yet_queued(conn, approved) if reloaded else approved
    first = to_queue[: int(len(invoices) * _PAYLOADS_DURING_STATES)]
    encoded = _set_load_states(conn, invoices, approved, lambda: [_outbox_values(inv) for inv in first])
    outbox = _queue_outbox(conn, to_queue, encoded, optimistic=not reloaded)
    return invoices, sum(len(inv.line_items) for inv in invoices), outbox


def _not_yet_queued(conn: Connection, approved: list[ValidatedInvoice]) -> list[ValidatedInvoice]:
    """The approved invoices whose document has no outbox row yet (``= ANY`` probes the unique document index)."""
    if not approved:
        return []
    found = conn.exec_driver_sql(
        "SELECT document_sha256 FROM erp_outbox WHERE document_sha256 = ANY(%(shas)b)",
        {"shas": [inv.document_sha256 for inv in approved]},
    )
    queued = {sha for (sha,) in found}
    return [inv for inv in approved if inv.document_sha256 not in queued]


def _write_invoices(
    conn: Connection, batch_id: str, invoices: list[ValidatedInvoice]
) -> tuple[list[ValidatedInvoice], bool]:
    """PostgreSQL: the batch's invoices and line items. Returns the invoices loaded and whether it was a reload.

    A batch of new documents (every first load) is ``COPY``'d straight into ``invoices`` (see
    :func:`_copy_new_invoices`) and ``invoice_line_items``. Otherwise the guard runs first; a reload (a document
    already loaded) then goes through staging and the ``INSERT … ON CONFLICT`` merges, anything else (a duplicate of
    a live invoice, an invoice a person reviewed) is ``COPY``'d as above once the guard has marked or dropped it.
    """
    if not _copy_new_invoices(conn, invoices):
        invoices, reloaded = _guard_postgres(conn, invoices)
        if reloaded:
            _stage(conn, batch_id, invoices, postgres=True)
            _merge_staged(conn, {"batch": batch_id}, reloaded=True)
            _clear_staging(conn, {"batch": batch_id}, postgres=True)
            return invoices, True
        _copy(conn, "invoices", _INVOICE_COLUMNS, map(_invoice_row, invoices))
    _copy(conn, "invoice_line_items", _LINE_ROW_COLUMNS, _line_rows(invoices))
    return invoices, False


def _copy_new_invoices(conn: Connection, invoices: Sequence[ValidatedInvoice]) -> bool:
    """``COPY`` the batch straight into ``invoices`` if it is all new; ``False``, with nothing written, if not.

    The guard finds nothing exactly when no document of the batch is in ``invoices`` yet and none has the vendor and
    normalised number of a live invoice: exactly when the rows violate neither the primary key nor
    ``ux_invoices_vendor_number`` (same predicate as the guard), which the inserts check anyway. So the common case
    pays no lookup; a unique violation rolls the savepoint back and the caller runs the guard. The index is only
    the detector here: a duplicate is still recorded ``blocked`` by the guarded path, never refused.
    """
    from psycopg.errors import UniqueViolation

    try:
        with conn.begin_nested():
            _copy(conn, "invoices", _INVOICE_COLUMNS, map(_invoice_row, invoices))
    except UniqueViolation:
        return False
    return True


def _load_sqlite(
    conn: Connection, batch_id: str, invoices: list[ValidatedInvoice]
) -> tuple[list[ValidatedInvoice], int, int]:
    """Stage with parameter batches, guard against the warehouse from staging, merge, then per-invoice writes."""
    params = {"batch": batch_id}
    _clear_staging(conn, params, postgres=False)
    if not invoices:
        return [], 0, 0
    _stage(conn, batch_id, invoices, postgres=False)
    invoices, reloaded = _guard_against_warehouse(conn, batch_id, invoices)
    line_count = _merge_staged(conn, params, reloaded)
    insert_issues(conn, invoices)
    for inv in invoices:
        set_document_status(conn, inv.document_sha256, LOADED if not inv.issues else NEEDS_REVIEW)
    outbox = sum(_enqueue_outbox(conn, inv) for inv in invoices if inv.review_status == AUTO_APPROVED)
    _clear_staging(conn, params, postgres=False)
    return invoices, line_count, outbox


def _merge_staged(conn: Connection, params: dict[str, Any], reloaded: bool) -> int:
    """Upsert the staged invoices; replace their line items and issues when the batch was loaded before.

    Returns the line items inserted.
    """
    staged = "SELECT document_sha256 FROM staging_invoices WHERE batch_id = :batch"
    cols = ", ".join(_STAGED_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _STAGED_COLUMNS)
    conn.execute(
        sa.text(
            f"INSERT INTO invoices (document_sha256, {cols}) "
            f"SELECT document_sha256, {cols} FROM staging_invoices "
            f"WHERE batch_id = :batch ORDER BY document_sha256 ON CONFLICT (document_sha256) DO UPDATE SET {updates}, "
            "loaded_at = CURRENT_TIMESTAMP"
        ),
        params,
    )
    # a first load has nothing to replace (line items and issues are only written with their invoice)
    if reloaded:
        for table in ("invoice_line_items", "validation_issues"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE document_sha256 IN ({staged})"), params)
    line_cols = ", ".join(LINE_COLUMNS)
    return conn.execute(
        sa.text(
            f"INSERT INTO invoice_line_items (document_sha256, line_number, {line_cols}) "
            f"SELECT document_sha256, line_number, {line_cols} FROM staging_invoice_line_items "
            "WHERE batch_id = :batch ORDER BY document_sha256, line_number"  # index-ordered: far fewer page misses
        ),
        params,
    ).rowcount


def _clear_staging(conn: Connection, params: dict[str, Any], postgres: bool) -> None:
    """Empty the staging rows of this batch. PostgreSQL: ``TRUNCATE`` (loads hold ``_LOAD_LOCK``, so no other batch
    has rows there; a ``DELETE`` of 50k rows cost about 50 ms a batch, the truncate a few)."""
    if postgres:
        conn.exec_driver_sql("TRUNCATE staging_invoice_line_items, staging_invoices")
        return
    conn.execute(sa.text("DELETE FROM staging_invoice_line_items WHERE batch_id = :batch"), params)
    conn.execute(sa.text("DELETE FROM staging_invoices WHERE batch_id = :batch"), params)


def _dedupe_in_batch(invoices: Sequence[ValidatedInvoice]) -> list[ValidatedInvoice]:
    """Two documents of one batch with the same vendor and number: the first (by hash) is the original.

    Returns the batch in document-hash order, the order the loads write in (far fewer page misses on the primary keys).
    """
    first: dict[tuple[str, str], str] = {}
    out = []
    for inv in sorted(invoices, key=_DOCUMENT_HASH):
        derived = _derived(inv)
        key = (derived["vendor_key"], derived["invoice_number_norm"])
        if derived["duplicate_of"] or None in key:
            out.append(inv)
            continue
        original = first.setdefault(key, inv.document_sha256)
        out.append(inv if original == inv.document_sha256 else _mark_duplicate(inv, original))
    return out


def _stage(conn: Connection, batch_id: str, invoices: Sequence[ValidatedInvoice], postgres: bool) -> None:
    header_cols = ("batch_id", *_INVOICE_COLUMNS)
    line_cols = ("batch_id", *_LINE_ROW_COLUMNS)
    if postgres:
        _copy(conn, "staging_invoices", header_cols, ((batch_id, *_invoice_row(inv)) for inv in invoices))
        _copy(
            conn, "staging_invoice_line_items", line_cols, ((batch_id, *row) for row in _line_rows(invoices))
        )
        return
    conn.execute(
        sa.text(
            f"INSERT INTO staging_invoices ({', '.join(header_cols)}) "
            f"VALUES ({', '.join(':' + c for c in header_cols)})"
        ),
        [dict(zip(header_cols, (batch_id, *_invoice_row(inv)), strict=True)) for inv in invoices],
    )
    line_rows = [dict(zip(line_cols, (batch_id, *row), strict=True)) for row in _line_rows(invoices)]
    if line_rows:
        conn.execute(
            sa.text(
                f"INSERT INTO staging_invoice_line_items ({', '.join(line_cols)}) "
                f"VALUES ({', '.join(':' + c for c in line_cols)})"
            ),
            line_rows,
        )


def _apply_guard(
    invoices: Iterable[ValidatedInvoice], reviewed: set[str], duplicates: dict[str, str]
) -> list[ValidatedInvoice]:
    """The batch without the invoices a person reviewed, live duplicates marked ``blocked``."""
    return [
        _mark_duplicate(inv, duplicates[inv.document_sha256]) if inv.document_sha256 in duplicates else inv
        for inv in invoices
        if inv.document_sha256 not in reviewed
    ]


def _guard_against_warehouse(
    conn: Connection, batch_id: str, invoices: Sequence[ValidatedInvoice]
) -> tuple[list[ValidatedInvoice], bool]:
    """SQLite, inside the load transaction: drop invoices a person reviewed, block duplicates of live invoices.

    Also says whether any invoice of the batch is already in the warehouse (a reload: rows to replace).
    """
    params = {"batch": batch_id}
    existing = conn.execute(
        sa.text(
            "SELECT s.document_sha256, i.reviewed_at IS NOT NULL FROM staging_invoices s JOIN invoices i "
            "ON i.document_sha256 = s.document_sha256 WHERE s.batch_id = :batch"
        ),
        params,
    ).all()
    reviewed = {sha for sha, was_reviewed in existing if was_reviewed}
    reloaded = len(existing) > len(reviewed)
    duplicates = dict(
        conn.execute(
            sa.text(
                "SELECT s.document_sha256, MIN(i.document_sha256) FROM staging_invoices s JOIN invoices i "
                "ON i.vendor_key = s.vendor_key AND i.invoice_number_norm = s.invoice_number_norm "
                "AND i.document_sha256 <> s.document_sha256 AND i.duplicate_of IS NULL "
                "AND i.review_status <> 'rejected' "
                "WHERE s.batch_id = :batch AND s.duplicate_of IS NULL GROUP BY s.document_sha256"
            ),
            params,
        ).all()
    )
    duplicates = {sha: orig for sha, orig in duplicates.items() if sha not in reviewed}
    if not reviewed and not duplicates:
        return list(invoices), reloaded
    if reviewed:
        log.info("Leaving %d invoices a person reviewed as they are", len(reviewed))
        for table in ("staging_invoice_line_items", "staging_invoices"):
            conn.execute(
                sa.text(
                    f"DELETE FROM {table} WHERE batch_id = :batch AND document_sha256 IN :shas"
                ).bindparams(sa.bindparam("shas", expanding=True)),
                {**params, "shas": sorted(reviewed)},
            )
    out = _apply_guard(invoices, reviewed, duplicates)
    for inv in out:
        if inv.document_sha256 in duplicates:
            conn.execute(
                sa.text(
                    "UPDATE staging_invoices SET duplicate_of = :orig, review_status = :status, "
                    "review_issues = :issues WHERE batch_id = :batch AND document_sha256 = :sha"
                ),
                {
                    **params,
                    "orig": inv.derived["duplicate_of"],
                    "status": inv.review_status,
                    "issues": json.dumps([i["code"] for i in inv.issues]),
                    "sha": inv.document_sha256,
                },
            )
    return out, reloaded


#: The invoices already loaded among a batch's documents, and whether a person reviewed them.
_LOADED_SQL = (
    "SELECT document_sha256, reviewed_at IS NOT NULL FROM invoices WHERE document_sha256 = ANY(%(shas)b)"
)
#: The live invoice each (document, vendor key, normalised number) of a batch duplicates, if any. Probes the partial
#: unique index ``ux_invoices_vendor_number`` per key, whatever the table's statistics say.
_LIVE_DUPLICATES_SQL = (
    "SELECT k.sha, (SELECT MIN(i.document_sha256) FROM invoices i WHERE i.vendor_key = k.vendor_key "
    "AND i.invoice_number_norm = k.number AND i.document_sha256 <> k.sha AND i.duplicate_of IS NULL "
    "AND i.review_status <> 'rejected') FROM unnest(%(shas)b::text[], %(vendor_keys)b::text[], "
    "%(numbers)b::text[]) AS k(sha, vendor_key, number)"
)


def _guard_postgres(
    conn: Connection, invoices: list[ValidatedInvoice]
) -> tuple[list[ValidatedInvoice], bool]:
    """``_guard_against_warehouse`` before anything is staged: two lookups by arrays of the batch's keys."""
    shas = [inv.document_sha256 for inv in invoices]
    existing = conn.exec_driver_sql(_LOADED_SQL, {"shas": shas}).all()
    reviewed = {sha for sha, was_reviewed in existing if was_reviewed}
    keys = [
        (inv.document_sha256, d["vendor_key"], d["invoice_number_norm"])
        for inv in invoices
        if inv.document_sha256 not in reviewed
        for d in (_derived(inv),)
        if d["duplicate_of"] is None and d["vendor_key"] and d["invoice_number_norm"]
    ]
    duplicates = {}
    if keys:
        sha_col, vendor_col, number_col = (list(col) for col in zip(*keys, strict=True))
        found = conn.exec_driver_sql(
            _LIVE_DUPLICATES_SQL, {"shas": sha_col, "vendor_keys": vendor_col, "numbers": number_col}
        )
        duplicates = {sha: original for sha, original in found if original}
    if reviewed:
        log.info("Leaving %d invoices a person reviewed as they are", len(reviewed))
    return _apply_guard(invoices, reviewed, duplicates), len(existing) > len(reviewed)


_SET_STATE_SQL = (
    "UPDATE documents SET status = %(status)s, status_reason = NULL, updated_at = CURRENT_TIMESTAMP "
    "WHERE sha256 = ANY(%(shas)b)"
)


def _set_load_states(
    conn: Connection,
    invoices: Sequence[ValidatedInvoice],
    approved: Sequence[ValidatedInvoice],
    meanwhile: Callable[[], _T],
) -> _T:
    """PostgreSQL: every document of the batch ``loaded`` (approved) or ``needs_review``, one UPDATE per state
    (``= ANY`` probes the primary key, whatever the table's statistics say).

    The UPDATEs go out in pipeline mode and ``meanwhile()`` (Python work, no database) runs while the server applies
    them, so the two take about the time of the longer instead of the sum. Returns what ``meanwhile`` returned.
    """
    loaded = [inv.document_sha256 for inv in approved]
    approved_shas = set(loaded)
    review = [inv.document_sha256 for inv in invoices if inv.document_sha256 not in approved_shas]
    raw = conn.connection.driver_connection
    with raw.pipeline(), raw.cursor() as cur:
        for status, shas in ((LOADED, loaded), (NEEDS_REVIEW, review)):
            if shas:
                cur.execute(_SET_STATE_SQL, {"status": status, "shas": shas})
        return meanwhile()


def _copy(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``COPY table (columns) FROM STDIN`` on the SQLAlchemy connection's own psycopg connection (same transaction)."""
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


_OUTBOX_INSERT = (
    "INSERT INTO erp_outbox (idempotency_key, document_sha256, payload, payload_hash, status) "
    "VALUES (:key, :sha, :payload, :hash, 'pending') ON CONFLICT DO NOTHING"
)
_OUTBOX_KEYS_ORDER = ("key", "sha", "payload", "hash")


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The outbox text of an ERP payload: compact JSON, keys sorted, UTF-8, decimals as strings ("12.50").

    The same bytes on PostgreSQL and SQLite, and what ``json.dumps(payload, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, default=str)`` writes for finite numbers (NaN becomes ``null``: valid JSON for any ERP).
    orjson, not ``json``: encoding was a third of the client's time in the bulk load.
    """
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)


def _outbox_values(inv: ValidatedInvoice) -> tuple[str, str, str, str]:
    """``(idempotency key, document hash, payload, payload hash)`` of an approved invoice."""
    payload = encode_payload(erp_payload(inv))
    return (
        idempotency_key(inv.header["vendor_name"], inv.header["invoice_number"]),
        inv.document_sha256,
        payload.decode(),
        hashlib.sha256(payload).hexdigest(),
    )


def _outbox_row(inv: ValidatedInvoice) -> dict[str, Any]:
    return dict(zip(_OUTBOX_KEYS_ORDER, _outbox_values(inv), strict=True))


def _enqueue_outbox(conn: Connection, inv: ValidatedInvoice) -> int:
    """Insert the outbox row of an approved invoice once; an invoice already queued (or posted) is left alone."""
    return conn.execute(sa.text(_OUTBOX_INSERT), _outbox_row(inv)).rowcount


#: ``_OUTBOX_INSERT`` for many rows at once (arrays of the ``_outbox_values`` columns), first document hash first.
_OUTBOX_INSERT_MANY = (
    "INSERT INTO erp_outbox (idempotency_key, document_sha256, payload, payload_hash, status) "
    "SELECT k, sha, payload, hash, 'pending' FROM unnest(%(key)b::text[], %(sha)b::text[], %(payload)b::text[], "
    "%(hash)b::text[]) AS r(k, sha, payload, hash) ORDER BY sha ON CONFLICT DO NOTHING"
)


def _queue_outbox(
    conn: Connection,
    approved: Sequence[ValidatedInvoice],
    encoded: Sequence[tuple[str, str, str, str]],
    *,
    optimistic: bool,
) -> int:
    """PostgreSQL: ``_enqueue_outbox`` for the approved invoices of a batch (sorted by document hash), set-based.

    ``encoded`` holds the ``_outbox_values`` of the first of them; the others are encoded while the server stores
    the rows before them (``COPY``). ``COPY`` cannot skip a conflict, so it runs in a savepoint; if an approved
    invoice is already queued (its idempotency key or its document), the batch goes through ``ON CONFLICT DO
    NOTHING`` instead, as it does at once after a reload.
    """
    from psycopg.errors import UniqueViolation

    if not approved:
        return 0
    if optimistic:
        try:
            with conn.begin_nested():
                values = itertools.chain(encoded, map(_outbox_values, approved[len(encoded) :]))
                _copy(conn, "erp_outbox", _OUTBOX_COLUMNS, ((*row, "pending") for row in values))
            return len(approved)
        except UniqueViolation:
            pass
    rows = [*encoded, *map(_outbox_values, approved[len(encoded) :])]
    columns = zip(*rows, strict=True)
    return conn.exec_driver_sql(
        _OUTBOX_INSERT_MANY, dict(zip(_OUTBOX_KEYS_ORDER, map(list, columns), strict=True))
    ).rowcount


# --------------------------------------------------------------------------------------------------- ERP outbox

#: Outbox states the relay still has to act on. ``unknown`` means sent without an answer: read back first.
RELAY_STATES = ("pending", "unknown")
#: States nothing acts on any more (``dead_letter`` waits for an analyst: see :func:`requeue_outbox`).
OUTBOX_TERMINAL_STATES = ("posted", "duplicate", "rejected", "dead_letter")
#: Failures (a send without an answer, a refused batch, a failed read-back) before a row goes to ``dead_letter``.
DEFAULT_MAX_OUTBOX_FAILURES = 5

_OUTBOX_KEYS = sa.bindparam("keys", expanding=True)


def outbox_keys_to_relay(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT idempotency_key FROM erp_outbox WHERE status IN ('pending', 'unknown') "
                "ORDER BY created_at, idempotency_key"
            )
        )
        return list(rows.scalars())


def outbox_rows(engine: Engine, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The rows among ``keys`` still to relay (``pending`` or ``unknown``), in key order."""
    if not keys:
        return []
    stmt = sa.text(
        "SELECT idempotency_key, document_sha256, payload, payload_hash, status, attempts, failures, batch_key, "
        "last_error FROM erp_outbox WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown') "
        "ORDER BY idempotency_key"
    ).bindparams(_OUTBOX_KEYS)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt, {"keys": list(keys)})]


def mark_outbox_in_flight(engine: Engine, keys: Iterable[str], batch_key: str | None = None) -> None:
    """Before sending: a crash from here on leaves ``unknown``, which is read back before any resend."""
    stmt = sa.text(
        "UPDATE erp_outbox SET status = 'unknown', attempts = attempts + 1, "
        "batch_key = COALESCE(:batch_key, batch_key), updated_at = CURRENT_TIMESTAMP "
        "WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown')"
    ).bindparams(_OUTBOX_KEYS)
    with engine.begin() as conn:
        conn.execute(stmt, {"keys": list(keys), "batch_key": batch_key})


def release_outbox(engine: Engine, keys: Iterable[str], error: str) -> None:
    """The ERP applied nothing (e.g. rate-limited): the rows go back to ``pending``, no failure counted."""
    stmt = sa.text(
        "UPDATE erp_outbox SET status = 'pending', last_error = :error, updated_at = CURRENT_TIMESTAMP "
        "WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown')"
    ).bindparams(_OUTBOX_KEYS)
    with engine.begin() as conn:
        conn.execute(stmt, {"keys": list(keys), "error": error})


def record_outbox_outcomes(
    engine: Engine, outcomes: Iterable[tuple[str, str, str | None, str | None]]
) -> None:
    """Store ``(key, status, remote_id, error)`` per item, in one transaction.

    ``unknown`` (sent, no answer) counts as a failure; the relay reads such rows back before anything is resent.
    """
    rows = [
        {
            "key": key,
            "status": status,
            "remote": remote_id,
            "error": error,
            "inc": 1 if status == "unknown" else 0,
            "fin": 1 if status in OUTBOX_TERMINAL_STATES else 0,
        }
        for key, status, remote_id, error in outcomes
    ]
    if not rows:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE erp_outbox SET status = :status, remote_id = COALESCE(:remote, remote_id), "
                "last_error = :error, failures = failures + :inc, "
                "finished_at = CASE WHEN :fin = 1 THEN CURRENT_TIMESTAMP ELSE finished_at END, "
                "updated_at = CURRENT_TIMESTAMP WHERE idempotency_key = :key"
            ),
            rows,
        )


def record_outbox_failures(
    engine: Engine,
    keys: Iterable[str],
    error: str,
    *,
    status: str,
    max_failures: int = DEFAULT_MAX_OUTBOX_FAILURES,
) -> None:
    """Count one failure per row and leave it in ``status`` (``pending`` if nothing was applied, else
    ``unknown``), or move it to ``dead_letter`` once it has failed ``max_failures`` times."""
    stmt = sa.text(
        "UPDATE erp_outbox SET failures = failures + 1, last_error = :error, "
        "status = CASE WHEN failures + 1 >= :max THEN 'dead_letter' ELSE :status END, "
        "finished_at = CASE WHEN failures + 1 >= :max THEN CURRENT_TIMESTAMP ELSE finished_at END, "
        "updated_at = CURRENT_TIMESTAMP WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown')"
    ).bindparams(_OUTBOX_KEYS)
    with engine.begin() as conn:
        conn.execute(stmt, {"keys": list(keys), "error": error, "status": status, "max": max_failures})


def dead_letter_outbox(engine: Engine, keys: Iterable[str], reason: str) -> None:
    """Give up on rows now (e.g. the payload no longer matches its hash); ``reason`` is what analysts see."""
    stmt = sa.text(
        "UPDATE erp_outbox SET status = 'dead_letter', last_error = :reason, finished_at = CURRENT_TIMESTAMP, "
        "updated_at = CURRENT_TIMESTAMP WHERE idempotency_key IN :keys AND status IN ('pending', 'unknown')"
    ).bindparams(_OUTBOX_KEYS)
    with engine.begin() as conn:
        conn.execute(stmt, {"keys": list(keys), "reason": reason})


def outbox_attention(engine: Engine) -> list[dict[str, Any]]:
    """Rejected and dead-lettered invoices with the reason (the ``erp_outbox_attention`` view)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT * FROM erp_outbox_attention ORDER BY status, updated_at, idempotency_key")
        )
        return [dict(r._mapping) for r in rows]


def requeue_outbox(engine: Engine, keys: Sequence[str]) -> int:
    """An analyst retries dead-lettered rows: ones that were ever sent come back as ``unknown`` (read back
    first, so a bill the ERP did store is linked, not posted again), the others as ``pending``."""
    stmt = sa.text(
        "UPDATE erp_outbox SET status = CASE WHEN attempts > 0 THEN 'unknown' ELSE 'pending' END, "
        "failures = 0, finished_at = NULL, updated_at = CURRENT_TIMESTAMP "
        "WHERE idempotency_key IN :keys AND status = 'dead_letter'"
    ).bindparams(_OUTBOX_KEYS)
    with engine.begin() as conn:
        return conn.execute(stmt, {"keys": list(keys)}).rowcount


def outbox_status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM erp_outbox GROUP BY status"))
        return {status: int(n) for status, n in rows}


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
