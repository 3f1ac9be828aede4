"""Regression: two uploads finalising at the same moment both succeed, and nothing is lost.

The scenario (the seeds' "Task 18"): one user finishes two uploads at once. Finalisation reads
the user's counter, checks the queue safeguard and writes the counter back in a SERIALIZABLE
transaction; when the two transactions collide, PostgreSQL aborts one with a serialization
failure (SQLSTATE 40001) and the service must retry it. What must hold:

* both finalisations answer 200 ``finalized``, at SERIALIZABLE;
* the user's counter counts both (no lost update);
* the pool gets its connections back clean (autocommit and isolation as they were; a
  connection returned inside a transaction or with a changed isolation level contaminates the
  next request that gets it).

``@concurrent(workers=2)`` releases the two finalisations together from a barrier, ``rounds``
times. The first test goes through HTTP; the second calls the service's data layer in this
process on a pool that ``db_pool_probe`` watches, so the serialization failures that were retried
and any dirty return show in the summary's ``db pool`` table.

Bug switches: ``DEMO_BUG_NO_RETRY=1`` (the first serialization failure escapes as a 500) and
``DEMO_BUG_RACE=1`` (READ COMMITTED without a lock: the second finalisation overwrites the first).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from examples.demo_service import db
from examples.demo_service.launcher import DemoService
from examples.demo_service.settings import Settings

ROUNDS = 10  # pairs finalised at once; a collision shows up in a few rounds


class Pairs:
    """Uploads made in advance (so that only the finalisations race), handed out one per worker,
    and the counter values the finalisations reported: each must be new, or an update was lost."""

    def __init__(self, user: str, ids: list[int]) -> None:
        self.user = user
        self.ids = ids
        self.seen: set[int] = set()
        self.retried = 0
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            return self.ids.pop()

    def counted(self, finalized_count: int, attempts: int) -> None:
        with self.lock:
            assert finalized_count not in self.seen, (
                f"lost update: two finalisations of user {self.user} both left its counter at "
                f"{finalized_count}"
            )
            self.seen.add(finalized_count)
            self.retried += attempts > 1


def _upload_all(service: DemoService, user: str, count: int) -> list[int]:
    ids = []
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for i in range(count):
            body = f"{user} file {i}".encode() * 1000
            r = client.post("/api/uploads", content=body, headers={
                "X-User": user, "X-Content-SHA256": hashlib.sha256(body).hexdigest()})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


@pytest.fixture
def pairs(demo_service: DemoService) -> Pairs:
    user = f"regression-{uuid.uuid4().hex[:8]}"
    return Pairs(user, _upload_all(demo_service, user, 2 * ROUNDS))


@pytest.mark.concurrent(workers=2, rounds=ROUNDS)
async def test_two_uploads_finalise_at_once(demo_api: Any, pairs: Pairs) -> None:
    done = await demo_api.finalize(pairs.take())
    assert done["status"] == "finalized"
    assert done["isolation"] == "serializable", f"finalised at {done['isolation']}"
    pairs.counted(done["finalized_count"], done["attempts"])


# --------------------------------------------------------------------------- the data layer


@pytest.fixture
def service_pool(service_settings: Settings, db_pool_probe: Any) -> Iterator[tuple[Any, Settings]]:
    """The service's own pool (20 connections, autocommit), in this process, watched by
    db_pool_probe. Closed at the end; the probe reports connections never returned."""
    settings = service_settings
    pool = db_pool_probe.watch(db.open_pool(settings))
    pool.open(wait=True, timeout=30)
    try:
        yield pool, settings
        # After every round: the pool got each connection back, and clean.
        db_pool_probe.check(["dirty_returns==0", "leaked_connections==0", "pool_errors==0"])
    finally:
        pool.close(timeout=5)


@pytest.fixture
def more_pairs(demo_service: DemoService) -> Pairs:
    user = f"regression-db-{uuid.uuid4().hex[:8]}"
    return Pairs(user, _upload_all(demo_service, user, 2 * ROUNDS))


@pytest.mark.concurrent(workers=2, rounds=ROUNDS)
def test_finalisation_keeps_the_pool_clean(service_pool: tuple[Any, Settings], more_pairs: Pairs) -> None:
    pool, settings = service_pool
    done = db.finalize(pool, more_pairs.take(), settings)
    assert done.isolation == "serializable", f"finalised at {done.isolation}"
    more_pairs.counted(done.finalized_count, done.attempts)
