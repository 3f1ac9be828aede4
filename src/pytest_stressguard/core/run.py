"""One run's shared state (:class:`Run`) and the caller's side of it (:class:`Waiter`).

The sync and async runners (:mod:`.sync_runner`, :mod:`.async_runner`) share these: the users
read the run's clocks and halt flag, the waiter decides when the run ends and folds the users'
buffers into progress about once a second.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .collector import Collector
from .histogram import LatencyHistogram
from .loadspec import LoadSpec, default_max_users
from .result import LoadInterrupted, LoadResult, Progress, Saturation
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Outcome", "Run", "Waiter"]

#: How often the caller's thread wakes up to check stop / deadlines (seconds).
TICK = 0.25


class Run:
    """State shared by the users of one run."""

    def __init__(self, clock: Callable[[], float], spec: LoadSpec, is_async: bool) -> None:
        self.spec = spec
        self.clock = clock
        self.is_async = is_async
        self.collector = Collector()
        self.halt = threading.Event()
        self.halted = False  # plain-attribute mirror of `halt` for the hot loops
        self.aborted = False
        self.scheduler_task: asyncio.Task[None] | None = None
        self.start = 0.0
        self.warm_end = 0.0
        self.stop_at = math.inf  # no new iteration starts at or after this (absolute)
        self.hard_end = math.inf
        total = spec.planned_duration
        self.planned = total
        self.tickets: itertools.count[int] | None = (
            itertools.count() if spec.iterations is not None else None
        )
        self.limit = spec.iterations if spec.iterations is not None else 0
        self.active = 0
        self.active_lock = threading.Lock()
        self.peak_active = 0
        self.fatal: BaseException | None = None
        self.warnings: list[str] = []
        self.iterations_done = False
        if spec.is_open:
            self.max_users = spec.max_users or default_max_users(spec.peak_rate, is_async)
        else:
            self.max_users = spec.peak_users

    def begin(self) -> None:
        self.start = self.clock()
        spec = self.spec
        self.warm_end = self.start + spec.warmup
        hard = spec.effective_max_duration
        self.hard_end = self.start + hard
        self.stop_at = self.start + (self.planned if self.planned is not None else hard)
        self.stop_at = min(self.stop_at, self.hard_end)

    def stop(self, abort: bool = False) -> None:
        """End the run. ``abort`` (stop event, Ctrl-C, fatal error, hard bound) also stops the
        open-model scheduler at once; a natural end lets it account for every arrival
        intended before the end (executed late or dropped), even when it runs behind."""
        if abort:
            self.aborted = True
        self.halted = True
        self.halt.set()

    def user_up(self) -> None:
        with self.active_lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)

    def user_down(self) -> None:
        with self.active_lock:
            self.active -= 1

    def out_of_tickets(self) -> None:
        self.iterations_done = True
        self.stop()

    def fatal_error(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stop(abort=True)

    def progress(self) -> Progress:
        now = self.clock()
        elapsed = now - self.start
        now_sec = int(elapsed)
        rps, p95 = self.collector.recent(now_sec)
        c = self.collector
        remaining: float | None
        if self.planned is not None:
            remaining = max(0.0, self.stop_at - now)
        elif self.limit and c.iterations:
            measured = max(1e-9, now - self.warm_end)
            remaining = max(0.0, measured * (self.limit - c.iterations) / c.iterations)
        else:
            remaining = None
        return Progress(
            elapsed_s=elapsed,
            remaining_s=remaining,
            users=self.active,
            rps=rps,
            p95_ms=p95,
            errors=c.errors,
            iterations=c.iterations,
            dropped=c.dropped,
            warming_up=now < self.warm_end,
        )


    def result(
        self,
        outcome: Outcome,
        recorder: StatsRecorder,
        cpu: float,
        wall: float,
        lag: LatencyHistogram | None,
        lag_over: int | None = None,
    ) -> LoadResult:
        """Fold what is left and build the result; ``cpu``/``wall`` and the loop ``lag`` judge
        the generator's saturation."""
        spec = self.spec
        c = self.collector
        c.pull(None, self.active)
        measured_from = self.warm_end if spec.warmup else self.start
        duration = max(0.0, outcome.end - measured_from)
        rows = c.rows(float(spec.warmup), outcome.end - self.start)
        warnings = list(self.warnings)
        if outcome.stuck:
            warnings.append(
                f"{outcome.stuck} user(s) were still inside an iteration {spec.effective_grace:g}s "
                "after the end and were abandoned; those iterations are not measured "
                "(a body that hangs? give it a timeout)"
            )
        if self.limit and c.iterations < self.limit and not outcome.interrupted and not (
            spec.is_open and c.iterations + c.dropped >= self.limit
        ):
            warnings.append(
                f"only {c.iterations} of {self.limit} iterations ran before max_duration "
                f"({spec.effective_max_duration:g}s)"
            )
        clamped = c.latency.clamped + c.error_latency.clamped
        if clamped:
            warnings.append(
                f"{clamped} latencies were outside the histogram range (0..1h) and were clamped"
            )
        lag_p99 = lag.p(99) if lag is not None and lag.count else None
        sat = Saturation.judge(cpu / wall if wall > 0 else 0.0, lag_p99, lag_over)
        if sat.saturated:
            warnings.append(f"load generator saturated: {sat.reason}")
        return LoadResult(
            iterations=c.iterations,
            errors=c.errors,
            dropped=c.dropped,
            duration_s=duration,
            latency=c.latency,
            error_latency=c.error_latency,
            timeline=rows,
            errors_by_kind=dict(c.errors_by_kind),
            endpoints=recorder.snapshot(),
            saturation=sat,
            warnings=warnings,
            interrupted=outcome.interrupted,
            warmup_iterations=c.warm,
            peak_users=self.peak_active,
            model="open" if spec.is_open else "closed",
        )

    def reraise(self, result: LoadResult) -> None:
        """Re-raise, in the caller's thread, what stopped a user (Ctrl-C as LoadInterrupted)."""
        fatal = self.fatal
        if fatal is not None:
            if isinstance(fatal, KeyboardInterrupt) and not isinstance(fatal, LoadInterrupted):
                result.interrupted = True
                raise LoadInterrupted(result) from fatal
            raise fatal


@dataclass
class Outcome:
    end: float
    interrupted: bool
    stuck: int
    keyboard: bool = False


class Waiter:
    """The caller's side of a run, shared by the sync and async waits: when to stop (stop event,
    hard deadline, planned end), when the grace after the halt is over, how long to sleep, and
    the once-a-second fold of the users' buffers into progress."""

    def __init__(self, engine: Engine, run: Run) -> None:
        self.engine = engine
        self.run = run
        self.grace = run.spec.effective_grace
        self.interval = engine.progress_interval
        self.next_progress = run.start + self.interval
        self.real_deadline = time.monotonic() + run.spec.effective_max_duration + self.grace
        self.halted_at: float | None = None
        self.interrupted = False
        self.now = run.clock()

    def decide(self) -> None:
        run, stop = self.run, self.engine.stop
        self.now = now = run.clock()
        if not run.aborted:
            if stop is not None and stop.is_set():
                self.interrupted = True
                run.stop(abort=True)
            elif time.monotonic() >= self.real_deadline - self.grace:
                run.stop(abort=True)
            elif now >= run.stop_at and not run.halted:
                run.stop()
        if run.halted and self.halted_at is None:
            self.halted_at = time.monotonic()

    def expired(self) -> bool:
        """Halted, and the users had their grace (or the hard deadline came)."""
        if self.halted_at is None:
            return False
        mono = time.monotonic()
        return mono - self.halted_at >= self.grace or mono >= self.real_deadline

    def timeout(self) -> float:
        run, now = self.run, self.now
        timeout = min(TICK, max(0.0, self.next_progress - now))
        if not run.halted:
            timeout = min(timeout, max(0.0, run.stop_at - now))
        return max(timeout, 0.001)

    def tick(self) -> None:
        run = self.run
        self.now = now = run.clock()
        run.collector.note_users(int(now - run.start), run.active)
        if now >= self.next_progress:
            late = math.floor((now - self.next_progress) / self.interval) + 1
            self.next_progress += self.interval * max(1, late)
            run.collector.pull(int(now - run.start), run.active)
            self.engine._emit(run)
