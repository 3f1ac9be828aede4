"""The concurrent runner: races exposed by amplification, honest reports, bounded hangs, and
the interpreter's trace state left as it was found.

Exposure thresholds are set well below what is measured (50 of 50 on a busy 2-core machine) so
they hold under load; locked twins must never fail, which holds by construction.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_stressguard.core import amplify, race
from pytest_stressguard.core.amplify import ProjectFilter
from pytest_stressguard.core.race import (
    ConcurrentResult,
    ConcurrentSpec,
    current_worker,
    run_concurrent,
    run_concurrent_async,
)
from tests.unit import racy_samples as rs

HERE = str(Path(__file__).resolve().parent)
RUNS = 50
MIN_EXPOSED = 40
BACKENDS = ["settrace", "monitoring"] if hasattr(sys, "monitoring") else ["settrace"]


def spec(**kw: Any) -> ConcurrentSpec:
    kw.setdefault("roots", (HERE,))
    kw.setdefault("timeout", 20.0)
    return ConcurrentSpec(**kw)


def exposures(make: Callable[[], Any], body: Callable[[Any], object],
              broken: Callable[[Any], bool], s: ConcurrentSpec, runs: int = RUNS) -> int:
    count = 0
    for _ in range(runs):
        obj = make()
        result = run_concurrent(functools.partial(body, obj), s)
        assert result.outcome == "passed", result.summary()
        count += broken(obj)
    return count


@pytest.fixture(autouse=True)
def _no_leftover_trace_state() -> Iterator[None]:
    """Every test must leave the trace function and switch interval as it found them."""
    trace, interval = sys.gettrace(), sys.getswitchinterval()
    yield
    assert sys.gettrace() is trace
    assert sys.getswitchinterval() == interval
    if hasattr(sys, "monitoring"):
        assert all(sys.monitoring.get_tool(t) != amplify._TOOL_NAME for t in range(6))


# ------------------------------------------------------------------------- races exposed


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_call_write_counter_race_is_exposed_in_most_runs(backend: str) -> None:
    n = exposures(rs.RacyCounter, lambda c: c.increment(), lambda c: c.n != 8,
                  spec(backend=backend))
    assert n >= MIN_EXPOSED, f"exposed in {n} of {RUNS}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_locked_counter_never_fails(backend: str) -> None:
    n = exposures(rs.LockedCounter, lambda c: c.increment(), lambda c: c.n != 8,
                  spec(backend=backend))
    assert n == 0


def test_lazy_singleton_initialised_twice_is_exposed() -> None:
    n = exposures(rs.LazySingleton, lambda s: s.get(), lambda s: len(s.created) != 1, spec())
    assert n >= MIN_EXPOSED, f"exposed in {n} of {RUNS}"


def test_double_checked_singleton_is_created_once() -> None:
    n = exposures(rs.LockedLazySingleton, lambda s: s.get(), lambda s: len(s.created) != 1,
                  spec())
    assert n == 0


def test_dict_check_then_act_is_exposed() -> None:
    n = exposures(rs.SessionStore, lambda s: s.get_or_create("k"),
                  lambda s: len(s.created) != 1, spec())
    assert n >= MIN_EXPOSED, f"exposed in {n} of {RUNS}"


def test_opcode_granularity_splits_a_one_line_read_modify_write() -> None:
    n = exposures(rs.InlineCounter, lambda c: c.increment(), lambda c: c.n != 8,
                  spec(granularity="opcode"))
    assert n >= MIN_EXPOSED, f"exposed in {n} of {RUNS}"


def test_amplification_forces_switches_only_in_project_code() -> None:
    counter = rs.RacyCounter()
    result = run_concurrent(counter.increment, spec(workers=4))
    # 3 lines in increment + 1 in bump per worker; the runner's and stdlib lines never count
    assert result.switches == 4 * 4
    assert result.amplify in ("settrace", "monitoring")
    assert result.warnings == []


def test_switch_every_k_lines() -> None:
    counter = rs.RacyCounter()
    result = run_concurrent(counter.increment, spec(workers=4, switch_every=2))
    assert result.switches == 4 * 2


def test_no_amplify_runs_plain_threads() -> None:
    counter = rs.RacyCounter()
    result = run_concurrent(counter.increment, spec(amplify=False))
    assert (result.amplify, result.switches, result.warnings) == ("off", 0, [])


def test_roots_without_the_code_under_test_warn(tmp_path: Path) -> None:
    counter = rs.RacyCounter()
    result = run_concurrent(counter.increment, spec(roots=(str(tmp_path),)))
    assert result.ok
    assert result.switches == 0
    assert any("no line of the code under test" in w for w in result.warnings)


# ------------------------------------------------------------------------- reports


def test_every_worker_runs_each_round_released_together() -> None:
    seen: list[tuple[int, int] | None] = []
    lock = threading.Lock()

    def body() -> None:
        with lock:
            seen.append(current_worker())

    result = run_concurrent(body, spec(workers=5, rounds=3))
    assert result.ok and result.rounds_completed == 3
    assert sorted(w for w in seen if w) == [(w, r) for w in range(1, 6) for r in range(1, 4)]
    assert current_worker() is None


def test_failure_says_which_worker_and_round_with_traceback() -> None:
    def body() -> None:
        where = current_worker()
        assert where is not None
        if where == (3, 2):
            raise_lost_update()

    result = run_concurrent(body, spec(workers=4, rounds=5))
    assert result.outcome == "failed"
    assert result.rounds_completed == 2  # stops after the failing round
    (failure,) = result.failures
    assert (failure.worker, failure.round, failure.exc_type) == (3, 2, "ValueError")
    assert failure.message == "lost update: 7 != 8"
    assert failure.kind == "ValueError: lost update: 7 != 8"
    assert "raise_lost_update" in failure.traceback_text
    assert "in work" not in failure.traceback_text  # the runner's own frames are cut
    assert isinstance(failure.exception, ValueError)
    text = result.summary()
    assert "1 of 4 workers failed in round 2 of 5" in text
    assert "worker 3, round 2: ValueError: lost update: 7 != 8" in text
    assert result.failure_kinds() == {"ValueError: lost update: 7 != 8": 1}


def raise_lost_update() -> None:
    raise ValueError("lost update: 7 != 8")


def test_same_error_in_many_workers_is_shown_once() -> None:
    def body() -> None:
        raise AssertionError("invariant broken")

    result = run_concurrent(body, spec(workers=3, stop_on_failure=False, rounds=2))
    assert len(result.failures) == 6 and result.rounds_completed == 2
    text = result.summary()
    assert text.count("Traceback") == 1
    assert "same error in: worker 2 (round 1), worker 3 (round 1), worker 1 (round 2)" in text


def test_result_round_trips_through_json() -> None:
    def body() -> None:
        if current_worker() == (2, 1):
            raise KeyError("k")

    result = run_concurrent(body, spec(workers=2))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["outcome"] == "failed"
    assert data["failures"][0]["worker"] == 2
    assert data["failures"][0]["kind"] == "KeyError: 'k'"
    back = ConcurrentResult.from_dict(data)
    assert back.to_dict() == result.to_dict()


def test_contextvars_are_copied_into_workers() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("from caller")
    got: list[str] = []
    run_concurrent(lambda: got.append(var.get()), spec(workers=3))
    assert got == ["from caller"] * 3


def test_async_body_given_to_the_thread_runner_is_refused() -> None:
    async def body() -> None:
        pass

    with pytest.raises(TypeError, match="run_concurrent_async"):
        run_concurrent(body, spec())


# ------------------------------------------------------------------------- hangs


def test_hang_is_reported_within_the_bound_with_its_stack() -> None:
    release = threading.Event()

    def body() -> None:
        if current_worker() == (2, 1):
            wait_for_ever(release)

    start = time.monotonic()
    before = set(threading.enumerate())
    try:
        result = run_concurrent(body, spec(workers=4, rounds=3, timeout=0.5))
    finally:
        release.set()
    assert new_threads_end(before)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0
    assert result.outcome == "hang"
    assert result.hung == [(2, 1)]
    assert result.rounds_completed == 0
    assert "wait_for_ever" in result.hang_stacks[2]
    text = result.summary()
    assert text.startswith("HANG: 1 of 4 workers still running 500.0ms after round 1 of 3")
    assert "worker 2, round 1: still running" in text
    assert result.failure_kinds() == {"hang": 1}


def wait_for_ever(event: threading.Event) -> None:
    event.wait(60)


def new_threads_end(before: set[threading.Thread], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t not in before]:
            return True
        time.sleep(0.01)
    return False


def test_a_hang_leaves_no_worker_stuck_at_the_barrier() -> None:
    release = threading.Event()
    stuck = threading.Event()
    before = set(threading.enumerate())

    def body() -> None:
        if current_worker() == (2, 1):
            stuck.wait(60)

    try:
        result = run_concurrent(body, spec(workers=3, rounds=2, timeout=0.3))
        # the others finished round 1; nobody waits at a round-2 barrier
        assert [t.name for t in threading.enumerate() if t not in before] == ["stressguard-w2-r1"]
    finally:
        stuck.set()
        release.set()
    assert result.hung == [(2, 1)]
    assert new_threads_end(before)


def test_a_worker_that_cannot_start_releases_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "stressguard-w3-r1":
            raise RuntimeError("can't start new thread")
        real_start(self)

    before = set(threading.enumerate())
    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        run_concurrent(lambda: None, spec(workers=4, switch_interval=1e-4))
    monkeypatch.undo()
    assert new_threads_end(before)  # workers 1 and 2 left the barrier; state checked by fixture


# ------------------------------------------------------------------------- trace state


def test_switch_interval_is_lowered_during_the_run_and_restored() -> None:
    during: list[float] = []
    result = run_concurrent(lambda: during.append(sys.getswitchinterval()),
                            spec(workers=2, switch_interval=1e-4))
    assert result.ok
    assert during == [pytest.approx(1e-4)] * 2


def test_state_is_restored_after_a_failure() -> None:
    def body() -> None:
        raise RuntimeError("boom")

    result = run_concurrent(body, spec(workers=2, switch_interval=1e-4))
    assert result.outcome == "failed"  # the autouse fixture checks the restored state


def test_tracer_already_in_the_workers_is_chained_not_replaced() -> None:
    """coverage.py installs its tracer in every new thread via threading.settrace."""
    events: list[tuple[str, str]] = []

    def recorder(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == rs.__file__:
            events.append((frame.f_code.co_name, event))
        return recorder

    threading.settrace(recorder)
    try:
        counter = rs.RacyCounter()
        result = run_concurrent(counter.increment, spec(workers=2, backend="settrace"))
    finally:
        threading.settrace(None)
    assert result.amplify == "settrace-chained"
    assert result.switches == 2 * 4  # ours still switches
    assert ("increment", "line") in events  # theirs still sees the lines
    assert ("bump", "return") in events


def test_a_foreign_tracer_in_the_worker_is_restored_when_it_ends() -> None:
    seen: list[object] = []

    def foreign(frame: FrameType, event: str, arg: Any) -> Any:
        return None

    def probe() -> None:
        seen.append(sys.gettrace())

    threading.settrace(foreign)
    try:
        enter = amplify._TraceAmplifier(ProjectFilter((HERE,)), 1, "line").thread_enter

        def worker() -> None:
            enter()()
            probe()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
    finally:
        threading.settrace(None)
    assert seen == [foreign]


@pytest.mark.skipif(not hasattr(sys, "monitoring"), reason="sys.monitoring is 3.12+")
def test_monitoring_falls_back_to_settrace_when_no_tool_id_is_free() -> None:
    mon: Any = getattr(sys, "monitoring")  # noqa: B009 - absent before 3.12
    taken = []
    for tool in amplify._TOOL_IDS:
        if mon.get_tool(tool) is None:
            mon.use_tool_id(tool, "test-occupier")
            taken.append(tool)
    try:
        counter = rs.RacyCounter()
        result = run_concurrent(counter.increment, spec(workers=2))
    finally:
        for tool in taken:
            mon.free_tool_id(tool)
    assert result.amplify == "settrace"
    assert any("tool id" in w for w in result.warnings)


# ------------------------------------------------------------------------- project filter


def test_project_filter_keeps_project_files_only(tmp_path: Path) -> None:
    wanted = ProjectFilter((HERE,))
    assert wanted(rs.__file__)
    assert wanted(__file__)
    assert not wanted(threading.__file__)  # stdlib
    assert not wanted(pytest.__file__)  # site-packages
    assert not wanted(race.__file__)  # this package
    assert not wanted("<string>")
    assert not wanted("<frozen importlib._bootstrap>")
    assert not wanted(str(tmp_path / "elsewhere.py"))


def test_project_filter_excludes_a_virtualenv_inside_the_project(tmp_path: Path) -> None:
    venv_lib = tmp_path / ".venv" / "lib" / "python3" / "site-packages" / "dep"
    venv_lib.mkdir(parents=True)
    wanted = ProjectFilter((str(tmp_path),), exclude=(str(tmp_path / "build"),))
    assert wanted(str(tmp_path / "app" / "models.py"))
    assert not wanted(str(venv_lib / "mod.py"))
    assert not wanted(str(tmp_path / "build" / "gen.py"))


def test_project_filter_defaults_to_the_current_directory() -> None:
    assert ProjectFilter().roots == (os.path.normcase(os.path.realpath(os.getcwd())),)


# ------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"workers": 0}, "workers=0"),
        ({"workers": 2.5}, "workers=2.5"),
        ({"rounds": -1}, "rounds=-1"),
        ({"timeout": 0}, "timeout=0"),
        ({"switch_interval": 0}, "switch_interval=0"),
        ({"switch_every": 0}, "switch_every=0"),
        ({"granularity": "word"}, "granularity='word'"),
        ({"amplify": "yes"}, "amplify='yes'"),
        ({"roots": (1,)}, "roots"),
    ],
)
def test_bad_spec_names_the_argument(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        ConcurrentSpec(**kwargs)


def test_spec_accepts_a_single_root_path(tmp_path: Path) -> None:
    assert ConcurrentSpec(roots=tmp_path).roots == (str(tmp_path),)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- async


def test_async_tasks_are_released_together_and_interleave_at_awaits() -> None:
    counter = rs.AsyncRacyCounter()
    result = asyncio.run(run_concurrent_async(counter.increment, spec(workers=8)))
    assert result.ok and result.amplify == "await"
    assert counter.n == 1  # every task read 0 before any wrote


def test_async_failure_says_which_worker_and_round() -> None:
    async def body() -> None:
        await asyncio.sleep(0)
        if current_worker() == (4, 2):
            raise ValueError("async boom")

    result = asyncio.run(run_concurrent_async(body, spec(workers=4, rounds=3)))
    assert result.outcome == "failed" and result.rounds_completed == 2
    (failure,) = result.failures
    assert (failure.worker, failure.round, failure.kind) == (4, 2, "ValueError: async boom")
    assert "in body" in failure.traceback_text


def test_async_hang_is_reported_and_cancelled() -> None:
    cancelled: list[int] = []

    async def body() -> None:
        where = current_worker()
        assert where is not None
        if where[0] == 2:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(where[0])
                raise

    start = time.monotonic()
    result = asyncio.run(run_concurrent_async(body, spec(workers=3, timeout=0.3)))
    assert time.monotonic() - start < 5.0
    assert result.outcome == "hang" and result.hung == [(2, 1)]
    assert result.failures == []  # our cancellation is not the body's failure
    assert "body" in result.hang_stacks[2]
    assert cancelled == [2]
