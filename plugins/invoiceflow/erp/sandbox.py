"""Stand-in ERP ("sandbox") for local runs and tests of the exactly-once ERP sync.

It mimics the parts of Xero's bill API that matter for idempotent posting (erp-apis.md §1.2, §4, §5.3):
batches of at most 50 bills, a required ``Idempotency-Key`` whose first response is stored and replayed,
per-item outcomes (the ``summarizeErrors=false`` behaviour) and read-back by our marker or by vendor + invoice
number.

The default wire format (``--mode sandbox``) is a simple native JSON dialect. ``--mode xero`` and
``--mode quickbooks`` serve those APIs' shapes over the same ledger (:mod:`invoiceflow.erp.sandbox_dialects`: OAuth
token endpoints, per-tenant rate limits with 429, idempotency keys, Xero's ``summarizeErrors`` trap, QuickBooks
``Fault`` objects and duplicate rule). In every mode ``--error-rate`` injects 5xx before any write,
``--drop-rate`` commits and then drops the connection, ``--seed`` makes the schedule repeatable, ``--time-scale``
compresses rate-limit windows, and ``GET /api/admin/ledger`` / ``GET /api/admin/stats`` show the ledger and the
injected faults.

Credit notes: every ledger row has a ``document_type`` (``invoice``/``credit_note``) and an ``entity`` (the dialect's
credit document: Xero ``CreditNote`` from ``PUT /CreditNotes``, QuickBooks ``VendorCredit``; "" for bills). The
native dialect takes the bill's ``document_type`` (amounts as sent: negative for a credit note), rejects unknown
types and applies the vendor + number duplicate rule per document type; the Xero and QuickBooks dialects refuse a
negative document total (both want a credit document with positive amounts instead).

Run it with ``serve()`` (blocking) or, in tests and demos, ``with running_sandbox(db_path) as base_url: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from invoiceflow.erp.base import document_type
from invoiceflow.erp.sandbox_dialects import (
    MODES,
    DroppedResponse,
    Faults,
    RateLimiter,
    SandboxOptions,
    install_admin,
    install_quickbooks,
    install_xero,
    silence_dropped_connection_errors,
)

logger = logging.getLogger("invoiceflow.erp.sandbox")

MAX_BATCH_SIZE = 50
"""Xero's recommended batch ceiling (erp-apis.md §1.4)."""

MAX_IDEMPOTENCY_KEY_LENGTH = 128
"""Xero documents a 128-character maximum for ``Idempotency-Key``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bills (
    id             TEXT PRIMARY KEY,
    vendor_name    TEXT NOT NULL,
    invoice_number TEXT NOT NULL,
    invoice_date   TEXT,
    due_date       TEXT,
    currency       TEXT,
    total_amount   NUMERIC NOT NULL,
    line_items     TEXT NOT NULL DEFAULT '[]',
    reference      TEXT NOT NULL,
    vendor_key     TEXT NOT NULL,
    number_key     TEXT NOT NULL,
    batch_key      TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bills_reference_idx ON bills (reference);
CREATE INDEX IF NOT EXISTS bills_natural_key_idx ON bills (vendor_key, number_key);
CREATE TABLE IF NOT EXISTS contacts (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS contacts_name_idx ON contacts (tenant, name_key);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT PRIMARY KEY,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    response_body TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
"""

_BILL_COLUMNS = (
    "id, vendor_name, invoice_number, invoice_date, due_date, currency, total_amount, line_items, reference, "
    "batch_key, created_at, tenant, mode, document_type, entity"
)
# Columns added for the Xero / QuickBooks dialects and for credit notes (older ledger files are upgraded in place).
# ``document_type`` is ``invoice`` or ``credit_note``; ``entity`` is the dialect's credit document ("CreditNote",
# "VendorCredit") or "" for its bill entity (Xero Invoices, QuickBooks Bill) and native bills.
_EXTRA_BILL_COLUMNS = {
    "tenant": "TEXT NOT NULL DEFAULT ''",
    "mode": "TEXT NOT NULL DEFAULT 'sandbox'",
    "remote_json": "TEXT",
    "document_type": "TEXT NOT NULL DEFAULT 'invoice'",
    "entity": "TEXT NOT NULL DEFAULT ''",
}
_CURRENCY_RE = re.compile(r"^[A-Za-z]{3}$")
_WHITESPACE_RE = re.compile(r"\s+")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def normalize_key(value: str) -> str:
    """Case- and whitespace-insensitive form used for the vendor + invoice-number duplicate rule."""
    return _WHITESPACE_RE.sub("", value).casefold()


def request_hash(body: Any) -> str:
    """Hash of the parsed body as canonical JSON: key order and whitespace do not make a different request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    """A response as stored under an idempotency key (or freshly produced)."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False
    text: str | None = None  # ``body`` as stored (JSON), so a handler can send it without encoding it again


class IdempotencyKeyReused(Exception):
    """Same ``Idempotency-Key`` with a different body: the IETF draft (and our stand-in) answers 422."""


def _validate_bill(item: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Return (clean bill, None) or (None, reason). Per-item, so one bad bill never sinks the batch."""
    if not isinstance(item, dict):
        return None, "bill must be a JSON object"
    errors: list[str] = []

    def text(field: str, required: bool) -> str | None:
        value = item.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                errors.append(f"{field} is required")
            return None
        if not isinstance(value, str):
            errors.append(f"{field} must be a string")
            return None
        return value.strip()

    reference = text("reference", True)
    try:
        doc_type = document_type(item)
    except ValueError as exc:
        errors.append(str(exc))
        doc_type = None
    vendor_name = text("vendor_name", True)
    invoice_number = text("invoice_number", True)
    invoice_date = text("invoice_date", False)
    due_date = text("due_date", False)
    currency = text("currency", False)

    for field, value in (("invoice_date", invoice_date), ("due_date", due_date)):
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                errors.append(f"{field} must be an ISO date (YYYY-MM-DD)")
    if currency is not None:
        if _CURRENCY_RE.match(currency):
            currency = currency.upper()
        else:
            errors.append("currency must be a 3-letter ISO 4217 code")

    total = item.get("total_amount")
    amount: Decimal | None = None
    if total is None:
        errors.append("total_amount is required")
    elif isinstance(total, bool) or not isinstance(total, int | float | str):
        errors.append("total_amount must be a number")
    else:
        try:
            amount = Decimal(str(total).strip())
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite():
            errors.append("total_amount must be a number")
            amount = None

    line_items = item.get("line_items", [])
    if line_items is None:
        line_items = []
    if not isinstance(line_items, list) or not all(isinstance(li, dict) for li in line_items):
        errors.append("line_items must be a list of objects")

    if errors:
        return None, "; ".join(errors)
    assert amount is not None and vendor_name is not None and invoice_number is not None
    return {
        "reference": reference,
        "vendor_name": vendor_name,
        "invoice_number": invoice_number,
        "invoice_date": invoice_date,
        "due_date": due_date,
        "currency": currency,
        # Stored as a decimal literal in a NUMERIC column; SQLite keeps it as an exact INTEGER or a REAL.
        "total_amount": str(amount),
        "line_items": line_items,
        "document_type": doc_type,
    }, None


def _row_to_bill(row: sqlite3.Row) -> dict[str, Any]:
    bill = dict(row)
    bill["line_items"] = json.loads(bill["line_items"] or "[]")
    return bill


class Ledger:
    """SQLite-backed bill ledger plus idempotency-key store.

    Each thread of the web server's pool keeps its own connection, and writes go through ``BEGIN IMMEDIATE``
    under one in-process lock, so concurrent batches are serialised (queued on the lock instead of in SQLite's
    sleep-and-poll busy handler) and a batch is all-or-nothing together with its stored idempotent response.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            present = {r["name"] for r in conn.execute("PRAGMA table_info(bills)")}
            for column, ddl in _EXTRA_BILL_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE bills ADD COLUMN {column} {ddl}")
        # Held open for the ledger's lifetime: closing the last connection to a WAL database checkpoints it,
        # which would otherwise happen after every request (~10 ms each, more than the request itself).
        self._keeper = sqlite3.connect(self.db_path, check_same_thread=False)
        self._local = threading.local()
        self._write_lock = threading.Lock()

    @contextlib.contextmanager
    def _session(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection (opened once: ~2 ms with its pragmas); ``write`` holds the writer lock."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        if not write:
            yield conn
            return
        with self._write_lock:
            yield conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        # WAL + NORMAL: a commit is atomic and survives a crash of the server process (what the fault tests
        # need) without an fsync per write, which would make the stand-in, not the rate limit, the bottleneck.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def post_batch(self, idempotency_key: str, body_hash: str, bills: list[Any]) -> StoredResponse:
        """Process one batch atomically, or replay the stored response for a repeated key.

        Raises :class:`IdempotencyKeyReused` if the key was first used with a different body.
        """
        with self._session(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = conn.execute(
                    "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE key = ?",
                    (idempotency_key,),
                ).fetchone()
                if stored is not None:
                    conn.execute("ROLLBACK")
                    if stored["request_hash"] != body_hash:
                        raise IdempotencyKeyReused(idempotency_key)
                    return StoredResponse(stored["status_code"], json.loads(stored["response_body"]), True)

                results = [self._post_one(conn, idempotency_key, item) for item in bills]
                response = StoredResponse(200, {"results": results})
                conn.execute(
                    "INSERT INTO idempotency_keys "
                    "(key, request_hash, status_code, response_body, created_at) VALUES (?, ?, ?, ?, ?)",
                    (idempotency_key, body_hash, response.status_code, json.dumps(response.body), _now()),
                )
                conn.execute("COMMIT")
                return response
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def idempotent_write(self, scope_key: str | None, body_hash: str, work: Any) -> StoredResponse:
        """Run ``work(conn) -> StoredResponse`` in one write transaction, stored under ``scope_key`` if given.

        A repeated key with the same body replays the stored response; with another body it raises
        :class:`IdempotencyKeyReused`. Used by the Xero and QuickBooks dialects.
        """
        with self._session(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if scope_key is not None:
                    stored = conn.execute(
                        "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE key = ?",
                        (scope_key,),
                    ).fetchone()
                    if stored is not None:
                        conn.execute("ROLLBACK")
                        if stored["request_hash"] != body_hash:
                            raise IdempotencyKeyReused(scope_key)
                        text = stored["response_body"]
                        return StoredResponse(stored["status_code"], json.loads(text), True, text)
                response = work(conn)
                text = json.dumps(response.body, separators=(",", ":"))
                if scope_key is not None:
                    conn.execute(
                        "INSERT INTO idempotency_keys "
                        "(key, request_hash, status_code, response_body, created_at) VALUES (?, ?, ?, ?, ?)",
                        (scope_key, body_hash, response.status_code, text, _now()),
                    )
                conn.execute("COMMIT")
                return StoredResponse(response.status_code, response.body, False, text)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def next_seq(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM bills").fetchone()[0]

    @staticmethod
    def insert_bill(conn: sqlite3.Connection, seq: int, bill_id: str, **fields: Any) -> None:
        """Insert a dialect bill (``fields``: vendor_name, invoice_number, invoice_date, due_date, currency,
        total_amount, line_items, reference, batch_key, tenant, mode, remote_json; ``document_type`` (invoice) and
        ``entity`` ("" = the dialect's bill entity) for credit documents)."""
        conn.execute(
            "INSERT INTO bills (rowid, id, vendor_name, invoice_number, invoice_date, due_date, currency, "
            "total_amount, line_items, reference, vendor_key, number_key, batch_key, created_at, tenant, mode, "
            "remote_json, document_type, entity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                bill_id,
                fields["vendor_name"],
                fields["invoice_number"] or "",
                fields.get("invoice_date"),
                fields.get("due_date"),
                fields.get("currency"),
                str(fields["total_amount"]),
                json.dumps(fields.get("line_items") or [], default=str),
                fields.get("reference") or "",
                normalize_key(fields["vendor_name"]),
                normalize_key(fields["invoice_number"] or ""),
                fields.get("batch_key"),
                _now(),
                fields.get("tenant") or "",
                fields.get("mode") or "sandbox",
                json.dumps(fields.get("remote_json"), default=str),
                fields.get("document_type") or "invoice",
                fields.get("entity") or "",
            ),
        )

    def remote_bills(self, mode: str, tenant: str, entity: str = "") -> list[dict[str, Any]]:
        """The dialect representation of every bill of one tenant, in creation order; ``entity`` picks the credit
        documents instead ("CreditNote", "VendorCredit")."""
        with self._session() as conn:
            rows = conn.execute(
                "SELECT remote_json FROM bills WHERE mode = ? AND tenant = ? AND entity = ? ORDER BY rowid",
                (mode, tenant, entity),
            ).fetchall()
        return [json.loads(r["remote_json"]) for r in rows if r["remote_json"]]

    def contacts(self, tenant: str) -> list[dict[str, Any]]:
        with self._session() as conn:
            rows = conn.execute(
                "SELECT id, name FROM contacts WHERE tenant = ? ORDER BY rowid", (tenant,)
            ).fetchall()
        return [dict(r) for r in rows]

    @staticmethod
    def contact_by_name(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT id, name FROM contacts WHERE tenant = ? AND name_key = ? ORDER BY rowid LIMIT 1",
            (tenant, normalize_key(name)),
        ).fetchone()
        return dict(row) if row else None

    @staticmethod
    def contact_by_id(conn: sqlite3.Connection, tenant: str, contact_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT id, name FROM contacts WHERE tenant = ? AND id = ?", (tenant, contact_id)
        ).fetchone()
        return dict(row) if row else None

    @staticmethod
    def insert_contact(conn: sqlite3.Connection, tenant: str, contact_id: str, name: str) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO contacts (id, tenant, name, name_key, created_at) VALUES (?, ?, ?, ?, ?)",
            (contact_id, tenant, name, normalize_key(name), _now()),
        )
        return {"id": contact_id, "name": name}

    def write(self, work: Any) -> Any:
        """Run ``work(conn)`` in one write transaction (no idempotency key)."""
        with self._session(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _post_one(self, conn: sqlite3.Connection, batch_key: str, item: Any) -> dict[str, Any]:
        raw_reference = item.get("reference") if isinstance(item, dict) else None
        reference = raw_reference.strip() if isinstance(raw_reference, str) else None
        bill, error = _validate_bill(item)
        if bill is None:
            return {"reference": reference, "status": "rejected", "bill_id": None, "error": error}

        vendor_key = normalize_key(bill["vendor_name"])
        number_key = normalize_key(bill["invoice_number"])
        # The duplicate rule: our marker, or the same vendor + number on a document of the same type (a supplier's
        # credit note is another document than the invoice it may share a number with).
        existing = conn.execute(
            "SELECT id FROM bills WHERE mode = 'sandbox' AND (reference = ? OR (vendor_key = ? AND number_key = ? "
            "AND document_type = ?)) ORDER BY rowid LIMIT 1",
            (bill["reference"], vendor_key, number_key, bill["document_type"]),
        ).fetchone()
        if existing is not None:
            return {"reference": reference, "status": "duplicate", "bill_id": existing["id"], "error": None}

        seq = conn.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM bills").fetchone()[0]
        bill_id = f"BILL-{seq:06d}"
        conn.execute(
            "INSERT INTO bills (rowid, id, vendor_name, invoice_number, invoice_date, due_date, currency, "
            "total_amount, line_items, reference, vendor_key, number_key, batch_key, created_at, document_type) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                bill_id,
                bill["vendor_name"],
                bill["invoice_number"],
                bill["invoice_date"],
                bill["due_date"],
                bill["currency"],
                bill["total_amount"],
                json.dumps(bill["line_items"]),
                bill["reference"],
                vendor_key,
                number_key,
                batch_key,
                _now(),
                bill["document_type"],
            ),
        )
        return {"reference": reference, "status": "created", "bill_id": bill_id, "error": None}

    def find(
        self,
        *,
        reference: str | None = None,
        vendor_name: str | None = None,
        invoice_number: str | None = None,
    ) -> list[dict[str, Any]]:
        """Bills matching our marker and/or the normalised vendor + invoice number (read-back)."""
        clauses: list[str] = []
        params: list[str] = []
        if reference is not None:
            clauses.append("reference = ?")
            params.append(reference.strip())
        if vendor_name is not None:
            clauses.append("vendor_key = ?")
            params.append(normalize_key(vendor_name))
        if invoice_number is not None:
            clauses.append("number_key = ?")
            params.append(normalize_key(invoice_number))
        where = " AND ".join(clauses) if clauses else "1 = 1"
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT {_BILL_COLUMNS} FROM bills WHERE {where} ORDER BY rowid", params
            ).fetchall()
        return [_row_to_bill(r) for r in rows]

    def get(self, bill_id: str) -> dict[str, Any] | None:
        with self._session() as conn:
            row = conn.execute(f"SELECT {_BILL_COLUMNS} FROM bills WHERE id = ?", (bill_id,)).fetchone()
        return _row_to_bill(row) if row is not None else None


def _error(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status_code, headers=headers)


def create_app(db_path: Path, *, token: str | None = None, options: SandboxOptions | None = None) -> FastAPI:
    """Build the sandbox app over the SQLite ledger at ``db_path`` (created if missing).

    ``options.mode`` picks the wire dialect: ``sandbox`` (the native JSON API below), ``xero`` or ``quickbooks``
    (:mod:`invoiceflow.erp.sandbox_dialects`). The admin routes (``/api/admin/ledger``, ``/api/admin/stats``,
    ``POST /api/admin/revoke-tokens``) exist in every mode.

    If ``token`` is set (native mode), every route except ``/health`` requires ``Authorization: Bearer <token>``.
    """
    options = options or SandboxOptions()
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    ledger = Ledger(db_path)
    app = FastAPI(
        title=f"invoiceflow ERP sandbox ({options.mode})", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ledger = ledger
    app.state.options = options
    faults = Faults(options)
    app.state.faults = faults
    install_admin(app, faults)
    if options.drop_rate:
        silence_dropped_connection_errors()
    if options.mode == "xero":
        install_xero(app, ledger, options, faults, RateLimiter(options.clock or time.monotonic))
    elif options.mode == "quickbooks":
        install_quickbooks(app, ledger, options, faults, RateLimiter(options.clock or time.monotonic))

    if token and options.mode == "sandbox":
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def require_bearer(request: Request, call_next: Any) -> Response:
            if request.url.path != "/health":
                supplied = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(supplied, expected):
                    return _error(
                        401,
                        "unauthorized",
                        "missing or invalid bearer token",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "mode": options.mode}

    @app.get("/api/admin/ledger")
    def admin_ledger() -> Response:
        bills = ledger.find()
        return JSONResponse({"count": len(bills), "bills": bills})

    if options.mode != "sandbox":
        return app

    # Async so the raw body can be hashed; the short blocking SQLite work runs in the thread pool.
    @app.post("/api/bills:batch")
    async def post_bills_batch(request: Request) -> Response:
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _error(400, "missing_idempotency_key", "the Idempotency-Key header is required")
        if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            return _error(
                400, "invalid_idempotency_key", f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH}"
            )
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "invalid_json", "request body is not valid JSON")
        bills = body.get("bills") if isinstance(body, dict) else None
        if not isinstance(bills, list) or not bills:
            return _error(400, "invalid_batch", "body must be an object with a non-empty 'bills' list")
        if len(bills) > MAX_BATCH_SIZE:
            return _error(
                400, "batch_too_large", f"a batch holds at most {MAX_BATCH_SIZE} bills, got {len(bills)}"
            )

        if (injected := faults.error()) is not None:
            return injected
        try:
            result = await run_in_threadpool(ledger.post_batch, key, request_hash(body), bills)
        except IdempotencyKeyReused:
            return _error(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        counts: dict[str, int] = {}
        for item in result.body.get("results", []):
            counts[item["status"]] = counts.get(item["status"], 0) + 1
        logger.info("batch key=%s replayed=%s %s", key, result.replayed, counts)
        if faults.drop():
            return DroppedResponse()
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)

    @app.get("/api/bills")
    def list_bills(
        reference: str | None = None, vendor_name: str | None = None, invoice_number: str | None = None
    ) -> Response:
        if reference is None and (vendor_name is None or invoice_number is None):
            return _error(
                400, "missing_filter", "give 'reference' or both 'vendor_name' and 'invoice_number'"
            )
        bills = ledger.find(reference=reference, vendor_name=vendor_name, invoice_number=invoice_number)
        return JSONResponse({"bills": bills})

    @app.get("/api/bills/{bill_id}")
    def get_bill(bill_id: str) -> Response:
        bill = ledger.get(bill_id)
        if bill is None:
            return _error(404, "not_found", f"no bill {bill_id}")
        return JSONResponse(bill)

    return app


def serve(
    host: str, port: int, db_path: Path, *, token: str | None = None, options: SandboxOptions | None = None
) -> None:
    """Run the sandbox in the foreground (blocking) — what ``invoiceflow erp-sandbox`` calls."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("ERP sandbox listening on %s: it is a test double, keep it off shared networks", host)
    uvicorn.run(
        create_app(db_path, token=token, options=options),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
    )


@contextlib.contextmanager
def running_sandbox(
    db_path: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    options: SandboxOptions | None = None,
    **option_kwargs: Any,
) -> Iterator[str]:
    """Run the sandbox on a background thread for the duration of a ``with`` block; yields its base URL.

    ``port=0`` binds a free port up front (no race between picking and binding), keeping parallel tests apart.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    if option_kwargs:
        options = SandboxOptions(**{**(vars(options) if options else {}), **option_kwargs})
    config = uvicorn.Config(
        create_app(db_path, token=token, options=options),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="erp-sandbox", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("ERP sandbox failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("ERP sandbox did not start within 10 s")
            time.sleep(0.01)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m invoiceflow.erp.sandbox``; the ``invoiceflow`` CLI can delegate here."""
    parser = argparse.ArgumentParser(prog="invoiceflow erp-sandbox", description="Run the stand-in ERP.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_from_args(args)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox options to an (sub)parser, so the main CLI and ``main`` share them."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--db", type=Path, default=Path(".invoiceflow/erp_sandbox.db"), help="SQLite ledger file"
    )
    parser.add_argument(
        "--token-env",
        default="INVOICEFLOW_ERP_TOKEN",
        help="environment variable holding the bearer token to require (unset = no auth)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="sandbox",
        help="wire dialect: native sandbox API, Xero or QuickBooks Online",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for the fault schedule (repeatable runs)"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of calls answered 500/503 before any write"
    )
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of writes committed, then the connection dropped"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="divide rate-limit windows (60: 60 calls/min becomes 60 calls/s)",
    )
    parser.add_argument("--minute-limit", type=int, default=60, help="Xero calls per minute and tenant")
    parser.add_argument("--concurrent-limit", type=int, default=5, help="Xero calls in flight per tenant")
    parser.add_argument("--day-limit", type=int, default=5000, help="Xero calls per day and tenant")
    parser.add_argument(
        "--qbo-batch-limit", type=int, default=40, help="QuickBooks batch calls per minute and realm"
    )
    parser.add_argument(
        "--qbo-allow-duplicates",
        action="store_true",
        help="QuickBooks: accept duplicate DocNumbers (default: the 'warn on duplicate' preference, error 6140)",
    )
    parser.add_argument("--token-ttl", type=float, default=1800.0, help="access-token lifetime in seconds")
    parser.add_argument("--client-id", default=None, help="OAuth client id to require (default: accept any)")
    parser.add_argument(
        "--client-secret-env",
        default="INVOICEFLOW_ERP_CLIENT_SECRET",
        help="environment variable holding the OAuth client secret to require with --client-id",
    )


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    if args.time_scale <= 0:
        raise SystemExit("--time-scale must be > 0")
    return SandboxOptions(
        mode=args.mode,
        seed=args.seed,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        time_scale=args.time_scale,
        minute_limit=args.minute_limit,
        concurrent_limit=args.concurrent_limit,
        day_limit=args.day_limit,
        qbo_batch_limit=args.qbo_batch_limit,
        qbo_duplicate_check=not args.qbo_allow_duplicates,
        token_ttl=args.token_ttl,
        client_id=args.client_id,
        client_secret=os.environ.get(args.client_secret_env) if args.client_id else None,
    )


def run_from_args(args: argparse.Namespace) -> None:
    """Start the server from ``add_arguments`` options; secrets come from the environment, not argv."""
    token = os.environ.get(args.token_env) or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port, args.db, token=token, options=options_from_args(args))


if __name__ == "__main__":
    raise SystemExit(main())
