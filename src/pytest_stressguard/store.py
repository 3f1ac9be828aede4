"""What one session gathered: per-test records (plain dicts) and per-test trend points.

Records arrive in one place, `pytest_runtest_logreport`, whether the test ran here or on an xdist
worker (they ride on the report as plain data), so a worker that dies loses none of the tests it
had already reported. Per-process figures (peak RSS, memory across the session) come from the
workers through `workeroutput` at the end.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

# pytest-repeat appends "-N-M" to the parametrize id: test_x[3-100] or test_x[param-3-100].
_REPEAT_ID = re.compile(r"^(?P<base>.*?)\[(?:(?P<params>.*)-)?(?P<i>\d+)-(?P<n>\d+)\]$")


def split_repetition(nodeid: str, count: int) -> tuple[str, int | None]:
    """'t.py::test_x[3-100]' -> ('t.py::test_x', 3) when pytest-repeat runs with --count=100;
    keeps other params: 't.py::test_x[a-3-100]' -> ('t.py::test_x[a]', 3). Without --count an id
    such as '[1-1000]' is an ordinary parameter, not a repetition."""
    m = _REPEAT_ID.match(nodeid)
    if not m or count < 2 or int(m.group("n")) != count:
        return nodeid, None
    base = m.group("base")
    if m.group("params"):
        base = f"{base}[{m.group('params')}]"
    return base, int(m.group("i"))


@dataclass
class TrendPoint:
    nodeid: str
    outcome: str
    duration_s: float
    rss_after: int
    rss_delta: int
    worker: str
    finished_at: float


@dataclass
class ProcessStats:
    """Memory of one test process (this one, or an xdist worker) across the session."""

    worker: str
    peak_rss: int
    series: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, rss)

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "peak_rss": self.peak_rss,
                "series": [list(p) for p in self.series]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessStats:
        return cls(str(data["worker"]), int(data["peak_rss"]),
                   [(float(t), int(r)) for t, r in data.get("series", [])])


@dataclass
class SessionStore:
    started: float = field(default_factory=time.time)
    records: list[dict[str, Any]] = field(default_factory=list)
    trends: list[TrendPoint] = field(default_factory=list)
    processes: dict[str, ProcessStats] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    lost_workers: list[str] = field(default_factory=list)
    repeat_count: int = 1  # pytest-repeat's --count (1 when absent)

    def add_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def owner_of_pool(self, record: dict[str, Any]) -> dict[str, Any] | None:
        if record.get("kind") != "pool":
            return None
        for other in reversed(self.records):
            if other.get("nodeid") == record.get("nodeid") and other.get("kind") != "pool":
                return other
        return None

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]
