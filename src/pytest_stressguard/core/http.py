"""A lean async HTTP/1.1 client for load bodies: keep-alive pool, timeouts, per-endpoint stats.

Why a hand-written client
-------------------------
A load generator whose client saturates reports its own queueing as the server's latency. On the
reference machine (2 shared cores, nginx pinned to one, each generator to the other, 50 users;
``benchmarks/bench_http.py``) a quiet run gave: this client ~50-60k requests/s at ~90 % of its
core, pyreqwest ~15-25k/s, aiohttp ~8-10k/s, Locust FastHttpUser ~7.5-10k/s, httpx ~200/s, wrk
~150-230k/s; on a busy run (the generator getting ~40 % of its core) 10.9k/s against Locust's
3.2k/s, i.e. 3.1x Locust per CPU-second. A minimal ``asyncio.Protocol`` client on the stock
event loop is therefore the transport; uvloop added only ~15 % and is not a dependency (it is
used when the caller's loop is uvloop). The per-request work is kept to: one cached request
head, one future, one ``transport.write``, a header parse on one ``decode``/``split``, and one
``recorder.record``. No task, no timer handle and no stream object per request.

Design notes
------------
* **Pool**: one :class:`_HostPool` per ``(scheme, host, port)``; idle connections are reused LIFO
  (the warmest socket first). ``max_connections`` caps open connections per host; callers beyond
  it wait (the wait counts in their latency and in their total timeout).
* **Timeouts**: ``connect_timeout`` bounds the TCP/TLS connect; ``timeout`` bounds the whole call
  (pool wait, connect, upload, response). The read deadline is enforced by *one* lazily re-armed
  timer per connection, not a timer per request: a request only stores its deadline; when the
  timer fires it re-arms itself at the current request's deadline or fails it.
* **Stale keep-alive**: a server may close an idle connection just as it is reused. When a reused
  connection closes before any byte of the response arrived, an idempotent request with a
  replayable body (not a stream) is retried once on a fresh connection.
* **Bodies**: responses are framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the
  end of the connection, and buffered (``Response.body``). Uploads from bytes/str/json/forms are
  sent with ``Content-Length``; async iterators, sync iterators and file objects are streamed
  (chunked unless their length is known or a ``Content-Length`` header is given) under transport
  flow control, so memory stays constant whatever the size. File reads run in the default
  executor, off the event loop.
* **Errors** are categorised into :data:`ErrorKind` and raised as :class:`HttpError` subclasses
  whose message is stable per endpoint and cause (``"GET /items: 503 Service Unavailable"``), so the
  engine's error grouping (type + message) groups them usefully. Every call is recorded into
  :data:`~pytest_stressguard.core.stats.current_recorder` under its name with its latency and
  error kind (``None`` on success).
* One client belongs to one event loop (the loop of its first request).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json as _json
import os
import socket
import ssl as _ssl
import sys
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Literal, NoReturn, cast
from urllib.parse import quote, urlencode, urlsplit

from .stats import StatsRecorder, current_recorder

__all__ = [
    "ERROR_KINDS",
    "ErrorKind",
    "Headers",
    "HttpClient",
    "HttpConnectError",
    "HttpError",
    "HttpProtocolError",
    "HttpRefused",
    "HttpReset",
    "HttpStatusError",
    "HttpTimeout",
    "Response",
]

ErrorKind = Literal["refused", "reset", "timeout", "http_4xx", "http_5xx", "protocol", "connect"]
#: Every error kind, in the order reports list them. ``connect`` covers connection failures
#: other than a refusal or a timeout (name resolution, unreachable network, ...).
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "refused", "reset", "timeout", "http_4xx", "http_5xx", "protocol", "connect",
)

#: Methods safe to replay on a fresh connection when a pooled one turned out to be closed.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

USER_AGENT = "pytest-stressguard"
MAX_HEAD_BYTES = 64 * 1024
UPLOAD_CHUNK = 256 * 1024
# Parsed targets and prebuilt request heads, per URL. Small on purpose: a REST soak with ids in
# its paths (/items/{id}) makes every URL new, and a 4096-entry cache kept growing for minutes,
# which the soak's leak gate saw as a 30-170 MB/h leak of the test process itself.
_SIMPLE_CACHE_MAX = 256

ParamsType = Mapping[str, Any] | Sequence[tuple[str, Any]]
#: bytes | bytearray | memoryview | str | Mapping[str, Any] (form) | AsyncIterable[bytes] |
#: Iterable[bytes] | a binary file object (anything with ``read``).
DataType = Any

_now = time.perf_counter


# --------------------------------------------------------------------------- errors


class HttpError(Exception):
    """An HTTP call failed. ``kind`` is one of :data:`ERROR_KINDS`; ``name`` is the stats name."""

    kind: ErrorKind = "protocol"

    def __init__(self, message: str, *, name: str = "", method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.method = method
        self.url = url


class HttpRefused(HttpError):
    """The connection was refused (nothing listens on the port)."""

    kind: ErrorKind = "refused"


class HttpReset(HttpError):
    """The connection was reset or closed by the server before the response was complete."""

    kind: ErrorKind = "reset"


class HttpTimeout(HttpError, TimeoutError):
    """The call did not complete within its timeout (connect, pool wait or response)."""

    kind: ErrorKind = "timeout"


class HttpProtocolError(HttpError):
    """The server's response is not valid HTTP/1.x (or uses something unsupported)."""

    kind: ErrorKind = "protocol"


class HttpConnectError(HttpError):
    """The connection could not be made for another reason (name resolution, unreachable)."""

    kind: ErrorKind = "connect"


class HttpStatusError(HttpError):
    """The server answered with a status >= 400 that the call did not accept."""

    def __init__(self, message: str, response: Response, *, name: str = "") -> None:
        super().__init__(message, name=name, method=response.method, url=response.url)
        self.response = response
        self.status = response.status
        self.kind: ErrorKind = "http_5xx" if response.status >= 500 else "http_4xx"


_ERROR_CLASSES: dict[str, type[HttpError]] = {
    "refused": HttpRefused,
    "reset": HttpReset,
    "timeout": HttpTimeout,
    "protocol": HttpProtocolError,
    "connect": HttpConnectError,
}


class _Failure(Exception):
    """Internal: a transport failure, turned into a public :class:`HttpError` by the client."""

    def __init__(self, kind: str, detail: str, stale: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.stale = stale


class _BadResponse(Exception):
    pass


# --------------------------------------------------------------------------- response


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only response headers. Repeated fields are joined with ``", "``
    by ``[]``/``get``; :meth:`get_all` returns them separately; :attr:`raw` keeps the order."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        m: dict[str, str] = {}
        for k, v in raw:
            lk = k.lower()
            m[lk] = f"{m[lk]}, {v}" if lk in m else v
        self._map = m

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, key: str) -> list[str]:
        lk = key.lower()
        return [v for k, v in self.raw if k.lower() == lk]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class Response:
    """A complete response: ``status``, ``reason``, ``headers``, ``body`` (bytes), ``elapsed_s``
    (seconds from the call to the last byte, pool wait and retries included)."""

    __slots__ = (
        "_headers", "_raw_headers", "body", "elapsed_s", "method", "name", "reason", "status",
        "url",
    )

    def __init__(
        self,
        status: int,
        headers: Headers | list[tuple[str, str]],
        body: bytes,
        elapsed_s: float,
        *,
        reason: str = "",
        method: str = "GET",
        url: str = "",
        name: str = "",
    ) -> None:
        self.status = status
        if isinstance(headers, Headers):
            self._headers: Headers | None = headers
            self._raw_headers = headers.raw
        else:
            self._headers = None
            self._raw_headers = headers
        self.body = body
        self.elapsed_s = elapsed_s
        self.reason = reason
        self.method = method
        self.url = url
        self.name = name

    @property
    def headers(self) -> Headers:
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def encoding(self) -> str:
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.encoding, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def raise_for_status(self) -> Response:
        """Raise :class:`HttpStatusError` when the status is >= 400; return ``self`` otherwise."""
        if self.status >= 400:
            raise HttpStatusError(_status_message(self.name, self), self, name=self.name)
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.method} {self.url} {len(self.body)} bytes>"


def _status_message(name: str, r: Response) -> str:
    return f"{name}: {r.status} {r.reason}".rstrip()


# --------------------------------------------------------------------------- connection

_IDLE, _HEAD, _CL, _CHUNKED, _EOF = range(5)


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parses one response at a time (no pipelining)."""

    __slots__ = (
        "body", "buf", "closed", "deadline", "discarded", "drain_waiter", "is_head",
        "keep_alive", "loop", "paused", "pool", "raw_headers", "reason", "received",
        "remaining", "requests", "state", "status", "timer", "timer_at", "transport", "waiter",
    )

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.discarded = False
        self.state = _IDLE
        self.waiter: asyncio.Future[bytes] | None = None
        self.buf = bytearray()
        self.body = bytearray()
        self.remaining = 0
        self.is_head = False
        self.received = False
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[str, str]] = []
        self.keep_alive = True
        self.requests = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiter is not None:
            if self.state == _EOF and exc is None:
                self._complete(bytes(self.body))
            else:
                stale = not self.received and self.requests > 1
                if isinstance(exc, ConnectionResetError):
                    detail = "connection reset by peer"
                elif self.received:
                    detail = "server closed the connection mid-response"
                else:
                    detail = "server closed the connection without a response"
                self._fail("reset", detail, stale)
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_exception(_Failure("reset", "connection closed during upload"))
        self.pool.discard(self)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what EOF meant

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.state == _IDLE:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
            return
        self.received = True
        try:
            self._feed(data)
        except _BadResponse as e:
            self._fail("protocol", str(e))
            if self.transport is not None:
                self.transport.abort()

    # -- request lifecycle (called by the client)

    def begin(self, deadline: float, is_head: bool) -> asyncio.Future[bytes]:
        self.requests += 1
        self.state = _HEAD
        self.is_head = is_head
        self.received = False
        self.keep_alive = True
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.waiter = fut
        self.deadline = deadline
        if self.timer is None or deadline < self.timer_at:
            self._arm(deadline)
        return fut

    async def drain(self) -> None:
        if not self.paused:
            return
        if self.closed:
            raise _Failure("reset", "connection closed during upload")
        w: asyncio.Future[None] = self.loop.create_future()
        self.drain_waiter = w
        try:
            await w
        finally:
            self.drain_waiter = None

    def abort(self) -> None:
        self.keep_alive = False
        self.waiter = None
        if self.transport is not None:
            self.transport.abort()

    # -- timer: one per connection, re-armed lazily

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(self.loop.time() + (deadline - _now()), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.waiter is None:
            return
        if _now() >= self.deadline - 0.001:
            self._fail("timeout", "no response within the timeout")
            self.abort()
        else:
            self._arm(self.deadline)

    # -- parsing

    def _complete(self, body: bytes) -> None:
        self.state = _IDLE
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_result(body)

    def _fail(self, kind: str, detail: str, stale: bool = False) -> None:
        self.state = _IDLE
        self.keep_alive = False
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_exception(_Failure(kind, detail, stale))
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_exception(_Failure(kind, detail))

    def _feed(self, data: bytes) -> None:
        while True:
            state = self.state
            if state == _HEAD:
                if self.buf:
                    self.buf += data
                    data = bytes(self.buf)
                    self.buf.clear()
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > MAX_HEAD_BYTES:
                        raise _BadResponse("response head larger than 64 KiB")
                    self.buf += data
                    return
                self._parse_head(data, end)
                data = data[end + 4 :]
                if self.state == _IDLE:  # complete without a body
                    if data:
                        self.keep_alive = False
                    return
                if not data:
                    return
            elif state == _CL:
                n = len(data)
                rem = self.remaining
                if n >= rem:
                    if n > rem:
                        self.keep_alive = False  # trailing garbage: do not reuse
                    body = self.body
                    if body:
                        body += data[:rem]
                        self.body = bytearray()
                        self._complete(bytes(body))
                    else:
                        self._complete(data[:rem] if n > rem else data)
                    return
                self.body += data
                self.remaining = rem - n
                return
            elif state == _CHUNKED:
                self.buf += data
                self._feed_chunked()
                return
            elif state == _EOF:
                self.body += data
                return
            else:
                return

    def _parse_head(self, data: bytes, end: int) -> None:
        lines = data[:end].decode("latin-1").split("\r\n")
        sl = lines[0]
        if sl[:7] != "HTTP/1." or len(sl) < 12 or sl[8] != " ":
            raise _BadResponse(f"bad status line {sl[:40]!r}")
        try:
            status = int(sl[9:12])
        except ValueError:
            raise _BadResponse(f"bad status line {sl[:40]!r}") from None
        keep_alive = sl[7] == "1"
        length = -1
        chunked = False
        raw: list[tuple[str, str]] = []
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if not sep or not k or k[-1] in " \t" or k[0] in " \t":
                raise _BadResponse(f"bad header line {line[:40]!r}")
            v = v.strip()
            raw.append((k, v))
            kl = len(k)
            if kl == 14 or kl == 17 or kl == 10:
                lk = k.lower()
                if lk == "content-length":
                    if not v.isdigit() or (length >= 0 and int(v) != length):
                        raise _BadResponse(f"bad Content-Length {v[:20]!r}")
                    length = int(v)
                elif lk == "transfer-encoding":
                    chunked = v.lower().rstrip().endswith("chunked")
                    if not chunked:
                        raise _BadResponse(f"unsupported Transfer-Encoding {v[:20]!r}")
                elif lk == "connection":
                    tokens = v.lower()
                    if "close" in tokens:
                        keep_alive = False
                    elif "keep-alive" in tokens:
                        keep_alive = True
        if 100 <= status < 200:
            if status == 101:
                raise _BadResponse("protocol upgrade (101) is not supported")
            return  # interim response (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.reason = sl[13:]
        self.raw_headers = raw
        self.keep_alive = keep_alive
        if self.is_head or status == 204 or status == 304:
            self._complete(b"")
        elif chunked:
            self.state = _CHUNKED
            self.remaining = -1  # -1: expecting a size line
        elif length >= 0:
            if length == 0:
                self._complete(b"")
            else:
                self.state = _CL
                self.remaining = length
        else:
            self.state = _EOF
            self.keep_alive = False

    def _feed_chunked(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                rem = self.remaining
                if rem > 0:  # chunk data
                    take = min(rem, n - pos)
                    self.body += buf[pos : pos + take]
                    pos += take
                    self.remaining = rem - take
                    if self.remaining == 0:
                        self.remaining = -2  # expecting the CRLF after the data
                elif rem == -2:
                    if n - pos < 2:
                        return
                    if buf[pos : pos + 2] != b"\r\n":
                        raise _BadResponse("missing CRLF after chunk data")
                    pos += 2
                    self.remaining = -1
                elif rem == -1:  # size line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if n - pos > 1024:
                            raise _BadResponse("chunk size line too long")
                        return
                    size_txt = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
                    try:
                        size = int(size_txt, 16)
                    except ValueError:
                        raise _BadResponse(f"bad chunk size {size_txt[:20]!r}") from None
                    if size < 0:
                        raise _BadResponse("negative chunk size")
                    pos = eol + 2
                    self.remaining = size if size > 0 else -3
                else:  # -3: trailer section, ends with an empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if n - pos > MAX_HEAD_BYTES:
                            raise _BadResponse("trailers larger than 64 KiB")
                        return
                    if eol == pos:
                        pos += 2
                        if pos < n:
                            self.keep_alive = False
                        body = bytes(self.body)
                        self.body = bytearray()
                        self._complete(body)
                        return
                    pos = eol + 2
        finally:
            del buf[:pos]


# --------------------------------------------------------------------------- pool


class _HostPool:
    """Connections to one (scheme, host, port)."""

    __slots__ = (
        "conns", "host", "idle", "limit", "loop", "opened", "port", "server_hostname", "ssl",
        "total", "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        ssl: _ssl.SSLContext | None,
        limit: int,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.ssl = ssl
        self.server_hostname = host if ssl is not None else None
        self.limit = limit
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.total = 0  # open + connecting connections (slots in use)
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.opened = 0

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


# --------------------------------------------------------------------------- client


class _Target:
    __slots__ = ("host_header", "path", "pool_key", "target")

    def __init__(
        self, pool_key: tuple[str, str, int], host_header: str, path: str, target: str
    ) -> None:
        self.pool_key = pool_key
        self.host_header = host_header
        self.path = path
        self.target = target


def _check_header(k: str, v: str) -> None:
    if not k or any(c in k for c in ":\r\n \t") or "\r" in v or "\n" in v:
        raise ValueError(f"invalid header {k!r}: {v!r}")


class _Missing:
    pass


_MISSING: Any = _Missing()


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
        self._headers: dict[str, tuple[str, str]] = {}
        for k, v in (headers or {}).items():
            _check_header(k, str(v))
            self._headers[k.lower()] = (k, str(v))
        default_lines = "".join(
            f"{k}: {v}\r\n"
            for k, v in (("User-Agent", USER_AGENT), ("Accept", "*/*"))
            if k.lower() not in self._headers
        ) + "".join(f"{k}: {v}\r\n" for k, v in self._headers.values())
        self._default_lines = default_lines
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._targets: dict[str, _Target] = {}
        self._simple: dict[tuple[str, str], tuple[_HostPool, bytes, str, str]] = {}
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
        json: Any = _MISSING,
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
        start = _now()
        if self._loop is None or self._closed:
            self._bind()
        if not method.isupper():
            method = method.upper()
        stream: Any = None
        length: int | None = None
        if json is _MISSING and data is None and headers is None and params is None:
            cached = self._simple.get((method, url))
            if cached is None:
                cached = self._simple_entry(method, url)
            pool, payload, default_name, full_url = cached
            replayable = True
        else:
            pool, payload, default_name, full_url, stream, length = self._build(
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
            fut: asyncio.Future[bytes] | None = None
            try:
                if conn is None:
                    conn = await self._acquire(pool, deadline, fresh=attempt > 0)
                fut = conn.begin(deadline, is_head)
                if stream is None:
                    conn.transport.write(payload)  # type: ignore[union-attr]
                else:
                    await self._upload(conn, payload, stream, length, fut)
                body = await fut
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
        elapsed = _now() - start
        status = conn.status
        resp = Response(
            status, conn.raw_headers, body, elapsed,
            reason=conn.reason, method=method, url=full_url, name=name,
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
            raise HttpStatusError(_status_message(name, resp), resp, name=name)
        return resp

    def _fail(self, f: _Failure, name: str, method: str, url: str, start: float) -> NoReturn:
        rec = self._recorder or current_recorder.get()
        if rec is not None:
            rec.record(name, _now() - start, f.kind)
        cls = _ERROR_CLASSES.get(f.kind, HttpProtocolError)
        raise cls(f"{name}: {f.detail}", name=name, method=method, url=url) from None

    # -- connections

    async def _acquire(self, pool: _HostPool, deadline: float, fresh: bool) -> _Conn:
        """A connection for one request: idle (unless ``fresh``), handed over, or new."""
        if not fresh:
            c = pool.take_idle()
            if c is not None:
                return c
        while pool.total >= pool.limit:
            if fresh and pool.idle:
                pool.discard(pool.idle[-1])  # trade an idle slot for a fresh connection
                continue
            waiter: asyncio.Future[_Conn | None] = pool.loop.create_future()
            pool.waiters.append(waiter)
            remaining = deadline - _now()
            try:
                got = await asyncio.wait_for(waiter, max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise _Failure(
                    "timeout", f"no free connection (max_connections={pool.limit}) in time"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is None:
                        pool.free_slot()
                    else:
                        pool.release(handed)
                raise
            if got is None:
                return await self._connect(pool, deadline)  # the slot was handed to us
            if not fresh and not got.closed:
                return got
            pool.discard(got)
            # discard freed the slot to the next waiter or counted it down; try again
        pool.total += 1
        return await self._connect(pool, deadline)

    async def _connect(self, pool: _HostPool, deadline: float) -> _Conn:
        """Open a connection in an already reserved slot (freed again on failure)."""
        remaining = min(self.connect_timeout, deadline - _now())
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            _, conn = await asyncio.wait_for(
                pool.loop.create_connection(
                    lambda: _Conn(pool), pool.host, pool.port,
                    ssl=pool.ssl, server_hostname=pool.server_hostname,
                ),
                remaining,
            )
        except BaseException as e:
            pool.free_slot()
            if isinstance(e, asyncio.TimeoutError):
                raise _Failure("timeout", f"connect to {_hostport(pool)} timed out") from None
            if isinstance(e, Exception):
                raise _connect_failure(e, pool) from None
            raise
        pool.opened += 1
        if conn.closed:  # closed between connect and now: rare, treat as a reset
            pool.discard(conn)
            raise _Failure("reset", f"connection to {_hostport(pool)} closed at once")
        pool.conns.add(conn)
        return conn

    async def _upload(
        self,
        conn: _Conn,
        head: bytes,
        source: Any,
        length: int | None,
        fut: asyncio.Future[bytes],
    ) -> None:
        t = conn.transport
        assert t is not None
        t.write(head)
        chunked = length is None
        sent = 0
        async for chunk in _chunks(source, self._loop):
            if fut.done() or conn.closed:
                conn.keep_alive = False  # answered (or failed) before the body was complete
                return
            if not chunk:
                continue
            if chunked:
                t.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                t.write(chunk)
            sent += len(chunk)
            if conn.paused:
                await conn.drain()
        if fut.done() or conn.closed:
            conn.keep_alive = False
            return
        if chunked:
            t.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError(f"body produced {sent} bytes but Content-Length is {length}")

    # -- request building

    def _pool(self, key: tuple[str, str, int]) -> _HostPool:
        pool = self._pools.get(key)
        if pool is None:
            loop = self._bind()
            ctx: _ssl.SSLContext | None = None
            if key[0] == "https":
                ctx = self._ssl()
            limit = sys.maxsize if self.max_connections is None else self.max_connections
            pool = _HostPool(loop, key[1], key[2], ctx, limit)
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

    def _full_url(self, url: str) -> str:
        if url.startswith(("http://", "https://", "HTTP://", "HTTPS://")):
            return url
        if self.base_url is None:
            raise ValueError(f"relative URL {url!r} needs HttpClient(base_url=...)")
        if not url:
            return self.base_url
        return f"{self.base_url}/{url.lstrip('/')}"

    def _target(self, url: str) -> _Target:
        t = self._targets.get(url)
        if t is not None:
            return t
        full = self._full_url(url)
        parts = urlsplit(full)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {full!r} (http and https only)")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not supported; send an Authorization header"
            )
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in URL {full!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in URL {full!r}") from None
        default_port = port == (443 if scheme == "https" else 80)
        hh = f"[{host}]" if ":" in host else host
        host_header = hh if default_port else f"{hh}:{port}"
        path = parts.path or "/"
        safe = "/%:@!$&'()*+,;=-._~"
        target = quote(path, safe=safe)
        if parts.query:
            target += "?" + quote(parts.query, safe=safe + "?")
        t = _Target((scheme, host, port), host_header, path, target)
        if len(self._targets) >= _SIMPLE_CACHE_MAX:
            self._targets.clear()
        self._targets[url] = t
        return t

    def _simple_entry(self, method: str, url: str) -> tuple[_HostPool, bytes, str, str]:
        if not method.isupper() or not method.isalpha():
            raise ValueError(f"bad HTTP method {method!r}")
        t = self._target(url)
        body_line = "Content-Length: 0\r\n" if method in ("POST", "PUT", "PATCH") else ""
        head = (
            f"{method} {t.target} HTTP/1.1\r\nHost: {t.host_header}\r\n"
            f"{self._default_lines}{body_line}\r\n"
        ).encode("latin-1")
        entry = (self._pool(t.pool_key), head, f"{method} {t.path}", self._full_url(url))
        if len(self._simple) >= _SIMPLE_CACHE_MAX:
            self._simple.clear()
        self._simple[(method, url)] = entry
        return entry

    def _build(
        self,
        method: str,
        url: str,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        params: ParamsType | None,
    ) -> tuple[_HostPool, bytes, str, str, Any, int | None]:
        """Head bytes (+ body when small), and the stream to send after the head, if any."""
        if not method.isupper() or not method.isalpha():
            raise ValueError(f"bad HTTP method {method!r}")
        t = self._target(url)
        full_url = self._full_url(url)
        target = t.target
        if params:
            qs = urlencode(params, doseq=True)
            if qs:
                target += ("&" if "?" in target else "?") + qs
                full_url += ("&" if "?" in full_url else "?") + qs
        hdrs: dict[str, tuple[str, str]] = dict(self._headers)
        if headers:
            for k, v in headers.items():
                v = str(v)
                _check_header(k, v)
                hdrs[k.lower()] = (k, v)
        body: bytes | None = None
        stream: Any = None
        length: int | None = None
        ctype: str | None = None
        if json is not _MISSING:
            if data is not None:
                raise ValueError("pass json= or data=, not both")
            body = _json.dumps(json, separators=(",", ":")).encode()
            ctype = "application/json"
        elif data is None:
            body = b"" if method in ("POST", "PUT", "PATCH") else None
        elif isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
        elif isinstance(data, str):
            body = data.encode()
            ctype = "text/plain; charset=utf-8"
        elif isinstance(data, Mapping):
            body = urlencode(data, doseq=True).encode()
            ctype = "application/x-www-form-urlencoded"
        elif hasattr(data, "read"):
            stream = data
            length = _file_length(data)
        elif isinstance(data, (AsyncIterable, Iterable)):
            stream = data
        else:
            raise TypeError(f"unsupported data type {type(data).__name__}")
        if ctype is not None and "content-type" not in hdrs:
            hdrs["content-type"] = ("Content-Type", ctype)
        hdrs.pop("transfer-encoding", None)
        if stream is not None:
            given = hdrs.get("content-length")
            if given is not None:
                if not given[1].isdigit():
                    raise ValueError(f"bad Content-Length header {given[1]!r}")
                length = int(given[1])
            if length is None:
                hdrs.pop("content-length", None)
                hdrs["transfer-encoding"] = ("Transfer-Encoding", "chunked")
            else:
                hdrs["content-length"] = ("Content-Length", str(length))
        elif body is not None:
            hdrs["content-length"] = ("Content-Length", str(len(body)))
        else:
            hdrs.pop("content-length", None)
        host = hdrs.pop("host", ("Host", t.host_header))[1]
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
        if "user-agent" not in hdrs:
            lines.append(f"User-Agent: {USER_AGENT}\r\n")
        if "accept" not in hdrs:
            lines.append("Accept: */*\r\n")
        lines.extend(f"{k}: {v}\r\n" for k, v in hdrs.values())
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if body:
            head += body
        return self._pool(t.pool_key), head, f"{method} {t.path}", full_url, stream, length


def _hostport(pool: _HostPool) -> str:
    return f"[{pool.host}]:{pool.port}" if ":" in pool.host else f"{pool.host}:{pool.port}"


def _connect_failure(e: Exception, pool: _HostPool) -> _Failure:
    where = _hostport(pool)
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


def _file_length(f: Any) -> int | None:
    """Bytes left in a file object, when knowable without reading it."""
    try:
        if isinstance(f, io.BytesIO):
            return f.getbuffer().nbytes - f.tell()
        size = os.fstat(f.fileno()).st_size
        return int(size - f.tell())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


async def _chunks(source: Any, loop: asyncio.AbstractEventLoop | None) -> AsyncIterator[bytes]:
    """Bytes chunks from an async iterable, a file object or a sync iterable."""
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield _as_bytes(chunk)
    elif hasattr(source, "read"):
        assert loop is not None
        in_memory = isinstance(source, io.BytesIO)
        while True:
            if in_memory:
                chunk = source.read(UPLOAD_CHUNK)
            else:
                chunk = await loop.run_in_executor(None, source.read, UPLOAD_CHUNK)
            if not chunk:
                return
            yield _as_bytes(chunk)
    else:
        for chunk in source:
            yield _as_bytes(chunk)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode()
    raise TypeError(f"body chunks must be bytes, got {type(chunk).__name__}")
