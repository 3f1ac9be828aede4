"""The keep-alive pool of one ``(scheme, host, port)``: idle reuse, the connection cap, connects."""

from __future__ import annotations

import asyncio
import errno
import ssl as _ssl
from collections import deque

from .connection import READ_BUFFER, _Conn, now
from .errors import _Failure

__all__ = ["connect_failure", "hostport"]


class _HostPool:
    """Connections to one (scheme, host, port)."""

    __slots__ = (
        "connect_timeout", "conns", "host", "idle", "limit", "loop", "opened", "port",
        "read_view", "server_hostname", "ssl", "total", "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        ssl: _ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.ssl = ssl
        self.server_hostname = host if ssl is not None else None
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.total = 0  # open + connecting connections (slots in use)
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.opened = 0
        # One read buffer for all the pool's connections: a read is parsed before the loop
        # reads anything else, so they never need it at the same time.
        self.read_view = memoryview(bytearray(READ_BUFFER))

    def take_idle(self) -> _Conn | None:
        idle = self.idle
        while idle:
            c = idle.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():
                return c
        return None

    def release(self, conn: _Conn) -> None:
        """Give a healthy connection back: to a waiter first, else to the idle list."""
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        self.idle.append(conn)

    def free_slot(self) -> None:
        """A slot was freed: hand it to a waiter (who will connect), else count it down."""
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self.total -= 1

    def discard(self, conn: _Conn) -> None:
        """Forget ``conn`` (closed or not reusable) and free its slot. Idempotent."""
        if conn.discarded:
            return
        conn.discarded = True
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.close()
        self.free_slot()

    async def acquire(self, deadline: float, fresh: bool) -> _Conn:
        """A connection for one request: idle (unless ``fresh``), handed over, or new."""
        if not fresh:
            c = self.take_idle()
            if c is not None:
                return c
        while self.total >= self.limit:
            if fresh and self.idle:
                self.discard(self.idle[-1])  # trade an idle slot for a fresh connection
                continue
            waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
            self.waiters.append(waiter)
            remaining = deadline - now()
            try:
                got = await asyncio.wait_for(waiter, max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise _Failure(
                    "timeout", f"no free connection (max_connections={self.limit}) in time"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is None:
                        self.free_slot()
                    else:
                        self.release(handed)
                raise
            if got is None:
                return await self.connect(deadline)  # the slot was handed to us
            if not fresh and not got.closed:
                return got
            self.discard(got)
            # discard freed the slot to the next waiter or counted it down; try again
        self.total += 1
        return await self.connect(deadline)

    async def connect(self, deadline: float) -> _Conn:
        """Open a connection in an already reserved slot (freed again on failure)."""
        remaining = min(self.connect_timeout, deadline - now())
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Conn(self), self.host, self.port,
                    ssl=self.ssl, server_hostname=self.server_hostname,
                ),
                remaining,
            )
        except BaseException as e:
            self.free_slot()
            if isinstance(e, asyncio.TimeoutError):
                raise _Failure("timeout", f"connect to {hostport(self)} timed out") from None
            if isinstance(e, Exception):
                raise connect_failure(e, self) from None
            raise
        self.opened += 1
        if conn.closed:  # closed between connect and now: rare, treat as a reset
            self.discard(conn)
            raise _Failure("reset", f"connection to {hostport(self)} closed at once")
        self.conns.add(conn)
        return conn


def hostport(pool: _HostPool) -> str:
    return f"[{pool.host}]:{pool.port}" if ":" in pool.host else f"{pool.host}:{pool.port}"


def connect_failure(e: Exception, pool: _HostPool) -> _Failure:
    where = hostport(pool)
    if isinstance(e, ConnectionRefusedError) or (
        isinstance(e, OSError) and f"[Errno {errno.ECONNREFUSED}]" in str(e)
    ):  # the second form: asyncio's "Multiple exceptions" when every address refused
        return _Failure("refused", f"connection refused ({where})")
    if isinstance(e, _ssl.SSLError):
        return _Failure("protocol", f"TLS handshake with {where} failed: {e.reason or e}")
    if isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return _Failure("reset", f"connection to {where} reset during connect")
    if isinstance(e, TimeoutError):
        return _Failure("timeout", f"connect to {where} timed out")
    if isinstance(e, OSError):
        return _Failure("connect", f"cannot connect to {where}: {e.strerror or e}")
    return _Failure("connect", f"cannot connect to {where}: {type(e).__name__}")
