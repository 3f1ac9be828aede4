"""Robust trend statistics: leak rates, latency drift and trends across repetitions.

Everything here is pure Python on plain sequences, so it can be tested on synthetic series and
used on data that came back from xdist workers.

The leak decision
-----------------
Memory of a real process is not a clean line: the allocator grows in pages and arenas, caches
warm up and then stay, large temporaries come and go (a sawtooth), reference cycles wait for the
garbage collector. The estimate is built to ignore all of that and to flag only growth that
*keeps going*:

1. Samples taken before ``warmup`` are dropped.
2. The rest is reduced to at most ``max_points`` block means (cost bound: the estimator is
   O(n^2); block means also damp the short-range autocorrelation of RSS samples, which would
   otherwise make the confidence interval too narrow).
3. The slope is the **Theil–Sen** estimator (median of all pairwise slopes): up to ~29 % of the
   points can be arbitrary (spikes, steps) without moving it. Its confidence interval is
   **Sen's rank-based interval** (from the null distribution of Kendall's S, with the tie
   correction, which matters because RSS is often exactly flat). The 95 % interval is reported.
4. The **floor** is the series of block minima (up to 24 blocks). Garbage waiting for the
   collector and freed temporaries raise only the peaks; a leak raises the floor too.
5. Growth is *established* only when, at the 99 % level, both the slope and the floor's slope
   are above zero **and** growth continues in the last half of the window (last-half slope at
   least half of the whole-window slope). A warm-up followed by a plateau has a positive
   whole-window slope but a flat last half, so it is not a leak even without ``warmup``.
   (On synthetic noise, page-quantised flat series, sawtooths of temporaries and of gc cycles
   and warm-up plateaus — 1400 series in all — this rule flagged none; with the 95 % level and
   without the floor it flagged about 2 %. It still caught 98 % of leaks whose growth over the
   window was only five times the noise; see tests/unit/test_trends.py.)
6. The value a gate compares (:attr:`LeakEstimate.gate_bytes_per_h`, the ``leak`` metric) is the
   lowest of the whole-window, last-half and floor slopes when growth is established, else 0.

The point estimate and its bound are always reported, so "not established" never hides a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .units import format_duration, format_size

__all__ = [
    "SPARK_CHARS",
    "LeakEstimate",
    "RepetitionTrend",
    "drift",
    "estimate_leak",
    "is_leak",
    "median",
    "reduce_points",
    "sen_interval",
    "session_leak_rate",
    "sparkline",
    "theil_sen",
]

SPARK_CHARS = "▁▂▃▄▅▆▇█"

#: Fewest samples (after warm-up and reduction) a leak estimate is computed from.
MIN_POINTS = 6
#: Default cap on points handed to the O(n^2) estimator.
MAX_POINTS = 240
#: The last half's slope must be at least this fraction of the whole slope to call growth persistent.
PERSIST_RATIO = 0.5
#: Confidence level at which growth must be established (the reported interval is 95 %).
DECISION_CONFIDENCE = 0.99
#: Most blocks of the floor (block minima) series; fewer than MIN_FLOOR_BLOCKS disables it.
FLOOR_BLOCKS = 24
MIN_FLOOR_BLOCKS = 6

_HOUR = 3600.0


# --------------------------------------------------------------------------- basic statistics
def median(values: Iterable[float]) -> float:
    """The median (mean of the two middle values for an even count). Raises on empty input."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of an empty sequence")
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - lo:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
        ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1
    )


def _pairwise_slopes(ts: Sequence[float], ys: Sequence[float]) -> list[float]:
    slopes: list[float] = []
    n = len(ts)
    for i in range(n - 1):
        ti, yi = ts[i], ys[i]
        for j in range(i + 1, n):
            dt = ts[j] - ti
            if dt != 0:
                slopes.append((ys[j] - yi) / dt)
    slopes.sort()
    return slopes


def theil_sen(ts: Sequence[float], ys: Sequence[float]) -> float | None:
    """Median of the pairwise slopes (y units per t unit); None with fewer than 2 distinct t."""
    if len(ts) != len(ys):
        raise ValueError("ts and ys differ in length")
    slopes = _pairwise_slopes(ts, ys)
    return median(slopes) if slopes else None


def _tie_term(values: Sequence[float]) -> float:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return float(sum(t * (t - 1) * (2 * t + 5) for t in counts.values() if t > 1))


def sen_interval(
    ts: Sequence[float], ys: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """``(slope, lower, upper)``: Theil–Sen slope with Sen's rank-based confidence interval.

    The interval takes the order statistics of the sorted pairwise slopes at
    ``(N -/+ z * sqrt(Var S)) / 2`` where ``N`` is the number of slopes and ``Var S`` the variance
    of Kendall's S under no trend, corrected for ties in ``y`` and ``t``.
    """
    if len(ts) != len(ys):
        raise ValueError("ts and ys differ in length")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    slopes = _pairwise_slopes(ts, ys)
    if not slopes:
        return None
    n = len(ts)
    big_n = len(slopes)
    var_s = (n * (n - 1) * (2 * n + 5) - _tie_term(ys) - _tie_term(ts)) / 18.0
    z = _normal_quantile(0.5 + confidence / 2.0)
    c = z * math.sqrt(max(var_s, 0.0))
    lo_i = max(0, min(big_n - 1, math.floor((big_n - c) / 2.0)))
    hi_i = max(0, min(big_n - 1, math.ceil((big_n + c) / 2.0)))
    return median(slopes), slopes[lo_i], slopes[hi_i]


def reduce_points(
    ts: Sequence[float], ys: Sequence[float], max_points: int
) -> tuple[list[float], list[float]]:
    """Block means: at most ``max_points`` points, each the mean of consecutive samples."""
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    n = len(ts)
    if n <= max_points:
        return list(map(float, ts)), list(map(float, ys))
    out_t: list[float] = []
    out_y: list[float] = []
    for k in range(max_points):
        a = k * n // max_points
        b = (k + 1) * n // max_points
        m = b - a
        out_t.append(math.fsum(ts[a:b]) / m)
        out_y.append(math.fsum(ys[a:b]) / m)
    return out_t, out_y


def drift(first: Sequence[float], last: Sequence[float]) -> float:
    """Latency drift as a ratio: ``median(last) / median(first) - 1`` (+0.2 = 20 % slower)."""
    if not first or not last:
        raise ValueError("drift needs latencies in both the first and the last part")
    base = median(first)
    if base <= 0:
        raise ValueError(f"drift needs a positive first-part median, got {base}")
    return median(last) / base - 1.0


# --------------------------------------------------------------------------- leak estimate
@dataclass(frozen=True)
class LeakEstimate:
    """A robust memory growth rate in bytes per hour, with its confidence bound and verdict.

    ``bytes_per_h``/``lower``/``upper`` are the Theil–Sen slope after warm-up and its
    ``confidence`` interval (None when there were too few samples, see ``reason``).
    ``tail_bytes_per_h`` is the slope of the last half of the window, ``floor_bytes_per_h`` the
    slope of the block minima. ``established`` says the growth is real and persistent (see the
    module docstring); ``gate_bytes_per_h`` is what a ``leak<...`` gate compares.
    """

    bytes_per_h: float | None
    lower: float | None
    upper: float | None
    n: int
    span_s: float
    tail_bytes_per_h: float | None = None
    established: bool = False
    reason: str = ""
    confidence: float = 0.95
    warmup_s: float = 0.0
    floor_bytes_per_h: float | None = None

    @property
    def valid(self) -> bool:
        return self.bytes_per_h is not None

    @property
    def gate_bytes_per_h(self) -> float | None:
        """The ``leak`` metric: established growth rate, 0 when growth is not established."""
        if self.bytes_per_h is None:
            return None
        if not self.established:
            return 0.0
        rates = [self.bytes_per_h, self.tail_bytes_per_h, self.floor_bytes_per_h]
        return max(0.0, min(r for r in rates if r is not None))

    @property
    def bound(self) -> float | None:
        """Half the width of the confidence interval (the ``±`` shown next to the rate)."""
        if self.lower is None or self.upper is None:
            return None
        return (self.upper - self.lower) / 2.0

    @property
    def growth_bytes(self) -> float | None:
        """Estimated growth over the analysed window (slope × span)."""
        if self.bytes_per_h is None:
            return None
        return self.bytes_per_h * self.span_s / _HOUR

    def resolves(self, limit_bytes_per_h: float) -> bool:
        """True when the window was long/quiet enough to tell ``limit`` from zero growth."""
        b = self.bound
        return b is not None and b < limit_bytes_per_h

    def is_leak(self, limit_bytes_per_h: float) -> bool:
        return is_leak(self, limit_bytes_per_h)

    def describe(self) -> str:
        if self.bytes_per_h is None:
            return f"leak not measured: {self.reason}"
        pct = f"{self.confidence * 100:.0f}%"
        text = f"{_signed_size(self.bytes_per_h)}/h ({pct}: "
        text += f"{_signed_size(self.lower or 0.0)}/h..{_signed_size(self.upper or 0.0)}/h"
        text += f", n={self.n} over {format_duration(self.span_s)})"
        return text + (f"; {self.reason}" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_per_h": self.bytes_per_h,
            "lower": self.lower,
            "upper": self.upper,
            "bound": self.bound,
            "n": self.n,
            "span_s": self.span_s,
            "tail_bytes_per_h": self.tail_bytes_per_h,
            "established": self.established,
            "gate_bytes_per_h": self.gate_bytes_per_h,
            "reason": self.reason,
            "confidence": self.confidence,
            "warmup_s": self.warmup_s,
            "floor_bytes_per_h": self.floor_bytes_per_h,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeakEstimate:
        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        return cls(
            bytes_per_h=opt("bytes_per_h"),
            lower=opt("lower"),
            upper=opt("upper"),
            n=int(d.get("n", 0)),
            span_s=float(d.get("span_s", 0.0)),
            tail_bytes_per_h=opt("tail_bytes_per_h"),
            established=bool(d.get("established", False)),
            reason=str(d.get("reason", "")),
            confidence=float(d.get("confidence", 0.95)),
            warmup_s=float(d.get("warmup_s", 0.0)),
            floor_bytes_per_h=opt("floor_bytes_per_h"),
        )


def _signed_size(b: float) -> str:
    return ("+" if b >= 0 else "") + format_size(b)


def _block_minima(
    ts: Sequence[float], ys: Sequence[float], blocks: int
) -> tuple[list[float], list[float]]:
    n = len(ts)
    out_t: list[float] = []
    out_y: list[float] = []
    for k in range(blocks):
        a, b = k * n // blocks, (k + 1) * n // blocks
        out_t.append(math.fsum(ts[a:b]) / (b - a))
        out_y.append(min(ys[a:b]))
    return out_t, out_y


def _slope_and_tail(
    ts: Sequence[float], ys: Sequence[float], confidence: float
) -> tuple[float, float, float | None]:
    """(slope, lower bound at ``confidence``, last-half slope) in y units per second."""
    got = sen_interval(ts, ys, confidence)
    assert got is not None
    half = len(ts) // 2
    tail = theil_sen(ts[half:], ys[half:]) if len(ts) - half >= 3 else None
    return got[0], got[1], tail


def estimate_leak(
    times: Sequence[float],
    values: Sequence[float],
    *,
    warmup: float = 0.0,
    origin: float | None = None,
    confidence: float = 0.95,
    max_points: int = MAX_POINTS,
    persist_ratio: float = PERSIST_RATIO,
    decision_confidence: float = DECISION_CONFIDENCE,
) -> LeakEstimate:
    """Robust growth rate of ``values`` (bytes) over ``times`` (seconds), see module docstring.

    Samples before ``origin + warmup`` are ignored (``origin`` defaults to the first time).
    """
    if len(times) != len(values):
        raise ValueError("times and values differ in length")
    if not times:
        return LeakEstimate(None, None, None, 0, 0.0, reason="no samples", warmup_s=warmup)
    start = (times[0] if origin is None else origin) + warmup
    pairs = [(float(t), float(v)) for t, v in zip(times, values, strict=True) if t >= start]
    pairs.sort(key=lambda p: p[0])
    n = len(pairs)
    span = pairs[-1][0] - pairs[0][0] if pairs else 0.0
    if n < MIN_POINTS or span <= 0:
        return LeakEstimate(
            None, None, None, n, span, confidence=confidence, warmup_s=warmup,
            reason=f"too few samples after warm-up ({n}, need {MIN_POINTS})",
        )
    ts = [p[0] for p in pairs]
    ys = [p[1] for p in pairs]
    rt, ry = reduce_points(ts, ys, max_points)
    got = sen_interval(rt, ry, confidence)
    assert got is not None  # span > 0 guarantees distinct times
    slope, lower, upper = (x * _HOUR for x in got)
    s_slope, s_low, s_tail = _slope_and_tail(rt, ry, decision_confidence)
    tail = None if s_tail is None else s_tail * _HOUR
    floor: float | None = None
    f_low: float | None = None
    blocks = min(FLOOR_BLOCKS, n // 3)
    if blocks >= MIN_FLOOR_BLOCKS:
        ft, fy = _block_minima(ts, ys, blocks)
        f_slope, f_low, _ = _slope_and_tail(ft, fy, decision_confidence)
        floor = f_slope * _HOUR
    level = f"{decision_confidence * 100:.0f}%"
    established = False
    if s_low <= 0:
        reason = (
            f"growth not established at {level} (the {confidence * 100:.0f}% interval is "
            f"{_signed_size(lower)}/h..{_signed_size(upper)}/h)"
        )
    elif s_tail is not None and s_tail < persist_ratio * s_slope:
        reason = (
            f"growth stopped: last half {_signed_size(s_tail * _HOUR)}/h vs "
            f"{_signed_size(slope)}/h overall (warm-up then plateau, not a leak)"
        )
    elif floor is not None and f_low is not None and f_low <= 0:
        reason = (
            f"the floor does not rise ({_signed_size(floor)}/h, not established at {level}): "
            "only the peaks grow (garbage or temporaries freed later), not a leak"
        )
    else:
        established = True
        reason = "growth established and persistent"
    return LeakEstimate(
        bytes_per_h=slope,
        lower=lower,
        upper=upper,
        n=n,
        span_s=span,
        tail_bytes_per_h=tail,
        established=established,
        reason=reason,
        confidence=confidence,
        warmup_s=warmup,
        floor_bytes_per_h=floor,
    )


def is_leak(estimate: LeakEstimate, limit_bytes_per_h: float) -> bool:
    """The leak decision: established, persistent growth faster than the limit.

    Noise (interval includes zero), warm-up-then-plateau (last half flat) and garbage that is
    collected later (floor flat) are not leaks.
    An estimate without data is not a leak either; gates treat its ``None`` metric as
    "not measured".
    """
    rate = estimate.gate_bytes_per_h
    return rate is not None and estimate.established and rate > limit_bytes_per_h


def session_leak_rate(series: Sequence[tuple[float, float]]) -> float | None:
    """Memory growth of a test process across a session, bytes/h (the session ``leak`` metric).

    ``series`` is ``(seconds, rss)``. The first 20 % of the session (imports, fixtures, caches)
    is warm-up; the value is the established rate (0 when growth is not established).
    """
    if len(series) < 2:
        return None
    pts = sorted(series)
    span = pts[-1][0] - pts[0][0]
    est = estimate_leak([p[0] for p in pts], [p[1] for p in pts], warmup=0.2 * span)
    return est.gate_bytes_per_h


# --------------------------------------------------------------------------- repetitions
@dataclass(frozen=True)
class RepetitionTrend:
    """Memory and duration trends of one test across repetitions (pytest-repeat ``--count``).

    ``memory_per_run`` is the Theil–Sen slope of the test's memory (bytes per run) after the
    warm-up runs; ``memory_grows`` flags growth that is significant, persistent and larger in
    total than ``min_growth`` (RSS moves in pages and allocator chunks: smaller growth cannot be
    told from noise). ``duration_change`` is ``median(last third) / median(first third) - 1``;
    ``duration_drifts`` flags a significant upward trend beyond ``drift_limit`` and
    ``min_duration_change`` seconds.
    """

    runs: int
    memory_per_run: float
    memory_lower: float | None
    memory_upper: float | None
    memory_growth: float
    memory_grows: bool
    duration_change: float
    duration_drifts: bool
    memory_note: str = ""
    duration_note: str = ""

    @classmethod
    def from_runs(
        cls,
        durations: Sequence[float],
        mem_deltas: Sequence[float] | None = None,
        *,
        rss_after: Sequence[float] | None = None,
        warmup_runs: int | None = None,
        min_growth: float = 256 * 1024,
        drift_limit: float = 0.2,
        min_duration_change: float = 0.001,
        confidence: float = 0.95,
    ) -> RepetitionTrend:
        """Build from per-run durations (seconds) and per-run memory: either ``mem_deltas``
        (RSS after - before each run; accumulated into a series) or ``rss_after``."""
        runs = len(durations)
        if mem_deltas is not None:
            acc = 0.0
            memory: list[float] = []
            for d in mem_deltas:
                acc += float(d)
                memory.append(acc)
        elif rss_after is not None:
            memory = [float(v) for v in rss_after]
        else:
            memory = []
        skip = max(1, runs // 10) if warmup_runs is None else max(0, warmup_runs)
        per_run, lo, hi, growth, grows, mnote = _memory_trend(
            memory, skip, min_growth, confidence
        )
        change, drifts, dnote = _duration_trend(
            list(durations), skip, drift_limit, min_duration_change, confidence
        )
        return cls(runs, per_run, lo, hi, growth, grows, change, drifts, mnote, dnote)

    @property
    def verdict(self) -> str:
        flags = [f for f, on in (("LEAK?", self.memory_grows),
                                 ("SLOWER?", self.duration_drifts)) if on]
        return " ".join(flags) if flags else "ok"

    def memory_label(self) -> str:
        """``"+12KB/run ↑"`` when memory grows, else ``"flat"`` (with the slope when not 0)."""
        if self.memory_grows:
            return f"{_signed_size(self.memory_per_run)}/run ↑"
        return "flat"

    def duration_label(self) -> str:
        if self.duration_drifts:
            return f"{self.duration_change * 100:+.0f}% ↑"
        return "flat"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "memory_per_run_bytes": self.memory_per_run,
            "memory_lower": self.memory_lower,
            "memory_upper": self.memory_upper,
            "memory_growth_bytes": self.memory_growth,
            "memory_grows": self.memory_grows,
            "duration_change": self.duration_change,
            "duration_drifts": self.duration_drifts,
            "memory_note": self.memory_note,
            "duration_note": self.duration_note,
            "verdict": self.verdict,
        }


def _memory_trend(
    memory: list[float], skip: int, min_growth: float, confidence: float
) -> tuple[float, float | None, float | None, float, bool, str]:
    ys = memory[skip:]
    if len(ys) < MIN_POINTS:
        return 0.0, None, None, 0.0, False, f"too few runs ({len(memory)}) for a memory trend"
    xs = [float(i) for i in range(skip, skip + len(ys))]
    got = sen_interval(xs, ys, confidence)
    assert got is not None
    slope, lo, hi = got
    growth = slope * (len(ys) - 1)
    _, decision_lo, tail = _slope_and_tail(xs, ys, DECISION_CONFIDENCE)
    if decision_lo <= 0:
        return slope, lo, hi, growth, False, "no significant growth"
    if tail is not None and tail < PERSIST_RATIO * slope:
        return slope, lo, hi, growth, False, "growth stopped in the later runs"
    if growth < min_growth:
        return slope, lo, hi, growth, False, (
            f"growth {format_size(growth)} is below the {format_size(min_growth)} noise floor"
        )
    return slope, lo, hi, growth, True, f"grows {_signed_size(slope)}/run"


def _duration_trend(
    durations: list[float], skip: int, limit: float, min_abs: float, confidence: float
) -> tuple[float, bool, str]:
    ys = durations[skip:]
    if len(ys) < MIN_POINTS:
        return 0.0, False, f"too few runs ({len(durations)}) for a duration trend"
    third = max(1, len(ys) // 3)
    first, last = ys[:third], ys[-third:]
    m_first, m_last = median(first), median(last)
    change = m_last / m_first - 1.0 if m_first > 0 else 0.0
    xs = [float(i) for i in range(len(ys))]
    got = sen_interval(xs, ys, max(confidence, DECISION_CONFIDENCE))
    assert got is not None
    if change <= limit:
        return change, False, "within the drift limit"
    if m_last - m_first < min_abs:
        return change, False, f"change below {format_duration(min_abs)}"
    if got[1] <= 0:
        return change, False, "no significant upward trend"
    return change, True, f"{change * 100:+.0f}% slower in the last third"


# --------------------------------------------------------------------------- sparkline
def sparkline(values: Sequence[float], width: int = 8, min_range: float = 0.0) -> str:
    """``▁▂▃▄▅▆▇█`` line of ``values`` resampled to ``width`` buckets (bucket means).

    The scale runs from the minimum to ``max(maximum, minimum + min_range)``, so noise smaller
    than ``min_range`` stays flat instead of being stretched to full height.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals or width < 1:
        return ""
    if len(vals) > width:
        n = len(vals)
        vals = [
            math.fsum(vals[k * n // width:(k + 1) * n // width])
            / ((k + 1) * n // width - k * n // width)
            for k in range(width)
        ]
    lo, hi = min(vals), max(vals)
    hi = max(hi, lo + min_range)
    if hi <= lo:
        return SPARK_CHARS[0] * len(vals)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[min(top, max(0, round((v - lo) / (hi - lo) * top)))] for v in vals)
