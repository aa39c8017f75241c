"""Add up the per-batch counts that mapped tasks return."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence


def sum_counts(results: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Totals per key over the results of a mapped task.

    Indexes up to ``len()`` instead of iterating: iterating Airflow's lazy XCom sequence probes one offset past
    the end, which the task SDK logs as an (harmless but alarming) ``XCom not found`` error.
    """
    total: Counter[str] = Counter()
    for index in range(len(results)):
        total.update(results[index])
    return dict(total)
