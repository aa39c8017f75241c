"""Human review of ``needs_review`` and ``blocked`` invoices: list, show, correct, approve, reject.

Every action is stored in ``invoice_versions`` (who, when, what changed). Version 1 is the state the pipeline loaded;
each correction adds a version. A correction runs validation again on the corrected invoice (vendor match, duplicate
keys, issues) and stores what it derives, the new issues and the version in one transaction; the invoice stays
waiting for a person (``needs_review``, or ``blocked`` if it still duplicates a live invoice).
Approving puts the invoice into the ERP outbox in the same transaction (the same ``_enqueue_outbox`` the load uses);
if it cannot be queued (another document holds its ERP idempotency key) approval fails and changes nothing; if this
document is queued already, approving again queues nothing more. A blocked hard duplicate cannot be approved until
its number is corrected. Used by the ``invoice_review`` DAG (Airflow human-in-the-loop) and by
``invoiceflow review ...``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from invoiceflow import warehouse
from invoiceflow.warehouse import DERIVED_COLUMNS, HEADER_COLUMNS, LINE_COLUMNS

PENDING = ("needs_review", warehouse.BLOCKED)
APPROVED, REJECTED = "approved", "rejected"
#: Header fields a reviewer may correct.
EDITABLE = HEADER_COLUMNS
#: The choices of the human-in-the-loop request; ``KEEP_PENDING`` is also what an unanswered request resolves to.
APPROVE, CORRECT, REJECT, KEEP_PENDING = "Approve", "Correct", "Reject", "Keep pending"
OPTIONS = (APPROVE, CORRECT, REJECT, KEEP_PENDING)
#: The asset the ``invoice_review`` DAG emits when it approved invoices (``erp_sync`` is scheduled on it).
APPROVED_ASSET_URI = "invoiceflow://warehouse/approved_invoices"


class ReviewError(ValueError):
    """The action is not possible (unknown id, not pending, duplicate number, ...)."""


def pending(engine: Engine, limit: int | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT i.document_sha256, d.file_name, i.vendor_name, i.invoice_number, i.total_amount, i.currency, "
        "i.review_status, i.review_issues, i.duplicate_of, i.version, i.loaded_at FROM invoices i "
        "JOIN documents d ON d.sha256 = i.document_sha256 WHERE i.review_status IN ('needs_review', 'blocked') "
        "ORDER BY i.loaded_at, i.document_sha256"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def resolve(conn: Connection, ident: str) -> str:
    """A document hash from a full hash or an unambiguous prefix (at least 6 characters)."""
    if len(ident) < 6:
        raise ReviewError("give at least 6 characters of the document hash")
    shas = list(
        conn.execute(
            sa.text("SELECT document_sha256 FROM invoices WHERE document_sha256 LIKE :p"), {"p": ident + "%"}
        ).scalars()
    )
    if len(shas) != 1:
        raise ReviewError(f"{ident!r} matches {len(shas)} invoices")
    return shas[0]


def show(engine: Engine, ident: str) -> dict[str, Any]:
    with engine.connect() as conn:
        sha = resolve(conn, ident)
        invoice = dict(
            conn.execute(sa.text("SELECT * FROM invoices WHERE document_sha256 = :s"), {"s": sha})
            .one()
            ._mapping
        )
        invoice["line_items"] = _lines(conn, sha)
        invoice["issues"] = [
            dict(r._mapping)
            for r in conn.execute(
                sa.text(
                    "SELECT code, message, severity FROM validation_issues WHERE document_sha256 = :s ORDER BY code"
                ),
                {"s": sha},
            )
        ]
        invoice["versions"] = [
            dict(r._mapping)
            for r in conn.execute(
                sa.text(
                    "SELECT version, action, changed_by, changed_at, changes, comment FROM invoice_versions "
                    "WHERE document_sha256 = :s ORDER BY version, changed_at"
                ),
                {"s": sha},
            )
        ]
        return invoice


def _lines(conn: Connection, sha: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            f"SELECT {', '.join(LINE_COLUMNS)} FROM invoice_line_items WHERE document_sha256 = :s ORDER BY line_number"
        ),
        {"s": sha},
    )
    return [{k: _plain(v) for k, v in r._mapping.items()} for r in rows]


def _plain(value: Any) -> Any:
    """Database values as the pipeline produced them (floats, ISO dates), so ERP payloads look the same."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()[:10]
    return float(value)


def _header(conn: Connection, sha: str) -> dict[str, Any]:
    row = (
        conn.execute(sa.text("SELECT * FROM invoices WHERE document_sha256 = :s"), {"s": sha}).one()._mapping
    )
    return dict(row)


def _record(
    conn: Connection,
    sha: str,
    version: int,
    action: str,
    by: str,
    changes: dict,
    header: dict,
    comment: str | None,
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO invoice_versions (document_sha256, version, action, changed_by, changed_at, changes, header, "
            "comment) VALUES (:s, :v, :a, :by, :at, :changes, :header, :comment)"
        ),
        {
            "s": sha,
            "v": version,
            "a": action,
            "by": by,
            "at": datetime.now(UTC),
            "changes": json.dumps(changes, default=str),
            "header": json.dumps({k: _plain(header.get(k)) for k in HEADER_COLUMNS}, default=str),
            "comment": comment,
        },
    )


def _ensure_first_version(conn: Connection, sha: str, row: dict[str, Any]) -> None:
    exists = conn.execute(
        sa.text(
            "SELECT 1 FROM invoice_versions WHERE document_sha256 = :s AND version = 1 AND action = 'loaded'"
        ),
        {"s": sha},
    ).first()
    if not exists:
        _record(conn, sha, 1, "loaded", "pipeline", {}, row, None)


def _pending_row(conn: Connection, sha: str) -> dict[str, Any]:
    row = _header(conn, sha)
    if row["review_status"] not in PENDING:
        raise ReviewError(f"invoice {sha[:12]} is {row['review_status']}, not waiting for review")
    return row


def correct(engine: Engine, ident: str, changes: dict[str, Any], by: str, comment: str | None = None) -> int:
    """Store corrected header fields as a new version, validated again; returns the new version number.

    The corrected invoice goes through :func:`validation.validate` (warehouse vendors master and live invoices):
    its normalised header, derived columns (vendor match, duplicate keys, ...), ``review_issues`` and
    ``validation_issues`` rows are replaced in the same transaction as the new version. The version records every
    header field whose stored value changed.
    """
    from invoiceflow import validation  # pandas and pandera: not at import (the DAG files import this module)

    if unknown := set(changes) - set(EDITABLE):
        raise ReviewError(f"cannot correct {sorted(unknown)}; editable: {', '.join(EDITABLE)}")
    _, _, unreadable = validation.normalise(changes)
    if unreadable:
        reasons = "; ".join(validation.MESSAGES.get(code, code) for code in sorted(unreadable))
        raise ReviewError(f"cannot store the correction: {reasons}")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise with loads (and other corrections), as loads do among themselves: the duplicate check below
            # then sees every committed invoice, and none can take this vendor and number before this commits.
            warehouse.lock_loads(conn)
        sha = resolve(conn, ident)
        row = _pending_row(conn, sha)
        current = {k: _plain(row.get(k)) for k in HEADER_COLUMNS}
        checked = _revalidate(conn, engine, sha, row, {**current, **changes})
        _ensure_first_version(conn, sha, row)
        diff = {k: [current[k], checked.header[k]] for k in HEADER_COLUMNS if checked.header[k] != current[k]}
        if not diff:
            return int(row["version"])
        status = warehouse.BLOCKED if checked.review_status == warehouse.BLOCKED else warehouse.NEEDS_REVIEW
        codes = [i["code"] for i in checked.issues]
        version = int(row["version"]) + 1
        columns = (*HEADER_COLUMNS, *DERIVED_COLUMNS)
        conn.execute(
            sa.text(
                f"UPDATE invoices SET {', '.join(f'{c} = :{c}' for c in columns)}, review_status = :status, "
                "review_issues = :issues, version = :version WHERE document_sha256 = :sha"
            ),
            {
                **{c: checked.header[c] for c in HEADER_COLUMNS},
                **{c: checked.derived.get(c) for c in DERIVED_COLUMNS},
                "status": status,
                "issues": json.dumps(codes),
                "version": version,
                "sha": sha,
            },
        )
        conn.execute(sa.text("DELETE FROM validation_issues WHERE document_sha256 = :s"), {"s": sha})
        warehouse.insert_issues(conn, [checked])
        _record(conn, sha, version, "corrected", by, diff, checked.header, comment)
        return version


def _revalidate(
    conn: Connection, engine: Engine, sha: str, row: dict[str, Any], header: dict[str, Any]
) -> warehouse.ValidatedInvoice:
    """Validation of the stored invoice with ``header`` as its header (line items as stored).

    What validation reads beside the header comes from the extraction if it was kept (the printed document type,
    VAT id and IBAN), else from what the load stored.
    """
    from invoiceflow import validation

    merged: dict[str, Any] = {
        "document_type": row.get("document_type"),
        "vendor_vat_id": row.get("vendor_vat_id"),
        "vendor_iban": row.get("vendor_iban"),
    }
    raw = conn.execute(
        sa.text("SELECT merged_invoice FROM raw_extraction_results WHERE document_sha256 = :s"), {"s": sha}
    ).scalar()
    if raw:
        merged = json.loads(raw)
    merged = {**merged, **header, "line_items": _lines(conn, sha)}
    (checked,) = validation.validate({sha: merged}, engine=engine)
    return checked


def approve(engine: Engine, ident: str, by: str, comment: str | None = None) -> dict[str, Any]:
    """Approve a pending invoice: status ``approved``, document ``loaded``, ERP outbox row, one transaction."""
    with engine.begin() as conn:
        sha = resolve(conn, ident)
        row = _pending_row(conn, sha)
        if row["review_status"] == warehouse.BLOCKED or row["duplicate_of"]:
            raise ReviewError(
                f"invoice {sha[:12]} duplicates {str(row['duplicate_of'])[:12]}: reject it or correct its number"
            )
        if not row["vendor_name"] or not row["invoice_number"]:
            raise ReviewError("vendor name and invoice number are needed for the ERP: correct them first")
        _ensure_first_version(conn, sha, row)
        now = datetime.now(UTC)
        conn.execute(
            sa.text(
                "UPDATE invoices SET review_status = :st, reviewed_by = :by, reviewed_at = :at WHERE document_sha256 = :s"
            ),
            {"st": APPROVED, "by": by, "at": now, "s": sha},
        )
        _record(conn, sha, int(row["version"]), APPROVED, by, {}, row, comment)
        warehouse.set_document_status(conn, sha, warehouse.LOADED, f"approved by {by}")
        header = {k: _plain(row.get(k)) for k in HEADER_COLUMNS}
        queued = warehouse._enqueue_outbox(conn, warehouse.ValidatedInvoice(sha, header, _lines(conn, sha)))
        if not queued:
            _check_already_queued(conn, sha, header)  # raises (rolling everything back) unless it is this one
        return {"document_sha256": sha, "status": APPROVED, "outbox": queued, "version": int(row["version"])}


def _check_already_queued(conn: Connection, sha: str, header: dict[str, Any]) -> None:
    """The outbox insert found a row already: fine if it is this document's, else the invoice cannot be sent."""
    key = warehouse.idempotency_key(header["vendor_name"], header["invoice_number"])
    holders = conn.execute(
        sa.text(
            "SELECT document_sha256, status FROM erp_outbox WHERE document_sha256 = :s OR idempotency_key = :k"
        ),
        {"s": sha, "k": key},
    ).all()
    if any(h.document_sha256 == sha for h in holders):
        return
    other = ", ".join(f"{h.document_sha256[:12]} ({h.status})" for h in holders) or "another document"
    raise ReviewError(
        f"invoice {sha[:12]} cannot be queued for the ERP: {other} is queued under the same ERP key {key} "
        "(same vendor name and invoice number); nothing was changed: reject it as a duplicate or correct its "
        "number or vendor name"
    )


def reject(engine: Engine, ident: str, by: str, reason: str) -> dict[str, Any]:
    """Reject a pending invoice (terminal): never sent to the ERP; its number is free again."""
    with engine.begin() as conn:
        sha = resolve(conn, ident)
        row = _pending_row(conn, sha)
        _ensure_first_version(conn, sha, row)
        conn.execute(
            sa.text(
                "UPDATE invoices SET review_status = :st, reviewed_by = :by, reviewed_at = :at WHERE document_sha256 = :s"
            ),
            {"st": REJECTED, "by": by, "at": datetime.now(UTC), "s": sha},
        )
        _record(conn, sha, int(row["version"]), REJECTED, by, {}, row, reason)
        warehouse.set_document_status(conn, sha, warehouse.REJECTED, f"rejected by {by}: {reason}")
        return {"document_sha256": sha, "status": REJECTED, "version": int(row["version"])}


def apply_decision(engine: Engine, sha: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Apply a human-in-the-loop response (``chosen_options``, ``params_input``, ``responded_by_user``).

    ``Keep pending`` (also what an unanswered request resolves to) changes nothing.
    """
    option = (decision.get("chosen_options") or [KEEP_PENDING])[0]
    if option not in OPTIONS:
        raise ReviewError(f"unknown review option {option!r}; expected one of {', '.join(OPTIONS)}")
    if option == KEEP_PENDING:
        with engine.connect() as conn:
            row = _header(conn, sha)
        return {"document_sha256": sha, "status": row["review_status"], "version": int(row["version"])}
    params = decision.get("params_input") or {}
    user = decision.get("responded_by_user") or {}
    by = user.get("name") or user.get("id") or "airflow"
    changes = {k: v for k, v in params.items() if k in EDITABLE and v not in (None, "")}
    comment = params.get("comment") or None
    if option == REJECT:
        return reject(engine, sha, by, comment or "rejected in Airflow")
    if changes:
        correct(engine, sha, changes, by, comment)
    if option == APPROVE:
        return approve(engine, sha, by, comment)
    return {"document_sha256": sha, "status": "corrected", "version": show(engine, sha)["version"]}


__all__ = [
    "APPROVED_ASSET_URI",
    "OPTIONS",
    "ReviewError",
    "apply_decision",
    "approve",
    "correct",
    "pending",
    "reject",
    "show",
]
