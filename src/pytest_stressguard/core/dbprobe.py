"""Observe a psycopg connection pool under load: waits, exhaustion, contamination, leaks.

A :class:`PoolProbe` instruments one or more ``psycopg_pool`` pools (``pool()`` makes one,
``watch()`` adopts the user's own sync or async pool) by replacing ``getconn``/``putconn`` on the
pool *instance* (``connection()`` goes through them too) and, while a connection is checked out,
``wait`` on the connection instance: every statement, commit and rollback of psycopg passes
through ``Connection.wait``, so errors are seen whether they surface at ``execute()``, at
``commit()`` or at the end of a ``with conn.transaction():`` block (where SERIALIZABLE conflicts
usually appear). Nothing is patched on classes; ``finish()`` restores every instance.

What is measured (metric names as in the threshold grammar; times in seconds):

``pool_wait_p95``        95th percentile of the time ``getconn()`` took (waits that ended in a
                         timeout count with their full wait)
``pool_waiting_max``     most requests queued at once (psycopg_pool's ``requests_waiting``, read
                         at every request and by a ~4 Hz sampler, plus the request itself when it
                         was queued)
``pool_timeouts``        ``PoolTimeout`` raised by ``getconn()``
``pool_errors``          other ``getconn()`` failures, connection-level errors on checked-out
                         connections (SQLSTATE class 08, 57P01-57P03, 53300 or a lost connection),
                         failed connection attempts of the pool and connections it found broken
``leaked_connections``   connections checked out and not returned (at ``finish()``: never returned)
``deadlocks``            SQLSTATE 40P01 seen by the pool's connections
``serialization_failures`` SQLSTATE 40001 seen by the pool's connections
``dirty_returns``        connections given back inside a transaction (open or failed), during a
                         query, or with autocommit / isolation level / read-only / deferrable
                         changed since the pool handed them out the first time

``server()`` adds what the server sees: ``pg_stat_activity`` by state for the pool's backends
(by ``application_name`` and by backend pid), lock waits from ``pg_locks``, and deltas of the
database-wide counters of ``pg_stat_database`` (deadlocks, rollbacks) since the probe started.

This module never imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Final, Literal, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .histogram import LatencyHistogram
from .pgembed import redact_dsn
from .thresholds import ThresholdResult, evaluate, parse_thresholds

__all__ = [
    "DIRTY_KINDS",
    "POOL_METRICS",
    "SQLSTATE_DEADLOCK",
    "SQLSTATE_SERIALIZATION_FAILURE",
    "LeakedConnection",
    "PoolProbe",
    "PoolReport",
    "PoolTimelineRow",
    "RecoveryReport",
    "ServerSnapshot",
    "WaiterOutcome",
    "aexhaust_and_recover",
    "exhaust_and_recover",
]

SQLSTATE_SERIALIZATION_FAILURE: Final = "40001"
SQLSTATE_DEADLOCK: Final = "40P01"

#: The metric names :meth:`PoolProbe.metrics` returns (the gateable ones first).
POOL_METRICS: Final[tuple[str, ...]] = (
    "pool_wait_p95",
    "pool_waiting_max",
    "pool_timeouts",
    "pool_errors",
    "leaked_connections",
    "deadlocks",
    "serialization_failures",
    "dirty_returns",
    "pool_wait_max",
    "pool_requests",
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

# SQLSTATEs that mean "the connection or the server is gone", not "your SQL failed"
_CONNECTION_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
# keyword arguments of psycopg.connect() that are not libpq connection parameters
_NON_CONNINFO_KWARGS: Final = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)
_MAX_ERROR_KINDS: Final = 50
_MAX_EXAMPLES: Final = 5
_STACK_DEPTH: Final = 4

AnyPool = ConnectionPool[Any] | AsyncConnectionPool[Any]
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# plain data


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


# ---------------------------------------------------------------------------------------------
# helpers


def _error_kind(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    kind = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return kind if len(kind) <= 200 else kind[:197] + "..."


def _skip_dirs() -> tuple[str, ...]:
    dirs = {
        os.path.dirname(psycopg.__file__),
        os.path.dirname(psycopg_pool.__file__),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # pytest_stressguard
        os.path.dirname(contextlib.__file__) + os.sep + "contextlib",
        os.path.dirname(threading.__file__) + os.sep + "threading",
        os.path.dirname(asyncio.__file__),
        os.path.join(os.path.dirname(contextlib.__file__), "concurrent"),
    }
    for mod in ("_pytest", "pluggy"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, "__file__", None):
            dirs.add(os.path.dirname(str(m.__file__)))
    return tuple(sorted(dirs))


_SKIP: tuple[str, ...] = ()


def _short_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _where(depth: int = _STACK_DEPTH) -> tuple[str, ...]:
    """The innermost ``depth`` frames outside psycopg, the pool, this package and the stdlib
    plumbing, as ``"file:line in func"`` (cheap: no source lines are read)."""
    global _SKIP
    if not _SKIP:
        _SKIP = _skip_dirs()
    out: list[str] = []
    frame: FrameType | None = sys._getframe(1)
    walked = 0
    while frame is not None and walked < 60 and len(out) < depth:
        fn = frame.f_code.co_filename
        if not fn.startswith(_SKIP) and not fn.startswith("<frozen"):
            out.append(f"{_short_path(fn)}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
        walked += 1
    return tuple(out)


def _who() -> str:
    name = threading.current_thread().name
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return f"{name}/{task.get_name()}" if task is not None else name


def _is_connection_error(exc: psycopg.Error, conn: Any) -> bool:
    state = exc.sqlstate
    if state is not None and (state.startswith("08") or state in _CONNECTION_SQLSTATES):
        return True
    if state is None and isinstance(exc, psycopg.OperationalError):
        return True
    return bool(getattr(conn, "broken", False))


@dataclass
class _Settings:
    autocommit: bool
    isolation_level: Any
    read_only: bool | None
    deferrable: bool | None

    @classmethod
    def of(cls, conn: Any) -> _Settings:
        return cls(
            autocommit=bool(conn.autocommit),
            isolation_level=conn.isolation_level,
            read_only=conn.read_only,
            deferrable=conn.deferrable,
        )


@dataclass
class _Checkout:
    conn: Any
    watched: _Watched
    taken_at: float
    thread: str
    where: tuple[str, ...]
    backend_pid: int | None


class _PoolLogHandler(logging.Handler):
    """Collects psycopg_pool's "error connecting in 'pool'" warnings for the watched pools."""

    def __init__(self, probe: PoolProbe) -> None:
        super().__init__(level=logging.WARNING)
        self._probe = probe

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.msg == "error connecting in %r: %s" and isinstance(record.args, tuple):
                pool_name, exc = record.args[0], record.args[1]
                self._probe._on_connect_error(str(pool_name), exc)
        except Exception:  # a log handler must never raise
            pass


@dataclass
class _Watched:
    pool: AnyPool
    is_async: bool
    owned: bool
    app_name: str | None
    originals: dict[str, Any]
    stats0: dict[str, int]
    last_stats: dict[str, int]
    sample_stats: dict[str, int]
    in_flight: int = 0  # getconn() calls through the probe not yet returned


# ---------------------------------------------------------------------------------------------
# the probe


class PoolProbe:
    """Instrument psycopg pools and report on them (one probe per test).

    ``name`` names the test in reports (leaks say who took the connection). ``dsn`` is the
    default for :meth:`pool` and for the server monitor. ``sample_interval`` is the timeline
    sampler's period; the timeline keeps at most ``max_samples`` rows (older rows are merged in
    pairs, doubling the interval, so a long soak still fits). A context manager: ``finish()``
    on exit.
    """

    def __init__(
        self,
        name: str,
        *,
        dsn: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sample_interval: float = 0.25,
        max_samples: int = 2000,
        capture_stacks: bool = True,
    ) -> None:
        if sample_interval <= 0:
            raise ValueError(f"sample_interval must be > 0, got {sample_interval!r}")
        if max_samples < 2:
            raise ValueError(f"max_samples must be >= 2, got {max_samples!r}")
        self.name = name
        self.dsn = dsn
        self.clock = clock
        self.sample_interval = sample_interval
        self.max_samples = max_samples
        self.capture_stacks = capture_stacks
        self._t0 = clock()
        self._lock = threading.Lock()
        self._watched: list[_Watched] = []
        self._checkouts: dict[int, _Checkout] = {}
        self._settings: weakref.WeakKeyDictionary[Any, _Settings] = weakref.WeakKeyDictionary()
        self._pids: set[int] = set()
        self._wait_hist = LatencyHistogram()
        self._requests = 0
        self._timeouts = 0
        self._acquire_errors = 0
        self._conn_errors = 0
        self._connect_errors_logged = 0
        self._waiting_max = 0
        self._dirty: dict[str, int] = dict.fromkeys(DIRTY_KINDS, 0)
        self._dirty_returns = 0
        self._dirty_examples: list[dict[str, Any]] = []
        self._broken_returns = 0
        self._unknown_returns = 0
        self._errors_by_kind: dict[str, int] = {}
        self._sqlstates: dict[str, dict[str, Any]] = {}
        self._interval_wait_max: float | None = None
        self._interval_requests = 0
        self._interval_timeouts = 0
        self._interval_errors = 0
        self._timeline: list[PoolTimelineRow] = []
        self._interval = sample_interval
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._log_handler: _PoolLogHandler | None = None
        self._monitor: psycopg.Connection[Any] | None = None
        self._monitor_dsn: str | None = None
        self._db_baseline: dict[str, int] | None = None
        self._recoveries: list[RecoveryReport] = []
        self._report: PoolReport | None = None
        self._leaked_final: list[LeakedConnection] | None = None

    # ------------------------------------------------------------------ pools
    def pool(
        self,
        dsn: str | None = None,
        *,
        max_size: int = 20,
        min_size: int | None = None,
        timeout: float = 10.0,
        open_timeout: float = 30.0,
        kwargs: Mapping[str, Any] | None = None,
        **pool_kwargs: Any,
    ) -> ConnectionPool[Any]:
        """Create, open and watch a ``ConnectionPool`` (closed by :meth:`finish`).

        ``min_size`` defaults to ``max_size`` (a fixed-size pool: waits then measure contention,
        not growth). ``timeout`` is the pool's ``getconn`` timeout. ``kwargs`` are connection
        parameters (``application_name`` is set to a unique value so :meth:`server` can find the
        pool's backends); ``pool_kwargs`` go to ``ConnectionPool`` (``configure``, ``check``,
        ``max_waiting``, ...). Waits up to ``open_timeout`` for ``min_size`` connections and
        raises ``PoolTimeout`` naming the last connection error if they do not come.
        """
        self._check_not_finished()
        target = dsn if dsn is not None else self.dsn
        if target is None:
            raise ValueError("no DSN: pass pool(dsn) or PoolProbe(name, dsn=...)")
        app = self._new_app_name()
        conn_kwargs: dict[str, Any] = {"application_name": app, "connect_timeout": 5}
        conn_kwargs.update(kwargs or {})
        size_min = max_size if min_size is None else min_size
        pool_kwargs.setdefault("name", app)
        pool: ConnectionPool[Any] = ConnectionPool(
            target, min_size=size_min, max_size=max_size, timeout=timeout, kwargs=conn_kwargs,
            open=False, **pool_kwargs,
        )
        self._attach(pool, owned=True, app_name=str(conn_kwargs["application_name"]),
                     monitor_dsn=target)
        pool.open(wait=False)
        if size_min > 0:
            try:
                pool.wait(timeout=open_timeout)
            except PoolTimeout as exc:
                self._detach_failed(pool)
                last = self._last_connect_error() or "no connection error was logged"
                raise PoolTimeout(
                    f"could not open {size_min} connection(s) to {redact_dsn(target)} within "
                    f"{open_timeout:.1f}s: {last}"
                ) from exc
        return pool

    def watch(self, pool: _T, *, dsn: str | None = None) -> _T:
        """Instrument an existing ``ConnectionPool`` or ``AsyncConnectionPool``; returns it.

        Connections taken before the call are not tracked. ``dsn`` is used by :meth:`server`
        when the pool's own conninfo cannot be reused (e.g. a callable conninfo). The pool is
        restored (not closed) by :meth:`finish`.
        """
        self._check_not_finished()
        if not isinstance(pool, (ConnectionPool, AsyncConnectionPool)):
            raise TypeError(
                f"watch() takes a psycopg_pool ConnectionPool or AsyncConnectionPool, "
                f"got {type(pool).__name__}"
            )
        app = None
        kw = pool.kwargs if isinstance(pool.kwargs, Mapping) else {}
        if kw.get("application_name"):
            app = str(kw["application_name"])
        monitor = dsn
        if monitor is None and isinstance(pool.conninfo, str):
            extra = {k: v for k, v in kw.items() if k not in _NON_CONNINFO_KWARGS}
            try:
                monitor = make_conninfo(pool.conninfo, **extra)
            except psycopg.ProgrammingError:
                monitor = None
        self._attach(cast(AnyPool, pool), owned=False, app_name=app, monitor_dsn=monitor)
        return pool

    def _new_app_name(self) -> str:
        tail = self.name.rsplit("::", 1)[-1]
        tail = "".join(c if c.isalnum() or c in "-_[]" else "_" for c in tail)[-30:]
        return f"sg-{tail}-{uuid.uuid4().hex[:8]}"

    def _check_not_finished(self) -> None:
        if self._report is not None:
            raise RuntimeError(f"probe {self.name!r} is finished")

    def _attach(
        self, pool: AnyPool, *, owned: bool, app_name: str | None, monitor_dsn: str | None
    ) -> None:
        if getattr(pool, "_stressguard_probe", None) is not None:
            raise ValueError(f"pool {pool.name!r} is already watched by a probe")
        is_async = isinstance(pool, AsyncConnectionPool)
        originals = {
            "getconn": pool.__dict__.get("getconn"),
            "putconn": pool.__dict__.get("putconn"),
            "_raw_getconn": pool.getconn,
            "_raw_putconn": pool.putconn,
        }
        stats = self._stats(pool)
        w = _Watched(pool, is_async, owned, app_name, originals, stats, dict(stats), dict(stats))
        if is_async:
            setattr(pool, "getconn", self._make_async_getconn(w))  # noqa: B010
            setattr(pool, "putconn", self._make_async_putconn(w))  # noqa: B010
        else:
            setattr(pool, "getconn", self._make_getconn(w))  # noqa: B010
            setattr(pool, "putconn", self._make_putconn(w))  # noqa: B010
        setattr(pool, "_stressguard_probe", self)  # noqa: B010
        with self._lock:
            self._watched.append(w)
        if self._log_handler is None:
            self._log_handler = _PoolLogHandler(self)
            logging.getLogger("psycopg.pool").addHandler(self._log_handler)
        if self._monitor_dsn is None and monitor_dsn is not None:
            self._monitor_dsn = monitor_dsn
            self._db_baseline = self._read_db_counters()
        self._start_sampler()

    def _restore(self, w: _Watched) -> None:
        pool = w.pool
        for attr in ("getconn", "putconn"):
            prev = w.originals.get(attr)
            if prev is None:
                pool.__dict__.pop(attr, None)
            else:
                setattr(pool, attr, prev)
        pool.__dict__.pop("_stressguard_probe", None)

    def _detach_failed(self, pool: ConnectionPool[Any]) -> None:
        with self._lock:
            mine = [w for w in self._watched if w.pool is pool]
            self._watched = [w for w in self._watched if w.pool is not pool]
        for w in mine:
            self._restore(w)
        with contextlib.suppress(Exception):
            pool.close(timeout=5.0)

    @staticmethod
    def _stats(pool: AnyPool) -> dict[str, int]:
        try:
            return dict(pool.get_stats())
        except Exception:
            return {}

    # ------------------------------------------------------------------ wrappers (sync)
    def _make_getconn(self, w: _Watched) -> Callable[..., Any]:
        raw: Callable[..., Any] = w.originals["_raw_getconn"]
        pool = w.pool

        def getconn(timeout: float | None = None) -> Any:
            before = self._enter_getconn(w)
            t0 = self.clock()
            try:
                conn = raw(timeout=timeout)
            except PoolTimeout as exc:
                self._on_acquire_failed(w, exc, self.clock() - t0, timeout=True)
                raise
            except BaseException as exc:
                self._on_acquire_failed(w, exc, self.clock() - t0, timeout=False)
                raise
            waited = self.clock() - t0
            self._on_acquired(w, conn, waited, before, self._stats(pool))
            self._install_hook(conn, is_async=False)
            return conn

        return getconn

    def _make_putconn(self, w: _Watched) -> Callable[..., Any]:
        raw: Callable[..., Any] = w.originals["_raw_putconn"]

        def putconn(conn: Any) -> None:
            self._on_return(conn)
            raw(conn)

        return putconn

    # ------------------------------------------------------------------ wrappers (async)
    def _make_async_getconn(self, w: _Watched) -> Callable[..., Awaitable[Any]]:
        raw: Callable[..., Awaitable[Any]] = w.originals["_raw_getconn"]
        pool = w.pool

        async def getconn(timeout: float | None = None) -> Any:
            before = self._enter_getconn(w)
            t0 = self.clock()
            try:
                conn = await raw(timeout=timeout)
            except PoolTimeout as exc:
                self._on_acquire_failed(w, exc, self.clock() - t0, timeout=True)
                raise
            except BaseException as exc:
                self._on_acquire_failed(w, exc, self.clock() - t0, timeout=False)
                raise
            waited = self.clock() - t0
            self._on_acquired(w, conn, waited, before, self._stats(pool))
            self._install_hook(conn, is_async=True)
            return conn

        return getconn

    def _make_async_putconn(self, w: _Watched) -> Callable[..., Awaitable[None]]:
        raw: Callable[..., Awaitable[None]] = w.originals["_raw_putconn"]

        async def putconn(conn: Any) -> None:
            self._on_return(conn)
            await raw(conn)

        return putconn

    # ------------------------------------------------------------------ connection hook
    def _install_hook(self, conn: Any, *, is_async: bool) -> None:
        if "wait" in conn.__dict__:
            return
        orig = conn.wait  # the bound method of the class
        probe = self

        if is_async:
            async def await_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await orig(gen, *args, **kwargs)
                except psycopg.Error as exc:
                    probe._on_db_error(exc, conn)
                    raise

            conn.wait = await_wait
        else:
            def sync_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return orig(gen, *args, **kwargs)
                except psycopg.Error as exc:
                    probe._on_db_error(exc, conn)
                    raise

            conn.wait = sync_wait

    @staticmethod
    def _remove_hook(conn: Any) -> None:
        with contextlib.suppress(AttributeError, TypeError):
            conn.__dict__.pop("wait", None)

    # ------------------------------------------------------------------ events
    def _enter_getconn(self, w: _Watched) -> dict[str, int]:
        """Count the request in flight; return the pool's stats as it starts.

        psycopg_pool's ``requests_waiting`` keeps requests that already timed out until a
        connection comes back, so it can exceed the number of clients; the requests in flight
        through the probe bound it from above."""
        stats = self._stats(w.pool)
        with self._lock:
            stats["_others_in_flight"] = w.in_flight
            w.in_flight += 1
        return stats

    def _on_acquired(
        self, w: _Watched, conn: Any, waited: float, before: Mapping[str, int],
        after: Mapping[str, int],
    ) -> None:
        where = _where() if self.capture_stacks else ()
        thread = _who()
        try:
            pid: int | None = int(conn.info.backend_pid) or None
        except Exception:
            pid = None
        queued = after.get("requests_queued", 0) > before.get("requests_queued", 0)
        others = min(before.get("requests_waiting", 0), before["_others_in_flight"])
        waiting_seen = others + (1 if queued and waited > 0.001 else 0)
        with self._lock:
            w.in_flight -= 1
            self._requests += 1
            self._interval_requests += 1
            self._wait_hist.record(waited)
            if self._interval_wait_max is None or waited > self._interval_wait_max:
                self._interval_wait_max = waited
            self._waiting_max = max(self._waiting_max, waiting_seen)
            self._checkouts[id(conn)] = _Checkout(conn, w, self.clock(), thread, where, pid)
            if pid is not None and len(self._pids) < 100_000:
                self._pids.add(pid)
            if conn not in self._settings:
                self._settings[conn] = _Settings.of(conn)

    def _on_acquire_failed(
        self, w: _Watched, exc: BaseException, waited: float, *, timeout: bool
    ) -> None:
        kind = _error_kind(exc)
        with self._lock:
            w.in_flight -= 1
            if not isinstance(exc, Exception):  # cancelled, interrupted: not a pool error
                return
            self._requests += 1
            self._interval_requests += 1
            if timeout:
                self._timeouts += 1
                self._interval_timeouts += 1
                self._wait_hist.record(waited)
                if self._interval_wait_max is None or waited > self._interval_wait_max:
                    self._interval_wait_max = waited
            else:
                self._acquire_errors += 1
                self._interval_errors += 1
            self._count_kind(kind)

    def _count_kind(self, kind: str) -> None:
        if kind not in self._errors_by_kind and len(self._errors_by_kind) >= _MAX_ERROR_KINDS:
            kind = "other errors"
        self._errors_by_kind[kind] = self._errors_by_kind.get(kind, 0) + 1

    def _on_return(self, conn: Any) -> None:
        self._remove_hook(conn)
        with self._lock:
            rec = self._checkouts.pop(id(conn), None)
            baseline = self._settings.get(conn)
        if rec is None:
            with self._lock:
                self._unknown_returns += 1
            return
        kinds: list[str] = []
        try:
            closed = bool(conn.closed)
            status = conn.info.transaction_status
        except Exception:
            closed, status = True, TransactionStatus.UNKNOWN
        if closed or status == TransactionStatus.UNKNOWN:
            with self._lock:
                self._broken_returns += 1
            return
        if status == TransactionStatus.INTRANS:
            kinds.append("open_transaction")
        elif status == TransactionStatus.INERROR:
            kinds.append("failed_transaction")
        elif status == TransactionStatus.ACTIVE:
            kinds.append("active_query")
        if baseline is not None:
            now = _Settings.of(conn)
            if now.autocommit != baseline.autocommit:
                kinds.append("autocommit_changed")
            if now.isolation_level != baseline.isolation_level:
                kinds.append("isolation_changed")
            if now.read_only != baseline.read_only:
                kinds.append("read_only_changed")
            if now.deferrable != baseline.deferrable:
                kinds.append("deferrable_changed")
        if not kinds:
            return
        where = _where() if self.capture_stacks else ()
        with self._lock:
            self._dirty_returns += 1
            for k in kinds:
                self._dirty[k] = self._dirty.get(k, 0) + 1
            if len(self._dirty_examples) < _MAX_EXAMPLES:
                self._dirty_examples.append({
                    "kinds": kinds, "thread": _who(), "where": list(where),
                    "taken_at": list(rec.where),
                })

    def _on_db_error(self, exc: psycopg.Error, conn: Any) -> None:
        state = exc.sqlstate
        connection_level = _is_connection_error(exc, conn)
        kind = _error_kind(exc)
        with self._lock:
            if state is not None:
                entry = self._sqlstates.get(state)
                if entry is None:
                    entry = self._sqlstates[state] = {
                        "count": 0, "name": type(exc).__name__, "example": kind,
                    }
                entry["count"] = int(entry["count"]) + 1
            if connection_level:
                self._conn_errors += 1
                self._interval_errors += 1
                self._count_kind(kind)

    def _on_connect_error(self, pool_name: str, exc: object) -> None:
        with self._lock:
            if not any(w.pool.name == pool_name for w in self._watched):
                return
            self._connect_errors_logged += 1
            self._count_kind(f"connection attempt failed: {_error_kind(exc)}"
                             if isinstance(exc, BaseException) else
                             f"connection attempt failed: {exc}")

    def _last_connect_error(self) -> str | None:
        with self._lock:
            keys = [k for k in self._errors_by_kind if k.startswith("connection attempt")]
        return keys[-1] if keys else None

    # ------------------------------------------------------------------ sampling
    def _start_sampler(self) -> None:
        if self._sampler is not None:
            return
        self._sample()
        t = threading.Thread(target=self._sample_loop, name=f"stressguard-poolprobe-{self.name}",
                             daemon=True)
        self._sampler = t
        t.start()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample()
            except Exception:  # never let the sampler die silently mid-run
                continue

    def _pool_counter_deltas(self, key_sets: Iterable[tuple[str, ...]]) -> list[int]:
        """Sum over watched pools of the change of each key group since the last sample."""
        out: list[int] = []
        for keys in key_sets:
            total = 0
            for w in self._watched:
                now = w.last_stats
                total += sum(now.get(k, 0) - w.sample_stats.get(k, 0) for k in keys)
            out.append(total)
        return out

    def _sample(self) -> None:
        t = self.clock() - self._t0
        size = available = waiting = 0
        with self._lock:
            watched = list(self._watched)
        for w in watched:
            s = self._stats(w.pool)
            if not s:
                continue
            w.last_stats = s
            size += s.get("pool_size", 0)
            available += s.get("pool_available", 0)
            waiting += min(s.get("requests_waiting", 0), w.in_flight)
        with self._lock:
            lost, pool_errors = self._pool_counter_deltas(
                [("connections_lost", "returns_bad"), ("connections_errors",)]
            )
            for w in watched:
                w.sample_stats = dict(w.last_stats)
            self._waiting_max = max(self._waiting_max, waiting)
            row = PoolTimelineRow(
                t=t, size=size, available=available, waiting=waiting,
                in_use=len(self._checkouts), requests=self._interval_requests,
                wait_max_ms=None if self._interval_wait_max is None
                else self._interval_wait_max * 1000.0,
                timeouts=self._interval_timeouts, errors=self._interval_errors + pool_errors,
                lost=lost,
            )
            self._interval_requests = self._interval_timeouts = self._interval_errors = 0
            self._interval_wait_max = None
            self._timeline.append(row)
            if len(self._timeline) > self.max_samples:
                tl = self._timeline
                merged = [tl[i].merged(tl[i + 1]) for i in range(0, len(tl) - 1, 2)]
                if len(tl) % 2:
                    merged.append(tl[-1])
                self._timeline = merged
                self._interval *= 2

    # ------------------------------------------------------------------ reading
    def _pool_counter(self, *keys: str) -> int:
        total = 0
        for w in self._watched:
            s = self._stats(w.pool) if not w.pool.closed else w.last_stats
            if s:
                w.last_stats = s
            total += sum(w.last_stats.get(k, 0) - w.stats0.get(k, 0) for k in keys)
        return total

    def metrics(self) -> dict[str, float | None]:
        """The pool metrics now (see the module doc); times in seconds, counts as floats.

        ``leaked_connections`` is the number of connections currently checked out, and after
        :meth:`finish` the number never returned.
        """
        with self._lock:
            hist = self._wait_hist.copy()
            requests = self._requests
            timeouts = self._timeouts
            errors = self._acquire_errors + self._conn_errors
            waiting_max = self._waiting_max
            out_now = len(self._checkouts)
            dirty = self._dirty_returns
            sqlstates = {k: int(v["count"]) for k, v in self._sqlstates.items()}
        pool_side = self._pool_counter("connections_errors", "connections_lost")
        leaked = len(self._leaked_final) if self._leaked_final is not None else out_now
        return {
            "pool_wait_p95": hist.p(95) if hist.count else None,
            "pool_waiting_max": float(waiting_max),
            "pool_timeouts": float(timeouts),
            "pool_errors": float(errors + max(pool_side, 0)),
            "leaked_connections": float(leaked),
            "deadlocks": float(sqlstates.get(SQLSTATE_DEADLOCK, 0)),
            "serialization_failures": float(sqlstates.get(SQLSTATE_SERIALIZATION_FAILURE, 0)),
            "dirty_returns": float(dirty),
            "pool_wait_max": hist.max if hist.count else None,
            "pool_requests": float(requests),
        }

    def check(self, exprs: Iterable[str] | str) -> list[ThresholdResult]:
        """Evaluate thresholds (``"pool_timeouts==0"``, ``"pool_wait_p95<50ms"``) on
        :meth:`metrics`. Raises ``ThresholdError`` for a malformed expression."""
        return evaluate(parse_thresholds(exprs), self.metrics())

    @property
    def dirty(self) -> dict[str, int]:
        """Dirty returns by kind so far."""
        with self._lock:
            return {k: v for k, v in self._dirty.items() if v}

    @property
    def checked_out(self) -> int:
        with self._lock:
            return len(self._checkouts)

    def timeline(self) -> list[PoolTimelineRow]:
        with self._lock:
            return list(self._timeline)

    # ------------------------------------------------------------------ server side
    def _connect_monitor(self) -> psycopg.Connection[Any]:
        if self._monitor is not None and not self._monitor.closed and not self._monitor.broken:
            return self._monitor
        if self._monitor_dsn is None:
            raise psycopg.OperationalError("no DSN known for the server monitor")
        self._monitor = psycopg.connect(
            self._monitor_dsn, autocommit=True, connect_timeout=3,
            application_name=f"sg-monitor-{uuid.uuid4().hex[:8]}",
        )
        return self._monitor

    def _read_db_counters(self) -> dict[str, int] | None:
        try:
            conn = self._connect_monitor()
            row = conn.execute(
                "SELECT deadlocks, xact_rollback, xact_commit FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).fetchone()
        except psycopg.Error:
            self._close_monitor()
            return None
        if row is None:
            return None
        return {"deadlocks": int(row[0] or 0), "xact_rollback": int(row[1] or 0),
                "xact_commit": int(row[2] or 0)}

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.close()
            self._monitor = None

    def server(self) -> ServerSnapshot:
        """Ask the server about the pool's backends now. Never raises: when the server cannot
        be reached the snapshot's ``error`` says why."""
        t = self.clock() - self._t0
        with self._lock:
            apps = sorted({w.app_name for w in self._watched if w.app_name})
            pids = sorted(self._pids)
        had_monitor = self._monitor is not None
        try:
            return self._server_snapshot(t, apps, pids)
        except psycopg.Error as exc:
            self._close_monitor()
            if not had_monitor:
                return ServerSnapshot(t=t, error=_error_kind(exc))
        try:  # the old monitor connection may just have been cut: try a fresh one once
            return self._server_snapshot(t, apps, pids)
        except psycopg.Error as exc:
            self._close_monitor()
            return ServerSnapshot(t=t, error=_error_kind(exc))

    def _server_snapshot(self, t: float, apps: list[str], pids: list[int]) -> ServerSnapshot:
        conn = self._connect_monitor()
        mine = "(a.application_name = ANY(%(apps)s) OR a.pid = ANY(%(pids)s))"
        params = {"apps": apps, "pids": pids}
        by_state: dict[str, int] = {}
        waiting_on_lock = 0
        longest: float | None = None
        for state, n, on_lock, oldest in conn.execute(
            "SELECT coalesce(a.state, 'unknown'), count(*), "
            "count(*) FILTER (WHERE a.wait_event_type = 'Lock'), "
            "extract(epoch FROM max(now() - a.xact_start)) "
            f"FROM pg_stat_activity a WHERE {mine} AND a.pid <> pg_backend_pid() "
            "GROUP BY 1", params,
        ).fetchall():
            by_state[str(state)] = int(n)
            waiting_on_lock += int(on_lock)
            if oldest is not None:
                longest = max(longest or 0.0, float(oldest))
        details: list[dict[str, Any]] = []
        lock_waits = lock_waits_db = 0
        for (pid, app, locktype, mode, relation, waited, blockers, query, is_mine) in (
            conn.execute(
                "SELECT a.pid, a.application_name, l.locktype, l.mode, "
                "CASE WHEN l.relation IS NULL THEN NULL ELSE l.relation::regclass::text END,"
                " extract(epoch FROM now() - coalesce(a.state_change, a.query_start)), "
                "pg_blocking_pids(a.pid), left(a.query, 200), "
                f"{mine} "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND a.datname = current_database() "
                "ORDER BY 6 DESC NULLS LAST", params,
            ).fetchall()
        ):
            lock_waits_db += 1
            if is_mine:
                lock_waits += 1
                if len(details) < 10:
                    details.append({
                        "pid": pid, "application_name": app, "locktype": locktype,
                        "mode": mode, "relation": relation,
                        "waiting_s": None if waited is None else round(float(waited), 3),
                        "blocked_by": list(blockers or []), "query": query,
                    })
        counters = self._read_db_counters()
        base = self._db_baseline

        def delta(key: str) -> int | None:
            if counters is None or base is None:
                return None
            return counters[key] - base[key]

        return ServerSnapshot(
            t=t, by_state=by_state, connections=sum(by_state.values()),
            waiting_on_lock=waiting_on_lock, lock_waits=lock_waits, lock_waits_db=lock_waits_db,
            lock_wait_details=tuple(details), longest_transaction_s=longest,
            deadlocks_delta=delta("deadlocks"), rollbacks_delta=delta("xact_rollback"),
            commits_delta=delta("xact_commit"),
        )

    # ------------------------------------------------------------------ scenario helper
    def exhaust_and_recover(
        self,
        pool: ConnectionPool[Any] | None = None,
        *,
        hold_timeout: float = 1.0,
        waiters: int = 2,
        acquire_timeout: float = 10.0,
        tolerance: float = 1.0,
        verify_full: bool = True,
    ) -> RecoveryReport:
        """:func:`exhaust_and_recover` on ``pool`` (default: the only pool watched), kept in
        the report. Its deliberate timeouts are not counted in the probe's metrics."""
        target = pool if pool is not None else self._only_sync_pool()
        report = exhaust_and_recover(
            target, hold_timeout=hold_timeout, waiters=waiters,
            acquire_timeout=acquire_timeout, tolerance=tolerance, verify_full=verify_full,
            clock=self.clock,
        )
        with self._lock:
            self._recoveries.append(report)
        return report

    async def aexhaust_and_recover(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        hold_timeout: float = 1.0,
        waiters: int = 2,
        acquire_timeout: float = 10.0,
        tolerance: float = 1.0,
        verify_full: bool = True,
    ) -> RecoveryReport:
        """The async twin of :meth:`exhaust_and_recover`."""
        report = await aexhaust_and_recover(
            pool, hold_timeout=hold_timeout, waiters=waiters, acquire_timeout=acquire_timeout,
            tolerance=tolerance, verify_full=verify_full, clock=self.clock,
        )
        with self._lock:
            self._recoveries.append(report)
        return report

    def _only_sync_pool(self) -> ConnectionPool[Any]:
        pools = [w.pool for w in self._watched if isinstance(w.pool, ConnectionPool)]
        if len(pools) != 1:
            raise ValueError(f"pass the pool explicitly: this probe watches {len(pools)} pools")
        return pools[0]

    # ------------------------------------------------------------------ the end
    def finish(self, *, close_leaked: bool | None = None, close_timeout: float = 5.0) -> PoolReport:
        """Stop sampling, report, and restore or close the pools. Idempotent.

        Connections still checked out are reported as leaked (with where they were taken).
        ``close_leaked`` (default: only for pools made by :meth:`pool`) closes them so nothing
        stays connected; pools made by :meth:`pool` are closed, watched pools are only restored.
        """
        if self._report is not None:
            return self._report
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5.0)
        self._sample()
        end = self.clock()
        with self._lock:
            outstanding = list(self._checkouts.values())
            watched = list(self._watched)
        leaked = [
            LeakedConnection(
                probe=self.name, pool=str(rec.watched.pool.name), held_s=end - rec.taken_at,
                thread=rec.thread, backend_pid=rec.backend_pid,
                closed=bool(getattr(rec.conn, "closed", True)), where=rec.where,
            )
            for rec in outstanding
        ]
        self._leaked_final = leaked
        metrics = self.metrics()
        server = self.server() if self._monitor_dsn is not None else None
        for rec in outstanding:
            self._remove_hook(rec.conn)
            do_close = rec.watched.owned if close_leaked is None else close_leaked
            if do_close and not rec.watched.is_async:
                with contextlib.suppress(Exception):
                    rec.conn.close()
        for w in watched:
            self._restore(w)
            if w.owned and isinstance(w.pool, ConnectionPool):
                with contextlib.suppress(Exception):
                    w.pool.close(timeout=close_timeout)
        if self._log_handler is not None:
            logging.getLogger("psycopg.pool").removeHandler(self._log_handler)
            self._log_handler = None
        self._close_monitor()
        with self._lock:
            hist = self._wait_hist.copy()
            self._checkouts.clear()
            report = PoolReport(
                name=self.name,
                pools=[self._pool_info(w) for w in watched],
                application_names=sorted({w.app_name for w in watched if w.app_name}),
                duration_s=end - self._t0,
                metrics=metrics,
                wait_ms=hist.percentiles_ms(),
                wait_histogram=hist.encode(),
                timeline=list(self._timeline),
                leaked=leaked,
                dirty={k: v for k, v in self._dirty.items() if v},
                dirty_examples=list(self._dirty_examples),
                errors_by_kind=dict(self._errors_by_kind),
                sqlstates={k: dict(v) for k, v in self._sqlstates.items()},
                server=server,
                recovery=list(self._recoveries),
                problems=[],
                timeline_interval_s=self._interval,
            )
        report.problems = _problems(report)
        self._report = report
        return report

    close = finish

    @staticmethod
    def _pool_info(w: _Watched) -> dict[str, Any]:
        s = w.last_stats
        return {
            "name": w.pool.name, "async": w.is_async, "owned": w.owned,
            "min_size": w.pool.min_size, "max_size": w.pool.max_size,
            "timeout": w.pool.timeout, "application_name": w.app_name,
            "stats": {k: int(v) - int(w.stats0.get(k, 0)) if k not in _GAUGES else int(v)
                      for k, v in s.items()},
        }

    def __enter__(self) -> PoolProbe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    def __repr__(self) -> str:
        return f"<PoolProbe {self.name!r} pools={len(self._watched)}>"


_GAUGES: Final = frozenset(
    {"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"}
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


# ---------------------------------------------------------------------------------------------
# the exhaustion-and-recovery scenario


def _raw(pool: AnyPool, attr: str) -> Any:
    """The pool's method without a probe's instrumentation."""
    probe = pool.__dict__.get("_stressguard_probe")
    if isinstance(probe, PoolProbe):
        for w in probe._watched:
            if w.pool is pool:
                return w.originals[f"_raw_{attr}"]
    return getattr(pool, attr)


def exhaust_and_recover(
    pool: ConnectionPool[Any],
    *,
    hold_timeout: float = 1.0,
    waiters: int = 2,
    acquire_timeout: float = 10.0,
    tolerance: float = 1.0,
    verify_full: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> RecoveryReport:
    """Hold every connection of ``pool``, show that ``waiters`` more requests fail with
    ``PoolTimeout`` within ``hold_timeout`` (+ ``tolerance`` for a busy machine), release, and
    show that the pool serves again (``max_size`` connections at once with ``verify_full``,
    each running ``SELECT 1``).

    Run it while nothing else uses the pool. Never hangs: every wait is bounded, and every held
    connection is returned even on error.
    """
    getconn = _raw(pool, "getconn")
    putconn = _raw(pool, "putconn")
    max_size = int(pool.max_size)
    held: list[Any] = []
    outcomes: list[WaiterOutcome] = []
    error: str | None = None
    t0 = clock()
    hold_s = 0.0
    try:
        try:
            for _ in range(max_size):
                held.append(getconn(timeout=acquire_timeout))
        except Exception as exc:
            error = f"could not take all {max_size} connections: {_error_kind(exc)}"
        hold_s = clock() - t0
        if error is None:
            results: list[WaiterOutcome | None] = [None] * waiters

            def wait_one(i: int) -> None:
                s = clock()
                try:
                    conn = getconn(timeout=hold_timeout)
                except PoolTimeout:
                    results[i] = WaiterOutcome("timeout", clock() - s)
                except Exception as exc:
                    results[i] = WaiterOutcome("error", clock() - s, _error_kind(exc))
                else:
                    results[i] = WaiterOutcome("served", clock() - s, "got a connection")
                    putconn(conn)

            threads = [threading.Thread(target=wait_one, args=(i,), daemon=True,
                                        name=f"stressguard-waiter-{i}") for i in range(waiters)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=hold_timeout + tolerance + 30.0)
            outcomes = [r if r is not None else WaiterOutcome("error", hold_timeout + tolerance,
                                                              "did not return")
                        for r in results]
    finally:
        for conn in held:
            with contextlib.suppress(Exception):
                putconn(conn)
    if error is not None:
        return RecoveryReport(str(pool.name), max_size, len(held), hold_s, hold_timeout,
                              tolerance, tuple(outcomes), False, None, 0, error)
    r0 = clock()
    served: list[Any] = []
    recovered = False
    try:
        for _ in range(max_size if verify_full else 1):
            conn = getconn(timeout=acquire_timeout)
            served.append(conn)
            conn.execute("SELECT 1").fetchone()
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
        recovered = True
    except Exception as exc:
        error = f"the pool did not serve again after release: {_error_kind(exc)}"
    finally:
        for conn in served:
            with contextlib.suppress(Exception):
                putconn(conn)
    return RecoveryReport(
        str(pool.name), max_size, len(held), hold_s, hold_timeout, tolerance,
        tuple(outcomes), recovered, clock() - r0 if recovered else None, len(served), error,
    )


async def aexhaust_and_recover(
    pool: AsyncConnectionPool[Any],
    *,
    hold_timeout: float = 1.0,
    waiters: int = 2,
    acquire_timeout: float = 10.0,
    tolerance: float = 1.0,
    verify_full: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> RecoveryReport:
    """:func:`exhaust_and_recover` for an ``AsyncConnectionPool`` (waiters are tasks)."""
    getconn = _raw(pool, "getconn")
    putconn = _raw(pool, "putconn")
    max_size = int(pool.max_size)
    held: list[Any] = []
    outcomes: list[WaiterOutcome] = []
    error: str | None = None
    t0 = clock()
    hold_s = 0.0
    try:
        try:
            for _ in range(max_size):
                held.append(await getconn(timeout=acquire_timeout))
        except Exception as exc:
            error = f"could not take all {max_size} connections: {_error_kind(exc)}"
        hold_s = clock() - t0
        if error is None:

            async def wait_one() -> WaiterOutcome:
                s = clock()
                try:
                    conn = await getconn(timeout=hold_timeout)
                except PoolTimeout:
                    return WaiterOutcome("timeout", clock() - s)
                except Exception as exc:
                    return WaiterOutcome("error", clock() - s, _error_kind(exc))
                await putconn(conn)
                return WaiterOutcome("served", clock() - s, "got a connection")

            outcomes = list(await asyncio.wait_for(
                asyncio.gather(*(wait_one() for _ in range(waiters))),
                timeout=hold_timeout + tolerance + 30.0,
            ))
    finally:
        for conn in held:
            with contextlib.suppress(Exception):
                await putconn(conn)
    if error is not None:
        return RecoveryReport(str(pool.name), max_size, len(held), hold_s, hold_timeout,
                              tolerance, tuple(outcomes), False, None, 0, error)
    r0 = clock()
    served: list[Any] = []
    recovered = False
    try:
        for _ in range(max_size if verify_full else 1):
            conn = await getconn(timeout=acquire_timeout)
            served.append(conn)
            await (await conn.execute("SELECT 1")).fetchone()
            if conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.rollback()
        recovered = True
    except Exception as exc:
        error = f"the pool did not serve again after release: {_error_kind(exc)}"
    finally:
        for conn in served:
            with contextlib.suppress(Exception):
                await putconn(conn)
    return RecoveryReport(
        str(pool.name), max_size, len(held), hold_s, hold_timeout, tolerance,
        tuple(outcomes), recovered, clock() - r0 if recovered else None, len(served), error,
    )
