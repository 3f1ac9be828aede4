"""Race hunting by repetition: many finalisations of one user's uploads, at once, over and over.

The per-user counter is read, checked against the quota and written back: correct only when the
transaction isolation (SERIALIZABLE, retried on conflict) makes it so. A lost update is silent:
every request answers 200, only the counter is wrong. So the test checks the invariant itself:
each finalisation reports the counter value it wrote, and no two may report the same value.

A single run rarely proves anything about a race; repetition does. ``rounds=`` repeats the
barrier-released burst inside one test (the summary's ``repeated`` table shows the pass rate and
the first failing round); pytest-repeat repeats the whole test:

    pytest examples/test_race_hunting.py --count=50        # 50 x 20 rounds x 8 finalisations

Bug switch: ``DEMO_BUG_RACE=1`` (READ COMMITTED, no lock, a 20 ms window between reading and
writing the counter): two finalisations write the same value and one update is lost.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import httpx
import pytest

from examples.demo_service.launcher import DemoService

WORKERS = 8
ROUNDS = 20


class Counter:
    """One user, ``WORKERS * ROUNDS`` uploads ready to finalise, and the counter values seen."""

    def __init__(self, user: str, ids: list[int]) -> None:
        self.user = user
        self.ids = ids
        self.seen: dict[int, int] = {}  # counter value -> upload that wrote it
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            return self.ids.pop()

    def wrote(self, value: int, upload_id: int) -> None:
        with self.lock:
            other = self.seen.setdefault(value, upload_id)
        assert other == upload_id, (
            f"lost update: uploads {other} and {upload_id} of user {self.user} were both "
            f"finalised and both set its counter to {value}"
        )


@pytest.fixture
def counter(demo_service: DemoService) -> Counter:
    user = f"racer-{uuid.uuid4().hex[:8]}"
    ids = []
    with httpx.Client(base_url=demo_service.url, timeout=30) as client:
        for i in range(WORKERS * ROUNDS):
            body = f"{user}/{i}".encode()
            r = client.post("/api/uploads", content=body, headers={
                "X-User": user, "X-Content-SHA256": hashlib.sha256(body).hexdigest()})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return Counter(user, ids)


@pytest.mark.concurrent(workers=WORKERS, rounds=ROUNDS, timeout="60s")
async def test_concurrent_finalisations_never_lose_an_update(demo_api: Any, counter: Counter) -> None:
    upload_id = counter.take()
    done = await demo_api.finalize(upload_id)
    counter.wrote(done["finalized_count"], upload_id)
