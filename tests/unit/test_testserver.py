"""core.testserver: a subprocess server with a known capacity, and a handle that always kills it."""

from __future__ import annotations

import asyncio
import time

import pytest

from pytest_stressguard.core.http import HttpClient, HttpError, HttpStatusError
from pytest_stressguard.core.testserver import ServerHandle, start_test_server

pytestmark = pytest.mark.timeout(30)


@pytest.mark.asyncio
async def test_concurrency_limit_queues_requests() -> None:
    with start_test_server(concurrency=2, service_ms=100) as srv:
        async with HttpClient(srv.url) as c:
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(c.get("/work") for _ in range(6)))
            took = time.perf_counter() - t0
            stats = (await c.get("/stats")).json()
            assert all(r.body == b"ok" for r in rs)
            # 6 requests, 2 at a time, 100 ms each: three waves, never more than 2 in service
            assert took >= 0.29
            assert took < 3.0
            assert stats["max_in_flight"] == 2
            assert stats["requests"] == 6
            fast = await c.get("/fast?ms=0")
            slow = await c.get("/work")  # 100 ms of service
            assert fast.elapsed_s < slow.elapsed_s / 2  # a ratio: no absolute bound to flake
            with pytest.raises(HttpStatusError) as ei:
                await c.get("/status/503?ms=0")
            assert ei.value.response.status == 503
            r = await c.post("/upload?ms=0", data=b"z" * 12345)
            assert r.json() == {"received": 12345}


@pytest.mark.asyncio
async def test_dies_after_n_requests() -> None:
    with start_test_server(die_after=3) as srv:
        async with HttpClient(srv.url, timeout=5) as c:
            for _ in range(3):
                await c.get("/")
            assert srv.wait(5.0) == 3
            with pytest.raises(HttpError) as ei:
                await c.get("/")
            assert ei.value.kind in ("refused", "reset")


@pytest.mark.asyncio
async def test_die_after_armed_at_runtime() -> None:
    with start_test_server() as srv:
        async with HttpClient(srv.url, timeout=5) as c:
            assert (await c.get("/die-after?n=2")).body == b"armed"
            await c.get("/one")
            assert srv.alive
            await c.get("/two")
            assert srv.wait(5.0) == 3
            assert not srv.alive


def test_stop_kills_and_is_idempotent() -> None:
    srv = start_test_server()
    assert isinstance(srv, ServerHandle) and srv.alive and srv.url.startswith("http://127.0.0.1:")
    srv.stop()
    assert not srv.alive
    srv.stop()


def test_bad_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        start_test_server(concurrency=0)
    with pytest.raises(ValueError, match="service_ms"):
        start_test_server(service_ms=-1)
