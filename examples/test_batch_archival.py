"""Sustained batch archival: finished jobs move to the archive at >= 10,000 records/minute, on a
live service, for 30 minutes, without the service's memory growing.

The scenario (the seeds' "Sustained Load", "High Concurrency" and "Connection Pool Stability"
archival tests): two archivers move finished jobs into ``jobs_archive`` in batches of 1,000 (one
transaction per batch, ``FOR UPDATE SKIP LOCKED`` so they never move a row twice), while new
finished jobs keep arriving and the application keeps serving its readers from the same database
and the same 20-connection pool. What must hold:

* throughput: at least 10 batches of 1,000 per minute (``rps>=10/min``: 10,000 records/minute),
  every batch full while the backlog is, no failed batch, p95 of a batch under 5 s;
* memory: no leak in the service (``leak="50MB/h"`` on the watched process: a plateau is fine,
  steady growth is not);
* the application's readers are not starved (checked by the ``app_readers`` fixture).

``@soak`` runs it: "sustained" is exactly what it measures (memory slope, latency drift).
30 minutes in production; the default run scales it to 18 s.

Bug switch: ``DEMO_BUG_CONN_LEAK=1`` — a read endpoint never gives its connection back. The leak
is not in the archiver, but the pool is shared: once the readers have taken every connection,
archival batches wait 10 s and fail with 503 ``pool_timeout``, and the records/minute gate turns
red.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from examples.demo_service.launcher import DemoService

BATCH = 1000
RECORDS_PER_MINUTE = 10_000
ARCHIVERS = 2


class Readers:
    """The application's own traffic during the archival: a thread reading items, ~20/s."""

    def __init__(self, url: str, item_ids: list[int]) -> None:
        self.url = url
        self.item_ids = item_ids
        self.reads = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="app-readers", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=3.0) as client:
            while not self._stop.wait(0.05):
                try:
                    r = client.get(f"/api/items/{random.choice(self.item_ids)}")
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.reads += 1

    def __enter__(self) -> Readers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def app_readers(demo_service: DemoService) -> Iterator[Readers]:
    with httpx.Client(base_url=demo_service.url, timeout=30) as client:
        ids = [client.post("/api/items", json={"name": f"doc-{i}"}).json()["id"] for i in range(20)]
        # A backlog of finished jobs, so that every archiver finds a full batch from the start.
        client.post(f"/api/jobs/seed?count={BATCH * ARCHIVERS * 2}").raise_for_status()
    with Readers(demo_service.url, ids) as readers:
        yield readers
    assert readers.reads > 0, "the readers never ran"
    assert not readers.failures, (
        f"{len(readers.failures)} of {readers.reads} application reads failed during the "
        f"archival, first: {readers.failures[0]}"
    )


@pytest.mark.soak(duration="30m", warmup="3m", users=ARCHIVERS, think_time="500ms", leak="50MB/h",
                  sla=[f"rps>={RECORDS_PER_MINUTE / BATCH:g}/min", "error_rate<0.1%", "p95<5s"],
                  watch="demo_service")
async def test_sustained_batch_archival(demo_api: Any, app_readers: Readers) -> None:
    await demo_api.seed_jobs(BATCH)  # the day's finished jobs keep arriving
    moved = await demo_api.archive(BATCH)
    assert moved == BATCH, f"a batch moved {moved} of {BATCH} records while the backlog was full"
