"""Connectors against the sandbox in each ERP dialect: posting, duplicates, rejected items, 429, lost answers,
token refresh; the webhook signature and the idempotent file export."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from invoiceflow.erp import ErpConnector, connector_from_connection
from invoiceflow.erp.base import BillOutcome, dumps
from invoiceflow.erp.file_export import FileExportConnector
from invoiceflow.erp.quickbooks import QuickBooksConnector
from invoiceflow.erp.sandbox import running_sandbox
from invoiceflow.erp.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookConnector, verify_signature
from invoiceflow.erp.xero import XeroConnector

pytestmark = pytest.mark.timeout(60)


def make_bill(n: int, **overrides: Any) -> dict[str, Any]:
    bill = {
        "reference": f"inv-{n:04d}",
        "vendor_name": f"Vendor {n % 3}",
        "invoice_number": f"SUP-{1000 + n}",
        "invoice_date": "2026-11-01",
        "due_date": "2026-12-01",
        "currency": "EUR",
        "subtotal": 100,
        "tax_amount": 19,
        "total_amount": 119,
        "purchase_order_number": None,
        "line_items": [
            {"description": "Paper", "quantity": 2, "unit_price": 25, "line_total": 50},
            {"description": "Toner", "quantity": 1, "unit_price": 50, "line_total": 50},
        ],
    }
    bill.update(overrides)
    return bill


def ledger(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM bills ORDER BY rowid").fetchall()


class Dropper(httpx.BaseTransport):
    """Real transport; the scripted requests get their answer replaced by a read timeout (after the server ran)."""

    def __init__(self, drop: set[int], path_part: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.drop = drop
        self.path_part = path_part
        self.count = 0
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        if self.path_part in request.url.path and request.method in ("PUT", "POST"):
            self.count += 1
            self.requests.append(request)
            if self.count in self.drop:
                raise httpx.ReadTimeout("answer lost (injected)", request=request)
        return response


# ------------------------------------------------------------------------------------------------------ Xero


@pytest.fixture
def xero_url(tmp_path: Path) -> Iterator[str]:
    with running_sandbox(tmp_path / "erp.db", mode="xero", client_id="cid", client_secret="csecret") as url:
        yield url


def xero(url: str, **kwargs: Any) -> XeroConnector:
    kwargs.setdefault("sleep", lambda _s: None)
    return XeroConnector(url, tenant_id="t-1", client_id="cid", client_secret="csecret", **kwargs)


def test_xero_posts_maps_rejections_and_detects_duplicates(xero_url: str, tmp_path: Path) -> None:
    with xero(xero_url) as conn:
        assert isinstance(conn, ErpConnector)
        first = conn.post_bills(
            [make_bill(1), make_bill(2, line_items=[], subtotal=None, tax_amount=None), make_bill(3)], "k1"
        )
        assert [o.status for o in first] == ["posted", "posted", "posted"]
        bad = conn.post_bills(
            [
                make_bill(4),
                make_bill(5, currency="EURO"),
                make_bill(1),
                make_bill(99, vendor_name="vendor 2 ", invoice_number="sup-1002"),
            ],
            "k2",
        )
        assert [o.status for o in bad] == ["posted", "rejected", "duplicate", "duplicate"]
        assert "currency" in (bad[1].error or "")
        assert bad[2].remote_id == first[0].remote_id and bad[3].remote_id == first[1].remote_id
        assert conn.find_bill("inv-0003") == first[2].remote_id
        assert conn.find_bill("inv-9999") is None
        found = conn.find_bills("VENDOR 1", "SUP-1001")
        assert [b["id"] for b in found] == [first[0].remote_id] and found[0]["reference"] == "inv-0001"
        contact = conn.ensure_vendor("Vendor 1")
        assert contact == conn.ensure_vendor("Vendor 1")
        assert conn.ensure_vendor("Brand New Ltd") != contact
    rows = ledger(tmp_path / "erp.db")
    assert [r["reference"] for r in rows] == ["inv-0001", "inv-0002", "inv-0003", "inv-0004"]
    assert rows[0]["total_amount"] == 119  # 100 net + 19 tax, as Xero computes it
    assert rows[1]["total_amount"] == 119  # no lines: one line for the net total, tax taken from the total


def test_xero_summarize_errors_trap_and_idempotency_key(xero_url: str, tmp_path: Path) -> None:
    with xero(xero_url) as conn:
        token = conn.tokens.token()
    headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": "t-1", "Idempotency-Key": "trap"}
    body = {
        "Invoices": [
            XeroConnector.to_invoice(conn, make_bill(1)),
            {**XeroConnector.to_invoice(conn, make_bill(2)), "LineItems": []},
        ]
    }
    body = json.loads(dumps(body))
    trap = httpx.put(f"{xero_url}/api.xro/2.0/Invoices", json=body, headers=headers)
    assert trap.status_code == 400 and trap.json()["Type"] == "ValidationException"
    assert len(trap.json()["Elements"]) == 1
    assert [r["reference"] for r in ledger(tmp_path / "erp.db")] == ["inv-0001"]  # the valid one WAS created
    again = httpx.put(f"{xero_url}/api.xro/2.0/Invoices", json=body, headers=headers)
    assert again.status_code == 400 and again.headers["idempotent-replayed"] == "true"
    other = httpx.put(
        f"{xero_url}/api.xro/2.0/Invoices", json={"Invoices": body["Invoices"][:1]}, headers=headers
    )
    assert other.status_code == 422
    assert len(ledger(tmp_path / "erp.db")) == 1


class FakeClock:
    """The sandbox's rate-limit clock; the connector's patched sleep advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_xero_429_waits_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    sleeps = clock.sleeps
    with (
        running_sandbox(tmp_path / "erp.db", mode="xero", minute_limit=2, clock=clock) as url,
        xero(url, sleep=clock.sleep, precheck_duplicates=False) as conn,
    ):
        for n in range(3):
            assert [o.status for o in conn.post_bills([make_bill(n)], f"k{n}")] == ["posted"]
    assert len(sleeps) == 1 and 50 < sleeps[0] <= 60  # Retry-After: the rest of the 60 s window


def test_xero_rate_limit_is_scaled_and_reported(tmp_path: Path) -> None:
    with (
        running_sandbox(tmp_path / "erp.db", mode="xero", minute_limit=1, time_scale=60) as url,
        xero(url) as conn,
    ):
        token = conn.tokens.token()
        headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": "t-1"}
        ok = httpx.get(f"{url}/api.xro/2.0/Invoices", headers=headers)
        limited = httpx.get(f"{url}/api.xro/2.0/Invoices", headers=headers)
        other_tenant = httpx.get(f"{url}/api.xro/2.0/Invoices", headers={**headers, "xero-tenant-id": "t-2"})
    assert ok.status_code == 200 and ok.headers["x-minlimit-remaining"] == "0"
    assert limited.status_code == 429 and limited.headers["x-rate-limit-problem"] == "minute"
    assert 0 < float(limited.headers["retry-after"]) <= 1.0
    assert other_tenant.status_code == 200


def test_xero_lost_answer_is_unknown_then_found(tmp_path: Path) -> None:
    transport = Dropper({1, 2}, "/Invoices")
    with (
        running_sandbox(tmp_path / "erp.db", mode="xero") as url,
        xero(url, transport=transport, max_retries=1) as conn,
    ):
        outcomes = conn.post_bills([make_bill(1), make_bill(2)], "k-lost")
        assert [o.status for o in outcomes] == ["unknown", "unknown"]
        assert {r.headers["Idempotency-Key"] for r in transport.requests} == {"k-lost"}
        assert conn.find_bill("inv-0001") is not None and conn.find_bill("inv-0002") is not None
    assert len(ledger(tmp_path / "erp.db")) == 2  # the retry was replayed, not re-run


def test_xero_sandbox_drop_fault_and_retry_replays(tmp_path: Path) -> None:
    with (
        running_sandbox(tmp_path / "erp.db", mode="xero", drop_rate=1.0, seed=1) as url,
        xero(url, max_retries=2) as conn,
    ):
        outcomes = conn.post_bills([make_bill(1)], "k-drop")
        assert outcomes[0].status == "unknown"
        assert conn.find_bill("inv-0001") is not None
    assert len(ledger(tmp_path / "erp.db")) == 1


def test_xero_token_refresh_before_expiry_and_after_401(xero_url: str) -> None:
    now = [0.0]
    with xero(xero_url, clock=lambda: now[0]) as conn:
        conn.post_bills([make_bill(1)], "k1")
        assert conn.tokens.fetches == 1
        now[0] = 1800.0  # past 30 min minus the margin: refreshed before the call
        conn.post_bills([make_bill(2)], "k2")
        assert conn.tokens.fetches == 2
        httpx.post(f"{xero_url}/api/admin/revoke-tokens")
        assert [o.status for o in conn.post_bills([make_bill(3)], "k3")] == ["posted"]
        assert conn.tokens.fetches == 3
    with pytest.raises(Exception, match="refused"):
        XeroConnector(xero_url, tenant_id="t", client_id="cid", client_secret="wrong").find_bill("x")


# ------------------------------------------------------------------------------------------------------ QuickBooks


def qbo(url: str, **kwargs: Any) -> QuickBooksConnector:
    kwargs.setdefault("sleep", lambda _s: None)
    return QuickBooksConnector(
        url, realm_id="9130", client_id="cid", client_secret="cs", refresh_token="rt-0", **kwargs
    )


def test_quickbooks_batch_faults_duplicates_and_vendors(tmp_path: Path) -> None:
    rotated: list[str] = []
    with (
        running_sandbox(tmp_path / "erp.db", mode="quickbooks") as url,
        qbo(url, on_refresh_token=rotated.append) as conn,
    ):
        first = conn.post_bills([make_bill(1), make_bill(2), make_bill(3, invoice_number="X" * 22)], "k1")
        assert [o.status for o in first] == ["posted", "posted", "rejected"]
        assert (first[2].error or "").startswith("2050")
        again = conn.post_bills(
            [make_bill(4, vendor_name="Vendor 1", invoice_number="SUP-1001"), make_bill(5)], "k2"
        )
        assert [(o.status, o.remote_id) for o in again] == [
            ("duplicate", first[0].remote_id),
            ("posted", again[1].remote_id),
        ]
        bad_account = QuickBooksConnector(
            url, realm_id="9130", access_token=conn.tokens.token(), expense_account="999"
        )
        rejected = bad_account.post_bills([make_bill(6)], "k3")
        assert rejected[0].status == "rejected" and (rejected[0].error or "").startswith("610")
        assert conn.find_bill("inv-0002") == first[1].remote_id
        assert conn.find_bill("inv-0002", bill=make_bill(2)) == first[1].remote_id
        fresh = qbo(url)
        assert fresh.find_bill("inv-0001") == first[0].remote_id  # no hint: scans recent bills
        assert fresh.find_bill("inv-0404") is None
        assert [b["id"] for b in fresh.find_bills("vendor 1", "SUP-1001")] == [first[0].remote_id]
        assert conn.ensure_vendor("Vendor 1") == fresh.ensure_vendor("Vendor 1")
    assert rotated  # the refresh token was rotated and handed back for storage
    refs = [r["reference"] for r in ledger(tmp_path / "erp.db")]
    assert refs == ["inv-0001", "inv-0002", "inv-0005"]


def test_quickbooks_requestid_replay_and_throttle(tmp_path: Path) -> None:
    clock = FakeClock()
    sleeps = clock.sleeps
    transport = Dropper({1}, "/batch")
    with (
        running_sandbox(tmp_path / "erp.db", mode="quickbooks", qbo_batch_limit=3, clock=clock) as url,
        qbo(url, transport=transport, sleep=clock.sleep, throttle_wait=60) as conn,
    ):
        conn.ensure_vendor("Vendor 1")  # vendor batch call 1 (answer lost: read back by query)
        outcomes = conn.post_bills([make_bill(1)], "k-1")  # batch call 2
        assert outcomes[0].status == "posted"
        conn.post_bills([make_bill(4)], "k-2")  # call 3
        throttled = conn.post_bills([make_bill(7)], "k-3")  # call 4: 429 XML, waits 60 s, then retries
        assert throttled[0].status in ("posted", "unknown")
    assert 60 in sleeps
    ids = [r.url.params.get("requestid") for r in transport.requests if r.url.params.get("requestid")]
    assert ids[:2] == ["k-1", "k-2"]


def test_quickbooks_lost_answer_replayed_by_requestid(tmp_path: Path) -> None:
    transport = Dropper({2}, "/batch")  # 1 = vendor creation, 2 = the bill batch
    with (
        running_sandbox(tmp_path / "erp.db", mode="quickbooks") as url,
        qbo(url, transport=transport, max_retries=1) as conn,
    ):
        outcomes = conn.post_bills([make_bill(1)], "k-lost")
        assert outcomes[0].status == "posted"  # the retry with the same requestid got the stored answer
        lost = Dropper({1, 2}, "/batch")
        again = qbo(url, transport=lost, max_retries=1)
        again.ensure_vendor("Vendor 2")  # its creation answer is lost too: the vendor is read back by query
        lost.count = 0  # now lose both answers of the bill batch
        assert again.post_bills([make_bill(2)], "k-lost-2")[0].status == "unknown"
        assert again.find_bill("inv-0002") is not None
    assert len(ledger(tmp_path / "erp.db")) == 2


# ------------------------------------------------------------------------------------------------------ webhook


class _Receiver(BaseHTTPRequestHandler):
    secret = "whsec"
    seen: list[tuple[dict[str, str], bytes]] = []
    fail_first: list[int] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((dict(self.headers), body))
        if self.fail_first:
            self.fail_first.pop()
            self.send_response(503)
            self.end_headers()
            return
        ok = verify_signature(
            self.secret, body, self.headers[TIMESTAMP_HEADER], self.headers[SIGNATURE_HEADER]
        )
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"id": "rcv-1"}' if ok else b"bad signature")

    def log_message(self, *args: Any) -> None:
        return None


def test_webhook_signed_events_verify_and_retry() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        _Receiver.seen.clear()
        _Receiver.fail_first[:] = [1]
        conn = connector_from_connection(
            SimpleNamespace(
                conn_type="webhook", host=url, port=None, login=None, password="whsec", extra_dejson={}
            ),
            sleep=lambda _s: None,
        )
        with conn:
            outcomes = conn.post_bills([make_bill(1), make_bill(2)], "k")
            assert [o.status for o in outcomes] == ["posted", "posted"]
            assert conn.find_bill("inv-0001") is None  # no status endpoint: receivers dedupe on the event id
        headers, body = _Receiver.seen[-1]
        event = json.loads(body)
        assert (
            event["type"] == "invoice.processed"
            and event["id"] == "inv-0002" == headers["X-Invoiceflow-Event-Id"]
        )
        assert verify_signature("whsec", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        assert not verify_signature("other", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        assert not verify_signature(
            "whsec", body + b" ", headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        )
        assert len(_Receiver.seen) == 3  # one 503 retried with the same event id
        assert (
            _Receiver.seen[0][0]["X-Invoiceflow-Event-Id"] == _Receiver.seen[1][0]["X-Invoiceflow-Event-Id"]
        )
        with WebhookConnector(url, "wrong-secret", sleep=lambda _s: None) as bad:
            assert bad.post_bills([make_bill(3)], "k")[0].status == "rejected"
        with WebhookConnector("http://127.0.0.1:9/none", "s", max_retries=1, sleep=lambda _s: None) as dead:
            assert dead.post_bills([make_bill(3)], "k")[0].status == "unknown"
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------------------------ file export


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_file_export_is_idempotent_and_searchable(tmp_path: Path, fmt: str) -> None:
    conn = connector_from_connection(
        SimpleNamespace(
            conn_type="file",
            host=str(tmp_path / "out"),
            login=None,
            password=None,
            extra_dejson={"format": fmt},
        )
    )
    assert isinstance(conn, FileExportConnector)
    first = conn.post_bills([make_bill(1), make_bill(2)], "batch/1")
    content = (tmp_path / "out" / f"bills-batch_1.{fmt}").read_text()
    again = conn.post_bills([make_bill(1), make_bill(2)], "batch/1")
    assert first == again and [o.status for o in first] == ["posted", "posted"]
    assert first[1].remote_id.endswith(f"bills-batch_1.{fmt}#2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"bills-batch_1.{fmt}"]
    assert (tmp_path / "out" / f"bills-batch_1.{fmt}").read_text() == content
    assert conn.find_bill("inv-0002") == first[1].remote_id
    assert conn.find_bill("inv-0003") is None
    assert [b["reference"] for b in conn.find_bills("vendor 1", "sup-1001")] == ["inv-0001"]


# ------------------------------------------------------------------------------------------------------ factory


def test_connector_from_connection_picks_by_extra_or_type(xero_url: str) -> None:
    from invoiceflow.erp.client import SandboxErpClient

    def c(conn_type: str, extra: dict[str, Any], **kw: Any) -> Any:
        fields = {"host": xero_url, "port": None, "login": "cid", "password": "csecret", "schema": None}
        fields.update(kw)
        return SimpleNamespace(conn_type=conn_type, extra_dejson=extra, **fields)

    assert isinstance(connector_from_connection(c("http", {})), SandboxErpClient)
    x = connector_from_connection(c("http", {"erp": "xero", "tenant_id": "t-1"}), sleep=lambda _s: None)
    assert isinstance(x, XeroConnector) and x.max_batch == 50
    assert x.post_bills([make_bill(1)], "k")[0] == BillOutcome(
        "inv-0001", "posted", x.find_bill("inv-0001"), None
    )
    q = connector_from_connection(c("quickbooks", {"realm_id": "1", "refresh_token": "r"}))
    assert isinstance(q, QuickBooksConnector) and q.max_batch == 30
    with pytest.raises(ValueError, match="tenant_id"):
        connector_from_connection(c("xero", {}))
    with pytest.raises(ValueError, match="unknown ERP"):
        connector_from_connection(c("sap", {}))


# ------------------------------------------------------------------------------------------------------ credit notes


def make_credit(n: int, **overrides: Any) -> dict[str, Any]:
    """A credit note as the outbox sends it: ``document_type`` credit_note, amounts negative (warehouse convention)."""
    credit = make_bill(
        n,
        document_type="credit_note",
        invoice_number=f"CN-{100 + n}",
        subtotal=-100,
        tax_amount=-19,
        total_amount=-119,
        line_items=[
            {"description": "Paper returned", "quantity": 2, "unit_price": -25, "line_total": -50},
            {"description": "Toner returned", "quantity": 1, "unit_price": -50, "line_total": -50},
        ],
    )
    credit.update(overrides)
    return credit


def remote(row: sqlite3.Row) -> dict[str, Any]:
    return json.loads(row["remote_json"])


def test_xero_posts_a_credit_note_as_accpaycredit_with_positive_amounts(
    xero_url: str, tmp_path: Path
) -> None:
    with xero(xero_url) as conn:
        first = conn.post_bills(
            [make_bill(1), make_credit(2), make_bill(3, document_type="debit_note")], "k1"
        )
        assert [o.status for o in first] == ["posted", "posted", "rejected"]
        assert "document_type" in (first[2].error or "")
        credit_id = first[1].remote_id
        rows = ledger(tmp_path / "erp.db")
        assert [(r["document_type"], r["entity"]) for r in rows] == [
            ("invoice", ""),
            ("credit_note", "CreditNote"),
        ]
        note = remote(rows[1])
        assert note["Type"] == "ACCPAYCREDIT" and note["CreditNoteID"] == credit_id
        assert note["CreditNoteNumber"] == "CN-102" and note["Contact"]["Name"] == "Vendor 2"
        assert (note["SubTotal"], note["TotalTax"], note["Total"]) == (100, 19, 119)  # Xero's sign: positive
        assert [(li["Quantity"], li["UnitAmount"], li["LineAmount"]) for li in note["LineItems"]] == [
            (2, 25, 50),
            (1, 50, 50),
        ]
        assert rows[1]["total_amount"] == 119 and rows[0]["total_amount"] == 119
        token = conn.tokens.token()
        headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": "t-1"}
        bills = httpx.get(f"{xero_url}/api.xro/2.0/Invoices", headers=headers).json()["Invoices"]
        assert [b["Type"] for b in bills] == ["ACCPAY"]  # never a bill
        assert conn.find_bill("inv-0002") == credit_id  # this connector sent it
        found = conn.find_bills("vendor 2", "CN-102")
        assert [(b["id"], b["document_type"]) for b in found] == [(credit_id, "credit_note")]

        # Re-sent under another batch key (the relay after a lost answer): found, not created again. A payload in
        # the EN 16931 convention (amounts positive, the type says credit) gives the same positive credit note.
        positive = make_bill(4, document_type="credit_note", invoice_number="CN-104")
        again = conn.post_bills([make_credit(2), positive], "k2")
        assert [(o.status, o.remote_id) for o in again] == [
            ("duplicate", credit_id),
            ("posted", again[1].remote_id),
        ]
        assert remote(ledger(tmp_path / "erp.db")[-1])["Total"] == 119
    # Another worker: the payload is the read-back hint (a Xero credit note holds no marker).
    with xero(xero_url) as fresh:
        assert fresh.find_bill("inv-0002", bill=make_credit(2)) == credit_id
        assert fresh.find_bill("inv-0009", bill=make_credit(9)) is None
    assert [
        r["invoice_number"] for r in ledger(tmp_path / "erp.db") if r["document_type"] == "credit_note"
    ] == [
        "CN-102",
        "CN-104",
    ]


def test_xero_lost_credit_note_answer_is_replayed_then_read_back(tmp_path: Path) -> None:
    transport = Dropper({1, 2}, "/CreditNotes")
    with (
        running_sandbox(tmp_path / "erp.db", mode="xero") as url,
        xero(url, transport=transport, max_retries=1) as conn,
    ):
        outcomes = conn.post_bills([make_bill(1), make_credit(2)], "k-lost")
        # The bill's answer came, the credit note's did not.
        assert [o.status for o in outcomes] == ["posted", "unknown"]
        keys = {r.headers["Idempotency-Key"] for r in transport.requests}
        assert len(keys) == 1 and keys != {"k-lost"}  # one key for the credit notes, retried unchanged
        assert len(transport.requests) == 2
        with xero(url) as other:
            found = other.find_bill("inv-0002", bill=make_credit(2))
            assert found is not None
            # The relay re-sends only after the read-back; even a blind re-send is caught by the precheck.
            assert other.post_bills([make_credit(2)], "k-again")[0] == BillOutcome(
                "inv-0002", "duplicate", found, "Xero already has a credit note with this contact and number"
            )
        # Without the precheck, the same batch key replays the stored answer instead of creating another.
        with xero(url, precheck_duplicates=False) as replay:
            assert [o.status for o in replay.post_bills([make_bill(1), make_credit(2)], "k-lost")] == [
                "posted",
                "posted",
            ]
    credits = [r for r in ledger(tmp_path / "erp.db") if r["document_type"] == "credit_note"]
    assert len(credits) == 1 and len(ledger(tmp_path / "erp.db")) == 2


def test_quickbooks_posts_a_credit_note_as_vendor_credit(tmp_path: Path) -> None:
    with running_sandbox(tmp_path / "erp.db", mode="quickbooks") as url, qbo(url) as conn:
        first = conn.post_bills(
            [make_bill(1), make_credit(2), make_credit(3, document_type="proforma")], "k1"
        )
        assert [o.status for o in first] == ["posted", "posted", "rejected"]
        credit_id = first[1].remote_id
        rows = ledger(tmp_path / "erp.db")
        assert [(r["document_type"], r["entity"]) for r in rows] == [
            ("invoice", ""),
            ("credit_note", "VendorCredit"),
        ]
        credit = remote(rows[1])
        assert credit["Id"] == credit_id and credit["DocNumber"] == "CN-102"
        assert credit["PrivateNote"] == "invoiceflow:inv-0002" and "DueDate" not in credit
        assert credit["TotalAmt"] == 119 and [line["Amount"] for line in credit["Line"]] == [50, 50, 19]
        assert conn.find_bill("inv-0002") == credit_id
        fresh = qbo(url)
        assert fresh.find_bill("inv-0002") == credit_id  # no hint: scans bills and vendor credits
        assert fresh.find_bill("inv-0002", bill=make_credit(2)) == credit_id
        assert [(b["id"], b["document_type"]) for b in fresh.find_bills("vendor 2", "CN-102")] == [
            (credit_id, "credit_note")
        ]
        # A lost answer (both attempts), then the relay's resend under a new batch key: never a second credit.
        lost = Dropper({1, 2}, "/batch")
        with qbo(url, transport=lost, max_retries=1) as other:
            other.ensure_vendor("Vendor 1")  # cached vendor: the only batch calls below are the credit's
            lost.count = 0
            assert other.post_bills([make_credit(4)], "k-lost")[0].status == "unknown"
            found = other.find_bill("inv-0004", bill=make_credit(4))
            assert found is not None
        resent = fresh.post_bills([make_credit(4)], "k-resend")
        assert (resent[0].status, resent[0].remote_id) == ("duplicate", found)
        assert fresh.post_bills([make_credit(4)], "k-lost")[0] == BillOutcome(
            "inv-0004", "posted", found, None
        )
    credits = [
        r["invoice_number"] for r in ledger(tmp_path / "erp.db") if r["document_type"] == "credit_note"
    ]
    assert credits == ["CN-102", "CN-104"]


@pytest.mark.timeout(180)  # a real trytond: module activation takes most of it
def test_tryton_posts_a_credit_note_as_a_supplier_credit_note(tmp_path: Path) -> None:
    pytest.importorskip("trytond.modules.account_invoice")
    from invoiceflow.erp.tryton import TrytonConnector
    from invoiceflow.erp.tryton_dev import running_trytond

    def note(n: int, **overrides: Any) -> dict[str, Any]:
        return make_credit(n, vendor_name="ACME Office Supplies", invoice_date="2026-01-15", **overrides)

    with (
        running_trytond(tmp_path / "tryton") as server,
        TrytonConnector(server.url, server.database, server.login, server.password) as conn,
    ):
        # An EN 16931-style payload (type credit_note, amounts positive) is a credit note all the same.
        positive = make_bill(
            4,
            document_type="credit_note",
            vendor_name="ACME Office Supplies",
            invoice_number="CN-104",
            invoice_date="2026-01-15",
        )
        first = conn.post_bills(
            [note(1), make_bill(2, invoice_date="2026-01-15"), note(3, document_type="x"), positive], "b1"
        )
        assert [o.status for o in first] == ["posted", "posted", "rejected", "posted"], first
        again = conn.post_bills([note(1)], "b2")  # a resend: our marker is found before anything is created
        assert (again[0].status, again[0].remote_id) == ("duplicate", first[0].remote_id)
        assert conn.find_bill("inv-0001") == first[0].remote_id
        invoices = conn.call(
            "model.account.invoice.search_read",
            [["type", "=", "in"]],
            0,
            None,
            [["id", "ASC"]],
            ["id", "state", "reference", "total_amount", "sequence_type_cache", "number"],
        )
        assert [(i["reference"], i["state"], i["sequence_type_cache"]) for i in invoices] == [
            ("CN-101", "posted", "credit_note"),  # Tryton's supplier credit note: all lines negative
            ("SUP-1002", "posted", "invoice"),
            ("CN-104", "posted", "credit_note"),
        ]
        assert [i["total_amount"]["decimal"] for i in invoices] == ["-119.00", "119.00", "-119.00"]
        assert [(b["id"], b["document_type"]) for b in conn.find_bills("acme office supplies", "cn-104")] == [
            (first[3].remote_id, "credit_note")
        ]
        lines = conn.call(
            "model.account.invoice.line.search_read",
            [["invoice", "=", invoices[0]["id"]]],
            0,
            None,
            [["id", "ASC"]],
            ["quantity", "unit_price", "amount"],
        )
        assert [(line["quantity"], line["amount"]["decimal"]) for line in lines] == [
            (-2.0, "-50.00"),
            (-1.0, "-50.00"),
            (-1.0, "-19.00"),
        ]


def test_webhook_events_carry_the_document_type() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        _Receiver.seen.clear()
        _Receiver.fail_first[:] = []
        with WebhookConnector(url, "whsec", sleep=lambda _s: None) as conn:
            legacy = make_bill(3, total_amount=-119)  # queued before document_type existed: negative = credit
            del legacy["invoice_number"]
            outcomes = conn.post_bills(
                [make_credit(1), make_bill(2), legacy, make_bill(4, document_type="?")], "k"
            )
        assert [o.status for o in outcomes] == ["posted", "posted", "posted", "rejected"]
        events = [json.loads(body) for _headers, body in _Receiver.seen]
        assert [(e["id"], e["type"], e["data"]["document_type"]) for e in events] == [
            ("inv-0001", "invoice.processed", "credit_note"),
            ("inv-0002", "invoice.processed", "invoice"),
            ("inv-0003", "invoice.processed", "credit_note"),
        ]
        assert events[0]["data"]["total_amount"] == -119  # the warehouse's sign, stated by the type
    finally:
        server.shutdown()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_file_export_carries_the_document_type(tmp_path: Path, fmt: str) -> None:
    import csv

    conn = FileExportConnector(str(tmp_path / "out"), fmt=fmt)
    bills = [make_credit(1), make_bill(2), make_bill(3, document_type="order")]
    first = conn.post_bills(bills, "b1")
    assert [o.status for o in first] == ["posted", "posted", "rejected"]
    assert first[1].remote_id.endswith("#2") and "document_type" in (first[2].error or "")
    path = tmp_path / "out" / f"bills-b1.{fmt}"
    content = path.read_text()
    if fmt == "csv":
        rows = list(csv.DictReader(content.splitlines()))
        assert [(r["reference"], r["document_type"], r["line_total"]) for r in rows] == [
            ("inv-0001", "credit_note", "-50"),
            ("inv-0001", "credit_note", "-50"),
            ("inv-0002", "invoice", "50"),
            ("inv-0002", "invoice", "50"),
        ]
    else:
        exported = json.loads(content)["bills"]
        assert [(b["reference"], b["document_type"], b["total_amount"]) for b in exported] == [
            ("inv-0001", "credit_note", -119),
            ("inv-0002", "invoice", 119),
        ]
    assert conn.post_bills(bills, "b1") == first and path.read_text() == content  # idempotent
    assert conn.find_bill("inv-0001") == first[0].remote_id and conn.find_bill("inv-0003") is None
