"""@pytest.mark.load: the test body is one iteration of a virtual user, under load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from pytest_stressguard.markers import (
    Duration,
    MarkerError,
    check_duration,
    check_positive_int,
    check_rate,
    check_stages,
    check_thresholds,
)

if TYPE_CHECKING:
    import pytest

    from pytest_stressguard.core.loadspec import LoadSpec, Stage
    from pytest_stressguard.core.records import Record
    from pytest_stressguard.core.result import LoadResult
    from pytest_stressguard.core.thresholds import Threshold
    from pytest_stressguard.kinds.base import CsvRows, RunContext
    from pytest_stressguard.verdict import Verdict


@dataclass(frozen=True)
class LoadMark:
    users: int
    duration: float | None
    iterations: int | None
    ramp_up: float
    rate: float | None
    max_users: int | None
    stages: tuple[Stage, ...]
    think_time: float
    warmup: float
    sla: tuple[Threshold, ...]

    def scaled(self, factor: float) -> LoadMark:
        """Every 'how long' times --stressguard-time-scale (not think time: that is the user's
        behaviour, scaling it would change the load)."""
        if factor == 1.0:
            return self
        return replace(
            self,
            duration=None if self.duration is None else self.duration * factor,
            ramp_up=self.ramp_up * factor,
            warmup=self.warmup * factor,
            stages=tuple(replace(s, duration=s.duration * factor) for s in self.stages),
        )

    def to_load_spec(self) -> LoadSpec:
        from pytest_stressguard.core.loadspec import LoadSpec

        return LoadSpec(users=self.users, duration=self.duration, iterations=self.iterations,
                        ramp_up=self.ramp_up, rate=self.rate, max_users=self.max_users,
                        stages=self.stages, think_time=self.think_time, warmup=self.warmup)


def load(
    users: int = 1,
    *,
    duration: Duration | None = None,
    iterations: int | None = None,
    ramp_up: Duration = "0s",
    rate: str | float | None = None,
    max_users: int | None = None,
    stages: Sequence[tuple[Duration, int | str]] | None = None,
    think_time: Duration = "0s",
    warmup: Duration = "0s",
    sla: Sequence[str] = (),
) -> LoadMark:
    """Run the test body as one iteration of a virtual user, under load; gate on `sla`."""
    users = check_positive_int("users", users)
    dur = None if duration is None else check_duration("duration", duration, allow_zero=False)
    iters = None if iterations is None else check_positive_int("iterations", iterations)
    stage_specs = () if stages is None else check_stages(stages)
    if dur is not None and iters is not None:
        raise MarkerError("give duration= or iterations=, not both")
    if stage_specs and (dur is not None or iters is not None or rate is not None):
        raise MarkerError("stages= sets its own duration and load; drop duration/iterations/rate")
    if dur is None and iters is None and not stage_specs:
        raise MarkerError("needs duration= (e.g. '30s'), iterations= or stages=")
    rate_value = None if rate is None else check_rate("rate", rate)
    cap = None if max_users is None else check_positive_int("max_users", max_users)
    if cap is not None and rate_value is None and not (stage_specs and stage_specs[0].kind == "rate"):
        raise MarkerError("max_users= only applies to the open model (rate= or rate stages)")
    mark = LoadMark(
        users=users, duration=dur, iterations=iters,
        ramp_up=check_duration("ramp_up", ramp_up), rate=rate_value, max_users=cap,
        stages=stage_specs, think_time=check_duration("think_time", think_time),
        warmup=check_duration("warmup", warmup), sla=check_thresholds("sla", sla),
    )
    try:  # the engine's own rules (e.g. think_time has no meaning with rate=), checked now
        mark.to_load_spec()
    except ValueError as exc:
        raise MarkerError(str(exc).removeprefix("invalid load spec: ")) from None
    return mark


def load_verdict(result: LoadResult, sla: Sequence[Threshold]) -> Verdict:
    from pytest_stressguard.core.stress import endpoint_metrics, result_metrics
    from pytest_stressguard.core.thresholds import evaluate
    from pytest_stressguard.kinds.base import error_notes, evidence_problems
    from pytest_stressguard.verdict import Verdict

    checks = evaluate(sla, result_metrics(result, sla), endpoint_metrics(result))
    # saturation is among the warnings (said once: the engine words it)
    notes = (*(f"WARNING {w}" for w in result.warnings), *error_notes(result.errors_by_kind))
    return Verdict("load", tuple(checks), evidence_problems(result), notes=notes)


def load_record(result: LoadResult, verdict: Verdict | None) -> Record:
    """A load entry: the run's figures, its metrics, the verdict's thresholds."""
    record = cast("Record", {"kind": "load", **result.to_dict()})
    record["metrics"] = result.metrics()
    record["thresholds"] = [] if verdict is None else verdict.to_list()
    record["problems"] = [] if verdict is None else list(verdict.problems)
    return record


class LoadKind:
    name: str = "load"
    marker = staticmethod(load)
    baseline_metrics: tuple[str, ...] = ("p95", "rps")
    #: The summary table's columns: (declared metric, header), each cell formatted by the
    #: metric's dimension.
    columns = (("iterations", "iters"), ("rps", "rps"), ("ok_rps", "ok rps"), ("p50", "p50"),
               ("p95", "p95"), ("p99", "p99"), ("max", "max"), ("error_rate", "errors"))

    def run(self, item: pytest.Function, spec: LoadMark, ctx: RunContext) -> tuple[Record, Verdict]:
        from pytest_stressguard.bodies import run_load
        from pytest_stressguard.core.result import LoadInterrupted
        from pytest_stressguard.kinds.base import Interrupted, effective_sla

        sla = effective_sla(spec.sla, ctx.settings)
        try:
            result = run_load(item, spec.to_load_spec(), ctx.progress)
        except LoadInterrupted as exc:
            verdict = load_verdict(exc.result, sla)
            raise Interrupted(load_record(exc.result, verdict), verdict) from None
        verdict = load_verdict(result, sla)
        return load_record(result, verdict), verdict

    def summary(self, records: Sequence[Record]) -> list[str]:
        from pytest_stressguard.report.table import metric_cell, short, table, verdict_text

        rows = [["load", *(header for _, header in self.columns), "verdict"]]
        for r in records:
            metrics = r.get("metrics", {})
            verdict = verdict_text(r)
            if r.get("saturated"):
                verdict += "  [generator saturated]"
            if r.get("dropped"):
                verdict += f"  [{r.get('dropped')} dropped]"
            rows.append([short(r["nodeid"]),
                         *(metric_cell(m, metrics.get(m)) for m, _ in self.columns), verdict])
        return table(rows, set(range(1, len(self.columns) + 1)))

    def csv_rows(self, record: Record) -> CsvRows:
        from pytest_stressguard.kinds.base import timeline_rows

        return timeline_rows(record)


KIND = LoadKind()
