"""Breaking-point search: step the load up until the SLA breaks, then check recovery.

The step runner is injected (`run_step(level) -> LoadResult`), so this module only decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pytest_stressguard.core.metrics import Metric
from pytest_stressguard.core.records import StressDict, StressStepDict
from pytest_stressguard.core.result import LoadResult
from pytest_stressguard.core.thresholds import Threshold, ThresholdResult, evaluate, is_percentile

STRESS_METRICS: tuple[Metric, ...] = (
    Metric("capacity", "number", "the last load step (users, or a rate /s) that held the SLA",
           higher_is_better=True, also=("rate",)),
)
# Thresholds on these are decided once, on the whole search, not per step.
FINAL_METRICS = frozenset(m.name for m in STRESS_METRICS)


@dataclass
class StressStep:
    level: float
    result: LoadResult
    checks: list[ThresholdResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self, kind: str) -> StressStepDict:
        r = self.result
        lat = r.latency.percentiles_ms() if r.latency.count else {}
        step: StressStepDict = {
            "iterations": r.iterations,
            "rps": r.rps,
            "p50_ms": lat.get("p50"),
            "p95_ms": lat.get("p95"),
            "p99_ms": lat.get("p99"),
            "error_rate": r.error_rate,
            "errors": r.errors,
            "errors_by_kind": dict(r.errors_by_kind),
            "saturated": r.saturation.saturated,
            "ok": self.ok,
            "failed": [c.describe() for c in self.checks if not c.ok],
        }
        if kind == "users":
            step["users"] = self.level
        else:
            step["rate"] = self.level
        return step


@dataclass
class StressResult:
    kind: str  # "users" or "rate"
    steps: list[StressStep] = field(default_factory=list)
    capacity: float | None = None
    broke_at: float | None = None
    recovery: StressStep | None = None
    interrupted: bool = False

    @property
    def recovered(self) -> bool | None:
        return None if self.recovery is None else self.recovery.ok

    def at_capacity(self) -> StressStep | None:
        for step in self.steps:
            if step.level == self.capacity:
                return step
        return None

    def metrics(self) -> dict[str, float | None]:
        return {"capacity": self.capacity}

    def merged(self) -> LoadResult | None:
        """All measured steps as one result (recovery excluded)."""
        total: LoadResult | None = None
        for step in self.steps:
            if total is None:
                total = LoadResult.from_dict(step.result.to_dict())
            else:
                total.merge(step.result)
        return total

    def to_dict(self) -> StressDict:
        return {
            "kind": self.kind,
            "capacity": self.capacity,
            "broke_at": self.broke_at,
            "steps": [s.to_dict(self.kind) for s in self.steps],
            "recovery": None if self.recovery is None else self.recovery.to_dict(self.kind),
            "recovered": self.recovered,
            "interrupted": self.interrupted,
        }


def levels(start: float, step: float, maximum: float) -> list[float]:
    out: list[float] = []
    level = start
    while level <= maximum + 1e-9 and len(out) < 1000:
        out.append(level)
        level += step
    return out


def search(
    run_step: Callable[[float], LoadResult],
    steps: Sequence[float],
    thresholds: Sequence[Threshold],
    *,
    kind: str = "users",
    recovery: bool = True,
) -> StressResult:
    per_step = [t for t in thresholds if t.metric not in FINAL_METRICS]
    out = StressResult(kind=kind)
    for level in steps:
        result = run_step(level)
        step = _step(level, result, per_step)
        out.steps.append(step)
        if getattr(result, "interrupted", False):
            out.interrupted = True
            return out
        if not step.ok:
            out.broke_at = level
            break
        out.capacity = level
    if recovery and steps:
        result = run_step(steps[0])
        out.recovery = _step(steps[0], result, per_step)
    return out


def _step(level: float, result: LoadResult, thresholds: Sequence[Threshold]) -> StressStep:
    checks = evaluate(thresholds, result_metrics(result, thresholds), endpoint_metrics(result))
    return StressStep(level, result, checks)


def final_checks(result: StressResult, thresholds: Sequence[Threshold]) -> list[ThresholdResult]:
    finals = [t for t in thresholds if t.metric in FINAL_METRICS]
    return evaluate(finals, result.metrics())


def result_metrics(result: LoadResult, thresholds: Sequence[Threshold]) -> dict[str, float | None]:
    """The result's metrics, plus any other percentile a threshold asks for (p75, p99.99...)."""
    metrics = result.metrics()
    for t in thresholds:
        if t.metric not in metrics and is_percentile(t.metric):
            metrics[t.metric] = result.percentile_metric(t.metric)
    return metrics


def endpoint_metrics(result: LoadResult) -> dict[str, dict[str, float | None]]:
    return result.endpoint_metrics()
