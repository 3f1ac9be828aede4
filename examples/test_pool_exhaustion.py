"""Pool exhaustion and recovery: the service's 20-connection pool runs dry, then serves again.

The scenario (the seeds' "Connection Pool: esgotamento e recuperação" and "Connection Pool
Stability"): more concurrent requests than connections. What must hold:

* over HTTP: 60 users reading items through the service (3 per connection) wait their turn, none
  fails (no 503 ``pool_timeout``), p95 stays under 1 s, and afterwards every connection is back;
* in the data layer itself (the service's ``db`` module and pool, called from this process and
  watched by ``db_pool_probe``): when every connection is held, a new request fails with
  ``PoolTimeout`` within its timeout instead of hanging; once they are released the pool serves
  all 20 again; under load no connection is leaked and no request times out.

Bug switch: ``DEMO_BUG_CONN_LEAK=1`` — ``GET /api/items/{id}`` takes a connection and never gives
it back: after 20 reads the pool is empty, requests fail with 503 ``pool_timeout`` and the probe
names the line that took the connections it never got back.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from examples.demo_service import db
from examples.demo_service.launcher import DemoService
from examples.demo_service.settings import Settings

ITEMS = 50


@pytest.fixture(scope="module")
def item_ids(demo_service: DemoService) -> list[int]:
    with httpx.Client(base_url=demo_service.url, timeout=30) as client:
        return [client.post("/api/items", json={"name": f"pool-{i}", "value": i}).json()["id"]
                for i in range(ITEMS)]


@pytest.mark.load(users=60, duration="2m",
                  sla=["error_rate<0.1%", "p95<1s", "p95{GET /api/items/{id}}<1s"])
async def test_service_pool_serves_three_users_per_connection(demo_api: Any, item_ids: list[int]) -> None:
    await demo_api.get_item(random.choice(item_ids), timeout=3.0)  # a reader gives up after 3 s


@pytest.mark.asyncio
async def test_service_pool_is_whole_again_after_the_load(demo_api: Any) -> None:
    stats = await demo_api.stats()
    assert stats["leaked_connections"] == 0, f"{stats['leaked_connections']} connections never returned"
    pool = stats["pool"]
    in_use = pool.get("pool_size", 0) - pool.get("pool_available", 0)
    assert in_use == 0, f"{in_use} of {pool.get('pool_size')} connections still in use: {pool}"


# --------------------------------------------------------------------------- the data layer


@pytest.fixture
def service_pool(service_settings: Settings, db_pool_probe: Any) -> Iterator[tuple[Any, Settings, list[Any]]]:
    """The service's pool, made by its own code, in this process, watched by db_pool_probe.
    A 2 s connection timeout (10 s in the service) keeps the waits of this test short."""
    settings = dataclasses.replace(service_settings, pool_timeout_s=2.0)
    leaked: list[Any] = []  # where DEMO_BUG_CONN_LEAK puts the connections it keeps
    pool = db_pool_probe.watch(db.open_pool(settings))
    pool.open(wait=True, timeout=30)
    try:
        yield pool, settings, leaked
    finally:
        for conn in leaked:
            conn.close()
        pool.close(timeout=5)


def test_data_layer_pool_exhausts_and_recovers(
    service_pool: tuple[Any, Settings, list[Any]], db_pool_probe: Any, load_runner: Any,
    item_ids: list[int],
) -> None:
    pool, settings, leaked = service_pool
    report = db_pool_probe.exhaust_and_recover(pool, hold_timeout=1.0, waiters=3)
    assert report.ok, report.describe()

    def read_item() -> None:
        db.get_item(pool, random.choice(item_ids), leaked if settings.bugs.conn_leak else None)

    result = load_runner.run(read_item, users=40, duration="1m")
    db_pool_probe.check(["pool_timeouts==0", "leaked_connections==0", "pool_wait_p95<1s"])
    load_runner.check(result, ["error_rate<0.1%"])
