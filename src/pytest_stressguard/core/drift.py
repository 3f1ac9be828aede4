"""Soak drift: iteration latencies sampled in constant memory (first part, last part, and 20
slices of the measured window), and the trend of the slices that says whether a drift is
established beyond the run's own spread (see core/soak.py)."""

from __future__ import annotations

import random
import threading
from array import array
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from .trends import drift, median, sen_interval

if TYPE_CHECKING:
    from .soak import SoakSpec

T = TypeVar("T")

#: Latencies kept per drift part (a fixed reservoir: constant memory in a soak of any length).
RESERVOIR = 4096
#: Fewest successful iterations per part for a drift figure.
MIN_DRIFT_ITERATIONS = 3
#: The measured window is cut in this many slices; the trend of their medians says whether a
#: drift is established beyond the run's own spread.
DRIFT_SLICES = 20
#: Latencies kept per slice (a reservoir: each slice's median in constant memory).
SLICE_RESERVOIR = 512
#: Fewest slices with a median for a drift trend.
MIN_DRIFT_SLICES = 6

class Reservoir:
    """Uniform random sample of at most ``cap`` values (Algorithm R), preallocated."""

    def __init__(self, cap: int, seed: int) -> None:
        self.values = array("d", [0.0]) * cap
        self.cap = cap
        self.size = 0
        self.seen = 0
        self.rng = random.Random(seed)

    def add(self, v: float) -> None:
        self.seen += 1
        if self.size < self.cap:
            self.values[self.size] = v
            self.size += 1
        else:
            j = self.rng.randrange(self.seen)
            if j < self.cap:
                self.values[j] = v

    def items(self) -> list[float]:
        return list(self.values[: self.size])


class DriftProbe:
    """Records iteration latencies that start in the first and last part of the window."""

    def __init__(self, spec: SoakSpec, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.first = Reservoir(RESERVOIR, 1)
        self.last = Reservoir(RESERVOIR, 2)
        self.slices = [Reservoir(SLICE_RESERVOIR, 3 + i) for i in range(DRIFT_SLICES)]
        self.start = 0.0
        part = spec.drift_part * spec.measured
        self.first_from = spec.warmup
        self.first_to = spec.warmup + part
        self.last_from = spec.duration - part
        self.slice_s = spec.measured / DRIFT_SLICES

    def begin(self) -> None:
        self.start = self.clock()

    def record(self, t0: float, t1: float) -> None:
        rel = t0 - self.start
        if rel < self.first_from:
            return
        index = min(int((rel - self.first_from) / self.slice_s), DRIFT_SLICES - 1)
        with self.lock:
            self.slices[index].add(t1 - t0)
            if rel < self.first_to:
                self.first.add(t1 - t0)
            elif rel >= self.last_from:
                self.last.add(t1 - t0)

    def wrap(self, fn: Callable[[], T]) -> Callable[[], T]:
        clock, record = self.clock, self.record

        def body() -> T:
            t0 = clock()
            out = fn()
            record(t0, clock())
            return out

        return body

    def wrap_async(self, fn: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        clock, record = self.clock, self.record

        async def body() -> T:
            t0 = clock()
            out = await fn()
            record(t0, clock())
            return out

        return body

    def result(self) -> tuple[float | None, float | None, float | None, str]:
        first, last = self.first.items(), self.last.items()
        if len(first) < MIN_DRIFT_ITERATIONS or len(last) < MIN_DRIFT_ITERATIONS:
            return None, None, None, (
                f"too few successful iterations for drift (first part {len(first)}, "
                f"last part {len(last)}, need {MIN_DRIFT_ITERATIONS} each)"
            )
        try:
            return drift(first, last), median(first), median(last), ""
        except ValueError as exc:
            return None, None, None, str(exc)

    def trend(self, base: float) -> tuple[float, float] | None:
        """The 95 % interval of the window's change (Theil–Sen over slice medians, Sen's
        interval), as a ratio of ``base``; None when too few slices had iterations."""
        points = [(i + 0.5, median(r.items())) for i, r in enumerate(self.slices)
                  if r.size >= MIN_DRIFT_ITERATIONS]
        if len(points) < MIN_DRIFT_SLICES or base <= 0:
            return None
        fit = sen_interval([p[0] for p in points], [p[1] for p in points])
        if fit is None:
            return None
        _, lower, upper = fit
        span = DRIFT_SLICES - 1  # slice centres, first to last
        return lower * span / base, upper * span / base
