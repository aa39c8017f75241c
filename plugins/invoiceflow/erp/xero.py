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
- Credit notes (``document_type`` credit_note) are never bills: they go to ``PUT {base}/api.xro/2.0/CreditNotes``
  (createCreditNotes: same ``summarizeErrors=false`` and ``Idempotency-Key``, a key derived from the batch key) as
  ``Type: ACCPAYCREDIT`` with the supplier's number in ``CreditNoteNumber`` and *positive* amounts (Xero's
  convention; the payload's are negative). A Xero credit note has no ``Url`` (and ``Reference`` is kept for
  ACCRECCREDIT only), so it carries no marker: the precheck and :meth:`find_bill` (given ``bill=``, or for a
  reference this connector sent) find it by contact + ``CreditNoteNumber``, which the outbox keeps unique.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from invoiceflow.erp.base import (
    CREDIT_NOTE,
    INVOICE,
    Attempts,
    BillLine,
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
    credit_lines,
    derived_key,
    document_type,
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
CREDIT_NOTE_TYPE = "ACCPAYCREDIT"
#: Credit-note numbers per read-back query (``where`` with OR; keeps the URL short).
CREDIT_NOTE_NUMBERS_PER_QUERY = 20
_LIVE = ("DRAFT", "SUBMITTED", "AUTHORISED", "PAID")


@dataclass(frozen=True)
class _Endpoint:
    """Where a document type is posted: the collection (path and body key) and the id field of its answers."""

    collection: str
    id_field: str


INVOICES = _Endpoint("Invoices", "InvoiceID")
CREDIT_NOTES = _Endpoint("CreditNotes", "CreditNoteID")


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
        #: Credit notes this connector sent, by reference: (vendor, number), so find_bill finds them without bill=.
        self._credits_sent: dict[str, tuple[str, str]] = {}

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

    def _contact(self, bill: dict[str, Any]) -> dict[str, str]:
        vendor = (bill.get("vendor_name") or "").strip()
        return {"ContactID": self._contacts[vendor]} if vendor in self._contacts else {"Name": vendor}

    def _line_items(self, lines: list[BillLine], taxes: list[Any]) -> list[dict[str, Any]]:
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
        return items

    def to_invoice(self, bill: dict[str, Any]) -> dict[str, Any]:
        """Map an ``erp_payload()`` bill to a Xero ACCPAY invoice."""
        lines = bill_lines(bill)
        taxes = split_tax(lines, to_decimal(bill.get("tax_amount")))
        invoice: dict[str, Any] = {
            "Type": "ACCPAY",
            "Contact": self._contact(bill),
            "InvoiceNumber": bill.get("invoice_number"),
            "Url": self.marker(bill["reference"].strip()),
            "Status": self.status,
            "LineAmountTypes": "Exclusive" if self.tax_type else "NoTax",
            "LineItems": self._line_items(lines, taxes),
        }
        for field, key in (("Date", "invoice_date"), ("DueDate", "due_date"), ("CurrencyCode", "currency")):
            if bill.get(key):
                invoice[field] = str(bill[key])
        if self.status == "AUTHORISED" and "DueDate" not in invoice and "Date" in invoice:
            invoice["DueDate"] = invoice["Date"]  # Xero requires a due date for AUTHORISED bills
        return invoice

    def to_credit_note(self, bill: dict[str, Any]) -> dict[str, Any]:
        """Map an ``erp_payload()`` credit note to a Xero ACCPAYCREDIT credit note, amounts positive (Xero's sign
        convention: the type says it is a credit; the payload's amounts are negative)."""
        lines, tax = credit_lines(bill)
        note: dict[str, Any] = {
            "Type": CREDIT_NOTE_TYPE,
            "Contact": self._contact(bill),
            "CreditNoteNumber": bill.get("invoice_number"),
            "Status": self.status,
            "LineAmountTypes": "Exclusive" if self.tax_type else "NoTax",
            "LineItems": self._line_items(lines, split_tax(lines, tax)),
        }
        for field, key in (("Date", "invoice_date"), ("CurrencyCode", "currency")):
            if bill.get(key):
                note[field] = str(bill[key])
        return note

    @staticmethod
    def _summary(invoice: dict[str, Any], marker_url: str) -> dict[str, Any]:
        url = invoice.get("Url") or ""
        credit = "CreditNoteID" in invoice
        return {
            "id": invoice.get("CreditNoteID" if credit else "InvoiceID"),
            "document_type": CREDIT_NOTE if credit else INVOICE,
            "vendor_name": (invoice.get("Contact") or {}).get("Name"),
            "contact_id": (invoice.get("Contact") or {}).get("ContactID"),
            "invoice_number": invoice.get("CreditNoteNumber" if credit else "InvoiceNumber"),
            "reference": url[len(marker_url) :] if url.startswith(marker_url) else None,
            "total_amount": str(invoice.get("Total")) if invoice.get("Total") is not None else None,
            "currency": invoice.get("CurrencyCode"),
            "status": invoice.get("Status"),
        }

    def _same_contact(self, sent: dict[str, Any], item: dict[str, Any]) -> bool:
        sent_contact, contact = sent.get("Contact") or {}, item.get("Contact") or {}
        if sent_contact.get("ContactID") and contact.get("ContactID"):
            return sent_contact["ContactID"] == contact["ContactID"]
        return normalize_key(sent_contact.get("Name")) == normalize_key(contact.get("Name"))

    def _same(self, endpoint: _Endpoint, sent: dict[str, Any], item: dict[str, Any]) -> bool:
        """Whether a response item is the document we sent: our marker for invoices; for credit notes (no marker)
        the credit-note number and the contact."""
        if endpoint is INVOICES:
            return bool(item.get("Url")) and item.get("Url") == sent["Url"]
        return normalize_key(item.get("CreditNoteNumber")) == normalize_key(
            sent.get("CreditNoteNumber")
        ) and self._same_contact(sent, item)

    # ------------------------------------------------------------------------------------------------ posting

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        """PUT one batch; one outcome per bill in order (see :mod:`invoiceflow.erp.base` for the contract).

        Invoices go to ``/Invoices`` and credit notes to ``/CreditNotes``: two requests when a batch holds both. An
        exception from the second one would hide what the first applied, so it becomes ``unknown`` outcomes for its
        documents instead (read back before anything is sent again).
        """
        if not bills:
            return []
        references = check_batch(bills, batch_key, self.max_batch)
        outcomes: dict[int, BillOutcome] = {}
        kinds: dict[int, str] = {}
        for i, bill in enumerate(bills):
            try:
                kinds[i] = document_type(bill)
            except ValueError as exc:
                outcomes[i] = BillOutcome(references[i], "rejected", None, f"Xero: {exc}")
        invoices = [i for i, kind in kinds.items() if kind == INVOICE]
        credits = [i for i, kind in kinds.items() if kind == CREDIT_NOTE]
        for i in credits:
            bill = bills[i]
            self._credits_sent[references[i]] = (
                str(bill.get("vendor_name") or ""),
                str(bill.get("invoice_number") or ""),
            )
        if self.precheck_duplicates:
            outcomes.update(self._precheck(bills, references, invoices))
            outcomes.update(self._precheck_credits(bills, references, credits))
        attempts = 0
        applied = False
        for endpoint, group in ((INVOICES, invoices), (CREDIT_NOTES, credits)):
            send = [i for i in group if i not in outcomes]
            if not send:
                continue
            refs = [references[i] for i in send]
            if endpoint is INVOICES:
                key = batch_key if len(send) == len(bills) else derived_key(batch_key, refs, 128)
                docs = [self.to_invoice(bills[i]) for i in send]
            else:
                key = derived_key(batch_key, [endpoint.collection, *refs], 128)
                docs = [self.to_credit_note(bills[i]) for i in send]
            try:
                results, tries = self._put(endpoint, {endpoint.collection: docs}, key, refs)
            except (ErpRequestError, ErpRateLimitedError, ErpUnavailableError) as exc:
                if not applied:
                    raise
                results, tries = [BillOutcome(r, "unknown", None, f"not confirmed: {exc}") for r in refs], 1
            attempts += tries
            applied = True
            outcomes.update(zip(send, results, strict=True))
        ordered = [outcomes[i] for i in range(len(bills))]
        log_outcomes(self.name, batch_key, ordered, attempts)
        return ordered

    def _precheck(
        self, bills: list[dict], references: list[str], indexes: list[int]
    ) -> dict[int, BillOutcome]:
        numbers = sorted({str(bills[i].get("invoice_number") or "").strip() for i in indexes} - {""})
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
        for i in indexes:
            bill, ref = bills[i], references[i]
            if ref in by_ref:
                result[i] = BillOutcome(ref, "duplicate", by_ref[ref], None)
                continue
            natural = (normalize_key(bill.get("vendor_name")), normalize_key(bill.get("invoice_number")))
            if natural in by_key:
                result[i] = BillOutcome(
                    ref, "duplicate", by_key[natural], "Xero already has a bill with this contact and number"
                )
        return result

    def _credit_notes(self, numbers: list[str]) -> list[dict[str, Any]]:
        """Live ACCPAYCREDIT credit notes with one of these numbers (a few ``GET /CreditNotes`` with OR-ed
        ``where`` clauses)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(numbers), CREDIT_NOTE_NUMBERS_PER_QUERY):
            chunk = numbers[start : start + CREDIT_NOTE_NUMBERS_PER_QUERY]
            where = " OR ".join(
                f'Type=="{CREDIT_NOTE_TYPE}" AND CreditNoteNumber=="{_quote(n)}"' for n in chunk
            )
            notes = self._get(f"{API}/CreditNotes", {"where": where}).get("CreditNotes") or []
            found.extend(
                n
                for n in notes
                if isinstance(n, dict) and n.get("Type") == CREDIT_NOTE_TYPE and n.get("Status") in _LIVE
            )
        return found

    def _precheck_credits(
        self, bills: list[dict], references: list[str], indexes: list[int]
    ) -> dict[int, BillOutcome]:
        """Credit notes Xero already has (same contact + number): sent before with the answer lost, or keyed in."""
        numbers = sorted({str(bills[i].get("invoice_number") or "").strip() for i in indexes} - {""})
        if not numbers:
            return {}
        by_key: dict[tuple[str, str], str] = {}
        for note in self._credit_notes(numbers):
            contact = note.get("Contact") or {}
            natural = (normalize_key(contact.get("Name")), normalize_key(note.get("CreditNoteNumber")))
            by_key.setdefault(natural, note["CreditNoteID"])
        result: dict[int, BillOutcome] = {}
        for i in indexes:
            bill = bills[i]
            natural = (normalize_key(bill.get("vendor_name")), normalize_key(bill.get("invoice_number")))
            if natural in by_key:
                result[i] = BillOutcome(
                    references[i],
                    "duplicate",
                    by_key[natural],
                    "Xero already has a credit note with this contact and number",
                )
        return result

    def _put(
        self, endpoint: _Endpoint, body: dict[str, Any], key: str, references: list[str]
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
                    f"{API}/{endpoint.collection}",
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
                    parsed = self._validation_exception(endpoint, response, body, references)
                    if parsed is not None:
                        return parsed, tries.count
                raise_for_refusal(
                    response,
                    f"Xero refused credentials (HTTP {status})",
                    f"Xero rejected the batch (HTTP {status})",
                )
                try:
                    payload = response.json()
                    items = payload[endpoint.collection]
                    if not isinstance(items, list):
                        raise TypeError(f"{endpoint.collection} is not a list")
                except (ValueError, KeyError, TypeError) as exc:
                    raise RetryableResponse(f"malformed 2xx response: {exc}") from exc
                return self._map(endpoint, items, body[endpoint.collection], references), tries.count
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
                logger.debug(
                    "xero PUT %s key=%s failed (%s); retrying in %.2fs",
                    endpoint.collection,
                    key,
                    tries.last,
                    delay,
                )
                self._sleep(delay)
        return [
            BillOutcome(r, "unknown", None, f"no answer after {tries.count} attempts: {tries.last}")
            for r in references
        ], tries.count

    def _map(
        self, endpoint: _Endpoint, items: list[Any], sent: list[dict[str, Any]], references: list[str]
    ) -> list[BillOutcome]:
        """Correlate by position, checked against our marker (credit notes: number + contact), then by that key
        anywhere in the answer: never trust order alone."""
        candidates = [item for item in items if isinstance(item, dict)]
        outcomes = []
        for i, (doc, ref) in enumerate(zip(sent, references, strict=True)):
            item = items[i] if i < len(items) and isinstance(items[i], dict) else None
            if item is None or not self._same(endpoint, doc, item):
                item = next((c for c in candidates if self._same(endpoint, doc, c)), None)
            if item is None:
                outcomes.append(BillOutcome(ref, "unknown", None, "bill missing from Xero's response"))
                continue
            errors = [e.get("Message", "") for e in item.get("ValidationErrors") or [] if isinstance(e, dict)]
            if item.get("HasErrors") or item.get("StatusAttributeString") == "ERROR" or errors:
                outcomes.append(BillOutcome(ref, "rejected", None, "; ".join(errors) or "validation error"))
            elif item.get(endpoint.id_field):
                outcomes.append(BillOutcome(ref, "posted", item[endpoint.id_field], None))
            else:
                outcomes.append(
                    BillOutcome(ref, "unknown", None, f"no {endpoint.id_field} in Xero's response")
                )
        return outcomes

    def _validation_exception(
        self, endpoint: _Endpoint, response: httpx.Response, body: dict[str, Any], references: list[str]
    ) -> list[BillOutcome] | None:
        """The summarizeErrors trap: 400 lists the failed elements, the valid ones may have been created."""
        try:
            err = response.json()
        except ValueError:
            return None
        if not isinstance(err, dict) or err.get("Type") != "ValidationException" or not err.get("Elements"):
            return None
        elements = [e for e in err["Elements"] if isinstance(e, dict)]
        outcomes = []
        for doc, ref in zip(body[endpoint.collection], references, strict=True):
            element = next((e for e in elements if self._same(endpoint, doc, e)), None)
            if element is not None:
                messages = [e.get("Message", "") for e in element.get("ValidationErrors") or []]
                outcomes.append(BillOutcome(ref, "rejected", None, "; ".join(messages) or "validation error"))
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
        """The bill with our marker; a credit note (``bill`` says so, or this connector sent it) by its contact and
        number, as Xero credit notes hold no marker."""
        reference = reference.strip()
        credit = self._credits_sent.get(reference)
        if bill is not None:
            try:
                kind = document_type(bill)
            except ValueError:
                kind = INVOICE
            if kind == CREDIT_NOTE:
                credit = (str(bill.get("vendor_name") or ""), str(bill.get("invoice_number") or ""))
        if credit is not None:
            vendor, number = (normalize_key(credit[0]), credit[1].strip())
            if not number:
                return None
            for note in self._credit_notes([number]):
                if normalize_key((note.get("Contact") or {}).get("Name")) == vendor and normalize_key(
                    note.get("CreditNoteNumber")
                ) == normalize_key(number):
                    return note["CreditNoteID"]
            return None
        found = (
            self._get(
                f"{API}/Invoices",
                {
                    "where": f'Type=="ACCPAY" AND Url=="{_quote(self.marker(reference))}"',
                    "Statuses": "DRAFT,SUBMITTED,AUTHORISED,PAID",
                },
            ).get("Invoices")
            or []
        )
        return found[0]["InvoiceID"] if found else None

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        """Bills and credit notes (``document_type`` in each summary) of this contact with this number."""
        found = (
            self._get(
                f"{API}/Invoices",
                {"where": 'Type=="ACCPAY"', "InvoiceNumbers": invoice_number.strip()},
            ).get("Invoices")
            or []
        )
        if invoice_number.strip():
            found = [*found, *self._credit_notes([invoice_number.strip()])]
        key = normalize_key(vendor_name)
        return [
            summary
            for summary in (self._summary(doc, self.marker_url) for doc in found)
            if normalize_key(summary["vendor_name"]) == key
            and normalize_key(summary["invoice_number"]) == normalize_key(invoice_number)
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
