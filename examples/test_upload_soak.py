"""Soak: uploads repeated for two hours; the server does not leak, fails rarely, stays as fast.

The scenario (the seeds' "Task 20"): a steady stream of 1 MB uploads by 100 users (two clients,
50 ms apart, about 30 uploads/s), each finalised and then processed by the background worker,
for 2 hours. What must hold:

* the server's memory does not grow: leak rate < 10 MB/h (a robust slope after the 10-minute
  warm-up, with its 95 % bound; a plateau after the warm-up is not a leak);
* failures < 5 %;
* upload times stay within ±20 % (median of the last fifth of the run vs the first fifth).

``watch="demo_service"`` names the fixture whose process is sampled besides this one; the leak
gate applies to both. The CI variant is the same test, time-scaled:

    pytest examples/test_upload_soak.py --stressguard-time-scale=0.01   # 2 h -> 72 s

Users and think time are not scaled, so the load (uploads per second) is the production one and
a leak of N bytes per upload shows the same MB/h in 72 s as in 2 h; the short window only widens
the confidence bound (the summary shows it). The upload size is ``EXAMPLES_SOAK_UPLOAD_SIZE``.

Bug switch: ``DEMO_BUG_LEAK=1`` — every upload keeps a 256 KiB buffer forever; the leak gate on
the watched service turns red.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

SOAK_UPLOAD_SIZE = os.environ.get("EXAMPLES_SOAK_UPLOAD_SIZE", "1MB")


@pytest.fixture(scope="module")
def soak_file(upload_file_factory: Any) -> Any:
    return upload_file_factory(SOAK_UPLOAD_SIZE, content="random", seed=20)


@pytest.mark.soak(duration="2h", warmup="10m", users=2, think_time="50ms",
                  leak="10MB/h", drift="20%", sla=["error_rate<5%"], watch="demo_service")
async def test_repeated_uploads_do_not_leak(demo_api: Any, soak_file: Any) -> None:
    row = await demo_api.upload(soak_file, user=f"soak-{random.randrange(100)}")
    await demo_api.finalize(row["id"])
