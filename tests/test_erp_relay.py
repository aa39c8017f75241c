"""The outbox relay against the real ERP sandbox: posts once, reads back lost answers, never double-posts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from invoiceflow import warehouse
from invoiceflow.erp import relay
from invoiceflow.erp.client import SandboxErpClient
from invoiceflow.erp.sandbox import running_sandbox


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh.db'}")
    warehouse.upgrade(engine)
    invoices = []
    for n in range(1, 8):
        sha = f"{n:064d}"
        warehouse.register_files(
            engine, [warehouse.SeenFile(f"file:///inbox/{n}.pdf", f"{n}.pdf", 10, None, sha, "pdf")]
        )
        header = {
            "invoice_number": f"INV-{n}",
            "vendor_name": "ACME",
            "total_amount": 10.0 * n,
            "currency": "EUR",
        }
        invoices.append(
            warehouse.ValidatedInvoice(sha, header, [{"description": "x", "line_total": 10.0 * n}])
        )
    warehouse.load_batch(engine, "batch", invoices)
    return engine


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[SandboxErpClient, Path]]:
    ledger = tmp_path / "erp.db"
    with running_sandbox(ledger) as base_url, SandboxErpClient(base_url, max_retries=0) as client:
        yield client, ledger


def ledger_references(ledger: Path) -> list[str]:
    with sqlite3.connect(ledger) as conn:
        return sorted(r[0] for r in conn.execute("SELECT reference FROM bills"))


def statuses(engine: Any) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT idempotency_key, status FROM erp_outbox").fetchall())


def test_batches_respect_the_erp_limit(engine: Any) -> None:
    assert [len(b) for b in relay.plan_batches(engine, 3)] == [3, 3, 1]


def test_relay_posts_every_row_once_and_a_rerun_sends_nothing(engine: Any, sandbox: Any) -> None:
    client, ledger = sandbox
    for batch in relay.plan_batches(engine, 3):
        relay.relay_batch(engine, client, batch)
    assert set(statuses(engine).values()) == {"posted"}
    assert ledger_references(ledger) == sorted(statuses(engine))
    assert relay.plan_batches(engine, 3) == []
    with mock.patch.object(client, "post_bills", side_effect=AssertionError("nothing may be sent")):
        for batch in relay.plan_batches(engine, 3):
            relay.relay_batch(engine, client, batch)


def test_lost_answer_is_read_back_instead_of_resent(engine: Any, sandbox: Any) -> None:
    """The ERP stored the bills but the answer was lost (the task died mid-request): the next run links them."""
    client, ledger = sandbox
    (batch,) = relay.plan_batches(engine, 50)
    real_post = client.post_bills

    def post_then_crash(bills: list[dict], batch_key: str) -> Any:
        real_post(bills, batch_key)
        raise KeyboardInterrupt("worker killed after the ERP committed")

    with (
        mock.patch.object(client, "post_bills", side_effect=post_then_crash),
        pytest.raises(KeyboardInterrupt),
    ):
        relay.relay_batch(engine, client, batch)
    assert set(statuses(engine).values()) == {"unknown"}

    with mock.patch.object(client, "post_bills", side_effect=AssertionError("must read back, not resend")):
        (retry,) = relay.plan_batches(engine, 50)
        assert relay.relay_batch(engine, client, retry) == {"posted": 7}
    assert set(statuses(engine).values()) == {"posted"}
    assert ledger_references(ledger) == sorted(statuses(engine))


def test_crash_before_the_request_resends_exactly_once(engine: Any, sandbox: Any) -> None:
    client, ledger = sandbox
    (batch,) = relay.plan_batches(engine, 50)
    killed = KeyboardInterrupt("killed before sending")
    with mock.patch.object(client, "post_bills", side_effect=killed), pytest.raises(KeyboardInterrupt):
        relay.relay_batch(engine, client, batch)
    assert ledger_references(ledger) == []
    (retry,) = relay.plan_batches(engine, 50)
    assert relay.relay_batch(engine, client, retry) == {"posted": 7}
    assert ledger_references(ledger) == sorted(statuses(engine))


def test_duplicate_in_the_erp_is_linked_not_posted_again(engine: Any, sandbox: Any) -> None:
    client, ledger = sandbox
    keys = relay.plan_batches(engine, 50)[0]
    row = warehouse.outbox_rows(engine, keys[:1])[0]

    client.post_bills([{**json.loads(row["payload"]), "reference": "entered-by-hand"}], batch_key="manual")
    counts = relay.relay_batch(engine, client, keys)
    assert counts == {"duplicate": 1, "posted": 6}
    assert len(ledger_references(ledger)) == 7


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_call_slots_are_spaced_per_scope_and_free_when_idle(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from invoiceflow.erp import pacing

    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path}/p.db"
    engine = warehouse.engine_for(url)
    warehouse.upgrade(engine)
    starts = [pacing.take_call_slot(engine, "qbo:1", 1.5, now=100.0) for _ in range(3)]
    assert starts == [100.0, 101.5, 103.0]  # a busy scope: one call per 1.5 s, whoever asks
    assert pacing.take_call_slot(engine, "qbo:2", 1.5, now=100.0) == 100.0  # another realm has its own slots
    assert pacing.take_call_slot(engine, "qbo:1", 1.5, now=200.0) == 200.0  # idle long enough: no wait


def test_quickbooks_relay_paces_batch_calls_to_the_limit_instead_of_meeting_429s(
    engine: Any, tmp_path: Path
) -> None:
    import time

    import httpx

    from invoiceflow.erp.quickbooks import PACE_MARGIN, QuickBooksConnector

    # The sandbox allows 4 batch calls per (scaled) minute = per second; the relay paces at 3, so a call delayed by
    # a busy machine still finds its slot free.
    limit, pace, time_scale = 4, 3, 60.0
    with running_sandbox(
        tmp_path / "erp.db", mode="quickbooks", qbo_batch_limit=limit, time_scale=time_scale
    ) as url:
        connectors = [
            QuickBooksConnector(
                url,
                realm_id="77",
                client_id="cid",
                client_secret="cs",
                refresh_token="rt-0",
                max_batch=1,
                throttle_wait=5.0,
                batch_calls_per_minute=pace * time_scale,
            )
            for _ in range(3)
        ]
        keys = sorted(statuses(engine))
        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:  # three relay tasks at once, one bill per batch call
            list(
                pool.map(lambda i: relay.relay_batch(engine, connectors[i % 3], [keys[i]]), range(len(keys)))
            )
        elapsed = time.monotonic() - started
        faults = httpx.get(f"{url}/api/admin/stats", timeout=10).json()["faults"]
    assert set(statuses(engine).values()) == {"posted"}
    assert faults["rate_limited"] == 0, "paced calls never meet the limit"
    calls = len(keys) + 1  # a batch call per bill, plus the one that creates the vendor
    assert elapsed >= (calls - 1) * PACE_MARGIN / pace * 0.95  # ...because they waited for their slots


# ------------------------------------------------------------------------------------------------------ credit notes


def _credit_note_engine(tmp_path: Path) -> Any:
    """A warehouse with one approved credit note (as validation hands it over: negative amounts, document type
    credit_note) and one approved invoice of the same supplier."""
    engine = warehouse.engine_for(f"sqlite:///{tmp_path / 'wh-credit.db'}")
    warehouse.upgrade(engine)
    invoices = []
    for n, (number, sign, doc_type) in enumerate([("AV-1", -1, "credit_note"), ("F-1", 1, "invoice")], 1):
        sha = f"c{n:063d}"
        warehouse.register_files(
            engine, [warehouse.SeenFile(f"file:///inbox/c{n}.pdf", f"c{n}.pdf", 10, None, sha, "pdf")]
        )
        header = {
            "invoice_number": number,
            "vendor_name": "Au bon moulin",
            "invoice_date": "2026-03-02",
            "due_date": "2026-04-01",
            "currency": "EUR",
            "subtotal": sign * 218.48,
            "tax_amount": sign * 14.99,
            "total_amount": sign * 233.47,
        }
        lines = [
            {"description": "Nougat", "quantity": 5.0, "unit_price": sign * 4.1, "line_total": sign * 20.48},
            {"description": "Huile", "quantity": 10.0, "unit_price": sign * 19.8, "line_total": sign * 198.0},
        ]
        invoices.append(warehouse.ValidatedInvoice(sha, header, lines, derived={"document_type": doc_type}))
    warehouse.load_batch(engine, "credit-batch", invoices)
    return engine


def test_erp_payload_states_the_document_type() -> None:
    header = {"invoice_number": "AV-1", "vendor_name": "V", "total_amount": -10.0}
    credit = warehouse.ValidatedInvoice("a" * 64, header, [], derived={"document_type": "credit_note"})
    assert warehouse.erp_payload(credit)["document_type"] == "credit_note"
    plain = warehouse.ValidatedInvoice("b" * 64, {**header, "total_amount": 10.0}, [])
    assert warehouse.erp_payload(plain)["document_type"] == "invoice"
    # Approved in review (no derived values): a negative total is a credit note, as the invoices table says.
    reviewed = warehouse.ValidatedInvoice("c" * 64, header, [])
    assert warehouse.erp_payload(reviewed)["document_type"] == "credit_note"


def test_relay_posts_a_credit_note_as_a_xero_credit_note_exactly_once(tmp_path: Path) -> None:
    """Outbox → Xero: the credit note lands as ACCPAYCREDIT (positive amounts), the invoice as ACCPAY; the answer
    is lost after Xero committed, and the next run reads the credit note back instead of posting it again."""
    from invoiceflow.erp.xero import XeroConnector

    engine = _credit_note_engine(tmp_path)
    payloads = {
        json.loads(r["payload"])["invoice_number"]: json.loads(r["payload"])
        for r in warehouse.outbox_rows(engine, sorted(statuses(engine)))
    }
    assert payloads["AV-1"]["document_type"] == "credit_note" and payloads["AV-1"]["total_amount"] == -233.47
    assert payloads["F-1"]["document_type"] == "invoice"
    ledger = tmp_path / "erp.db"
    with (
        running_sandbox(ledger, mode="xero") as url,
        XeroConnector(
            url, tenant_id="t-1", client_id="c", client_secret="s", sleep=lambda _s: None
        ) as client,
    ):
        (batch,) = relay.plan_batches(engine, 50)
        real_post = client.post_bills

        def post_then_crash(bills: list[dict], batch_key: str) -> Any:
            real_post(bills, batch_key)
            raise KeyboardInterrupt("worker killed after the ERP committed")

        with (
            mock.patch.object(client, "post_bills", side_effect=post_then_crash),
            pytest.raises(KeyboardInterrupt),
        ):
            relay.relay_batch(engine, client, batch)
        assert set(statuses(engine).values()) == {"unknown"}
        never = AssertionError("read back, not resend")
        with (
            XeroConnector(url, tenant_id="t-1", client_id="c", client_secret="s") as other_worker,
            mock.patch.object(other_worker, "post_bills", side_effect=never),
        ):
            (retry,) = relay.plan_batches(engine, 50)
            assert relay.relay_batch(engine, other_worker, retry) == {"posted": 2}
    assert set(statuses(engine).values()) == {"posted"}
    with sqlite3.connect(ledger) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM bills ORDER BY rowid").fetchall()
    kinds = {r["invoice_number"]: (r["document_type"], json.loads(r["remote_json"])) for r in rows}
    assert len(rows) == 2
    doc_type, note = kinds["AV-1"]
    assert doc_type == "credit_note" and note["Type"] == "ACCPAYCREDIT" and note["Total"] == 233.47
    assert [li["LineAmount"] for li in note["LineItems"]] == [20.48, 198.0]
    assert kinds["F-1"][0] == "invoice" and kinds["F-1"][1]["Type"] == "ACCPAY"
    with engine.connect() as conn:
        remote_ids = dict(
            conn.exec_driver_sql("SELECT idempotency_key, remote_id FROM erp_outbox").fetchall()
        )
    assert note["CreditNoteID"] in remote_ids.values()


def test_relay_sends_the_document_type_to_the_native_sandbox(tmp_path: Path, sandbox: Any) -> None:
    client, ledger = sandbox
    engine = _credit_note_engine(tmp_path)
    (batch,) = relay.plan_batches(engine, 50)
    assert relay.relay_batch(engine, client, batch) == {"posted": 2}
    with sqlite3.connect(ledger) as conn:
        stored = dict(conn.execute("SELECT invoice_number, document_type FROM bills").fetchall())
    assert stored == {"AV-1": "credit_note", "F-1": "invoice"}
