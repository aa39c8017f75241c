"""Benchmark the warehouse load on PostgreSQL: the pipeline's own load code against what a user would write.

Generates ``--invoices`` invoices with about ``--lines`` line items each (as the extractor returns them) and, in one
run, inside a throw-away schema of the ``--url`` database (dropped at the end):

* **validate**: :func:`invoiceflow.validation.validate` (normalise, vendor matching against a seeded vendors master,
  duplicate checks, the pandera schema) over all invoices;
* **pipeline**: :func:`invoiceflow.warehouse.load_batch` in batches of ``--batch-size``, one transaction per batch,
  as in production: every document is new here, so each batch takes the first-load path: ``COPY`` straight into
  the core tables (invoices, line items, issues, ERP outbox with its JSON payloads), document states set-based; a
  reload would go through staging and ``INSERT … ON CONFLICT`` merges instead (not timed here);
* **baseline**: the same header and line-item frames with pandas ``DataFrame.to_sql`` (default arguments);
* **bare COPY**: the same line-item rows with ``COPY`` into an unlogged table without indexes (the machine's limit);
* **reload** (last, so its WAL cannot slow the sections above): the same batches loaded again, which goes through
  staging and the ``INSERT … ON CONFLICT`` merges (line items replaced, outbox rows kept): the path of any batch
  holding a document that is already loaded. Reported beside the targets, not part of them.

Rates are line-item rows per second. Targets: ``ratio`` (pipeline ÷ baseline) ≥ 3, ``copy_share`` (pipeline ÷ bare
COPY) ≥ 0.5, ``validate_s`` ≤ 10. The pipeline writes far more than the bare COPY does (WAL-logged, indexed tables,
invoices, outbox payloads and document states besides the line items), so ``copy_share`` is bounded well below 1.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import time
import uuid
from datetime import date, timedelta
from typing import Any

from invoiceflow.bench import print_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--invoices", type=int, default=100_000, help="invoices to generate")
    parser.add_argument("--lines", type=int, default=5, help="average line items per invoice")
    parser.add_argument("--url", required=True, help="PostgreSQL SQLAlchemy URL (postgresql+psycopg://...)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="invoices per load_batch transaction")
    parser.add_argument(
        "--vendors", type=int, default=500, help="distinct vendors (all in the vendors master)"
    )
    parser.add_argument("--seed", type=int, default=5)


def generate(n: int, lines: int, vendors: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """Merged invoices as the extractor returns them, keyed by a synthetic document hash; all valid."""
    rng = random.Random(seed)
    start = date.today() - timedelta(days=365)
    out = {}
    for i in range(n):
        sha = hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest()
        items = []
        for k in range(rng.randint(max(1, lines - 2), lines + 2)):
            qty = rng.randint(1, 20)
            price = rng.randint(100, 50_000) / 100
            items.append(
                {
                    "description": f"Item {k} of order {i}",
                    "quantity": qty,
                    "unit_price": price,
                    "line_total": round(qty * price, 2),
                }
            )
        subtotal = round(sum(li["line_total"] for li in items), 2)
        tax = round(subtotal * 0.19, 2)
        day = start + timedelta(days=rng.randint(0, 360))
        out[sha] = {
            "invoice_number": f"B{seed}-{i:08d}",
            "vendor_name": vendors[i % len(vendors)],
            "invoice_date": day.isoformat(),
            "due_date": (day + timedelta(days=30)).isoformat(),
            "currency": "EUR",
            "subtotal": subtotal,
            "tax_amount": tax,
            "total_amount": round(subtotal + tax, 2),
            "purchase_order_number": f"PO-{i}",
            "line_items": items,
        }
    return out


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import sqlalchemy as sa

    from invoiceflow import validation, vendors, warehouse

    url = sa.make_url(args.url)
    if not url.drivername.startswith("postgresql"):
        raise SystemExit("bench load needs a PostgreSQL URL (the fast path is COPY)")
    if url.drivername != "postgresql+psycopg":
        url = url.set(drivername="postgresql+psycopg")
    schema = f"bench_load_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        return _run(args, engine, schema, pd, sa, validation, vendors, warehouse)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _run(args, engine, schema, pd, sa, validation, vendors, warehouse) -> int:
    warehouse.upgrade(engine)
    names = [f"Bench Supplier {k:04d} GmbH" for k in range(args.vendors)]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO vendors (name) VALUES (:name)"), [{"name": n} for n in names])
    print(
        f"schema {schema}: generating {args.invoices} invoices with about {args.lines} line items", flush=True
    )
    merged = generate(args.invoices, args.lines, names, args.seed)
    with engine.begin() as conn:
        warehouse._copy(
            conn,
            "documents",
            ("sha256", "file_name", "first_path", "size_bytes", "content_type", "status"),
            (
                (sha, f"{sha[:12]}.pdf", f"bench/{sha}.pdf", 1000, "pdf", warehouse.EXTRACTED)
                for sha in merged
            ),
        )

    t0 = time.perf_counter()
    validated = validation.validate(merged, validation.load_context(engine))
    validate_s = time.perf_counter() - t0
    counts = {"auto_approved": 0, "needs_review": 0, "blocked": 0}
    for inv in validated:
        counts[inv.review_status] += 1
    line_rows = sum(len(inv.line_items) for inv in validated)
    print(f"validate {len(validated)} invoices: {validate_s:.2f}s {counts}", flush=True)

    # Each timed section starts from a collected heap: validation pauses the collector while it builds millions of
    # objects, and the pass over them would otherwise land in whichever section allocates next.
    gc.collect()
    t0 = time.perf_counter()
    loaded = _load_in_batches(warehouse, engine, validated, args.batch_size, "bench")
    pipeline_s = time.perf_counter() - t0
    rows_per_s = line_rows / pipeline_s
    print(f"pipeline load_batch: {pipeline_s:.2f}s {loaded} -> {rows_per_s:,.0f} line rows/s", flush=True)

    headers = pd.DataFrame(
        [
            {"document_sha256": inv.document_sha256, **inv.header, "review_status": inv.review_status}
            for inv in validated
        ]
    )
    lines = pd.DataFrame(
        [
            {"document_sha256": inv.document_sha256, "line_number": n, **li}
            for inv in validated
            for n, li in enumerate(inv.line_items, start=1)
        ]
    )
    gc.collect()
    t0 = time.perf_counter()
    headers.to_sql("bench_to_sql_invoices", engine)
    lines.to_sql("bench_to_sql_line_items", engine)
    baseline_s = time.perf_counter() - t0
    baseline_rows_per_s = line_rows / baseline_s
    print(
        f"pandas to_sql (default arguments): {baseline_s:.2f}s -> {baseline_rows_per_s:,.0f} line rows/s",
        flush=True,
    )

    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE UNLOGGED TABLE bench_copy_line_items (document_sha256 TEXT, line_number INTEGER, "
            "description TEXT, quantity NUMERIC(18, 4), unit_price NUMERIC(18, 4), line_total NUMERIC(18, 2))"
        )
    gc.collect()
    t0 = time.perf_counter()
    with engine.begin() as conn:
        warehouse._copy(
            conn,
            "bench_copy_line_items",
            ("document_sha256", "line_number", "description", "quantity", "unit_price", "line_total"),
            # the same rows from the same in-memory invoices the pipeline starts from
            (
                (
                    inv.document_sha256,
                    n,
                    li["description"],
                    li["quantity"],
                    li["unit_price"],
                    li["line_total"],
                )
                for inv in validated
                for n, li in enumerate(inv.line_items, start=1)
            ),
        )
    copy_s = time.perf_counter() - t0
    copy_rows_per_s = line_rows / copy_s
    print(
        f"bare COPY into an unlogged, unindexed table: {copy_s:.2f}s -> {copy_rows_per_s:,.0f} rows/s",
        flush=True,
    )

    gc.collect()
    t0 = time.perf_counter()
    _load_in_batches(warehouse, engine, validated, args.batch_size, "bench-reload")
    reload_s = time.perf_counter() - t0
    print(
        f"pipeline reload (staging + INSERT … ON CONFLICT merges): {reload_s:.2f}s -> "
        f"{line_rows / reload_s:,.0f} line rows/s",
        flush=True,
    )

    print_result(
        {
            "invoices": len(validated),
            "line_items": line_rows,
            "batch_size": args.batch_size,
            "validate_s": round(validate_s, 2),
            "pipeline_s": round(pipeline_s, 2),
            "rows_per_s": round(rows_per_s),
            "baseline_s": round(baseline_s, 2),
            "baseline_rows_per_s": round(baseline_rows_per_s),
            "ratio": round(rows_per_s / baseline_rows_per_s, 2),
            "copy_s": round(copy_s, 2),
            "copy_rows_per_s": round(copy_rows_per_s),
            "copy_share": round(rows_per_s / copy_rows_per_s, 2),
            "outbox": loaded["outbox"],
            "reload_s": round(reload_s, 2),
            "reload_rows_per_s": round(line_rows / reload_s),
        }
    )
    return 0


def _load_in_batches(warehouse, engine, validated, batch_size: int, prefix: str) -> dict[str, int]:
    """``load_batch`` over ``validated`` in batches, as the ingest DAG's mapped tasks do; the summed counts."""
    loaded = {"invoices": 0, "line_items": 0, "outbox": 0}
    for start in range(0, len(validated), batch_size):
        result = warehouse.load_batch(engine, f"{prefix}-{start}", validated[start : start + batch_size])
        for key in loaded:
            loaded[key] += result[key]
    return loaded
