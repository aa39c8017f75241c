"""Webhook connector: one signed ``invoice.processed`` event per bill, for teams whose ERP integration is their own
service.

Each bill is POSTed as JSON ``{"id": <reference>, "type": "invoice.processed", "created": <unix>, "data": <bill>}``
with headers ``X-Invoiceflow-Event-Id`` (= ``reference``, stable across retries: receivers dedupe on it),
``X-Invoiceflow-Timestamp`` (unix seconds) and ``X-Invoiceflow-Signature: v1=<hex HMAC-SHA256(secret,
f"{timestamp}.{body}")>``. Any 2xx is ``posted`` (``remote_id`` from a JSON ``id`` in the answer, else the event id);
409 is ``duplicate``; other 4xx ``rejected``; no answer ``unknown``.

``data.document_type`` is always ``invoice`` or ``credit_note`` (normalised; a bill without one is a credit note when
its total is negative); a credit note's amounts are negative (the warehouse convention) and the event type stays
``invoice.processed``, so receivers must branch on ``data.document_type``. A bill with an unknown document type is
``rejected`` without being sent.

Read-back: with ``status_url`` set, ``GET {status_url}/{reference}`` (200 = known, 404 = absent). Without it,
:meth:`find_bill` answers ``None``: resending is safe *because* receivers must dedupe on the event id (the contract).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from invoiceflow.erp.base import (
    BillOutcome,
    ErpUnavailableError,
    backoff_delay,
    check_batch,
    document_type,
    json_default,
    log_outcomes,
)
from invoiceflow.tls import shared_ssl_context

SIGNATURE_HEADER = "X-Invoiceflow-Signature"
TIMESTAMP_HEADER = "X-Invoiceflow-Timestamp"
EVENT_ID_HEADER = "X-Invoiceflow-Event-Id"
EVENT_TYPE = "invoice.processed"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Receiver side: constant-time check of the signature, rejecting timestamps outside ``tolerance`` seconds."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


class WebhookConnector:
    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        status_url: str | None = None,
        max_batch: int = 50,
        timeout: float = 15.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a signing secret")
        self.url = url
        self.status_url = status_url.rstrip("/") if status_url else None
        self._secret = secret
        self.max_batch = max_batch
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            verify=shared_ssl_context(),
            headers={"User-Agent": "invoiceflow-webhook"},
        )

    def __enter__(self) -> WebhookConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def event(self, bill: dict[str, Any]) -> dict[str, Any]:
        """The event for one bill; raises ``ValueError`` for a document type no receiver can expect."""
        return {
            "id": bill["reference"].strip(),
            "type": EVENT_TYPE,
            "created": int(self._clock()),
            "data": {**bill, "document_type": document_type(bill)},
        }

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        if not bills:
            return []
        check_batch(bills, batch_key, self.max_batch)
        outcomes = [self._deliver(bill) for bill in bills]
        log_outcomes(self.name, batch_key, outcomes, 1)
        return outcomes

    def _deliver(self, bill: dict[str, Any]) -> BillOutcome:
        ref = bill["reference"].strip()
        try:
            event = self.event(bill)
        except ValueError as exc:
            return BillOutcome(ref, "rejected", None, f"not sent: {exc}")
        body = json.dumps(event, default=json_default, separators=(",", ":")).encode()
        last = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            timestamp = str(int(self._clock()))
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: ref,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            }
            retry_after = None
            try:
                response = self._client.post(self.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    remote = None
                    try:
                        answer = response.json()
                        remote = answer.get("id") if isinstance(answer, dict) else None
                    except ValueError:
                        pass
                    return BillOutcome(ref, "posted", str(remote or ref), None)
                if response.status_code == 409:
                    return BillOutcome(ref, "duplicate", ref, "receiver already has this event")
                if response.status_code in (408, 425, 429) or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    raw = response.headers.get("retry-after")
                    retry_after = float(raw) if raw and raw.replace(".", "", 1).isdigit() else None
                else:
                    return BillOutcome(
                        ref, "rejected", None, f"HTTP {response.status_code}: {response.text[:300]}"
                    )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt <= self.max_retries:
                self._sleep(backoff_delay(attempt, self.backoff, retry_after))
        return BillOutcome(ref, "unknown", None, f"no answer after {self.max_retries + 1} attempts: {last}")

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        if not self.status_url:
            return None  # receivers dedupe on the event id: resending is the read-back
        try:
            response = self._client.get(f"{self.status_url}/{reference.strip()}")
        except httpx.TransportError as exc:
            raise ErpUnavailableError(f"webhook status endpoint unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ErpUnavailableError(f"webhook status endpoint answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return str(answer.get("id") or reference) if isinstance(answer, dict) else reference

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        return []  # a webhook receiver offers no search

    def ensure_vendor(self, vendor_name: str) -> str:
        if not vendor_name or not vendor_name.strip():
            raise ValueError("vendor_name is required")
        return vendor_name.strip()
