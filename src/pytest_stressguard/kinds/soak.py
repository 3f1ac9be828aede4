"""@pytest.mark.soak: the body under steady load for a long time, gated on leak, drift and SLA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from pytest_stressguard.markers import (
    Duration,
    MarkerError,
    check_duration,
    check_positive_int,
    check_thresholds,
)

if TYPE_CHECKING:
    import pytest

    from pytest_stressguard.core.monitor import ResourceMonitor
    from pytest_stressguard.core.records import Record
    from pytest_stressguard.core.result import LoadResult
    from pytest_stressguard.core.soak import SoakResult
    from pytest_stressguard.core.thresholds import Threshold
    from pytest_stressguard.kinds.base import CsvRows, RunContext
    from pytest_stressguard.verdict import Verdict


@dataclass(frozen=True)
class SoakMark:
    duration: float
    users: int
    think_time: float
    warmup: float
    leak: float | None  # bytes per hour
    drift: float | None  # ratio
    sla: tuple[Threshold, ...]
    watch: str | None
    sample_interval: float

    def scaled(self, factor: float) -> SoakMark:
        return replace(self, duration=self.duration * factor, warmup=self.warmup * factor)


def soak(
    *,
    duration: Duration,
    users: int = 1,
    think_time: Duration = "0s",
    warmup: Duration = "0s",
    leak: str | None = None,
    drift: str | None = None,
    sla: Sequence[str] = (),
    watch: str | None = None,
    sample_interval: Duration = "100ms",
) -> SoakMark:
    """Run the body repeatedly for `duration` while sampling memory; gate on `leak` (e.g.
    '10MB/h', a robust slope after `warmup`), `drift` (e.g. '20%') and `sla`. `watch` names a
    fixture whose value is a pid, a psutil.Process or has `.pid`."""
    from pytest_stressguard.core.units import UnitsError, parse_ratio, parse_size_rate

    try:
        leak_limit = None if leak is None else parse_size_rate(leak)
    except (UnitsError, TypeError) as exc:
        raise MarkerError(f"leak={leak!r}: must be a rate of growth such as '10MB/h' ({exc})") \
            from None
    try:
        drift_limit = None if drift is None else parse_ratio(drift)
    except (UnitsError, TypeError) as exc:
        raise MarkerError(f"drift={drift!r}: must be a percentage such as '20%' ({exc})") from None
    if watch is not None and (not isinstance(watch, str) or not watch.isidentifier()):
        raise MarkerError(f"watch={watch!r}: must be the name of a fixture")
    return SoakMark(
        duration=check_duration("duration", duration, allow_zero=False),
        users=check_positive_int("users", users),
        think_time=check_duration("think_time", think_time),
        warmup=check_duration("warmup", warmup),
        leak=leak_limit,
        drift=drift_limit,
        sla=check_thresholds("sla", sla),
        watch=watch,
        sample_interval=check_duration("sample_interval", sample_interval, allow_zero=False),
    )


class SoakKind:
    name: str = "soak"
    marker = staticmethod(soak)
    baseline_metrics: tuple[str, ...] = ("leak", "p95", "rps")

    def run(self, item: pytest.Function, spec: SoakMark, ctx: RunContext) -> tuple[Record, Verdict]:
        from pytest_stressguard import bodies
        from pytest_stressguard.core import soak as soak_core
        from pytest_stressguard.core.engine import Engine
        from pytest_stressguard.core.monitor import ResourceMonitor
        from pytest_stressguard.core.result import LoadInterrupted
        from pytest_stressguard.kinds.base import Interrupted, effective_sla
        from pytest_stressguard.verdict import Verdict

        core_spec = soak_core.SoakSpec(
            duration=spec.duration, users=spec.users, think_time=spec.think_time,
            warmup=spec.warmup, leak_limit=spec.leak, drift_limit=spec.drift,
            sample_interval=spec.sample_interval, sla=effective_sla(spec.sla, ctx.settings))
        watch = _watch_target(item, spec)
        monitor = ResourceMonitor(interval=spec.sample_interval)
        engine = Engine(progress=ctx.progress)
        try:
            if bodies.is_async(item):
                result = bodies.run_coroutine(item, soak_core.run_soak_async(
                    bodies.async_body(item), core_spec, watch=watch, monitor=monitor,
                    engine=engine))
            else:
                result = soak_core.run_soak(bodies.sync_body(item), core_spec, watch=watch,
                                            monitor=monitor, engine=engine)
        except KeyboardInterrupt as exc:
            partial = exc.result if isinstance(exc, LoadInterrupted) else engine.last_result
            raise Interrupted(_interrupted(partial, monitor, spec), Verdict("soak")) from None
        finally:
            monitor.stop()
        verdict = soak_verdict(result)
        record = cast("Record", {"kind": "soak", **(result.load.to_dict() if result.load else {})})
        record["duration_s"] = result.duration_s
        record["metrics"] = result.metrics()
        record["soak"] = cast(Any, result.to_dict())
        record["thresholds"] = verdict.to_list()
        record["problems"] = list(verdict.problems)
        return record, verdict

    def summary(self, records: Sequence[Record]) -> list[str]:
        from pytest_stressguard.core.units import format_duration, format_size
        from pytest_stressguard.report.table import short, spark, table, verdict_text

        rows = [["soak", "ran", "leak (95% bound)", "memory", "drift", "verdict"]]
        for r in records:
            s = r["soak"]
            rate = s.get("leak_bytes_per_h")
            bound = s.get("leak_bound_bytes_per_h")
            leak = "-" if rate is None else f"{'+' if rate >= 0 else '-'}{format_size(abs(rate))}/h"
            if rate is not None and bound is not None:
                leak += f" (±{format_size(abs(bound))})"
            drift = s.get("drift")
            series = [v for _, v in s.get("memory", [])]
            rows.append([short(r["nodeid"]), format_duration(r.get("duration_s") or 0), leak,
                         spark(series), "-" if drift is None else f"{drift * 100:+.0f}%",
                         verdict_text(r)])
        return table(rows, {1})

    def csv_rows(self, record: Record) -> CsvRows:
        from pytest_stressguard.kinds.base import timeline_rows

        soak = record.get("soak", {})
        memory: list[dict[str, object]] = [
            {"nodeid": record["nodeid"], "pid": "self", "t": t, "rss": rss}
            for t, rss in soak.get("memory", [])]
        for pid, series in (soak.get("watched_memory") or {}).items():
            memory += [{"nodeid": record["nodeid"], "pid": pid, "t": t, "rss": rss}
                       for t, rss in series]
        return {**timeline_rows(record), **({"memory": memory} if memory else {})}


def soak_verdict(result: SoakResult) -> Verdict:
    from pytest_stressguard.kinds.base import error_notes, evidence_problems
    from pytest_stressguard.verdict import Verdict

    notes = tuple(f"WARNING {w}" for w in result.warnings)
    problems: tuple[str, ...] = ()
    if result.load is not None:
        notes += error_notes(result.load.errors_by_kind)
        problems = evidence_problems(result.load)
    if result.alloc_sites:
        notes += ("top allocation sites still holding memory:",
                  *(f"  {site.describe()}" for site in result.alloc_sites))
    elif result.alloc_note:
        notes += (result.alloc_note,)
    return Verdict("soak", tuple(result.thresholds), problems, notes=notes,
                   detail="" if result.ok else result.describe())


def _watch_target(item: pytest.Function, spec: SoakMark) -> dict[str, object]:
    if spec.watch is None:
        return {}
    value = item.funcargs.get(spec.watch)
    if value is None:
        import pytest

        raise pytest.UsageError(f"{item.nodeid}: @soak(watch={spec.watch!r}): the fixture gave "
                                f"None; it must give a pid, a psutil.Process or an object with .pid")
    return {spec.watch: value}


def _interrupted(partial: LoadResult | None, monitor: ResourceMonitor, spec: SoakMark) -> Record:
    """What a Ctrl-C leaves: the iterations so far and the memory samples so far."""
    record = cast("Record", {"kind": "soak", **(partial.to_dict() if partial else {})})
    leak = monitor.leak_rate(warmup=spec.warmup)
    record["soak"] = {"leak_bytes_per_h": leak.bytes_per_h, "leak": leak.to_dict(),
                      "leak_bound_bytes_per_h": leak.bound, "peak_rss": monitor.peak_rss,
                      "memory": [[t, rss] for t, rss in monitor.rss_points()[-500:]],
                      "interrupted": True}
    record["metrics"] = {**(partial.metrics() if partial else {}),
                         "leak": leak.gate_bytes_per_h, "peak_rss": float(monitor.peak_rss)}
    return record


KIND = SoakKind()
