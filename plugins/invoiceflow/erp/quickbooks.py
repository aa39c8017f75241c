"""QuickBooks Online connector: the ``Bill`` entity through the batch endpoint (erp-apis.md §2).

- ``POST {base}/v3/company/{realm}/batch?requestid=<key>&minorversion=N`` with at most 30 ``BatchItemRequest``,
  correlated by ``bId`` (never by position). ``requestid`` (<= 36 characters; longer batch keys are hashed down)
  makes a retried batch return the original answer.
- Per-item ``Fault``: 6140 (duplicate DocNumber, the company preference) -> ``duplicate`` with the ``TxnId`` from the
  detail; other ``ValidationFault`` codes (610, 2020, 2050, ...) -> ``rejected`` with ``code: message: detail``; a
  ``SystemFault`` or a missing ``bId`` -> ``unknown``.
- 429 (served as XML, no ``Retry-After``): waits ``throttle_wait`` seconds (Intuit says 60) and retries. So that
  429s stay rare, the relay paces batch calls per realm at ``batch_calls_per_minute`` (40, Intuit's limit; 0 turns
  pacing off) across all its tasks, through the warehouse (:mod:`invoiceflow.erp.pacing`).
- Vendors must exist (610 otherwise): before each batch, unknown vendor names are looked up in one query and the
  missing ones created in one batch (cached per connector), so the relay need not call :meth:`ensure_vendor`.
- OAuth2: QuickBooks has no client-credentials grant; the connection holds a refresh token, exchanged for access
  tokens (rotated refresh tokens go to ``on_refresh_token``; persist them, the old one expires).
- Our marker is ``PrivateNote = "invoiceflow:<reference>"``. The query language cannot filter on ``PrivateNote``:
  :meth:`find_bill` searches by vendor + DocNumber when given ``bill=`` (or when this connector posted that
  reference), else scans bills created in the last ``lookback_days``.
- Credit notes (``document_type`` credit_note) are created as ``VendorCredit`` (same batch, same ``requestid``):
  ``VendorRef``, ``DocNumber``, ``PrivateNote`` marker, ``TxnDate``, ``CurrencyRef`` and expense lines with
  *positive* amounts (QuickBooks' convention; the payload's are negative), no ``DueDate``. :meth:`find_bill` reads
  ``VendorCredit`` back the same way as ``Bill``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from invoiceflow.erp.base import (
    CREDIT_NOTE,
    Attempts,
    BillOutcome,
    ErpRateLimitedError,
    ErpUnavailableError,
    OAuthTokens,
    RetryableResponse,
    backoff_delay,
    bearer_request,
    bill_lines,
    check_batch,
    credit_lines,
    derived_key,
    document_type,
    dumps,
    json_client,
    log_outcomes,
    normalize_key,
    raise_for_refusal,
    to_decimal,
)

MARKER_PREFIX = "invoiceflow:"
BILL = "Bill"
VENDOR_CREDIT = "VendorCredit"
#: Spacing of paced batch calls relative to the exact limit.
PACE_MARGIN = 1.05
_TXN_ID = re.compile(r"TxnId=(\d+)")


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class QuickBooksConnector:
    name = "quickbooks"

    def __init__(
        self,
        base_url: str,
        *,
        realm_id: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        token_url: str | None = None,
        on_refresh_token: Callable[[str], None] | None = None,
        expense_account: str = "7",
        minor_version: int = 75,
        max_batch: int = 30,
        throttle_wait: float = 60.0,
        batch_calls_per_minute: float = 40.0,
        lookback_days: int = 30,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_throttle_waits: int = 10,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_batch <= 30:
            raise ValueError("QuickBooks batches hold 1..30 items")
        self.base_url = base_url.rstrip("/")
        self.realm_id = realm_id
        self.expense_account = str(expense_account)
        self.minor_version = minor_version
        self.max_batch = max_batch
        self.throttle_wait = throttle_wait
        # Intuit's limit is 40 batch calls a minute per realm; the relay spaces calls a little wider (5 %) so
        # that network jitter between tasks does not land two calls in one slot (see invoiceflow.erp.pacing).
        self.call_pace: tuple[str, float] | None = (
            (f"quickbooks:{self.base_url}:{realm_id}", 60.0 / batch_calls_per_minute * PACE_MARGIN)
            if batch_calls_per_minute > 0
            else None
        )
        #: Set by the relay for a paced connector: called before every batch call (see invoiceflow.erp.pacing).
        self.wait_for_call_slot: Callable[[], None] | None = None
        self.lookback_days = lookback_days
        self.max_retries = max_retries
        self.max_throttle_waits = max_throttle_waits
        self.backoff = backoff
        self._sleep = sleep
        self._client = json_client(self.base_url, "quickbooks", timeout=timeout, transport=transport)
        self._static_token = access_token
        self.tokens: OAuthTokens | None = None
        if refresh_token:
            self.tokens = OAuthTokens(
                self._client,
                token_url or f"{self.base_url}/oauth2/v1/tokens/bearer",
                client_id or "",
                client_secret or "",
                grant_type="refresh_token",
                refresh_token=refresh_token,
                on_refresh_token=on_refresh_token,
                clock=clock,
            )
        elif not access_token:
            raise ValueError("QuickBooks needs a refresh_token (with client id/secret) or an access_token")
        self._vendors: dict[str, str] = {}
        #: What this connector sent, by reference: (vendor, DocNumber, entity), the read-back hint without bill=.
        self._posted: dict[str, tuple[str, str, str]] = {}

    def __enter__(self) -> QuickBooksConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def prefetch(self) -> None:
        """Start fetching the access token while the caller does other work (see ``OAuthTokens.prefetch``)."""
        if self.tokens is not None:
            self.tokens.prefetch()

    @property
    def _path(self) -> str:
        return f"/v3/company/{self.realm_id}"

    # ------------------------------------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        extra = kwargs.pop("headers", None) or {}
        params = {"minorversion": str(self.minor_version), **(kwargs.pop("params", None) or {})}
        return bearer_request(
            self._client,
            self.tokens,
            "quickbooks",
            method,
            path,
            headers=extra,
            static_token=self._static_token,
            params=params,
            **kwargs,
        )

    def _call(
        self, method: str, path: str, *, ambiguous: bool, **kwargs: Any
    ) -> tuple[dict[str, Any] | None, int, str]:
        """Send with retries. Returns (body, attempts, last error); body None = no usable answer.

        Raises for whole-request refusals and, when nothing can have been applied, for exhausted throttling.
        """
        tries = Attempts()
        paced = self.wait_for_call_slot if path.endswith("/batch") else None
        while True:
            tries.count += 1
            try:
                if paced is not None:
                    paced()
                response = self._request(method, path, **kwargs)
                status = response.status_code
                if status == 429:
                    raise RetryableResponse(
                        "HTTP 429 ThrottleExceeded", self.throttle_wait, rate_limited=True
                    )
                tries.sent = True
                if status >= 500:
                    raise RetryableResponse(f"HTTP {status}")
                raise_for_refusal(
                    response,
                    f"QuickBooks refused credentials (HTTP {status})",
                    f"QuickBooks refused the request (HTTP {status})",
                )
                try:
                    body = response.json()
                except ValueError as exc:
                    raise RetryableResponse("malformed JSON in a 2xx response") from exc
                if not isinstance(body, dict):
                    raise RetryableResponse("2xx response is not an object")
                return body, tries.count, tries.last
            except (httpx.TransportError, RetryableResponse) as exc:
                retry_after = None
                if (limited := tries.failed(exc)) is not None:
                    retry_after = limited.retry_after
                    if tries.waits > self.max_throttle_waits:
                        if not tries.sent or not ambiguous:
                            raise ErpRateLimitedError(
                                f"QuickBooks still throttling after {tries.waits - 1} waits",
                                self.throttle_wait,
                                "minute",
                            ) from exc
                        return None, tries.count, tries.last
                elif tries.count > self.max_retries:
                    if not ambiguous:
                        raise ErpUnavailableError(
                            f"QuickBooks read failed after {tries.count} attempts: {tries.last}"
                        ) from exc
                    return None, tries.count, tries.last
                self._sleep(backoff_delay(max(tries.count, 1), self.backoff, retry_after))

    def query(self, statement: str) -> dict[str, Any]:
        body, _, _ = self._call("GET", f"{self._path}/query", ambiguous=False, params={"query": statement})
        assert body is not None
        return body.get("QueryResponse") or {}

    # ------------------------------------------------------------------------------------------------ vendors

    def ensure_vendor(self, vendor_name: str) -> str:
        return self._ensure_vendors([vendor_name])[(vendor_name or "").strip()]

    def _ensure_vendors(self, names: list[str]) -> dict[str, str]:
        wanted = sorted({(n or "").strip() for n in names} - {""} - set(self._vendors))
        if any(not (n or "").strip() for n in names):
            raise ValueError("vendor_name is required")
        if wanted:
            listed = ", ".join(f"'{_q(n)}'" for n in wanted)
            for vendor in self.query(f"select * from Vendor where DisplayName in ({listed})").get(
                "Vendor", []
            ):
                self._vendors[vendor["DisplayName"]] = vendor["Id"]
            missing = [n for n in wanted if n not in self._vendors]
            for start in range(0, len(missing), 30):
                chunk = missing[start : start + 30]
                items = [
                    {"bId": f"v{i}", "operation": "create", "Vendor": {"DisplayName": name}}
                    for i, name in enumerate(chunk)
                ]
                body, _, last = self._call(
                    "POST",
                    f"{self._path}/batch",
                    ambiguous=True,
                    content=dumps({"BatchItemRequest": items}),
                    headers={"Content-Type": "application/json"},
                )
                results = {r.get("bId"): r for r in (body or {}).get("BatchItemResponse", [])}
                for i, name in enumerate(chunk):
                    result = results.get(f"v{i}") or {}
                    if "Vendor" in result:
                        self._vendors[name] = result["Vendor"]["Id"]
                retry = [n for n in chunk if n not in self._vendors]
                if retry:  # a duplicate-name fault or a lost answer: read back
                    listed = ", ".join(f"'{_q(n)}'" for n in retry)
                    for vendor in self.query(f"select * from Vendor where DisplayName in ({listed})").get(
                        "Vendor", []
                    ):
                        self._vendors[vendor["DisplayName"]] = vendor["Id"]
                if still := [n for n in chunk if n not in self._vendors]:
                    raise ErpUnavailableError(f"could not create QuickBooks vendors {still}: {last}")
        return {n.strip(): self._vendors[n.strip()] for n in names}

    # ------------------------------------------------------------------------------------------------ posting

    def to_bill(self, bill: dict[str, Any], vendor_id: str) -> dict[str, Any]:
        return self._transaction(bill, vendor_id, credit=False)

    def to_vendor_credit(self, bill: dict[str, Any], vendor_id: str) -> dict[str, Any]:
        """A credit note as a ``VendorCredit``: the bill's fields without ``DueDate``, amounts positive."""
        return self._transaction(bill, vendor_id, credit=True)

    def _transaction(self, bill: dict[str, Any], vendor_id: str, *, credit: bool) -> dict[str, Any]:
        if credit:
            bill_line_list, tax = credit_lines(bill)
        else:
            bill_line_list, tax = bill_lines(bill), to_decimal(bill.get("tax_amount"))
        lines = []
        for line in bill_line_list:
            lines.append(
                {
                    "DetailType": "AccountBasedExpenseLineDetail",
                    "Amount": line.amount,
                    "Description": line.description,
                    "AccountBasedExpenseLineDetail": {"AccountRef": {"value": self.expense_account}},
                }
            )
        if tax:
            lines.append(
                {
                    "DetailType": "AccountBasedExpenseLineDetail",
                    "Amount": tax,
                    "Description": "Tax",
                    "AccountBasedExpenseLineDetail": {"AccountRef": {"value": self.expense_account}},
                }
            )
        out: dict[str, Any] = {
            "VendorRef": {"value": vendor_id},
            "DocNumber": bill.get("invoice_number"),
            "PrivateNote": f"{MARKER_PREFIX}{bill['reference'].strip()}",
            "Line": lines,
        }
        if bill.get("invoice_date"):
            out["TxnDate"] = str(bill["invoice_date"])
        if bill.get("due_date") and not credit:
            out["DueDate"] = str(bill["due_date"])
        if bill.get("currency"):
            out["CurrencyRef"] = {"value": str(bill["currency"]).upper()}
        return out

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        if not bills:
            return []
        references = check_batch(bills, batch_key, self.max_batch)
        refused: dict[int, BillOutcome] = {}
        entities: dict[int, str] = {}
        for i, bill in enumerate(bills):
            try:
                entities[i] = VENDOR_CREDIT if document_type(bill) == CREDIT_NOTE else BILL
            except ValueError as exc:
                refused[i] = BillOutcome(references[i], "rejected", None, f"QuickBooks: {exc}")
        if not entities:
            log_outcomes(self.name, batch_key, list(refused.values()), 0)
            return [refused[i] for i in range(len(bills))]
        vendors = self._ensure_vendors([bills[i].get("vendor_name") or "" for i in entities])
        items = []
        for i, entity in entities.items():
            bill = bills[i]
            vendor_id = vendors[(bill.get("vendor_name") or "").strip()]
            txn = (
                self.to_vendor_credit(bill, vendor_id)
                if entity == VENDOR_CREDIT
                else self.to_bill(bill, vendor_id)
            )
            items.append({"bId": str(i), "operation": "create", entity: txn})
            self._posted[references[i]] = (
                str(bill.get("vendor_name") or ""),
                str(bill.get("invoice_number") or ""),
                entity,
            )
        requestid = derived_key(batch_key, [], 36)
        body, attempts, last = self._call(
            "POST",
            f"{self._path}/batch",
            ambiguous=True,
            params={"requestid": requestid},
            content=dumps({"BatchItemRequest": items}),
            headers={"Content-Type": "application/json"},
        )
        if body is None:
            outcomes = [
                refused.get(i)
                or BillOutcome(r, "unknown", None, f"no answer after {attempts} attempts: {last}")
                for i, r in enumerate(references)
            ]
        else:
            by_bid = {
                str(r.get("bId")): r for r in body.get("BatchItemResponse") or [] if isinstance(r, dict)
            }
            outcomes = [
                refused.get(i) or self._map(by_bid.get(str(i)), ref, entities[i])
                for i, ref in enumerate(references)
            ]
        log_outcomes(self.name, batch_key, outcomes, attempts)
        return outcomes

    @staticmethod
    def _map(result: dict[str, Any] | None, ref: str, entity: str = BILL) -> BillOutcome:
        if result is None:
            return BillOutcome(ref, "unknown", None, "bId missing from the batch response")
        if isinstance(result.get(entity), dict) and result[entity].get("Id"):
            return BillOutcome(ref, "posted", str(result[entity]["Id"]), None)
        fault = result.get("Fault") or {}
        errors = [e for e in fault.get("Error") or [] if isinstance(e, dict)]
        reason = (
            "; ".join(f"{e.get('code')}: {e.get('Message')}: {e.get('Detail')}" for e in errors) or "fault"
        )
        for e in errors:
            if str(e.get("code")) in ("6140", "6210") or "Duplicate Document Number" in str(e.get("Message")):
                m = _TXN_ID.search(str(e.get("Detail")))
                return BillOutcome(ref, "duplicate", m.group(1) if m else None, reason)
        if fault.get("type") == "ValidationFault":
            return BillOutcome(ref, "rejected", None, reason)
        return BillOutcome(ref, "unknown", None, f"{fault.get('type') or 'no entity'}: {reason}")

    # ------------------------------------------------------------------------------------------------ read-back

    def _summary(self, bill: dict[str, Any], entity: str = BILL) -> dict[str, Any]:
        note = str(bill.get("PrivateNote") or "")
        return {
            "id": bill.get("Id"),
            "document_type": CREDIT_NOTE if entity == VENDOR_CREDIT else "invoice",
            "vendor_name": (bill.get("VendorRef") or {}).get("name"),
            "vendor_id": (bill.get("VendorRef") or {}).get("value"),
            "invoice_number": bill.get("DocNumber"),
            "reference": note[len(MARKER_PREFIX) :] if note.startswith(MARKER_PREFIX) else None,
            "total_amount": str(bill.get("TotalAmt")) if bill.get("TotalAmt") is not None else None,
            "currency": (bill.get("CurrencyRef") or {}).get("value"),
        }

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        """Bills and vendor credits (``document_type`` in each summary) of this vendor with this DocNumber."""
        key = normalize_key(vendor_name)
        out = []
        for entity in (BILL, VENDOR_CREDIT):
            found = self.query(
                f"select * from {entity} where DocNumber = '{_q(invoice_number.strip())}'"
            ).get(entity, [])
            out.extend(
                self._summary(b, entity)
                for b in found
                if normalize_key((b.get("VendorRef") or {}).get("name")) == key
            )
        return out

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        """The bill or vendor credit carrying our marker: searched by DocNumber (``bill=`` or what this connector
        sent tells which entity), else by scanning both entities' recent transactions."""
        reference = reference.strip()
        hint = None
        if bill and bill.get("invoice_number"):
            try:
                entity = VENDOR_CREDIT if document_type(bill) == CREDIT_NOTE else BILL
            except ValueError:
                entity = BILL
            hint = (str(bill.get("vendor_name") or ""), str(bill["invoice_number"]), entity)
        hint = hint or self._posted.get(reference)
        found: list[dict[str, Any]] = []
        if hint:
            found = self.query(f"select * from {hint[2]} where DocNumber = '{_q(hint[1].strip())}'").get(
                hint[2], []
            )
        else:
            since = (datetime.now(UTC) - timedelta(days=self.lookback_days)).strftime("%Y-%m-%dT%H:%M:%S")
            for entity in (BILL, VENDOR_CREDIT):
                start = 1
                while True:
                    page = self.query(
                        f"select * from {entity} where MetaData.CreateTime >= '{since}' "
                        f"STARTPOSITION {start} MAXRESULTS 1000"
                    ).get(entity, [])
                    found.extend(page)
                    if len(page) < 1000:
                        break
                    start += 1000
        for b in found:
            if b.get("PrivateNote") == f"{MARKER_PREFIX}{reference}":
                return str(b["Id"])
        return None
