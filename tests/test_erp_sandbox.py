"""Stand-in ERP and its client: idempotent batches, duplicate rule, per-item rejection, retries, read-back."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from invoiceflow.erp.client import (
    BillOutcome,
    ErpAuthError,
    ErpRequestError,
    ErpUnavailableError,
    SandboxErpClient,
)
from invoiceflow.erp.sandbox import running_sandbox

pytestmark = pytest.mark.timeout(60)


def make_bill(n: int, **overrides: Any) -> dict[str, Any]:
    bill = {
        "reference": f"inv-{n:04d}",
        "vendor_name": f"Vendor {n % 3}",
        "invoice_number": f"SUP-{1000 + n}",
        "invoice_date": "2026-11-01",
        "due_date": "2026-12-01",
        "currency": "EUR",
        "total_amount": 100 + n + 0.25,
        "line_items": [{"description": "Paper", "quantity": 2, "unit_amount": 50 + n / 2}],
    }
    bill.update(overrides)
    return bill


def ledger_rows(db_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM bills ORDER BY id").fetchall()


def post(base_url: str, bills: list[Any], key: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    headers.update(kwargs.pop("headers", {}))
    return httpx.post(f"{base_url}/api/bills:batch", json={"bills": bills}, headers=headers, **kwargs)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "erp.db"


@pytest.fixture
def sandbox(db_path: Path) -> Iterator[str]:
    with running_sandbox(db_path) as base_url:
        yield base_url


def no_sleep(_: float) -> None:
    return None


# -- server --------------------------------------------------------------------------------------------------


def test_batch_creates_bills_in_sqlite_ledger(sandbox: str, db_path: Path) -> None:
    bills = [make_bill(1), make_bill(2, total_amount="99.90"), make_bill(3)]
    response = post(sandbox, bills, "batch-1")

    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    results = response.json()["results"]
    assert [r["reference"] for r in results] == ["inv-0001", "inv-0002", "inv-0003"]
    assert [r["status"] for r in results] == ["created"] * 3
    assert [r["bill_id"] for r in results] == ["BILL-000001", "BILL-000002", "BILL-000003"]

    rows = ledger_rows(db_path)
    assert [(r["id"], r["reference"], r["vendor_name"], r["invoice_number"]) for r in rows] == [
        ("BILL-000001", "inv-0001", "Vendor 1", "SUP-1001"),
        ("BILL-000002", "inv-0002", "Vendor 2", "SUP-1002"),
        ("BILL-000003", "inv-0003", "Vendor 0", "SUP-1003"),
    ]
    assert rows[1]["total_amount"] == pytest.approx(99.90)
    assert rows[0]["currency"] == "EUR" and rows[0]["due_date"] == "2026-12-01"
    assert json.loads(rows[0]["line_items"]) == bills[0]["line_items"]


def test_same_key_and_body_replays_original_response(sandbox: str, db_path: Path) -> None:
    bills = [make_bill(1), make_bill(2)]
    first = post(sandbox, bills, "batch-replay")
    # Same bills, different JSON key order: still the same request.
    reordered = [dict(reversed(list(b.items()))) for b in bills]
    second = post(sandbox, reordered, "batch-replay")

    assert second.status_code == first.status_code == 200
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json() == first.json()
    assert [r["status"] for r in second.json()["results"]] == ["created", "created"]
    assert len(ledger_rows(db_path)) == 2


def test_same_key_different_body_is_422(sandbox: str, db_path: Path) -> None:
    assert post(sandbox, [make_bill(1)], "batch-x").status_code == 200
    response = post(sandbox, [make_bill(1, total_amount=1.0)], "batch-x")

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert len(ledger_rows(db_path)) == 1


def test_new_key_same_references_or_natural_key_are_duplicates(sandbox: str, db_path: Path) -> None:
    original = post(sandbox, [make_bill(1), make_bill(2)], "batch-a").json()["results"]
    ids = [r["bill_id"] for r in original]

    again = post(
        sandbox,
        [
            make_bill(1),  # same reference
            # new marker, same vendor + number up to case and spacing: a human-keyed or re-extracted copy
            make_bill(99, vendor_name="  vendor  2 ", invoice_number="sup-1002"),
            make_bill(3),
        ],
        "batch-b",
    ).json()["results"]

    assert [(r["status"], r["bill_id"]) for r in again] == [
        ("duplicate", ids[0]),
        ("duplicate", ids[1]),
        ("created", "BILL-000003"),
    ]
    assert again[1]["reference"] == "inv-0099"
    assert [r["reference"] for r in ledger_rows(db_path)] == ["inv-0001", "inv-0002", "inv-0003"]


def test_duplicate_inside_one_batch_is_stored_once(sandbox: str, db_path: Path) -> None:
    results = post(sandbox, [make_bill(1), make_bill(1)], "batch-dup").json()["results"]
    assert [r["status"] for r in results] == ["created", "duplicate"]
    assert results[0]["bill_id"] == results[1]["bill_id"]
    assert len(ledger_rows(db_path)) == 1


def test_invalid_bill_is_rejected_and_others_created(sandbox: str, db_path: Path) -> None:
    bills = [
        make_bill(1),
        make_bill(2, vendor_name=" "),
        make_bill(3, total_amount="twelve"),
        make_bill(4, invoice_number=None),
        make_bill(5),
    ]
    results = post(sandbox, bills, "batch-mixed").json()["results"]

    assert [r["status"] for r in results] == ["created", "rejected", "rejected", "rejected", "created"]
    assert "vendor_name" in results[1]["error"]
    assert "total_amount" in results[2]["error"]
    assert "invoice_number" in results[3]["error"]
    assert all(r["bill_id"] is None for r in results[1:4])
    assert [r["reference"] for r in ledger_rows(db_path)] == ["inv-0001", "inv-0005"]


@pytest.mark.parametrize(
    ("bills", "key", "error"),
    [
        ([make_bill(i) for i in range(51)], "batch-51", "batch_too_large"),
        ([], "batch-empty", "invalid_batch"),
        ([make_bill(1)], None, "missing_idempotency_key"),
        ([make_bill(1)], "", "missing_idempotency_key"),
        ([make_bill(1)], "k" * 129, "invalid_idempotency_key"),
    ],
    ids=["51-bills", "empty", "no-key", "empty-key", "long-key"],
)
def test_bad_batches_are_400_and_store_nothing(
    sandbox: str, db_path: Path, bills: list[dict[str, Any]], key: str | None, error: str
) -> None:
    response = post(sandbox, bills, key)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert ledger_rows(db_path) == []


def test_fifty_bills_is_accepted(sandbox: str, db_path: Path) -> None:
    bills = [make_bill(i, vendor_name=f"Vendor {i}") for i in range(50)]
    response = post(sandbox, bills, "batch-50")
    assert response.status_code == 200
    assert len(ledger_rows(db_path)) == 50


def test_concurrent_same_key_creates_once(sandbox: str, db_path: Path) -> None:
    bills = [make_bill(i, vendor_name=f"Vendor {i}") for i in range(10)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda _: post(sandbox, bills, "batch-race"), range(6)))

    assert {r.status_code for r in responses} == {200}
    assert sum(r.headers.get("idempotent-replayed") != "true" for r in responses) == 1
    assert len({json.dumps(r.json()) for r in responses}) == 1
    assert len(ledger_rows(db_path)) == 10


def test_read_back_and_admin_ledger(sandbox: str) -> None:
    post(sandbox, [make_bill(1), make_bill(2)], "batch-read")

    by_ref = httpx.get(f"{sandbox}/api/bills", params={"reference": "inv-0002"}).json()["bills"]
    assert [b["id"] for b in by_ref] == ["BILL-000002"]
    by_key = httpx.get(
        f"{sandbox}/api/bills", params={"vendor_name": "VENDOR 1", "invoice_number": " SUP-1001"}
    ).json()["bills"]
    assert [b["reference"] for b in by_key] == ["inv-0001"]
    assert httpx.get(f"{sandbox}/api/bills", params={"reference": "nope"}).json()["bills"] == []
    assert httpx.get(f"{sandbox}/api/bills").status_code == 400

    ledger = httpx.get(f"{sandbox}/api/admin/ledger").json()
    assert ledger["count"] == 2
    assert [b["line_items"][0]["description"] for b in ledger["bills"]] == ["Paper", "Paper"]
    assert httpx.get(f"{sandbox}/health").status_code == 200


def test_bearer_token_is_enforced(tmp_path: Path) -> None:
    db_path = tmp_path / "erp.db"
    with running_sandbox(db_path, token="s3cret") as base_url:
        assert httpx.get(f"{base_url}/health").status_code == 200
        assert post(base_url, [make_bill(1)], "k1").status_code == 401
        wrong = post(base_url, [make_bill(1)], "k1", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.get(f"{base_url}/api/admin/ledger").status_code == 401
        assert ledger_rows(db_path) == []

        ok = post(base_url, [make_bill(1)], "k1", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert len(ledger_rows(db_path)) == 1


# -- client --------------------------------------------------------------------------------------------------


class FaultyTransport(httpx.BaseTransport):
    """Real HTTP transport with scripted faults, one entry per request (None = pass through)."""

    def __init__(self, faults: list[str | None]) -> None:
        self.inner = httpx.HTTPTransport()
        self.faults = list(faults)
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        fault = self.faults.pop(0) if self.faults else None
        if fault == "connect":
            raise httpx.ConnectError("connection refused (injected)", request=request)
        if fault == "503":
            return httpx.Response(503, json={"error": "unavailable"}, request=request)
        response = self.inner.handle_request(request)
        response.read()
        self.responses.append(response)
        if fault == "timeout-after-commit":
            raise httpx.ReadTimeout("read timed out (injected)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def make_client(base_url: str, **kwargs: Any) -> SandboxErpClient:
    kwargs.setdefault("sleep", no_sleep)
    return SandboxErpClient(base_url, **kwargs)


def test_client_posts_and_maps_statuses(sandbox: str, db_path: Path) -> None:
    with make_client(sandbox) as client:
        first = client.post_bills([make_bill(1), make_bill(2, total_amount=Decimal("12.30"))], "k-1")
        second = client.post_bills([make_bill(2), make_bill(3, vendor_name=""), make_bill(4)], "k-2")

    assert first == [
        BillOutcome("inv-0001", "posted", "BILL-000001", None),
        BillOutcome("inv-0002", "posted", "BILL-000002", None),
    ]
    assert [(o.reference, o.status, o.remote_id) for o in second] == [
        ("inv-0002", "duplicate", "BILL-000002"),
        ("inv-0003", "rejected", None),
        ("inv-0004", "posted", "BILL-000003"),
    ]
    assert "vendor_name" in (second[1].error or "")
    assert ledger_rows(db_path)[1]["total_amount"] == pytest.approx(12.30)


@pytest.mark.parametrize("faults", [["connect"], ["503", "connect"], ["timeout-after-commit"]])
def test_client_retries_transient_failures_with_same_key(
    sandbox: str, db_path: Path, faults: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    transport = FaultyTransport(faults)
    bills = [make_bill(1), make_bill(2)]
    with (
        caplog.at_level("INFO", logger="invoiceflow.erp"),
        make_client(sandbox, transport=transport, token="not-logged") as client,
    ):
        outcomes = client.post_bills(bills, "k-retry")

    assert [(o.status, o.remote_id) for o in outcomes] == [
        ("posted", "BILL-000001"),
        ("posted", "BILL-000002"),
    ]
    assert len(transport.requests) == len(faults) + 1
    assert {r.headers["Idempotency-Key"] for r in transport.requests} == {"k-retry"}
    assert len({r.content for r in transport.requests}) == 1
    assert len(ledger_rows(db_path)) == 2
    if faults == ["timeout-after-commit"]:
        # The first attempt committed; the retry got the stored answer back.
        assert transport.responses[-1].headers.get("idempotent-replayed") == "true"
    summary = [r.getMessage() for r in caplog.records if r.name == "invoiceflow.erp"]
    assert any("posted=2" in m and f"attempts={len(faults) + 1}" in m for m in summary)
    assert not any("not-logged" in r.getMessage() for r in caplog.records)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_client_returns_unknown_when_no_answer_and_read_back_never_says_absent() -> None:
    delays: list[float] = []
    with make_client(closed_port_url(), max_retries=2, backoff=0.01, sleep=delays.append) as client:
        outcomes = client.post_bills([make_bill(1), make_bill(2)], "k-dead")
        with pytest.raises(ErpUnavailableError):
            client.find_bill("inv-0001")

    assert [o.status for o in outcomes] == ["unknown", "unknown"]
    assert all(o.remote_id is None and "3 attempts" in (o.error or "") for o in outcomes)
    assert len(delays) >= 2 and delays[1] > delays[0]


def test_unknown_outcome_is_resolved_by_find_bill(sandbox: str, db_path: Path) -> None:
    # Every attempt reaches the server but each answer is lost: committed once, the client can't tell.
    transport = FaultyTransport(["timeout-after-commit"] * 2)
    with make_client(sandbox, transport=transport, max_retries=1) as client:
        outcomes = client.post_bills([make_bill(1)], "k-lost")
        assert [o.status for o in outcomes] == ["unknown"]
        assert client.find_bill("inv-0001") == "BILL-000001"
        assert client.find_bill("inv-9999") is None
        assert [b["id"] for b in client.find_bills("vendor 1", "SUP-1001")] == ["BILL-000001"]
    assert len(ledger_rows(db_path)) == 1


def test_client_replays_same_key_and_raises_on_changed_body(sandbox: str, db_path: Path) -> None:
    with make_client(sandbox) as client:
        first = client.post_bills([make_bill(1)], "k-used")
        assert client.post_bills([make_bill(1)], "k-used") == first  # replay, not "duplicate"
        with pytest.raises(ErpRequestError) as info:
            client.post_bills([make_bill(1, total_amount=5)], "k-used")
    assert info.value.status_code == 422
    assert len(ledger_rows(db_path)) == 1


def test_client_auth_error_is_raised(tmp_path: Path) -> None:
    with running_sandbox(tmp_path / "erp.db", token="right") as base_url:
        with make_client(base_url, token="wrong") as client, pytest.raises(ErpAuthError):
            client.post_bills([make_bill(1)], "k-auth")
        with make_client(base_url, token="right") as client:
            assert [o.status for o in client.post_bills([make_bill(1)], "k-auth")] == ["posted"]
            assert client.find_bill("inv-0001") == "BILL-000001"


def test_client_validates_its_input(sandbox: str) -> None:
    with make_client(sandbox) as client:
        assert client.post_bills([], "k") == []
        with pytest.raises(ValueError, match="at most 50"):
            client.post_bills([make_bill(i) for i in range(51)], "k")
        with pytest.raises(ValueError, match="reference"):
            client.post_bills([make_bill(1, reference=None)], "k")
        with pytest.raises(ValueError, match="batch_key"):
            client.post_bills([make_bill(1)], "")


def test_cli_options_select_mode_faults_and_time_scale() -> None:
    import argparse

    from invoiceflow.erp.sandbox import add_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_args(
        parser.parse_args(
            [
                "--mode",
                "xero",
                "--time-scale",
                "60",
                "--seed",
                "7",
                "--error-rate",
                "0.1",
                "--drop-rate",
                "0.05",
            ]
        )
    )
    assert (options.mode, options.time_scale, options.seed, options.error_rate, options.drop_rate) == (
        "xero",
        60.0,
        7,
        0.1,
        0.05,
    )
    assert options_from_args(parser.parse_args([])).mode == "sandbox"


def test_native_mode_fault_injection_is_seeded(db_path: Path) -> None:
    with running_sandbox(db_path, error_rate=1.0, seed=3) as url:
        assert post(url, [make_bill(1)], "k").status_code in (500, 503)
        assert httpx.get(f"{url}/api/admin/stats").json()["faults"]["errors"] == 1
    assert ledger_rows(db_path) == []


def test_native_sandbox_stores_credit_notes_as_credits(sandbox: str, db_path: Path) -> None:
    """A credit note keeps the warehouse's sign (negative) and is stored as one; a resend is a duplicate; the
    natural key is per document type (a supplier's credit note may share its number with an invoice)."""
    credit = make_bill(1, document_type="credit_note", total_amount=-119.0, invoice_number="CN-1")
    with make_client(sandbox) as client:
        first = client.post_bills([credit, make_bill(2, document_type="invoice")], "k-credit")
        assert [(o.status, o.remote_id) for o in first] == [
            ("posted", "BILL-000001"),
            ("posted", "BILL-000002"),
        ]
        again = client.post_bills(
            [
                credit,  # the same reference: a resend
                make_bill(7, vendor_name="Vendor 1", invoice_number="cn-1", document_type="credit_note"),
                make_bill(8, vendor_name="Vendor 1", invoice_number="CN-1", document_type="invoice"),
                make_bill(9, document_type="pro_forma"),
            ],
            "k-credit-2",
        )
        assert [(o.status, o.remote_id) for o in again] == [
            ("duplicate", "BILL-000001"),
            ("duplicate", "BILL-000001"),
            ("posted", "BILL-000003"),
            ("rejected", None),
        ]
        assert "document_type" in (again[3].error or "")
        found = client.find_bills("vendor 1", "CN-1")
        assert [(b["id"], b["document_type"]) for b in found] == [
            ("BILL-000001", "credit_note"),
            ("BILL-000003", "invoice"),
        ]
    rows = ledger_rows(db_path)
    assert [(r["id"], r["document_type"]) for r in rows] == [
        ("BILL-000001", "credit_note"),
        ("BILL-000002", "invoice"),
        ("BILL-000003", "invoice"),
    ]
    assert rows[0]["total_amount"] == pytest.approx(-119.0)
