"""What one session gathered: per-test records (plain dicts) and per-test trend points.

Records arrive in one place, `pytest_runtest_logreport`, whether the test ran here or on an xdist
worker (they ride on the report as plain data), so a worker that dies loses none of the tests it
had already reported. Per-process figures (peak RSS, memory across the session) come from the
workers through `workeroutput` at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pytest_stressguard.core.records import Record


class TrendPoint(NamedTuple):  # one per test: a NamedTuple is cheaper to make than a dataclass
    nodeid: str
    outcome: str
    duration_s: float
    rss_after: int  # 0 when memory is not tracked (--stressguard-trends off)
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
    records: list[Record] = field(default_factory=list)
    trends: list[TrendPoint] = field(default_factory=list)
    processes: dict[str, ProcessStats] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    failure_kinds: dict[str, str] = field(default_factory=dict)
    lost_workers: list[str] = field(default_factory=list)
    repeat_count: int = 1  # pytest-repeat's --count (1 when absent)
    _by_nodeid: dict[str, list[Record]] = field(default_factory=dict, repr=False)

    def add_record(self, record: Record) -> None:
        """Keep an entry; a pool entry joins the load/stress/soak entry of its test, if any."""
        owner = self._owner_of_pool(record)
        if owner is not None:
            owner["pool"] = record["pool"]
            owner["metrics"] = {**owner.get("metrics", {}), **record.get("metrics", {})}
            return
        self.records.append(record)
        self._by_nodeid.setdefault(str(record.get("nodeid")), []).append(record)

    def records_of(self, nodeid: str) -> list[Record]:
        return self._by_nodeid.get(nodeid, [])

    def _owner_of_pool(self, record: Record) -> Record | None:
        if record.get("kind") != "pool":
            return None
        owners = [r for r in self.records_of(str(record.get("nodeid"))) if r.get("kind") != "pool"]
        return owners[-1] if owners else None
