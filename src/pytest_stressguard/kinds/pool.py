"""The pool figures db_pool_probe adds to a test: a kind without a marker (a fixture's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from pytest_stressguard.core.records import Record
    from pytest_stressguard.kinds.base import CsvRows


class PoolKind:
    name: str = "pool"
    baseline_metrics: tuple[str, ...] = ("pool_wait_p95",)
    columns = ("pool_wait_p95", "pool_waiting_max", "pool_timeouts", "pool_errors",
               "dirty_returns", "leaked_connections", "serialization_failures", "deadlocks")

    def summary(self, records: Sequence[Record]) -> list[str]:
        from pytest_stressguard.report.table import metric_cell, short, table

        rows = [["db pool", *(c.removeprefix("pool_").replace("_", " ") for c in self.columns)]]
        for r in records:
            m = r["pool"].get("metrics", {})
            rows.append([short(r["nodeid"]),
                         *(metric_cell(c, m.get(c)) for c in self.columns)])
        return table(rows, set(range(1, len(self.columns) + 1)))

    def csv_rows(self, record: Record) -> CsvRows:
        rows: list[dict[str, object]] = [{"nodeid": record["nodeid"], **row}
                                         for row in record["pool"].get("timeline", [])]
        return {"pool_timeline": rows} if rows else {}


def pool_record(report: Any) -> Record:
    """The entry of a test's pool figures (joins its load/stress/soak entry when it has one)."""
    pool = report.to_dict()
    return cast("Record", {"kind": "pool", "pool": pool, "metrics": dict(pool["metrics"]),
                            "thresholds": []})


KIND = PoolKind()
