"""Xero connector: bills are ``ACCPAY`` invoices (erp-apis.md §1).

- ``PUT {base}/api.xro/2.0/Invoices?summarizeErrors=false`` with ``Idempotency-Key`` (the batch key) and
  ``xero-tenant-id``; at most 50 bills per call. ``summarizeErrors=false`` is always sent: Xero's default answers 400
  for one bad item while still creating the valid ones (the trap); if a 400 ``ValidationException`` still arrives,
  the failed elements are ``rejected`` and the rest ``unknown`` (to be read back), never "nothing happened".
- 429: waits ``Retry-After`` (``X-Rate-Limit-Problem: day`` is not waited for: :class:`ErpRateLimitedError`).
- OAuth2 client credentials (custom connection), refreshed before expiry and once after a 401.
- Our marker (``reference``) is stamped in ``Url`` (``{marker_url}{reference}``) and read back with
  ``where=Url=="..."``. Xero has no duplicate rule for ACCPAY numbers, so before sending, one ``GET /Invoices``
  per batch (``InvoiceNumbers=``) finds bills already there with our marker or with the same contact + number
  (``precheck_duplicates``; turn it off to halve the calls when the outbox already dedupes).
- Contacts: a cached ``ContactID`` is used when :meth:`ensure_vendor` ran, otherwise ``Contact.Name`` (Xero
  matches or creates the contact by name).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from invoiceflow.erp.base import (
    Attempts,
    BillOutcome,
    ErpRateLimitedError,
    ErpRequestError,
    ErpUnavailableError,
    OAuthTokens,
    RetryableResponse,
    backoff_delay,
    bearer_request,
    bill_lines,
    check_batch,
    derived_key,
    dumps,
    error_message,
    json_client,
    log_outcomes,
    logger,
    normalize_key,
    raise_for_refusal,
    retry_after_seconds,
    split_tax,
    to_decimal,
)

API = "/api.xro/2.0"
DEFAULT_MARKER_URL = "https://invoiceflow.local/outbox/"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class XeroConnector:
    name = "xero"

    def __init__(
        self,
        base_url: str,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        token_url: str | None = None,
        scope: str | None = "accounting.transactions accounting.contacts",
        account_code: str = "400",
        tax_type: str | None = "INPUT",
        status: str = "AUTHORISED",
        marker_url: str = DEFAULT_MARKER_URL,
        max_batch: int = 50,
        precheck_duplicates: bool = True,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_rate_limit_waits: int = 20,
        max_retry_after: float = 120.0,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_batch <= 50:
            raise ValueError("Xero batches hold 1..50 bills")
        self.base_url = base_url.rstrip("/")
        self.tenant_id = tenant_id
        self.account_code = account_code
        self.tax_type = tax_type
        self.status = status
        self.marker_url = marker_url
        self.max_batch = max_batch
        self.precheck_duplicates = precheck_duplicates
        self.max_retries = max_retries
        self.max_rate_limit_waits = max_rate_limit_waits
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        self._sleep = sleep
        self._client = json_client(self.base_url, "xero", timeout=timeout, transport=transport)
        self.tokens = OAuthTokens(
            self._client,
            token_url or f"{self.base_url}/connect/token",
            client_id,
            client_secret,
            grant_type="client_credentials",
            scope=scope,
            clock=clock,
        )
        self._contacts: dict[str, str] = {}

    def __enter__(self) -> XeroConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def prefetch(self) -> None:
        """Start fetching the access token while the caller does other work (see ``OAuthTokens.prefetch``)."""
        self.tokens.prefetch()

    # ------------------------------------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with auth headers; refreshes the token once on 401."""
        extra = kwargs.pop("headers", None) or {}
        headers = {"xero-tenant-id": self.tenant_id, **extra}
        return bearer_request(self._client, self.tokens, "xero", method, path, headers=headers, **kwargs)

    def _rate_limited(self, response: httpx.Response) -> RetryableResponse:
        problem = response.headers.get("x-rate-limit-problem")
        retry_after = retry_after_seconds(response)
        if problem == "day" or (retry_after is not None and retry_after > self.max_retry_after):
            raise ErpRateLimitedError(
                f"Xero rate limit ({problem or 'unknown'}), retry after {retry_after}s", retry_after, problem
            )
        return RetryableResponse(
            f"HTTP 429 ({problem})", retry_after if retry_after is not None else 1.0, rate_limited=True
        )

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """A read with retries; raises :class:`ErpUnavailableError` rather than ever returning "nothing"."""
        tries = Attempts()
        while True:
            tries.count += 1
            retry_after: float | None = None
            try:
                response = self._request("GET", path, params=params)
                if response.status_code == 429:
                    raise self._rate_limited(response)
                if response.status_code >= 500:
                    raise RetryableResponse(f"HTTP {response.status_code}")
                raise_for_refusal(response, "Xero refused credentials", "Xero read failed")
                body = response.json()
                if not isinstance(body, dict):
                    raise RetryableResponse("response is not a JSON object")
                return body
            except (httpx.TransportError, RetryableResponse, ValueError) as exc:
                if (limited := tries.failed(exc)) is not None:
                    retry_after = limited.retry_after
                    if tries.waits > self.max_rate_limit_waits:
                        raise ErpUnavailableError(f"Xero read still rate-limited: {tries.last}") from exc
                if tries.count > self.max_retries:
                    raise ErpUnavailableError(
                        f"Xero read failed after {tries.count} attempts: {tries.last}"
                    ) from exc
                self._sleep(backoff_delay(max(tries.count, 1), self.backoff, retry_after))

    # ------------------------------------------------------------------------------------------------ mapping

    def marker(self, reference: str) -> str:
        return f"{self.marker_url}{reference}"

    def _reference_of(self, invoice: dict[str, Any]) -> str | None:
        url = invoice.get("Url") or ""
        return url[len(self.marker_url) :] if url.startswith(self.marker_url) else None

    def to_invoice(self, bill: dict[str, Any]) -> dict[str, Any]:
        """Map an ``erp_payload()`` bill to a Xero ACCPAY invoice."""
        vendor = (bill.get("vendor_name") or "").strip()
        contact = {"ContactID": self._contacts[vendor]} if vendor in self._contacts else {"Name": vendor}
        lines = bill_lines(bill)
        taxes = split_tax(lines, to_decimal(bill.get("tax_amount")))
        items = []
        for line, tax in zip(lines, taxes, strict=True):
            item: dict[str, Any] = {
                "Description": line.description,
                "Quantity": line.quantity,
                "UnitAmount": line.unit_price,
                "LineAmount": line.amount,
                "AccountCode": self.account_code,
            }
            if self.tax_type:
                item["TaxType"] = self.tax_type
                item["TaxAmount"] = tax
            items.append(item)
        invoice: dict[str, Any] = {
            "Type": "ACCPAY",
            "Contact": contact,
            "InvoiceNumber": bill.get("invoice_number"),
            "Url": self.marker(bill["reference"].strip()),
            "Status": self.status,
            "LineAmountTypes": "Exclusive" if self.tax_type else "NoTax",
            "LineItems": items,
        }
        for field, key in (("Date", "invoice_date"), ("DueDate", "due_date"), ("CurrencyCode", "currency")):
            if bill.get(key):
                invoice[field] = str(bill[key])
        if self.status == "AUTHORISED" and "DueDate" not in invoice and "Date" in invoice:
            invoice["DueDate"] = invoice["Date"]  # Xero requires a due date for AUTHORISED bills
        return invoice

    @staticmethod
    def _summary(invoice: dict[str, Any], marker_url: str) -> dict[str, Any]:
        url = invoice.get("Url") or ""
        return {
            "id": invoice.get("InvoiceID"),
            "vendor_name": (invoice.get("Contact") or {}).get("Name"),
            "contact_id": (invoice.get("Contact") or {}).get("ContactID"),
            "invoice_number": invoice.get("InvoiceNumber"),
            "reference": url[len(marker_url) :] if url.startswith(marker_url) else None,
            "total_amount": str(invoice.get("Total")) if invoice.get("Total") is not None else None,
            "currency": invoice.get("CurrencyCode"),
            "status": invoice.get("Status"),
        }

    # ------------------------------------------------------------------------------------------------ posting

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        """PUT one batch; one outcome per bill in order (see :mod:`invoiceflow.erp.base` for the contract)."""
        if not bills:
            return []
        references = check_batch(bills, batch_key, self.max_batch)
        outcomes: dict[int, BillOutcome] = {}
        if self.precheck_duplicates:
            outcomes.update(self._precheck(bills, references))
        send = [i for i in range(len(bills)) if i not in outcomes]
        attempts = 0
        if send:
            key = (
                batch_key
                if len(send) == len(bills)
                else derived_key(batch_key, [references[i] for i in send], 128)
            )
            body = {"Invoices": [self.to_invoice(bills[i]) for i in send]}
            results, attempts = self._put_invoices(body, key, [references[i] for i in send])
            outcomes.update(zip(send, results, strict=True))
        ordered = [outcomes[i] for i in range(len(bills))]
        log_outcomes(self.name, batch_key, ordered, attempts)
        return ordered

    def _precheck(self, bills: list[dict], references: list[str]) -> dict[int, BillOutcome]:
        numbers = sorted({str(b.get("invoice_number") or "").strip() for b in bills} - {""})
        if not numbers:
            return {}
        found = (
            self._get(
                f"{API}/Invoices",
                {
                    "where": 'Type=="ACCPAY"',
                    "InvoiceNumbers": ",".join(numbers),
                    "Statuses": "DRAFT,SUBMITTED,AUTHORISED,PAID",
                },
            ).get("Invoices")
            or []
        )
        by_ref: dict[str, str] = {}
        by_key: dict[tuple[str, str], str] = {}
        for inv in found:
            ref = self._reference_of(inv)
            if ref:
                by_ref.setdefault(ref, inv["InvoiceID"])
            contact = inv.get("Contact") or {}
            name_key = normalize_key(contact.get("Name"))
            by_key.setdefault((name_key, normalize_key(inv.get("InvoiceNumber"))), inv["InvoiceID"])
        result: dict[int, BillOutcome] = {}
        for i, (bill, ref) in enumerate(zip(bills, references, strict=True)):
            if ref in by_ref:
                result[i] = BillOutcome(ref, "duplicate", by_ref[ref], None)
                continue
            natural = (normalize_key(bill.get("vendor_name")), normalize_key(bill.get("invoice_number")))
            if natural in by_key:
                result[i] = BillOutcome(
                    ref, "duplicate", by_key[natural], "Xero already has a bill with this contact and number"
                )
        return result

    def _put_invoices(
        self, body: dict[str, Any], key: str, references: list[str]
    ) -> tuple[list[BillOutcome], int]:
        content = dumps(body)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        tries = Attempts()  # tries.sent: did any attempt possibly reach Xero?
        while True:
            tries.count += 1
            retry_after: float | None = None
            try:
                response = self._request(
                    "PUT",
                    f"{API}/Invoices",
                    params={"summarizeErrors": "false"},
                    content=content,
                    headers=headers,
                )
                status = response.status_code
                if status == 429:
                    raise self._rate_limited(response)
                tries.sent = True
                if status >= 500:
                    raise RetryableResponse(f"HTTP {status}")
                if status == 400:
                    parsed = self._validation_exception(response, body, references)
                    if parsed is not None:
                        return parsed, tries.count
                raise_for_refusal(
                    response,
                    f"Xero refused credentials (HTTP {status})",
                    f"Xero rejected the batch (HTTP {status})",
                )
                try:
                    payload = response.json()
                    items = payload["Invoices"]
                    if not isinstance(items, list):
                        raise TypeError("Invoices is not a list")
                except (ValueError, KeyError, TypeError) as exc:
                    raise RetryableResponse(f"malformed 2xx response: {exc}") from exc
                return self._map(items, body["Invoices"], references), tries.count
            except ErpRateLimitedError:
                if tries.sent:
                    break
                raise
            except (httpx.TransportError, RetryableResponse) as exc:
                if (limited := tries.failed(exc)) is not None:
                    retry_after = limited.retry_after
                    if tries.waits > self.max_rate_limit_waits:
                        if not tries.sent:
                            raise ErpRateLimitedError(
                                f"Xero still rate-limited after {tries.waits} waits", retry_after, "minute"
                            ) from exc
                        break
                elif tries.count > self.max_retries:
                    break
                delay = backoff_delay(max(tries.count, 1), self.backoff, retry_after)
                logger.debug("xero PUT key=%s failed (%s); retrying in %.2fs", key, tries.last, delay)
                self._sleep(delay)
        return [
            BillOutcome(r, "unknown", None, f"no answer after {tries.count} attempts: {tries.last}")
            for r in references
        ], tries.count

    def _map(self, items: list[Any], sent: list[dict[str, Any]], references: list[str]) -> list[BillOutcome]:
        """Correlate by position, checked against our marker (then by marker anywhere): never trust order alone."""
        by_marker: dict[str, dict[str, Any]] = {}
        for item in items:
            if isinstance(item, dict) and item.get("Url"):
                by_marker.setdefault(item["Url"], item)
        outcomes = []
        for i, (invoice, ref) in enumerate(zip(sent, references, strict=True)):
            item = items[i] if i < len(items) and isinstance(items[i], dict) else None
            if item is None or item.get("Url") != invoice["Url"]:
                item = by_marker.get(invoice["Url"])
            if item is None:
                outcomes.append(BillOutcome(ref, "unknown", None, "bill missing from Xero's response"))
                continue
            errors = [e.get("Message", "") for e in item.get("ValidationErrors") or [] if isinstance(e, dict)]
            if item.get("HasErrors") or item.get("StatusAttributeString") == "ERROR" or errors:
                outcomes.append(BillOutcome(ref, "rejected", None, "; ".join(errors) or "validation error"))
            elif item.get("InvoiceID"):
                outcomes.append(BillOutcome(ref, "posted", item["InvoiceID"], None))
            else:
                outcomes.append(BillOutcome(ref, "unknown", None, "no InvoiceID in Xero's response"))
        return outcomes

    def _validation_exception(
        self, response: httpx.Response, body: dict[str, Any], references: list[str]
    ) -> list[BillOutcome] | None:
        """The summarizeErrors trap: 400 lists the failed elements, the valid ones may have been created."""
        try:
            err = response.json()
        except ValueError:
            return None
        if not isinstance(err, dict) or err.get("Type") != "ValidationException" or not err.get("Elements"):
            return None
        failed = {}
        for element in err["Elements"]:
            if isinstance(element, dict) and element.get("Url"):
                messages = [e.get("Message", "") for e in element.get("ValidationErrors") or []]
                failed[element["Url"]] = "; ".join(messages) or "validation error"
        outcomes = []
        for invoice, ref in zip(body["Invoices"], references, strict=True):
            if invoice["Url"] in failed:
                outcomes.append(BillOutcome(ref, "rejected", None, failed[invoice["Url"]]))
            else:
                outcomes.append(
                    BillOutcome(
                        ref,
                        "unknown",
                        None,
                        "Xero answered 400 for the batch; this bill may exist: read back",
                    )
                )
        return outcomes

    # ------------------------------------------------------------------------------------------------ read-back

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        found = (
            self._get(
                f"{API}/Invoices",
                {
                    "where": f'Type=="ACCPAY" AND Url=="{_quote(self.marker(reference.strip()))}"',
                    "Statuses": "DRAFT,SUBMITTED,AUTHORISED,PAID",
                },
            ).get("Invoices")
            or []
        )
        return found[0]["InvoiceID"] if found else None

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        found = (
            self._get(
                f"{API}/Invoices",
                {"where": 'Type=="ACCPAY"', "InvoiceNumbers": invoice_number.strip()},
            ).get("Invoices")
            or []
        )
        key = normalize_key(vendor_name)
        return [
            self._summary(inv, self.marker_url)
            for inv in found
            if normalize_key((inv.get("Contact") or {}).get("Name")) == key
            and normalize_key(inv.get("InvoiceNumber")) == normalize_key(invoice_number)
        ]

    def ensure_vendor(self, vendor_name: str) -> str:
        name = (vendor_name or "").strip()
        if not name:
            raise ValueError("vendor_name is required")
        if name in self._contacts:
            return self._contacts[name]
        found = self._get(f"{API}/Contacts", {"where": f'Name=="{_quote(name)}"'}).get("Contacts") or []
        if found:
            contact_id = found[0]["ContactID"]
        else:
            response = self._request(
                "PUT",
                f"{API}/Contacts",
                params={"summarizeErrors": "false"},
                content=dumps({"Contacts": [{"Name": name, "IsSupplier": True}]}),
                headers={"Content-Type": "application/json"},
            )
            if response.status_code == 429:
                raise ErpRateLimitedError(
                    "Xero rate limit while creating a contact", retry_after_seconds(response)
                )
            if response.status_code >= 300:
                message, err = error_message(response)
                if response.status_code >= 500:
                    raise ErpUnavailableError(f"Xero contact creation failed: {message}")
                raise ErpRequestError(f"Xero refused the contact: {message}", response.status_code, err)
            contact_id = response.json()["Contacts"][0]["ContactID"]
        self._contacts[name] = contact_id
        return contact_id
