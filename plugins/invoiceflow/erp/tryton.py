"""Tryton connector: supplier invoices (``account.invoice``, ``type='in'``) over trytond's JSON-RPC.

Calls go to ``POST {url}/{database}/rpc/`` after ``common.db.login`` (``Authorization: Session
base64(login:uid:session)``). Per bill: search our marker (``description = "invoiceflow:<reference>"``: Tryton has
no idempotency key, so this is what makes a resend safe), ensure the supplier party, create a draft invoice with one
line per bill line on the expense account (plus a tax line when the bill has ``tax_amount``), then
``validate_invoice`` and ``post``.

Tryton's duplicate rule is a *warning*: same company, supplier and ``reference`` (the supplier's invoice number)
within ±60 days raises ``InvoiceSimilarWarning`` on validate/post. The connector never records a
``res.user.warning`` to bypass it: it deletes its draft and answers ``duplicate`` with the similar invoice's id.
Other ``UserError`` answers are ``rejected`` (the draft is deleted). ``remote_id`` is the invoice id as a string.

Tryton has no batch endpoint with partial success, so a batch is a loop of small calls (no rate limits here).

Credit notes (``document_type`` credit_note): Tryton has no separate credit document; a supplier credit note is an
``account.invoice`` of type ``in`` whose lines are all negative (its total negative), numbered from the fiscal
year's supplier credit-note sequence when posted (``sequence_type`` credit_note). The connector writes it the way
Tryton's own credit wizard does: negative quantities, positive unit prices (the tax line likewise), whichever sign
the payload uses. The marker, the read-back and the duplicate warning work as for bills.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx

from invoiceflow.erp.base import (
    CREDIT_NOTE,
    INVOICE,
    BillLine,
    BillOutcome,
    ErpAuthError,
    ErpError,
    ErpUnavailableError,
    bill_lines,
    check_batch,
    credit_lines,
    document_type,
    log_outcomes,
    logger,
    normalize_key,
    to_decimal,
)

MARKER_PREFIX = "invoiceflow:"


class TrytonRpcError(ErpError):
    """A JSON-RPC ``error`` answer: ``kind`` is e.g. ``UserError``, ``UserWarning``, ``AccessError``."""

    def __init__(self, kind: str, args: Any) -> None:
        self.kind = kind
        self.args_ = args
        message = args[1] if kind == "UserWarning" and isinstance(args, list) and len(args) > 1 else args
        if isinstance(message, list) and message:
            message = message[0]
        super().__init__(f"{kind}: {message}")
        self.message = str(message)


def _decimal(value: Decimal) -> dict[str, str]:
    return {"__class__": "Decimal", "decimal": str(value)}


def _date(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    d = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
    return {"__class__": "date", "year": d.year, "month": d.month, "day": d.day}


def _dotted(row: dict[str, Any], field: str, sub: str) -> Any:
    """Tryton returns ``party.name`` read as ``{"party.": {"name": ...}}`` (older versions: ``"party.name"``)."""
    if f"{field}.{sub}" in row:
        return row[f"{field}.{sub}"]
    nested = row.get(f"{field}.")
    return nested.get(sub) if isinstance(nested, dict) else None


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__class__") == "Decimal":
        return value["decimal"]
    if isinstance(value, dict) and value.get("__class__") == "date":
        return dt.date(value["year"], value["month"], value["day"]).isoformat()
    return value


class TrytonConnector:
    name = "tryton"

    def __init__(
        self,
        url: str,
        database: str,
        login: str,
        password: str,
        *,
        expense_account: str | None = None,
        tax_account: str | None = None,
        post: bool = True,
        max_batch: int = 50,
        timeout: float = 60.0,
        max_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._login = login
        self._password = password
        self.expense_account_code = expense_account
        self.tax_account_code = tax_account
        self.post = post
        self.max_batch = max_batch
        self.max_retries = max_retries
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._auth: str | None = None
        self._context: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._setup: dict[str, Any] | None = None
        self._parties: dict[str, int] = {}

    def __enter__(self) -> TrytonConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------------ RPC

    def _post(self, method: str, params: list[Any], auth: str | None) -> Any:
        headers = {"Authorization": auth} if auth else {}
        response = self._client.post(
            f"{self.url}/{self.database}/rpc/",
            json={"id": next(self._ids), "method": method, "params": params},
            headers=headers,
        )
        if response.status_code in (401, 403):
            raise ErpAuthError(
                f"Tryton refused the session (HTTP {response.status_code})", response.status_code
            )
        if response.status_code >= 500:
            raise ErpUnavailableError(f"Tryton answered HTTP {response.status_code}")
        response.raise_for_status()
        body = response.json()
        if body.get("error") is not None:
            error = body["error"]
            kind = error[0] if isinstance(error, list) and error else "Error"
            raise TrytonRpcError(str(kind), error[1] if isinstance(error, list) and len(error) > 1 else error)
        return body.get("result")

    def _session(self) -> str:
        if self._auth is None:
            result = self._post("common.db.login", [self._login, {"password": self._password}], None)
            if not result:
                raise ErpAuthError("Tryton login failed", 401)
            uid, session = result[0], result[1]
            self._auth = "Session " + base64.b64encode(f"{self._login}:{uid}:{session}".encode()).decode()
            self._context = self._post("model.res.user.get_preferences", [True, {}], self._auth)
        return self._auth

    def call(self, method: str, *params: Any) -> Any:
        """``model.<name>.<method>(*params, context)``; re-login once on an expired session."""
        for attempt in (1, 2):
            auth = self._session()
            try:
                return self._post(method, [*params, self._context or {}], auth)
            except ErpAuthError:
                if attempt == 2:
                    raise
                self._auth = None
        raise AssertionError("unreachable")

    def _read_call(self, method: str, *params: Any) -> Any:
        last = "no attempt"
        for attempt in range(1, self.max_retries + 2):
            try:
                return self.call(method, *params)
            except (httpx.TransportError, ErpUnavailableError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                if attempt <= self.max_retries:
                    self._sleep(0.5 * attempt)
        raise ErpUnavailableError(f"Tryton read failed: {last}")

    # ------------------------------------------------------------------------------------------------ setup

    def _config(self) -> dict[str, Any]:
        if self._setup is not None:
            return self._setup
        self._session()
        company = (self._context or {}).get("company")
        if not company:
            raise ErpError("the Tryton user has no current company")
        currency = self.call("model.company.company.read", [company], ["currency"])[0]["currency"]

        def account(code: str | None, domain: list[Any]) -> int:
            search = [["code", "=", code]] if code else domain
            found = self.call(
                "model.account.account.search",
                [*search, ["closed", "!=", True], ["company", "=", company]],
                0,
                1,
                [["code", "ASC"]],
            )
            if not found:
                raise ErpError(f"no Tryton account for {code or domain}")
            return found[0]

        expense = account(
            self.expense_account_code, [["type.expense", "=", True], ["type.statement", "=", "income"]]
        )
        tax_account = account(
            self.tax_account_code, [["type.expense", "=", True], ["type.statement", "=", "income"]]
        )
        conf = self.call("model.account.configuration.read", [1], ["default_account_payable"])[0]
        journal = self.call("model.account.journal.search", [["type", "=", "expense"]], 0, 1, None)
        if not conf.get("default_account_payable") or not journal:
            raise ErpError("Tryton accounting is not set up (default payable account / expense journal)")
        self._setup = {
            "company": company,
            "currency": currency,
            "expense": expense,
            "tax_account": tax_account,
            "payable": conf["default_account_payable"],
            "journal": journal[0],
        }
        return self._setup

    def _currency(self, code: str | None) -> int:
        setup = self._config()
        if not code:
            return setup["currency"]
        found = self.call("model.currency.currency.search", [["code", "=", str(code).upper()]], 0, 1, None)
        if not found:
            raise TrytonRpcError("UserError", [f"unknown currency {code}"])
        return found[0]

    # ------------------------------------------------------------------------------------------------ vendors

    def ensure_vendor(self, vendor_name: str) -> str:
        return str(self._party(vendor_name))

    def _party(self, vendor_name: str) -> int:
        name = (vendor_name or "").strip()
        if not name:
            raise ValueError("vendor_name is required")
        if name not in self._parties:
            found = self.call("model.party.party.search", [["name", "=", name]], 0, 1, None)
            self._parties[name] = (
                found[0]
                if found
                else self.call("model.party.party.create", [{"name": name, "addresses": [["create", [{}]]]}])[
                    0
                ]
            )
        return self._parties[name]

    # ------------------------------------------------------------------------------------------------ posting

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        if not bills:
            return []
        references = check_batch(bills, batch_key, self.max_batch)
        outcomes = [self._post_one(bill, ref) for bill, ref in zip(bills, references, strict=True)]
        log_outcomes(self.name, batch_key, outcomes, 1)
        return outcomes

    def _post_one(self, bill: dict[str, Any], ref: str) -> BillOutcome:
        try:
            existing = self.find_bill(ref)
        except ErpUnavailableError as exc:
            return BillOutcome(ref, "unknown", None, f"cannot check Tryton before posting: {exc}")
        if existing is not None:
            return BillOutcome(ref, "duplicate", existing, "Tryton already has this bill (our marker)")
        created: int | None = None
        try:
            credit = document_type(bill) == CREDIT_NOTE
            setup = self._config()
            party = self._party(bill.get("vendor_name") or "")
            address = self.call("model.party.party.read", [party], ["addresses"])[0]["addresses"]
            if credit:
                # Credit amounts (positive) on negative quantities: Tryton's own way to write a credit note.
                source, tax = credit_lines(bill)
                sign = Decimal(-1)
            else:
                source, tax = bill_lines(bill), to_decimal(bill.get("tax_amount"))
                sign = Decimal(1)
            booked = [(setup["expense"], line) for line in source]
            if tax:
                booked.append((setup["tax_account"], BillLine("Tax", Decimal(1), tax, tax)))
            lines = [
                {
                    "type": "line",
                    "account": account,
                    "description": line.description,
                    "quantity": float(line.quantity * sign),
                    "unit_price": _decimal(line.unit_price.quantize(Decimal("0.0001"))),
                }
                for account, line in booked
            ]
            values = {
                "type": "in",
                "company": setup["company"],
                "currency": self._currency(bill.get("currency")),
                "party": party,
                "invoice_address": address[0] if address else None,
                "account": setup["payable"],
                "journal": setup["journal"],
                "invoice_date": _date(bill.get("invoice_date")),
                "payment_term_date": _date(bill.get("due_date")),
                "reference": bill.get("invoice_number"),
                "description": f"{MARKER_PREFIX}{ref}",
                "lines": [["create", lines]],
            }
            created = self.call("model.account.invoice.create", [values])[0]
            self.call("model.account.invoice.validate_invoice", [created])
            if self.post:
                self.call("model.account.invoice.post", [created])
            return BillOutcome(ref, "posted", str(created), None)
        except TrytonRpcError as exc:
            if created is not None:
                self._discard(created)
            if exc.kind == "UserWarning" and "similar" in str(exc.args_).lower():
                similar = self._similar(bill, exclude=created)
                logger.info("tryton: %s is similar to invoice %s (InvoiceSimilarWarning)", ref, similar)
                return BillOutcome(ref, "duplicate", similar, exc.message)
            if exc.kind in ("UserError", "UserWarning"):
                return BillOutcome(ref, "rejected", None, exc.message)
            return BillOutcome(ref, "unknown", None, str(exc))
        except ValueError as exc:
            if created is not None:
                self._discard(created)
            return BillOutcome(ref, "rejected", None, str(exc))
        except (httpx.TransportError, httpx.HTTPStatusError, ErpUnavailableError) as exc:
            return BillOutcome(ref, "unknown", None, f"{type(exc).__name__}: {exc}")

    def _discard(self, invoice_id: int) -> None:
        try:
            state = self.call("model.account.invoice.read", [invoice_id], ["state"])[0]["state"]
            if state == "validated":
                self.call("model.account.invoice.draft", [invoice_id])
            if state in ("draft", "validated"):
                self.call("model.account.invoice.delete", [invoice_id])
        except (ErpError, httpx.HTTPError) as exc:  # leave it: it carries our marker, find_bill will see it
            logger.warning("tryton: could not delete draft invoice %s: %s", invoice_id, exc)

    def _similar(self, bill: dict[str, Any], exclude: int | None) -> str | None:
        found = self.find_bills(bill.get("vendor_name") or "", str(bill.get("invoice_number") or ""))
        ids = [b["id"] for b in found if b["id"] != str(exclude)]
        return ids[0] if ids else None

    # ------------------------------------------------------------------------------------------------ read-back

    _FIELDS = [
        "id",
        "party.name",
        "reference",
        "description",
        "state",
        "total_amount",
        "invoice_date",
        "currency.code",
        "number",
    ]

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        description = row.get("description") or ""
        return {
            "id": str(row["id"]),
            "vendor_name": _dotted(row, "party", "name"),
            "invoice_number": row.get("reference"),
            "reference": description[len(MARKER_PREFIX) :] if description.startswith(MARKER_PREFIX) else None,
            "document_type": (
                CREDIT_NOTE if (to_decimal(_plain(row.get("total_amount"))) or Decimal(0)) < 0 else INVOICE
            ),
            "total_amount": _plain(row.get("total_amount")),
            "invoice_date": _plain(row.get("invoice_date")),
            "currency": _dotted(row, "currency", "code"),
            "state": row.get("state"),
            "number": row.get("number"),
        }

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        found = self._read_call(
            "model.account.invoice.search",
            [
                ["type", "=", "in"],
                ["description", "=", f"{MARKER_PREFIX}{reference.strip()}"],
                ["state", "!=", "cancelled"],
            ],
            0,
            1,
            [["id", "ASC"]],
        )
        return str(found[0]) if found else None

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        rows = self._read_call(
            "model.account.invoice.search_read",
            [["type", "=", "in"], ["party.name", "ilike", vendor_name.strip()], ["state", "!=", "cancelled"]],
            0,
            None,
            [["id", "ASC"]],
            self._FIELDS,
        )
        key = normalize_key(invoice_number)
        return [self._summary(r) for r in rows if normalize_key(r.get("reference")) == key]
