"""The session result, decided in one place: session gates and baseline regressions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_stressguard.core.session_metrics import session_metrics
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


def decide_session(store: SessionStore, settings: Settings, config: pytest.Config) -> SessionOutcome:
    elapsed = time.time() - store.started
    outcome = SessionOutcome(duration_s=elapsed)
    wanted = frozenset(g.metric for g in settings.gates)
    outcome.metrics = session_metrics(
        [p.duration_s for p in store.trends], list(store.outcomes.values()), elapsed,
        [p.peak_rss for p in store.processes.values()],
        [p.series for p in store.processes.values()], wanted)
    outcome.gates = evaluate(settings.gates, outcome.metrics)
    if settings.compare:
        from pytest_stressguard.report import baselines

        try:
            outcome.comparison, outcome.regressions = baselines.compare(
                config, settings, store.records)
        except baselines.BaselineError as exc:
            outcome.problems.append(str(exc))
    return outcome
