"""@pytest.mark.stress: a breaking-point search; capacity is the last step that held the SLA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, cast

from pytest_stressguard.markers import (
    Duration,
    MarkerError,
    check_bool,
    check_duration,
    check_positive_int,
    check_rate,
    check_thresholds,
)

if TYPE_CHECKING:
    import pytest

    from pytest_stressguard.core.records import Record
    from pytest_stressguard.core.result import LoadResult
    from pytest_stressguard.core.thresholds import Threshold
    from pytest_stressguard.kinds.base import CsvRows, RunContext
    from pytest_stressguard.verdict import Verdict


@dataclass(frozen=True)
class StressMark:
    start: float
    step: float
    maximum: float
    kind: Literal["users", "rate"]
    step_duration: float
    sla: tuple[Threshold, ...]
    recovery: bool
    expect_capacity: float | None
    think_time: float
    max_users: int | None

    def scaled(self, factor: float) -> StressMark:
        return replace(self, step_duration=self.step_duration * factor)

    def level(self, x: float) -> str:
        return f"{x:g} users" if self.kind == "users" else f"{x:g}/s"


def stress(
    *,
    start_users: int | None = None,
    step_users: int | None = None,
    max_users: int | None = None,
    start_rate: str | float | None = None,
    step_rate: str | float | None = None,
    max_rate: str | float | None = None,
    step_duration: Duration = "10s",
    sla: Sequence[str] = (),
    recovery: bool = True,
    expect_capacity: int | str | None = None,
    think_time: Duration = "0s",
) -> StressMark:
    """Find the breaking point: step the load up, evaluate `sla` per step; capacity is the last
    step that held. Then check recovery at the start load."""
    by_users = any(v is not None for v in (start_users, step_users))
    by_rate = any(v is not None for v in (start_rate, step_rate, max_rate))
    if by_users and by_rate:
        raise MarkerError("give start_users/step_users/max_users or start_rate/step_rate/max_rate, "
                          "not both")
    kind: Literal["users", "rate"]
    if by_rate:
        if start_rate is None or step_rate is None or max_rate is None:
            raise MarkerError("rate steps need start_rate=, step_rate= and max_rate=")
        start, step, top = (check_rate("start_rate", start_rate), check_rate("step_rate", step_rate),
                            check_rate("max_rate", max_rate))
        kind = "rate"
        cap = None if max_users is None else check_positive_int("max_users", max_users)
    else:
        if start_users is None or step_users is None or max_users is None:
            raise MarkerError("user steps need start_users=, step_users= and max_users=")
        start = float(check_positive_int("start_users", start_users))
        step = float(check_positive_int("step_users", step_users))
        top = float(check_positive_int("max_users", max_users))
        kind = "users"
        cap = None
    if top < start:
        raise MarkerError(f"the maximum ({top:g}) is below the start ({start:g})")
    if kind == "rate" and think_time not in ("0s", 0, 0.0):
        raise MarkerError("think_time= has no meaning with rate steps: the rate sets the pace")
    thresholds = check_thresholds("sla", sla)
    expected: float | None = None
    if expect_capacity is not None:
        if isinstance(expect_capacity, str):
            expected = check_rate("expect_capacity", expect_capacity)
        else:
            expected = float(check_positive_int("expect_capacity", expect_capacity))
    return StressMark(
        start=start, step=step, maximum=top, kind=kind,
        step_duration=check_duration("step_duration", step_duration, allow_zero=False),
        sla=thresholds, recovery=check_bool("recovery", recovery), expect_capacity=expected,
        think_time=check_duration("think_time", think_time), max_users=cap,
    )


class StressKind:
    name: str = "stress"
    marker = staticmethod(stress)
    baseline_metrics: tuple[str, ...] = ("capacity", "p95", "rps")

    def run(self, item: pytest.Function, spec: StressMark, ctx: RunContext) -> tuple[Record, Verdict]:
        from pytest_stressguard.bodies import run_load
        from pytest_stressguard.core import stress as search
        from pytest_stressguard.core.loadspec import LoadSpec
        from pytest_stressguard.core.result import LoadInterrupted
        from pytest_stressguard.kinds.base import Interrupted, effective_sla
        from pytest_stressguard.verdict import Verdict

        sla = effective_sla(spec.sla, ctx.settings)

        def step(level: float) -> LoadResult:
            if spec.kind == "rate":
                load = LoadSpec(rate=level, duration=spec.step_duration, max_users=spec.max_users,
                                think_time=spec.think_time)
            else:
                load = LoadSpec(users=int(level), duration=spec.step_duration,
                                think_time=spec.think_time)
            try:
                return run_load(item, load, ctx.progress)
            except LoadInterrupted as exc:
                exc.result.interrupted = True
                return exc.result

        levels = search.levels(spec.start, spec.step, spec.maximum)
        result = search.search(step, levels, sla, kind=spec.kind, recovery=spec.recovery)
        problems = []
        if spec.expect_capacity is not None and (result.capacity or 0) < spec.expect_capacity:
            got = "none (the first step broke the SLA)" if result.capacity is None else \
                spec.level(result.capacity)
            problems.append(f"capacity {got} is below the expected "
                            f"{spec.level(spec.expect_capacity)}")
        if result.recovered is False and result.recovery is not None:
            why = "; ".join(c.describe() for c in result.recovery.checks if not c.ok)
            problems.append(f"no recovery at {spec.level(result.recovery.level)}: {why}")
        # Breaking the SLA at some step is what a search is for: it explains the capacity, it
        # does not fail the test. Only expect_capacity, capacity thresholds and recovery do.
        notes = []
        if result.broke_at is not None:
            why = "; ".join(c.describe() for c in result.steps[-1].checks if not c.ok)
            notes.append(f"broke at {spec.level(result.broke_at)}: {why}")
        elif not result.interrupted:
            notes.append(f"the SLA held up to the maximum ({spec.level(spec.maximum)}): "
                         f"capacity is at least that")
        if any(s.result.saturation.saturated for s in result.steps):
            notes.append("WARNING generator saturated during the search: the breaking point may "
                         "be the client's, not the server's")
        verdict = Verdict("stress", tuple(search.final_checks(result, sla)), tuple(problems),
                          notes=tuple(notes))
        merged = result.merged()
        record = cast("Record", {"kind": "stress", **(merged.to_dict() if merged else {})})
        record["metrics"] = {**(merged.metrics() if merged else {}), **result.metrics()}
        record["stress"] = result.to_dict()
        record["thresholds"] = verdict.to_list()
        record["problems"] = problems
        if result.interrupted:
            raise Interrupted(record, verdict)
        return record, verdict

    def summary(self, records: Sequence[Record]) -> list[str]:
        from pytest_stressguard.core.units import format_ratio
        from pytest_stressguard.report.table import ms, short, table, verdict_text

        rows = [["stress", "capacity", "broke at", "p95 at capacity", "recovery", "verdict"]]
        curves: list[str] = []
        for r in records:
            s = r["stress"]
            unit = " users" if s["kind"] == "users" else "/s"
            cap = s["capacity"]
            by = s["kind"]
            at_cap = next((st for st in s["steps"] if st.get(by) == cap), None)
            recovered = s["recovered"]
            rows.append([
                short(r["nodeid"]),
                "none" if cap is None else f"{cap:g}{unit}",
                "-" if s["broke_at"] is None else f"{s['broke_at']:g}{unit}",
                ms(at_cap.get("p95_ms")) if at_cap else "-",
                "-" if recovered is None else ("ok" if recovered else "FAILED"),
                verdict_text(r),
            ])
            curves.append(f"  {r['nodeid'].split('::')[-1]}: " + ", ".join(
                f"{st.get(by, 0):g}{unit}→{st.get('rps', 0):.0f}/s p95 {ms(st.get('p95_ms'))}"
                f" err {format_ratio(st.get('error_rate') or 0)}" + ("" if st.get("ok") else " ✗")
                for st in s["steps"]))
        return [*table(rows, {1, 2, 3}), "degradation (load→rps, p95, errors per step):", *curves]

    def csv_rows(self, record: Record) -> CsvRows:
        from pytest_stressguard.kinds.base import timeline_rows

        return timeline_rows(record)


KIND = StressKind()
