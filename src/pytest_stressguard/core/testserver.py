"""A tiny loopback HTTP/1.1 server with a known capacity, for stress tests and examples.

Run it in a subprocess (it has its own event loop and its own CPU)::

    python -m pytest_stressguard.core.testserver --port 0 --concurrency 4 --service-ms 20

It prints its port on the first stdout line, then serves until stopped, until its parent process
dies, or after ``--lifetime`` seconds (default 600), whichever comes first.

Behaviour (any path, any method):

* At most ``--concurrency`` requests are served at a time; each takes ``--service-ms`` (a sleep,
  so the capacity is ``concurrency / service_s`` requests per second and the server's own CPU
  barely matters). Further requests queue, so latency grows with load exactly as in a real
  service at saturation.
* ``?ms=N`` overrides the service time of one request.
* ``/status/NNN`` answers with that status (after the service time).
* ``/die-after?n=N`` arms the crash switch: the process exits abruptly (``os._exit``) right after
  answering N more requests. ``--die-after N`` arms it from the start. Used for "the server dies
  mid-ramp" tests: later calls see resets, then refused connections.
* ``/stats`` answers at once (not queued) with JSON ``{"requests", "in_flight", "max_in_flight",
  "concurrency", "service_ms"}``.

Request bodies (``Content-Length`` or chunked) are read and discarded; the response says how many
bytes were received (``{"received": N}``) for ``POST``/``PUT``/``PATCH``, ``ok`` otherwise.
:func:`start_test_server` starts it and returns a :class:`ServerHandle` that always kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["ServerHandle", "TestServer", "main", "start_test_server"]

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_MAX_HEAD = 64 * 1024


class TestServer:
    """The server itself (runs in the current event loop; normally in its own process)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, concurrency: int = 1, service_ms: float = 0.0, die_after: int | None = None
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if service_ms < 0:
            raise ValueError("service_ms must be >= 0")
        self.concurrency = concurrency
        self.service_ms = service_ms
        self.die_after = die_after
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._sem: asyncio.Semaphore | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                method, target, keep_alive, received = req
                status, body = await self._route(method, target, received)
                reason = _REASONS.get(status, "Unknown")
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: text/plain\r\n"
                    f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
                if target.split("?", 1)[0] != "/stats":
                    self.requests += 1
                    if self.die_after is not None:
                        self.die_after -= 1
                        if self.die_after <= 0:
                            os._exit(3)  # a crash: no goodbye to anyone
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _route(self, method: str, target: str, received: int) -> tuple[int, bytes]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        path = parts.path
        if path == "/stats":
            return 200, json.dumps({
                "requests": self.requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "concurrency": self.concurrency,
                "service_ms": self.service_ms,
            }).encode()
        if path == "/die-after":
            n = int(query.get("n", ["1"])[0])
            self.die_after = n + 1  # this answer does not count
            return 200, b"armed"
        ms = float(query["ms"][0]) if "ms" in query else self.service_ms
        assert self._sem is not None
        async with self._sem:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if ms > 0:
                    await asyncio.sleep(ms / 1000.0)
            finally:
                self.in_flight -= 1
        status = 200
        if path.startswith("/status/"):
            try:
                status = int(path[len("/status/"):])
            except ValueError:
                status = 400
            if not 200 <= status <= 599:
                status = 400
        if method in ("POST", "PUT", "PATCH"):
            return status, json.dumps({"received": received}).encode()
        return status, b"ok"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bool, int] | None:
    """(method, target, keep_alive, body bytes received) or None at a clean end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise ValueError("truncated request") from None
        return None
    except asyncio.LimitOverrunError:
        raise ValueError("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    keep_alive = version == "HTTP/1.1"
    conn = headers.get("connection", "").lower()
    if "close" in conn:
        keep_alive = False
    elif "keep-alive" in conn:
        keep_alive = True
    received = 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            received += await _discard(reader, size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        received = await _discard(reader, int(headers["content-length"]))
    return method, target, keep_alive, received


async def _discard(reader: asyncio.StreamReader, n: int) -> int:
    left = n
    while left:
        chunk = await reader.read(min(left, 256 * 1024))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(chunk)
    return n


async def serve(
    host: str, port: int, server: TestServer, lifetime: float
) -> None:
    """Serve until ``lifetime`` seconds passed, SIGTERM/SIGINT, or the parent process died."""
    srv = await asyncio.start_server(server.handle, host, port, limit=_MAX_HEAD)
    actual = srv.sockets[0].getsockname()[1]
    print(actual, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    deadline = time.monotonic() + lifetime
    async with srv:
        while not stop.is_set() and time.monotonic() < deadline:
            if os.getppid() != parent:
                break  # orphaned: the test process is gone, so are we
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pytest_stressguard.core.testserver",
        description="Loopback HTTP server with a fixed concurrency and service time.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--service-ms", type=float, default=0.0)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--lifetime", type=float, default=600.0)
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("the test server listens on loopback only")
    try:
        server = TestServer(a.concurrency, a.service_ms, a.die_after)
    except ValueError as e:
        p.error(str(e))
    asyncio.run(serve(a.host, a.port, server, a.lifetime))
    return 0


# --------------------------------------------------------------------------- the handle


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    if proc.stdout is not None:
        proc.stdout.close()


class ServerHandle:
    """A running test server: ``url``, ``pid``, ``stop()``. Also a context manager; the process
    is killed at garbage collection or interpreter exit if ``stop()`` was never called."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        hh = f"[{host}]" if ":" in host else host
        self.url = f"http://{hh}:{port}"
        self._finalizer = weakref.finalize(self, _kill, proc)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to end (e.g. after ``die_after``)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 2 s). Idempotent."""
        self._finalizer()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerHandle {self.url} pid={self.pid} alive={self.alive}>"


def start_test_server(
    *,
    concurrency: int = 1,
    service_ms: float = 0.0,
    die_after: int | None = None,
    host: str = "127.0.0.1",
    lifetime: float = 600.0,
    startup_timeout: float = 15.0,
) -> ServerHandle:
    """Start :class:`TestServer` in a subprocess and return its handle once it listens."""
    TestServer(concurrency, service_ms, die_after)  # validate here, not in the child
    cmd = [
        sys.executable, "-m", "pytest_stressguard.core.testserver", "--host", host,
        "--port", "0", "--concurrency", str(concurrency), "--service-ms", str(service_ms),
        "--lifetime", str(lifetime),
    ]
    if die_after is not None:
        cmd += ["--die-after", str(die_after)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_timeout
        line = b""
        fd = proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"test server did not start within {startup_timeout}s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                b = os.read(fd, 64)
                if not b:
                    raise RuntimeError(f"test server exited at start (code {proc.wait(5)})")
                line += b
        port = int(line.strip())
    except BaseException:
        _kill(proc)
        raise
    return ServerHandle(proc, host, port)


if __name__ == "__main__":
    sys.exit(main())
