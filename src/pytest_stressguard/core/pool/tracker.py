"""Checkout tracking: who holds which connection, how long requests waited, what went wrong,
which connections came back dirty, and the timeline sampled from the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus

from ..histogram import LatencyHistogram
from ..pg_dsn import passwords, scrub
from .instrument import AnyPool, PoolLogHandler, WatchedPool, pool_stats, remove_hook
from .report import (
    DIRTY_KINDS,
    SQLSTATE_DEADLOCK,
    SQLSTATE_SERIALIZATION_FAILURE,
    LeakedConnection,
    PoolReport,
    PoolTimelineRow,
    RecoveryReport,
    ServerSnapshot,
    _error_kind,
    _problems,
)

# SQLSTATEs that mean "the connection or the server is gone", not "your SQL failed"
_CONNECTION_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
_MAX_ERROR_KINDS: Final = 50
_MAX_EXAMPLES: Final = 5
_STACK_DEPTH: Final = 4


# ---------------------------------------------------------------------------------------------
# where a connection was taken


def _skip_dirs() -> tuple[str, ...]:
    dirs = {
        os.path.dirname(psycopg.__file__),
        os.path.dirname(psycopg_pool.__file__),
        # pytest_stressguard itself: core/pool/ is two levels below it
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
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


# ---------------------------------------------------------------------------------------------
# checkout tracking and counting


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
class Checkout:
    conn: Any
    watched: WatchedPool
    taken_at: float
    thread: str
    where: tuple[str, ...]
    backend_pid: int | None


class CheckoutTracker:
    """What the watched pools and their connections did: waits, checkouts, errors, dirty
    returns, and the timeline sampled from them. The wrappers call it from any thread or loop.
    """

    def __init__(
        self, *, clock: Callable[[], float], capture_stacks: bool, sample_interval: float,
        max_samples: int,
    ) -> None:
        self.clock = clock
        self.capture_stacks = capture_stacks
        self.max_samples = max_samples
        self.interval = sample_interval  # doubles each time the timeline is halved
        self.watched: list[WatchedPool] = []
        self._lock = threading.Lock()
        self._checkouts: dict[int, Checkout] = {}
        self._settings: weakref.WeakKeyDictionary[Any, _Settings] = weakref.WeakKeyDictionary()
        self._pids: set[int] = set()
        self._wait_hist = LatencyHistogram()
        self._requests = 0
        self._timeouts = 0
        self._acquire_errors = 0
        self._conn_errors = 0
        self._waiting_max = 0
        self._dirty: dict[str, int] = dict.fromkeys(DIRTY_KINDS, 0)
        self._dirty_returns = 0
        self._dirty_examples: list[dict[str, Any]] = []
        self._errors_by_kind: dict[str, int] = {}
        self._sqlstates: dict[str, dict[str, Any]] = {}
        self._interval_wait_max: float | None = None
        self._interval_requests = 0
        self._interval_timeouts = 0
        self._interval_errors = 0
        self._timeline: list[PoolTimelineRow] = []
        self._log_handler: PoolLogHandler | None = None

    # ------------------------------------------------------------------ pools
    def watch(self, pool: AnyPool, *, owned: bool, app_name: str | None) -> WatchedPool:
        w = WatchedPool.install(pool, self, owned=owned, app_name=app_name)
        with self._lock:
            self.watched.append(w)
        if self._log_handler is None:
            self._log_handler = PoolLogHandler(self)
            logging.getLogger("psycopg.pool").addHandler(self._log_handler)
        return w

    def forget(self, pool: AnyPool) -> None:
        """Stop watching ``pool`` (one that failed to open) as if it never was."""
        with self._lock:
            mine = [w for w in self.watched if w.pool is pool]
            self.watched = [w for w in self.watched if w.pool is not pool]
        for w in mine:
            w.restore()

    def unhook_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("psycopg.pool").removeHandler(self._log_handler)
            self._log_handler = None

    def snapshot(self) -> tuple[list[WatchedPool], list[Checkout]]:
        """The watched pools and the connections checked out now."""
        with self._lock:
            return list(self.watched), list(self._checkouts.values())

    def backends(self) -> tuple[list[str], list[int]]:
        """The watched pools' application names and the backend pids seen, for the server."""
        with self._lock:
            return sorted({w.app_name for w in self.watched if w.app_name}), sorted(self._pids)

    # ------------------------------------------------------------------ events
    def enter_getconn(self, w: WatchedPool) -> dict[str, int]:
        """Count the request in flight; return the pool's stats as it starts.

        psycopg_pool's ``requests_waiting`` keeps requests that already timed out until a
        connection comes back, so it can exceed the number of clients; the requests in flight
        through the probe bound it from above."""
        stats = pool_stats(w.pool)
        with self._lock:
            stats["_others_in_flight"] = w.in_flight
            w.in_flight += 1
        return stats

    def acquired(
        self, w: WatchedPool, conn: Any, waited: float, before: Mapping[str, int],
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
            self._checkouts[id(conn)] = Checkout(conn, w, self.clock(), thread, where, pid)
            if pid is not None and len(self._pids) < 100_000:
                self._pids.add(pid)
            if conn not in self._settings:
                self._settings[conn] = _Settings.of(conn)

    def acquire_failed(
        self, w: WatchedPool, exc: BaseException, waited: float, *, timeout: bool
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

    def returned(self, conn: Any) -> None:
        """A connection given back: forget the checkout, count it when it comes back dirty."""
        remove_hook(conn)
        with self._lock:
            rec = self._checkouts.pop(id(conn), None)
            baseline = self._settings.get(conn)
        if rec is None:  # taken before the probe watched the pool
            return
        kinds: list[str] = []
        try:
            closed = bool(conn.closed)
            status = conn.info.transaction_status
        except Exception:
            closed, status = True, TransactionStatus.UNKNOWN
        if closed or status == TransactionStatus.UNKNOWN:  # broken: the pool discards it
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

    def db_error(self, exc: psycopg.Error, conn: Any) -> None:
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

    def connect_error(self, pool_name: str, exc: object) -> None:
        with self._lock:
            pools = [w.pool for w in self.watched if w.pool.name == pool_name]
            if not pools:
                return
            text = _error_kind(exc) if isinstance(exc, BaseException) else str(exc)
            # libpq quotes the bad token of a malformed DSN, which may be its password
            secrets = passwords(pools[0].conninfo) if isinstance(pools[0].conninfo, str) else set()
            if isinstance(pools[0].kwargs, Mapping) and pools[0].kwargs.get("password"):
                secrets.add(str(pools[0].kwargs["password"]))
            self._count_kind(f"connection attempt failed: {scrub(text, secrets)}")

    def last_connect_error(self) -> str | None:
        with self._lock:
            keys = [k for k in self._errors_by_kind if k.startswith("connection attempt")]
        return keys[-1] if keys else None

    # ------------------------------------------------------------------ timeline
    def _pool_counter_deltas(self, key_sets: Iterable[tuple[str, ...]]) -> list[int]:
        """Sum over watched pools of the change of each key group since the last sample."""
        out: list[int] = []
        for keys in key_sets:
            total = 0
            for w in self.watched:
                now = w.last_stats
                total += sum(now.get(k, 0) - w.sample_stats.get(k, 0) for k in keys)
            out.append(total)
        return out

    def sample(self, t: float) -> None:
        """Add a timeline row at ``t``; halve the timeline when it grows past ``max_samples``."""
        size = available = waiting = 0
        with self._lock:
            watched = list(self.watched)
        for w in watched:
            s = pool_stats(w.pool)
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
                self.interval *= 2

    # ------------------------------------------------------------------ reading
    def _pool_counter(self, *keys: str) -> int:
        total = 0
        for w in self.watched:
            s = pool_stats(w.pool) if not w.pool.closed else w.last_stats
            if s:
                w.last_stats = s
            total += sum(w.last_stats.get(k, 0) - w.stats0.get(k, 0) for k in keys)
        return total

    def metrics(self, leaked: int | None) -> dict[str, float | None]:
        """Every metric of ``POOL_METRICS``; ``leaked`` replaces the connections checked out."""
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
        return {
            "pool_wait_p95": hist.p(95) if hist.count else None,
            "pool_waiting_max": float(waiting_max),
            "pool_timeouts": float(timeouts),
            "pool_errors": float(errors + max(pool_side, 0)),
            "leaked_connections": float(out_now if leaked is None else leaked),
            "deadlocks": float(sqlstates.get(SQLSTATE_DEADLOCK, 0)),
            "serialization_failures": float(sqlstates.get(SQLSTATE_SERIALIZATION_FAILURE, 0)),
            "dirty_returns": float(dirty),
            "pool_wait_max": hist.max if hist.count else None,
            "pool_requests": float(requests),
        }

    @property
    def dirty(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._dirty.items() if v}

    @property
    def checked_out(self) -> int:
        with self._lock:
            return len(self._checkouts)

    def timeline(self) -> list[PoolTimelineRow]:
        with self._lock:
            return list(self._timeline)

    def report(
        self, *, name: str, duration_s: float, metrics: dict[str, float | None],
        leaked: list[LeakedConnection], server: ServerSnapshot | None,
        recovery: list[RecoveryReport],
    ) -> PoolReport:
        """The final report; forgets the connections still checked out (they are ``leaked``)."""
        with self._lock:
            watched = list(self.watched)
            hist = self._wait_hist.copy()
            self._checkouts.clear()
            report = PoolReport(
                name=name,
                pools=[w.info() for w in watched],
                application_names=sorted({w.app_name for w in watched if w.app_name}),
                duration_s=duration_s,
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
                recovery=recovery,
                problems=[],
                timeline_interval_s=self.interval,
            )
        report.problems = _problems(report)
        return report
