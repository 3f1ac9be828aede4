"""core.http's response parsing, fuzzed through a loopback socket.

A server in the test's own event loop answers the first request of each case with bytes the
case chose, written in pieces (every byte alone, or at random split points), then keeps the
connection, closes it (FIN) or resets it (RST). Responses are generated from a model (status,
reason, headers, body; framing by Content-Length, chunked with extensions and trailers, or the
end of the connection; 1xx interim responses before the final one), so the expected
:class:`Response` is known exactly. Every case must end with that response, a clear
:class:`HttpProtocolError`, or :class:`HttpReset` when the peer closed early: never a hang
(each call has a 2 s timeout) and never another exception. A second request then checks that
the connection (or the pool) was left in a usable state.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_stressguard.core.http import (
    HttpClient,
    HttpError,
    HttpProtocolError,
    HttpReset,
    Response,
)

pytestmark = pytest.mark.timeout(120)

# The same examples every run (derandomize), nothing stored between runs (no database).
FUZZ = settings(
    deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
End = Literal["keep", "fin", "rst"]
Framing = Literal["length", "chunked", "eof"]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CASE_TIMEOUT = 2.0


# --------------------------------------------------------------------------- the exchange


async def _exchange(
    pieces: Sequence[bytes], end: End, method: str
) -> tuple[Response | HttpError, Response, int]:
    """Serve ``pieces`` to the first request; every later request gets ``OK``."""
    first = [True]
    tasks: set[asyncio.Task[None]] = set()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            if not first[0]:
                w.write(OK)
                await w.drain()
                continue
            first[0] = False
            for piece in pieces:
                w.write(piece)
                await w.drain()
                for _ in range(2):  # let the client read this piece on its own
                    await asyncio.sleep(0)
            if end == "fin":
                return
            if end == "rst":
                sock = w.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
                return

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(r, w)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with HttpClient(url, timeout=CASE_TIMEOUT, raise_for_status=False) as c:
            try:
                outcome: Response | HttpError = await c.request(method, "/case")
            except HttpError as e:
                outcome = e
            follow_up = await c.get("/next")
            opened = c.connections_opened
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outcome, follow_up, opened


def exchange(
    pieces: Sequence[bytes], end: End = "keep", method: str = "GET", *, reused: bool | None = None
) -> Response | HttpError:
    """Run one case; the follow-up request must succeed, on the same connection if ``reused``."""
    outcome, follow_up, opened = asyncio.run(asyncio.wait_for(_exchange(pieces, end, method), 10))
    assert (follow_up.status, follow_up.body) == (200, b"ok")
    if reused is not None:
        assert opened == (1 if reused else 2), f"{opened} connections opened"
    return outcome


def split(raw: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(raw)}), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(points)]


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str, str, str]]  # name, leading OWS, value, trailing OWS
    body: bytes
    framing: Framing
    chunks: list[tuple[int, str]] = field(default_factory=list)  # size, extension
    last_ext: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[bytes] = field(default_factory=list)
    method: str = "GET"

    def head(self) -> bytes:
        lines = [f"HTTP/{self.version} {self.status}{' ' + self.reason if self.reason else ''}"]
        lines += [f"{n}:{a}{v}{b}" for n, a, v, b in self.headers]
        if self.framing == "length":
            lines.append(f"Content-Length: {len(self.body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n"

    def payload(self) -> bytes:
        if self.method == "HEAD":
            return b""
        if self.framing != "chunked":
            return self.body
        out, pos = [], 0
        for size, ext in self.chunks:
            out.append(b"%x%s\r\n%s\r\n" % (size, ext.encode(), self.body[pos : pos + size]))
            pos += size
        trailers = "".join(f"{n}: {v}\r\n" for n, v in self.trailers)
        out.append(f"0{self.last_ext}\r\n{trailers}\r\n".encode())
        return b"".join(out)

    def raw(self) -> tuple[bytes, int]:
        """The bytes, and where the final response's body starts."""
        head = b"".join(self.interim) + self.head()
        return head + self.payload(), len(head)

    def end(self) -> End:
        return "fin" if self.framing == "eof" else "keep"

    def keep_alive(self) -> bool:
        return self.version == "1.1" and self.framing != "eof"

    def expected_headers(self) -> list[tuple[str, str]]:
        h = [(n, v) for n, _, v, _ in self.headers]
        if self.framing == "length":
            h.append(("Content-Length", str(len(self.body))))
        elif self.framing == "chunked":
            h.append(("Transfer-Encoding", "chunked"))
        return h

    def check(self, r: Response | HttpError, body: bytes | None = None) -> None:
        assert isinstance(r, Response), f"{type(r).__name__}: {r}"
        expected_body = (b"" if self.method == "HEAD" else self.body) if body is None else body
        assert (r.status, r.reason, r.body) == (self.status, self.reason, expected_body)
        assert r.headers.raw == self.expected_headers()


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                max_size=10)
FRAMING_NAMES = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                 "proxy-connection"}
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 /;=,.\"", max_size=16).map(str.strip)
OWS = st.sampled_from(["", " ", "  ", "\t", " \t"])
EXTENSION = st.sampled_from(["", ";a", ";a=b", ';name="quoted value"', ";x=1;y=2"])
INTERIM = st.sampled_from([
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
])
STATUS = st.integers(200, 599).filter(lambda s: s not in (204, 304))  # those have no body


@st.composite
def models(draw: st.DrawFn) -> Model:
    framing: Framing = draw(st.sampled_from(get_args(Framing)))
    body = draw(st.binary(max_size=300))
    chunks: list[tuple[int, str]] = []
    if framing == "chunked":
        left = len(body)
        while left:
            size = draw(st.integers(1, left))
            chunks.append((size, draw(EXTENSION)))
            left -= size
    return Model(
        status=draw(STATUS),
        reason=draw(st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .-", max_size=20)
                    .map(str.strip)),
        version=draw(st.sampled_from(["1.1", "1.0"])),
        headers=draw(st.lists(
            st.tuples(TOKEN.filter(lambda n: n.lower() not in FRAMING_NAMES), OWS, VALUE, OWS),
            max_size=5,
        )),
        body=body,
        framing=framing,
        chunks=chunks,
        last_ext=draw(EXTENSION),
        trailers=draw(st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() not in FRAMING_NAMES),
                                         VALUE), max_size=2)) if framing == "chunked" else [],
        interim=draw(st.lists(INTERIM, max_size=2)),
        method=draw(st.sampled_from(["GET", "GET", "GET", "HEAD"])),
    )


CUTS = st.lists(st.integers(1, 800), max_size=8)  # split points; the responses are < 800 bytes


# --------------------------------------------------------------------------- valid responses


@settings(FUZZ, max_examples=100)
@given(model=models(), cuts=CUTS)
def test_valid_response_at_random_split_points(model: Model, cuts: list[int]) -> None:
    raw, _ = model.raw()
    model.check(exchange(split(raw, cuts), model.end(), model.method, reused=model.keep_alive()))


EXAMPLES = {
    "chunked, extensions, trailers, after 100 Continue": Model(
        200, "OK", "1.1", [("X-Kind", " ", "chunked", " \t")], b"hello chunked world",
        "chunked", chunks=[(5, ";a=b"), (8, ';q="x y"'), (6, "")], last_ext=";end",
        trailers=[("X-Sum", "abc"), ("X-More", "1")],
        interim=[b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n"],
    ),
    "content-length": Model(404, "Not Found", "1.1", [("Server", " ", "t", "")], b"x" * 40,
                            "length"),
    "eof-delimited, HTTP/1.0": Model(200, "", "1.0", [], b"until the end", "eof"),
    "HEAD with a length": Model(200, "OK", "1.1", [], b"x" * 100, "length", method="HEAD"),
    "HEAD with a zero length": Model(200, "OK", "1.1", [], b"", "length", method="HEAD"),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_byte_boundary(name: str) -> None:
    model = EXAMPLES[name]
    raw, _ = model.raw()
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    model.check(exchange(pieces, model.end(), model.method, reused=model.keep_alive()))


# --------------------------------------------------------------------------- truncated


@settings(FUZZ, max_examples=60)
@given(model=models(), data=st.data(), end=st.sampled_from(["fin", "rst"]))
def test_truncated_response(model: Model, data: st.DataObject, end: End) -> None:
    raw, body_at = model.raw()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    pieces = split(raw[:cut], data.draw(CUTS, label="cuts"))
    r = exchange(pieces, end, model.method)
    if end == "fin" and model.framing == "eof" and cut >= body_at:
        # The end of the connection is what ends such a body: a shorter one, but a response.
        model.check(r, raw[body_at:cut])
    else:
        assert isinstance(r, HttpReset), f"{type(r).__name__}: {r}"
        assert r.kind == "reset" and str(r).startswith(f"{model.method} /case: ")


# --------------------------------------------------------------------------- invalid


def _chunked(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


BAD = {
    # framing conflicts
    "content-length then chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "chunked then content-length": _chunked(b"3\r\nabc\r\n0\r\n\r\n").replace(
        b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n", 1),
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "negative content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc",
    "unsupported transfer-encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "chunked not last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    # chunks
    "chunk size not hex": _chunked(b"xyz\r\nabc\r\n0\r\n\r\n"),
    "chunk size overflow": _chunked(b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    "no CRLF after chunk data": _chunked(b"3\r\nabcX\r\n0\r\n\r\n"),
    "space after chunk size": _chunked(b"3 \r\nabc\r\n0\r\n\r\n"),
    # status lines
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "lower-case version": b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/0.9": b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "status below 100": b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    "status not a number": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "leading space": b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "binary garbage": bytes(range(256)),
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    # heads
    "space before colon": b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
    "obsolete line folding": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "header without colon": b"HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n",
    "head over 64 KiB": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
    "many headers over 64 KiB": b"HTTP/1.1 200 OK\r\n" + b"X-P: 0123456789\r\n" * 5000 + b"\r\n",
    "101 switching protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD))
@settings(FUZZ, max_examples=3)
@given(cuts=CUTS)
def test_invalid_response_is_a_protocol_error(name: str, cuts: list[int]) -> None:
    r = exchange(split(BAD[name], cuts))
    assert isinstance(r, HttpProtocolError), f"{type(r).__name__}: {r}"
    assert r.kind == "protocol" and str(r).startswith("GET /case: ") and len(str(r)) > 20


def test_garbage_status_line_names_the_line() -> None:
    r = exchange([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    assert isinstance(r, HttpProtocolError)
    assert str(r).startswith("GET /case: bad status line b'SSH-2.0-OpenSSH_9.2'")


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
     b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nX-Late: 1\r\n"],
    ids=["204 with bytes after", "304 announcing a length", "a second response nobody asked for"],
)
def test_bodyless_statuses_and_bytes_after_the_response(raw: bytes) -> None:
    r = exchange([raw])
    assert isinstance(r, Response), f"{type(r).__name__}: {r}"
    assert r.body == (b"a" if r.status == 200 else b"") and "x-late" not in r.headers


# --------------------------------------------------------------------------- mutated


@settings(FUZZ, max_examples=100)
@given(
    model=models(),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(["flip", "drop", "insert"]),
                             st.integers(0, 255)), min_size=1, max_size=3),
    cuts=CUTS,
    end=st.sampled_from(["fin", "rst"]),  # kept open, a longer Content-Length would just wait
)
def test_mutated_response_never_hangs(
    model: Model, edits: list[tuple[int, str, int]], cuts: list[int], end: End
) -> None:
    raw = bytearray(model.raw()[0])
    for pos, op, byte in edits:
        at = pos % (len(raw) + 1)
        if op == "insert":
            raw[at:at] = bytes([byte])
        elif at < len(raw):
            if op == "drop":
                del raw[at]
            else:
                raw[at] ^= byte or 1
    r = exchange(split(bytes(raw), cuts), end, model.method)
    # A mutation may well leave a valid response (a changed body byte): then any response.
    # What it must never do is hang (HttpTimeout) or fail with anything but these.
    assert isinstance(r, (Response, HttpProtocolError, HttpReset)), f"{type(r).__name__}: {r}"
