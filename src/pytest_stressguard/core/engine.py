"""The load engine: run a body as virtual users and measure every iteration.

Models
------
* **Closed** (``users``, optionally ``ramp_up`` or ``stages`` of kind ``"users"``): each virtual
  user runs ``body; think_time`` in a loop. Sync bodies run in one thread per user, ``async``
  bodies as one task per user on the running loop. ``ramp_up`` starts user ``i`` at
  ``ramp_up * i / users``. Latency = end - start of the iteration.
* **Open** (``rate``, or ``stages`` of kind ``"rate"``): iteration ``k`` is *intended* to start at
  ``t0 + k / rate`` (for rate stages: where the integral of the rate reaches ``k``). A free
  user (worker thread / task, at most ``max_users`` at once) starts it; when every user is busy the
  iteration is **dropped** and counted (``LoadResult.dropped``), never silently skipped.
  Latency = end - *intended* start, so a stall delays and shows in every iteration scheduled
  during it (no coordinated omission, as in wrk2 / HdrHistogram's corrected recording).
  The sync scheduler wakes up on a futex (~0.1 ms late at 20k/s on one core); the async one
  on the event loop's timer, which rounds sleeps up to the next millisecond, so async arrivals
  start up to ~1 ms late and that lateness is (correctly) part of their latency.
  Default ``max_users`` = ``max(100, ceil(peak rate))`` (enough for 1-second iterations at the
  peak rate without drops), capped at 1000 for sync bodies (threads) and 10000 for async bodies
  (tasks). Workers are created lazily, so the cap costs nothing until it is needed.
* **Stages** interpolate the target (users or rate) linearly from the previous stage's target,
  starting at 0, like k6's ramping-vus / ramping-arrival-rate. When the users target goes down,
  the highest-numbered users stop after their current iteration (k6's graceful ramp-down).

Time line of a run
------------------
``t = 0`` is the start. ``warmup`` is the first window of the run: iterations that *start*
(closed) or are *intended to start* (open) in it are run but not measured (counted in
``warmup_iterations``). ``duration`` includes the warm-up and any ramp-up, like Locust's
``--run-time`` and the sum of k6 stages: the test takes ``duration`` seconds and measures
``duration - warmup``. ``iterations=N`` means exactly ``N`` measured iterations in total across
all users (closed) or ``N`` measured arrivals, executed or dropped (open). When the time is up,
iterations in flight are allowed to finish for ``grace`` seconds; after that the engine stops
waiting, reports the stuck users in ``warnings`` (their threads are daemons and are left behind,
async tasks are cancelled) and returns. ``max_duration`` is the hard bound on the whole run:
default ``duration + grace`` for timed runs and 3600 s for ``iterations`` runs. The engine never
waits longer than ``max_duration + grace`` in total, so every run stops by itself.

Errors
------
An iteration that raises an ``Exception`` is an error, grouped by ``"{type}: {message}"``
(first line, at most 200 characters). Its latency goes to ``LoadResult.error_latency``, *not* to
``LoadResult.latency``: fast failures (an instant 500) must not make the latency percentiles look
better. ``iterations`` counts successes and errors; ``error_rate = errors / iterations``.
A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, pytest's
skip/fail/exit outcomes) is not an error: it stops the run and is re-raised by ``run_sync`` /
``run_async`` in the caller's thread once the users are stopped (``KeyboardInterrupt`` as
:class:`LoadInterrupted` carrying the partial result). ``Engine.last_result`` always holds the
last (possibly partial) result.

Ctrl-C and stop
---------------
``KeyboardInterrupt`` while ``run_sync`` waits stops every user (bounded join) and raises
:class:`LoadInterrupted` (a ``KeyboardInterrupt``) with the partial result. Setting the ``stop``
event makes the run return early with ``interrupted=True``.

Cost
----
The sync closed hot path is: clock, call, clock, pack ``(second, microseconds)`` into one int
and count it in a per-user dict under a per-user (uncontended) lock. A collector on the caller's
thread swaps those dicts out about once a second and folds them into the HDR histograms and the
per-second timeline, so the users never touch an HdrHistogram.

Saturation
----------
The generator's own process CPU (``time.process_time`` over wall time) and, for async bodies, the
event-loop lag (a ticker sleeping 50 ms and measuring its overshoot). ``saturated`` when CPU is
>= 90 % of one core (a Python process cannot use more than about one core of Python code
because of the GIL) or the loop-lag p99 is > 20 ms (a task that should wake up waits more than
20 ms for the loop: measured latencies then include the client's own queueing).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .histogram import PERCENTILE_KEYS, LatencyHistogram, parse_percentile_name
from .stats import EndpointStats, StatsRecorder, current_recorder, error_key

__all__ = [
    "Engine",
    "LoadInterrupted",
    "LoadResult",
    "LoadSpec",
    "Progress",
    "Saturation",
    "Stage",
    "TimelineRow",
    "default_max_users",
]

StageKind = Literal["users", "rate"]

#: CPU ratio (process CPU seconds / wall seconds) at which the generator counts as saturated.
CPU_SATURATION = 0.90
#: Event-loop lag p99 (seconds) above which an async generator counts as saturated.
LOOP_LAG_SATURATION = 0.020
#: Interval of the loop-lag ticker (seconds).
LAG_TICK = 0.05
#: How often the caller's thread wakes up to check stop / deadlines (seconds).
_TICK = 0.25
#: Default hard bound for ``iterations`` runs without a duration (seconds).
DEFAULT_ITERATIONS_MAX_DURATION = 3600.0
#: How long a Ctrl-C waits for users in the middle of an iteration (seconds).
_INTERRUPT_JOIN = 2.0
#: An async user yields to the loop at least this often even if its body never suspends.
_ASYNC_YIELD_EVERY = 0.005

_MASK = (1 << 32) - 1  # a latency in microseconds is packed with its second: (sec << 32) | us


# ---------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Stage:
    """One ramp segment: move linearly from the previous target to ``target`` over ``duration``
    seconds. ``kind`` "users" (closed model) or "rate" (iterations per second, open model)."""

    duration: float
    target: float
    kind: StageKind = "users"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"stage duration must be >= 0 seconds, got {self.duration!r}")
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"stage target must be >= 0, got {self.target!r}")
        if self.kind not in ("users", "rate"):
            raise ValueError(f"stage kind must be 'users' or 'rate', got {self.kind!r}")


def default_max_users(peak_rate: float, is_async: bool) -> int:
    """Default concurrency cap of the open model (see the module docstring)."""
    cap = 10_000 if is_async else 1_000
    return min(cap, max(100, math.ceil(peak_rate)))


@dataclass(frozen=True)
class LoadSpec:
    """What to run. Times in seconds, rate in iterations per second (use ``core.units`` and
    ``core.profiles.parse_stages`` to build one from user strings)."""

    users: int = 1
    duration: float | None = None
    iterations: int | None = None
    ramp_up: float = 0.0
    rate: float | None = None
    max_users: int | None = None
    stages: tuple[Stage, ...] = ()
    think_time: float = 0.0
    warmup: float = 0.0
    #: hard bound on the run (see module docstring for the default)
    max_duration: float | None = None
    #: how long in-flight iterations may finish after the end; default min(30, max(5, duration))
    grace: float | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid load spec: {msg}")

        if isinstance(self.users, bool) or not isinstance(self.users, int) or self.users < 1:
            raise bad(f"users must be an integer >= 1, got {self.users!r}")
        for name in ("ramp_up", "think_time", "warmup"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise bad(f"{name} must be a duration >= 0 seconds, got {v!r}")
        for name in ("duration", "max_duration", "grace"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(f"{name} must be a duration > 0 seconds, got {v!r}")
        if self.iterations is not None and (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 1
        ):
            raise bad(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if self.rate is not None and not (
            isinstance(self.rate, (int, float)) and math.isfinite(self.rate) and self.rate > 0
        ):
            raise bad(f"rate must be > 0 per second, got {self.rate!r}")
        if self.max_users is not None and (
            isinstance(self.max_users, bool)
            or not isinstance(self.max_users, int)
            or self.max_users < 1
        ):
            raise bad(f"max_users must be an integer >= 1, got {self.max_users!r}")
        if not isinstance(self.stages, tuple) or not all(
            isinstance(s, Stage) for s in self.stages
        ):
            raise bad("stages must be a tuple of Stage (use profiles.parse_stages)")
        kinds = {s.kind for s in self.stages}
        if len(kinds) > 1:
            raise bad("stages mix user targets and rate targets; use one kind")
        if self.stages:
            if sum(s.duration for s in self.stages) <= 0:
                raise bad("stages must last longer than 0 seconds in total")
            if self.duration is not None or self.iterations is not None:
                raise bad("stages define the duration; do not give duration or iterations too")
            if self.ramp_up:
                raise bad("ramp_up does not combine with stages; ramp with a stage instead")
            if self.rate is not None:
                raise bad("rate does not combine with stages; use stages like ('10s', '50/s')")
        elif self.duration is None and self.iterations is None:
            raise bad("give duration, iterations or stages")
        if self.duration is not None and self.iterations is not None:
            raise bad("give duration or iterations, not both (max_duration bounds a run)")
        open_model = self.rate is not None or "rate" in kinds
        if open_model:
            if self.think_time:
                raise bad("think_time applies to the closed model (users), not to rate")
            if self.ramp_up:
                raise bad("ramp_up applies to users; ramp a rate with stages")
            if self.users != 1:
                raise bad("users applies to the closed model; with rate use max_users")
        elif self.max_users is not None:
            raise bad("max_users caps the open model (rate); with users it has no meaning")
        total = self.planned_duration
        if total is not None:
            if self.warmup and self.warmup >= total:
                raise bad(f"warmup ({self.warmup:g}s) must be shorter than the run ({total:g}s)")
            if self.ramp_up > total:
                raise bad(f"ramp_up ({self.ramp_up:g}s) is longer than duration ({total:g}s)")

    # ---- derived
    @property
    def is_open(self) -> bool:
        return self.rate is not None or any(s.kind == "rate" for s in self.stages)

    @property
    def planned_duration(self) -> float | None:
        """The run's planned length (stages sum or duration); None for iterations runs."""
        if self.stages:
            return float(sum(s.duration for s in self.stages))
        return None if self.duration is None else float(self.duration)

    @property
    def effective_grace(self) -> float:
        if self.grace is not None:
            return float(self.grace)
        total = self.planned_duration
        return 30.0 if total is None else min(30.0, max(5.0, total))

    @property
    def effective_max_duration(self) -> float:
        if self.max_duration is not None:
            return float(self.max_duration)
        total = self.planned_duration
        if total is None:
            return DEFAULT_ITERATIONS_MAX_DURATION
        return total + self.effective_grace

    @property
    def peak_users(self) -> int:
        if self.stages and not self.is_open:
            return max(1, math.ceil(max(s.target for s in self.stages) - 1e-9))
        return self.users

    @property
    def peak_rate(self) -> float:
        if self.rate is not None:
            return float(self.rate)
        return max((s.target for s in self.stages if s.kind == "rate"), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "duration": self.duration,
            "iterations": self.iterations,
            "ramp_up": self.ramp_up,
            "rate": self.rate,
            "max_users": self.max_users,
            "stages": [[s.duration, s.target, s.kind] for s in self.stages],
            "think_time": self.think_time,
            "warmup": self.warmup,
            "max_duration": self.max_duration,
            "grace": self.grace,
        }


@dataclass(frozen=True)
class TimelineRow:
    """One second of the run. ``t`` = seconds since the start (the row covers [t, t+1))."""

    t: int
    users: int
    iterations: int
    rps: float
    p95_ms: float | None
    errors: int
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "users": self.users,
            "iterations": self.iterations,
            "rps": self.rps,
            "p95_ms": self.p95_ms,
            "errors": self.errors,
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TimelineRow:
        p95 = d.get("p95_ms")
        return cls(
            t=int(d["t"]),
            users=int(d["users"]),
            iterations=int(d["iterations"]),
            rps=float(d["rps"]),
            p95_ms=None if p95 is None else float(p95),
            errors=int(d["errors"]),
            dropped=int(d.get("dropped", 0)),
        )


@dataclass(frozen=True)
class Saturation:
    """Was the load generator itself the bottleneck?"""

    cpu_ratio: float = 0.0
    loop_lag_p99_ms: float | None = None
    saturated: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_ratio": self.cpu_ratio,
            "loop_lag_p99_ms": self.loop_lag_p99_ms,
            "saturated": self.saturated,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Saturation:
        lag = d.get("loop_lag_p99_ms")
        return cls(
            cpu_ratio=float(d.get("cpu_ratio", 0.0)),
            loop_lag_p99_ms=None if lag is None else float(lag),
            saturated=bool(d.get("saturated", False)),
            reason=str(d.get("reason", "")),
        )

    @classmethod
    def judge(
        cls, cpu_ratio: float, lag_p99_s: float | None, lag_over: int | None = None
    ) -> Saturation:
        """``lag_over``: how many lag samples exceeded the limit; one hiccup (a GC pause)
        in a short run is not saturation, so at least 2 are needed when it is given."""
        reasons = []
        if cpu_ratio >= CPU_SATURATION:
            reasons.append(
                f"the load generator used {cpu_ratio:.0%} of a CPU core (one Python process "
                "runs Python code on about one core): latencies include waiting for the "
                "generator's CPU, not only the system under test; spread the load "
                "(pytest -n) or lower users/rate"
            )
        if (
            lag_p99_s is not None
            and lag_p99_s > LOOP_LAG_SATURATION
            and (lag_over is None or lag_over >= 2)
        ):
            reasons.append(
                f"event-loop lag p99 {lag_p99_s * 1e3:.1f}ms > "
                f"{LOOP_LAG_SATURATION * 1e3:.0f}ms: tasks waited for the loop, so latencies "
                "include the client's own queueing"
            )
        return cls(
            cpu_ratio=cpu_ratio,
            loop_lag_p99_ms=None if lag_p99_s is None else lag_p99_s * 1e3,
            saturated=bool(reasons),
            reason="; ".join(reasons),
        )

    def merge(self, other: Saturation) -> Saturation:
        lags = [x for x in (self.loop_lag_p99_ms, other.loop_lag_p99_ms) if x is not None]
        reasons = [r for r in (self.reason, other.reason) if r]
        return Saturation(
            cpu_ratio=max(self.cpu_ratio, other.cpu_ratio),
            loop_lag_p99_ms=max(lags) if lags else None,
            saturated=self.saturated or other.saturated,
            reason="; ".join(dict.fromkeys(reasons)),
        )


@dataclass(frozen=True)
class Progress:
    """Delivered to the progress callback about once a second."""

    elapsed_s: float
    remaining_s: float | None
    users: int
    rps: float
    p95_ms: float | None
    errors: int
    iterations: int
    dropped: int = 0
    warming_up: bool = False


@dataclass
class LoadResult:
    """Everything measured by one run (or several merged runs)."""

    iterations: int = 0
    errors: int = 0
    dropped: int = 0
    duration_s: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    error_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    timeline: list[TimelineRow] = field(default_factory=list)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)
    saturation: Saturation = field(default_factory=Saturation)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    warmup_iterations: int = 0
    peak_users: int = 0
    model: str = "closed"

    @property
    def rps(self) -> float:
        """Measured iterations (successes and errors) per second of the measured window."""
        return self.iterations / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.iterations if self.iterations else 0.0

    @property
    def clamped(self) -> int:
        return self.latency.clamped + self.error_latency.clamped

    def percentile_metric(self, name: str) -> float | None:
        """``"p95"``, ``"p99.9"``, ``"p97.5"``... in seconds; ``None`` when nothing succeeded."""
        q = parse_percentile_name(name)
        if q is None:
            raise KeyError(f"not a percentile metric: {name!r} (use p50, p99.9, ...)")
        return self.latency.p(q) if self.latency.count else None

    def metrics(self) -> dict[str, float | None]:
        """Values by threshold metric name (seconds, per second, counts, ratio)."""
        h = self.latency
        empty = h.count == 0
        out: dict[str, float | None] = {}
        qs = {} if empty else h.percentiles([float(k[1:]) for k in PERCENTILE_KEYS])
        for key in PERCENTILE_KEYS:
            out[key] = None if empty else qs[float(key[1:])]
        out["mean"] = None if empty else h.mean
        out["min"] = None if empty else h.min
        out["max"] = None if empty else h.max
        out["rps"] = self.rps
        out["errors"] = float(self.errors)
        out["error_rate"] = self.error_rate if self.iterations else None
        out["dropped"] = float(self.dropped)
        out["iterations"] = float(self.iterations)
        return out

    def endpoint_metrics(self) -> dict[str, dict[str, float | None]]:
        return {name: st.metrics() for name, st in self.endpoints.items()}

    # ------------------------------------------------------------------ combining
    def merge(self, other: LoadResult) -> LoadResult:
        """Combine results of runs that happened **at the same time** (xdist workers).

        Counts and histograms add exactly; ``duration_s`` is the longest (so ``rps`` adds up);
        timeline rows add by second, except ``p95_ms`` which becomes the larger of the two (an
        upper bound: per-second histograms are not kept). Returns ``self``.
        """
        self.iterations += other.iterations
        self.errors += other.errors
        self.dropped += other.dropped
        self.duration_s = max(self.duration_s, other.duration_s)
        self.latency.merge(other.latency)
        self.error_latency.merge(other.error_latency)
        rows = {r.t: r for r in self.timeline}
        for r in other.timeline:
            mine = rows.get(r.t)
            if mine is None:
                rows[r.t] = r
                continue
            p95s = [p for p in (mine.p95_ms, r.p95_ms) if p is not None]
            rows[r.t] = TimelineRow(
                t=r.t,
                users=mine.users + r.users,
                iterations=mine.iterations + r.iterations,
                rps=mine.rps + r.rps,
                p95_ms=max(p95s) if p95s else None,
                errors=mine.errors + r.errors,
                dropped=mine.dropped + r.dropped,
            )
        self.timeline = [rows[t] for t in sorted(rows)]
        for k, n in other.errors_by_kind.items():
            self.errors_by_kind[k] = self.errors_by_kind.get(k, 0) + n
        for name, st in other.endpoints.items():
            if name in self.endpoints:
                self.endpoints[name].merge(st)
            else:
                self.endpoints[name] = st.copy()
        self.saturation = self.saturation.merge(other.saturation)
        self.warnings = list(dict.fromkeys([*self.warnings, *other.warnings]))
        self.interrupted = self.interrupted or other.interrupted
        self.warmup_iterations += other.warmup_iterations
        self.peak_users += other.peak_users
        return self

    # ------------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe): counts, ``latency_ms`` summary, HDR-encoded histograms."""
        return {
            "model": self.model,
            "iterations": self.iterations,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "dropped": self.dropped,
            "rps": self.rps,
            "duration_s": self.duration_s,
            "latency_ms": self.latency.percentiles_ms(),
            "histogram": self.latency.to_dict(),
            "error_histogram": self.error_latency.to_dict(),
            "clamped": self.clamped,
            "timeline": [r.to_dict() for r in self.timeline],
            "errors_by_kind": dict(self.errors_by_kind),
            "endpoints": {name: st.to_dict() for name, st in self.endpoints.items()},
            "saturation": self.saturation.to_dict(),
            "saturated": self.saturation.saturated,
            "warnings": list(self.warnings),
            "interrupted": self.interrupted,
            "warmup_iterations": self.warmup_iterations,
            "peak_users": self.peak_users,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadResult:
        return cls(
            iterations=int(d["iterations"]),
            errors=int(d["errors"]),
            dropped=int(d.get("dropped", 0)),
            duration_s=float(d["duration_s"]),
            latency=LatencyHistogram.from_dict(d["histogram"]),
            error_latency=(
                LatencyHistogram.from_dict(d["error_histogram"])
                if d.get("error_histogram")
                else LatencyHistogram()
            ),
            timeline=[TimelineRow.from_dict(r) for r in d.get("timeline", [])],
            errors_by_kind={str(k): int(v) for k, v in dict(d.get("errors_by_kind", {})).items()},
            endpoints={
                str(k): EndpointStats.from_dict(v) for k, v in dict(d.get("endpoints", {})).items()
            },
            saturation=Saturation.from_dict(d.get("saturation", {})),
            warnings=[str(w) for w in d.get("warnings", [])],
            interrupted=bool(d.get("interrupted", False)),
            warmup_iterations=int(d.get("warmup_iterations", 0)),
            peak_users=int(d.get("peak_users", 0)),
            model=str(d.get("model", "closed")),
        )


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the users were stopped and ``result`` holds what was measured."""

    def __init__(self, result: LoadResult) -> None:
        super().__init__("load run interrupted")
        self.result = result


# ---------------------------------------------------------------------------------- profiles
def _points(stages: tuple[Stage, ...]) -> list[tuple[float, float]]:
    """Piecewise-linear target curve: [(t, target)], starting at (0, 0)."""
    pts = [(0.0, 0.0)]
    t = 0.0
    for s in stages:
        t += s.duration
        pts.append((t, float(s.target)))
    return pts


def _user_intervals(idx: int, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time intervals during which user ``idx`` (0-based) is active: where target(t) > idx."""
    out: list[tuple[float, float]] = []
    level = float(idx)
    for (ta, fa), (tb, fb) in itertools.pairwise(pts):
        if tb <= ta:  # a zero-length stage: a jump
            continue
        a_in, b_in = fa > level, fb > level
        if a_in and b_in:
            seg = (ta, tb)
        elif not a_in and not b_in:
            continue
        else:
            tc = ta + (level - fa) / (fb - fa) * (tb - ta)
            seg = (tc, tb) if fb > fa else (ta, tc)
        if out and abs(out[-1][1] - seg[0]) < 1e-9:
            out[-1] = (out[-1][0], seg[1])
        elif seg[1] > seg[0]:
            out.append(seg)
    return out


def _closed_intervals(spec: LoadSpec, idx: int) -> list[tuple[float, float]]:
    if spec.stages:
        return _user_intervals(idx, _points(spec.stages))
    start = spec.ramp_up * idx / spec.users if spec.ramp_up else 0.0
    return [(start, math.inf)]


class _Arrivals:
    """Intended start times (seconds since start) of the open model, in order."""

    def __init__(self, spec: LoadSpec) -> None:
        self.rate = spec.rate
        self.pts = _points(spec.stages) if spec.stages else []
        self.seg = 0
        self.cum = 0.0  # integral of the rate up to the start of segment `seg`

    def time_of(self, k: int) -> float | None:
        """When the integral of the rate reaches ``k`` (call with increasing ``k``)."""
        if self.rate is not None:
            return k / self.rate
        pts = self.pts
        while self.seg < len(pts) - 1:
            (ta, ra), (tb, rb) = pts[self.seg], pts[self.seg + 1]
            d = tb - ta
            area = (ra + rb) / 2.0 * d
            need = k - self.cum
            if d > 0 and need <= area + 1e-12:
                a = (rb - ra) / (2.0 * d)
                disc = ra * ra + 4.0 * a * need
                denom = ra + math.sqrt(max(0.0, disc))
                x = 0.0 if denom <= 0 else 2.0 * need / denom
                return ta + min(max(x, 0.0), d)
            self.cum += area
            self.seg += 1
        return None


# ---------------------------------------------------------------------------------- recording
class _Buf:
    """One recording thread's buffers: ``{(sec << 32) | us: count}`` dicts, swapped out by the
    collector under ``lock``."""

    __slots__ = ("dropped", "err_lat", "errs", "lat", "lock", "odd", "warm")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[int, int] = {}
        self.err_lat: dict[int, int] = {}
        self.errs: dict[str, int] = {}
        self.dropped: dict[int, int] = {}
        self.odd: list[tuple[int, float, bool]] = []  # (sec, seconds, error): out of packing range
        self.warm = 0

    def add_error(self, sec: int, seconds: float, exc: BaseException) -> None:
        try:
            kind = error_key(exc)
        except Exception:  # an exception whose __str__ fails
            kind = type(exc).__name__
        us = int(seconds * 1e6 + 0.5)
        with self.lock:
            self.errs[kind] = self.errs.get(kind, 0) + 1
            if 0 <= us <= _MASK and sec >= 0:
                key = (sec << 32) | us
                self.err_lat[key] = self.err_lat.get(key, 0) + 1
            else:
                self.odd.append((sec, seconds, True))

    def add_odd(self, sec: int, seconds: float) -> None:
        with self.lock:
            self.odd.append((sec, seconds, False))

    def add_dropped(self, sec: int, n: int = 1) -> None:
        with self.lock:
            self.dropped[sec] = self.dropped.get(sec, 0) + n


class _Second:
    __slots__ = ("dropped", "errors", "hist", "iterations", "p95_ms", "users")

    def __init__(self, hist: LatencyHistogram) -> None:
        self.hist: LatencyHistogram | None = hist
        self.iterations = 0
        self.errors = 0
        self.dropped = 0
        self.users = -1
        self.p95_ms: float | None = None


class _Collector:
    """Folds the users' buffers into the totals and the per-second rows. Runs on the caller's
    thread only (no concurrency with itself)."""

    def __init__(self) -> None:
        self.bufs: list[_Buf] = []
        self.bufs_lock = threading.Lock()
        self.latency = LatencyHistogram()
        self.error_latency = LatencyHistogram()
        self.errors_by_kind: dict[str, int] = {}
        self.iterations = 0
        self.errors = 0
        self.dropped = 0
        self.seconds: dict[int, _Second] = {}
        self._pool: list[LatencyHistogram] = []

    def new_buf(self) -> _Buf:
        b = _Buf()
        with self.bufs_lock:
            self.bufs.append(b)
        return b

    @property
    def warm(self) -> int:
        return sum(b.warm for b in self.bufs)

    def _second(self, sec: int) -> _Second:
        s = self.seconds.get(sec)
        if s is None:
            # Reuse released histograms: an HdrHistogram (~180 KB) sits in a reference cycle,
            # so one made and dropped every second is freed only by the cyclic collector,
            # which may not run for minutes: the generator's own RSS then grows like a leak.
            s = self.seconds[sec] = _Second(self._pool.pop() if self._pool else LatencyHistogram())
        return s

    def pull(self, now_sec: int | None, users: int) -> None:
        """Swap out every buffer and fold it in. Seconds before ``now_sec - 1`` are finalised
        (their p95 computed, their histogram released); ``None`` finalises everything."""
        with self.bufs_lock:
            bufs = list(self.bufs)
        for b in bufs:
            with b.lock:
                lat, b.lat = b.lat, {}
                elat, b.err_lat = b.err_lat, {}
                errs, b.errs = b.errs, {}
                dropped, b.dropped = b.dropped, {}
                odd, b.odd = b.odd, []
            self._fold(lat, elat, errs, dropped, odd)
        if now_sec is not None:
            self.note_users(now_sec, users)
        self._finalise(None if now_sec is None else now_sec - 1)

    def note_users(self, sec: int, users: int) -> None:
        """Sample the number of busy users; a row shows the largest sample of its second."""
        if sec >= 0:
            s = self._second(sec)
            if users > s.users:
                s.users = users

    def _fold(
        self,
        lat: dict[int, int],
        elat: dict[int, int],
        errs: dict[str, int],
        dropped: dict[int, int],
        odd: list[tuple[int, float, bool]],
    ) -> None:
        latency, second = self.latency, self._second
        for key, n in lat.items():
            sec, us = key >> 32, key & _MASK
            latency.record_us(us, n)
            s = second(sec)
            s.iterations += n
            if s.hist is not None:
                s.hist.record_us(us, n)
            self.iterations += n
        for key, n in elat.items():
            sec, us = key >> 32, key & _MASK
            self.error_latency.record_us(us, n)
            s = second(sec)
            s.iterations += n
            s.errors += n
            self.iterations += n
            self.errors += n
        for sec_i, seconds, is_err in odd:
            s = second(max(0, sec_i))
            s.iterations += 1
            self.iterations += 1
            if is_err:
                self.error_latency.record(seconds)
                s.errors += 1
                self.errors += 1
            else:
                self.latency.record(seconds)
                if s.hist is not None:
                    s.hist.record(seconds)
        for k, n in errs.items():
            self.errors_by_kind[k] = self.errors_by_kind.get(k, 0) + n
        for sec_i, n in dropped.items():
            second(sec_i).dropped += n
            self.dropped += n

    def _finalise(self, before: int | None) -> None:
        for sec, s in self.seconds.items():
            if s.hist is None or (before is not None and sec >= before):
                continue
            if s.hist.count:
                s.p95_ms = s.hist.p(95) * 1e3
            s.hist.reset()
            if len(self._pool) < 4:
                self._pool.append(s.hist)
            s.hist = None

    def recent(self, now_sec: int) -> tuple[float, float | None]:
        """(rps, p95_ms) of the last complete second, for progress."""
        s = self.seconds.get(now_sec - 1)
        if s is None:
            return 0.0, None
        if s.hist is not None and s.hist.count:
            return float(s.iterations), s.hist.p(95) * 1e3
        return float(s.iterations), s.p95_ms

    def rows(self, from_rel: float, end_rel: float) -> list[TimelineRow]:
        """Timeline rows of the measured window ``from_rel .. end_rel`` (seconds since the
        start); a partial first/last second's ``rps`` is divided by the part it covers."""
        self._finalise(None)
        first = int(from_rel)
        if not self.seconds and end_rel <= first:
            return []
        last = max([*self.seconds.keys(), max(first, math.ceil(end_rel) - 1)])
        rows: list[TimelineRow] = []
        users = 0
        first_f = float(from_rel)
        for t in range(first, last + 1):
            s = self.seconds.get(t)
            if s is not None and s.users >= 0:
                users = s.users
            lo = max(first_f, float(t))
            hi = min(float(t + 1), max(end_rel, lo))
            width = hi - lo if hi - lo > 0.05 else 1.0  # partial first/last second
            if s is None:
                rows.append(TimelineRow(t, users, 0, 0.0, None, 0, 0))
                continue
            rows.append(
                TimelineRow(
                    t=t,
                    users=users,
                    iterations=s.iterations,
                    rps=s.iterations / width,
                    p95_ms=s.p95_ms,
                    errors=s.errors,
                    dropped=s.dropped,
                )
            )
        return rows


# ---------------------------------------------------------------------------------- the run

class _Run:
    """State shared by the users of one run."""

    def __init__(self, engine: Engine, spec: LoadSpec, is_async: bool) -> None:
        self.spec = spec
        self.clock = engine.clock
        self.is_async = is_async
        self.collector = _Collector()
        self.halt = threading.Event()
        self.halted = False  # plain-attribute mirror of `halt` for the hot loops
        self.aborted = False
        self.scheduler_task: asyncio.Task[None] | None = None
        self.start = 0.0
        self.warm_end = 0.0
        self.stop_at = math.inf  # no new iteration starts at or after this (absolute)
        self.hard_end = math.inf
        total = spec.planned_duration
        self.planned = total
        self.tickets: itertools.count[int] | None = (
            itertools.count() if spec.iterations is not None else None
        )
        self.limit = spec.iterations if spec.iterations is not None else 0
        self.active = 0
        self.active_lock = threading.Lock()
        self.peak_active = 0
        self.fatal: BaseException | None = None
        self.warnings: list[str] = []
        self.iterations_done = False
        if spec.is_open:
            self.max_users = spec.max_users or default_max_users(spec.peak_rate, is_async)
        else:
            self.max_users = spec.peak_users

    def begin(self) -> None:
        self.start = self.clock()
        spec = self.spec
        self.warm_end = self.start + spec.warmup
        hard = spec.effective_max_duration
        self.hard_end = self.start + hard
        self.stop_at = self.start + (self.planned if self.planned is not None else hard)
        self.stop_at = min(self.stop_at, self.hard_end)

    def stop(self, abort: bool = False) -> None:
        """End the run. ``abort`` (stop event, Ctrl-C, fatal error, hard bound) also stops the
        open-model scheduler at once; a natural end lets it account for every arrival
        intended before the end (executed late or dropped), even when it runs behind."""
        if abort:
            self.aborted = True
        self.halted = True
        self.halt.set()

    def user_up(self) -> None:
        with self.active_lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)

    def user_down(self) -> None:
        with self.active_lock:
            self.active -= 1

    def out_of_tickets(self) -> None:
        self.iterations_done = True
        self.stop()

    def fatal_error(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stop(abort=True)

    def progress(self) -> Progress:
        now = self.clock()
        elapsed = now - self.start
        now_sec = int(elapsed)
        rps, p95 = self.collector.recent(now_sec)
        c = self.collector
        remaining: float | None
        if self.planned is not None:
            remaining = max(0.0, self.stop_at - now)
        elif self.limit and c.iterations:
            measured = max(1e-9, now - self.warm_end)
            remaining = max(0.0, measured * (self.limit - c.iterations) / c.iterations)
        else:
            remaining = None
        return Progress(
            elapsed_s=elapsed,
            remaining_s=remaining,
            users=self.active,
            rps=rps,
            p95_ms=p95,
            errors=c.errors,
            iterations=c.iterations,
            dropped=c.dropped,
            warming_up=now < self.warm_end,
        )


@dataclass
class _Outcome:
    end: float
    interrupted: bool
    stuck: int
    keyboard: bool = False


class _Waiter:
    """The caller's side of a run, shared by the sync and async waits: when to stop (stop event,
    hard deadline, planned end), when the grace after the halt is over, how long to sleep, and
    the once-a-second fold of the users' buffers into progress."""

    def __init__(self, engine: Engine, run: _Run) -> None:
        self.engine = engine
        self.run = run
        self.grace = run.spec.effective_grace
        self.interval = engine.progress_interval
        self.next_progress = run.start + self.interval
        self.real_deadline = time.monotonic() + run.spec.effective_max_duration + self.grace
        self.halted_at: float | None = None
        self.interrupted = False
        self.now = run.clock()

    def decide(self) -> None:
        run, stop = self.run, self.engine.stop
        self.now = now = run.clock()
        if not run.aborted:
            if stop is not None and stop.is_set():
                self.interrupted = True
                run.stop(abort=True)
            elif time.monotonic() >= self.real_deadline - self.grace:
                run.stop(abort=True)
            elif now >= run.stop_at and not run.halted:
                run.stop()
        if run.halted and self.halted_at is None:
            self.halted_at = time.monotonic()

    def expired(self) -> bool:
        """Halted, and the users had their grace (or the hard deadline came)."""
        if self.halted_at is None:
            return False
        mono = time.monotonic()
        return mono - self.halted_at >= self.grace or mono >= self.real_deadline

    def timeout(self) -> float:
        run, now = self.run, self.now
        timeout = min(_TICK, max(0.0, self.next_progress - now))
        if not run.halted:
            timeout = min(timeout, max(0.0, run.stop_at - now))
        return max(timeout, 0.001)

    def tick(self) -> None:
        run = self.run
        self.now = now = run.clock()
        run.collector.note_users(int(now - run.start), run.active)
        if now >= self.next_progress:
            late = math.floor((now - self.next_progress) / self.interval) + 1
            self.next_progress += self.interval * max(1, late)
            run.collector.pull(int(now - run.start), run.active)
            self.engine._emit(run)


class Engine:
    """Runs load. ``progress`` is called about once a second from the caller's thread (the
    event loop for async runs); ``stop`` ends a run early (``interrupted=True``)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.progress = progress
        self.stop = stop
        self.progress_interval = progress_interval
        self.last_result: LoadResult | None = None
        self._progress_failed = False

    # ------------------------------------------------------------------ helpers
    def _emit(self, run: _Run) -> None:
        cb = self.progress
        if cb is None or self._progress_failed:
            return
        try:
            cb(run.progress())
        except Exception as exc:  # a broken progress display must not break the run
            self._progress_failed = True
            run.warnings.append(f"progress callback failed and was disabled: {error_key(exc)}")

    def _result(
        self,
        run: _Run,
        outcome: _Outcome,
        recorder: StatsRecorder,
        cpu: float,
        wall: float,
        lag: LatencyHistogram | None,
        lag_over: int | None = None,
    ) -> LoadResult:
        spec = run.spec
        c = run.collector
        c.pull(None, run.active)
        measured_from = run.warm_end if spec.warmup else run.start
        duration = max(0.0, outcome.end - measured_from)
        rows = c.rows(float(spec.warmup), outcome.end - run.start)
        warnings = list(run.warnings)
        if outcome.stuck:
            warnings.append(
                f"{outcome.stuck} user(s) were still inside an iteration {spec.effective_grace:g}s "
                "after the end and were abandoned; those iterations are not measured "
                "(a body that hangs? give it a timeout)"
            )
        if run.limit and c.iterations < run.limit and not outcome.interrupted and not (
            spec.is_open and c.iterations + c.dropped >= run.limit
        ):
            warnings.append(
                f"only {c.iterations} of {run.limit} iterations ran before max_duration "
                f"({spec.effective_max_duration:g}s)"
            )
        clamped = c.latency.clamped + c.error_latency.clamped
        if clamped:
            warnings.append(
                f"{clamped} latencies were outside the histogram range (0..1h) and were clamped"
            )
        lag_p99 = lag.p(99) if lag is not None and lag.count else None
        sat = Saturation.judge(cpu / wall if wall > 0 else 0.0, lag_p99, lag_over)
        if sat.saturated:
            warnings.append(f"load generator saturated: {sat.reason}")
        result = LoadResult(
            iterations=c.iterations,
            errors=c.errors,
            dropped=c.dropped,
            duration_s=duration,
            latency=c.latency,
            error_latency=c.error_latency,
            timeline=rows,
            errors_by_kind=dict(c.errors_by_kind),
            endpoints=recorder.snapshot(),
            saturation=sat,
            warnings=warnings,
            interrupted=outcome.interrupted,
            warmup_iterations=c.warm,
            peak_users=run.peak_active,
            model="open" if spec.is_open else "closed",
        )
        self.last_result = result
        return result

    # ================================================================== sync
    def run_sync(self, fn: Callable[[], object], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (one iteration) as ``spec`` says, in threads. See the module docstring."""
        run = _Run(self, spec, is_async=False)
        recorder = StatsRecorder()
        token = current_recorder.set(recorder)
        try:
            ctx = contextvars.copy_context()
        finally:
            current_recorder.reset(token)
        threads: list[threading.Thread] = []
        alive = [0]
        alive_lock = threading.Lock()
        all_done = threading.Event()

        def spawn(target: Callable[..., None], *args: object) -> None:
            def main() -> None:
                try:
                    target(*args)
                except BaseException as exc:  # re-raised in the caller's thread
                    run.fatal_error(exc)
                finally:
                    with alive_lock:
                        alive[0] -= 1
                        if alive[0] == 0:
                            all_done.set()

            with alive_lock:
                alive[0] += 1
            th = threading.Thread(
                target=ctx.copy().run, args=(main,), name=f"stressguard-user-{len(threads)}",
                daemon=True,
            )
            threads.append(th)
            th.start()

        cpu0, wall0 = time.process_time(), time.monotonic()
        run.begin()
        if spec.is_open:
            spawn(self._sync_scheduler, run, fn, spawn)
        else:
            for i in range(spec.peak_users):
                spawn(self._sync_closed_user, run, fn, _closed_intervals(spec, i))
        outcome = self._sync_wait(run, all_done, threads)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        result = self._result(run, outcome, recorder, cpu, wall, None)
        fatal = run.fatal
        if fatal is not None:
            if isinstance(fatal, KeyboardInterrupt) and not isinstance(fatal, LoadInterrupted):
                result.interrupted = True
                raise LoadInterrupted(result) from fatal
            raise fatal
        if outcome.keyboard:
            raise LoadInterrupted(result)
        return result

    def _sync_wait(
        self, run: _Run, all_done: threading.Event, threads: list[threading.Thread]
    ) -> _Outcome:
        waiter = _Waiter(self, run)
        interrupted = False
        keyboard = False
        try:
            while True:
                waiter.decide()
                if waiter.expired():
                    break
                if all_done.wait(waiter.timeout()):
                    break
                waiter.tick()
            interrupted = waiter.interrupted
        except KeyboardInterrupt:
            interrupted = keyboard = True
            run.stop(abort=True)
            deadline = time.monotonic() + min(waiter.grace, _INTERRUPT_JOIN)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                all_done.wait(max(0.0, deadline - time.monotonic()))
        end = run.clock()
        run.stop(abort=True)  # finished, or done waiting: nothing new may start
        # users that did not finish: give them a moment to notice the halt (sleepers wake up)
        stuck_deadline = time.monotonic() + 0.2
        for th in threads:
            th.join(max(0.0, stuck_deadline - time.monotonic()))
        stuck = sum(1 for th in threads if th.is_alive())
        if stuck and not all_done.is_set():
            end = run.clock()
        return _Outcome(end=end, interrupted=interrupted, stuck=stuck, keyboard=keyboard)

    @staticmethod
    def _sync_closed_user(
        run: _Run, fn: Callable[[], object], intervals: list[tuple[float, float]]
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        tickets = run.tickets
        limit = run.limit
        think = run.spec.think_time
        halt = run.halt
        buf = run.collector.new_buf()
        lock = buf.lock
        mask = _MASK
        for a, b in intervals:
            begin = start + a
            until = min(start + b, run.stop_at)
            now = clock()
            if begin >= until:
                continue
            if begin > now and halt.wait(begin - now):
                return
            if run.halted:
                return
            run.user_up()
            try:
                while not run.halted:
                    t0 = clock()
                    if t0 >= until:
                        break
                    if t0 < warm_end:
                        with contextlib.suppress(Exception):  # warm-up errors: not measured
                            fn()
                        buf.warm += 1
                    else:
                        if tickets is not None and next(tickets) >= limit:
                            run.out_of_tickets()
                            break
                        try:
                            fn()
                        except Exception as exc:
                            t1 = clock()
                            buf.add_error(int(t1 - start), t1 - t0, exc)
                        else:
                            t1 = clock()
                            us = int((t1 - t0) * 1e6 + 0.5)
                            if 0 <= us <= mask:
                                key = (int(t1 - start) << 32) | us
                                with lock:
                                    d = buf.lat
                                    d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - t0)
                    if think and halt.wait(think):
                        break
            finally:
                run.user_down()

    def _sync_scheduler(
        self,
        run: _Run,
        fn: Callable[[], object],
        spawn: Callable[..., None],
    ) -> None:
        """Open model: start iterations at their intended times on free worker threads."""
        import queue

        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        halt = run.halt
        arrivals = _Arrivals(run.spec)
        jobs: queue.SimpleQueue[tuple[float, bool] | None] = queue.SimpleQueue()
        idle = [0]
        idle_lock = threading.Lock()
        workers = [0]
        sched_buf = run.collector.new_buf()
        limit = run.limit
        issued = 0
        max_users = run.max_users

        def worker(job: tuple[float, bool] | None) -> None:
            buf = run.collector.new_buf()
            lock = buf.lock
            while job is not None:
                intended, measured = job
                run.user_up()
                try:
                    try:
                        fn()
                    except Exception as exc:
                        t1 = clock()
                        if measured:
                            buf.add_error(int(t1 - start), t1 - intended, exc)
                    else:
                        t1 = clock()
                        if measured:
                            us = int((t1 - intended) * 1e6 + 0.5)
                            if 0 <= us <= _MASK:
                                key = (int(t1 - start) << 32) | us
                                with lock:
                                    d = buf.lat
                                    d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - intended)
                        else:
                            buf.warm += 1
                finally:
                    run.user_down()
                with idle_lock:
                    idle[0] += 1
                job = jobs.get()

        k = 0
        try:
            while not run.aborted:
                rel = arrivals.time_of(k)
                if rel is None:
                    break
                target = start + rel
                if target >= run.stop_at:
                    break
                now = clock()
                if target > now and halt.wait(target - now) and run.aborted:
                    break
                k += 1
                measured = target >= warm_end
                if measured and limit:
                    if issued >= limit:
                        break
                    issued += 1
                with idle_lock:
                    if idle[0] > 0:
                        idle[0] -= 1
                        action = 1
                    elif workers[0] < max_users:
                        workers[0] += 1
                        action = 2
                    else:
                        action = 0
                if action == 1:
                    jobs.put((target, measured))
                elif action == 2:
                    spawn(worker, (target, measured))
                elif measured:  # a drop during warm-up is not measured either
                    sched_buf.add_dropped(int(target - start))
        finally:
            if limit and issued >= limit:
                run.iterations_done = True
            for _ in range(workers[0]):
                jobs.put(None)

    # ================================================================== async
    async def run_async(self, fn: Callable[[], Awaitable[object]], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (an ``async`` iteration) as ``spec`` says, as tasks on the running loop."""
        run = _Run(self, spec, is_async=True)
        recorder = StatsRecorder()
        token = current_recorder.set(recorder)
        tasks: set[asyncio.Task[None]] = set()
        in_body: dict[asyncio.Task[None], bool] = {}
        lag = LatencyHistogram()
        lag_over = [0]
        cpu0, wall0 = time.process_time(), time.monotonic()
        run.begin()
        ticker = asyncio.create_task(self._lag_ticker(run, lag, lag_over))
        try:
            if spec.is_open:
                tasks.add(
                    asyncio.create_task(self._async_scheduler(run, fn, tasks, in_body))
                )
            else:
                for i in range(spec.peak_users):
                    t = asyncio.create_task(
                        self._async_closed_user(run, fn, _closed_intervals(spec, i), in_body)
                    )
                    tasks.add(t)
            outcome = await self._async_wait(run, tasks, in_body)
        except asyncio.CancelledError:
            run.stop(abort=True)
            for t in tasks:
                t.cancel()
            ticker.cancel()
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            partial = self._result(
                run, _Outcome(run.clock(), True, 0), recorder, cpu, wall, lag, lag_over[0]
            )
            partial.interrupted = True
            raise
        finally:
            current_recorder.reset(token)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        result = self._result(run, outcome, recorder, cpu, wall, lag, lag_over[0])
        fatal = run.fatal
        if fatal is not None:
            if isinstance(fatal, KeyboardInterrupt) and not isinstance(fatal, LoadInterrupted):
                result.interrupted = True
                raise LoadInterrupted(result) from fatal
            raise fatal
        return result

    @staticmethod
    async def _lag_ticker(run: _Run, lag: LatencyHistogram, over: list[int]) -> None:
        clock = time.perf_counter
        while not run.halted:
            t = clock()
            await asyncio.sleep(LAG_TICK)
            late = max(0.0, clock() - t - LAG_TICK)
            lag.record(late)
            if late > LOOP_LAG_SATURATION:
                over[0] += 1

    async def _async_wait(
        self,
        run: _Run,
        tasks: set[asyncio.Task[None]],
        in_body: dict[asyncio.Task[None], bool],
    ) -> _Outcome:
        waiter = _Waiter(self, run)
        pending = {t for t in tasks if not t.done()}
        while pending:
            waiter.decide()
            if run.halted:
                # users waiting (ramp, think time) are cancelled; users mid-iteration finish
                for t in list(tasks):
                    if t.done():
                        continue
                    if not in_body.get(t, False) or (run.aborted and t is run.scheduler_task):
                        t.cancel()
                if waiter.expired():
                    break
            pending = {t for t in tasks if not t.done()}
            if not pending:
                break
            await asyncio.wait(pending, timeout=waiter.timeout())
            pending = {t for t in tasks if not t.done()}
            waiter.tick()
        interrupted = waiter.interrupted
        end = run.clock()
        run.stop(abort=True)
        stuck = [t for t in tasks if not t.done()]
        for t in stuck:
            t.cancel()
        if stuck:
            await asyncio.gather(*stuck, return_exceptions=True)
        for t in tasks:
            if t.done() and not t.cancelled():
                exc = t.exception()
                if exc is not None:
                    run.fatal_error(exc)
        return _Outcome(end=end, interrupted=interrupted, stuck=len(stuck))

    @staticmethod
    async def _async_closed_user(
        run: _Run,
        fn: Callable[[], Awaitable[object]],
        intervals: list[tuple[float, float]],
        in_body: dict[asyncio.Task[None], bool],
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        tickets = run.tickets
        limit = run.limit
        think = run.spec.think_time
        buf = run.collector.new_buf()
        me = asyncio.current_task()
        assert me is not None
        mask = _MASK
        sleep = asyncio.sleep
        for a, b in intervals:
            begin = start + a
            until = min(start + b, run.stop_at)
            now = clock()
            if begin >= until:
                continue
            if begin > now:
                await sleep(begin - now)
            if run.halted:
                return
            run.user_up()
            last_yield = clock()
            try:
                while not run.halted:
                    t0 = clock()
                    if t0 >= until:
                        break
                    in_body[me] = True
                    if t0 < warm_end:
                        with contextlib.suppress(Exception):
                            await fn()
                        buf.warm += 1
                        t1 = clock()
                    else:
                        if tickets is not None and next(tickets) >= limit:
                            in_body[me] = False
                            run.out_of_tickets()
                            break
                        try:
                            await fn()
                        except Exception as exc:
                            t1 = clock()
                            buf.add_error(int(t1 - start), t1 - t0, exc)
                        else:
                            t1 = clock()
                            us = int((t1 - t0) * 1e6 + 0.5)
                            if 0 <= us <= mask:
                                key = (int(t1 - start) << 32) | us
                                d = buf.lat  # same thread as the collector: no lock needed
                                d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - t0)
                    in_body[me] = False
                    if think:
                        await sleep(think)
                        last_yield = clock()
                    elif t1 - last_yield >= _ASYNC_YIELD_EVERY:
                        await sleep(0)
                        last_yield = clock()
            finally:
                in_body[me] = False
                run.user_down()

    async def _async_scheduler(
        self,
        run: _Run,
        fn: Callable[[], Awaitable[object]],
        tasks: set[asyncio.Task[None]],
        in_body: dict[asyncio.Task[None], bool],
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        arrivals = _Arrivals(run.spec)
        buf = run.collector.new_buf()
        limit = run.limit
        max_users = run.max_users
        issued = 0
        busy = [0]

        async def job(intended: float, measured: bool) -> None:
            me = asyncio.current_task()
            assert me is not None
            in_body[me] = True
            run.user_up()
            try:
                try:
                    await fn()
                except Exception as exc:
                    t1 = clock()
                    if measured:
                        buf.add_error(int(t1 - start), t1 - intended, exc)
                else:
                    t1 = clock()
                    if measured:
                        us = int((t1 - intended) * 1e6 + 0.5)
                        if 0 <= us <= _MASK:
                            key = (int(t1 - start) << 32) | us
                            d = buf.lat
                            d[key] = d.get(key, 0) + 1
                        else:
                            buf.add_odd(int(t1 - start), t1 - intended)
                    else:
                        buf.warm += 1
            finally:
                busy[0] -= 1
                run.user_down()
                in_body.pop(me, None)
                tasks.discard(me)

        me = asyncio.current_task()
        assert me is not None
        run.scheduler_task = me
        in_body[me] = True  # not cancelled at a natural end: it accounts for every arrival
        k = 0
        while not run.aborted:
            rel = arrivals.time_of(k)
            if rel is None:
                break
            target = start + rel
            if target >= run.stop_at:
                break
            now = clock()
            if target > now:
                await asyncio.sleep(target - now)
                if run.aborted:
                    break
            k += 1
            measured = target >= warm_end
            if measured and limit:
                if issued >= limit:
                    break
                issued += 1
            if busy[0] < max_users:
                busy[0] += 1
                tasks.add(asyncio.create_task(job(target, measured)))
            elif measured:
                buf.add_dropped(int(target - start))
        if limit and issued >= limit:
            run.iterations_done = True
