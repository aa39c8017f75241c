"""The DAG-facing ERP connector interface, its result type and errors, and helpers shared by the connectors.

Contract of :class:`ErpConnector` (what the relay may rely on, for every implementation):

- ``post_bills(bills, batch_key)`` returns exactly one :class:`BillOutcome` per bill, in the same order. Each bill is
  an ``erp_payload()`` dict plus ``reference`` (our idempotency key, stamped into the ERP as a marker).
  ``batch_key`` must be persisted by the caller before the call and reused unchanged when the same batch is retried;
  it becomes the ERP's idempotency key where one exists. A transport failure after the request may have been sent
  yields ``unknown`` outcomes, never an exception. Exceptions mean *nothing was applied*: :class:`ErpRequestError`
  (the whole request was refused, e.g. 400/422), :class:`ErpAuthError`, :class:`ErpRateLimitedError` (every attempt
  was refused with 429), ``ValueError`` (bad input, nothing sent).
- ``find_bill(reference)`` returns the remote id of the bill carrying our marker, ``None`` if the ERP has none, and
  *raises* (:class:`ErpUnavailableError`) when the ERP cannot be asked, so "no answer" is never read as "absent".
  Connectors accept an optional keyword ``bill=`` (the payload) as a search hint; QuickBooks needs it to search
  cheaply (its query language cannot filter on the marker field).
- ``find_bills(vendor_name, invoice_number)`` returns the ERP's bills for that vendor + number as plain dicts with at
  least ``id``, ``vendor_name``, ``invoice_number``, ``reference`` (our marker or ``None``), ``total_amount``.
- ``ensure_vendor(vendor_name)`` returns the remote contact/supplier/party id, creating it if missing.

Credit notes: a bill whose ``document_type`` is ``credit_note`` (see :func:`document_type`) is posted as the ERP's
credit document (Xero ``ACCPAYCREDIT`` credit note, QuickBooks ``VendorCredit``, a Tryton supplier credit note),
never as a bill; ``find_bill`` finds it too. The payload follows the warehouse convention (a credit note's amounts
are negative); :func:`credit_lines` turns them into the positive amounts most ERPs expect on a credit document. A
connector that cannot post a credit note answers ``rejected`` with the reason, never a bill.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import httpx

from invoiceflow.document_types import CREDIT_NOTE, DOCUMENT_TYPES, INVOICE, printed_document_type
from invoiceflow.tls import shared_ssl_context

logger = logging.getLogger("invoiceflow.erp")

OUTCOME_STATUSES = ("posted", "duplicate", "rejected", "unknown")
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class BillOutcome:
    """Result of posting one bill; ``status`` is ``posted``, ``duplicate``, ``rejected`` or ``unknown``."""

    reference: str
    status: str
    remote_id: str | None
    error: str | None


@runtime_checkable
class ErpConnector(Protocol):
    """What the sync DAG needs from an ERP. See the module docstring for the exact contract."""

    max_batch: int

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]: ...

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None: ...

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]: ...

    def ensure_vendor(self, vendor_name: str) -> str: ...

    def close(self) -> None: ...

    def __enter__(self) -> ErpConnector: ...

    def __exit__(self, *exc: object) -> None: ...


# ---------------------------------------------------------------------------------------------------- errors


class ErpError(Exception):
    """Base class for connector errors."""


class ErpRequestError(ErpError):
    """The ERP refused the whole request (4xx): nothing was processed, retrying unchanged will not help."""

    def __init__(self, message: str, status_code: int, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class ErpAuthError(ErpRequestError):
    """401/403: bad or missing credentials (after one token refresh, where the connector has tokens)."""


class ErpRateLimitedError(ErpError):
    """Every attempt was refused with 429 (nothing applied); ``retry_after`` seconds, ``problem`` e.g. ``day``."""

    def __init__(self, message: str, retry_after: float | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.problem = problem


class ErpUnavailableError(ErpError):
    """No usable answer after retries for a read; never treat this as "not found"."""


class RetryableResponse(Exception):
    """Internal: a response worth retrying with the same idempotency key."""

    def __init__(self, message: str, retry_after: float | None = None, *, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


# ---------------------------------------------------------------------------------------------------- helpers


@functools.cache
def _prefetch_pool() -> ThreadPoolExecutor:
    """Background token fetches (submitting costs far less than starting a thread per batch)."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="erp-token-prefetch")


def json_client(
    base_url: str,
    agent: str,
    *,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """The pooled client an ERP connector talks JSON through (``User-Agent: invoiceflow-erp-<agent>``)."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        transport=transport,
        verify=shared_ssl_context(),
        headers={"Accept": "application/json", "User-Agent": f"invoiceflow-erp-{agent}", **(headers or {})},
    )


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _number_default(value: Any) -> Any:
    # ERP APIs want JSON numbers. float's repr is the shortest round-trip text, so "12.50" goes out as 12.5 exactly.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return json_default(value)


def dumps(value: Any) -> bytes:
    """JSON for ERP request bodies: decimals as numbers, dates as ISO strings."""
    return json.dumps(value, default=_number_default, separators=(",", ":")).encode("utf-8")


def retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_message(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300], response.text
    if isinstance(body, dict):
        for key in ("message", "Message", "error_description", "error", "Detail"):
            if body.get(key):
                return str(body[key])[:300], body
        return str(body)[:300], body
    return str(body)[:300], body


def raise_for_refusal(response: httpx.Response, refused: str, failed: str) -> None:
    """Raise for a whole-request refusal: :class:`ErpAuthError` on 401/403 (``refused: <message>``), else
    :class:`ErpRequestError` on any other status >= 300 (``failed: <message>``). Returns for a 1xx/2xx answer."""
    status = response.status_code
    if status in (401, 403):
        message, body = error_message(response)
        raise ErpAuthError(f"{refused}: {message}", status, body)
    if status >= 300:
        message, body = error_message(response)
        raise ErpRequestError(f"{failed}: {message}", status, body)


def backoff_delay(attempt: int, base: float, retry_after: float | None = None) -> float:
    if retry_after is not None:
        return retry_after
    delay = base * (2 ** (attempt - 1))
    return min(delay + random.uniform(0, delay / 10), MAX_BACKOFF_SECONDS)


@dataclass
class Attempts:
    """One call's retry bookkeeping: ``count`` attempts (a rate-limited answer is a wait, not an attempt), the
    rate-limit ``waits``, whether any attempt may have reached the ERP (``sent``) and the ``last`` failure."""

    count: int = 0
    waits: int = 0
    sent: bool = False
    last: str = "no attempt made"

    def failed(self, exc: Exception) -> RetryableResponse | None:
        """Record a retryable failure; returns it when it was a rate-limited answer (counted as a wait instead)."""
        self.last = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ConnectError):
            self.sent = True  # the request may have arrived before the connection broke
        if isinstance(exc, RetryableResponse) and exc.rate_limited:
            self.waits += 1
            self.count -= 1
            return exc
        return None


def check_batch(bills: list[dict], batch_key: str, max_batch: int, max_key: int = 128) -> list[str]:
    """Validate a batch before anything is sent; returns the references."""
    if len(bills) > max_batch:
        raise ValueError(f"at most {max_batch} bills per batch, got {len(bills)}")
    if not batch_key or not batch_key.strip() or len(batch_key) > max_key:
        raise ValueError(f"batch_key must be a non-empty string of at most {max_key} characters")
    references = [b.get("reference") if isinstance(b, dict) else None for b in bills]
    if not all(isinstance(r, str) and r.strip() for r in references):
        raise ValueError("every bill needs a non-empty string 'reference' (our idempotency marker)")
    return [r.strip() for r in references]  # type: ignore[union-attr]


def derived_key(batch_key: str, parts: list[str], max_len: int) -> str:
    """A stable sub-key for a subset of a batch (or a length-limited key): same inputs, same key."""
    if len(batch_key) <= max_len and not parts:
        return batch_key
    digest = hashlib.sha256((batch_key + "\n" + "\n".join(parts)).encode()).hexdigest()
    if not parts:
        return digest[:max_len]
    keep = max(0, max_len - 13)
    return f"{batch_key[:keep]}-{digest[:12]}"


def log_outcomes(connector: str, batch_key: str, outcomes: list[BillOutcome], attempts: int) -> None:
    counts = dict.fromkeys(OUTCOME_STATUSES, 0)
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    logger.info(
        "erp %s batch key=%s bills=%d posted=%d duplicate=%d rejected=%d unknown=%d attempts=%d",
        connector,
        batch_key,
        len(outcomes),
        counts["posted"],
        counts["duplicate"],
        counts["rejected"],
        counts["unknown"],
        attempts,
    )


_WS = re.compile(r"\s+")


def normalize_key(value: str | None) -> str:
    """Case- and whitespace-insensitive vendor / invoice-number key (the ledgers' duplicate rule)."""
    return _WS.sub("", value or "").casefold()


def to_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


CENT = Decimal("0.01")


@dataclass(frozen=True)
class BillLine:
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal  # net line amount


def bill_lines(bill: Mapping[str, Any]) -> list[BillLine]:
    """The bill's lines as exact decimals; a bill without usable lines becomes one line for its net amount.

    Net = ``subtotal`` if given, else ``total_amount - tax_amount``. Invalid numbers are passed through as ``None``
    is never produced: the ERP's validation decides about a missing total (we send 0-amount lines only if the
    invoice really says 0).
    """
    lines: list[BillLine] = []
    for item in bill.get("line_items") or []:
        if not isinstance(item, Mapping):
            continue
        qty = to_decimal(item.get("quantity"))
        price = to_decimal(item.get("unit_price", item.get("unit_amount")))
        amount = to_decimal(item.get("line_total"))
        if amount is None and qty is not None and price is not None:
            amount = (qty * price).quantize(CENT, ROUND_HALF_UP)
        if amount is None:
            continue
        if qty is None or qty == 0:
            qty = Decimal(1)
        if price is None:
            price = amount / qty
        lines.append(BillLine(str(item.get("description") or "").strip() or "Line", qty, price, amount))
    if lines:
        return lines
    net = to_decimal(bill.get("subtotal"))
    if net is None:
        total = to_decimal(bill.get("total_amount"))
        tax = to_decimal(bill.get("tax_amount")) or Decimal(0)
        net = total - tax if total is not None else None
    if net is None:
        return []
    number = bill.get("invoice_number") or ""
    return [BillLine(f"Invoice {number}".strip(), Decimal(1), net, net)]


def document_type(bill: Mapping[str, Any]) -> str:
    """``invoice`` or ``credit_note`` for a bill payload; raises ``ValueError`` for a type no connector knows.

    Without a ``document_type`` (payloads queued before it existed) a negative total marks a credit note, as the
    warehouse decides for its ``document_type`` column.
    """
    raw = bill.get("document_type")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        total = to_decimal(bill.get("total_amount"))
        return CREDIT_NOTE if total is not None and total < 0 else INVOICE
    if found := printed_document_type(raw):
        return found
    raise ValueError(f"unknown document_type {raw!r}: expected one of {', '.join(DOCUMENT_TYPES)}")


def credit_sign(bill: Mapping[str, Any], lines: list[BillLine] | None = None) -> Decimal:
    """-1 when the bill's amounts are negative (the warehouse's credit notes), else 1: the total decides, then the
    subtotal, then the sum of the lines."""
    for key in ("total_amount", "subtotal"):
        value = to_decimal(bill.get(key))
        if value is not None and value != 0:
            return Decimal(-1) if value < 0 else Decimal(1)
    net = sum((line.amount for line in lines or []), Decimal(0))
    return Decimal(-1) if net < 0 else Decimal(1)


def credit_lines(bill: Mapping[str, Any]) -> tuple[list[BillLine], Decimal | None]:
    """A credit note's lines and tax as *positive* credit amounts (what Xero and QuickBooks credit documents
    want), whichever sign the payload uses: a negative document is negated as a whole, so a line that adds to the
    credit note (a charge) keeps its opposite sign. Quantities are positive, prices carry the line's sign."""
    lines = bill_lines(bill)
    sign = credit_sign(bill, lines)
    out = []
    for line in lines:
        amount = line.amount * sign
        price = abs(line.unit_price) if amount >= 0 else -abs(line.unit_price)
        out.append(BillLine(line.description, abs(line.quantity), price, amount))
    tax = to_decimal(bill.get("tax_amount"))
    return out, (tax * sign if tax is not None else None)


def split_tax(lines: list[BillLine], tax: Decimal | None) -> list[Decimal]:
    """Allocate an invoice-level tax amount over lines proportionally (cent-exact, remainder on the last)."""
    if not lines:
        return []
    if not tax:
        return [Decimal(0)] * len(lines)
    net = sum((line.amount for line in lines), Decimal(0))
    shares: list[Decimal] = []
    for line in lines[:-1]:
        share = (tax * line.amount / net).quantize(CENT, ROUND_HALF_UP) if net else Decimal(0)
        shares.append(share)
    shares.append(tax - sum(shares, Decimal(0)))
    return shares


# ---------------------------------------------------------------------------------------------------- OAuth2


class OAuthTokens:
    """OAuth2 access tokens from a token endpoint: ``client_credentials`` (Xero custom connections) or
    ``refresh_token`` (QuickBooks; the rotated refresh token is handed to ``on_refresh_token`` to persist).

    Refreshes before expiry (at 90% of the lifetime, at most 60 s early) and on demand after a 401. Secrets are
    never logged.

    ``client_credentials`` tokens are shared within the process by every instance with the same endpoint, client
    and scope (on the default clock): a connector per batch would otherwise fetch a token per batch. A 401 drops
    the shared token too.
    """

    _shared: dict[tuple[str, ...], tuple[str, float]] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        client: httpx.Client,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        grant_type: str = "client_credentials",
        scope: str | None = None,
        refresh_token: str | None = None,
        on_refresh_token: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if grant_type == "refresh_token" and not refresh_token:
            raise ValueError("grant_type refresh_token needs a refresh_token")
        self._client = client
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self.grant_type = grant_type
        self.scope = scope
        self._refresh_token = refresh_token
        self._on_refresh_token = on_refresh_token
        self._clock = clock
        self._access: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    @property
    def _share_key(self) -> tuple[str, ...] | None:
        if self.grant_type != "client_credentials" or self._clock is not time.monotonic:
            return None
        secret = hashlib.sha256(self._client_secret.encode()).hexdigest()
        return (self.token_url, self._client_id, secret, self.scope or "")

    def _valid(self) -> bool:
        """Whether a usable token is held (adopting the process's shared one); call with ``_lock`` held."""
        if self._access is not None and self._clock() < self._refresh_at:
            return True
        key = self._share_key
        if key is None:
            return False
        with self._shared_lock:
            shared = self._shared.get(key)
        if shared is None or self._clock() >= shared[1]:
            return False
        self._access, self._refresh_at = shared
        return True

    def token(self) -> str:
        with self._lock:
            if not self._valid():
                self._fetch()
                key = self._share_key
                if key is not None and self._access is not None:
                    with self._shared_lock:
                        self._shared[key] = (self._access, self._refresh_at)
            assert self._access is not None
            return self._access

    def prefetch(self) -> None:
        """Fetch a token in the background if none is valid, so the fetch overlaps the caller's other I/O (the
        relay's outbox reads and writes). A failure is left for :meth:`token`, which fetches again and raises."""
        with self._lock:
            if self._valid():
                return

        def fetch() -> None:
            try:
                self.token()
            except Exception:  # reported by the next token() call
                logger.debug("background token fetch failed; the next call retries", exc_info=True)

        _prefetch_pool().submit(fetch)

    def invalidate(self, token: str | None = None) -> None:
        with self._lock:
            dropped = self._access if token is None else token
            if token is None or token == self._access:
                self._access = None
            key = self._share_key
            if key is not None and dropped is not None:
                with self._shared_lock:
                    if self._shared.get(key, ("",))[0] == dropped:
                        del self._shared[key]

    def _fetch(self) -> None:
        data = {"grant_type": self.grant_type}
        if self.scope:
            data["scope"] = self.scope
        if self.grant_type == "refresh_token":
            data["refresh_token"] = self._refresh_token or ""
        started = self._clock()
        try:
            response = self._client.post(
                self.token_url,
                data=data,
                auth=(self._client_id, self._client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as exc:
            raise ErpUnavailableError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code in (400, 401, 403):
            message, body = error_message(response)
            raise ErpAuthError(f"token request refused (HTTP {response.status_code}): {message}", 401, body)
        if response.status_code != 200:
            raise ErpUnavailableError(f"token endpoint answered HTTP {response.status_code}")
        body = response.json()
        self._access = body["access_token"]
        expires_in = float(body.get("expires_in") or 1800)
        self._refresh_at = started + max(expires_in - 60.0, expires_in * 0.9)
        rotated = body.get("refresh_token")
        if rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            if self._on_refresh_token is not None:
                self._on_refresh_token(rotated)
        self.fetches += 1
        logger.debug("erp token fetched from %s, valid %.0fs", self.token_url, expires_in)


def bearer_request(
    client: httpx.Client,
    tokens: OAuthTokens | None,
    connector: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str],
    static_token: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One call with ``Authorization: Bearer`` (from ``tokens``, else ``static_token``) before ``headers``.

    With ``tokens``, a 401 drops the access token and the call is sent once more with a fresh one.
    """
    token = tokens.token() if tokens is not None else static_token
    response = client.request(method, path, headers={"Authorization": f"Bearer {token}", **headers}, **kwargs)
    if response.status_code == 401 and tokens is not None:
        logger.info("%s answered 401: refreshing the access token once", connector)
        tokens.invalidate(token)
        token = tokens.token()
        response = client.request(
            method, path, headers={"Authorization": f"Bearer {token}", **headers}, **kwargs
        )
    return response


def base_url_from_connection(conn: Any, default: str | None = None) -> str:
    host = (getattr(conn, "host", None) or "").strip().rstrip("/")
    if not host:
        if default is None:
            raise ValueError("the ERP connection needs a host (base URL)")
        return default.rstrip("/")
    if "://" not in host:
        schema = "http" if host.startswith(("127.", "localhost")) else "https"
        port = getattr(conn, "port", None)
        host = f"{schema}://{host}{f':{port}' if port else ''}"
    return host


def extras(conn: Any) -> dict[str, Any]:
    extra = getattr(conn, "extra_dejson", None)
    if isinstance(extra, dict):
        return extra
    raw = getattr(conn, "extra", None)
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
