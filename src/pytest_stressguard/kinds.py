"""Running a marked test: one function per kind, each returning a plain record and a verdict.

A record is the test's entry of the JSON report (SPEC "The JSON report"), plain data only, so it
can ride on the test report across xdist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pytest_stressguard import bodies
from pytest_stressguard.core import race
from pytest_stressguard.core import soak as soak_core
from pytest_stressguard.core import stress as stress_core
from pytest_stressguard.core.engine import Engine, LoadInterrupted, LoadResult, LoadSpec
from pytest_stressguard.core.monitor import ResourceMonitor
from pytest_stressguard.core.race import ConcurrentSpec, run_concurrent_async
from pytest_stressguard.core.soak import SoakSpec
from pytest_stressguard.core.thresholds import Threshold, evaluate, parse_threshold
from pytest_stressguard.markers import ConcurrentMark, LoadMark, SoakMark, StressMark
from pytest_stressguard.settings import Settings
from pytest_stressguard.verdict import Verdict

DEFAULT_SLA = (parse_threshold("errors==0"),)

ProgressSink = Callable[[Any], None]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a marked test; carries what was measured so the report keeps it."""

    def __init__(self, record: dict[str, Any], verdict: Verdict) -> None:
        super().__init__("interrupted")
        self.record = record
        self.verdict = verdict


def effective_sla(own: Sequence[Threshold], settings: Settings) -> tuple[Threshold, ...]:
    return tuple(own) or settings.sla or DEFAULT_SLA


def to_load_spec(mark: LoadMark) -> LoadSpec:
    return LoadSpec(
        users=mark.users,
        duration=mark.duration,
        iterations=mark.iterations,
        ramp_up=mark.ramp_up,
        rate=mark.rate,
        max_users=mark.max_users,
        stages=mark.stages,
        think_time=mark.think_time,
        warmup=mark.warmup,
    )


def run_spec(item: pytest.Function, spec: LoadSpec, progress: ProgressSink | None) -> LoadResult:
    engine = Engine(progress=progress)
    if not bodies.is_async(item):
        return engine.run_sync(bodies.sync_body(item), spec)
    try:
        return bodies.run_coroutine(item, engine.run_async(bodies.async_body(item), spec))
    except LoadInterrupted:
        raise
    except KeyboardInterrupt as exc:
        # asyncio turns Ctrl-C into a cancellation of the run; the engine keeps what it measured.
        if engine.last_result is None:
            raise
        engine.last_result.interrupted = True
        raise LoadInterrupted(engine.last_result) from exc


def load_verdict(result: LoadResult, sla: Sequence[Threshold]) -> Verdict:
    metrics = stress_core.result_metrics(result, sla)
    checks = evaluate(sla, metrics, stress_core.endpoint_metrics(result))
    notes = []
    if result.saturation.saturated:
        notes.append(f"WARNING generator saturated: {result.saturation.reason} — latencies "
                     f"measure the client, not the server")
    notes += [f"WARNING {w}" for w in result.warnings]
    if result.errors_by_kind:
        top = sorted(result.errors_by_kind.items(), key=lambda kv: -kv[1])[:5]
        notes += [f"errors: {n} x {kind}" for kind, n in top]
    return Verdict("load", tuple(checks), notes=tuple(notes))


def run_load(item: pytest.Function, mark: LoadMark, settings: Settings,
             progress: ProgressSink | None) -> tuple[dict[str, Any], Verdict]:
    mark = mark.scaled(settings.time_scale)
    sla = effective_sla(mark.sla, settings)
    try:
        result = run_spec(item, to_load_spec(mark), progress)
    except LoadInterrupted as exc:
        verdict = load_verdict(exc.result, sla)
        raise Interrupted({**exc.result.to_dict(), "kind": "load"}, verdict) from None
    verdict = load_verdict(result, sla)
    record = {"kind": "load", **result.to_dict(), "thresholds": verdict.to_list()}
    return record, verdict


def run_stress(item: pytest.Function, mark: StressMark, settings: Settings,
               progress: ProgressSink | None) -> tuple[dict[str, Any], Verdict]:
    mark = mark.scaled(settings.time_scale)
    sla = effective_sla(mark.sla, settings)

    def step(level: float) -> LoadResult:
        if mark.kind == "rate":
            spec = LoadSpec(rate=level, duration=mark.step_duration, max_users=mark.max_users,
                            think_time=mark.think_time)
        else:
            spec = LoadSpec(users=int(level), duration=mark.step_duration,
                            think_time=mark.think_time)
        try:
            return run_spec(item, spec, progress)
        except LoadInterrupted as exc:
            exc.result.interrupted = True
            return exc.result

    levels = stress_core.levels(mark.start, mark.step, mark.maximum)
    result = stress_core.search(step, levels, sla, kind=mark.kind, recovery=mark.recovery)
    def level(x: float) -> str:
        return f"{x:g} users" if mark.kind == "users" else f"{x:g}/s"

    problems = []
    if mark.expect_capacity is not None and (result.capacity or 0) < mark.expect_capacity:
        got = "none (the first step broke the SLA)" if result.capacity is None else \
            level(result.capacity)
        problems.append(f"capacity {got} is below the expected {level(mark.expect_capacity)}")
    if result.recovered is False and result.recovery is not None:
        why = "; ".join(c.describe() for c in result.recovery.checks if not c.ok)
        problems.append(f"no recovery at {level(result.recovery.level)}: {why}")
    # Breaking the SLA at some step is what a search is for: it explains the capacity, it does
    # not fail the test. Only expect_capacity, capacity thresholds and recovery do.
    notes = []
    if result.broke_at is not None:
        why = "; ".join(c.describe() for c in result.steps[-1].checks if not c.ok)
        notes.append(f"broke at {level(result.broke_at)}: {why}")
    elif not result.interrupted:
        notes.append(f"the SLA held up to the maximum ({level(mark.maximum)}): "
                     f"capacity is at least that")
    if any(s.result.saturation.saturated for s in result.steps):
        notes.append("WARNING generator saturated during the search: the breaking point may be "
                     "the client's, not the server's")
    verdict = Verdict("stress", tuple(stress_core.final_checks(result, sla)), tuple(problems),
                      notes=tuple(notes))
    merged = result.merged()
    record: dict[str, Any] = {"kind": "stress"}
    if merged is not None:
        record.update(merged.to_dict())
    record["stress"] = result.to_dict()
    record["thresholds"] = verdict.to_list()
    record["problems"] = list(problems)
    if result.interrupted:
        raise Interrupted(record, verdict)
    return record, verdict


def run_concurrent(item: pytest.Function, mark: ConcurrentMark, settings: Settings,
                   progress: ProgressSink | None) -> tuple[dict[str, Any], Verdict]:
    spec = ConcurrentSpec(workers=mark.workers, rounds=mark.rounds, amplify=mark.amplify,
                          timeout=mark.timeout, roots=(str(item.config.rootpath),))
    if bodies.is_async(item):
        result = bodies.run_coroutine(item, run_concurrent_async(bodies.async_body(item), spec))
    else:
        result = race.run_concurrent(bodies.sync_body(item), spec)
    problems = () if result.ok else (result.headline(),)
    verdict = Verdict("concurrent", (), problems, notes=tuple(f"WARNING {w}" for w in result.warnings),
                      detail="" if result.ok else result.summary())
    record = {"kind": "concurrent", "duration_s": result.duration_s,
              "concurrent": result.to_dict(), "thresholds": [], "problems": list(problems)}
    return record, verdict


def _watch_target(item: pytest.Function, mark: SoakMark) -> dict[str, object]:
    if mark.watch is None:
        return {}
    value = item.funcargs.get(mark.watch)
    if value is None:
        raise pytest.UsageError(f"{item.nodeid}: @soak(watch={mark.watch!r}): the fixture gave None; "
                                f"it must give a pid, a psutil.Process or an object with .pid")
    return {mark.watch: value}


def run_soak(item: pytest.Function, mark: SoakMark, settings: Settings,
             progress: ProgressSink | None) -> tuple[dict[str, Any], Verdict]:
    mark = mark.scaled(settings.time_scale)
    sla = tuple(t.expr for t in mark.sla)
    spec = SoakSpec(duration=mark.duration, users=mark.users, think_time=mark.think_time,
                    warmup=mark.warmup, leak_limit=mark.leak, drift_limit=mark.drift,
                    sample_interval=mark.sample_interval, sla=sla)
    watch = _watch_target(item, mark)
    monitor = ResourceMonitor(interval=mark.sample_interval)
    engine = Engine(progress=progress)
    try:
        if bodies.is_async(item):
            result = bodies.run_coroutine(item, soak_core.run_soak_async(
                bodies.async_body(item), spec, watch=watch, monitor=monitor, engine=engine))
        else:
            result = soak_core.run_soak(bodies.sync_body(item), spec, watch=watch,
                                        monitor=monitor, engine=engine)
    except KeyboardInterrupt as exc:
        partial = exc.result if isinstance(exc, LoadInterrupted) else engine.last_result
        raise Interrupted(_interrupted_soak(partial, monitor, mark), Verdict("soak")) from None
    finally:
        monitor.stop()
    problems = ()
    notes = tuple(f"WARNING {w}" for w in result.warnings)
    if result.load is not None and result.load.errors_by_kind:
        top = sorted(result.load.errors_by_kind.items(), key=lambda kv: -kv[1])[:5]
        notes += tuple(f"errors: {n} x {kind}" for kind, n in top)
    if result.alloc_sites:
        notes += ("top allocation sites still holding memory:",
                  *(f"  {site.describe()}" for site in result.alloc_sites))
    elif result.alloc_note:
        notes += (result.alloc_note,)
    verdict = Verdict("soak", tuple(result.thresholds), problems, notes=notes,
                      detail="" if result.ok else result.describe())
    record: dict[str, Any] = {"kind": "soak"}
    if result.load is not None:
        record.update(result.load.to_dict())
    record["duration_s"] = result.duration_s
    record["soak"] = result.to_dict()
    record["thresholds"] = verdict.to_list()
    return record, verdict


def _interrupted_soak(partial: LoadResult | None, monitor: ResourceMonitor,
                      mark: SoakMark) -> dict[str, Any]:
    """What a Ctrl-C leaves: the iterations so far and the memory samples so far."""
    record: dict[str, Any] = {"kind": "soak"}
    if partial is not None:
        record.update(partial.to_dict())
    leak = monitor.leak_rate(warmup=mark.warmup)
    record["soak"] = {"leak_bytes_per_h": leak.bytes_per_h, "leak": leak.to_dict(),
                      "leak_bound_bytes_per_h": leak.bound, "peak_rss": monitor.peak_rss,
                      "memory": [[t, rss] for t, rss in monitor.rss_points()[-500:]],
                      "interrupted": True}
    return record
