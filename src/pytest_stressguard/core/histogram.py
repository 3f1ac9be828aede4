"""Latency histogram: an HdrHistogram in whole microseconds, read back in seconds.

Design notes
------------
* Values are recorded in **microseconds** (rounded to the nearest microsecond) in an
  HdrHistogram covering ``lowest_us .. highest_us`` (default 1 us .. 1 h) with 3 significant
  figures, so every percentile is within 0.1 % of the true value and two histograms merge
  *exactly* (bucket counts add up; no averaging of percentiles).
* Nothing is dropped silently: HdrHistogram's ``record_value`` returns ``False`` for a value out
  of range and forgets it. Here a value above ``highest_us`` is recorded *as* ``highest_us`` and a
  negative value (a clock going backwards) as 0; both are counted in :attr:`clamped` so reports
  can say so. Sub-microsecond values (an empty body) round to 0 or 1 us: that is the resolution
  of the histogram, not a clamp, and is not counted.
* The object is **not thread-safe** on purpose: the engine gives every virtual user its own
  buffer and merges on read (see :mod:`pytest_stressguard.core.collector`).
* The read side speaks seconds (:meth:`p`, :attr:`mean`, :attr:`min`, :attr:`max`,
  :attr:`stdev`); :meth:`percentiles_ms` is the one edge that converts to milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from .records import HistogramDict

__all__ = ["PERCENTILE_KEYS", "LatencyHistogram", "parse_percentile_name"]

#: The percentile metric names reported everywhere, in order.
PERCENTILE_KEYS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "p99.9")

_US = 1_000_000.0


def parse_percentile_name(name: str) -> float | None:
    """Return ``q`` (0..100) for a metric name like ``"p95"`` or ``"p99.9"``, else ``None``.

    ``"p100"`` is the maximum; ``"p0"`` the minimum. Anything that is not ``p`` followed by a
    number in 0..100 returns ``None`` (the caller decides whether that is an error).
    """
    if len(name) < 2 or name[0] != "p":
        return None
    body = name[1:]
    if not body.replace(".", "", 1).isdigit():
        return None
    q = float(body)
    if not 0.0 <= q <= 100.0:
        return None
    return q


class LatencyHistogram:
    """HdrHistogram of latencies; record and read in seconds, stored in microseconds."""

    __slots__ = ("_h", "clamped", "highest_us", "lowest_us", "sig_figs")

    def __init__(
        self, lowest_us: int = 1, highest_us: int = 3_600_000_000, sig_figs: int = 3
    ) -> None:
        if lowest_us < 1:
            raise ValueError(f"lowest_us must be >= 1, got {lowest_us}")
        if highest_us < 2 * lowest_us:
            raise ValueError(f"highest_us must be >= 2 * lowest_us, got {highest_us}")
        if not 1 <= sig_figs <= 5:
            raise ValueError(f"sig_figs must be in 1..5, got {sig_figs}")
        self.lowest_us = lowest_us
        self.highest_us = highest_us
        self.sig_figs = sig_figs
        #: how many recorded values were outside ``0 .. highest_us`` and were clamped.
        self.clamped = 0
        self._h: Any = HdrHistogram(lowest_us, highest_us, sig_figs)

    # ------------------------------------------------------------------ recording
    def record(self, seconds: float, count: int = 1) -> None:
        """Record ``count`` occurrences of a latency of ``seconds``."""
        us = int(seconds * _US + 0.5) if seconds >= 0.0 else -1
        self.record_us(us, count)

    def record_us(self, us: int, count: int = 1) -> None:
        """Record ``count`` occurrences of a latency in whole microseconds (the fast path)."""
        if count <= 0:
            return
        if us < 0:
            us = 0
            self.clamped += count
        elif us > self.highest_us:
            us = self.highest_us
            self.clamped += count
        self._h.record_value(us, count)

    def record_counts_us(self, counts: Mapping[int, int]) -> None:
        """Record a ``{microseconds: count}`` mapping (how the engine flushes its buffers)."""
        for us, n in counts.items():
            self.record_us(us, n)

    def record_many(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            self.record(s)

    # ------------------------------------------------------------------ reading
    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        # an empty histogram is still a histogram; avoid surprising `if hist:` checks
        return True

    def p(self, q: float) -> float:
        """The ``q``-th percentile (``q`` in 0..100) in seconds; 0.0 when empty."""
        if not 0.0 <= q <= 100.0 or math.isnan(q):
            raise ValueError(f"percentile must be in 0..100, got {q!r}")
        if self.count == 0:
            return 0.0
        if q == 100.0:
            return self.max
        return float(self._h.get_value_at_percentile(q)) / _US

    def percentiles(self, qs: Iterable[float]) -> dict[float, float]:
        """Several percentiles in one pass over the counts: ``{q: seconds}``."""
        wanted = sorted(set(qs))
        for q in wanted:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"percentile must be in 0..100, got {q!r}")
        if self.count == 0:
            return dict.fromkeys(wanted, 0.0)
        raw: dict[float, int] = self._h.get_percentile_to_value_dict(wanted)
        out = {q: float(v) / _US for q, v in raw.items()}
        for q in wanted:  # the HDR helper can stop before 100 when rounding; fill in
            if q not in out or q == 100.0:
                out[q] = self.max
        return out

    @property
    def mean(self) -> float:
        return float(self._h.get_mean_value()) / _US if self.count else 0.0

    @property
    def min(self) -> float:
        return float(self._h.get_min_value()) / _US if self.count else 0.0

    @property
    def max(self) -> float:
        return float(self._h.get_max_value()) / _US if self.count else 0.0

    @property
    def stdev(self) -> float:
        return float(self._h.get_stddev()) / _US if self.count else 0.0

    def percentiles_ms(self) -> dict[str, float | None]:
        """``p50 p90 p95 p99 p99.9 mean min max`` in milliseconds (``None`` when empty)."""
        keys = (*PERCENTILE_KEYS, "mean", "min", "max")
        if self.count == 0:
            return dict.fromkeys(keys, None)
        qs = self.percentiles([float(k[1:]) for k in PERCENTILE_KEYS])
        out: dict[str, float | None] = {
            k: qs[float(k[1:])] * 1000.0 for k in PERCENTILE_KEYS
        }
        out["mean"] = self.mean * 1000.0
        out["min"] = self.min * 1000.0
        out["max"] = self.max * 1000.0
        return out

    # ------------------------------------------------------------------ combining
    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s counts into this histogram (exact). Returns ``self``."""
        if other.count:
            self._h.add(other._h)
        self.clamped += other.clamped
        return self

    def copy(self) -> LatencyHistogram:
        new = LatencyHistogram(self.lowest_us, self.highest_us, self.sig_figs)
        new.merge(self)
        return new

    def reset(self) -> None:
        self._h.reset()
        self.clamped = 0

    def __iadd__(self, other: LatencyHistogram) -> LatencyHistogram:
        return self.merge(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (
            self.count == other.count
            and self.clamped == other.clamped
            and self.encode() == other.encode()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self.count:
            return "LatencyHistogram(count=0)"
        return (
            f"LatencyHistogram(count={self.count}, p50={self.p(50) * 1e3:.3f}ms, "
            f"p99={self.p(99) * 1e3:.3f}ms, max={self.max * 1e3:.3f}ms, clamped={self.clamped})"
        )

    # ------------------------------------------------------------------ serialising
    def encode(self) -> str:
        """The standard compressed HdrHistogram V2 payload, base64, as a plain ``str``.

        Readable by any HdrHistogram implementation (Java, C, Go, ``hdrh``). The ``clamped``
        counter is not part of the HDR format; :meth:`to_dict` carries it.
        """
        raw = self._h.encode()
        return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)

    @classmethod
    def decode(cls, text: str | bytes) -> LatencyHistogram:
        """Rebuild a histogram from :meth:`encode` output (any V2 HDR base64 payload)."""
        data = text.encode("ascii") if isinstance(text, str) else text
        try:
            h = HdrHistogram.decode(data)
        except Exception as exc:  # the codec raises several unrelated exception types
            raise ValueError(f"not an encoded HdrHistogram: {exc}") from exc
        new = cls.__new__(cls)
        new.lowest_us = int(h.lowest_trackable_value)
        new.highest_us = int(h.highest_trackable_value)
        new.sig_figs = int(h.significant_figures)
        new.clamped = 0
        # re-home the counts in a histogram of our own so the encoder state is pristine
        fresh = HdrHistogram(new.lowest_us, new.highest_us, new.sig_figs)
        if h.get_total_count():
            fresh.add(h)
        new._h = fresh
        return new

    def to_dict(self) -> HistogramDict:
        return {
            "hdr": self.encode(),
            "count": self.count,
            "clamped": self.clamped,
            "lowest_us": self.lowest_us,
            "highest_us": self.highest_us,
            "sig_figs": self.sig_figs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        new = cls.decode(str(data["hdr"]))
        new.clamped = int(data.get("clamped", 0))
        return new
