""":class:`HttpClient`: the calls, their retry and their statistics."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl
import sys
from collections.abc import Container, Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ..stats import StatsRecorder, current_recorder
from .body import send_streamed
from .connection import Result, now
from .errors import ERROR_CLASSES, HttpProtocolError, HttpStatusError, _Failure, status_message
from .pool import _HostPool
from .request import MISSING, DataType, ParamsType, _Requests, check_header
from .response import Response

__all__ = ["IDEMPOTENT_METHODS", "HttpClient"]

#: Methods safe to replay on a fresh connection when a pooled one turned out to be closed.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class HttpClient:
    """Async HTTP/1.1 client with a keep-alive pool that records every call per endpoint.

    ::

        async with HttpClient("http://127.0.0.1:8000", timeout=5) as http:
            r = await http.get("/items", name="list items")
            await http.post("/orders", json={"item": 1})

    ``timeout`` (seconds) bounds a whole call, ``connect_timeout`` the connect part;
    ``max_connections`` caps open connections per host (default: no cap, every concurrent call
    gets its own connection as every virtual user would, so the pool never adds client-side
    queueing to the measured latency); ``accept_status`` lists statuses >= 400
    that are not errors; ``headers`` are sent with every request; ``raise_for_status=False``
    returns unaccepted statuses instead of raising (they are still recorded as errors).
    ``recorder`` overrides :data:`~pytest_stressguard.core.stats.current_recorder`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_connections: int | None = None,
        accept_status: Container[int] = (),
        headers: Mapping[str, str] | None = None,
        raise_for_status: bool = True,
        verify: bool | _ssl.SSLContext = True,
        recorder: StatsRecorder | None = None,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0 seconds")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1 (or None: no limit)")
        if base_url is not None:
            scheme = urlsplit(base_url).scheme.lower()
            if scheme not in ("http", "https"):
                raise ValueError(f"base_url must be http:// or https://, got {base_url!r}")
            base_url = base_url.rstrip("/")
        self.base_url = base_url
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_connections = max_connections
        self.accept_status = accept_status
        self.raise_for_status = raise_for_status
        self.verify = verify
        self._recorder = recorder
        fixed: dict[str, tuple[str, str]] = {}
        for k, v in (headers or {}).items():
            check_header(k, str(v))
            fixed[k.lower()] = (k, str(v))
        self._requests = _Requests(base_url, fixed, self._pool)
        self._targets = self._requests.targets
        self._simple = self._requests.simple
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._ssl_context: _ssl.SSLContext | None = None
        self._closed = False

    # -- context manager

    async def __aenter__(self) -> HttpClient:
        self._bind()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (idle ones, and in-flight ones by aborting them)."""
        self._closed = True
        conns = [c for p in self._pools.values() for c in p.conns]
        for c in conns:
            if c.transport is not None and not c.closed:
                if c.waiter is None:
                    c.transport.close()
                else:
                    c.transport.abort()
        if conns:
            await asyncio.sleep(0)  # let connection_lost run before the loop may close
        self._pools.clear()
        self._simple.clear()

    def abort_now(self) -> None:
        """Close every connection without an event loop (its loop is already closed): the TCP
        connections are shut down now, so the server sees them go; the file descriptors follow
        when the transports are collected."""
        self._closed = True
        for pool in self._pools.values():
            for c in pool.conns:
                t = c.transport
                if t is None or c.closed:
                    continue
                try:
                    t.abort()
                except RuntimeError:  # "Event loop is closed": shut the socket down directly
                    sock = t.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
        self._pools.clear()
        self._simple.clear()

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (all hosts): keep-alive reuse keeps this low."""
        return sum(p.opened for p in self._pools.values())

    @property
    def open_connections(self) -> int:
        return sum(len(p.conns) for p in self._pools.values())

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("HttpClient is bound to another event loop; make one per loop")
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        return loop

    # -- verbs

    async def get(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("GET", url, name=name, **kw)

    async def head(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("HEAD", url, name=name, **kw)

    async def post(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("POST", url, name=name, **kw)

    async def put(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("PUT", url, name=name, **kw)

    async def patch(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("PATCH", url, name=name, **kw)

    async def delete(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("DELETE", url, name=name, **kw)

    async def options(self, url: str, *, name: str | None = None, **kw: Any) -> Response:
        return await self.request("OPTIONS", url, name=name, **kw)

    # -- the call

    async def request(
        self,
        method: str,
        url: str,
        *,
        name: str | None = None,
        json: Any = MISSING,
        data: DataType | None = None,
        headers: Mapping[str, str] | None = None,
        params: ParamsType | None = None,
        accept: Container[int] | None = None,
        timeout: float | None = None,
        raise_for_status: bool | None = None,
    ) -> Response:
        """Send one request and return the complete response.

        ``name`` is the statistics name (default ``"METHOD /path"``, query excluded). ``json``
        is serialised as ``application/json``; ``data`` may be bytes, str, a mapping (form),
        an async or sync iterator of bytes or a binary file object (streamed). ``accept``
        lists statuses >= 400 that count as success for this call (instead of the client's
        ``accept_status``). Transport failures always raise :class:`HttpError` subclasses;
        unaccepted statuses raise :class:`HttpStatusError` unless ``raise_for_status`` is false.
        """
        start = now()
        if self._loop is None or self._closed:
            self._bind()
        if not method.isupper():
            method = method.upper()
        stream: Any = None
        length: int | None = None
        if json is MISSING and data is None and headers is None and params is None:
            cached = self._simple.get((method, url))
            if cached is None:
                cached = self._requests.simple_entry(method, url)
            pool, payload, default_name, full_url = cached
            replayable = True
        else:
            pool, payload, default_name, full_url, stream, length = self._requests.build(
                method, url, json, data, headers, params
            )
            replayable = stream is None
        if name is None:
            name = default_name
        deadline = start + (self.timeout if timeout is None else timeout)
        is_head = method == "HEAD"
        retry_ok = replayable and method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            conn = pool.take_idle() if not attempt else None
            fut: asyncio.Future[Result] | None = None
            try:
                if conn is None:
                    conn = await pool.acquire(deadline, fresh=attempt > 0)
                fut = conn.begin(deadline, is_head)
                if stream is None:
                    conn.transport.write(payload)  # type: ignore[union-attr]
                else:
                    await send_streamed(conn, payload, stream, length, fut, pool.loop)
                status, reason, raw_headers, body = await fut
            except _Failure as f:
                if fut is not None and fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
                if conn is not None:
                    conn.abort()
                    pool.discard(conn)
                if f.stale and retry_ok and attempt == 0:
                    attempt = 1
                    continue
                self._fail(f, name, method, full_url, start)
            except BaseException:
                # Cancelled, or the caller's body iterator failed: the connection's state is
                # unknown, so it is closed. Not an HTTP outcome: not recorded.
                if fut is not None and fut.done() and not fut.cancelled():
                    fut.exception()
                if conn is not None:
                    conn.abort()
                    pool.discard(conn)
                raise
            break
        elapsed = now() - start
        resp = Response(
            status, raw_headers, body, elapsed,
            reason=reason, method=method, url=full_url, name=name,
        )
        if conn.keep_alive and not conn.closed:
            pool.release(conn)
        else:
            pool.discard(conn)
        rec = self._recorder or current_recorder.get()
        if status < 400 or status in (self.accept_status if accept is None else accept):
            if rec is not None:
                rec.record(name, elapsed, None)
            return resp
        kind = "http_5xx" if status >= 500 else "http_4xx"
        if rec is not None:
            rec.record(name, elapsed, kind)
        if raise_for_status is None:
            raise_for_status = self.raise_for_status
        if raise_for_status:
            raise HttpStatusError(status_message(name, resp), resp, name=name)
        return resp

    def _fail(self, f: _Failure, name: str, method: str, url: str, start: float) -> NoReturn:
        rec = self._recorder or current_recorder.get()
        if rec is not None:
            rec.record(name, now() - start, f.kind)
        cls = ERROR_CLASSES.get(f.kind, HttpProtocolError)
        raise cls(f"{name}: {f.detail}", name=name, method=method, url=url) from None

    # -- pools

    def _pool(self, key: tuple[str, str, int]) -> _HostPool:
        pool = self._pools.get(key)
        if pool is None:
            loop = self._bind()
            ctx: _ssl.SSLContext | None = None
            if key[0] == "https":
                ctx = self._ssl()
            limit = sys.maxsize if self.max_connections is None else self.max_connections
            pool = _HostPool(loop, key[1], key[2], ctx, limit, self.connect_timeout)
            self._pools[key] = pool
        return pool

    def _ssl(self) -> _ssl.SSLContext:
        if isinstance(self.verify, _ssl.SSLContext):
            return self.verify
        if self._ssl_context is None:
            ctx = _ssl.create_default_context()
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = _ssl.CERT_NONE
            self._ssl_context = ctx
        return self._ssl_context
