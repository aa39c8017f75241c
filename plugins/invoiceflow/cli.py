"""``invoiceflow`` command line: the offline servers, warehouse migrations and the demo.

Heavy imports (Airflow, FastAPI) happen inside the commands, so ``invoiceflow --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from invoiceflow import config


def _leapocr_server(args: argparse.Namespace) -> int:
    from invoiceflow.leapocr.server import run_from_args

    return run_from_args(args)


def _erp_sandbox(args: argparse.Namespace) -> int:
    from invoiceflow.erp.sandbox import run_from_args

    args.db = args.db or config.state_dir() / "erp_sandbox.db"
    run_from_args(args)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from invoiceflow import warehouse

    url = args.url or config.embedded_warehouse_url()
    applied = warehouse.upgrade(warehouse.engine_for(url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'already up to date'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from invoiceflow.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoiceflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from invoiceflow.erp import sandbox
    from invoiceflow.leapocr import server

    ocr = sub.add_parser(
        "leapocr-server",
        help="serve the LeapOCR API offline (the SDK works against it)",
        description=server.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server.add_arguments(ocr)
    ocr.set_defaults(func=_leapocr_server)

    erp = sub.add_parser("erp-sandbox", help="run the ERP sandbox that stores bills in a SQLite ledger")
    sandbox.add_arguments(erp)
    erp.set_defaults(func=_erp_sandbox, db=None)

    db = sub.add_parser("db", help="warehouse schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser(
        "upgrade", help="apply pending migrations from sql/migrations (safe to re-run)"
    )
    upgrade.add_argument("--url", help="SQLAlchemy URL (default: the embedded SQLite warehouse)")
    upgrade.set_defaults(func=_db_upgrade)

    demo = sub.add_parser("demo", help="run the whole pipeline on the samples, fully offline")
    demo.set_defaults(func=_demo)

    from invoiceflow.extraction import commands as extraction_commands

    extract = sub.add_parser("extract", help="extract invoice fields from files to JSON, offline")
    extraction_commands.add_extract_arguments(extract)
    extract.set_defaults(func=extraction_commands.run_extract)

    def _review(args: argparse.Namespace) -> int:
        import getpass
        import json as _json

        from invoiceflow import review as rv
        from invoiceflow import warehouse as wh

        engine = wh.engine_for(args.url or config.embedded_warehouse_url())
        by = getattr(args, "by", None) or getpass.getuser()
        try:
            if args.review_command == "list":
                for r in rv.pending(engine, args.limit):
                    print(
                        f"{r['document_sha256'][:12]}  {r['review_status']:<12} {r['vendor_name'] or '-'} | "
                        f"{r['invoice_number'] or '-'} | {r['total_amount']} {r['currency'] or ''} | {r['review_issues']}"
                    )
                return 0
            if args.review_command == "show":
                print(_json.dumps(rv.show(engine, args.id), indent=2, default=str))
                return 0
            if args.review_command == "approve":
                changes = dict(kv.split("=", 1) for kv in args.set or [])
                if changes:
                    rv.correct(engine, args.id, changes, by, args.comment)
                print(_json.dumps(rv.approve(engine, args.id, by, args.comment), default=str))
                return 0
            print(_json.dumps(rv.reject(engine, args.id, by, args.reason), default=str))
            return 0
        except rv.ReviewError as exc:
            print(f"error: {exc}")
            return 2

    rev = sub.add_parser("review", help="invoices waiting for a person: list, show, approve, reject")
    rev_sub = rev.add_subparsers(dest="review_command", required=True)
    for name, text in [
        ("list", "invoices waiting for review"),
        ("show", "one invoice with issues and versions"),
        ("approve", "approve (optionally correct fields first): enters the ERP outbox"),
        ("reject", "reject: never sent to the ERP"),
    ]:
        p = rev_sub.add_parser(name, help=text)
        p.add_argument("--url", help="SQLAlchemy URL (default: the embedded SQLite warehouse)")
        p.set_defaults(func=_review)
        if name == "list":
            p.add_argument("--limit", type=int, default=100)
            continue
        p.add_argument("id", help="document hash or an unambiguous prefix")
        if name in {"approve", "reject"}:
            p.add_argument("--by", help="reviewer (default: the login name)")
        if name == "approve":
            p.add_argument(
                "--set", action="append", metavar="FIELD=VALUE", help="correct a field (repeatable)"
            )
            p.add_argument("--comment")
        if name == "reject":
            p.add_argument("--reason", required=True)

    from invoiceflow.bench import add_bench_parser

    add_bench_parser(sub)

    evaluate = sub.add_parser("eval", help="score the offline engine on documents with ground-truth JSON")
    extraction_commands.add_eval_arguments(evaluate)
    evaluate.set_defaults(func=extraction_commands.run_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
