"""A generator that is itself the bottleneck is flagged: plain httpx at 200 users."""

from __future__ import annotations

import json

import pytest

CONFTEST = """
import httpx, pytest, pytest_asyncio
from pytest_stressguard.core.testserver import start_test_server

@pytest.fixture(scope="module")
def server():
    with start_test_server(concurrency=500, service_ms=0) as handle:
        yield handle

@pytest_asyncio.fixture
async def client():
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        yield c
"""

BODY = """
import pytest

@pytest.mark.asyncio
@pytest.mark.load(users=200, duration="4s", sla=["errors==0"])
async def test_httpx_at_200_users(server, client):
    r = await client.get(server.url + "/items")
    r.raise_for_status()
"""


def test_plain_httpx_at_200_users_is_flagged_as_saturated(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(BODY)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess("-p", "asyncio", f"--stressguard-json={report}",
                                           timeout=120)
    result.assert_outcomes(passed=1)
    (test,) = json.loads(report.read_text())["tests"]
    assert test["saturated"] is True, test["saturation"]
    assert test["saturation"]["reason"]
    result.stdout.fnmatch_lines([
        "*test_httpx_at_200_users*[[]generator saturated[]]*",
    ])
