"""Load: the CRUD API at its basic, peak and spike levels, each with its SLA.

The scenario (the seeds' "Load Testing Scenarios" and "Database Load Testing"): virtual users
create, read, update, list and delete items, thinking a second between journeys. Three levels:

* basic: 50 users for 5 minutes;
* peak: 200 users for 10 minutes, reached over a 1-minute ramp-up;
* spike: 10 users, a jump to 500 within 30 s, held 2 minutes, back to 10 (does it recover?).

At the basic and peak levels: p95 < 2 s, p99 < 5 s, errors < 0.1 %, at least 100 requests/s (20
journeys of 5 requests) and one endpoint gate, the list query under 200 ms at p95. The spike may
slow things down, but no request may fail and p99 stays under 5 s. The first minute (ramp-up, the
pool growing) is run but not measured. Durations are scaled by ``--stressguard-time-scale`` (the
default run uses 0.01: 5 minutes -> 3 s); users and think time are not, so the load is the
production one.

Bug switch: ``DEMO_BUG_SLOW_QUERY=1`` — the list query holds its connection 250 ms (an index was
dropped): ``p95{GET /api/items}`` turns red, and at peak the slow query drains the pool so every
endpoint slows down.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pytest_stressguard import spike

SLA = ["p95<2s", "p99<5s", "error_rate<0.1%", "rps>=20/s", "p95{GET /api/items}<200ms"]
#: A spike may slow everything down (500 users on two cores), but no request may fail and even
#: the slowest 1 % answer within 5 s.
SPIKE_SLA = ["p99<5s", "error_rate<0.1%"]


async def crud_journey(api: Any) -> None:
    """One user journey: 5 requests, each recorded under its endpoint name."""
    item = await api.create_item(f"item-{uuid.uuid4().hex[:8]}", value=1, data={"tags": ["load"]})
    assert (await api.get_item(item["id"]))["name"] == item["name"]
    assert (await api.update_item(item["id"], value=2))["value"] == 2
    await api.list_items(limit=20)
    await api.delete_item(item["id"])


@pytest.mark.load(users=50, duration="5m", ramp_up="1m", warmup="1m", think_time="1s",
                  sla=SLA)
async def test_crud_basic_load(demo_api: Any) -> None:
    await crud_journey(demo_api)


@pytest.mark.load(users=200, duration="10m", ramp_up="1m", warmup="1m", think_time="1s",
                  sla=SLA)
async def test_crud_peak_load(demo_api: Any) -> None:
    await crud_journey(demo_api)


@pytest.mark.load(stages=spike(10, 500, hold="2m", ramp="30s"), think_time="1s", warmup="30s",
                  sla=SPIKE_SLA)
async def test_crud_spike(demo_api: Any) -> None:
    await crud_journey(demo_api)
