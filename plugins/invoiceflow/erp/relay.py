"""The ERP sync DAG's task logic: relay pending outbox rows to the ERP in batches, exactly once.

Order of operations per batch: rows whose last send got no answer (``unknown``) are first read back from the ERP
by our marker; only what the ERP does not have is sent; every row to send is marked ``unknown`` *before* the
request, so a crash mid-request is resolved by read-back on the next run instead of a blind resend.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

from sqlalchemy.engine import Engine

from invoiceflow import warehouse
from invoiceflow.erp.client import BillOutcome, SandboxErpClient

log = logging.getLogger(__name__)


def plan_batches(engine: Engine, batch_size: int) -> list[list[str]]:
    """Outbox keys still to relay, in batches the ERP accepts in one call."""
    keys = warehouse.outbox_keys_to_relay(engine)
    return [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]


def client_from_connection(conn: Any) -> SandboxErpClient:
    """ERP connection: base URL in host, optional bearer token in password."""
    host = (conn.host or "").rstrip("/")
    if "://" not in host:
        host = f"http://{host}{f':{conn.port}' if conn.port else ''}"
    return SandboxErpClient(host, token=conn.password or None)


def relay_batch(engine: Engine, client: SandboxErpClient, keys: list[str]) -> dict[str, int]:
    """Post one batch of outbox rows and store each item's outcome; returns counts per outcome."""
    rows = warehouse.outbox_rows(engine, keys)
    outcomes: list[tuple[str, str, str | None, str | None]] = []
    to_send = []
    for row in rows:
        if row["status"] == "unknown":
            remote_id = client.find_bill(row["idempotency_key"])
            if remote_id is not None:
                log.info(
                    "Outbox %s was posted before the answer was lost: linking %s",
                    row["idempotency_key"],
                    remote_id,
                )
                outcomes.append((row["idempotency_key"], "posted", remote_id, None))
                continue
        to_send.append(row)
    if to_send:
        sent_keys = [r["idempotency_key"] for r in to_send]
        warehouse.mark_outbox_in_flight(engine, sent_keys)
        bills = [{**json.loads(r["payload"]), "reference": r["idempotency_key"]} for r in to_send]
        results: list[BillOutcome] = client.post_bills(bills, batch_key=_batch_key(to_send))
        outcomes.extend((o.reference, o.status, o.remote_id, o.error) for o in results)
    warehouse.record_outbox_outcomes(engine, outcomes)
    counts = dict(Counter(status for _, status, _, _ in outcomes))
    log.info("ERP batch of %d: %s", len(rows), counts)
    return counts


def _batch_key(rows: list[dict[str, Any]]) -> str:
    """Same rows with the same payloads give the same request key, so a resent request is replayed, not re-run."""
    material = "\n".join(
        f"{r['idempotency_key']}:{r['payload']}" for r in sorted(rows, key=lambda r: r["idempotency_key"])
    )
    return "batch-" + hashlib.sha256(material.encode()).hexdigest()[:40]
