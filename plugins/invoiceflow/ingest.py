"""The ingest DAG's task logic: register new inbox files, cut them into batches, validate and load a batch.

Kept out of ``dags/`` so it is importable and testable without a scheduler.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from sqlalchemy.engine import Engine

from invoiceflow import storage, validation, warehouse

log = logging.getLogger(__name__)


def register_inbox(engine: Engine, inbox_url: str, run_id: str | None = None) -> dict[str, int]:
    """List the inbox and record every file not seen before (by path, size and mtime), keyed by content hash.

    Unsupported, empty or corrupt files are recorded as ``rejected`` with the reason and go no further.
    """
    from invoiceflow.extraction import detect_type

    known = warehouse.known_paths(engine)
    seen = []
    for path in storage.iter_files(storage.inbox_path(inbox_url)):
        key = str(path)
        if key in known and known[key] == (_size(path), storage.modified_at(path)):
            continue
        seen.append(storage.inspect_file(path, detect_type))
    new = set(warehouse.register_files(engine, seen, run_id))
    rejected = [f for f in seen if f.rejection and f.sha256 in new]
    for f in rejected:
        log.warning("Rejected %s: %s", f.path, f.rejection)
    counts = {
        "listed_new_paths": len(seen),
        "new_documents": len(new) - len(rejected),
        "rejected": len(rejected),
        "already_known_content": len([f for f in seen if f.sha256 not in new]),
    }
    log.info("Inbox %s: %s", inbox_url, counts)
    return counts


def _size(path: Any) -> int | None:
    try:
        return int(path.stat().st_size)
    except (OSError, AttributeError):
        return None


def plan_batches(engine: Engine, batch_size: int) -> list[list[str]]:
    """Open documents in batches of ``batch_size``: one mapped task per batch, never one per file."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    open_docs = warehouse.open_documents(engine)
    batches = [open_docs[i : i + batch_size] for i in range(0, len(open_docs), batch_size)]
    log.info("%d open documents in %d batches of at most %d", len(open_docs), len(batches), batch_size)
    return batches


def batch_id(document_ids: list[str]) -> str:
    """A stable id for a batch, so re-running its load rewrites the same staging rows."""
    return hashlib.sha256("\n".join(sorted(document_ids)).encode()).hexdigest()[:24]


def validate_and_load(engine: Engine, document_ids: list[str]) -> dict[str, int]:
    """Validate the extracted invoices of a batch and load them (staging, then core) in one transaction."""
    invoices = warehouse.extracted_invoices(engine, document_ids)
    validated = validation.validate(invoices, engine=engine)
    counts = warehouse.load_batch(engine, batch_id(document_ids), validated)
    for inv in validated:
        if inv.issues:
            log.info(
                "%s %s: %s",
                "Blocked" if inv.review_status == warehouse.BLOCKED else "Needs review",
                inv.document_sha256[:12],
                ", ".join(i["code"] for i in inv.issues),
            )
    counts["not_extracted"] = len(document_ids) - len(invoices)
    log.info("Loaded batch of %d documents: %s", len(document_ids), counts)
    return counts
