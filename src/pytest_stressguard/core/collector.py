"""Per-second collection: the users' recording buffers and the fold into totals and timeline.

Cost
----
The sync closed hot path is: clock, call, clock, pack ``(second, microseconds)`` into one int
and count it in a per-user dict under a per-user (uncontended) lock. A collector on the caller's
thread swaps those dicts out about once a second and folds them into the HDR histograms and the
per-second timeline, so the users never touch an HdrHistogram.

Users per second
----------------
A row's ``users`` is the larger of the busy users sampled by the caller's thread in that second
and the number of users that finished an iteration in it (counted from the buffers at the fold),
so a row is never 0 when users ran, even if the caller's thread was starved of the GIL.
"""

from __future__ import annotations

import math
import threading

from .histogram import LatencyHistogram
from .result import TimelineRow
from .stats import error_key

__all__ = ["MASK", "Buffer", "Collector"]

MASK = (1 << 32) - 1  # a latency in microseconds is packed with its second: (sec << 32) | us


class Buffer:
    """One recording thread's buffers: ``{(sec << 32) | us: count}`` dicts, swapped out by the
    collector under ``lock``. ``peak`` is written by its user only (the most users it saw busy
    when it went up; 0: it never ran), ``seen`` by the collector only."""

    __slots__ = ("dropped", "err_lat", "errs", "lat", "lock", "odd", "peak", "seen", "warm")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[int, int] = {}
        self.err_lat: dict[int, int] = {}
        self.errs: dict[str, int] = {}
        self.dropped: dict[int, int] = {}
        self.odd: list[tuple[int, float, bool]] = []  # (sec, seconds, error): out of packing range
        self.warm = 0
        self.peak = 0
        self.seen = -1  # the last second this buffer was counted in a row's users

    def add_error(self, sec: int, seconds: float, exc: BaseException) -> None:
        try:
            kind = error_key(exc)
        except Exception:  # an exception whose __str__ fails
            kind = type(exc).__name__
        us = int(seconds * 1e6 + 0.5)
        with self.lock:
            self.errs[kind] = self.errs.get(kind, 0) + 1
            if 0 <= us <= MASK and sec >= 0:
                key = (sec << 32) | us
                self.err_lat[key] = self.err_lat.get(key, 0) + 1
            else:
                self.odd.append((sec, seconds, True))

    def add_odd(self, sec: int, seconds: float) -> None:
        with self.lock:
            self.odd.append((sec, seconds, False))

    def add_dropped(self, sec: int, n: int = 1) -> None:
        with self.lock:
            self.dropped[sec] = self.dropped.get(sec, 0) + n


class _Second:
    __slots__ = ("dropped", "errors", "hist", "iterations", "p95_ms", "ran", "users")

    def __init__(self, hist: LatencyHistogram) -> None:
        self.hist: LatencyHistogram | None = hist
        self.iterations = 0
        self.errors = 0
        self.dropped = 0
        self.users = -1
        self.ran = 0  # buffers (users) that finished an iteration in this second
        self.p95_ms: float | None = None


class Collector:
    """Folds the users' buffers into the totals and the per-second rows. Runs on the caller's
    thread only (no concurrency with itself)."""

    def __init__(self) -> None:
        self.bufs: list[Buffer] = []
        self.bufs_lock = threading.Lock()
        self.latency = LatencyHistogram()
        self.error_latency = LatencyHistogram()
        self.errors_by_kind: dict[str, int] = {}
        self.iterations = 0
        self.errors = 0
        self.dropped = 0
        self.seconds: dict[int, _Second] = {}
        self._pool: list[LatencyHistogram] = []

    def new_buf(self) -> Buffer:
        b = Buffer()
        with self.bufs_lock:
            self.bufs.append(b)
        return b

    @property
    def warm(self) -> int:
        return sum(b.warm for b in self.bufs)

    def _second(self, sec: int) -> _Second:
        s = self.seconds.get(sec)
        if s is None:
            # Reuse released histograms: an HdrHistogram (~180 KB) sits in a reference cycle,
            # so one made and dropped every second is freed only by the cyclic collector,
            # which may not run for minutes: the generator's own RSS then grows like a leak.
            s = self.seconds[sec] = _Second(self._pool.pop() if self._pool else LatencyHistogram())
        return s

    def pull(self, now_sec: int | None) -> None:
        """Swap out every buffer and fold it in. Seconds before ``now_sec - 1`` are finalised
        (their p95 computed, their histogram released); ``None`` finalises everything."""
        with self.bufs_lock:
            bufs = list(self.bufs)
        for b in bufs:
            with b.lock:
                lat, b.lat = b.lat, {}
                elat, b.err_lat = b.err_lat, {}
                errs, b.errs = b.errs, {}
                dropped, b.dropped = b.dropped, {}
                odd, b.odd = b.odd, []
            if lat or elat:
                self._count_user(b, lat, elat)
            self._fold(lat, elat, errs, dropped, odd)
        self._finalise(None if now_sec is None else now_sec - 1)

    def _count_user(self, b: Buffer, lat: dict[int, int], elat: dict[int, int]) -> None:
        # A buffer's seconds only grow (its user's clock does), so a second split over two
        # folds is counted once.
        secs = {k >> 32 for k in lat}
        secs.update(k >> 32 for k in elat)
        for sec in secs:
            if sec > b.seen:
                self._second(sec).ran += 1
        b.seen = max(b.seen, *secs)

    def note_users(self, sec: int, users: int) -> None:
        """Sample the number of busy users; a row shows the largest sample of its second."""
        if sec >= 0:
            s = self._second(sec)
            if users > s.users:
                s.users = users

    def _fold(
        self,
        lat: dict[int, int],
        elat: dict[int, int],
        errs: dict[str, int],
        dropped: dict[int, int],
        odd: list[tuple[int, float, bool]],
    ) -> None:
        latency, second = self.latency, self._second
        for key, n in lat.items():
            sec, us = key >> 32, key & MASK
            latency.record_us(us, n)
            s = second(sec)
            s.iterations += n
            if s.hist is not None:
                s.hist.record_us(us, n)
            self.iterations += n
        for key, n in elat.items():
            sec, us = key >> 32, key & MASK
            self.error_latency.record_us(us, n)
            s = second(sec)
            s.iterations += n
            s.errors += n
            self.iterations += n
            self.errors += n
        for sec_i, seconds, is_err in odd:
            s = second(max(0, sec_i))
            s.iterations += 1
            self.iterations += 1
            if is_err:
                self.error_latency.record(seconds)
                s.errors += 1
                self.errors += 1
            else:
                self.latency.record(seconds)
                if s.hist is not None:
                    s.hist.record(seconds)
        for k, n in errs.items():
            self.errors_by_kind[k] = self.errors_by_kind.get(k, 0) + n
        for sec_i, n in dropped.items():
            second(sec_i).dropped += n
            self.dropped += n

    def _finalise(self, before: int | None) -> None:
        for sec, s in self.seconds.items():
            if s.hist is None or (before is not None and sec >= before):
                continue
            if s.hist.count:
                s.p95_ms = s.hist.p(95) * 1e3
            s.hist.reset()
            if len(self._pool) < 4:
                self._pool.append(s.hist)
            s.hist = None

    def recent(self, now_sec: int) -> tuple[float, float | None]:
        """(rps, p95_ms) of the last complete second, for progress."""
        s = self.seconds.get(now_sec - 1)
        if s is None:
            return 0.0, None
        if s.hist is not None and s.hist.count:
            return float(s.iterations), s.hist.p(95) * 1e3
        return float(s.iterations), s.p95_ms

    def rows(self, from_rel: float, end_rel: float) -> list[TimelineRow]:
        """Timeline rows of the measured window ``from_rel .. end_rel`` (seconds since the
        start); a partial first/last second's ``rps`` is divided by the part it covers."""
        self._finalise(None)
        first = int(from_rel)
        if not self.seconds and end_rel <= first:
            return []
        last = max([*self.seconds.keys(), max(first, math.ceil(end_rel) - 1)])
        rows: list[TimelineRow] = []
        users = 0
        first_f = float(from_rel)
        for t in range(first, last + 1):
            s = self.seconds.get(t)
            if s is not None and s.users >= 0:
                users = s.users
            lo = max(first_f, float(t))
            hi = min(float(t + 1), max(end_rel, lo))
            width = hi - lo if hi - lo > 0.05 else 1.0  # partial first/last second
            if s is None:
                rows.append(TimelineRow(t, users, 0, 0.0, None, 0, 0))
                continue
            rows.append(
                TimelineRow(
                    t=t,
                    users=max(users, s.ran),
                    iterations=s.iterations,
                    rps=s.iterations / width,
                    p95_ms=s.p95_ms,
                    errors=s.errors,
                    dropped=s.dropped,
                )
            )
        return rows
