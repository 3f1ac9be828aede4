"""One HTTP/1.1 connection: an ``asyncio.BufferedProtocol`` whose responses llhttp parses.

llhttp (through ``httptools``, the parser uvicorn uses) does the framing: status line, headers,
``Content-Length``, chunked bodies with extensions and trailers, interim 1xx responses, and the
strict checks (``Content-Length`` with ``Transfer-Encoding``, bare LF, bad chunk sizes...). This
class keeps what llhttp cannot know: the request (a HEAD's response has no body), the deadline,
the end of an EOF-delimited body, the 64 KiB bound on a response head, and turning every parse
error into one clear protocol failure.

Reads land in a buffer owned by the pool and reused for every read (``BufferedProtocol``): the
stock transport allocates a fresh 256 KiB ``bytes`` per read, which glibc served from the heap
or, at some process layouts (the size of the environment was enough), with one ``mmap`` and
one ``munmap`` per read: throughput flipped between two speeds with it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .errors import _Failure

if TYPE_CHECKING:
    from .pool import _HostPool

__all__ = ["MAX_HEAD_BYTES", "READ_BUFFER", "Result", "now"]

MAX_HEAD_BYTES = 64 * 1024
READ_BUFFER = 256 * 1024  # as much as the stock transport reads at once

#: The clock of every deadline (the pool's waits, the connection's timer, the client's calls).
now = time.perf_counter

#: What a completed response hands to the waiting call: status, reason, headers, body.
Result = tuple[int, str, list[tuple[str, str]], bytes]


class _BadResponse(Exception):
    """Raised from a parser callback; llhttp stops and ``feed_data`` re-raises with it."""


class _Conn(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: one response at a time (no pipelining)."""

    __slots__ = (
        "body", "closed", "deadline", "discarded", "drain_waiter", "framed", "head_bytes",
        "header_bytes", "headers", "headers_done", "is_head", "keep_alive", "loop", "parser",
        "paused", "pool", "reason", "received", "requests", "status", "timer", "timer_at",
        "transport", "view", "waiter",
    )

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.view = pool.read_view
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.closed = False
        self.discarded = False
        self.waiter: asyncio.Future[Result] | None = None
        self.is_head = False
        self.received = False
        self.head_bytes = 0  # bytes read while the head is incomplete
        self.header_bytes = 0  # sizes of the header fields parsed
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.framed = False
        self.body: list[bytes] = []
        self.keep_alive = True
        self.requests = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiter is not None:
            if exc is None and self.headers_done and not self.framed:
                self.keep_alive = False
                self._complete()  # the body ran to the end of the connection, as announced
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

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view  # shared by the pool's connections: each read is parsed before the next

    def buffer_updated(self, nbytes: int) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
            return
        self.received = True
        if not self.headers_done:
            self.head_bytes += nbytes
        try:
            self.parser.feed_data(self.view[:nbytes])
        except (HttpParserError, HttpParserUpgrade) as e:
            self._parse_error(e, nbytes)
            return
        if self.head_bytes > MAX_HEAD_BYTES and not self.headers_done and self.waiter is not None:
            self._protocol_error("response head larger than 64 KiB")

    # -- llhttp callbacks (only those defined here are registered by httptools)

    def on_message_begin(self) -> None:
        if self.waiter is None:
            self.keep_alive = False  # a second response in the same read: nobody asked for it
        self.reason = b""
        self.headers = []
        self.header_bytes = 0
        self.headers_done = False
        self.framed = False
        self.body = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason  # called once per read the reason phrase spans

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: not part of Response.headers
        # The bound of buffer_updated misses a head that completed within one read.
        self.header_bytes += len(name) + len(value) + 4  # + ": " and CRLF
        if self.header_bytes > MAX_HEAD_BYTES:
            raise _BadResponse("response head larger than 64 KiB")
        n = len(name)
        if n == 14 or n == 17:
            lname = name.lower()
            if lname == b"content-length":
                self.framed = True
            elif lname == b"transfer-encoding":
                if not value.rstrip().lower().endswith(b"chunked"):
                    raise _BadResponse(f"unsupported Transfer-Encoding {value[:20]!r}")
                self.framed = True
        # llhttp drops the whitespace before a value, not the whitespace after it.
        self.headers.append((name.decode("latin-1"), value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _BadResponse(f"bad status line: HTTP/{version} is not HTTP/1.x")
        status = parser.get_status_code()
        self.status = status
        if status < 200:
            if status == 101:
                raise _BadResponse("protocol upgrade (101) is not supported")
            if status < 100:
                raise _BadResponse(f"bad status line: status {status}")
            return  # interim (100 Continue, 103 Early Hints): the real response follows
        self.headers_done = True
        self.keep_alive = parser.should_keep_alive()
        if self.is_head:
            # llhttp does not know the request: it would wait for the body the headers
            # announce. The response is complete; a fresh parser takes the next one.
            self._complete()
            self.parser = HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            self.keep_alive = False  # bytes after a complete HEAD response
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:  # not the end of an interim response
            self._complete()  # no-op after a HEAD response, complete at its head

    # -- request lifecycle (called by the client)

    def begin(self, deadline: float, is_head: bool) -> asyncio.Future[Result]:
        self.requests += 1
        self.is_head = is_head
        self.received = False
        self.keep_alive = True
        self.head_bytes = 0
        self.headers_done = False
        self.status = 0
        fut: asyncio.Future[Result] = self.loop.create_future()
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
        self.timer = self.loop.call_at(self.loop.time() + (deadline - now()), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.waiter is None:
            return
        if now() >= self.deadline - 0.001:
            self._fail("timeout", "no response within the timeout")
            self.abort()
        else:
            self._arm(self.deadline)

    # -- outcomes

    def _complete(self) -> None:
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            body = self.body
            w.set_result((
                self.status, self.reason.decode("latin-1"), self.headers,
                b"".join(body) if body else b"",
            ))

    def _fail(self, kind: str, detail: str, stale: bool = False) -> None:
        self.keep_alive = False
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_exception(_Failure(kind, detail, stale))
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_exception(_Failure(kind, detail))

    def _protocol_error(self, detail: str) -> None:
        self._fail("protocol", detail)
        if self.transport is not None:
            self.transport.abort()

    def _parse_error(self, e: Exception, nbytes: int) -> None:
        if self.waiter is None:
            # Garbage after a complete response: that response stands, the connection goes.
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
            return
        cause = e.__context__
        if isinstance(cause, _BadResponse):
            detail = str(cause)
        elif isinstance(e, HttpParserUpgrade):
            detail = "protocol upgrade is not supported"
        elif self.headers_done:
            detail = f"bad body framing: {e}"
        else:
            detail = _head_error(e, bytes(self.view[:nbytes]) if self.head_bytes == nbytes else b"")
        self._protocol_error(detail)


def _head_error(e: Exception, head: bytes) -> str:
    """Name the part of the head llhttp rejected; ``head`` is the response so far, if known."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if head:
        try:  # the status line alone, to llhttp: does it reject that already?
            HttpResponseParser(object()).feed_data(line + b"\r\n")
        except (HttpParserError, HttpParserUpgrade):
            return f"bad status line {line[:40]!r}: {e}"
    return f"bad response head: {e}"
