"""Per-pool instrumentation: wrap a pool's getconn/putconn and its connections' ``wait``.

``getconn``/``putconn`` are replaced on the pool *instance* (``connection()`` goes through them
too) and, while a connection is checked out, ``wait`` on the connection instance: every
statement, commit and rollback of psycopg passes through ``Connection.wait``, so errors are seen
whether they surface at ``execute()``, at ``commit()`` or at the end of a ``with
conn.transaction():`` block (where SERIALIZABLE conflicts usually appear). Nothing is patched on
classes; :meth:`WatchedPool.restore` and the return of each connection undo it. What the
wrappers see goes to a :class:`~.tracker.CheckoutTracker`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

if TYPE_CHECKING:
    from .tracker import CheckoutTracker

AnyPool = ConnectionPool[Any] | AsyncConnectionPool[Any]

_MARK: Final = "_stressguard_probe"  # the pool instance attribute holding its WatchedPool
_GAUGES: Final = frozenset(
    {"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"}
)


def pool_stats(pool: AnyPool) -> dict[str, int]:
    try:
        return dict(pool.get_stats())
    except Exception:
        return {}


@dataclass
class WatchedPool:
    """One pool under a probe: its own methods, and its counters when the probe took it."""

    pool: AnyPool
    is_async: bool
    owned: bool
    app_name: str | None
    originals: dict[str, Any]
    stats0: dict[str, int]
    last_stats: dict[str, int]
    sample_stats: dict[str, int]
    in_flight: int = 0  # getconn() calls through the probe not yet returned

    @classmethod
    def install(
        cls, pool: AnyPool, tracker: CheckoutTracker, *, owned: bool, app_name: str | None
    ) -> WatchedPool:
        if getattr(pool, _MARK, None) is not None:
            raise ValueError(f"pool {pool.name!r} is already watched by a probe")
        originals = {
            "getconn": pool.__dict__.get("getconn"),
            "putconn": pool.__dict__.get("putconn"),
            "_raw_getconn": pool.getconn,
            "_raw_putconn": pool.putconn,
        }
        stats = pool_stats(pool)
        w = cls(pool, isinstance(pool, AsyncConnectionPool), owned, app_name, originals, stats,
                dict(stats), dict(stats))
        if w.is_async:
            setattr(pool, "getconn", _async_getconn(w, tracker))  # noqa: B010
            setattr(pool, "putconn", _async_putconn(w, tracker))  # noqa: B010
        else:
            setattr(pool, "getconn", _sync_getconn(w, tracker))  # noqa: B010
            setattr(pool, "putconn", _sync_putconn(w, tracker))  # noqa: B010
        setattr(pool, _MARK, w)
        return w

    def restore(self) -> None:
        pool = self.pool
        for attr in ("getconn", "putconn"):
            prev = self.originals.get(attr)
            if prev is None:
                pool.__dict__.pop(attr, None)
            else:
                setattr(pool, attr, prev)
        pool.__dict__.pop(_MARK, None)

    def info(self) -> dict[str, Any]:
        """The pool's settings and its counters since it was watched, for the report."""
        s = self.last_stats
        return {
            "name": self.pool.name, "async": self.is_async, "owned": self.owned,
            "min_size": self.pool.min_size, "max_size": self.pool.max_size,
            "timeout": self.pool.timeout, "application_name": self.app_name,
            "stats": {k: int(v) - int(self.stats0.get(k, 0)) if k not in _GAUGES else int(v)
                      for k, v in s.items()},
        }


def raw_method(pool: AnyPool, attr: str) -> Any:
    """The pool's method without a probe's instrumentation."""
    w = pool.__dict__.get(_MARK)
    if isinstance(w, WatchedPool):
        return w.originals[f"_raw_{attr}"]
    return getattr(pool, attr)


def _sync_getconn(w: WatchedPool, tracker: CheckoutTracker) -> Callable[..., Any]:
    raw: Callable[..., Any] = w.originals["_raw_getconn"]
    clock = tracker.clock

    def getconn(timeout: float | None = None) -> Any:
        before = tracker.enter_getconn(w)
        t0 = clock()
        try:
            conn = raw(timeout=timeout)
        except PoolTimeout as exc:
            tracker.acquire_failed(w, exc, clock() - t0, timeout=True)
            raise
        except BaseException as exc:
            tracker.acquire_failed(w, exc, clock() - t0, timeout=False)
            raise
        waited = clock() - t0
        tracker.acquired(w, conn, waited, before, pool_stats(w.pool))
        _install_hook(conn, tracker, is_async=False)
        return conn

    return getconn


def _sync_putconn(w: WatchedPool, tracker: CheckoutTracker) -> Callable[..., Any]:
    raw: Callable[..., Any] = w.originals["_raw_putconn"]

    def putconn(conn: Any) -> None:
        tracker.returned(conn)
        raw(conn)

    return putconn


def _async_getconn(w: WatchedPool, tracker: CheckoutTracker) -> Callable[..., Awaitable[Any]]:
    raw: Callable[..., Awaitable[Any]] = w.originals["_raw_getconn"]
    clock = tracker.clock

    async def getconn(timeout: float | None = None) -> Any:
        before = tracker.enter_getconn(w)
        t0 = clock()
        try:
            conn = await raw(timeout=timeout)
        except PoolTimeout as exc:
            tracker.acquire_failed(w, exc, clock() - t0, timeout=True)
            raise
        except BaseException as exc:
            tracker.acquire_failed(w, exc, clock() - t0, timeout=False)
            raise
        waited = clock() - t0
        tracker.acquired(w, conn, waited, before, pool_stats(w.pool))
        _install_hook(conn, tracker, is_async=True)
        return conn

    return getconn


def _async_putconn(w: WatchedPool, tracker: CheckoutTracker) -> Callable[..., Awaitable[None]]:
    raw: Callable[..., Awaitable[None]] = w.originals["_raw_putconn"]

    async def putconn(conn: Any) -> None:
        tracker.returned(conn)
        await raw(conn)

    return putconn


def _install_hook(conn: Any, tracker: CheckoutTracker, *, is_async: bool) -> None:
    if "wait" in conn.__dict__:
        return
    orig = conn.wait  # the bound method of the class

    if is_async:
        async def await_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await orig(gen, *args, **kwargs)
            except psycopg.Error as exc:
                tracker.db_error(exc, conn)
                raise

        conn.wait = await_wait
    else:
        def sync_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return orig(gen, *args, **kwargs)
            except psycopg.Error as exc:
                tracker.db_error(exc, conn)
                raise

        conn.wait = sync_wait


def remove_hook(conn: Any) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        conn.__dict__.pop("wait", None)


class PoolLogHandler(logging.Handler):
    """Collects psycopg_pool's "error connecting in 'pool'" warnings for the watched pools."""

    def __init__(self, tracker: CheckoutTracker) -> None:
        super().__init__(level=logging.WARNING)
        self._tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.msg == "error connecting in %r: %s" and isinstance(record.args, tuple):
                pool_name, exc = record.args[0], record.args[1]
                self._tracker.connect_error(str(pool_name), exc)
        except Exception:  # a log handler must never raise
            pass

