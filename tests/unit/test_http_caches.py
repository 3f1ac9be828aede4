"""The client's per-URL caches stay bounded: a REST soak makes every URL new (/items/{id}), and
an unbounded cache made the soak blame the test process for a leak of its own tool."""

from __future__ import annotations

import asyncio

from pytest_stressguard.core import http
from pytest_stressguard.core.testserver import start_test_server


def test_unique_urls_keep_the_caches_bounded() -> None:
    async def main(url: str) -> tuple[int, int]:
        async with http.HttpClient(url) as client:
            for i in range(3 * http._SIMPLE_CACHE_MAX):
                await client.get(f"/items/{i}", name="GET /items/{id}")
            return len(client._targets), len(client._simple)

    with start_test_server(concurrency=4) as server:
        targets, simple = asyncio.run(main(server.url))
    assert 0 < targets <= http._SIMPLE_CACHE_MAX
    assert 0 < simple <= http._SIMPLE_CACHE_MAX
