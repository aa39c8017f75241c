"""DAG-facing connector for the stand-in ERP (``invoiceflow.erp.sandbox``).

The sync DAG persists ``batch_key`` on its outbox rows before calling :meth:`SandboxErpClient.post_bills`, so
every retry of a batch (here, or after an Airflow task retry) reuses the same ``Idempotency-Key`` and the ERP
replays its first answer instead of posting twice (erp-apis.md §4.1, §5.1). When no answer arrives at all, the
outcome is ``unknown``: the caller must read back with :meth:`SandboxErpClient.find_bill` before re-sending.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from invoiceflow.erp.base import (
    BillOutcome,
    ErpAuthError,
    ErpError,
    ErpRateLimitedError,
    ErpRequestError,
    ErpUnavailableError,
    RetryableResponse,
    check_batch,
    error_message,
    json_client,
    json_default,
    raise_for_refusal,
    retry_after_seconds,
)

__all__ = [
    "BillOutcome",
    "ErpAuthError",
    "ErpError",
    "ErpRateLimitedError",
    "ErpRequestError",
    "ErpUnavailableError",
    "SandboxErpClient",
]

logger = logging.getLogger("invoiceflow.erp")

MAX_BATCH_SIZE = 50
MAX_KEY_LENGTH = 128
_MAX_BACKOFF_SECONDS = 30.0

_STATUS_MAP = {"created": "posted", "duplicate": "duplicate", "rejected": "rejected"}

_RetryableResponse = RetryableResponse
_json_default = json_default
_retry_after_seconds = retry_after_seconds
_error_message = error_message


class SandboxErpClient:
    """Synchronous httpx client for the sandbox's native bill API.

    ``transport`` and ``sleep`` exist for tests (fault injection without a real network and without waiting).
    """

    name = "sandbox"
    max_batch = MAX_BATCH_SIZE

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        *,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._client = json_client(
            base_url.rstrip("/"),
            "client",
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"} if token else None,
        )
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep

    def __enter__(self) -> SandboxErpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    # -- posting --

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        """Post one batch (<= 50 bills, each with a ``reference``); return one outcome per bill, in order.

        Transport failures, timeouts, 429 and 5xx are retried with the same ``batch_key``; if no answer
        arrives, every bill is ``unknown`` (the batch may or may not have been applied). Whole-request
        refusals (400, 401, 422) raise :class:`ErpRequestError`: nothing was processed and a blind retry
        would fail again.
        """
        if not bills:
            return []
        check_batch(bills, batch_key, MAX_BATCH_SIZE, MAX_KEY_LENGTH)
        references: list[str] = [b["reference"] for b in bills]  # as given: outcomes echo them unstripped

        content = json.dumps({"bills": bills}, default=_json_default).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch_key}

        attempts = 0
        last_error = "no attempt made"
        body: Any = None
        for attempt in range(1, self.max_retries + 2):
            attempts = attempt
            try:
                response = self._client.post("/api/bills:batch", content=content, headers=headers)
                body = self._check_post_response(response)
                break
            except (httpx.TransportError, _RetryableResponse) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                retry_after = exc.retry_after if isinstance(exc, _RetryableResponse) else None
                if attempt <= self.max_retries:
                    delay = self._delay(attempt, retry_after)
                    logger.debug(
                        "erp batch key=%s attempt=%d failed (%s); retrying in %.2fs",
                        batch_key,
                        attempt,
                        last_error,
                        delay,
                    )
                    self._sleep(delay)

        if body is None:
            outcomes = [
                BillOutcome(ref, "unknown", None, f"no answer after {attempts} attempts: {last_error}")
                for ref in references
            ]
        else:
            outcomes = self._map_results(references, body.get("results"))

        counts = {s: 0 for s in ("posted", "duplicate", "rejected", "unknown")}
        for outcome in outcomes:
            counts[outcome.status] += 1
        logger.info(
            "erp batch key=%s bills=%d posted=%d duplicate=%d rejected=%d unknown=%d attempts=%d",
            batch_key,
            len(bills),
            counts["posted"],
            counts["duplicate"],
            counts["rejected"],
            counts["unknown"],
            attempts,
        )
        return outcomes

    def _check_post_response(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableResponse(f"HTTP {status}", _retry_after_seconds(response))
        raise_for_refusal(
            response, f"ERP refused credentials (HTTP {status})", f"ERP rejected the batch (HTTP {status})"
        )
        try:
            body = response.json()
        except ValueError as exc:
            # The batch may have been applied; a retry with the same key replays the stored answer.
            raise _RetryableResponse("malformed JSON in a 2xx response") from exc
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise _RetryableResponse("2xx response without a 'results' list")
        return body

    @staticmethod
    def _map_results(references: list[str], results: list[Any]) -> list[BillOutcome]:
        """Match results to bills by position, falling back to ``reference``; never trust order blindly."""
        unused = list(range(len(results)))
        outcomes: list[BillOutcome] = []
        for index, reference in enumerate(references):
            match: dict[str, Any] | None = None
            candidates = ([index] if index in unused else []) + unused
            for j in candidates:
                item = results[j]
                if isinstance(item, dict) and item.get("reference") == reference.strip():
                    match = item
                    unused.remove(j)
                    break
            if match is None:
                outcomes.append(BillOutcome(reference, "unknown", None, "bill missing from the ERP response"))
                continue
            status = _STATUS_MAP.get(str(match.get("status")), "unknown")
            error = match.get("error")
            if status == "unknown" and error is None:
                error = f"unexpected status {match.get('status')!r}"
            outcomes.append(BillOutcome(reference, status, match.get("bill_id"), error))
        return outcomes

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _MAX_BACKOFF_SECONDS)
        base = self.backoff * (2 ** (attempt - 1))
        return min(base + random.uniform(0, base / 10), _MAX_BACKOFF_SECONDS)

    # -- read-back --

    def ensure_vendor(self, vendor_name: str) -> str:
        """The native sandbox has no vendor records: bills carry the vendor name, which is its id here."""
        if not vendor_name or not vendor_name.strip():
            raise ValueError("vendor_name is required")
        return vendor_name.strip()

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        """Remote bill id carrying our marker, or None if the ERP has none.

        Raises :class:`ErpUnavailableError` when the ERP cannot be asked: "no answer" must never read as
        "absent", or an ``unknown`` bill would be re-sent and posted twice.
        """
        bills = self._get_bills({"reference": reference})
        return bills[0]["id"] if bills else None

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict[str, Any]]:
        """Bills with this vendor + invoice number (normalised by the ERP), e.g. ones keyed in by hand."""
        return self._get_bills({"vendor_name": vendor_name, "invoice_number": invoice_number})

    def _get_bills(self, params: dict[str, str]) -> list[dict[str, Any]]:
        last_error = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            retry_after: float | None = None
            try:
                response = self._client.get("/api/bills", params=params)
                if response.status_code == 429 or response.status_code >= 500:
                    retry_after = _retry_after_seconds(response)
                    raise _RetryableResponse(f"HTTP {response.status_code}", retry_after)
                raise_for_refusal(response, "ERP refused credentials", "ERP read-back failed")
                bills = response.json()["bills"]
                if not isinstance(bills, list):
                    raise _RetryableResponse("'bills' is not a list")
                return bills
            except (httpx.TransportError, _RetryableResponse, ValueError, KeyError, TypeError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                if attempt <= self.max_retries:
                    self._sleep(self._delay(attempt, retry_after))
        raise ErpUnavailableError(f"ERP read-back failed after {self.max_retries + 1} attempts: {last_error}")
