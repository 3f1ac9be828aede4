"""Issue 11: the engine tells the truth about runs that went wrong. A hung body, a blocked event
loop, users that never started and failed iterations each show in an explicit figure of the
result, and rates are taken over the measured window. Timing bounds are generous (a busy 2-core
machine) and every test leaves no user thread behind."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest

from pytest_stressguard.core import sync_runner
from pytest_stressguard.core.engine import Engine
from pytest_stressguard.core.loadspec import LoadSpec
from pytest_stressguard.core.result import LOAD_METRICS, LoadResult, Saturation
from pytest_stressguard.core.stats import EndpointStats


def _user_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stressguard-")]


def _no_user_thread_left(timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _user_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _user_threads()


@pytest.fixture(autouse=True)
def _threads_are_gone() -> Any:
    yield
    assert _no_user_thread_left(), _user_threads()


# ------------------------------------------------------------------ (1) a hanging body
def test_a_body_that_hangs_in_every_user_is_counted_as_abandoned_users() -> None:
    release = threading.Event()
    t = time.monotonic()
    try:
        r = Engine().run_sync(lambda: release.wait(30), LoadSpec(users=2, duration=1.0, grace=0.5))
    finally:
        release.set()  # the abandoned (daemon) threads end; the fixture checks they did
    assert time.monotonic() - t < 6.0  # the grace is waited, not the 30 s
    assert r.iterations == 0
    assert r.abandoned_users == 2
    assert any("abandoned" in w for w in r.warnings)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["abandoned_users"] == 2
    assert LoadResult.from_dict(d).abandoned_users == 2
    assert LoadResult.from_dict(d).merge(LoadResult.from_dict(d)).abandoned_users == 4


def test_an_async_body_that_never_answers_is_counted_as_abandoned_users() -> None:
    async def main() -> LoadResult:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            await never

        return await Engine().run_async(body, LoadSpec(users=3, duration=0.5, grace=0.3))

    r = asyncio.run(main())
    assert r.iterations == 0
    assert r.abandoned_users == 3


def test_rates_are_over_the_load_window_not_the_grace_spent_on_a_stuck_user() -> None:
    """1 of 4 users hangs: the 3 others ran for the 1 s duration. The engine then waits the
    2 s grace for the stuck one; that wait is not load, so it is not in duration_s or rps
    (before the fix duration_s was ~3 s and rps a third of the truth)."""
    release = threading.Event()
    first = threading.Lock()

    def body() -> None:
        if first.acquire(blocking=False):
            release.wait(30)
        time.sleep(0.005)

    try:
        r = Engine().run_sync(body, LoadSpec(users=4, duration=1.0, grace=2.0))
    finally:
        release.set()
    assert r.abandoned_users == 1
    assert r.iterations > 50
    assert 0.9 <= r.duration_s < 2.0, r.duration_s  # the 2 s grace would make it >= 3
    assert r.rps == pytest.approx(r.iterations / r.duration_s)
    assert r.rps > 0.5 * r.iterations  # over ~1 s, not ~3 s
    assert sum(row.iterations for row in r.timeline) == r.iterations
    assert all(row.t < 2 for row in r.timeline)  # no rows for the grace


def test_an_async_arrival_issued_just_before_the_end_is_not_lost() -> None:
    """The arrival at 0.1 s and the end at 0.1001 s wake up in the same loop iteration: the
    job task was created but had not started when the end cancelled the idle tasks, so it was
    neither run nor dropped (and 'iterations + dropped == arrivals' failed under load)."""

    async def body() -> None:
        await asyncio.sleep(0)

    for _ in range(3):
        r = asyncio.run(Engine().run_async(body, LoadSpec(rate=10, duration=0.1001)))
        assert r.iterations + r.dropped == 2  # arrivals at 0 s and 0.1 s


# ------------------------------------------------------------------ (2) a blocked event loop
def test_one_long_block_of_the_event_loop_is_saturation_with_its_reason() -> None:
    calls = [0]

    async def body() -> None:
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(1.5)  # a sync call in an async def: the whole loop stops
        await asyncio.sleep(0.01)

    r = asyncio.run(Engine().run_async(body, LoadSpec(users=2, duration=1.0)))
    sat = r.saturation
    assert sat.saturated
    assert sat.loop_blocked_s is not None and 1.3 <= sat.loop_blocked_s < 5.0
    assert "event loop was blocked for 1." in sat.reason
    assert "sync call in an async def" in sat.reason
    assert any("event loop was blocked" in w for w in r.warnings)
    assert Saturation.from_dict(r.to_dict()["saturation"]) == sat


def test_short_hiccups_of_the_loop_are_not_saturation() -> None:
    # one GC-like pause of 50 ms in a 2 s run: neither the p99 rule (one sample) nor a block
    assert not Saturation.judge(0.1, 0.05, lag_over=1, blocked_s=0.05, run_s=2.0).saturated
    # a block of 10 % of a short run, or of >= 1 s in a long one, is
    assert Saturation.judge(0.1, 0.3, lag_over=1, blocked_s=0.3, run_s=2.0).saturated
    assert Saturation.judge(0.1, 1.0, lag_over=1, blocked_s=1.0, run_s=600.0).saturated
    assert not Saturation.judge(0.1, 0.5, lag_over=1, blocked_s=0.5, run_s=600.0).saturated


# ------------------------------------------------------------------ (8) many sync users
def test_2000_sync_users_all_run_and_show_in_every_second_of_the_timeline() -> None:
    """Before: started one by one while the earlier ones ran, ~600-980 users ever ran and no
    row's users was above 0. Also: the GIL switch interval raised for the run is restored."""
    switch_interval = sys.getswitchinterval()
    r = Engine().run_sync(lambda: time.sleep(0.01), LoadSpec(users=2000, duration=3.0))
    assert sys.getswitchinterval() == switch_interval
    assert r.users_not_started == 0
    assert r.peak_users == 2000
    assert len(r.timeline) >= 3
    assert all(row.users > 0 for row in r.timeline), [(x.t, x.users) for x in r.timeline]
    assert r.iterations > 2000


class _FailingThread(threading.Thread):
    """A thread the OS refuses after 3 were started (``can't start new thread``)."""

    started = 0

    def start(self) -> None:
        if self.name.startswith("stressguard-user") and _FailingThread.started >= 3:
            raise RuntimeError("can't start new thread")
        _FailingThread.started += 1
        super().start()


def test_users_whose_thread_cannot_be_created_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync_runner.threading, "Thread", _FailingThread)
    _FailingThread.started = 0
    r = Engine().run_sync(lambda: time.sleep(0.005), LoadSpec(users=5, duration=0.5))
    assert r.users_not_started == 2
    assert r.peak_users == 3
    assert r.iterations > 0
    assert any("2 of 5 users" in w for w in r.warnings), r.warnings
    assert r.to_dict()["users_not_started"] == 2


class _LateThread(threading.Thread):
    """The last user thread gets the CPU only after the run is over (a starved start)."""

    def run(self) -> None:
        if self.name.endswith("-user-3"):
            time.sleep(1.0)
        super().run()


def test_users_started_too_late_to_run_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_runner.threading, "Thread", _LateThread)
    monkeypatch.setattr(sync_runner, "_START_WAIT", 0.2)  # the others do not wait for it
    r = Engine().run_sync(lambda: time.sleep(0.005), LoadSpec(users=4, duration=0.5, grace=0.3))
    assert r.users_not_started == 1
    assert r.abandoned_users == 0  # it never entered an iteration
    assert r.peak_users == 3


def test_an_iterations_run_that_needs_few_users_does_not_count_the_idle_ones() -> None:
    r = Engine().run_sync(lambda: None, LoadSpec(users=8, iterations=2))
    assert r.iterations == 2
    assert r.users_not_started == 0


# ------------------------------------------------------------------ (11a) honest rates
def test_ok_rps_counts_only_successes_while_rps_counts_everything() -> None:
    def body() -> None:
        time.sleep(0.002)
        raise ConnectionError("refused")

    r = Engine().run_sync(body, LoadSpec(users=2, duration=0.6))
    assert r.errors == r.iterations > 0
    assert r.rps > 0
    assert r.ok_rps == 0.0
    assert r.metrics()["ok_rps"] == 0.0
    assert r.to_dict()["ok_rps"] == 0.0


def test_ok_rps_is_successes_per_second_of_the_window_overall_and_per_endpoint() -> None:
    ep = EndpointStats("GET /x")
    for _ in range(30):
        ep.record(0.004)
    for _ in range(10):
        ep.record(0.010, error="HTTPError: 500")
    r = LoadResult(iterations=40, errors=10, duration_s=2.0, endpoints={"GET /x": ep})
    assert r.ok_rps == pytest.approx(15.0)
    assert r.metrics()["ok_rps"] == pytest.approx(15.0)
    assert r.endpoint_metrics()["GET /x"]["ok_rps"] == pytest.approx(15.0)
    assert r.endpoint_metrics()["GET /x"]["rps"] == pytest.approx(20.0)
    assert LoadResult(endpoints={"GET /x": ep}).endpoint_metrics()["GET /x"]["ok_rps"] == 0.0
    merged = LoadResult.from_dict(r.to_dict()).merge(LoadResult.from_dict(r.to_dict()))
    assert merged.ok_rps == pytest.approx(30.0)  # same window, twice the successes
    (ok,) = [m for m in LOAD_METRICS if m.name == "ok_rps"]
    assert ok.higher_is_better and ok.per_endpoint and ok.dimension == "rate"
