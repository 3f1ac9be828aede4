"""ResourceMonitor: sampling, bounded storage, watched processes, peaks, gates, cost."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from pytest_stressguard.core.monitor import MonitorError, ResourceMonitor
from pytest_stressguard.core.trends import is_leak

LEAKER = """
import sys, time
keep = []
print("ready", flush=True)
while True:
    keep.append(bytearray(100_000))  # 100 KB every 10 ms = 10 MB/s
    time.sleep(0.01)
"""

EXITER = """
import time
print("ready", flush=True)
time.sleep(0.4)
"""


def spawn(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def leaker() -> Iterator[subprocess.Popen[str]]:
    proc = spawn(LEAKER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stressguard-monitor"]


def test_start_stop_idempotent_and_joined() -> None:
    mon = ResourceMonitor(interval=0.02)
    mon.stop()  # before start: nothing to do
    with mon:
        assert mon.running
        mon.start()  # again: no second thread
        assert len(monitor_threads()) == 1
        time.sleep(0.2)
    assert not mon.running
    assert monitor_threads() == []
    mon.stop()
    samples = mon.series()
    assert len(samples) >= 3
    s = samples[-1]
    assert s.rss > 1_000_000
    assert s.threads >= 1
    if sys.platform.startswith("linux"):  # stdin, stdout, stderr at least
        assert s.fds is not None and s.fds >= 3
    else:
        assert s.fds is None or s.fds >= 0
    assert [x.t for x in samples] == sorted(x.t for x in samples)
    assert samples[0].uss is not None and samples[0].uss > 0  # first tick reads USS...
    assert samples[1].uss is None  # ...then only every uss_interval
    assert mon.sample_uss() is not None
    assert mon.peak_rss >= max(x.rss for x in samples)


def test_sample_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        ResourceMonitor().sample_now()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_bad_interval(bad: float) -> None:
    with pytest.raises(ValueError):
        ResourceMonitor(interval=bad)


def test_series_is_bounded_and_uniformly_decimated() -> None:
    clock = FakeClock()
    mon = ResourceMonitor(interval=3600, clock=clock, max_points=16, uss_interval=None,
                          children_interval=None)
    with mon:
        for _ in range(999):  # with the start sample: 1000 ticks, 0.1 s apart
            clock.now += 0.1
            mon.sample_now()
        samples = mon.series()
    assert len(samples) <= 17  # capacity plus the partial group being filled
    full = samples[:-1]  # the last one may be a partial group
    gaps = [b.t - a.t for a, b in itertools.pairwise(full)]
    assert max(gaps) - min(gaps) < 1e-6  # uniform spacing after repeated pair merges
    assert samples[0].t < 10 and samples[-1].t > 90  # still covers the whole run
    assert mon.samples_taken == 1001  # start + 999 + stop


def test_watch_targets_and_errors(leaker: subprocess.Popen[str]) -> None:
    mon = ResourceMonitor(interval=0.05)
    assert mon.watch(leaker) == leaker.pid  # object with .pid
    assert mon.watch(leaker.pid) == leaker.pid  # duplicates are fine
    assert mon.watch(psutil.Process(leaker.pid), label="again") == leaker.pid
    with pytest.raises(MonitorError, match="expected a pid"):
        mon.watch("1234")
    with pytest.raises(MonitorError, match="expected a pid"):
        mon.watch(True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(MonitorError, match="no such process"):
        mon.watch(dead.pid)
    assert mon.pids == []  # attached at start
    with mon:
        time.sleep(0.1)
    assert mon.pids == [leaker.pid]
    assert mon.label(leaker.pid) == str(leaker.pid)


def test_watched_leaking_child_is_measured(leaker: subprocess.Popen[str]) -> None:
    with ResourceMonitor(interval=0.05) as mon:
        mon.watch(leaker, label="leaker")
        time.sleep(2.0)
    est = mon.leak_rate(leaker.pid)
    # 10 MB/s = 36 GB/h nominal; allow a slow, busy machine
    assert est.established, est.describe()
    assert est.gate_bytes_per_h is not None and est.gate_bytes_per_h > 5e9
    assert mon.peak_rss_of(leaker.pid) > mon.series(leaker.pid)[0].rss + 5_000_000
    results = mon.check(["leak<1GB/h", "peak_rss<100TB"], pid=leaker.pid)
    assert [r.ok for r in results] == [False, True]
    assert "FAIL leak<1GB/h" in results[0].describe()
    # this process did not leak meanwhile (judged like a gate: small settling is not a leak)
    own = mon.leak_rate()
    assert not is_leak(own, 50e6), own.describe()


def test_watched_process_that_exits_is_noted_not_a_crash() -> None:
    proc = spawn(EXITER)
    try:
        with ResourceMonitor(interval=0.05) as mon:
            mon.watch(proc, label="short-lived")
            time.sleep(0.3)
            proc.wait(timeout=10)  # reaped: gone for good
            time.sleep(0.3)
            assert mon.running
    finally:
        proc.kill()
        proc.wait()
    assert mon.exited(proc.pid)
    assert any("short-lived" in n and "exited" in n for n in mon.notes)
    assert len(mon.series(proc.pid)) >= 2
    assert mon.peak_rss_of(proc.pid) > 0
    assert not mon.exited()


def test_zombie_child_counts_as_exited() -> None:
    proc = spawn(EXITER)
    try:
        with ResourceMonitor(interval=0.05) as mon:
            mon.watch(proc)
            time.sleep(0.9)  # exits after 0.4 s; not reaped yet: a zombie
            assert mon.exited(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux only")
def test_peak_between_samples_is_caught_by_the_kernel_high_water_mark() -> None:
    from pytest_stressguard.core.monitor import _read_hwm

    with ResourceMonitor(interval=3600) as mon:  # no tick will see the spike
        hwm = _read_hwm(os.getpid())
        assert hwm is not None
        spike = max(hwm - psutil.Process().memory_info().rss, 0) + 40_000_000
        block = bytearray(spike)  # zero-filled: every page touched
        del block
    base = mon.series()[0].rss
    assert max(s.rss for s in mon.series()) < base + spike / 2  # the samples missed it
    assert mon.peak_rss >= base + spike * 0.9  # the peak did not


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux fast path")
def test_fast_path_agrees_with_psutil() -> None:
    from pytest_stressguard.core.monitor import _count_fds, _read_stat

    got = _read_stat(os.getpid())
    assert got is not None
    rss, cpu, threads, _start, zombie = got
    proc = psutil.Process()
    assert abs(rss - proc.memory_info().rss) < 2_000_000
    times = proc.cpu_times()
    assert abs(cpu - (times.user + times.system)) < 0.1
    # a daemon thread of an earlier test may be ending between the two reads
    assert abs(threads - proc.num_threads()) <= 1
    assert not zombie
    fds = _count_fds(os.getpid())
    assert fds is not None and abs(fds - proc.num_fds()) <= 1


def test_check_and_metrics() -> None:
    with ResourceMonitor(interval=0.02) as mon:
        start = time.monotonic()
        # keep a core busy for 0.3 s, longer when a busy machine starved the sampler (a leak
        # estimate needs a few samples)
        while time.monotonic() - start < 0.3 or (mon.samples_taken < 12 and
                                                 time.monotonic() - start < 10):
            pass
    m = mon.metrics()
    assert m["peak_rss"] == mon.peak_rss
    assert m["cpu"] is not None and 0.3 < m["cpu"] < 2.0
    assert m["leak"] is not None
    results = mon.check(["peak_rss<100TB", "peak_rss<1KB", "cpu<1000%", "leak<100TB/h"])
    assert [r.ok for r in results] == [True, False, True, True]
    with pytest.raises(ValueError, match="peak_rss<5xx"):
        mon.check(["peak_rss<5xx"])
    with pytest.raises(KeyError, match="not watched"):
        mon.series(1)


def test_sampler_cost_is_small() -> None:
    with ResourceMonitor(interval=0.01) as mon:  # 100 Hz: 10x the default rate
        time.sleep(1.0)
    cost = mon.overhead()
    assert cost["ticks"] >= 20
    # goal < 1 % of a core at 10 Hz, i.e. < 10 % at 100 Hz; generous for a busy machine
    assert cost["cpu_ratio"] < 0.10, cost
