"""Observe a psycopg connection pool under load: waits, exhaustion, contamination, leaks.

A :class:`PoolProbe` instruments one or more ``psycopg_pool`` pools (``pool()`` makes one,
``watch()`` adopts the user's own sync or async pool; see :mod:`.instrument` for how), counts
what their connections do (:mod:`.tracker`), and reports the figures declared in
:data:`.report.POOL_METRICS`. ``server()`` adds what the server sees (:mod:`.server`);
``exhaust_and_recover()`` runs the scenario of :mod:`.recovery`. ``finish()`` restores every
instance.

DSNs are held as :class:`~..pg_dsn.Dsn` (a ``str`` whose repr hides the password) from the
first line of every method that takes one: pytest shows the arguments and (``-l``) the locals of
each frame of a traceback. Errors are raised outside ``except`` blocks with redacted messages,
so no chained exception or ``exc`` local carries a password either.

This module never imports pytest.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar, cast

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ..pg_dsn import Dsn, dsn_problem, passwords, redact_dsn, scrub
from ..thresholds import ThresholdResult, evaluate, parse_thresholds
from .instrument import AnyPool, remove_hook
from .recovery import aexhaust_and_recover, exhaust_and_recover
from .report import LeakedConnection, PoolReport, PoolTimelineRow, RecoveryReport, ServerSnapshot
from .server import ServerMonitor
from .tracker import CheckoutTracker

# keyword arguments of psycopg.connect() that are not libpq connection parameters
_NON_CONNINFO_KWARGS: Final = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)

_T = TypeVar("_T")


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
        dsn = None if dsn is None else Dsn(dsn)  # see the module's docstring
        if sample_interval <= 0:
            raise ValueError(f"sample_interval must be > 0, got {sample_interval!r}")
        if max_samples < 2:
            raise ValueError(f"max_samples must be >= 2, got {max_samples!r}")
        self.name = name
        self.dsn: Dsn | None = dsn
        self.clock = clock
        self.sample_interval = sample_interval
        self.max_samples = max_samples
        self.capture_stacks = capture_stacks
        self._t0 = clock()
        self._tracker = CheckoutTracker(clock=clock, capture_stacks=capture_stacks,
                                        sample_interval=sample_interval, max_samples=max_samples)
        self._server = ServerMonitor()
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
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
        dsn = Dsn(dsn) if dsn is not None else self.dsn
        self._check_not_finished()
        if dsn is None:
            raise ValueError("no DSN: pass pool(dsn) or PoolProbe(name, dsn=...)")
        problem = dsn_problem(dsn)  # else psycopg_pool would retry it until open_timeout
        if problem is not None:
            raise psycopg.ProgrammingError(f"invalid DSN {redact_dsn(dsn)}: {problem}")
        app = self._new_app_name()
        conn_kwargs: dict[str, Any] = {"application_name": app, "connect_timeout": 5}
        conn_kwargs.update(kwargs or {})
        size_min = max_size if min_size is None else min_size
        pool_kwargs.setdefault("name", app)
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=size_min, max_size=max_size, timeout=timeout, kwargs=conn_kwargs,
            open=False, **pool_kwargs,
        )
        self._attach(pool, owned=True, app_name=str(conn_kwargs["application_name"]),
                     monitor_dsn=dsn)
        pool.open(wait=False)
        if size_min <= 0 or _opened(pool, open_timeout):
            return pool
        self._tracker.forget(pool)
        with contextlib.suppress(Exception):
            pool.close(timeout=5.0)
        last = self._tracker.last_connect_error() or "no connection error was logged"
        raise PoolTimeout(
            f"could not open {size_min} connection(s) to {redact_dsn(dsn)} within "
            f"{open_timeout:.1f}s: {scrub(last, passwords(dsn))}"
        )

    def watch(self, pool: _T, *, dsn: str | None = None) -> _T:
        """Instrument an existing ``ConnectionPool`` or ``AsyncConnectionPool``; returns it.

        Connections taken before the call are not tracked. ``dsn`` is used by :meth:`server`
        when the pool's own conninfo cannot be reused (e.g. a callable conninfo). The pool is
        restored (not closed) by :meth:`finish`.
        """
        dsn = None if dsn is None else Dsn(dsn)
        self._check_not_finished()
        if not isinstance(pool, (ConnectionPool, AsyncConnectionPool)):
            raise TypeError(
                f"watch() takes a psycopg_pool ConnectionPool or AsyncConnectionPool, "
                f"got {type(pool).__name__}"
            )
        kw = pool.kwargs if isinstance(pool.kwargs, Mapping) else {}
        app = str(kw["application_name"]) if kw.get("application_name") else None
        monitor = dsn if dsn is not None else _pool_dsn(pool)
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
        self, pool: AnyPool, *, owned: bool, app_name: str | None, monitor_dsn: Dsn | None
    ) -> None:
        self._tracker.watch(pool, owned=owned, app_name=app_name)
        if monitor_dsn is not None:
            self._server.start(monitor_dsn)
        self._start_sampler()

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
        while not self._stop.wait(self._tracker.interval):
            try:
                self._sample()
            except Exception:  # never let the sampler die silently mid-run
                continue

    def _sample(self) -> None:
        self._tracker.sample(self.clock() - self._t0)

    # ------------------------------------------------------------------ reading
    def metrics(self) -> dict[str, float | None]:
        """The pool metrics now (declared in ``POOL_METRICS``); times in seconds, counts as
        floats.

        ``leaked_connections`` is the number of connections currently checked out, and after
        :meth:`finish` the number never returned.
        """
        final = self._leaked_final
        return self._tracker.metrics(None if final is None else len(final))

    def check(self, exprs: Iterable[str] | str) -> list[ThresholdResult]:
        """Evaluate thresholds (``"pool_timeouts==0"``, ``"pool_wait_p95<50ms"``) on
        :meth:`metrics`. Raises ``ThresholdError`` for a malformed expression."""
        return evaluate(parse_thresholds(exprs), self.metrics())

    @property
    def dirty(self) -> dict[str, int]:
        """Dirty returns by kind so far."""
        return self._tracker.dirty

    @property
    def checked_out(self) -> int:
        return self._tracker.checked_out

    def timeline(self) -> list[PoolTimelineRow]:
        return self._tracker.timeline()

    def server(self) -> ServerSnapshot:
        """Ask the server about the pool's backends now. Never raises: when the server cannot
        be reached the snapshot's ``error`` says why."""
        t = self.clock() - self._t0
        apps, pids = self._tracker.backends()
        return self._server.snapshot(t, apps, pids)

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
        pools = [w.pool for w in self._tracker.watched if isinstance(w.pool, ConnectionPool)]
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
        watched, outstanding = self._tracker.snapshot()
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
        server = self.server() if self._server.dsn is not None else None
        for rec in outstanding:
            remove_hook(rec.conn)
            do_close = rec.watched.owned if close_leaked is None else close_leaked
            if do_close and not rec.watched.is_async:
                with contextlib.suppress(Exception):
                    rec.conn.close()
        for w in watched:
            w.restore()
            if w.owned and isinstance(w.pool, ConnectionPool):
                with contextlib.suppress(Exception):
                    w.pool.close(timeout=close_timeout)
        self._tracker.unhook_log()
        self._server.close()
        with self._lock:
            recovery = list(self._recoveries)
        self._report = self._tracker.report(
            name=self.name, duration_s=end - self._t0, metrics=metrics, leaked=leaked,
            server=server, recovery=recovery,
        )
        return self._report

    close = finish

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
        return f"<PoolProbe {self.name!r} pools={len(self._tracker.watched)}>"


def _opened(pool: ConnectionPool[Any], timeout: float) -> bool:
    """Whether ``pool`` got its ``min_size`` connections within ``timeout`` seconds."""
    try:
        pool.wait(timeout=timeout)
    except PoolTimeout:
        return False
    return True


def _pool_dsn(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> Dsn | None:
    """The DSN a watched pool connects with (its conninfo and connection parameters), or None
    when it cannot be rebuilt (a callable conninfo, a malformed one)."""
    if not isinstance(pool.conninfo, str):
        return None
    kw = pool.kwargs if isinstance(pool.kwargs, Mapping) else {}
    extra = {k: v for k, v in kw.items() if k not in _NON_CONNINFO_KWARGS}
    try:
        return Dsn(make_conninfo(pool.conninfo, **extra))
    except psycopg.ProgrammingError:
        return None
