"""Space an ERP's rate-limited calls across every relay task, so its limit is met by waiting, not by refusals.

QuickBooks Online throttles at 40 batch calls per minute per realm and answers 429 without ``Retry-After`` ("wait
60 seconds"), so a relay that only learns of the limit from refusals loses a minute per 429, in every task at once.
A paced connector names a scope (ERP + tenant) and the spacing between its calls; each call first takes the next
slot of that scope from the warehouse (``erp_call_slots``), which every task, process and host shares, and sleeps
until the slot starts. Slot k of a busy scope starts ``k x spacing`` after the first, so the calls of all tasks
together never exceed the limit, and a lone call does not wait at all.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_CLAIM = sa.text(
    "UPDATE erp_call_slots SET next_at = CASE WHEN next_at > :now THEN next_at ELSE :now END + :spacing "
    "WHERE scope = :scope RETURNING next_at"
)


def take_call_slot(engine: Engine, scope: str, spacing: float, now: float | None = None) -> float:
    """Claim the next call slot of ``scope``; returns when it starts (epoch seconds, never before ``now``)."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO erp_call_slots (scope, next_at) VALUES (:scope, :now) ON CONFLICT (scope) DO NOTHING"
            ),
            {"scope": scope, "now": now},
        )
        next_at = conn.execute(_CLAIM, {"scope": scope, "now": now, "spacing": spacing}).scalar_one()
    return float(next_at) - spacing


def call_pace(connector: Any) -> tuple[str, float] | None:
    """``(scope, seconds between calls)`` of a connector that wants its calls paced, else ``None``."""
    pace = getattr(connector, "call_pace", None)
    return pace if isinstance(pace, tuple) and len(pace) == 2 and pace[1] > 0 else None
