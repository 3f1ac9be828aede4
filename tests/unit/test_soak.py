"""Soak runs on a corpus of real memory behaviours, time-scaled to a few seconds each.

How the short windows are judged: leak rates are bytes per wall-clock hour of the window, and
the limit is not scaled (see core/soak.py). The corpus runs at up to 200 iterations/s (5 ms
think time), so even on a loaded machine (>= 50 it/s) the smallest leak, 5 KB per iteration, is
>= 900 MB/h; the limit used here, 50 MB/h, is 18x below that. Every non-leak must stay under it:
a cache that warms up and then plateaus, large temporaries that are freed, garbage in reference
cycles that the collector frees, and an idle body.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_stressguard.core.monitor import ResourceMonitor
from pytest_stressguard.core.soak import SoakResult, SoakSpec, run_soak, run_soak_async
from pytest_stressguard.core.thresholds import ThresholdError, parse_thresholds

LIMIT = 50e6  # bytes per hour

CORPUS_SPEC = SoakSpec(
    duration=4.0, warmup=1.0, think_time=0.005, sample_interval=0.05, leak_limit=LIMIT
)


# --------------------------------------------------------------------------- the corpus
def leak_100k() -> Callable[[], None]:
    keep: list[bytes] = []

    def leaking_100k_body() -> None:
        # filled, not bytes(100_000): calloc'd zero pages are never touched, so they would
        # not be resident and RSS would see only a fraction of the leak (memray sees it all)
        keep.append(b"L" * 100_000)

    return leaking_100k_body


def leak_5k() -> Callable[[], None]:
    keep: list[bytes] = []

    def leaking_5k_body() -> None:
        keep.append(b"x" * 5_000)

    return leaking_5k_body


def warm_cache() -> Callable[[], bytes]:
    cache: dict[int, bytes] = {}
    counter = [0]

    def cached_body() -> bytes:  # 100 keys x 10 KB: full after 100 iterations, then stable
        counter[0] += 1
        key = counter[0] % 100
        if key not in cache:
            cache[key] = bytes(10_000)
        return cache[key]

    return cached_body


def big_temporaries() -> Callable[[], None]:
    def temporary_body() -> None:
        block = bytearray(20_000_000)  # 20 MB, zero-filled (every page touched), then freed
        block[-1] = 1
        del block

    return temporary_body


def gc_cycles() -> Callable[[], None]:
    def cyclic_body() -> None:  # a ring of 20 dicts carrying 5 KB: only gc can free it
        ring: list[dict[str, object]] = [{} for _ in range(20)]
        for i, node in enumerate(ring):
            node["next"] = ring[(i + 1) % len(ring)]
        ring[0]["payload"] = bytearray(5_000)

    return cyclic_body


def idle() -> Callable[[], None]:
    def idle_body() -> None:
        pass

    return idle_body


def leak_gate(result: SoakResult, who: str = "this process") -> bool:
    gates = [r for r in result.thresholds if r.threshold.metric == "leak" and r.note.startswith(who)]
    assert len(gates) == 1, result.describe()
    return gates[0].ok


@pytest.mark.parametrize("make", [leak_100k, leak_5k], ids=["100KB/iter", "5KB/iter"])
def test_leaks_are_caught_and_their_sites_named(make: Callable[[], Callable[[], None]],
                                                tmp_path: Path) -> None:
    body = make()
    result = run_soak(body, CORPUS_SPEC, alloc_dir=str(tmp_path))
    assert result.load is not None and result.load.iterations >= 100
    assert result.leak.established, result.describe()
    assert not leak_gate(result), result.describe()
    assert not result.ok
    assert result.leak.gate_bytes_per_h is not None and result.leak.gate_bytes_per_h > 10 * LIMIT
    # the site that grew is named: the body's own line, in this file
    assert result.alloc_sites, result.describe()
    top = result.alloc_sites[0]
    assert top.function == body.__name__
    assert top.location.startswith(__file__ + ":")
    assert top.size_bytes >= 20 * 5_000
    assert list(tmp_path.iterdir()) == []  # memray's capture is gone


def test_leak_into_memory_freed_earlier_is_caught() -> None:
    # A leaking soak with its memray window, then everything freed: the allocator keeps that
    # memory resident for reuse, and without the soak's clean start (gc + malloc_trim) the next
    # 5 KB/iteration leak refilled it with RSS exactly flat (seen: "+0B/h" in every run).
    before = SoakSpec(duration=1.5, think_time=0.005, leak_limit=LIMIT, alloc_window=0.5)
    assert not run_soak(leak_100k(), before).ok
    result = run_soak(leak_5k(), CORPUS_SPEC, track_allocs=False)
    assert result.leak.established, result.describe()
    assert not leak_gate(result)


@pytest.mark.parametrize(
    "make", [warm_cache, big_temporaries, gc_cycles, idle],
    ids=["cache-plateau", "freed-temporaries", "gc-cycles", "idle"],
)
def test_non_leaks_are_not_flagged(make: Callable[[], Callable[[], object]]) -> None:
    result = run_soak(make(), CORPUS_SPEC)
    assert result.load is not None and result.load.iterations >= 100
    assert result.load.errors == 0
    assert leak_gate(result), result.describe()
    assert result.ok, result.describe()
    assert result.alloc_sites == []  # no memray window without a leak
    assert result.peak_rss > 0
    assert result.memory and len(result.memory) <= 120


# --------------------------------------------------------------------------- watched children
CHILD_LEAKS = """
import time
keep = []
print("ready", flush=True)
while True:
    keep.append(bytearray(100_000))  # 10 MB/s
    time.sleep(0.01)
"""

CHILD_PLATEAUS = """
import time
cache = [bytearray(1_000_000) for _ in range(30)]  # warm-up: 30 MB, then nothing new
print("ready", flush=True)
while True:
    scratch = bytearray(2_000_000)  # a temporary, freed every time
    del scratch
    time.sleep(0.01)
"""


@pytest.fixture
def children() -> Iterator[dict[str, subprocess.Popen[str]]]:
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, code in (("leaker", CHILD_LEAKS), ("plateau", CHILD_PLATEAUS)):
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    text=True)
            procs[name] = proc
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)


def test_watched_child_that_leaks_is_caught_and_one_that_plateaus_is_not(
    children: dict[str, subprocess.Popen[str]],
) -> None:
    def client_body() -> None:
        time.sleep(0.005)

    result = run_soak(client_body, CORPUS_SPEC, watch=children)
    by_label = {w.label: w for w in result.watched.values()}
    assert set(by_label) == {"leaker", "plateau"}
    leaker, plateau = by_label["leaker"], by_label["plateau"]
    assert leaker.leak.established, leaker.leak.describe()
    assert not leak_gate(result, "watched leaker"), result.describe()
    assert leak_gate(result, "watched plateau"), result.describe()
    assert leak_gate(result), result.describe()  # this process is fine
    assert result.alloc_sites == []  # the leak is not in this process
    assert plateau.peak_rss >= 30_000_000
    assert not leaker.exited and not plateau.exited
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data["watched_memory"]) == {str(leaker.pid), str(plateau.pid)}
    assert {w["label"] for w in data["watched"]} == {"leaker", "plateau"}


# --------------------------------------------------------------------------- drift, sla, data
def test_latency_drift_is_measured_and_gated() -> None:
    spec = SoakSpec(duration=2.0, warmup=0.2, sample_interval=0.05, drift_limit=0.2,
                    sla=parse_thresholds(["errors==0", "peak_rss<100TB", "drift<500%", "cpu<1000%"]))
    start = time.perf_counter()

    def slowing_body() -> None:  # 2 ms at the start, 8 ms at the end
        frac = min(1.0, (time.perf_counter() - start) / spec.duration)
        time.sleep(0.002 + 0.006 * frac)

    result = run_soak(slowing_body, spec)
    assert result.drift is not None and result.drift > 0.5, result.describe()
    assert result.drift_first_s is not None and result.drift_last_s is not None
    assert result.drift_last_s > result.drift_first_s
    drift_gate = [r for r in result.thresholds if r.threshold.metric == "drift"]
    assert len(drift_gate) == 2  # the drift gate and the sla entry
    assert not drift_gate[0].ok and "slower" in drift_gate[0].note
    assert drift_gate[1].ok  # drift<500%
    sla = {r.threshold.expr: r.ok for r in result.thresholds}
    assert sla["errors==0"] and sla["peak_rss<100TB"] and sla["cpu<1000%"]
    assert "FAIL |drift|<=20.00%" in result.describe()


def test_a_drift_within_the_runs_own_spread_does_not_fail() -> None:
    """Slow and fast spells with no trend (a service's weather): the first part happens to be
    fast and the last part slow, so the two medians differ by ~+200 %, but the run varied that
    much all along; only a trend established over the whole window is a drift."""
    weather = [2, 2, 6, 2, 6, 6, 6, 6, 6, 6, 2, 2, 2, 2, 2, 2, 6, 6, 2, 6]  # ms per 0.1 s slice
    spec = SoakSpec(duration=2.0, sample_interval=0.05, drift_limit=0.2)
    start: list[float] = []

    def body() -> None:
        now = time.perf_counter()
        start[:] = start or [now]
        spell = weather[min(int((now - start[0]) / 0.1), len(weather) - 1)]
        time.sleep(spell / 1000)

    result = run_soak(body, spec)
    assert result.drift is not None and result.drift > 0.5, result.describe()
    assert not result.drift_established and result.drift_interval is not None
    (gate,) = [r for r in result.thresholds if r.threshold.metric == "drift"]
    assert gate.ok and "within the run's own spread" in gate.note, result.describe()


def test_steady_body_does_not_drift_and_errors_are_counted() -> None:
    spec = SoakSpec(duration=2.0, warmup=0.2, sample_interval=0.05, drift_limit=0.5,
                    sla=parse_thresholds(["errors==0"]))
    calls = [0]

    def steady_body() -> None:
        calls[0] += 1
        time.sleep(0.004)
        if calls[0] % 50 == 0:
            raise ValueError("every 50th call fails")

    result = run_soak(steady_body, spec)
    assert result.drift is not None and abs(result.drift) <= 0.5, result.describe()
    assert result.load is not None and result.load.errors >= 1
    assert [r.ok for r in result.thresholds] == [True, False]  # drift ok, errors==0 fails


def test_too_few_iterations_for_drift_is_not_measured() -> None:
    spec = SoakSpec(duration=0.6, sample_interval=0.05, drift_limit=0.2)
    result = run_soak(lambda: time.sleep(0.25), spec)
    assert result.drift is None
    assert "too few successful iterations" in result.drift_note
    gate = result.thresholds[0]
    assert not gate.ok and gate.value is None


def test_async_soak_and_plain_data() -> None:
    spec = SoakSpec(duration=1.5, users=2, warmup=0.3, sample_interval=0.05, leak_limit=LIMIT)

    async def async_body() -> None:
        await asyncio.sleep(0.002)

    result = asyncio.run(run_soak_async(async_body, spec))
    assert result.load is not None and result.load.iterations > 50
    assert result.drift is not None
    assert leak_gate(result)
    data = json.loads(json.dumps(result.to_dict(include_load=True)))
    assert data["leak_bytes_per_h"] == result.leak.bytes_per_h
    assert data["leak_bound_bytes_per_h"] == result.leak.bound
    assert data["memory"] and all(len(p) == 2 for p in data["memory"])
    assert data["load"]["iterations"] == result.load.iterations
    assert data["spec"]["users"] == 2
    metrics = result.metrics()
    assert {"leak", "drift", "peak_rss", "cpu", "p95", "rps", "errors"} <= set(metrics)


def test_a_running_monitor_is_reused_and_left_running() -> None:
    mon = ResourceMonitor(interval=0.05).start()
    try:
        time.sleep(0.2)
        result = run_soak(lambda: time.sleep(0.005), SoakSpec(duration=1.0, sample_interval=0.05),
                          monitor=mon)
        assert mon.running
        assert result.memory[0][0] >= 0.0  # times are relative to the soak's start
        assert result.leak.n >= 6
    finally:
        mon.stop()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"duration": 0}, "duration"),
        ({"duration": 1, "warmup": 1}, "warmup"),
        ({"duration": 1, "users": 0}, "users"),
        ({"duration": 1, "leak_limit": -1.0}, "leak_limit"),
        ({"duration": 1, "drift_part": 0.9}, "drift_part"),
        ({"duration": 1, "sample_interval": 0}, "sample_interval"),
    ],
)
def test_spec_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SoakSpec(**kwargs)  # type: ignore[arg-type]


def test_bad_sla_fails_before_the_soak() -> None:
    with pytest.raises(ThresholdError):
        parse_thresholds(["p95<5xx"])
    with pytest.raises(ValueError, match="sla must hold parsed thresholds"):
        SoakSpec(duration=1, sla=("p95<5xx",))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- allocation sites
def test_alloc_tracker_names_sites_and_ignores_collected_cycles(tmp_path: Path) -> None:
    from pytest_stressguard.core.allocs import AllocationTracker

    keep: list[bytes] = []

    def holds_memory() -> None:
        keep.append(b"k" * 50_000)

    def makes_garbage_cycles() -> None:
        node: dict[str, object] = {"payload": bytearray(50_000)}
        node["self"] = node

    with AllocationTracker(tmp_path) as tracker:
        for _ in range(40):
            holds_memory()
            makes_garbage_cycles()
    assert tracker.available and tracker.note is None
    names = [s.function for s in tracker.top_sites(10)]
    assert names[0] == "holds_memory"
    assert "makes_garbage_cycles" not in names  # collected before the window closed
    top = tracker.top_sites(1)[0]
    assert top.size_bytes >= 40 * 50_000 and top.count >= 40
    assert "holds_memory" in top.describe()
    assert type(top).from_dict(top.to_dict()) == top
    assert list(tmp_path.iterdir()) == []


def test_alloc_tracker_degrades_when_memray_is_busy(tmp_path: Path) -> None:
    memray = pytest.importorskip("memray")
    from pytest_stressguard.core.allocs import AllocationTracker

    outer = tmp_path / "outer"
    outer.mkdir()
    busy = memray.Tracker(str(outer / "capture.bin"))  # e.g. pytest-memray is active
    with busy, AllocationTracker(tmp_path) as tracker:
        data = [bytes(1000) for _ in range(10)]
    assert data
    assert not tracker.available
    assert tracker.note is not None and "memray could not start" in tracker.note
    assert tracker.top_sites() == []
    assert [p.name for p in tmp_path.iterdir()] == ["outer"]  # nothing of ours left behind


def test_alloc_tracker_cleans_up_and_propagates_errors(tmp_path: Path) -> None:
    from pytest_stressguard.core.allocs import AllocationTracker

    with pytest.raises(KeyError, match="boom"), AllocationTracker(tmp_path):
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_aggregate_sites_groups_by_innermost_user_frame() -> None:
    from pytest_stressguard.core import allocs

    runner = allocs.__file__
    records = [
        ([("f", "/app/a.py", 3), ("g", "/app/b.py", 9)], 1000, 2),
        ([("f", "/app/a.py", 3), ("h", "/app/c.py", 1)], 3000, 1),
        ([("run", runner, 10)], 50, 1),  # only runner frames
        ([("x", "/app/x.py", 7)], 2000, 5),
    ]
    sites = allocs.aggregate_sites(records)
    assert [(s.function, s.location, s.size_bytes, s.count) for s in sites] == [
        ("f", "/app/a.py:3", 4000, 3),
        ("x", "/app/x.py:7", 2000, 5),
        ("<native or runner>", "?", 50, 1),
    ]
    assert sites[0].stack == ("h (/app/c.py:1)",)  # context of the biggest contributor
