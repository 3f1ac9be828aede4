"""The session result, decided in one place: session gates and baseline regressions."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_stressguard.core.thresholds import ThresholdResult, evaluate
from pytest_stressguard.settings import Settings
from pytest_stressguard.store import SessionStore


@dataclass
class SessionOutcome:
    metrics: dict[str, float | None] = field(default_factory=dict)
    gates: list[ThresholdResult] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return any(not g.ok for g in self.gates) or bool(self.regressions) or bool(self.problems)

    def reasons(self) -> list[str]:
        out = [f"gate {g.describe()}" for g in self.gates if not g.ok]
        out += [f"regression {r}" for r in self.regressions]
        out += self.problems
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "gates": [g.to_dict() for g in self.gates],
            "regressions": list(self.regressions),
            "comparison": self.comparison,
            "problems": list(self.problems),
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def session_metrics(store: SessionStore, elapsed: float,
                    wanted: frozenset[str] = frozenset()) -> dict[str, float | None]:
    durations = [p.duration_s for p in store.trends]
    outcomes = list(store.outcomes.values())
    failed = sum(1 for o in outcomes if o == "failed")
    peak = max((p.peak_rss for p in store.processes.values()), default=None)
    leaks = []
    # The session leak is a robust slope over every test: computed only when a gate asks.
    for proc in store.processes.values() if "leak" in wanted else ():
        estimate = process_leak(proc.series)
        if estimate is not None:
            leaks.append(estimate)
    return {
        "test_duration_p95": _percentile(durations, 95),
        "test_duration_max": max(durations) if durations else None,
        "tests_per_s": len(outcomes) / elapsed if elapsed > 0 else None,
        "peak_rss": float(peak) if peak is not None else None,
        "leak": max(leaks) if leaks else None,
        "failure_rate": failed / len(outcomes) if outcomes else None,
    }


def process_leak(series: list[tuple[float, int]]) -> float | None:
    """Bytes per hour a test process grew across the session (robust slope, second half)."""
    if len(series) < 8:
        return None
    from pytest_stressguard.core.trends import session_leak_rate

    return session_leak_rate(series)


def decide_session(store: SessionStore, settings: Settings, config: pytest.Config) -> SessionOutcome:
    elapsed = time.time() - store.started
    outcome = SessionOutcome(duration_s=elapsed)
    wanted = frozenset(g.metric for g in settings.gates)
    outcome.metrics = session_metrics(store, elapsed, wanted)
    outcome.gates = evaluate(settings.gates, outcome.metrics)
    if settings.compare:
        from pytest_stressguard.report import baselines

        try:
            outcome.comparison, outcome.regressions = baselines.compare(
                config, settings, store.records)
        except baselines.BaselineError as exc:
            outcome.problems.append(str(exc))
    return outcome
