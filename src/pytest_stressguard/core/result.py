"""What a load run measured: :class:`LoadResult`, its timeline rows and its saturation verdict.

Errors
------
An iteration that raises an ``Exception`` is an error, grouped by ``"{type}: {message}"``
(first line, at most 200 characters). Its latency goes to ``LoadResult.error_latency``, *not* to
``LoadResult.latency``: fast failures (an instant 500) must not make the latency percentiles look
better. ``iterations`` counts successes and errors; ``error_rate = errors / iterations``;
``rps`` counts both, ``ok_rps`` only the successes (a throughput gate on ``rps`` passes while
everything fails).

The measured window
-------------------
``duration_s`` runs from the end of the warm-up (or the start) to the end of the load: the moment
the last user that finished went down, or the halt if that came later. Time spent waiting for
users stuck in an iteration (the grace) is not load, so it is not in the window: those users are
counted in ``abandoned_users``. Users the engine could not start (thread creation failed or their
thread got no CPU before the end) are counted in ``users_not_started``.

Saturation
----------
The generator's own process CPU (``time.process_time`` over wall time) and, for async bodies, the
event-loop lag (a ticker sleeping 50 ms and measuring its overshoot). ``saturated`` when CPU is
>= 90 % of one core (a Python process cannot use more than about one core of Python code
because of the GIL), or the loop-lag p99 is > 20 ms in at least 2 samples (a task that should
wake up waits more than 20 ms for the loop: measured latencies then include the client's own
queueing), or one stall of the loop (``loop_blocked_s``, its longest) lasted >= 1 s or >= 10 %
of the run (but >= 250 ms, longer than a GC pause): a sync call in an ``async def`` body.

The figures :meth:`LoadResult.metrics` and :meth:`LoadResult.endpoint_metrics` produce are
declared in :data:`LOAD_METRICS` (see :mod:`pytest_stressguard.core.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .histogram import PERCENTILE_KEYS, LatencyHistogram, parse_percentile_name
from .metrics import Metric
from .records import LoadDict, SaturationDict, TimelineRowDict
from .stats import EndpointStats

__all__ = [
    "LOAD_METRICS",
    "LoadInterrupted",
    "LoadResult",
    "Progress",
    "Saturation",
    "TimelineRow",
]

#: CPU ratio (process CPU seconds / wall seconds) at which the generator counts as saturated.
CPU_SATURATION = 0.90
#: Shorter runs are not judged by the generator's CPU (too short to tell a busy core from a
#: saturated one: 200 iterations of an empty body use 100 % of a core for a few milliseconds).
MIN_CPU_JUDGE_S = 1.0
#: Event-loop lag p99 (seconds) above which an async generator counts as saturated.
LOOP_LAG_SATURATION = 0.020
#: One stall of the event loop this long (seconds) is saturation, whatever the run's length...
LOOP_BLOCK_SATURATION = 1.0
#: ...and so is one longer than this share of the run, if longer than a GC pause could be.
LOOP_BLOCK_SHARE = 0.10
LOOP_BLOCK_FLOOR = 0.25


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

    def to_dict(self) -> TimelineRowDict:
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
    #: the longest single stall of the event loop (async runs), seconds
    loop_blocked_s: float | None = None

    def to_dict(self) -> SaturationDict:
        return {
            "cpu_ratio": self.cpu_ratio,
            "loop_lag_p99_ms": self.loop_lag_p99_ms,
            "loop_blocked_s": self.loop_blocked_s,
            "saturated": self.saturated,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Saturation:
        lag = d.get("loop_lag_p99_ms")
        blocked = d.get("loop_blocked_s")
        return cls(
            cpu_ratio=float(d.get("cpu_ratio", 0.0)),
            loop_lag_p99_ms=None if lag is None else float(lag),
            saturated=bool(d.get("saturated", False)),
            reason=str(d.get("reason", "")),
            loop_blocked_s=None if blocked is None else float(blocked),
        )

    @classmethod
    def judge(
        cls,
        cpu_ratio: float,
        lag_p99_s: float | None,
        lag_over: int | None = None,
        blocked_s: float | None = None,
        run_s: float | None = None,
    ) -> Saturation:
        """``lag_over``: how many lag samples exceeded the limit; one hiccup (a GC pause)
        in a short run is not saturation, so at least 2 are needed when it is given.
        ``blocked_s``: the longest stall of the loop in a run of ``run_s`` seconds; one long
        stall is saturation on its own (see the module docstring). The generator's CPU is not
        judged on runs shorter than ``MIN_CPU_JUDGE_S``: any busy second reads as 100 %."""
        reasons = []
        if cpu_ratio >= CPU_SATURATION and (run_s is None or run_s >= MIN_CPU_JUDGE_S):
            reasons.append(
                f"the load generator used {cpu_ratio:.0%} of a CPU core (one Python process "
                "runs Python code on about one core): latencies include waiting for the "
                "generator's CPU, not only the system under test; spread the load "
                "(pytest -n) or lower users/rate"
            )
        block_limit = min(LOOP_BLOCK_SATURATION,
                          max(LOOP_BLOCK_FLOOR, LOOP_BLOCK_SHARE * (run_s or 0.0)))
        if blocked_s is not None and blocked_s >= block_limit:
            reasons.append(
                f"the event loop was blocked for {blocked_s:.1f}s by the body (a sync call in "
                "an async def?): every task waited meanwhile, so latencies and rates measure "
                "the client; await the call or run it in a thread (asyncio.to_thread)"
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
            loop_blocked_s=blocked_s,
        )

    def merge(self, other: Saturation) -> Saturation:
        def most(a: float | None, b: float | None) -> float | None:
            return a if b is None else b if a is None else max(a, b)

        reasons = [r for r in (self.reason, other.reason) if r]
        return Saturation(
            cpu_ratio=max(self.cpu_ratio, other.cpu_ratio),
            loop_lag_p99_ms=most(self.loop_lag_p99_ms, other.loop_lag_p99_ms),
            saturated=self.saturated or other.saturated,
            reason="; ".join(dict.fromkeys(reasons)),
            loop_blocked_s=most(self.loop_blocked_s, other.loop_blocked_s),
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


LOAD_METRICS: tuple[Metric, ...] = (
    Metric("pNN", "time", "latency percentile of successful iterations (p50, p95, p99.9: any NN)",
           per_endpoint=True),
    Metric("mean", "time", "mean latency of successful iterations", per_endpoint=True),
    Metric("min", "time", "fastest successful iteration", per_endpoint=True),
    Metric("max", "time", "slowest successful iteration", per_endpoint=True),
    Metric("rps", "rate", "iterations (successes and errors) per second of the measured window",
           higher_is_better=True, per_endpoint=True, also=("number",)),
    Metric("ok_rps", "rate", "successful iterations per second of the measured window",
           higher_is_better=True, per_endpoint=True, also=("number",)),
    Metric("iterations", "number", "measured iterations (successes and errors)",
           higher_is_better=True, per_endpoint=True),
    Metric("errors", "number", "iterations that raised", per_endpoint=True),
    Metric("error_rate", "ratio", "errors / iterations", per_endpoint=True),
    Metric("dropped", "number", "open model: arrivals that found no free user and did not start"),
)


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
    #: users still inside an iteration when the grace ran out (a hung body): not measured
    abandoned_users: int = 0
    #: users the engine could not start: thread creation failed, or no CPU before the end
    users_not_started: int = 0

    @property
    def rps(self) -> float:
        """Measured iterations (successes and errors) per second of the measured window."""
        return self.iterations / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok_rps(self) -> float:
        """Successful iterations per second of the measured window."""
        ok = self.iterations - self.errors
        return ok / self.duration_s if self.duration_s > 0 else 0.0

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
        out["ok_rps"] = self.ok_rps
        out["errors"] = float(self.errors)
        out["error_rate"] = self.error_rate if self.iterations else None
        out["dropped"] = float(self.dropped)
        out["iterations"] = float(self.iterations)
        return out

    def endpoint_metrics(self) -> dict[str, dict[str, float | None]]:
        """Values by metric name for each endpoint; ``rps`` and ``ok_rps`` over the run's
        measured window."""
        out = {}
        per_s = 1.0 / self.duration_s if self.duration_s > 0 else 0.0
        for name, st in self.endpoints.items():
            m = st.metrics()
            m["rps"] = st.count * per_s
            m["ok_rps"] = (st.count - st.errors) * per_s
            out[name] = m
        return out

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
        self.abandoned_users += other.abandoned_users
        self.users_not_started += other.users_not_started
        return self

    # ------------------------------------------------------------------ serialising
    def to_dict(self) -> LoadDict:
        """Plain data (JSON-safe): counts, ``latency_ms`` summary, HDR-encoded histograms."""
        return {
            "model": self.model,
            "iterations": self.iterations,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "dropped": self.dropped,
            "rps": self.rps,
            "ok_rps": self.ok_rps,
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
            "abandoned_users": self.abandoned_users,
            "users_not_started": self.users_not_started,
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
            abandoned_users=int(d.get("abandoned_users", 0)),
            users_not_started=int(d.get("users_not_started", 0)),
        )


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the users were stopped and ``result`` holds what was measured."""

    def __init__(self, result: LoadResult) -> None:
        super().__init__("load run interrupted")
        self.result = result
