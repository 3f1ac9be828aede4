"""Per-test trends across repetitions (pytest-repeat `test_x[3-100]` grouped as `test_x`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pytest_stressguard.store import SessionStore, TrendPoint, split_repetition


def grouped(store: SessionStore) -> dict[str, list[tuple[int, TrendPoint]]]:
    groups: dict[str, list[tuple[int, TrendPoint]]] = defaultdict(list)
    for point in store.trends:
        base, index = split_repetition(point.nodeid, store.repeat_count)
        if index is not None:
            groups[base].append((index, point))
    for points in groups.values():
        points.sort(key=lambda p: p[0])
    return {base: points for base, points in groups.items() if len(points) > 1}


def trend_rows(store: SessionStore) -> list[dict[str, Any]]:
    groups = grouped(store)
    if not groups:
        return []
    from pytest_stressguard.core.trends import RepetitionTrend

    rows = []
    for base, points in sorted(groups.items()):
        runs = [p for _, p in points]
        trend = RepetitionTrend.from_runs([p.duration_s for p in runs], [p.rss_delta for p in runs])
        failures = [(i, p) for i, p in points if p.outcome == "failed"]
        rows.append({
            "test": base,
            "runs": len(runs),
            "passed": sum(1 for p in runs if p.outcome == "passed"),
            "first_failure": failures[0][0] if failures else None,
            "memory_per_run_bytes": trend.memory_per_run,
            "memory_grows": trend.memory_grows,
            "duration_change": trend.duration_change,
            "duration_drifts": trend.duration_drifts,
            "durations_s": [p.duration_s for p in runs],
            "rss_after": [p.rss_after for p in runs],
        })
    return rows
