"""The load engine: closed/open models, sync/async, stages, errors, interruption, timeline,
coordinated omission, serialisation. Timing assertions use ratios and generous bounds."""

from __future__ import annotations

import _thread
import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable

import pytest

from pytest_stressguard.core.engine import Engine
from pytest_stressguard.core.loadspec import LoadSpec, Stage, default_max_users
from pytest_stressguard.core.profiles import parse_stages, ramp, spike
from pytest_stressguard.core.result import (
    LOAD_METRICS,
    LoadInterrupted,
    LoadResult,
    Progress,
    Saturation,
)
from pytest_stressguard.core.schedule import Arrivals, user_intervals
from pytest_stressguard.core.stats import EndpointStats, current_recorder


def _stalling_body(every: int = 100, stall: float = 0.2) -> Callable[[], None]:
    """A single-threaded 'server': one call in `every` holds it for `stall` seconds, so every
    call that arrives meanwhile waits (like a GC pause or a lock)."""
    lock = threading.Lock()
    counter = itertools.count(1)

    def body() -> None:
        with lock:
            if next(counter) % every == 0:
                time.sleep(stall)

    return body


# ------------------------------------------------------------------ coordinated omission
def test_open_model_shows_the_stall_that_the_closed_model_hides() -> None:
    """Issue 2: 200/s, one call in 100 stalls 200 ms. The calls *scheduled* during each stall
    (~40 of them) are late by up to 200 ms; measured from their intended start they push p90+
    up. A closed-model user stops sending while stalled, so only the one stalled call shows
    (1 % of samples) and p99 stays near zero: coordinated omission."""
    open_r = Engine().run_sync(_stalling_body(), LoadSpec(rate=200, duration=2.0))
    closed_r = Engine().run_sync(
        _stalling_body(), LoadSpec(users=1, duration=2.0, think_time=0.005)
    )
    assert open_r.iterations >= 380  # ~400 scheduled, none dropped with the default cap
    assert open_r.dropped == 0
    assert closed_r.latency.max >= 0.19  # the stall itself is seen by both models
    # p95, not p99: the closed model's stalled calls are ~1 % of its samples, so its p99 sits
    # right on them and flips from run to run; at p95 the open model is ~40 % late calls deep
    open_p95 = open_r.latency.p(95)
    closed_p95 = closed_r.latency.p(95)
    assert open_p95 >= 0.100, open_r.latency.percentiles_ms()
    assert closed_p95 < 0.060, closed_r.latency.percentiles_ms()
    assert open_p95 > 3 * closed_p95
    # the open model also sees the stall in its mean (many late calls), the closed model not
    assert open_r.latency.mean > 5 * closed_r.latency.mean


def test_open_model_counts_dropped_iterations_when_max_users_is_small() -> None:
    r = Engine().run_sync(_stalling_body(), LoadSpec(rate=200, duration=1.5, max_users=2))
    assert r.dropped > 20  # both users busy during each stall: arrivals cannot start
    assert r.iterations + r.dropped == 300  # every arrival accounted for, exactly
    assert sum(row.dropped for row in r.timeline) == r.dropped
    assert r.metrics()["dropped"] == float(r.dropped)
    assert r.peak_users <= 2


def test_open_model_runs_the_scheduled_number_of_arrivals() -> None:
    r = Engine().run_sync(lambda: None, LoadSpec(rate=100, duration=1.0))
    assert r.iterations + r.dropped == 100  # arrivals at k/100 for k < 100
    assert r.dropped == 0


def test_open_model_iterations_is_an_exact_arrival_count() -> None:
    r = Engine().run_sync(lambda: time.sleep(0.002), LoadSpec(rate=300, iterations=60))
    assert r.iterations + r.dropped == 60


def test_open_model_async_latency_from_intended_start() -> None:
    async def main() -> tuple[LoadResult, LoadResult]:
        lock = asyncio.Lock()
        counter = itertools.count(1)

        async def body() -> None:
            async with lock:
                if next(counter) % 100 == 0:
                    await asyncio.sleep(0.2)

        a = await Engine().run_async(body, LoadSpec(rate=200, duration=2.0))
        b = await Engine().run_async(body, LoadSpec(rate=200, duration=1.0, max_users=2))
        return a, b

    a, b = asyncio.run(main())
    assert a.iterations >= 380
    assert a.latency.p(99) >= 0.120
    assert b.dropped > 0
    assert b.iterations + b.dropped == 200


def test_default_max_users_is_documented_formula() -> None:
    assert default_max_users(10, is_async=False) == 100
    assert default_max_users(250.5, is_async=False) == 251
    assert default_max_users(50_000, is_async=False) == 1000
    assert default_max_users(50_000, is_async=True) == 10_000


# ------------------------------------------------------------------ closed model
def test_iterations_is_an_exact_total_across_users_sync() -> None:
    calls = itertools.count()
    r = Engine().run_sync(lambda: next(calls), LoadSpec(users=4, iterations=1234))
    assert r.iterations == 1234
    assert next(calls) == 1234  # the body ran exactly that often
    assert r.latency.count == 1234


def test_iterations_is_an_exact_total_across_users_async() -> None:
    calls = itertools.count()

    async def body() -> None:
        next(calls)
        await asyncio.sleep(0)

    r = asyncio.run(Engine().run_async(body, LoadSpec(users=7, iterations=501)))
    assert r.iterations == 501
    assert next(calls) == 501


def test_duration_run_stops_by_itself() -> None:
    t = time.monotonic()
    r = Engine().run_sync(lambda: time.sleep(0.005), LoadSpec(users=3, duration=0.8))
    elapsed = time.monotonic() - t
    assert 0.75 <= elapsed < 3.0
    assert 0.75 <= r.duration_s < 3.0
    assert r.iterations > 0
    assert r.rps == pytest.approx(r.iterations / r.duration_s)


def test_ramp_up_spreads_user_starts_evenly() -> None:
    first: dict[int, float] = {}
    t0 = time.perf_counter()

    def body() -> None:
        first.setdefault(threading.get_ident(), time.perf_counter() - t0)
        time.sleep(0.005)

    Engine().run_sync(body, LoadSpec(users=4, duration=1.2, ramp_up=0.8))
    starts = sorted(first.values())
    assert len(starts) == 4
    # planned: 0, 0.2, 0.4, 0.6 s
    assert starts[0] < 0.15
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0.1 < g < 0.45 for g in gaps), starts
    assert starts[-1] > 0.45


def test_warmup_iterations_run_but_are_not_measured() -> None:
    start = time.perf_counter()
    calls = itertools.count()

    def body() -> None:
        next(calls)
        if time.perf_counter() - start < 0.4:
            time.sleep(0.15)  # slow while warming up
        else:
            time.sleep(0.001)

    r = Engine().run_sync(body, LoadSpec(users=2, duration=1.0, warmup=0.4))
    total = next(calls)
    assert r.warmup_iterations > 0
    assert r.iterations + r.warmup_iterations == total
    assert r.latency.max < 0.1  # none of the slow warm-up iterations was recorded
    assert r.duration_s == pytest.approx(0.6, abs=0.4)
    assert all(row.t >= 0 for row in r.timeline)
    assert sum(row.iterations for row in r.timeline) == r.iterations


def test_think_time_paces_a_user() -> None:
    r = Engine().run_sync(lambda: None, LoadSpec(users=1, duration=1.0, think_time=0.05))
    assert 8 <= r.iterations <= 21  # ~20 at 50 ms; fewer on a busy machine, never more


def test_errors_are_grouped_and_kept_out_of_the_latency_histogram() -> None:
    n = itertools.count()

    def body() -> None:
        i = next(n)
        if i % 4 == 1:
            raise ValueError("bad input")
        if i % 4 == 2:
            raise KeyError("k")
        if i % 4 == 3:
            raise RuntimeError("x" * 500)

    r = Engine().run_sync(body, LoadSpec(users=2, iterations=400))
    assert r.iterations == 400
    assert r.errors == 300
    assert r.error_rate == pytest.approx(0.75)
    assert r.errors_by_kind["ValueError: bad input"] == 100
    assert r.errors_by_kind["KeyError: 'k'"] == 100
    (long_key,) = [k for k in r.errors_by_kind if k.startswith("RuntimeError")]
    assert len(long_key) < 230
    assert r.latency.count == 100  # successes only
    assert r.error_latency.count == 300
    assert sum(row.errors for row in r.timeline) == 300


def test_base_exceptions_are_not_swallowed() -> None:
    def body() -> None:
        raise SystemExit(3)

    t = time.monotonic()
    with pytest.raises(SystemExit):
        Engine().run_sync(body, LoadSpec(users=2, duration=5.0))
    assert time.monotonic() - t < 2.0


def test_async_users_run_concurrently() -> None:
    async def body() -> None:
        await asyncio.sleep(0.01)

    r = asyncio.run(Engine().run_async(body, LoadSpec(users=10, duration=1.0)))
    # serial would be <= 100/s; ten concurrent users give several hundred
    assert r.rps > 300
    assert r.latency.p(50) >= 0.009
    assert r.model == "closed"


def test_async_body_that_never_awaits_does_not_starve_the_loop() -> None:
    async def body() -> None:
        return None

    t = time.monotonic()
    r = asyncio.run(Engine().run_async(body, LoadSpec(users=3, duration=0.6)))
    assert time.monotonic() - t < 3.0
    assert r.iterations > 1000
    assert len(r.timeline) >= 1


# ------------------------------------------------------------------ stages
def test_user_intervals_follow_the_linear_profile() -> None:
    pts = [(0.0, 0.0), (1.0, 10.0), (2.0, 10.0), (3.0, 0.0)]
    first = user_intervals(0, pts)
    last = user_intervals(9, pts)
    assert len(first) == 1
    assert first[0][0] == 0.0
    assert first[0][1] == pytest.approx(3.0)
    (start, end) = last[0]
    assert start == pytest.approx(0.9)  # user 9 joins when the target passes 9
    assert end == pytest.approx(2.1)  # and is the first to leave on the way down
    assert user_intervals(10, pts) == []


def test_rate_stage_arrivals_integrate_the_rate() -> None:
    spec = LoadSpec(stages=(Stage(1.0, 100, "rate"), Stage(1.0, 100, "rate")))
    arr = Arrivals(spec)
    times = []
    for k in itertools.count():
        t = arr.time_of(k)
        if t is None or t >= 2.0:
            break
        times.append(t)
    assert len(times) == 150  # 50 during the ramp 0 -> 100/s, 100 at 100/s
    assert times[50] == pytest.approx(1.0, abs=0.011)
    assert all(b >= a for a, b in itertools.pairwise(times))


def test_user_stages_drive_concurrency() -> None:
    active = [0]
    peak = [0]
    lock = threading.Lock()

    def body() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1

    stages = parse_stages([("0.4s", 4), ("0.6s", 4), ("0.4s", 0)])
    r = Engine().run_sync(body, LoadSpec(stages=stages))
    assert peak[0] == 4
    assert r.peak_users == 4
    assert r.duration_s == pytest.approx(1.4, abs=0.6)
    assert max(row.users for row in r.timeline) == 4


def test_rate_stages_sync_and_async() -> None:
    stages = parse_stages([("1s", "100/s"), ("0.5s", "100/s")])
    r = Engine().run_sync(lambda: None, LoadSpec(stages=stages))
    assert r.iterations + r.dropped == 100  # 50 + 50
    assert r.model == "open"

    async def body() -> None:
        await asyncio.sleep(0)

    a = asyncio.run(Engine().run_async(body, LoadSpec(stages=stages)))
    assert a.iterations + a.dropped == 100


# ------------------------------------------------------------------ stop, Ctrl-C, hangs
def test_stop_event_ends_the_run_with_interrupted_set() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t = time.monotonic()
    r = Engine(stop=stop).run_sync(
        lambda: time.sleep(0.01), LoadSpec(users=3, duration=30.0, think_time=2.0)
    )
    assert time.monotonic() - t < 2.5  # think-time sleepers are woken up
    assert r.interrupted
    assert r.iterations >= 3


def test_stop_event_async() -> None:
    stop = threading.Event()

    async def main() -> LoadResult:
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await Engine(stop=stop).run_async(
            lambda: asyncio.sleep(0.01), LoadSpec(rate=50, duration=30.0)
        )

    t = time.monotonic()
    r = asyncio.run(main())
    assert time.monotonic() - t < 2.5
    assert r.interrupted
    assert r.iterations > 0


def test_ctrl_c_raises_load_interrupted_with_the_partial_result() -> None:
    timer = threading.Timer(0.4, _thread.interrupt_main)
    timer.start()
    t = time.monotonic()
    try:
        with pytest.raises(LoadInterrupted) as info:
            Engine().run_sync(lambda: time.sleep(0.01), LoadSpec(users=3, duration=30.0))
    finally:
        timer.cancel()
    assert time.monotonic() - t < 4.0
    assert isinstance(info.value, KeyboardInterrupt)
    partial = info.value.result
    assert partial.interrupted
    assert partial.iterations > 10  # nothing measured is lost
    assert partial.latency.count == partial.iterations


def test_a_hanging_body_is_reported_not_waited_for() -> None:
    release = threading.Event()
    calls = itertools.count()

    def body() -> None:
        if next(calls) == 3:
            release.wait(30)  # hangs past the grace
        time.sleep(0.002)

    t = time.monotonic()
    try:
        r = Engine().run_sync(body, LoadSpec(users=2, duration=0.5, grace=0.5))
    finally:
        release.set()
    assert time.monotonic() - t < 3.0
    assert any("abandoned" in w for w in r.warnings)
    assert r.iterations > 3  # the stuck user's earlier iterations are kept


def test_iterations_run_is_bounded_by_max_duration() -> None:
    t = time.monotonic()
    r = Engine().run_sync(
        lambda: time.sleep(0.01),
        LoadSpec(users=1, iterations=10_000, max_duration=0.5, grace=0.5),
    )
    assert time.monotonic() - t < 2.5
    assert 0 < r.iterations < 10_000
    assert any("max_duration" in w for w in r.warnings)


# ------------------------------------------------------------------ timeline, progress
def test_timeline_has_one_row_per_second() -> None:
    r = Engine().run_sync(lambda: time.sleep(0.005), LoadSpec(users=2, duration=2.3))
    ts = [row.t for row in r.timeline]
    assert ts == list(range(len(ts)))
    assert 3 <= len(ts) <= 4
    assert sum(row.iterations for row in r.timeline) == r.iterations
    full = r.timeline[1]
    assert full.users == 2
    assert full.p95_ms is not None and full.p95_ms >= 4.0
    assert full.rps == pytest.approx(full.iterations)


def test_progress_is_delivered_about_once_a_second() -> None:
    seen: list[Progress] = []
    Engine(progress=seen.append).run_sync(
        lambda: time.sleep(0.005), LoadSpec(users=2, duration=2.5)
    )
    assert 1 <= len(seen) <= 4
    assert all(b.elapsed_s > a.elapsed_s for a, b in itertools.pairwise(seen))
    last = seen[-1]
    assert last.iterations > 0
    assert last.users == 2
    assert last.remaining_s is not None and last.remaining_s < 2.0


def test_a_broken_progress_callback_does_not_break_the_run() -> None:
    def bad(p: Progress) -> None:
        raise RuntimeError("display broke")

    r = Engine(progress=bad).run_sync(lambda: None, LoadSpec(users=1, duration=1.3))
    assert r.iterations > 0
    assert any("progress callback" in w for w in r.warnings)


# ------------------------------------------------------------------ recorder, saturation
def test_current_recorder_reaches_sync_and_async_users() -> None:
    def body() -> None:
        rec = current_recorder.get()
        assert rec is not None
        rec.record("GET /items", 0.002)

    r = Engine().run_sync(body, LoadSpec(users=3, iterations=30))
    assert r.endpoints["GET /items"].count == 30
    assert current_recorder.get() is None  # not left behind

    async def abody() -> None:
        rec = current_recorder.get()
        assert rec is not None
        rec.record("POST /orders", 0.003, "HTTPError: 500")

    a = asyncio.run(Engine().run_async(abody, LoadSpec(users=2, iterations=10)))
    st = a.endpoints["POST /orders"]
    assert (st.count, st.errors) == (10, 10)


def test_blocked_event_loop_is_reported_as_saturation() -> None:
    async def body() -> None:
        time.sleep(0.04)  # blocks the loop: a client-side bottleneck
        await asyncio.sleep(0)

    r = asyncio.run(Engine().run_async(body, LoadSpec(users=2, duration=1.0)))
    assert r.saturation.loop_lag_p99_ms is not None
    assert r.saturation.loop_lag_p99_ms > 20
    assert r.saturation.saturated
    assert "event-loop lag" in r.saturation.reason
    assert any("saturated" in w for w in r.warnings)


def test_saturation_judgement() -> None:
    assert not Saturation.judge(0.5, 0.002).saturated
    cpu = Saturation.judge(0.97, None)
    assert cpu.saturated and "CPU" in cpu.reason
    assert Saturation.judge(0.1, 0.05, lag_over=5).saturated
    assert not Saturation.judge(0.1, 0.05, lag_over=1).saturated  # one GC pause is not it


# ------------------------------------------------------------------ result: metrics, merge
def _result(delay: float, iterations: int) -> LoadResult:
    return Engine().run_sync(lambda: time.sleep(delay), LoadSpec(users=2, iterations=iterations))


def test_metrics_names_and_units() -> None:
    r = _result(0.002, 40)
    m = r.metrics()
    for key in ("p50", "p90", "p95", "p99", "p99.9", "mean", "min", "max", "rps", "errors",
                "error_rate", "dropped", "iterations"):
        assert key in m
    p50 = m["p50"]
    assert p50 is not None and 0.0015 < p50 < 0.5  # seconds
    assert m["iterations"] == 40.0
    assert r.percentile_metric("p97.5") == r.latency.p(97.5)
    with pytest.raises(KeyError):
        r.percentile_metric("median")
    assert LoadResult().metrics()["p95"] is None


_LATENCY_KEYS = {"p50", "p90", "p95", "p99", "p99.9", "mean", "min", "max"}
_ENDPOINT_KEYS = {*_LATENCY_KEYS, "rps", "ok_rps", "iterations", "errors", "error_rate"}


def test_endpoint_metrics_give_rps_over_the_measured_window() -> None:
    ep = EndpointStats("GET /x")
    for _ in range(30):
        ep.record(0.004)
    ep.record(0.010, error="HTTPError: 500")
    r = LoadResult(iterations=31, duration_s=2.0, endpoints={"GET /x": ep})
    m = r.endpoint_metrics()["GET /x"]
    assert set(m) == _ENDPOINT_KEYS
    assert m["rps"] == pytest.approx(15.5)  # errors count, like the run's rps
    assert (m["iterations"], m["errors"]) == (31.0, 1.0)
    assert LoadResult(endpoints={"GET /x": ep}).endpoint_metrics()["GET /x"]["rps"] == 0.0


def test_produced_metrics_are_the_declared_ones() -> None:
    produced = set(LoadResult().metrics())
    assert produced == {*_ENDPOINT_KEYS, "dropped"}
    for name in produced:
        assert any(m.matches(name) for m in LOAD_METRICS), name
    for metric in LOAD_METRICS:
        assert any(metric.matches(name) for name in produced), metric.name
    per_endpoint = {"pNN", "mean", "min", "max", "rps", "ok_rps", "iterations", "errors",
                    "error_rate"}
    assert {m.name for m in LOAD_METRICS if m.per_endpoint} == per_endpoint


def test_to_dict_from_dict_round_trip() -> None:
    def body() -> None:
        rec = current_recorder.get()
        assert rec is not None
        rec.record("GET /", 0.001)
        time.sleep(0.001)

    r = Engine().run_sync(body, LoadSpec(users=2, iterations=50))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["latency_ms"]["p95"] is not None
    back = LoadResult.from_dict(d)
    assert back.latency == r.latency
    assert back.iterations == r.iterations
    assert back.rps == pytest.approx(r.rps)
    assert back.timeline == r.timeline
    assert back.endpoints["GET /"].count == 50
    assert back.to_dict() == d


def test_merge_adds_counts_and_histograms_exactly() -> None:
    a = _result(0.001, 30)
    b = _result(0.003, 20)
    expected = a.latency.copy().merge(b.latency)
    rps = a.rps + b.rps
    merged = LoadResult.from_dict(a.to_dict()).merge(LoadResult.from_dict(b.to_dict()))
    assert merged.iterations == 50
    assert merged.latency == expected
    # rps of concurrent workers adds up (within the difference of their durations)
    assert merged.rps <= rps + 1e-9
    assert merged.rps >= min(a.rps, b.rps)
    assert sum(row.iterations for row in merged.timeline) == 50


# ------------------------------------------------------------------ spec validation, profiles
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give duration, iterations or stages"),
        ({"duration": 1.0, "iterations": 5}, "not both"),
        ({"users": 0, "duration": 1.0}, "users must be an integer >= 1"),
        ({"rate": 10.0, "duration": 1.0, "think_time": 0.1}, "think_time"),
        ({"users": 5, "duration": 1.0, "max_users": 3}, "max_users"),
        ({"duration": 1.0, "warmup": 2.0}, "warmup"),
        ({"duration": 1.0, "ramp_up": 5.0}, "ramp_up"),
        ({"stages": (Stage(1, 2), Stage(1, 5, "rate"))}, "mix"),
        ({"stages": (Stage(1, 2),), "duration": 3.0}, "stages define the duration"),
        ({"rate": -1.0, "duration": 1.0}, "rate must be > 0"),
    ],
)
def test_load_spec_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadSpec(**kwargs)  # type: ignore[arg-type]


def test_spike_and_ramp_helpers_return_user_stages() -> None:
    assert spike(10, 100, "30s", "5s") == [
        ("5s", 10), ("30s", 10), ("5s", 100), ("30s", 100), ("5s", 10), ("30s", 10),
    ]
    assert ramp(10, 30, 10, "1m") == [
        ("0s", 10), ("1m", 10), ("0s", 20), ("1m", 20), ("0s", 30), ("1m", 30),
    ]
    assert ramp("50/s", "10/s", "20/s", 2)[-2:] == [("0s", "10/s"), (2, "10/s")]
    stages = parse_stages(spike("5/s", "20/s", 1, "0.5s"))
    assert {s.kind for s in stages} == {"rate"}
    assert sum(s.duration for s in stages) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="both be users or both be rates"):
        spike(10, "50/s")
    with pytest.raises(ValueError, match="step must be > 0"):
        ramp(1, 10, 0)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([("10s", "fifty")], r"stages\[0\].*neither a number of users"),
        ([("10s", 5), ("5s", "10/s")], "mix users and rates"),
        ([("soon", 5)], r"stages\[0\]"),
        (["10s"], "not a \\(duration, target\\) pair"),
        ([], "empty"),
        ([("0s", 5)], "0 seconds in total"),
        ([("10s", 2.5)], "whole number"),
        ([("10s", -1)], ">= 0"),
        ("10s,5", "list of"),
    ],
)
def test_parse_stages_rejects_bad_forms_clearly(stages: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stages(stages)  # type: ignore[arg-type]


def test_parse_stages_accepts_numbers_and_strings() -> None:
    st = parse_stages([("1m30s", 50), (10, 0)])
    assert st == (Stage(90.0, 50.0, "users"), Stage(10.0, 0.0, "users"))
    rs = parse_stages([("10s", "6000/min")])
    assert rs == (Stage(10.0, 100.0, "rate"),)


def test_a_run_too_short_to_judge_is_not_called_saturated_by_its_cpu() -> None:
    """200 iterations of an empty body keep a core 100 % busy for a few milliseconds: that is
    not saturation (issue 11: '[generator saturated] on runs too short to judge')."""
    assert not Saturation.judge(0.97, None, run_s=0.2).saturated
    assert Saturation.judge(0.97, None, run_s=2.0).saturated
    r = Engine().run_sync(lambda: None, LoadSpec(users=4, iterations=200))
    assert not r.saturation.saturated and not r.warnings
