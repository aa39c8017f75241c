"""The ERP sync DAG's task logic: relay pending outbox rows to the ERP in batches, exactly once.

Order of operations per batch (erp-apis.md §4.1, §5.1):

1. Rows whose payload no longer matches the hash taken when the invoice was approved are dead-lettered, never sent.
2. Rows whose last send got no answer (``unknown``) are read back from the ERP by our marker
   (``find_bill(key, bill=payload)``): found → ``posted`` with the remote id; the ERP cannot be asked → a failure is
   counted and the row stays ``unknown`` (never "absent by default").
3. Rows that failed ``max_failures`` times go to ``dead_letter`` with their last error instead of being sent again.
4. The rest is marked ``unknown`` with the batch's idempotency key *before* the request, so a worker killed
   mid-request leaves rows that the next run reads back instead of re-sending blindly.
5. ``post_bills`` returns one outcome per bill: ``posted`` (remote id), ``duplicate`` (the ERP already had it:
   linked), ``rejected`` (the ERP's reason), ``unknown`` (sent, no answer: a failure; read back next round).
   :class:`ErpRateLimitedError` means nothing was applied: rows go back to ``pending`` and the relay backs off;
   a refused request (:class:`ErpRequestError`, ``ValueError``) counts a failure, rows back to ``pending``;
   :class:`ErpAuthError` leaves the rows ``pending`` and raises (a configuration problem, not the invoices').

Batches are capped by the connector's ``max_batch``; the idempotency key of a batch is derived from its rows and
payloads, so a re-sent identical batch is replayed by the ERP, not re-run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine

from invoiceflow import warehouse
from invoiceflow.erp import pacing
from invoiceflow.erp.base import (
    BillOutcome,
    ErpAuthError,
    ErpConnector,
    ErpError,
    ErpRateLimitedError,
    ErpRequestError,
    ErpUnavailableError,
)
from invoiceflow.erp.connectors import connector_from_connection

log = logging.getLogger(__name__)

#: Mapped ``relay_batch`` tasks running at once: Xero's 5 concurrent calls per tenant. Each task makes one ERP call
#: at a time (its read-backs and its post are sequential), and the token endpoint is the identity server, not the
#: tenant API, so 5 tasks never exceed the limit on their own; a call that meets another client of the same
#: tenant gets a 429 ``concurrent`` and is retried after ``Retry-After``. With fewer slots than the limit the
#: per-batch outbox writes and the request's latency are not overlapped enough to keep up with 60 calls/minute.
RELAY_CONCURRENCY = 5
#: Waits for a rate limit inside one task before the rows are left ``pending`` for the next try.
RATE_LIMIT_WAITS = 3
#: Longest single back-off inside a task; a longer ``Retry-After`` (e.g. Xero's daily limit) ends the task.
MAX_BACKOFF_SECONDS = 120.0
DEFAULT_BACKOFF_SECONDS = 5.0


_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


@contextmanager
def _sqlite_writer(engine: Engine) -> Iterator[None]:
    """SQLite has a single writer. Relay threads of one process that write the outbox queue on a lock here
    instead of in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15... ms between tries and so made each
    contended write cost several times its own time. Other databases are not serialised."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with _SQLITE_WRITERS_GUARD:
        lock = _SQLITE_WRITERS.setdefault(str(engine.url), threading.Lock())
    with lock:
        yield


def _write(func: Callable[..., Any], engine: Engine, *args: Any, **kwargs: Any) -> Any:
    """Run one of the warehouse's outbox writes (its own transaction) under :func:`_sqlite_writer`."""
    with _sqlite_writer(engine):
        return func(engine, *args, **kwargs)


def batch_size(connector: ErpConnector) -> int:
    """Bills per request: the connector's ``max_batch``, capped by ``INVOICEFLOW_ERP_BATCH_SIZE`` when set."""
    size = int(connector.max_batch)
    override = os.environ.get("INVOICEFLOW_ERP_BATCH_SIZE")
    if override:
        size = min(size, int(override))
    return max(1, size)


def plan_batches(engine: Engine, batch_size: int) -> list[list[str]]:
    """Outbox keys still to relay, in batches the ERP accepts in one call."""
    keys = warehouse.outbox_keys_to_relay(engine)
    return [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]


def connector_for(conn: Any, **overrides: Any) -> ErpConnector:
    """The connector of an Airflow connection (see :mod:`invoiceflow.erp.connectors` for the fields)."""
    return connector_from_connection(conn, **overrides)


def client_from_connection(conn: Any) -> ErpConnector:
    """Kept for callers of the first version: the connector for ``conn``."""
    return connector_for(conn)


def relay_batch(
    engine: Engine,
    connector: ErpConnector,
    keys: list[str],
    *,
    max_failures: int = warehouse.DEFAULT_MAX_OUTBOX_FAILURES,
    rate_limit_waits: int = RATE_LIMIT_WAITS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Relay one planned batch (split further if the connector takes fewer bills); returns counts per outcome.

    Counts use the outbox states plus ``rate_limited`` (rows left ``pending`` because the ERP kept refusing).
    """
    counts: Counter[str] = Counter()
    size = max(1, int(connector.max_batch))
    if pace := pacing.call_pace(connector):
        slot = functools.partial(_wait_for_call_slot, engine, *pace, sleep)
        connector.wait_for_call_slot = slot  # type: ignore[attr-defined]
    prefetch = getattr(connector, "prefetch", None)
    if callable(prefetch):
        prefetch()  # the OAuth token fetch overlaps the outbox reads and writes below
    for start in range(0, len(keys), size):
        counts.update(
            _relay_chunk(
                engine,
                connector,
                keys[start : start + size],
                max_failures=max_failures,
                rate_limit_waits=rate_limit_waits,
                sleep=sleep,
            )
        )
    result = {k: v for k, v in sorted(counts.items()) if v}
    log.info("ERP batch of %d: %s", len(keys), result)
    return result


def _wait_for_call_slot(engine: Engine, scope: str, spacing: float, sleep: Callable[[float], None]) -> None:
    """Before each rate-limited call of a paced connector: take the scope's next slot, sleep until it starts."""
    start = _write(pacing.take_call_slot, engine, scope, spacing)
    if (wait := start - time.time()) > 0:
        log.debug("ERP call paced: waiting %.3fs for the next slot of %s", wait, scope)
        sleep(wait)


def _relay_chunk(
    engine: Engine,
    connector: ErpConnector,
    keys: list[str],
    *,
    max_failures: int,
    rate_limit_waits: int,
    sleep: Callable[[float], None],
) -> Counter[str]:
    counts: Counter[str] = Counter()
    rows = warehouse.outbox_rows(engine, keys)
    rows = _drop_tampered(engine, rows, counts)
    rows = _read_back(engine, connector, rows, counts, max_failures)
    give_up = [r for r in rows if r["failures"] >= max_failures]
    if give_up:
        for row in give_up:
            reason = f"gave up after {row['failures']} failures; last: {row['last_error'] or 'no detail'}"
            _write(warehouse.dead_letter_outbox, engine, [row["idempotency_key"]], reason)
            log.warning("Outbox %s dead-lettered: %s", row["idempotency_key"], reason)
        counts["dead_letter"] += len(give_up)
    to_send = [r for r in rows if r["failures"] < max_failures]
    waits = 0
    while to_send:
        try:
            outcomes = _send(engine, connector, to_send, max_failures)
        except ErpRateLimitedError as exc:
            sent_keys = [r["idempotency_key"] for r in to_send]
            _write(warehouse.release_outbox, engine, sent_keys, f"rate-limited: {exc}")
            delay = exc.retry_after if exc.retry_after is not None else DEFAULT_BACKOFF_SECONDS
            if waits >= rate_limit_waits or delay > MAX_BACKOFF_SECONDS or exc.problem == "day":
                log.warning("ERP rate limit (%s): %d rows left pending", exc, len(sent_keys))
                counts["rate_limited"] += len(sent_keys)
                return counts
            waits += 1
            log.info("ERP rate limit (%s): backing off %.1fs", exc, delay)
            sleep(delay)
            continue
        for outcome in outcomes:
            counts[outcome.status] += 1
        return counts
    return counts


def _drop_tampered(engine: Engine, rows: list[dict[str, Any]], counts: Counter[str]) -> list[dict[str, Any]]:
    """A payload that changed after approval is not what was approved: never send it."""
    keep = []
    for row in rows:
        if (
            row.get("payload_hash")
            and hashlib.sha256(row["payload"].encode()).hexdigest() != row["payload_hash"]
        ):
            _write(
                warehouse.dead_letter_outbox,
                engine,
                [row["idempotency_key"]],
                "payload does not match the hash taken at approval",
            )
            counts["dead_letter"] += 1
            continue
        keep.append(row)
    return keep


def _read_back(
    engine: Engine,
    connector: ErpConnector,
    rows: list[dict[str, Any]],
    counts: Counter[str],
    max_failures: int,
) -> list[dict[str, Any]]:
    """Resolve ``unknown`` rows by asking the ERP; returns the rows that must (still) be sent."""
    rest = []
    linked: list[tuple[str, str, str | None, str | None]] = []
    for row in rows:
        if row["status"] != "unknown":
            rest.append(row)
            continue
        key = row["idempotency_key"]
        try:
            remote_id = connector.find_bill(key, bill=json.loads(row["payload"]))
        except ErpRateLimitedError as exc:
            log.warning("Outbox %s: read-back rate-limited (%s); stays unknown", key, exc)
            counts["unknown"] += 1
            continue
        except (ErpUnavailableError, ErpRequestError) as exc:
            if isinstance(exc, ErpAuthError):
                raise
            _write(
                warehouse.record_outbox_failures,
                engine,
                [key],
                f"read-back failed, the ERP may hold this bill: {exc}",
                status="unknown",
                max_failures=max_failures,
            )
            counts["dead_letter" if row["failures"] + 1 >= max_failures else "unknown"] += 1
            continue
        if remote_id is not None:
            log.info("Outbox %s was posted before the answer was lost: linking %s", key, remote_id)
            linked.append((key, "posted", remote_id, None))
            continue
        rest.append(row)  # confirmed absent: safe to send
    if linked:
        _write(warehouse.record_outbox_outcomes, engine, linked)
        counts["posted"] += len(linked)
    return rest


def _send(
    engine: Engine, connector: ErpConnector, rows: list[dict[str, Any]], max_failures: int
) -> list[BillOutcome]:
    """Mark in flight, post, store the outcomes. Raises :class:`ErpRateLimitedError` (rows then ``unknown``;
    the caller releases them) and :class:`ErpAuthError`; other refusals are stored as failures."""
    keys = [r["idempotency_key"] for r in rows]
    batch_key = _batch_key(rows)
    _write(warehouse.mark_outbox_in_flight, engine, keys, batch_key)
    bills = [{**json.loads(r["payload"]), "reference": r["idempotency_key"]} for r in rows]
    try:
        results = connector.post_bills(bills, batch_key=batch_key)
    except ErpAuthError as exc:
        _write(warehouse.release_outbox, engine, keys, f"ERP refused our credentials: {exc}")
        raise
    except (ErpRequestError, ValueError) as exc:
        # Nothing was applied: back to pending, one failure counted (dead_letter after max_failures).
        _write(
            warehouse.record_outbox_failures,
            engine,
            keys,
            f"ERP refused the batch: {exc}",
            status="pending",
            max_failures=max_failures,
        )
        log.warning("ERP refused a batch of %d: %s", len(keys), exc)
        return [BillOutcome(k, "refused", None, str(exc)) for k in keys]
    except ErpRateLimitedError:
        raise  # nothing applied: the caller releases the rows and backs off
    except ErpError as exc:
        # Outside the contract (e.g. the token endpoint failed mid-call): the bills may have been applied, so they
        # stay unknown and are read back before anything is resent.
        _write(
            warehouse.record_outbox_failures,
            engine,
            keys,
            f"ERP call failed: {exc}",
            status="unknown",
            max_failures=max_failures + 1,
        )
        log.warning("ERP call for a batch of %d failed: %s", len(keys), exc)
        return [BillOutcome(k, "unknown", None, str(exc)) for k in keys]
    by_ref = {o.reference: o for o in results}
    outcomes = [
        by_ref.get(k) or BillOutcome(k, "unknown", None, "connector returned no outcome for this bill")
        for k in keys
    ]
    _write(
        warehouse.record_outbox_outcomes,
        engine,
        [(o.reference, o.status, o.remote_id, o.error) for o in outcomes],
    )
    return outcomes


def _batch_key(rows: list[dict[str, Any]]) -> str:
    """Same rows with the same payloads give the same request key, so a resent request is replayed, not re-run."""
    material = "\n".join(
        f"{r['idempotency_key']}:{r['payload']}" for r in sorted(rows, key=lambda r: r["idempotency_key"])
    )
    return "batch-" + hashlib.sha256(material.encode()).hexdigest()[:40]
