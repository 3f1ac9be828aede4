"""Session-level metrics (``--stressguard-gate``): declared and computed here, from plain data."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from .metrics import Metric

SESSION_METRICS: tuple[Metric, ...] = (
    Metric("test_duration_p95", "time", "p95 of the tests' call durations", scope="session"),
    Metric("test_duration_max", "time", "the longest test call", scope="session"),
    Metric("tests_per_s", "rate", "tests finished per second of the session",
           higher_is_better=True, scope="session", also=("number",)),
    Metric("peak_rss", "size", "the largest peak RSS of the test processes (each xdist worker)",
           scope="session"),
    Metric("leak", "size_rate", "the steepest memory slope of a test process across the session "
           "(robust, second half)", scope="session"),
    Metric("failure_rate", "ratio", "failed tests / tests", scope="session"),
)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def session_metrics(durations: Sequence[float], outcomes: Sequence[str], elapsed: float,
                    peaks: Sequence[int], series: Sequence[Sequence[tuple[float, int]]],
                    wanted: Collection[str] = ()) -> dict[str, float | None]:
    """``series``: memory (seconds since start, RSS) of each test process; its leak is a robust
    slope, computed only when a gate asks for ``leak``."""
    failed = sum(1 for o in outcomes if o == "failed")
    leaks = []
    for points in series if "leak" in wanted else ():
        if len(points) >= 8:
            from .trends import session_leak_rate

            rate = session_leak_rate([(t, float(rss)) for t, rss in points])
            if rate is not None:
                leaks.append(rate)
    return {
        "test_duration_p95": percentile(durations, 95),
        "test_duration_max": max(durations) if durations else None,
        "tests_per_s": len(outcomes) / elapsed if elapsed > 0 else None,
        "peak_rss": float(max(peaks)) if peaks else None,
        "leak": max(leaks) if leaks else None,
        "failure_rate": failed / len(outcomes) if outcomes else None,
    }
