"""@pytest.mark.concurrent: the body in N threads (or tasks) released together, for R rounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pytest_stressguard.markers import Duration, check_bool, check_duration, check_positive_int

if TYPE_CHECKING:
    import pytest

    from pytest_stressguard.core.records import Record
    from pytest_stressguard.kinds.base import CsvRows, RunContext
    from pytest_stressguard.verdict import Verdict


@dataclass(frozen=True)
class ConcurrentMark:
    workers: int
    rounds: int
    amplify: bool
    timeout: float

    def scaled(self, factor: float) -> ConcurrentMark:
        return self  # a race is about interleaving, not time: nothing to scale


def concurrent(
    workers: int = 8,
    *,
    rounds: int = 1,
    amplify: bool = True,
    timeout: Duration = "30s",
) -> ConcurrentMark:
    """Run the body in `workers` threads (tasks for async bodies) released together by a barrier,
    `rounds` times; all must pass. `amplify` forces thread switches inside your code."""
    return ConcurrentMark(
        workers=check_positive_int("workers", workers),
        rounds=check_positive_int("rounds", rounds),
        amplify=check_bool("amplify", amplify),
        timeout=check_duration("timeout", timeout, allow_zero=False),
    )


class ConcurrentKind:
    name: str = "concurrent"
    marker = staticmethod(concurrent)
    baseline_metrics: tuple[str, ...] = ()

    def run(self, item: pytest.Function, spec: ConcurrentMark,
            ctx: RunContext) -> tuple[Record, Verdict]:
        from pytest_stressguard import bodies
        from pytest_stressguard.core import race
        from pytest_stressguard.verdict import Verdict

        core_spec = race.ConcurrentSpec(workers=spec.workers, rounds=spec.rounds,
                                        amplify=spec.amplify, timeout=spec.timeout,
                                        roots=(str(item.config.rootpath),))
        if bodies.is_async(item):
            result = bodies.run_coroutine(
                item, race.run_concurrent_async(bodies.async_body(item), core_spec))
        else:
            result = race.run_concurrent(bodies.sync_body(item), core_spec)
        problems = () if result.ok else (result.headline(),)
        verdict = Verdict("concurrent", (), problems,
                          notes=tuple(f"WARNING {w}" for w in result.warnings),
                          detail="" if result.ok else result.summary())
        record: Record = {"kind": "concurrent", "duration_s": result.duration_s,
                          "concurrent": cast(Any, result.to_dict()), "thresholds": [],
                          "problems": list(problems), "metrics": {}}
        return record, verdict

    def summary(self, records: Sequence[Record]) -> list[str]:
        from pytest_stressguard.report.table import short, table, verdict_text

        rows = [["concurrent", "workers", "rounds", "failures", "verdict"]]
        for r in records:
            c = r["concurrent"]
            rows.append([short(r["nodeid"]), str(c.get("workers", "-")), str(c.get("rounds", "-")),
                         str(len(c.get("failures", []))), verdict_text(r)])
        return table(rows, {1, 2, 3})

    def csv_rows(self, record: Record) -> CsvRows:
        return {}


KIND = ConcurrentKind()
