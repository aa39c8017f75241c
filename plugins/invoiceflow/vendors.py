"""The vendors master table and fuzzy matching of extracted vendor names against it (rapidfuzz).

A name matches the master vendor with the best score (names and aliases, case and legal-form insensitive) when the
score reaches ``INVOICEFLOW_VENDOR_MATCH_MIN`` (default 90). Between ``INVOICEFLOW_VENDOR_MATCH_REVIEW`` (default 75)
and that, the vendor is matched tentatively and flagged for review; below, it is unknown. Unknown vendors are flagged,
never inserted: the master table is maintained by people (``upsert_vendor``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from rapidfuzz import fuzz, process, utils
from sqlalchemy.engine import Connection, Engine

#: Legal forms dropped before comparing names ("ACME GmbH" matches "Acme").
_LEGAL_FORMS = re.compile(
    r"\b(gmbh|ag|kg|ohg|ug|se|sa|sas|sarl|s\.?a\.?r\.?l|bv|nv|ltd|limited|llc|inc|corp|co|plc|spa|srl|oy|ab|as)\b\.?"
)


def accept_score() -> float:
    return float(os.environ.get("INVOICEFLOW_VENDOR_MATCH_MIN", "90"))


def review_score() -> float:
    return float(os.environ.get("INVOICEFLOW_VENDOR_MATCH_REVIEW", "75"))


def comparable(name: str) -> str:
    """Lower case, punctuation and legal forms removed, whitespace collapsed."""
    text = utils.default_process(name)
    return " ".join(_LEGAL_FORMS.sub(" ", text).split()) or text


def name_key(name: str) -> str:
    """The identity of an unmatched vendor name (for duplicate checks): case and whitespace insensitive."""
    return "n:" + " ".join(name.casefold().split())


@dataclass(frozen=True)
class VendorMatch:
    vendor_id: int | None
    name: str | None
    score: float | None  #: None when there is no master data to match against
    status: str  #: matched | uncertain | unknown | no_master_data

    @property
    def key_prefix(self) -> str | None:
        return f"v:{self.vendor_id}" if self.vendor_id is not None and self.status == "matched" else None


@dataclass
class VendorMaster:
    """The active vendors, indexed for fuzzy matching; cheap to match many invoices of the same vendors."""

    vendors: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._choices: list[str] = []
        self._owner: list[dict[str, Any]] = []
        for vendor in self.vendors:
            for name in [vendor["name"], *(vendor.get("aliases") or [])]:
                self._choices.append(comparable(name))
                self._owner.append(vendor)
        self._cache: dict[str, VendorMatch] = {}

    def __bool__(self) -> bool:
        return bool(self.vendors)

    def match(self, name: str | None) -> VendorMatch:
        if not self.vendors:
            return VendorMatch(None, None, None, "no_master_data")
        if not name:
            return VendorMatch(None, None, 0.0, "unknown")
        if name in self._cache:
            return self._cache[name]
        best = process.extractOne(comparable(name), self._choices, scorer=fuzz.WRatio, processor=None)
        if best is None:
            result = VendorMatch(None, None, 0.0, "unknown")
        else:
            _, score, index = best
            vendor = self._owner[index]
            score = round(float(score), 1)
            if score >= accept_score():
                result = VendorMatch(vendor["vendor_id"], vendor["name"], score, "matched")
            elif score >= review_score():
                result = VendorMatch(vendor["vendor_id"], vendor["name"], score, "uncertain")
            else:
                result = VendorMatch(None, None, score, "unknown")
        self._cache[name] = result
        return result


def load_master(engine_or_conn: Engine | Connection) -> VendorMaster:
    """The active vendors of the master table (empty when none are configured)."""
    stmt = sa.text(
        "SELECT vendor_id, name, aliases, vat_id, iban FROM vendors WHERE active = 1 ORDER BY vendor_id"
    )
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
    else:
        rows = [dict(r._mapping) for r in engine_or_conn.execute(stmt)]
    for row in rows:
        row["aliases"] = json.loads(row["aliases"]) if row["aliases"] else []
    return VendorMaster(rows)


def upsert_vendor(
    engine: Engine,
    name: str,
    *,
    aliases: Sequence[str] = (),
    vat_id: str | None = None,
    iban: str | None = None,
) -> int:
    """Add or update a master vendor by name; returns its id."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO vendors (name, aliases, vat_id, iban) VALUES (:name, :aliases, :vat, :iban) "
                "ON CONFLICT (name) DO UPDATE SET aliases = excluded.aliases, vat_id = excluded.vat_id, "
                "iban = excluded.iban, active = 1"
            ),
            {
                "name": name,
                "aliases": json.dumps(list(aliases)) if aliases else None,
                "vat": vat_id,
                "iban": iban,
            },
        )
        return conn.execute(
            sa.text("SELECT vendor_id FROM vendors WHERE name = :n"), {"n": name}
        ).scalar_one()


def upsert_vendors(engine: Engine, names: Iterable[str]) -> list[int]:
    return [upsert_vendor(engine, name) for name in names]


__all__ = ["VendorMaster", "VendorMatch", "comparable", "load_master", "name_key", "upsert_vendor"]
