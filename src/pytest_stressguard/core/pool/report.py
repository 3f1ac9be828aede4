"""What a :class:`~pytest_stressguard.core.pool.probe.PoolProbe` saw, as plain data.

The records here serialise (``to_dict``/``from_dict``) for the JSON report, and
:data:`POOL_METRICS` declares every figure ``PoolProbe.metrics()`` returns.
This module must not import psycopg: it is read when thresholds are parsed, and the database
driver is an optional extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from ..histogram import LatencyHistogram
from ..metrics import Metric

SQLSTATE_SERIALIZATION_FAILURE: Final = "40001"
SQLSTATE_DEADLOCK: Final = "40P01"

#: Every figure :meth:`PoolProbe.metrics` returns; times in seconds.
POOL_METRICS: Final[tuple[Metric, ...]] = (
    Metric("pool_wait_p95", "time",
           "95th percentile of the time getconn() waited (a timeout counts its full wait)"),
    Metric("pool_waiting_max", "number", "most requests waiting for a connection at once"),
    Metric("pool_timeouts", "number", "getconn() calls that failed with PoolTimeout"),
    Metric("pool_errors", "number",
           "getconn() failures other than timeouts, connection-level errors, lost connections "
           "and failed connection attempts"),
    Metric("leaked_connections", "number",
           "connections checked out and not returned (after finish(): never returned)"),
    Metric("deadlocks", "number", "deadlocks (SQLSTATE 40P01) seen by the pool's connections"),
    Metric("serialization_failures", "number",
           "serialization failures (SQLSTATE 40001) seen by the pool's connections"),
    Metric("dirty_returns", "number",
           "connections returned inside a transaction or query, or with a session setting changed"),
    Metric("pool_wait_max", "time", "longest time getconn() waited"),
    Metric("pool_requests", "number", "getconn() calls served or timed out",
           higher_is_better=True),
)

DirtyKind = Literal[
    "open_transaction",
    "failed_transaction",
    "active_query",
    "autocommit_changed",
    "isolation_changed",
    "read_only_changed",
    "deferrable_changed",
]
DIRTY_KINDS: Final[tuple[DirtyKind, ...]] = (
    "open_transaction",
    "failed_transaction",
    "active_query",
    "autocommit_changed",
    "isolation_changed",
    "read_only_changed",
    "deferrable_changed",
)


def _error_kind(exc: BaseException) -> str:
    """The ``errors_by_kind`` key of an exception: its type and first line, bounded."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    kind = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return kind if len(kind) <= 200 else kind[:197] + "..."


@dataclass(frozen=True)
class PoolTimelineRow:
    """One sample of the pools (summed when a probe watches several).

    ``size``/``available``/``waiting`` are psycopg_pool's gauges, ``in_use`` the connections
    checked out through the probe; the other fields count events since the previous row.
    """

    t: float
    size: int
    available: int
    waiting: int
    in_use: int
    requests: int
    wait_max_ms: float | None
    timeouts: int
    errors: int
    lost: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3), "size": self.size, "available": self.available,
            "waiting": self.waiting, "in_use": self.in_use, "requests": self.requests,
            "wait_max_ms": None if self.wait_max_ms is None else round(self.wait_max_ms, 3),
            "timeouts": self.timeouts, "errors": self.errors, "lost": self.lost,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolTimelineRow:
        wm = d.get("wait_max_ms")
        return cls(
            t=float(d["t"]), size=int(d["size"]), available=int(d["available"]),
            waiting=int(d["waiting"]), in_use=int(d["in_use"]), requests=int(d["requests"]),
            wait_max_ms=None if wm is None else float(wm), timeouts=int(d["timeouts"]),
            errors=int(d["errors"]), lost=int(d["lost"]),
        )

    def merged(self, later: PoolTimelineRow) -> PoolTimelineRow:
        """This row and the next one as one row (used to keep the timeline bounded)."""
        waits = [w for w in (self.wait_max_ms, later.wait_max_ms) if w is not None]
        return PoolTimelineRow(
            t=self.t, size=later.size, available=min(self.available, later.available),
            waiting=max(self.waiting, later.waiting), in_use=max(self.in_use, later.in_use),
            requests=self.requests + later.requests,
            wait_max_ms=max(waits) if waits else None,
            timeouts=self.timeouts + later.timeouts, errors=self.errors + later.errors,
            lost=self.lost + later.lost,
        )


@dataclass(frozen=True)
class LeakedConnection:
    """A connection checked out and never returned: who took it, where and when."""

    probe: str
    pool: str
    held_s: float
    thread: str
    backend_pid: int | None
    closed: bool
    where: tuple[str, ...]

    def describe(self) -> str:
        at = " <- ".join(self.where) if self.where else "unknown location"
        return (
            f"connection of pool {self.pool!r} taken {self.held_s:.2f}s before the end by "
            f"{self.thread} at {at} was never returned"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe, "pool": self.pool, "held_s": round(self.held_s, 3),
            "thread": self.thread, "backend_pid": self.backend_pid, "closed": self.closed,
            "where": list(self.where),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeakedConnection:
        pid = d.get("backend_pid")
        return cls(
            probe=str(d["probe"]), pool=str(d["pool"]), held_s=float(d["held_s"]),
            thread=str(d["thread"]), backend_pid=None if pid is None else int(pid),
            closed=bool(d["closed"]), where=tuple(str(w) for w in d.get("where", ())),
        )


@dataclass(frozen=True)
class ServerSnapshot:
    """What the server says about the pool's backends (see :meth:`PoolProbe.server`).

    ``by_state`` counts ``pg_stat_activity.state`` for the pool's backends; ``lock_waits`` are
    its backends waiting for a lock (``pg_locks.granted = false``), ``lock_waits_db`` all such
    waits in the database, ``lock_wait_details`` up to 10 of the pool's waits. ``*_delta`` are
    database-wide ``pg_stat_database`` counters since the probe started (other sessions count
    too, and each backend publishes its counts lazily: within about a second while busy, up to
    ~10 s after it goes idle; the probe's own ``deadlocks`` metric is exact and immediate).
    ``error`` is set (and the rest empty) when the server could not be asked.
    """

    t: float
    by_state: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    waiting_on_lock: int = 0
    lock_waits: int = 0
    lock_waits_db: int = 0
    lock_wait_details: tuple[dict[str, Any], ...] = ()
    longest_transaction_s: float | None = None
    deadlocks_delta: int | None = None
    rollbacks_delta: int | None = None
    commits_delta: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3), "by_state": dict(self.by_state),
            "connections": self.connections, "waiting_on_lock": self.waiting_on_lock,
            "lock_waits": self.lock_waits, "lock_waits_db": self.lock_waits_db,
            "lock_wait_details": [dict(d) for d in self.lock_wait_details],
            "longest_transaction_s": self.longest_transaction_s,
            "deadlocks_delta": self.deadlocks_delta, "rollbacks_delta": self.rollbacks_delta,
            "commits_delta": self.commits_delta, "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerSnapshot:
        def opt_int(v: Any) -> int | None:
            return None if v is None else int(v)

        lts = d.get("longest_transaction_s")
        return cls(
            t=float(d.get("t", 0.0)), by_state={str(k): int(v) for k, v in
                                                 dict(d.get("by_state", {})).items()},
            connections=int(d.get("connections", 0)),
            waiting_on_lock=int(d.get("waiting_on_lock", 0)),
            lock_waits=int(d.get("lock_waits", 0)), lock_waits_db=int(d.get("lock_waits_db", 0)),
            lock_wait_details=tuple(dict(x) for x in d.get("lock_wait_details", ())),
            longest_transaction_s=None if lts is None else float(lts),
            deadlocks_delta=opt_int(d.get("deadlocks_delta")),
            rollbacks_delta=opt_int(d.get("rollbacks_delta")),
            commits_delta=opt_int(d.get("commits_delta")),
            error=None if d.get("error") is None else str(d["error"]),
        )


@dataclass(frozen=True)
class WaiterOutcome:
    """One request made while the pool was exhausted: ``timeout`` is the expected outcome."""

    outcome: Literal["timeout", "served", "error"]
    elapsed_s: float
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "elapsed_s": round(self.elapsed_s, 4),
                "error": self.error}


@dataclass(frozen=True)
class RecoveryReport:
    """The exhaustion-and-recovery scenario (see :func:`exhaust_and_recover`).

    ``ok`` when every connection could be held, every waiter failed with ``PoolTimeout`` within
    ``hold_timeout + tolerance`` and the pool served ``max_size`` connections again afterwards.
    """

    pool: str
    max_size: int
    held: int
    hold_s: float
    hold_timeout: float
    tolerance: float
    waiters: tuple[WaiterOutcome, ...]
    recovered: bool
    recovery_s: float | None
    served_after: int
    error: str | None = None

    @property
    def exhausted(self) -> bool:
        return self.held >= self.max_size

    @property
    def timed_out(self) -> int:
        return sum(1 for w in self.waiters if w.outcome == "timeout")

    @property
    def within_timeout(self) -> bool:
        limit = self.hold_timeout + self.tolerance
        return bool(self.waiters) and all(
            w.outcome == "timeout" and w.elapsed_s <= limit for w in self.waiters
        )

    @property
    def ok(self) -> bool:
        return self.exhausted and self.within_timeout and self.recovered and self.error is None

    def describe(self) -> str:
        parts = [f"held {self.held}/{self.max_size} connections of {self.pool!r} "
                 f"in {self.hold_s:.2f}s"]
        if self.waiters:
            times = ", ".join(f"{w.elapsed_s:.2f}s" for w in self.waiters)
            parts.append(
                f"{self.timed_out}/{len(self.waiters)} waiters failed with PoolTimeout "
                f"after {times} (timeout {self.hold_timeout:.2f}s)"
            )
            for w in self.waiters:
                if w.outcome != "timeout":
                    parts.append(f"a waiter was {w.outcome}: {w.error or 'no timeout'}")
        if self.recovered and self.recovery_s is not None:
            parts.append(
                f"after release the pool served {self.served_after} connections "
                f"in {self.recovery_s:.2f}s"
            )
        elif not self.error:
            parts.append("the pool did NOT serve again after release")
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts) + (": ok" if self.ok else ": FAILED")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool, "max_size": self.max_size, "held": self.held,
            "hold_s": round(self.hold_s, 4), "hold_timeout": self.hold_timeout,
            "tolerance": self.tolerance, "waiters": [w.to_dict() for w in self.waiters],
            "timed_out": self.timed_out, "within_timeout": self.within_timeout,
            "recovered": self.recovered,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 4),
            "served_after": self.served_after, "error": self.error, "ok": self.ok,
        }


@dataclass
class PoolReport:
    """Everything a probe saw, as plain data (``to_dict`` for the JSON report's ``pool`` block).

    ``metrics`` are in canonical units (seconds); ``wait_ms`` are wait percentiles in ms.
    """

    name: str
    pools: list[dict[str, Any]]
    application_names: list[str]
    duration_s: float
    metrics: dict[str, float | None]
    wait_ms: dict[str, float | None]
    wait_histogram: str
    timeline: list[PoolTimelineRow]
    leaked: list[LeakedConnection]
    dirty: dict[str, int]
    dirty_examples: list[dict[str, Any]]
    errors_by_kind: dict[str, int]
    sqlstates: dict[str, dict[str, Any]]
    server: ServerSnapshot | None
    recovery: list[RecoveryReport]
    problems: list[str]
    timeline_interval_s: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pools": [dict(p) for p in self.pools],
            "application_names": list(self.application_names),
            "duration_s": round(self.duration_s, 3),
            "metrics": dict(self.metrics),
            "wait_ms": dict(self.wait_ms),
            "wait_histogram": self.wait_histogram,
            "timeline_interval_s": self.timeline_interval_s,
            "timeline": [r.to_dict() for r in self.timeline],
            "leaked": [leak.to_dict() for leak in self.leaked],
            "dirty": dict(self.dirty),
            "dirty_examples": [dict(x) for x in self.dirty_examples],
            "errors_by_kind": dict(self.errors_by_kind),
            "sqlstates": {k: dict(v) for k, v in self.sqlstates.items()},
            "server": None if self.server is None else self.server.to_dict(),
            "recovery": [r.to_dict() for r in self.recovery],
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolReport:
        """Rebuild from :meth:`to_dict` (recovery reports come back as plain dicts' data)."""
        server = d.get("server")
        return cls(
            name=str(d["name"]), pools=[dict(p) for p in d.get("pools", ())],
            application_names=[str(a) for a in d.get("application_names", ())],
            duration_s=float(d.get("duration_s", 0.0)),
            metrics={str(k): (None if v is None else float(v))
                     for k, v in dict(d.get("metrics", {})).items()},
            wait_ms={str(k): (None if v is None else float(v))
                     for k, v in dict(d.get("wait_ms", {})).items()},
            wait_histogram=str(d.get("wait_histogram", "")),
            timeline=[PoolTimelineRow.from_dict(r) for r in d.get("timeline", ())],
            leaked=[LeakedConnection.from_dict(x) for x in d.get("leaked", ())],
            dirty={str(k): int(v) for k, v in dict(d.get("dirty", {})).items()},
            dirty_examples=[dict(x) for x in d.get("dirty_examples", ())],
            errors_by_kind={str(k): int(v) for k, v in dict(d.get("errors_by_kind", {})).items()},
            sqlstates={str(k): dict(v) for k, v in dict(d.get("sqlstates", {})).items()},
            server=None if server is None else ServerSnapshot.from_dict(server),
            recovery=[_recovery_from_dict(r) for r in d.get("recovery", ())],
            problems=[str(p) for p in d.get("problems", ())],
            timeline_interval_s=float(d.get("timeline_interval_s", 0.25)),
        )

    def summary(self) -> str:
        """One line for the terminal: ``pool 5 conns: wait p95 157.3ms, waiting max 15, ...``."""
        m = self.metrics
        size = "+".join(str(p.get("max_size")) for p in self.pools) or "?"
        p95 = m.get("pool_wait_p95")
        parts = [f"wait p95 {'-' if p95 is None else f'{p95 * 1000:.1f}ms'}"]
        for key, label in (
            ("pool_waiting_max", "waiting max"), ("pool_timeouts", "timeouts"),
            ("pool_errors", "errors"), ("leaked_connections", "leaked"),
            ("dirty_returns", "dirty"), ("serialization_failures", "serialization failures"),
            ("deadlocks", "deadlocks"),
        ):
            parts.append(f"{label} {int(m.get(key) or 0)}")
        return f"pool {size} conns: " + ", ".join(parts)

    def wait_latency(self) -> LatencyHistogram:
        """The wait-time histogram (seconds), e.g. to merge several probes."""
        if not self.wait_histogram:
            return LatencyHistogram()
        return LatencyHistogram.decode(self.wait_histogram)


def _recovery_from_dict(d: Mapping[str, Any]) -> RecoveryReport:
    rs = d.get("recovery_s")
    return RecoveryReport(
        pool=str(d["pool"]), max_size=int(d["max_size"]), held=int(d["held"]),
        hold_s=float(d["hold_s"]), hold_timeout=float(d["hold_timeout"]),
        tolerance=float(d.get("tolerance", 0.0)),
        waiters=tuple(
            WaiterOutcome(
                outcome=cast(Literal["timeout", "served", "error"], str(w["outcome"])),
                elapsed_s=float(w["elapsed_s"]), error=str(w.get("error", "")),
            )
            for w in d.get("waiters", ())
        ),
        recovered=bool(d["recovered"]), recovery_s=None if rs is None else float(rs),
        served_after=int(d.get("served_after", 0)),
        error=None if d.get("error") is None else str(d["error"]),
    )


def _problems(r: PoolReport) -> list[str]:
    """One readable line per problem, for the test report."""
    m = r.metrics
    out: list[str] = []
    for leak in r.leaked:
        out.append(f"{r.name}: {leak.describe()}")
    timeouts = int(m.get("pool_timeouts") or 0)
    if timeouts:
        limits = sorted({float(p["timeout"]) for p in r.pools})
        sizes = sorted({int(p["max_size"]) for p in r.pools})
        out.append(
            f"{timeouts} request(s) timed out waiting for a connection (pool timeout "
            f"{', '.join(f'{x:.2f}s' for x in limits)}, max_size {', '.join(map(str, sizes))}, "
            f"up to {int(m.get('pool_waiting_max') or 0)} waiting at once)"
        )
    errors = int(m.get("pool_errors") or 0)
    if errors:
        kinds = [k for k in r.errors_by_kind if not k.startswith("PoolTimeout")]
        top = sorted(kinds, key=lambda k: -r.errors_by_kind[k])[:3]
        detail = "; ".join(f"{k} (x{r.errors_by_kind[k]})" for k in top)
        gone = any(
            s in k.lower() for k in kinds
            for s in ("refused", "terminating connection", "server closed", "no connection to")
        )
        lead = "the database server went away or refused connections: " if gone else ""
        out.append(f"{errors} pool/connection error(s): {lead}{detail}")
    if r.dirty:
        kinds_txt = ", ".join(f"{k} x{v}" for k, v in sorted(r.dirty.items()))
        out.append(f"connections returned dirty to the pool: {kinds_txt}")
    for rec in r.recovery:
        if not rec.ok:
            out.append(f"exhaustion/recovery: {rec.describe()}")
    return out

