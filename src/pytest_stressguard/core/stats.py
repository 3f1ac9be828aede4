"""Per-endpoint statistics recorded by load bodies (HTTP client, user code).

A load body may do several things per iteration (``GET /items`` then ``POST /orders``); the
iteration latency lives in :class:`~pytest_stressguard.core.result.LoadResult`, and the per-name
figures live here. The engine creates one :class:`StatsRecorder` per run and publishes it through
:data:`current_recorder`; the HTTP client and user code call ``current_recorder.get()`` and, when it
is not ``None``, ``record(name, seconds, error)``.

Thread safety: :class:`StatsRecorder` keeps one set of buffers per recording thread (no lock on
the hot path; a dict lookup keyed by thread id, created under a lock the first time a thread
records). Readers merge the per-thread parts under the lock. Async bodies all record from the
loop's thread, so they share one part.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .histogram import PERCENTILE_KEYS, LatencyHistogram
from .records import EndpointDict

__all__ = ["EndpointStats", "StatsRecorder", "current_recorder", "error_key"]

#: Longest message kept in an error key (``"{type}: {message}"``).
ERROR_MESSAGE_MAX = 200


def error_key(exc: BaseException) -> str:
    """Group key for an error: ``"{type}: {first line of message, <= 200 chars}"``."""
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(msg) > ERROR_MESSAGE_MAX:
        msg = msg[: ERROR_MESSAGE_MAX - 3] + "..."
    return f"{name}: {msg}" if msg else name


@dataclass
class EndpointStats:
    """Aggregate for one endpoint name. ``histogram`` holds every call's latency, errors too."""

    name: str
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    count: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def record(self, seconds: float, error: str | None = None) -> None:
        self.histogram.record(seconds)
        self.count += 1
        if error is not None:
            self.errors += 1
            self.errors_by_kind[error] = self.errors_by_kind.get(error, 0) + 1

    def merge(self, other: EndpointStats) -> EndpointStats:
        """Add ``other`` into ``self`` (exact); returns ``self``."""
        self.histogram.merge(other.histogram)
        self.count += other.count
        self.errors += other.errors
        for k, n in other.errors_by_kind.items():
            self.errors_by_kind[k] = self.errors_by_kind.get(k, 0) + n
        return self

    def copy(self) -> EndpointStats:
        return EndpointStats(
            self.name, self.histogram.copy(), self.count, self.errors, dict(self.errors_by_kind)
        )

    def metrics(self) -> dict[str, float | None]:
        """Threshold metric names for the endpoint form ``p95{GET /items}<200ms`` (seconds).
        ``rps`` needs the run's measured window: :meth:`LoadResult.endpoint_metrics` adds it."""
        h = self.histogram
        empty = self.count == 0
        out: dict[str, float | None] = {}
        qs = h.percentiles([float(k[1:]) for k in PERCENTILE_KEYS])
        for key in PERCENTILE_KEYS:
            out[key] = None if empty else qs[float(key[1:])]
        out["mean"] = None if empty else h.mean
        out["min"] = None if empty else h.min
        out["max"] = None if empty else h.max
        out["iterations"] = float(self.count)
        out["errors"] = float(self.errors)
        out["error_rate"] = None if empty else self.error_rate
        return out

    def to_dict(self) -> EndpointDict:
        return {
            "name": self.name,
            "count": self.count,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "errors_by_kind": dict(self.errors_by_kind),
            "latency_ms": self.histogram.percentiles_ms(),
            "histogram": self.histogram.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointStats:
        return cls(
            name=str(data["name"]),
            histogram=LatencyHistogram.from_dict(data["histogram"]),
            count=int(data["count"]),
            errors=int(data["errors"]),
            errors_by_kind={str(k): int(v) for k, v in dict(data["errors_by_kind"]).items()},
        )


class _Part:
    """One recording thread's stats, with its own (normally uncontended) lock."""

    __slots__ = ("by_name", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_name: dict[str, EndpointStats] = {}


class StatsRecorder:
    """Thread-safe sink for per-endpoint measurements; cheap on the recording side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[int, _Part] = {}

    def _part(self) -> _Part:
        tid = threading.get_ident()
        part = self._parts.get(tid)
        if part is None:
            with self._lock:
                part = self._parts.setdefault(tid, _Part())
        return part

    def record(self, name: str, seconds: float, error: str | None = None) -> None:
        """Record one call of endpoint ``name`` that took ``seconds``; ``error`` is its key
        (see :func:`error_key`) or ``None`` for a success. Errors' latencies are recorded too
        (a failed HTTP call still took that long)."""
        part = self._part()
        with part.lock:
            stats = part.by_name.get(name)
            if stats is None:
                stats = part.by_name[name] = EndpointStats(name)
            stats.record(seconds, error)

    def snapshot(self) -> dict[str, EndpointStats]:
        """A merged copy of everything recorded so far, by name."""
        out: dict[str, EndpointStats] = {}
        with self._lock:
            parts = list(self._parts.values())
        for part in parts:
            with part.lock:
                for name, st in part.by_name.items():
                    if name in out:
                        out[name].merge(st)
                    else:
                        out[name] = st.copy()
        return out

    def merge_into(self, target: dict[str, EndpointStats]) -> None:
        """Merge everything recorded so far into ``target`` (by name)."""
        for name, st in self.snapshot().items():
            if name in target:
                target[name].merge(st)
            else:
                target[name] = st


#: The recorder of the load run in progress (``None`` outside a run).
current_recorder: contextvars.ContextVar[StatsRecorder | None] = contextvars.ContextVar(
    "stressguard_current_recorder", default=None
)
