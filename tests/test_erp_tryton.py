"""A REAL Tryton server (trytond on SQLite, loopback): bills posted through the connector land as posted supplier
invoices, and Tryton's duplicate-invoice warning (same supplier + reference) becomes a ``duplicate`` outcome."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from invoiceflow.erp import connector_from_connection
from invoiceflow.erp.tryton import TrytonConnector

pytest.importorskip("trytond.modules.account_invoice")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tryton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from invoiceflow.erp.tryton_dev import running_trytond

    with running_trytond(tmp_path_factory.mktemp("tryton")) as server:
        yield server


def bill(n: int, **overrides: Any) -> dict[str, Any]:
    data = {
        "reference": f"inv-{n:04d}",
        "vendor_name": "ACME Office Supplies",
        "invoice_number": f"AC-{n}",
        "invoice_date": "2026-01-15",
        "due_date": "2026-02-14",
        "currency": "EUR",
        "subtotal": "100.00",
        "tax_amount": "19.00",
        "total_amount": "119.00",
        "line_items": [
            {"description": "Paper", "quantity": 4, "unit_price": "12.50", "line_total": "50.00"},
            {"description": "Toner", "quantity": 1, "unit_price": "50.00", "line_total": "50.00"},
        ],
    }
    data.update(overrides)
    return data


def test_bills_are_posted_in_tryton_and_duplicates_handled(tryton: Any) -> None:
    conn = connector_from_connection(
        SimpleNamespace(
            conn_type="tryton",
            host=tryton.url,
            port=None,
            schema=tryton.database,
            login=tryton.login,
            password=tryton.password,
            extra_dejson={},
        )
    )
    assert isinstance(conn, TrytonConnector)
    with conn:
        first = conn.post_bills(
            [bill(1), bill(2, vendor_name="Globex GmbH", tax_amount=None, total_amount="100")], "b1"
        )
        assert [o.status for o in first] == ["posted", "posted"], first

        # Same supplier + reference under a new marker: Tryton's InvoiceSimilarWarning -> duplicate, draft removed.
        dup = conn.post_bills([bill(3, invoice_number="AC-1"), bill(1), bill(4, currency="XXX")], "b2")
        assert [o.status for o in dup] == ["duplicate", "duplicate", "rejected"], dup
        assert dup[0].remote_id == first[0].remote_id and "similar" in (dup[0].error or "")
        assert dup[1].remote_id == first[0].remote_id  # our own marker: found before sending anything

        assert conn.find_bill("inv-0001") == first[0].remote_id
        assert conn.find_bill("inv-0003") is None
        invoices = conn.call(
            "model.account.invoice.search_read",
            [["type", "=", "in"]],
            0,
            None,
            [["id", "ASC"]],
            ["id", "state", "reference", "total_amount", "party.name", "description", "number"],
        )
        assert [(i["state"], i["reference"], i["party."]["name"]) for i in invoices] == [
            ("posted", "AC-1", "ACME Office Supplies"),
            ("posted", "AC-2", "Globex GmbH"),
        ]
        assert invoices[0]["total_amount"]["decimal"] == "119.00"
        assert invoices[1]["total_amount"]["decimal"] == "100.00"
        assert [b["id"] for b in conn.find_bills("acme office supplies", "ac-1")] == [first[0].remote_id]
        assert conn.ensure_vendor("ACME Office Supplies") == conn.ensure_vendor("ACME Office Supplies")
