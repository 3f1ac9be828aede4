"""Stress: find the breaking point of the item listing, and check that the service recovers.

The scenario (the seeds' "Breaking point identification" and "Quick stress check"): requests
arrive at 50/s, then 100/s more at every step, up to 2050/s (open model: arrivals do not wait
for responses, as real clients do not, and latency counts from the intended start, so a queue
building up in the server shows). At every step the SLA is checked: p95 < 500 ms, errors < 0.1 %
and no arrival dropped (more than 1000 requests in flight). The last step that held is the
**capacity**; the summary prints the degradation curve (rate -> achieved requests/s, p95, errors
per step). After the search, one more step at 50/s must meet the SLA again (recovery).

The test fails when the capacity is below 100 requests/s (``expect_capacity``) or when the
service does not recover. Steps last 3 minutes in production; the default run scales them to
1.8 s.

Bug switch: ``DEMO_BUG_SLOW_QUERY=1`` — the list query holds its connection 250 ms: the pool
(20 connections) serves at most 80 lists/s, the second step already breaks, the capacity falls
below 100/s and the backlog does not even let the service recover.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from examples.demo_service.launcher import DemoService


@pytest.fixture(scope="module")
def catalogue(demo_service: DemoService) -> None:
    """Enough items for every listing to return a full page of 50."""
    with httpx.Client(base_url=demo_service.url, timeout=30) as client:
        for i in range(100):
            client.post("/api/items", json={"name": f"catalogue-{i}", "value": i,
                                            "data": {"colour": "blue", "size": i % 7}}).raise_for_status()


@pytest.mark.stress(start_rate="50/s", step_rate="100/s", max_rate="2050/s", max_users=1000,
                    step_duration="3m", sla=["p95<500ms", "error_rate<0.1%", "dropped==0"],
                    expect_capacity="100/s")
async def test_breaking_point_of_the_item_list(demo_api: Any, catalogue: None) -> None:
    await demo_api.list_items(limit=50)
