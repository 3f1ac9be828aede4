"""Stress: 12 concurrent large uploads; the server streams them (memory stays low), the pool holds.

The scenario (the seeds' "Task 19"): twelve users upload a 100 MB file each at the same moment,
then finalise it. What must hold:

* every upload and finalisation succeeds (0 failures), the stored sha256 matches;
* the server's peak memory stays under 2 GB: it streams to disk instead of holding the uploads;
* its 20-connection pool is never exhausted (no request timed out waiting for a connection);
* the throughput in MB/s is printed (``-s``), kept in the JUnit XML (``record_property``) and must
  not fall below a floor.

The size is ``EXAMPLES_UPLOAD_SIZE`` (default ``8MB``, so the default run stays fast; the
production setting is ``100MB``). The limits are ``EXAMPLES_SERVER_PEAK_RSS`` (``2GB``) and
``EXAMPLES_MIN_MB_PER_S`` (``5``, deliberately low: the machine running the examples is shared).

It uses the plugin's fixtures directly rather than a marker, because the gates that matter here
are not latency gates: ``load_runner`` runs the twelve users, ``resource_monitor`` samples the
server's memory while they run, ``upload_file_factory`` makes the file once per session.

Bug switch: ``DEMO_BUG_LEAK=1 DEMO_LEAK_BYTES=200000000`` — the service keeps 200 MB in memory
per upload (what a handler that buffers whole uploads does): the peak_rss gate turns red.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from examples.demo_service.launcher import DemoService

UPLOAD_SIZE = os.environ.get("EXAMPLES_UPLOAD_SIZE", "8MB")
SERVER_PEAK_RSS = os.environ.get("EXAMPLES_SERVER_PEAK_RSS", "2GB")
MIN_MB_PER_S = float(os.environ.get("EXAMPLES_MIN_MB_PER_S", "5"))
USERS = 12


@pytest.fixture(scope="module")
def large_file(upload_file_factory: Any) -> Any:
    """Random bytes (so the sha256 check means something), made once, removed at the end."""
    return upload_file_factory(UPLOAD_SIZE, content="random", seed=19)


def pool_counter(stats: dict[str, Any], key: str) -> int:
    return int(stats["pool"].get(key, 0))  # psycopg_pool leaves out counters still at zero


@pytest.mark.asyncio
async def test_twelve_concurrent_large_uploads(
    demo_api: Any, demo_service: DemoService, large_file: Any, load_runner: Any,
    resource_monitor: Any, record_property: Any,
) -> None:
    server = resource_monitor.watch(demo_service.pid, label="demo service")
    before = await demo_api.stats()

    async def upload_and_finalise() -> None:
        row = await demo_api.upload(large_file, user=f"bulk-{uuid.uuid4().hex[:8]}")
        assert (row["size"], row["sha256"]) == (large_file.size, large_file.sha256)
        await demo_api.finalize(row["id"])

    result = await load_runner.run_async(upload_and_finalise, users=USERS, iterations=USERS)
    after = await demo_api.stats()

    mb_per_s = result.iterations * large_file.size / 1e6 / result.duration_s
    record_property("upload_throughput_MB_per_s", round(mb_per_s, 1))
    record_property("server_peak_rss_bytes", resource_monitor.peak_rss_of(server))
    print(f"\n{USERS} x {UPLOAD_SIZE}: {mb_per_s:.1f} MB/s, server peak RSS "
          f"{resource_monitor.peak_rss_of(server) / 1e6:.0f} MB")

    load_runner.check(result, ["errors==0"])
    resource_monitor.check([f"peak_rss<{SERVER_PEAK_RSS}"], pid=server)
    timeouts = pool_counter(after, "requests_errors") - pool_counter(before, "requests_errors")
    assert timeouts == 0, f"pool exhausted: {timeouts} requests timed out waiting for a connection"
    assert mb_per_s >= MIN_MB_PER_S, f"throughput {mb_per_s:.1f} MB/s < {MIN_MB_PER_S:g} MB/s"
