"""Xero and QuickBooks Online dialects of the stand-in ERP, over the sandbox's SQLite ledger (erp-apis.md §5.3).

Shared behaviour (``SandboxOptions``):

- **Rate limits** per tenant/realm over a sliding window divided by ``time_scale`` (``--time-scale 60`` turns
  Xero's 60 calls/minute into 60 calls/second). Xero: ``minute_limit`` (60) calls, ``concurrent_limit`` (5)
  in flight, ``day_limit`` (5000); 429 with ``Retry-After`` (seconds, fractional when scaled) and
  ``X-Rate-Limit-Problem`` (``minute``/``concurrent``/``day``); ``X-MinLimit-Remaining``/``X-DayLimit-Remaining`` on
  every answer. QuickBooks: ``qbo_batch_limit`` (40) batch calls/minute per realm and ``qbo_minute_limit`` (500)
  calls/minute; 429 with the XML ``ThrottleExceeded`` 3001 fault and no ``Retry-After`` (as Intuit does).
- **Idempotency**: Xero ``Idempotency-Key`` (<= 128), QuickBooks ``requestid`` (<= 36 on batch, ``bId`` <= 10):
  same key + same body replays the stored answer, same key + another body is 422.
- **Faults** (seeded by ``seed``): ``error_rate`` answers 500/503 *before* anything is written; ``drop_rate`` commits
  the write and then drops the connection mid-response (the client sees a protocol error: the ambiguous case).
- **Auth**: Xero ``POST /connect/token`` (client credentials, HTTP Basic), QuickBooks
  ``POST /oauth2/v1/tokens/bearer`` (refresh token, rotated). Access tokens live ``token_ttl`` seconds; ``POST
  /api/admin/revoke-tokens`` expires them all (to test a 401 + refresh).
- The ledger's ``reference`` column holds our marker: the last path segment of Xero's ``Url``, QuickBooks'
  ``PrivateNote`` without its ``invoiceflow:`` prefix.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import math
import random
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

MODES = ("sandbox", "xero", "quickbooks")
_NS = uuid.UUID("6f6b1c1e-55a4-4a63-9a43-6c1a3c1b0f00")
_CENT = Decimal("0.01")
XERO_ACCOUNT_CODES = frozenset({"200", "300", "310", "400", "404", "408", "429", "453", "461", "493"})
QBO_EXPENSE_ACCOUNTS = frozenset({"7", "57", "58", "59", "60"})
MARKER_PREFIX_QBO = "invoiceflow:"


@dataclass
class SandboxOptions:
    mode: str = "sandbox"
    seed: int | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    time_scale: float = 1.0
    minute_limit: int = 60
    concurrent_limit: int = 5
    day_limit: int = 5000
    qbo_batch_limit: int = 40
    qbo_minute_limit: int = 500
    qbo_duplicate_check: bool = True
    token_ttl: float = 1800.0
    client_id: str | None = None
    client_secret: str | None = None
    clock: Callable[[], float] | None = None  # rate-limit clock (tests inject a fake one; default: monotonic)


class _Dropped(Exception):
    """Raised after a partial response: uvicorn then closes the connection (the response is lost)."""


class DroppedResponse(Response):
    """Starts a 200 response, sends part of it and breaks the connection: the write is committed, the answer lost."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"Invoi', "more_body": True})
        raise _Dropped("connection dropped after commit (injected fault)")


class Faults:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self.counts = {"errors": 0, "drops": 0, "rate_limited": 0}

    def error(self) -> Response | None:
        with self._lock:
            if self.options.error_rate <= 0 or self._rng.random() >= self.options.error_rate:
                return None
            status = self._rng.choice((500, 503))
            self.counts["errors"] += 1
        return JSONResponse({"Message": "An error occurred (injected)", "status": status}, status_code=status)

    def drop(self) -> bool:
        with self._lock:
            if self.options.drop_rate <= 0 or self._rng.random() >= self.options.drop_rate:
                return False
            self.counts["drops"] += 1
            return True


class RateLimiter:
    """Sliding-window call counters and in-flight slots per tenant; windows are divided by ``time_scale``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, str], deque[float]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, scope: str, limit: int, window: float) -> tuple[float | None, int]:
        """Record a call; returns (retry_after or None, remaining)."""
        now = self._clock()
        with self._lock:
            calls = self._calls.setdefault((scope, str(window)), deque())
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= limit:
                return max(0.001, calls[0] + window - now), 0
            calls.append(now)
            return None, limit - len(calls)

    def acquire(self, tenant: str, limit: int) -> bool:
        with self._lock:
            if self._inflight.get(tenant, 0) >= limit:
                return False
            self._inflight[tenant] = self._inflight.get(tenant, 0) + 1
            return True

    def release(self, tenant: str) -> None:
        with self._lock:
            self._inflight[tenant] -= 1


class Tokens:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self.issued = 0

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.ttl
            self.issued += 1
        return token

    def valid(self, header: str) -> bool:
        if not header.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(header[7:])
        return expiry is not None and expiry > time.monotonic()

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()


def _ms_date(dt: datetime | None = None) -> str:
    dt = dt or datetime.now(UTC)
    return f"/Date({int(dt.timestamp() * 1000)}+0000)/"


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _num(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


def _iso_date(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return date.fromisoformat(value[:10]).isoformat()
    return None


def _retry_after_text(seconds: float, time_scale: float) -> str:
    return str(math.ceil(seconds)) if time_scale == 1 else f"{seconds:.3f}"


def _basic_client(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        login, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return login, password


def _client_ok(options: SandboxOptions, client: tuple[str, str] | None) -> bool:
    if client is None:
        return False
    if options.client_id is None:
        return True
    return hmac.compare_digest(client[0], options.client_id) and hmac.compare_digest(
        client[1], options.client_secret or ""
    )


def _marker_from_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] if url else ""


def _json_hash(body: Any) -> str:
    from invoiceflow.erp.sandbox import request_hash

    return request_hash(body)


# ================================================================================================= Xero


_WHERE_CLAUSE = re.compile(r'^\s*([A-Za-z.]+)\s*(==|!=)\s*"((?:[^"\\]|\\.)*)"\s*$')


def _where_matches(where: str | None, invoice: dict[str, Any]) -> bool:
    """Xero's ``where``: ``Field=="value"`` / ``!=`` clauses joined by AND, alternatives joined by OR (AND binds
    tighter, no parentheses)."""
    if not where:
        return True
    return any(
        _all_clauses_match(group, invoice)
        for group in re.split(r"\s+OR\s+", where.strip(), flags=re.IGNORECASE)
    )


def _all_clauses_match(where: str, invoice: dict[str, Any]) -> bool:
    for clause in re.split(r"\s+AND\s+", where.strip(), flags=re.IGNORECASE):
        m = _WHERE_CLAUSE.match(clause)
        if not m:
            raise ValueError(f"unsupported where clause: {clause!r}")
        field, op, raw = m.groups()
        expected = raw.replace('\\"', '"').replace("\\\\", "\\")
        value: Any = invoice
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        equal = str(value) == expected if value is not None else False
        if (op == "==") != equal:
            return False
    return True


def install_xero(
    app: FastAPI, ledger: Any, options: SandboxOptions, faults: Faults, limiter: RateLimiter
) -> None:
    tokens = Tokens(options.token_ttl)
    app.state.tokens = tokens
    scale = options.time_scale
    minute_window = 60.0 / scale
    day_window = 86400.0 / scale

    def xero_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"Title": "Error", "Status": status, "Detail": message, "Message": message},
            status,
            headers=headers,
        )

    @contextlib.asynccontextmanager
    async def api_call(
        request: Request, *, inject_faults: bool = False
    ) -> AsyncIterator[tuple[str, dict[str, str]] | Response]:
        """Auth, tenant, rate limits (then, with ``inject_faults``, an injected 5xx); yields (tenant, headers) or
        an error response."""
        if not tokens.valid(request.headers.get("authorization", "")):
            yield JSONResponse(
                {
                    "Type": None,
                    "Title": "Unauthorized",
                    "Status": 401,
                    "Detail": "AuthenticationUnsuccessful",
                },
                401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            return
        tenant = request.headers.get("xero-tenant-id", "").strip()
        if not tenant:
            yield xero_error(403, "AuthorizationUnsuccessful: xero-tenant-id header is required")
            return
        if not limiter.acquire(tenant, options.concurrent_limit):
            faults.counts["rate_limited"] += 1
            yield xero_error(
                429,
                "Rate limit exceeded",
                {
                    "Retry-After": _retry_after_text(1.0 / scale, scale),
                    "X-Rate-Limit-Problem": "concurrent",
                },
            )
            return
        try:
            day_wait, day_left = limiter.check(f"xero-day:{tenant}", options.day_limit, day_window)
            wait, minute_left = (
                (None, 0)
                if day_wait
                else limiter.check(f"xero-min:{tenant}", options.minute_limit, minute_window)
            )
            if day_wait or wait:
                faults.counts["rate_limited"] += 1
                problem = "day" if day_wait else "minute"
                yield xero_error(
                    429,
                    "Rate limit exceeded",
                    {
                        "Retry-After": _retry_after_text(day_wait or wait or 1.0, scale),
                        "X-Rate-Limit-Problem": problem,
                        "X-MinLimit-Remaining": "0" if problem == "minute" else str(minute_left),
                        "X-DayLimit-Remaining": str(day_left),
                    },
                )
                return
            if inject_faults and (err := faults.error()) is not None:
                yield err
                return
            yield (
                tenant,
                {
                    "X-MinLimit-Remaining": str(minute_left),
                    "X-DayLimit-Remaining": str(day_left),
                    "X-AppMinLimit-Remaining": "9999",
                },
            )
        finally:
            limiter.release(tenant)

    @app.post("/connect/token")
    async def token(request: Request) -> Response:
        form = dict(await request.form())
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if not _client_ok(options, _basic_client(request)):
            return JSONResponse({"error": "invalid_client"}, 400)
        return JSONResponse(
            {
                "access_token": tokens.issue(),
                "expires_in": int(options.token_ttl),
                "token_type": "Bearer",
                "scope": form.get("scope", ""),
            }
        )

    @app.get("/connections")
    def connections(request: Request) -> Response:
        if not tokens.valid(request.headers.get("authorization", "")):
            return JSONResponse({"Detail": "AuthenticationUnsuccessful"}, 401)
        return JSONResponse(
            [{"id": str(uuid.uuid5(_NS, "conn")), "tenantId": "sandbox-tenant", "tenantType": "ORGANISATION"}]
        )

    def validate_invoice(
        conn: sqlite3.Connection, tenant: str, inv: Any, credit: bool = False
    ) -> tuple[dict[str, Any], list[str]]:
        """Validate an invoice (``PUT /Invoices``) or, with ``credit``, a credit note (``PUT /CreditNotes``: Type
        ACCPAYCREDIT/ACCRECCREDIT, ``CreditNoteNumber``, no ``Url``, no due date required)."""
        errors: list[str] = []
        if not isinstance(inv, dict):
            return {"_raw": inv}, [f"{'CreditNote' if credit else 'Invoice'} must be an object"]
        inv_type = inv.get("Type")
        if credit and inv_type not in ("ACCPAYCREDIT", "ACCRECCREDIT"):
            errors.append(f"Credit Note Type '{inv_type}' is not valid")
        elif not credit and inv_type not in ("ACCPAY", "ACCPAYCREDIT", "ACCREC", "ACCRECCREDIT"):
            errors.append(f"Invoice Type '{inv_type}' is not valid")
        status = inv.get("Status", "DRAFT")
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            errors.append(f"Invoice Status '{status}' is not valid for creation")
        contact = inv.get("Contact") if isinstance(inv.get("Contact"), dict) else {}
        contact_row = None
        if contact.get("ContactID"):
            contact_row = ledger.contact_by_id(conn, tenant, str(contact["ContactID"]))
            if contact_row is None:
                errors.append("The contact could not be found (ContactID)")
        elif isinstance(contact.get("Name"), str) and contact["Name"].strip():
            contact_row = {"id": None, "name": contact["Name"].strip()}
        else:
            errors.append("A Contact must be specified for this type of transaction")
        for field in ("Date", "DueDate"):
            if inv.get(field) is not None and _iso_date(inv[field]) is None:
                errors.append(f"{field} is not a valid date")
        if not credit and status in ("SUBMITTED", "AUTHORISED") and not inv.get("DueDate"):
            errors.append("Due Date is required for invoices that are SUBMITTED or AUTHORISED")
        currency = inv.get("CurrencyCode")
        if currency is not None and not (
            isinstance(currency, str) and re.fullmatch(r"[A-Za-z]{3}", currency)
        ):
            errors.append(f"The currency code '{currency}' is not valid")
        number_field = "CreditNoteNumber" if credit else "InvoiceNumber"
        number = inv.get(number_field)
        if number is not None and (not isinstance(number, str) or len(number) > 255):
            errors.append(f"{number_field} must be a string of at most 255 characters")
        url = inv.get("Url")
        if not credit and url is not None and not (isinstance(url, str) and re.match(r"^https?://\S+$", url)):
            errors.append("The Url is not valid")
        lines = inv.get("LineItems")
        subtotal = tax_total = Decimal(0)
        out_lines = []
        if not isinstance(lines, list) or not lines:
            errors.append("At least one line item is required")
            lines = []
        for n, line in enumerate(lines, 1):
            if not isinstance(line, dict):
                errors.append(f"Line item {n} must be an object")
                continue
            if (
                inv_type
                and str(inv_type).startswith("ACCPAY")
                and (line.get("DiscountRate") is not None or line.get("DiscountAmount") is not None)
            ):
                errors.append("Discounts are not supported on ACCPAY invoices")
            code = line.get("AccountCode")
            if code is None:
                errors.append(f"Line item {n}: an AccountCode is required")
            elif str(code) not in XERO_ACCOUNT_CODES:
                errors.append(f"Account code '{code}' is not a valid code for this document.")
            qty = _dec(line.get("Quantity", 1))
            unit = _dec(line.get("UnitAmount"))
            amount = _dec(line.get("LineAmount"))
            if qty is None or (unit is None and amount is None):
                errors.append(f"Line item {n}: Quantity and UnitAmount must be numbers")
                continue
            if amount is None:
                amount = (qty * unit).quantize(_CENT, ROUND_HALF_UP)  # type: ignore[operator]
            tax = _dec(line.get("TaxAmount")) or Decimal(0)
            subtotal += amount
            tax_total += tax
            out_lines.append(
                {
                    "LineItemID": str(uuid.uuid4()),
                    "Description": line.get("Description"),
                    "Quantity": _num(qty),
                    "UnitAmount": _num(unit) if unit is not None else _num(amount / qty if qty else amount),
                    "LineAmount": _num(amount),
                    "AccountCode": code,
                    "TaxType": line.get("TaxType"),
                    "TaxAmount": _num(tax),
                }
            )
        total = subtotal + (tax_total if inv.get("LineAmountTypes", "Exclusive") == "Exclusive" else 0)
        if total < 0:
            # A document's total is never negative: a supplier's credit is a credit note, with positive amounts.
            errors.append(f"The {'credit note' if credit else 'invoice'} total cannot be negative")
        return {
            "contact": contact_row,
            "status": status,
            "lines": out_lines,
            "subtotal": subtotal,
            "tax": tax_total,
            "total": total,
        }, errors

    def put_invoices_work(
        tenant: str, key: str | None, invoices: list[Any], summarize: bool, credit: bool = False
    ) -> Callable:
        """Create invoices or, with ``credit``, credit notes (stored as ``entity`` "CreditNote", ``document_type``
        credit_note, with Xero's positive amounts; a Xero credit note has no ``Url``, so no marker either)."""
        collection = "CreditNotes" if credit else "Invoices"

        def work(conn: sqlite3.Connection) -> Any:
            from invoiceflow.erp.sandbox import StoredResponse

            results = []
            failed = []
            contacts: dict[str, dict[str, Any]] = {}  # by name, for this batch (one lookup per vendor)
            seq = ledger.next_seq(conn) - 1  # the batch holds the write lock: number its bills in order
            for inv in invoices:
                checked, errors = validate_invoice(conn, tenant, inv, credit)
                if errors:
                    echo = dict(inv) if isinstance(inv, dict) else {}
                    echo.update(
                        {
                            "HasErrors": True,
                            "StatusAttributeString": "ERROR",
                            "ValidationErrors": [{"Message": m} for m in errors],
                        }
                    )
                    results.append(echo)
                    failed.append(echo)
                    continue
                contact = checked["contact"]
                if contact["id"] is None:
                    name = contact["name"]
                    contact = contacts.get(name) or ledger.contact_by_name(conn, tenant, name)
                    contact = contact or ledger.insert_contact(
                        conn, tenant, str(uuid.uuid5(_NS, f"contact:{tenant}:{name.casefold()}")), name
                    )
                    contacts[name] = contact
                seq += 1
                invoice_id = str(uuid.uuid5(_NS, f"{'credit-note' if credit else 'invoice'}:{seq}"))
                common = {
                    "Contact": {"ContactID": contact["id"], "Name": contact["name"]},
                    "Date": _iso_date(inv.get("Date")) or date.today().isoformat(),
                    "DueDate": _iso_date(inv.get("DueDate")),
                    "Status": checked["status"],
                    "LineAmountTypes": inv.get("LineAmountTypes", "Exclusive"),
                    "LineItems": checked["lines"],
                    "SubTotal": _num(checked["subtotal"]),
                    "TotalTax": _num(checked["tax"]),
                    "Total": _num(checked["total"]),
                    "CurrencyCode": (inv.get("CurrencyCode") or "USD").upper(),
                    "UpdatedDateUTC": _ms_date(),
                    "HasErrors": False,
                    "StatusAttributeString": "OK",
                }
                if credit:
                    remote = {
                        "Type": inv["Type"],
                        "CreditNoteID": invoice_id,
                        "CreditNoteNumber": inv.get("CreditNoteNumber") or "",
                        "Reference": inv.get("Reference") or "",
                        **common,
                        "RemainingCredit": common["Total"],
                    }
                    number = remote["CreditNoteNumber"]
                else:
                    remote = {
                        "Type": inv["Type"],
                        "InvoiceID": invoice_id,
                        "InvoiceNumber": inv.get("InvoiceNumber") or "",
                        "Reference": inv.get("Reference") or "",
                        "Url": inv.get("Url"),
                        **common,
                    }
                    number = remote["InvoiceNumber"]
                ledger.insert_bill(
                    conn,
                    seq,
                    invoice_id,
                    vendor_name=contact["name"],
                    invoice_number=number,
                    invoice_date=remote["Date"],
                    due_date=remote["DueDate"],
                    currency=remote["CurrencyCode"],
                    total_amount=checked["total"],
                    line_items=checked["lines"],
                    reference="" if credit else _marker_from_url(inv.get("Url") or ""),
                    batch_key=key,
                    tenant=tenant,
                    mode="xero",
                    remote_json=remote,
                    document_type="credit_note" if str(inv["Type"]).endswith("CREDIT") else "invoice",
                    entity="CreditNote" if credit else "",
                )
                results.append(remote)
            if failed and summarize:
                # The trap: 400 for the whole batch, yet the valid invoices above ARE committed.
                return StoredResponse(
                    400,
                    {
                        "ErrorNumber": 10,
                        "Type": "ValidationException",
                        "Message": "A validation exception occurred",
                        "Elements": failed,
                    },
                )
            return StoredResponse(
                200,
                {
                    "Id": str(uuid.uuid4()),
                    "Status": "OK",
                    "ProviderName": "invoiceflow sandbox",
                    "DateTimeUTC": _ms_date(),
                    collection: results,
                },
            )

        return work

    @app.put("/api.xro/2.0/Invoices")
    async def put_invoices(request: Request) -> Response:
        return await put_documents(request, credit=False)

    @app.put("/api.xro/2.0/CreditNotes")
    async def put_credit_notes(request: Request) -> Response:
        return await put_documents(request, credit=True)

    async def put_documents(request: Request, *, credit: bool) -> Response:
        """``PUT /Invoices`` or ``PUT /CreditNotes`` (createCreditNotes: same Idempotency-Key, summarizeErrors)."""
        from invoiceflow.erp.sandbox import IdempotencyKeyReused

        collection = "CreditNotes" if credit else "Invoices"

        async with api_call(request, inject_faults=True) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            key = request.headers.get("idempotency-key")
            if key is not None and (not key.strip() or len(key) > 128):
                return xero_error(400, "Idempotency-Key must be 1-128 characters", headers)
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                return xero_error(400, "The request body is not valid JSON", headers)
            invoices = body.get(collection) if isinstance(body, dict) else None
            if not isinstance(invoices, list) or not invoices:
                return xero_error(
                    400, f'Body must be {{"{collection}": [...]}} with at least one item', headers
                )
            summarize = request.query_params.get("summarizeErrors", "true").lower() != "false"
            scope_key = f"xero:{tenant}:{key}" if key else None
            material = {"q": summarize, "body": body}
            try:
                result = await run_in_threadpool(
                    ledger.idempotent_write,
                    scope_key,
                    _json_hash(material),
                    put_invoices_work(tenant, key, invoices, summarize, credit),
                )
            except IdempotencyKeyReused:
                return xero_error(422, "Idempotency-Key was already used with a different request", headers)
            if faults.drop():
                return DroppedResponse()
            if result.replayed:
                headers = {**headers, "Idempotent-Replayed": "true"}
            if result.text is not None:  # already JSON: send it as stored
                return Response(result.text, result.status_code, headers, media_type="application/json")
            return JSONResponse(result.body, result.status_code, headers=headers)

    @app.get("/api.xro/2.0/Invoices")
    async def get_invoices(request: Request) -> Response:
        async with api_call(request, inject_faults=True) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            q = request.query_params
            # Xero compares strings case-insensitively.
            numbers = {n.strip().casefold() for n in q.get("InvoiceNumbers", "").split(",") if n.strip()}
            ids = {n.strip().lower() for n in q.get("IDs", "").split(",") if n.strip()}
            statuses = {n.strip() for n in q.get("Statuses", "").split(",") if n.strip()}
            page = int(q.get("page", "1") or 1)
            try:
                items = [
                    inv
                    for inv in await run_in_threadpool(ledger.remote_bills, "xero", tenant)
                    if (not numbers or inv["InvoiceNumber"].casefold() in numbers)
                    and (not ids or inv["InvoiceID"] in ids)
                    and (not statuses or inv["Status"] in statuses)
                    and _where_matches(q.get("where"), inv)
                ]
            except ValueError as exc:
                return xero_error(400, str(exc), headers)
            items = items[(page - 1) * 100 : page * 100]
            return JSONResponse(
                {"Status": "OK", "DateTimeUTC": _ms_date(), "Invoices": items}, headers=headers
            )

    @app.get("/api.xro/2.0/Invoices/{invoice_id}")
    async def get_invoice(invoice_id: str, request: Request) -> Response:
        async with api_call(request) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            for inv in await run_in_threadpool(ledger.remote_bills, "xero", tenant):
                if inv["InvoiceID"] == invoice_id:
                    return JSONResponse({"Status": "OK", "Invoices": [inv]}, headers=headers)
            return xero_error(404, "The resource you're looking for cannot be found", headers)

    @app.get("/api.xro/2.0/CreditNotes")
    async def get_credit_notes(request: Request) -> Response:
        """getCreditNotes: ``where`` (e.g. ``Type=="ACCPAYCREDIT" AND CreditNoteNumber=="CN-1"``, OR-able), ``page``."""
        async with api_call(request, inject_faults=True) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            q = request.query_params
            page = int(q.get("page", "1") or 1)
            try:
                items = [
                    note
                    for note in await run_in_threadpool(ledger.remote_bills, "xero", tenant, "CreditNote")
                    if _where_matches(q.get("where"), note)
                ]
            except ValueError as exc:
                return xero_error(400, str(exc), headers)
            items = items[(page - 1) * 100 : page * 100]
            return JSONResponse(
                {"Status": "OK", "DateTimeUTC": _ms_date(), "CreditNotes": items}, headers=headers
            )

    @app.get("/api.xro/2.0/CreditNotes/{credit_note_id}")
    async def get_credit_note(credit_note_id: str, request: Request) -> Response:
        async with api_call(request) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            for note in await run_in_threadpool(ledger.remote_bills, "xero", tenant, "CreditNote"):
                if note["CreditNoteID"] == credit_note_id:
                    return JSONResponse({"Status": "OK", "CreditNotes": [note]}, headers=headers)
            return xero_error(404, "The resource you're looking for cannot be found", headers)

    @app.get("/api.xro/2.0/Contacts")
    async def get_contacts(request: Request) -> Response:
        async with api_call(request) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            where = request.query_params.get("where")
            contacts = [
                {"ContactID": c["id"], "Name": c["name"], "IsSupplier": True}
                for c in await run_in_threadpool(ledger.contacts, tenant)
            ]
            try:
                contacts = [c for c in contacts if _where_matches(where, c)]
            except ValueError as exc:
                return xero_error(400, str(exc), headers)
            return JSONResponse({"Status": "OK", "Contacts": contacts}, headers=headers)

    @app.put("/api.xro/2.0/Contacts")
    async def put_contacts(request: Request) -> Response:
        async with api_call(request) as ctx:
            if isinstance(ctx, Response):
                return ctx
            tenant, headers = ctx
            try:
                body = json.loads(await request.body())
                wanted = [c for c in body["Contacts"] if isinstance(c, dict)]
            except (ValueError, KeyError, TypeError):
                return xero_error(400, 'Body must be {"Contacts": [...]}', headers)

            def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
                out = []
                for c in wanted:
                    name = str(c.get("Name") or "").strip()
                    if not name:
                        out.append(
                            {
                                **c,
                                "HasValidationErrors": True,
                                "ValidationErrors": [{"Message": "Name is required"}],
                            }
                        )
                        continue
                    if ledger.contact_by_name(conn, tenant, name):
                        out.append(
                            {
                                **c,
                                "HasValidationErrors": True,
                                "ValidationErrors": [
                                    {"Message": "The contact name must be unique across all active contacts."}
                                ],
                            }
                        )
                        continue
                    row = ledger.insert_contact(
                        conn, tenant, str(uuid.uuid5(_NS, f"contact:{tenant}:{name.casefold()}")), name
                    )
                    out.append({"ContactID": row["id"], "Name": name, "IsSupplier": True})
                return out

            return JSONResponse(
                {"Status": "OK", "Contacts": await run_in_threadpool(ledger.write, work)}, headers=headers
            )


# ================================================================================================= QuickBooks


_QUERY = re.compile(
    r"^\s*select\s+(\*|count\(\*\))\s+from\s+(\w+)(?:\s+where\s+(.*?))?(?:\s+orderby\s+[\w.]+(?:\s+(?:asc|desc))?)?"
    r"(?:\s+startposition\s+(\d+))?(?:\s+maxresults\s+(\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_COND = re.compile(r"^\s*([\w.]+)\s*(=|>=|<=|>|<|\bin\b|\blike\b)\s*(.+?)\s*$", re.IGNORECASE)


def _qbo_literal(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith("("):
        return [_qbo_literal(part) for part in re.findall(r"'(?:[^'\\]|\\.)*'", raw)]
    if raw.startswith("'") and raw.endswith("'"):
        return raw[1:-1].replace("\\'", "'")
    return raw


def _qbo_field(entity: dict[str, Any], field: str) -> Any:
    value: Any = entity
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    return value


class LazyEntities(Mapping[str, list[dict[str, Any]]]):
    """Entity tables loaded on first access: a vendor lookup must not decode every bill of the ledger."""

    def __init__(self, loaders: dict[str, Callable[[], list[dict[str, Any]]]]) -> None:
        self._loaders = loaders
        self._loaded: dict[str, list[dict[str, Any]]] = {}

    def __getitem__(self, name: str) -> list[dict[str, Any]]:
        if name not in self._loaded:
            self._loaded[name] = self._loaders[name]()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def qbo_query(query: str, entities: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    m = _QUERY.match(query)
    if not m:
        raise ValueError(f"QueryParserError: cannot parse {query!r}")
    what, entity, where, start, maxres = m.groups()
    # Entity names are case-insensitive ("vendorcredit" is VendorCredit); answers use the canonical name.
    name = next((known for known in entities if known.lower() == entity.lower()), entity.capitalize())
    rows = list(entities.get(name, []))
    for cond in re.split(r"\s+and\s+", where or "", flags=re.IGNORECASE) if where else []:
        c = _COND.match(cond)
        if not c:
            raise ValueError(f"QueryParserError: unsupported condition {cond!r}")
        field, op, raw = c.groups()
        value = _qbo_literal(raw)
        op = op.lower()

        def keep(row: dict[str, Any], field: str = field, op: str = op, value: Any = value) -> bool:
            actual = _qbo_field(row, field)
            if actual is None:
                return False
            actual = str(actual)
            if op == "=":
                return actual == value
            if op == "in":
                return actual in value
            if op == "like":
                return re.fullmatch(re.escape(value).replace("%", ".*"), actual) is not None
            return {">=": actual >= value, "<=": actual <= value, ">": actual > value, "<": actual < value}[
                op
            ]

        rows = [r for r in rows if keep(r)]
    if what.lower().startswith("count"):
        return {"totalCount": len(rows)}
    start_i = max(1, int(start or 1))
    max_i = min(1000, int(maxres or 100))
    page = rows[start_i - 1 : start_i - 1 + max_i]
    return {name: page, "startPosition": start_i, "maxResults": len(page)} if page else {}


def _fault(
    code: str, message: str, detail: str, element: str = "", fault_type: str = "ValidationFault"
) -> dict[str, Any]:
    return {
        "Fault": {
            "Error": [{"Message": message, "Detail": detail, "code": code, "element": element}],
            "type": fault_type,
        }
    }


_THROTTLE_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" time="{time}">'
    '<Fault type="SERVICE"><Error code="3001"><Message>message=ThrottleExceeded; errorCode=003001; statusCode=429'
    "</Message><Detail>The request limit was reached. Try again later.</Detail></Error></Fault></IntuitResponse>"
)


def install_quickbooks(
    app: FastAPI, ledger: Any, options: SandboxOptions, faults: Faults, limiter: RateLimiter
) -> None:
    tokens = Tokens(options.token_ttl if options.token_ttl != 1800.0 else 3600.0)
    app.state.tokens = tokens
    window = 60.0 / options.time_scale
    now_iso = lambda: datetime.now(UTC).isoformat(timespec="milliseconds")  # noqa: E731

    def auth_error() -> JSONResponse:
        return JSONResponse(
            {
                "Fault": {
                    "Error": [
                        {
                            "Message": "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                            "code": "3200",
                        }
                    ],
                    "type": "AUTHENTICATION",
                },
                "time": now_iso(),
            },
            401,
        )

    def throttled() -> Response:
        faults.counts["rate_limited"] += 1
        return Response(_THROTTLE_XML.format(time=now_iso()), 429, media_type="application/xml")

    def guard(request: Request, realm: str, batch: bool) -> Response | None:
        if not tokens.valid(request.headers.get("authorization", "")):
            return auth_error()
        wait, _ = limiter.check(f"qbo-min:{realm}", options.qbo_minute_limit, window)
        if wait is None and batch:
            wait, _ = limiter.check(f"qbo-batch:{realm}", options.qbo_batch_limit, window)
        if wait is not None:
            return throttled()
        return faults.error()

    @app.post("/oauth2/v1/tokens/bearer")
    async def token(request: Request) -> Response:
        form = dict(await request.form())
        if not _client_ok(options, _basic_client(request)):
            return JSONResponse({"error": "invalid_client"}, 401)
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return JSONResponse({"error": "invalid_grant"}, 400)
        return JSONResponse(
            {
                "access_token": tokens.issue(),
                "expires_in": int(tokens.ttl),
                "token_type": "bearer",
                "refresh_token": "RT1-" + secrets.token_urlsafe(18),
                "x_refresh_token_expires_in": 8726400,
            }
        )

    def entities(realm: str) -> Mapping[str, list[dict[str, Any]]]:
        def vendors() -> list[dict[str, Any]]:
            return [
                {"Id": c["id"], "DisplayName": c["name"], "Active": True, "SyncToken": "0"}
                for c in ledger.contacts(f"qbo:{realm}")
            ]

        return LazyEntities(
            {
                "Bill": lambda: ledger.remote_bills("quickbooks", realm),
                "VendorCredit": lambda: ledger.remote_bills("quickbooks", realm, "VendorCredit"),
                "Vendor": vendors,
            }
        )

    def create_vendor(conn: sqlite3.Connection, realm: str, vendor: Any) -> dict[str, Any]:
        name = str((vendor or {}).get("DisplayName") or "").strip() if isinstance(vendor, dict) else ""
        if not name:
            return _fault(
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Required parameter DisplayName is missing in the request",
                "DisplayName",
            )
        if ledger.contact_by_name(conn, f"qbo:{realm}", name):
            return _fault(
                "6240",
                "Duplicate Name Exists Error",
                f"The name supplied already exists. : {name}",
                "DisplayName",
            )
        seq = conn.execute("SELECT COUNT(*) + 1 FROM contacts").fetchone()[0]
        row = ledger.insert_contact(conn, f"qbo:{realm}", str(1000 + seq), name)
        return {"Vendor": {"Id": row["id"], "DisplayName": name, "Active": True, "SyncToken": "0"}}

    def create_bill(
        conn: sqlite3.Connection, realm: str, bill: Any, key: str | None, entity: str = "Bill"
    ) -> dict[str, Any]:
        """Create a ``Bill`` or, with ``entity="VendorCredit"``, a vendor credit (same fields without ``DueDate``,
        positive amounts; stored as ``document_type`` credit_note). The duplicate-number rule applies per entity."""
        if not isinstance(bill, dict):
            return _fault(
                "2020",
                "Required param missing, need to supply the required value for the API",
                f"{entity} object is missing",
                entity,
            )
        vendor_ref = bill.get("VendorRef") if isinstance(bill.get("VendorRef"), dict) else None
        if not vendor_ref or not vendor_ref.get("value"):
            return _fault(
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Required parameter VendorRef is missing in the request",
                "VendorRef",
            )
        vendor = ledger.contact_by_id(conn, f"qbo:{realm}", str(vendor_ref["value"]))
        if vendor is None:
            return _fault(
                "610",
                "Object Not Found",
                "Something you're trying to use has been made inactive. Check the fields with accounts, customers, items, vendors or employees.",
                "VendorRef",
            )
        doc = bill.get("DocNumber")
        if doc is not None and len(str(doc)) > 21:
            return _fault(
                "2050",
                "String length is either shorter or longer than supported by specification",
                f"String length specified does not match the supported length. Min:0 Max:21 supplied length:{len(str(doc))}",
                "DocNumber",
            )
        lines = bill.get("Line")
        if not isinstance(lines, list) or not lines:
            return _fault(
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Required parameter Line is missing in the request",
                "Line",
            )
        total = Decimal(0)
        out_lines = []
        for n, line in enumerate(lines, 1):
            amount = _dec(line.get("Amount")) if isinstance(line, dict) else None
            detail = line.get("AccountBasedExpenseLineDetail") if isinstance(line, dict) else None
            if amount is None:
                return _fault(
                    "2020",
                    "Required param missing, need to supply the required value for the API",
                    f"Required parameter Line.Amount is missing in the request (line {n})",
                    "Line.Amount",
                )
            if not isinstance(detail, dict) or not (detail.get("AccountRef") or {}).get("value"):
                return _fault(
                    "2020",
                    "Required param missing, need to supply the required value for the API",
                    "Required parameter Line.AccountBasedExpenseLineDetail.AccountRef is missing in the request",
                    "AccountRef",
                )
            if str(detail["AccountRef"]["value"]) not in QBO_EXPENSE_ACCOUNTS:
                return _fault(
                    "610",
                    "Object Not Found",
                    f"Account {detail['AccountRef']['value']} was not found or is inactive",
                    "AccountRef",
                )
            total += amount
            out_lines.append({**line, "Id": str(n), "LineNum": n})
        for field in ("TxnDate", "DueDate"):
            if bill.get(field) is not None and _iso_date(bill[field]) is None:
                return _fault("2010", "Invalid Date", f"{field} is not a valid date", field)
        if entity == "VendorCredit" and "DueDate" in bill:
            return _fault(
                "2010", "Request has invalid or unsupported property", "Property Name:DueDate", "DueDate"
            )
        if total < 0:
            # QuickBooks takes a supplier's credit as a VendorCredit with positive amounts, never a negative bill.
            return _fault(
                "6000",
                "A business validation error has occurred while processing your request",
                f"Business Validation Error: The {entity} total cannot be negative",
                "TotalAmt",
            )
        stored_entity = "" if entity == "Bill" else entity
        if options.qbo_duplicate_check and doc:
            dup = conn.execute(
                "SELECT id FROM bills WHERE mode = 'quickbooks' AND tenant = ? AND entity = ? AND vendor_key = ? "
                "AND number_key = ? LIMIT 1",
                (realm, stored_entity, f"vendor:{vendor['id']}", str(doc).strip().casefold()),
            ).fetchone()
            if dup:
                return _fault(
                    "6140",
                    "Duplicate Document Number Error",
                    f"Duplicate Document Number Error : You must specify a different number. This number has already been used. DocNumber={doc} is assigned to TxnType={entity} with TxnId={dup['id']}",
                    "DocNumber",
                )
        seq = ledger.next_seq(conn)
        bill_id = str(seq)
        note = str(bill.get("PrivateNote") or "")
        remote = {
            **bill,
            "Id": bill_id,
            "SyncToken": "0",
            "domain": "QBO",
            "VendorRef": {"value": vendor["id"], "name": vendor["name"]},
            "Line": out_lines,
            "TotalAmt": _num(total),
            "Balance": _num(total),
            "TxnDate": _iso_date(bill.get("TxnDate")) or date.today().isoformat(),
            "CurrencyRef": bill.get("CurrencyRef") or {"value": "USD"},
            "MetaData": {"CreateTime": now_iso(), "LastUpdatedTime": now_iso()},
        }
        ledger.insert_bill(
            conn,
            seq,
            bill_id,
            vendor_name=vendor["name"],
            invoice_number=str(doc or ""),
            invoice_date=remote["TxnDate"],
            due_date=_iso_date(bill.get("DueDate")),
            currency=(remote["CurrencyRef"] or {}).get("value"),
            total_amount=total,
            line_items=out_lines,
            reference=note[len(MARKER_PREFIX_QBO) :] if note.startswith(MARKER_PREFIX_QBO) else note,
            batch_key=key,
            tenant=realm,
            mode="quickbooks",
            remote_json=remote,
            document_type="credit_note" if entity == "VendorCredit" else "invoice",
            entity=stored_entity,
        )
        # The duplicate rule keys on the vendor id, not its name: store that in vendor_key.
        conn.execute(
            "UPDATE bills SET vendor_key = ?, number_key = ? WHERE id = ?",
            (f"vendor:{vendor['id']}", str(doc or "").strip().casefold(), bill_id),
        )
        return {entity: remote}

    @app.post("/v3/company/{realm}/batch")
    async def batch(realm: str, request: Request) -> Response:
        from invoiceflow.erp.sandbox import IdempotencyKeyReused, StoredResponse

        if (denied := guard(request, realm, True)) is not None:
            return denied
        requestid = request.query_params.get("requestid")
        if requestid is not None and not 0 < len(requestid) <= 36:
            return JSONResponse(
                _fault("4000", "Invalid requestid", "requestid must be 1-36 characters for batch")
                | {"time": now_iso()},
                400,
            )
        try:
            body = json.loads(await request.body())
            items = body["BatchItemRequest"]
            if not isinstance(items, list) or not items:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                _fault("2020", "Request has invalid or unsupported property", "BatchItemRequest is required")
                | {"time": now_iso()},
                400,
            )
        if len(items) > 30:
            return JSONResponse(
                _fault(
                    "4001", "Batch request too large", f"Max 30 BatchItemRequest per batch, got {len(items)}"
                )
                | {"time": now_iso()},
                400,
            )
        bids = [str(i.get("bId", "")) if isinstance(i, dict) else "" for i in items]
        if any(not b or (requestid and len(b) > 10) for b in bids) or len(set(bids)) != len(bids):
            return JSONResponse(
                _fault(
                    "4002", "Invalid bId", "each item needs a unique bId (<= 10 characters with requestid)"
                )
                | {"time": now_iso()},
                400,
            )

        def work(conn: sqlite3.Connection) -> Any:
            responses = []
            for item, bid in zip(items, bids, strict=True):
                op = str(item.get("operation", "")).lower()
                if op == "create" and "Bill" in item:
                    result = create_bill(conn, realm, item["Bill"], requestid)
                elif op == "create" and "VendorCredit" in item:
                    result = create_bill(conn, realm, item["VendorCredit"], requestid, "VendorCredit")
                elif op == "create" and "Vendor" in item:
                    result = create_vendor(conn, realm, item["Vendor"])
                else:
                    result = _fault(
                        "4003", "Unsupported operation", f"operation {op!r} is not supported by the sandbox"
                    )
                responses.append({"bId": bid, **result})
            return StoredResponse(200, {"BatchItemResponse": responses, "time": now_iso()})

        try:
            result = await run_in_threadpool(
                ledger.idempotent_write,
                f"qbo:{realm}:{requestid}" if requestid else None,
                _json_hash(body),
                work,
            )
        except IdempotencyKeyReused:
            return JSONResponse(
                _fault("4004", "requestid reused", "this requestid was already used with another request")
                | {"time": now_iso()},
                422,
            )
        if faults.drop():
            return DroppedResponse()
        return JSONResponse(
            result.body,
            result.status_code,
            headers={"Idempotent-Replayed": "true"} if result.replayed else None,
        )

    @app.post("/v3/company/{realm}/vendor")
    async def vendor(realm: str, request: Request) -> Response:
        if (denied := guard(request, realm, False)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse(_fault("2020", "Invalid JSON", "body is not JSON"), 400)
        result = await run_in_threadpool(ledger.write, lambda conn: create_vendor(conn, realm, body))
        status = 400 if "Fault" in result else 200
        return JSONResponse({**result, "time": now_iso()}, status)

    async def run_query(realm: str, request: Request, query: str | None) -> Response:
        if (denied := guard(request, realm, False)) is not None:
            return denied
        if not query:
            return JSONResponse(_fault("4000", "QueryParserError", "query is required"), 400)
        try:
            data = qbo_query(query, await run_in_threadpool(entities, realm))
        except ValueError as exc:
            return JSONResponse(_fault("4000", "QueryParserError", str(exc)) | {"time": now_iso()}, 400)
        return JSONResponse({"QueryResponse": data, "time": now_iso()})

    @app.get("/v3/company/{realm}/query")
    async def query_get(realm: str, request: Request) -> Response:
        return await run_query(realm, request, request.query_params.get("query"))

    @app.post("/v3/company/{realm}/query")
    async def query_post(realm: str, request: Request) -> Response:
        return await run_query(
            realm, request, (await request.body()).decode() or request.query_params.get("query")
        )

    @app.get("/v3/company/{realm}/bill/{bill_id}")
    async def get_bill(realm: str, bill_id: str, request: Request) -> Response:
        return await read_entity(realm, bill_id, request, "Bill")

    @app.get("/v3/company/{realm}/vendorcredit/{credit_id}")
    async def get_vendor_credit(realm: str, credit_id: str, request: Request) -> Response:
        return await read_entity(realm, credit_id, request, "VendorCredit")

    async def read_entity(realm: str, entity_id: str, request: Request, entity: str) -> Response:
        if (denied := guard(request, realm, False)) is not None:
            return denied
        stored_entity = "" if entity == "Bill" else entity
        for row in await run_in_threadpool(ledger.remote_bills, "quickbooks", realm, stored_entity):
            if row["Id"] == entity_id:
                return JSONResponse({entity: row, "time": now_iso()})
        return JSONResponse(_fault("610", "Object Not Found", f"{entity} {entity_id} not found"), 400)


def install_admin(app: FastAPI, faults: Faults) -> None:
    @app.get("/api/admin/stats")
    def stats() -> dict[str, Any]:
        return {
            "faults": dict(faults.counts),
            "tokens_issued": getattr(getattr(app.state, "tokens", None), "issued", 0),
        }

    @app.post("/api/admin/revoke-tokens")
    def revoke() -> dict[str, str]:
        tokens = getattr(app.state, "tokens", None)
        if tokens is not None:
            tokens.revoke_all()
        return {"status": "revoked"}


def silence_dropped_connection_errors() -> None:
    """uvicorn logs the injected drop as an ASGI error; keep test output readable."""
    import logging

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            return not isinstance(exc, _Dropped)

    for name in ("uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Filter) for f in logger.filters):
            logger.addFilter(_Filter())


__all__ = [
    "MODES",
    "Faults",
    "RateLimiter",
    "SandboxOptions",
    "install_admin",
    "install_quickbooks",
    "install_xero",
]
