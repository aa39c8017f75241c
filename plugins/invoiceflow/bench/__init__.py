"""``invoiceflow bench ...``: benchmarks are commands that print figures and end with one JSON line.

Each module here (``extract``, ``load``, ``sync``) has ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

#: Benchmark name -> (module, one-line help). Modules keep heavy imports inside ``run``.
BENCHMARKS = {
    "extract": ("invoiceflow.bench.extract", "deferrable LeapOCR extraction against the offline server"),
    "sync": ("invoiceflow.bench.sync", "ERP sync relay against the sandbox with an ERP's rate limits"),
    "load": (
        "invoiceflow.bench.load",
        "warehouse load on PostgreSQL: pipeline vs pandas to_sql vs bare COPY",
    ),
}


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (they print figures and end with one JSON line)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        parser = bench_sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def print_result(result: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object (other tools parse it)."""
    print(json.dumps(result, sort_keys=True))


__all__ = ["BENCHMARKS", "add_bench_parser", "print_result"]
