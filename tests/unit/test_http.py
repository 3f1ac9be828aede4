"""core.http against small asyncio servers on loopback, started in each test.

Every server here is a plain ``asyncio.start_server`` on 127.0.0.1 port 0 in the test's own loop,
with a handler written for the case (well-behaved, stalling, resetting, lying...), so each error
category is produced on purpose and each test is fast and deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import shutil
import socket
import ssl
import struct
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from pytest_stressguard.core.http import (
    ERROR_KINDS,
    HttpClient,
    HttpProtocolError,
    HttpRefused,
    HttpReset,
    HttpStatusError,
    HttpTimeout,
)
from pytest_stressguard.core.stats import StatsRecorder, current_recorder

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """A loopback server running ``handler`` per connection; everything closed at exit."""
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []
    srv_box: list[Server] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv_box[0].connections += 1
        writers.append(w)
        inner = asyncio.ensure_future(handler(srv_box[0], r, w))
        tasks.add(inner)
        try:
            await inner
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv_box.append(Server(f"http://127.0.0.1:{port}"))
    try:
        yield srv_box[0]
    finally:
        srv.close()
        for w in writers:
            w.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


async def read_request(
    srv: Server, r: asyncio.StreamReader
) -> tuple[str, str, dict[str, str], bytes] | None:
    """Read one request (Content-Length or chunked body); None at EOF."""
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await r.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await r.readuntil(b"\r\n")
                break
            parts.append(await r.readexactly(size))
            await r.readexactly(2)
        body = b"".join(parts)
    elif "content-length" in headers:
        body = await r.readexactly(int(headers["content-length"]))
    req = (method, target, headers, body)
    srv.requests.append(req)
    return req


def response(status: int = 200, body: bytes = b"ok", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
    )


async def echo_handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep-alive server: answers JSON describing the request; /status/N answers N."""
    while (req := await read_request(srv, r)) is not None:
        method, target, headers, body = req
        status = int(target.split("/status/")[1]) if "/status/" in target else 200
        payload = json.dumps(
            {"method": method, "target": target, "headers": headers, "body": body.decode()}
        ).encode()
        w.write(response(status, payload, "Content-Type: application/json\r\nX-Test: yes\r\n"))
        await w.drain()


@pytest.fixture
def recorder() -> Iterator[StatsRecorder]:
    rec = StatsRecorder()
    token = current_recorder.set(rec)
    yield rec
    current_recorder.reset(token)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- basics


async def test_status_headers_body_and_request_line() -> None:
    async with serve(echo_handler) as srv, HttpClient(srv.url, headers={"X-Client": "c"}) as c:
        r = await c.get("/items", params={"q": "a b", "n": 2}, headers={"X-Req": "r"})
        assert r.status == 200
        assert r.headers["x-test"] == "yes" and r.headers["X-TEST"] == "yes"
        assert r.headers.get_all("x-test") == ["yes"]
        data = r.json()
        assert data["method"] == "GET"
        assert data["target"] == "/items?q=a+b&n=2"
        assert data["headers"]["host"] == srv.url.removeprefix("http://")
        assert data["headers"]["x-client"] == "c" and data["headers"]["x-req"] == "r"
        assert "content-length" not in data["headers"]
        assert r.elapsed_s > 0
        assert r.ok and r.text.startswith("{")


async def test_json_and_data_bodies() -> None:
    async with serve(echo_handler) as srv, HttpClient(srv.url) as c:
        r = await c.post("/orders", json={"item": 1, "qty": [1, 2]})
        d = r.json()
        assert json.loads(d["body"]) == {"item": 1, "qty": [1, 2]}
        assert d["headers"]["content-type"] == "application/json"
        r = await c.put("/x", data=b"raw-bytes")
        assert r.json()["body"] == "raw-bytes"
        r = await c.patch("/x", data={"a": "1", "b": "x y"})
        assert r.json()["body"] == "a=1&b=x+y"
        r = await c.delete("/x")
        assert r.json()["method"] == "DELETE"
        r = await c.post("/empty")
        assert r.json()["headers"]["content-length"] == "0"


async def test_chunked_response_split_across_writes() -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(srv, r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(b"lo\r\n6;ext=1\r\n world\r\n")
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(b"0\r\nX-Trailer: t\r\n\r\n")
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        for _ in range(3):
            r = await c.get("/")
            assert r.body == b"hello world"
        assert c.connections_opened == 1  # chunked framing keeps the connection reusable


async def test_head_and_body_split_in_pieces_and_interim_response() -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(srv, r) is not None:
            raw = b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"0123456789" * 100)
            for i in range(0, len(raw), 7):  # 7-byte pieces: every state sees partial input
                w.write(raw[i : i + 7])
                await w.drain()
                if i % 140 == 0:
                    await asyncio.sleep(0)

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        r = await c.request("get", "/")  # method case does not matter
        assert r.status == 200 and r.body == b"0123456789" * 100
        assert (await c.get("/")).body == b"0123456789" * 100
        assert c.connections_opened == 1


async def test_eof_delimited_body_and_connection_close() -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        req = await read_request(srv, r)
        assert req is not None
        if req[1] == "/eof":
            w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        else:
            w.write(response(200, b"bye", "Connection: close\r\n"))
        await w.drain()
        w.close()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        assert (await c.get("/eof")).body == b"until the end"
        assert (await c.get("/close")).body == b"bye"
        assert (await c.get("/close")).body == b"bye"
        assert c.connections_opened == 3


async def test_head_has_no_body_and_large_download() -> None:
    big = bytes(range(256)) * 20_000  # 5 MB

    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (req := await read_request(srv, r)) is not None:
            if req[0] == "HEAD":
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n")
            else:
                w.write(response(200, big))
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        r = await c.head("/")
        assert r.body == b"" and r.headers["content-length"] == "5000000"
        r = await c.get("/")
        assert r.body == big
        assert c.connections_opened == 1


async def test_concurrent_large_bodies_share_one_read_buffer() -> None:
    """The pool's connections read into one buffer: each read must be parsed before the next."""

    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (req := await read_request(srv, r)) is not None:
            n = int(req[1].rsplit("/", 1)[1])
            raw = response(200, bytes([n]) * (300_000 + n))
            for i in range(0, len(raw), 70_000):  # interleaved with the other connections
                w.write(raw[i : i + 70_000])
                await w.drain()
                await asyncio.sleep(0)

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        rs = await asyncio.gather(*(c.get(f"/big/{n}") for n in range(8)))
        assert [r.body == bytes([n]) * (300_000 + n) for n, r in enumerate(rs)] == [True] * 8
        assert c.connections_opened == 8


async def test_keep_alive_reuse() -> None:
    async with serve(echo_handler) as srv, HttpClient(srv.url) as c:
        for i in range(20):
            await c.get(f"/n/{i}")
        await asyncio.gather(*(c.get("/par") for _ in range(5)))
        assert srv.connections == c.connections_opened
        assert c.connections_opened <= 5  # 20 sequential calls on one, then at most 5 at once
        assert len(srv.requests) == 25


async def test_max_connections_queue_and_pool_timeout() -> None:
    release = asyncio.Event()

    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(srv, r) is not None:
            await release.wait()
            w.write(response())
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url, max_connections=1) as c:
        first = asyncio.create_task(c.get("/a"))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(HttpTimeout, match="no free connection"):
            await c.get("/b", timeout=0.2)
        assert time.perf_counter() - t0 < 1.0
        second = asyncio.create_task(c.get("/c"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status == 200 and (await second).status == 200
        assert c.connections_opened == 1


# --------------------------------------------------------------------------- stale / errors


async def test_stale_pooled_connection_is_retried_once_for_idempotent() -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if srv.connections == 1:
            if await read_request(srv, r) is None:
                return
            w.write(response(200, b"one"))
            await w.drain()
            await read_request(srv, r)  # the reuse arrives ... and the server hangs up
            return
        while await read_request(srv, r) is not None:
            w.write(response(200, b"again"))
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        assert (await c.get("/")).body == b"one"
        assert (await c.get("/")).body == b"again"  # retried on a fresh connection
        assert c.connections_opened == 2


async def test_server_closing_idle_connection_is_not_an_error() -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await read_request(srv, r) is not None:
            w.write(response())  # keep-alive by default ... but the server's idle timeout is 0
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        for _ in range(3):
            assert (await c.post("/x", data=b"1")).status == 200
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
            assert c.open_connections == 0
        assert c.connections_opened == 3


async def test_stale_connection_not_retried_for_post(recorder: StatsRecorder) -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await read_request(srv, r) is None:
            return
        w.write(response(200, b"one"))
        await w.drain()
        await read_request(srv, r)

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        await c.post("/orders", json={})
        with pytest.raises(HttpReset) as ei:
            await c.post("/orders", json={})
        assert ei.value.kind == "reset"
        assert len(srv.requests) == 2  # sent once, not replayed
    assert recorder.snapshot()["POST /orders"].errors_by_kind == {"reset": 1}


async def test_refused(recorder: StatsRecorder) -> None:
    port = free_port()
    async with HttpClient(f"http://127.0.0.1:{port}") as c:
        t0 = time.perf_counter()
        with pytest.raises(HttpRefused) as ei:
            await c.get("/x", name="closed port")
        assert time.perf_counter() - t0 < 2.0
    assert ei.value.kind == "refused"
    assert str(ei.value).startswith("closed port: connection refused")
    st = recorder.snapshot()["closed port"]
    assert (st.count, st.errors, st.errors_by_kind) == (1, 1, {"refused": 1})


async def test_reset_when_server_closes_mid_response(recorder: StatsRecorder) -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        req = await read_request(srv, r)
        if req is None:
            return
        if req[1] == "/rst":  # a real RST: SO_LINGER 0 then close
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await w.drain()
        await asyncio.sleep(0.02)
        w.transport.abort() if req[1] == "/rst" else w.close()

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        with pytest.raises(HttpReset, match="mid-response"):
            await c.get("/fin")
        with pytest.raises(HttpReset):
            await c.get("/rst")
    st = recorder.snapshot()
    assert st["GET /fin"].errors_by_kind == {"reset": 1}
    assert st["GET /rst"].errors_by_kind == {"reset": 1}


async def test_timeout_when_server_stalls(recorder: StatsRecorder) -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (req := await read_request(srv, r)) is not None:
            if req[1] == "/stall":
                await asyncio.sleep(5)
            w.write(response())
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url, timeout=30) as c:
        await c.get("/fast")  # the connection's timer is armed for 30 s now
        t0 = time.perf_counter()
        with pytest.raises(HttpTimeout) as ei:
            await c.get("/stall", timeout=0.2)  # a shorter deadline re-arms it
        took = time.perf_counter() - t0
        assert 0.19 <= took < 1.0
        assert isinstance(ei.value, TimeoutError)
        assert (await c.get("/fast")).status == 200  # the stalled connection was dropped
    assert recorder.snapshot()["GET /stall"].errors_by_kind == {"timeout": 1}


async def test_http_status_errors_and_accept(recorder: StatsRecorder) -> None:
    async with serve(echo_handler) as srv, HttpClient(srv.url) as c:
        with pytest.raises(HttpStatusError) as e4:
            await c.get("/status/404", name="missing")
        assert e4.value.kind == "http_4xx" and e4.value.response.status == 404
        assert str(e4.value) == "missing: 404 X"
        with pytest.raises(HttpStatusError) as e5:
            await c.get("/status/503", name="down")
        assert e5.value.kind == "http_5xx"
        r = await c.get("/status/404", name="accepted", accept={404})
        assert r.status == 404
        r = await c.get("/status/500", name="noraise", raise_for_status=False)
        assert r.status == 500
        with pytest.raises(HttpStatusError):
            r.raise_for_status()
    async with serve(echo_handler) as srv, HttpClient(srv.url, accept_status={409}) as c:
        assert (await c.get("/status/409", name="conflict")).status == 409
    st = recorder.snapshot()
    assert st["missing"].errors_by_kind == {"http_4xx": 1}
    assert st["down"].errors_by_kind == {"http_5xx": 1}
    assert st["accepted"].errors == 0
    assert st["noraise"].errors_by_kind == {"http_5xx": 1}  # returned, still counted
    assert st["conflict"].errors == 0


async def test_protocol_error(recorder: StatsRecorder) -> None:
    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(srv, r)
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.5)

    async with serve(handler) as srv, HttpClient(srv.url) as c:
        with pytest.raises(HttpProtocolError, match="bad status line"):
            await c.get("/")
    assert recorder.snapshot()["GET /"].errors_by_kind == {"protocol": 1}


async def test_cancelled_request_frees_its_connection() -> None:
    gate = asyncio.Event()

    async def handler(srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (req := await read_request(srv, r)) is not None:
            if req[1] == "/slow":
                await gate.wait()
            w.write(response())
            await w.drain()

    async with serve(handler) as srv, HttpClient(srv.url, max_connections=1) as c:
        t = asyncio.create_task(c.get("/slow"))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert (await c.get("/ok", timeout=1.0)).status == 200
        assert c.open_connections == 1
        gate.set()


# --------------------------------------------------------------------------- stats


async def test_per_endpoint_stats_by_name(recorder: StatsRecorder) -> None:
    async with serve(echo_handler) as srv, HttpClient(srv.url) as c:
        for i in range(5):
            await c.get(f"/items/{i}", name="GET /items/{id}")
        for _ in range(3):
            await c.get("/items?page=2")
        await c.post("/orders", json={})
        with pytest.raises(HttpStatusError):
            await c.get("/status/500", name="boom")
    st = recorder.snapshot()
    assert set(st) == {"GET /items/{id}", "GET /items", "POST /orders", "boom"}
    assert st["GET /items/{id}"].count == 5 and st["GET /items/{id}"].errors == 0
    assert st["GET /items"].count == 3  # default name: method and path, query dropped
    assert st["boom"].errors == 1
    m = st["GET /items/{id}"].metrics()
    assert m["p50"] is not None and 0 < m["p50"] < 1.0
    assert set(ERROR_KINDS) >= {"refused", "reset", "timeout", "http_4xx", "http_5xx", "protocol"}


async def test_no_recorder_is_fine() -> None:
    assert current_recorder.get() is None
    async with serve(echo_handler) as srv, HttpClient(srv.url) as c:
        assert (await c.get("/")).status == 200


# --------------------------------------------------------------------------- uploads


async def count_body_handler(
    srv: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Reads the body without keeping it and answers its length and framing."""
    while True:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        h = head.decode().lower()
        n = 0
        if "transfer-encoding: chunked" in h:
            framing = "chunked"
            while True:
                size = int((await r.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await r.readuntil(b"\r\n")
                    break
                left = size
                while left:
                    left -= len(await r.read(min(left, 1 << 16)))
                n += size
                await r.readexactly(2)
        else:
            framing = "length"
            cl = int(h.split("content-length:")[1].split("\r\n")[0]) if "content-length:" in h else 0
            left = cl
            while left:
                chunk = await r.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
            n = cl
        w.write(response(200, json.dumps({"n": n, "framing": framing}).encode()))
        await w.drain()


async def test_20mb_streamed_upload_in_constant_memory() -> None:
    size, chunk = 20 * 1024 * 1024, 64 * 1024
    block = b"x" * chunk

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(size // chunk):
            yield block

    async with serve(count_body_handler) as srv, HttpClient(srv.url) as c:
        await c.get("/warm", raise_for_status=False)  # connection and caches warm
        tracemalloc.start()
        try:
            r = await c.post("/upload", data=gen(), timeout=20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.json() == {"n": size, "framing": "chunked"}
        assert peak < 2 * 1024 * 1024, f"upload peak {peak} bytes: the body was buffered"


async def test_streamed_upload_with_known_length_and_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "up.bin"
    path.write_bytes(b"y" * (3 * 1024 * 1024 + 7))

    def sync_gen() -> Iterator[bytes]:
        for _ in range(10):
            yield b"z" * 1000

    async with serve(count_body_handler) as srv, HttpClient(srv.url) as c:
        with path.open("rb") as f:
            r = await c.put("/file", data=f)
        assert r.json() == {"n": 3 * 1024 * 1024 + 7, "framing": "length"}
        r = await c.post("/gen", data=sync_gen(), headers={"Content-Length": "10000"})
        assert r.json() == {"n": 10000, "framing": "length"}
        with pytest.raises(ValueError, match="Content-Length"):
            await c.post("/gen", data=sync_gen(), headers={"Content-Length": "10001"})


async def test_usage_errors() -> None:
    with pytest.raises(ValueError):
        HttpClient("ftp://x")
    async with HttpClient() as c:
        with pytest.raises(ValueError, match="base_url"):
            await c.get("/relative")
        with pytest.raises(ValueError, match="credentials"):
            await c.get("http://u:p@127.0.0.1:1/")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_with_a_self_signed_certificate(tmp_path: pathlib.Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv_state = Server("")
        try:
            while await read_request(srv_state, r) is not None:
                w.write(response(200, b"secure"))
                await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with HttpClient(f"https://127.0.0.1:{port}", verify=trusted) as c:
            assert (await c.get("/")).body == b"secure"
            assert (await c.get("/")).body == b"secure"
            assert c.connections_opened == 1
        async with HttpClient(f"https://127.0.0.1:{port}") as c:  # not trusted: refused
            with pytest.raises(HttpProtocolError, match="TLS"):
                await c.get("/")
    finally:
        srv.close()
        await srv.wait_closed()
