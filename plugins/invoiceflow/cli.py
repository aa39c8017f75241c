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
