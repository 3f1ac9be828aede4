"""Per-test trends across repetitions (pytest-repeat `test_x[3-100]` grouped as `test_x`, and
the rounds of @concurrent): pass rate, first failure, failure kinds, memory and duration trends."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pytest_stressguard.core.repetitions import (
    RepetitionRecord,
    aggregate,
    records_from_rounds,
    split_repeat_id,
)
from pytest_stressguard.store import SessionStore, TrendPoint

# Under pytest a clean test's RSS still creeps by a few KB per run (measured: 2-3 KB/run for a
# test that starts 8 threads, which plateaus outside pytest); below this it is not called a leak.
MIN_GROWTH_PER_RUN = 16 * 1024


def repetition_of(nodeid: str, count: int) -> tuple[str, int] | None:
    """(base, index) when pytest-repeat made this id; an id like [1-1000] without --count is an
    ordinary parameter."""
    place = split_repeat_id(nodeid)
    if place is None or count < 2 or place.total != count:
        return None
    return place.base, place.index


def trend_rows(store: SessionStore) -> list[dict[str, Any]]:
    points: dict[str, list[tuple[int, TrendPoint]]] = defaultdict(list)
    records: list[RepetitionRecord] = []
    for point in store.trends:
        place = repetition_of(point.nodeid, store.repeat_count)
        if place is None:
            continue
        base, index = place
        points[base].append((index, point))
        outcome = store.outcomes.get(point.nodeid, point.outcome)
        kind = store.failure_kinds.get(point.nodeid) if outcome == "failed" else None
        records.append(RepetitionRecord(point.nodeid, outcome, kind, base, index,
                                        store.repeat_count))
    for record in (r for r in store.records if r.get("kind") == "concurrent"):
        if int(record["concurrent"].get("rounds", 1)) > 1 and store.repeat_count < 2:
            records += records_from_rounds(record["nodeid"], record["concurrent"])
    stats = aggregate(records, min_runs=2)
    if not stats:
        return []
    from pytest_stressguard.core.trends import RepetitionTrend

    rows = []
    for s in stats:
        runs = [p for _, p in sorted(points.get(s.base, []), key=lambda ip: ip[0])]
        row: dict[str, Any] = {
            "test": s.base,
            "runs": s.runs,
            "passed": s.passed,
            "failed": s.failed,
            "pass_rate": s.pass_rate,
            "first_failure": s.first_failure,
            "failure_kinds": dict(s.failure_kinds),
        }
        if len(runs) > 1 and any(p.worker for p in runs):  # memory was tracked
            trend = RepetitionTrend.from_runs([p.duration_s for p in runs],
                                              [p.rss_delta for p in runs],
                                              min_growth=max(256 * 1024, MIN_GROWTH_PER_RUN * len(runs)))
            row.update({
                "memory_per_run_bytes": trend.memory_per_run,
                "memory_grows": trend.memory_grows,
                "duration_change": trend.duration_change,
                "duration_drifts": trend.duration_drifts,
                "durations_s": [p.duration_s for p in runs],
                "rss_after": [p.rss_after for p in runs],
            })
        rows.append(row)
    return rows
