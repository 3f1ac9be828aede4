"""Soak runs: the body under steady load for a long time while memory is sampled.

:func:`run_soak` (threads) and :func:`run_soak_async` (tasks) run the body with the load engine
(``users``, ``think_time``, ``warmup`` as in a load test), sample this process and any watched
process with :class:`~.monitor.ResourceMonitor`, and decide:

* **leak** — for this process and each watched one: the robust growth rate of RSS after the
  warm-up (:func:`.trends.estimate_leak`: Theil–Sen slope, Sen's 95 % interval, growth must
  persist into the last half). The gate fails when established growth exceeds ``leak_limit``.
* **drift** — ``median(latency of the last part) / median(first part) - 1``, parts being the
  first and last ``drift_part`` (20 %) of the measured window. The gate is two-sided
  (``|drift| <= drift_limit``: "stable within ±20 %"); the signed value is reported. Like the
  leak gate, it is judged against the run's own spread: the window is cut in 20 slices and the
  Theil–Sen trend of their medians, with Sen's 95 % interval, must exclude "no change" in the
  drift's direction. Two medians of a noisy service differ by ±20 % from run to run (12 runs
  of a steady 72 s soak gave -21 % .. +17 %); that is noise, not drift, and does not fail.
* **sla** — any thresholds, evaluated on the load metrics plus ``leak``, ``drift``,
  ``peak_rss`` and ``cpu``.

How a time-scaled soak is judged
--------------------------------
Leak rates are bytes per **wall-clock hour of the window actually run**, and the limit is never
scaled. A time-scaled soak (``--stressguard-time-scale=0.05``) keeps the load (users,
think time, hence iterations per second) and shortens the time, so a leak of ``B`` bytes per
iteration shows the same bytes/h in 6 minutes as in 2 hours. What a short window loses is
resolution: the confidence bound is wider, and growth smaller than the RSS noise (pages,
allocator arenas: tens of KB to a few MB) over the window cannot be established. The result
reports the bound; when it is wider than the limit, a warning says the window cannot resolve the
limit (a pass then means "no leak big enough to see in this window", not "below the limit").

A clean start
-------------
RSS hides a leak that refills memory freed earlier: the allocator keeps freed memory resident
and hands it out again, so RSS stays flat until that pool is used up (a leak right after a test
that freed 80 MB shows nothing for a while). The soak therefore starts with ``gc.collect()`` and,
with glibc, ``malloc_trim(0)``, which give freed memory back to the OS, so growth shows from the
first iterations. Both happen before the measured window and cost a few milliseconds.

Allocation sites
----------------
When this process leaks beyond the limit and ``track_allocs`` is on, the body runs once more for
a short window (``alloc_window``, default 10 % of the duration, 1..30 s) under memray
(:class:`~.allocs.AllocationTracker`), and the sites still holding memory at its end are
reported. A separate window keeps memray's overhead and its own memory out of the measured
slope and latencies, and costs time only when a leak was found.
"""

from __future__ import annotations

import ctypes
import gc
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .allocs import AllocationTracker, AllocSite
from .drift import DriftProbe
from .engine import Engine
from .loadspec import LoadSpec
from .metrics import Metric
from .monitor import ResourceMonitor
from .result import LoadResult
from .thresholds import Threshold, ThresholdResult, evaluate
from .trends import LeakEstimate, estimate_leak, is_leak
from .units import format_duration, format_ratio, format_size, format_size_rate

__all__ = [
    "SOAK_METRICS",
    "SoakResult",
    "SoakSpec",
    "WatchedResult",
    "run_soak",
    "run_soak_async",
]

T = TypeVar("T")

# leak, peak_rss and cpu are the monitor's (core.monitor.MONITOR_METRICS); the rest are the load's.
SOAK_METRICS: tuple[Metric, ...] = (
    Metric("drift", "ratio", "median latency of the last part of a soak vs the first (signed)",
           signed=True),
)

#: Points of each memory series kept for reports (the monitor keeps more for the estimate).
REPORT_POINTS = 120
#: Unreachable objects found by gc.collect() after a leaking soak worth a warning.
GARBAGE_NOTE_OBJECTS = 100


@dataclass(frozen=True)
class SoakSpec:
    """What to run. Seconds, bytes per hour, ratios (build from user strings with core.units).

    ``duration`` includes ``warmup`` (as for load tests). ``leak_limit`` (bytes/h) and
    ``drift_limit`` (ratio, 0.2 = ±20 %) are gates; None means report only.
    """

    duration: float
    users: int = 1
    think_time: float = 0.0
    warmup: float = 0.0
    leak_limit: float | None = None
    drift_limit: float | None = None
    sample_interval: float = 0.1
    sla: tuple[Threshold, ...] = ()
    drift_part: float = 0.2
    alloc_window: float | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid soak spec: {msg}")

        if not (math.isfinite(self.duration) and self.duration > 0):
            raise bad(f"duration must be > 0 seconds, got {self.duration!r}")
        if isinstance(self.users, bool) or not isinstance(self.users, int) or self.users < 1:
            raise bad(f"users must be an integer >= 1, got {self.users!r}")
        for name in ("think_time", "warmup"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise bad(f"{name} must be >= 0 seconds, got {v!r}")
        if self.warmup >= self.duration:
            raise bad(f"warmup ({self.warmup:g}s) must be shorter than duration "
                      f"({self.duration:g}s)")
        for name in ("leak_limit", "drift_limit"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise bad(f"{name} must be >= 0, got {v!r}")
        if not (math.isfinite(self.sample_interval) and self.sample_interval > 0):
            raise bad(f"sample_interval must be > 0 seconds, got {self.sample_interval!r}")
        if not 0 < self.drift_part <= 0.5:
            raise bad(f"drift_part must be in (0, 0.5], got {self.drift_part!r}")
        if self.alloc_window is not None and not (
            math.isfinite(self.alloc_window) and self.alloc_window > 0
        ):
            raise bad(f"alloc_window must be > 0 seconds, got {self.alloc_window!r}")
        if not all(isinstance(t, Threshold) for t in self.sla):  # one SLA type, parsed once
            raise bad(f"sla must hold parsed thresholds (thresholds.parse_thresholds), "
                      f"got {self.sla!r}")

    @property
    def measured(self) -> float:
        return self.duration - self.warmup

    @property
    def effective_alloc_window(self) -> float:
        if self.alloc_window is not None:
            return self.alloc_window
        return min(30.0, max(1.0, 0.1 * self.duration))

    def load_spec(self, duration: float | None = None, warmup: float | None = None) -> LoadSpec:
        return LoadSpec(
            users=self.users,
            duration=self.duration if duration is None else duration,
            think_time=self.think_time,
            warmup=self.warmup if warmup is None else warmup,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration": self.duration,
            "users": self.users,
            "think_time": self.think_time,
            "warmup": self.warmup,
            "leak_limit": self.leak_limit,
            "drift_limit": self.drift_limit,
            "sample_interval": self.sample_interval,
            "sla": [t.expr for t in self.sla],
            "drift_part": self.drift_part,
            "alloc_window": self.alloc_window,
        }


@dataclass(frozen=True)
class WatchedResult:
    """Leak and peak of one watched process."""

    pid: int
    label: str
    leak: LeakEstimate
    peak_rss: int
    exited: bool
    memory: list[tuple[float, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "label": self.label,
            "leak_bytes_per_h": self.leak.bytes_per_h,
            "leak_bound_bytes_per_h": self.leak.bound,
            "leak_gate_bytes_per_h": self.leak.gate_bytes_per_h,
            "leak": self.leak.to_dict(),
            "peak_rss": self.peak_rss,
            "exited": self.exited,
        }


@dataclass
class SoakResult:
    """Everything a soak measured and decided. Times in seconds, memory in bytes."""

    spec: SoakSpec
    load: LoadResult | None
    duration_s: float
    leak: LeakEstimate
    peak_rss: int
    cpu: float | None
    memory: list[tuple[float, int]]
    drift: float | None = None
    drift_first_s: float | None = None
    drift_last_s: float | None = None
    drift_note: str = ""
    #: 95 % interval of the whole window's change, as a ratio of the first part's median.
    drift_interval: tuple[float, float] | None = None
    drift_established: bool = False
    watched: dict[int, WatchedResult] = field(default_factory=dict)
    alloc_sites: list[AllocSite] = field(default_factory=list)
    alloc_note: str | None = None
    thresholds: list[ThresholdResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sampler: dict[str, float] = field(default_factory=dict)
    gc_unreachable: int | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.thresholds)

    @property
    def failures(self) -> list[ThresholdResult]:
        return [r for r in self.thresholds if not r.ok]

    def metrics(self) -> dict[str, float | None]:
        """Threshold metrics: the load metrics plus ``leak`` (B/h, this process), ``drift``
        (ratio, signed), ``peak_rss`` (B) and ``cpu`` (ratio of one core)."""
        out: dict[str, float | None] = dict(self.load.metrics()) if self.load else {}
        out["leak"] = self.leak.gate_bytes_per_h
        out["drift"] = self.drift
        out["peak_rss"] = float(self.peak_rss)
        out["cpu"] = self.cpu
        return out

    def describe(self) -> str:
        """A multi-line human summary (failure messages, ``-v`` sections)."""
        lines = [f"soak {format_duration(self.duration_s)}: leak {self.leak.describe()}"]
        for w in self.watched.values():
            lines.append(f"  watched {w.label} (pid {w.pid}): leak {w.leak.describe()}, "
                         f"peak {format_size(w.peak_rss)}" + (" (exited)" if w.exited else ""))
        if self.drift is not None:
            lines.append(f"  drift {self.drift * 100:+.1f}% (median {self.drift_first_s:.4g}s "
                         f"-> {self.drift_last_s:.4g}s)")
        elif self.drift_note:
            lines.append(f"  drift: {self.drift_note}")
        lines.append(f"  peak RSS {format_size(self.peak_rss)}")
        if self.alloc_sites:
            lines.append("  top allocation sites still holding memory:")
            lines += [f"    {s.describe()}" for s in self.alloc_sites]
        elif self.alloc_note:
            lines.append(f"  {self.alloc_note}")
        lines += [f"  {r.describe()}" for r in self.thresholds]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self, include_load: bool = False) -> dict[str, Any]:
        """Plain data (the ``soak`` block of the JSON report; ``load`` too when asked)."""
        out: dict[str, Any] = {
            "spec": self.spec.to_dict(),
            "duration_s": self.duration_s,
            "leak_bytes_per_h": self.leak.bytes_per_h,
            "leak_lower_bytes_per_h": self.leak.lower,
            "leak_upper_bytes_per_h": self.leak.upper,
            "leak_bound_bytes_per_h": self.leak.bound,
            "leak_gate_bytes_per_h": self.leak.gate_bytes_per_h,
            "leak_established": self.leak.established,
            "leak_reason": self.leak.reason,
            "leak": self.leak.to_dict(),
            "drift": self.drift,
            "drift_first_ms": None if self.drift_first_s is None else self.drift_first_s * 1e3,
            "drift_last_ms": None if self.drift_last_s is None else self.drift_last_s * 1e3,
            "drift_note": self.drift_note,
            "drift_interval": None if self.drift_interval is None else list(self.drift_interval),
            "drift_established": self.drift_established,
            "peak_rss": self.peak_rss,
            "cpu": self.cpu,
            "memory": [[t, rss] for t, rss in self.memory],
            "watched": [w.to_dict() for w in self.watched.values()],
            "watched_memory": {
                str(pid): [[t, rss] for t, rss in w.memory] for pid, w in self.watched.items()
            },
            "alloc_sites": [s.to_dict() for s in self.alloc_sites],
            "alloc_note": self.alloc_note,
            "thresholds": [r.to_dict() for r in self.thresholds],
            "warnings": list(self.warnings),
            "sampler": dict(self.sampler),
            "gc_unreachable": self.gc_unreachable,
            "ok": self.ok,
        }
        if include_load:
            out["load"] = None if self.load is None else self.load.to_dict()
        return out


# ------------------------------------------------------------------------------ running
def _targets(watch: Iterable[object] | Mapping[str, object]) -> list[tuple[object, str | None]]:
    if isinstance(watch, Mapping):
        return [(target, str(label)) for label, target in watch.items()]
    return [(target, None) for target in watch]


class _Session:
    """Shared set-up and decision logic of the sync and async runners."""

    def __init__(
        self,
        spec: SoakSpec,
        watch: Iterable[object] | Mapping[str, object],
        monitor: ResourceMonitor | None,
        clock: Callable[[], float],
    ) -> None:
        self.spec = spec
        self.own_monitor = monitor is None
        self.monitor = monitor if monitor is not None else ResourceMonitor(spec.sample_interval)
        self.pids = [self.monitor.watch(t, label) for t, label in _targets(watch)]
        self.probe = DriftProbe(spec, clock)
        self.clock = clock
        self.origin = 0.0
        self.end = 0.0
        self.trimmed = False
        self.wall0 = 0.0

    def begin(self) -> None:
        gc.collect()
        self.trimmed = _trim_allocator()
        if not self.monitor.running:
            self.monitor.start()
        self.origin = self.monitor.now()
        self.wall0 = time.monotonic()
        self.probe.begin()

    def finish(self) -> None:
        if self.own_monitor:
            self.monitor.stop()
        else:
            self.monitor.sample_now()
        self.end = self.monitor.now()

    def _leak(self, pid: int | None) -> LeakEstimate:
        pts = [(t, rss) for t, rss in self.monitor.rss_points(pid)
               if self.origin <= t <= self.end]
        return estimate_leak([p[0] for p in pts], [float(p[1]) for p in pts],
                             warmup=self.spec.warmup, origin=self.origin)

    def _memory(self, pid: int | None) -> list[tuple[float, int]]:
        pts = [(round(t - self.origin, 3), rss) for t, rss in self.monitor.rss_points(pid)
               if self.origin <= t <= self.end]
        return _downsample(pts, REPORT_POINTS)

    def _heap_leak(self) -> LeakEstimate | None:
        pts = [(t, b) for t, b in self.monitor.heap_points() if self.origin <= t <= self.end]
        if len(pts) < 8:
            return None
        return estimate_leak([p[0] for p in pts], [float(p[1]) for p in pts],
                             warmup=self.spec.warmup, origin=self.origin)

    def _own_leak(self) -> LeakEstimate:
        """This process: RSS, unless the live heap shows growth RSS cannot (a leak that refills
        memory the allocator kept from earlier tests leaves RSS flat for a while)."""
        rss = self._leak(None)
        heap = self._heap_leak()
        if heap is None or not heap.established:
            return rss
        if rss.established and (rss.gate_bytes_per_h or 0) >= (heap.gate_bytes_per_h or 0):
            return rss
        return replace(heap, reason=f"live heap (malloc in use): {heap.reason}; "
                                    f"RSS alone: {rss.describe()}")

    def decide(self, load: LoadResult | None) -> SoakResult:
        spec, mon = self.spec, self.monitor
        leak = self._own_leak()
        drift_v, first, last, note = self.probe.result()
        interval = self.probe.trend(first) if first is not None else None
        established = (drift_v is not None and interval is not None and
                       (interval[0] > 0 if drift_v > 0 else interval[1] < 0))
        result = SoakResult(
            spec=spec,
            load=load,
            duration_s=time.monotonic() - self.wall0,
            leak=leak,
            peak_rss=mon.peak_rss,
            cpu=mon.cpu_ratio(),
            memory=self._memory(None),
            drift=drift_v,
            drift_first_s=first,
            drift_last_s=last,
            drift_note=note,
            drift_interval=interval,
            drift_established=established,
            sampler=mon.overhead(),
        )
        for pid in self.pids:
            result.watched[pid] = WatchedResult(
                pid=pid,
                label=mon.label(pid),
                leak=self._leak(pid),
                peak_rss=mon.peak_rss_of(pid),
                exited=mon.exited(pid),
                memory=self._memory(pid),
            )
        result.warnings += list(mon.notes)
        if load is not None:
            result.warnings += load.warnings
        result.thresholds = self._gates(result)
        return result

    def _gates(self, r: SoakResult) -> list[ThresholdResult]:
        spec = self.spec
        out: list[ThresholdResult] = []
        if spec.leak_limit is not None:
            limit = spec.leak_limit
            gate = Threshold(f"leak<{format_size_rate(limit)}", "leak", None, "<", limit,
                             "size_rate")
            procs: list[tuple[str, LeakEstimate]] = [("this process", r.leak)]
            procs += [(f"watched {w.label} pid {w.pid}", w.leak) for w in r.watched.values()]
            for who, est in procs:
                res = gate.check(est.gate_bytes_per_h)
                note = who if est.valid else f"{who}: {est.reason}"
                if res.ok and est.valid and not est.resolves(limit):
                    r.warnings.append(
                        f"{who}: the {format_duration(est.span_s)} window cannot resolve "
                        f"{format_size_rate(limit)} (bound ±{format_size_rate(est.bound or 0)}); "
                        "run longer to tell a slow leak from noise"
                    )
                out.append(ThresholdResult(res.threshold, res.value, res.ok, note))
        if spec.drift_limit is not None:
            limit = spec.drift_limit
            gate = Threshold(f"|drift|<={format_ratio(limit)}", "drift", None, "<=", limit,
                             "ratio")
            if r.drift is None:
                out.append(ThresholdResult(gate, None, False, r.drift_note or "not measured"))
            else:
                res = gate.check(abs(r.drift))
                word = "slower" if r.drift > 0 else "faster"
                spread = ("" if r.drift_interval is None else
                          f"; the run's trend {r.drift_interval[0] * 100:+.0f}%.."
                          f"{r.drift_interval[1] * 100:+.0f}%")
                if res.ok or r.drift_established:
                    out.append(ThresholdResult(gate, res.value, res.ok,
                                               f"{r.drift * 100:+.1f}%, {word} at the end{spread}"))
                else:  # past the limit, but within what the run itself varied: noise
                    out.append(ThresholdResult(
                        gate, res.value, True, f"{r.drift * 100:+.1f}%, within the run's own "
                        f"spread (no established trend{spread}): not a drift"))
        if spec.sla:
            endpoints = r.load.endpoint_metrics() if r.load is not None else {}
            out += evaluate(spec.sla, r.metrics(), endpoints)
        return out


def _trim_allocator() -> bool:
    """glibc: return free heap memory to the OS (``malloc_trim(0)``); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def _downsample(pts: list[tuple[float, int]], n: int) -> list[tuple[float, int]]:
    if len(pts) <= n:
        return pts
    out = []
    for k in range(n):
        a, b = k * len(pts) // n, (k + 1) * len(pts) // n
        chunk = pts[a:b]
        out.append((round(sum(p[0] for p in chunk) / len(chunk), 3),
                    round(sum(p[1] for p in chunk) / len(chunk))))
    return out


def _wants_allocs(session: _Session, result: SoakResult, track_allocs: bool) -> bool:
    limit = session.spec.leak_limit
    return track_allocs and limit is not None and is_leak(result.leak, limit)


def run_soak(
    fn: Callable[[], object],
    spec: SoakSpec,
    *,
    watch: Iterable[object] | Mapping[str, object] = (),
    monitor: ResourceMonitor | None = None,
    engine: Engine | None = None,
    track_allocs: bool = True,
    alloc_dir: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SoakResult:
    """Run ``fn`` (one iteration, sync) as a soak; see the module docstring.

    ``watch``: pids / ``psutil.Process`` / objects with ``.pid`` (or a mapping label -> target)
    whose memory is gated too. ``monitor``: an existing monitor to use (started if needed,
    stopped only if this function created it). ``engine``: the engine to run with (e.g. one with
    a progress callback).
    """
    session = _Session(spec, watch, monitor, clock)
    eng = engine if engine is not None else Engine()
    session.begin()
    try:
        load = eng.run_sync(session.probe.wrap(fn), spec.load_spec())
    finally:
        session.finish()
    result = session.decide(load)
    _note_garbage(session, result)
    if _wants_allocs(session, result, track_allocs):
        window = spec.effective_alloc_window
        with AllocationTracker(alloc_dir) as tracker:
            try:
                Engine().run_sync(fn, spec.load_spec(duration=window, warmup=0.0))
            except Exception as exc:  # the soak is decided; the extra window is best effort
                result.warnings.append(f"allocation window failed: {exc!r}")
        _take_sites(result, tracker, window)
    return result


async def run_soak_async(
    fn: Callable[[], Awaitable[object]],
    spec: SoakSpec,
    *,
    watch: Iterable[object] | Mapping[str, object] = (),
    monitor: ResourceMonitor | None = None,
    engine: Engine | None = None,
    track_allocs: bool = True,
    alloc_dir: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SoakResult:
    """:func:`run_soak` for ``async`` bodies (users are tasks on the running loop)."""
    session = _Session(spec, watch, monitor, clock)
    eng = engine if engine is not None else Engine()
    session.begin()
    try:
        load = await eng.run_async(session.probe.wrap_async(fn), spec.load_spec())
    finally:
        session.finish()
    result = session.decide(load)
    _note_garbage(session, result)
    if _wants_allocs(session, result, track_allocs):
        window = spec.effective_alloc_window
        with AllocationTracker(alloc_dir) as tracker:
            try:
                await Engine().run_async(fn, spec.load_spec(duration=window, warmup=0.0))
            except Exception as exc:
                result.warnings.append(f"allocation window failed: {exc!r}")
        _take_sites(result, tracker, window)
    return result


def _note_garbage(session: _Session, result: SoakResult) -> None:
    """After a self-leak verdict, tell garbage from a leak: count what the collector frees."""
    limit = session.spec.leak_limit
    if limit is None or not is_leak(result.leak, limit):
        return
    found = gc.collect()
    result.gc_unreachable = found
    if found >= GARBAGE_NOTE_OBJECTS:
        result.warnings.append(
            f"gc.collect() after the soak freed {found} unreachable objects (reference cycles): "
            "part of the growth may be garbage that the collector had not reached yet; a soak "
            "shorter than the collector's period cannot tell it from a leak"
        )


def _take_sites(result: SoakResult, tracker: AllocationTracker, window: float) -> None:
    result.alloc_sites = tracker.top_sites(5)
    if tracker.note is not None:
        result.alloc_note = tracker.note
    elif not result.alloc_sites:
        result.alloc_note = (
            f"no allocation still held after a {format_duration(window)} window under memray "
            "(the growth may be outside Python's allocators, or not per iteration)"
        )
    else:
        result.alloc_note = (
            f"sites holding memory allocated during a {format_duration(window)} window "
            "after the soak (memray)"
        )
    rate = result.leak.gate_bytes_per_h
    if tracker.available and rate:
        held = sum(site.size_bytes for site in tracker.sites)
        expected = rate * window / 3600.0
        if held < 0.1 * expected:
            result.warnings.append(
                f"memray: after gc.collect(), only {format_size(held)} allocated in the "
                f"{format_duration(window)} window was still held, where the leak rate predicts "
                f"{format_size(expected)}: the growth is likely garbage (reference cycles the "
                "collector had not reached yet) or outside Python's allocators"
            )
