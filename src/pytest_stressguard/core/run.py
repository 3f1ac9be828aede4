"""One run's shared state (:class:`Run`) and the caller's side of it (:class:`Waiter`).

The sync and async runners (:mod:`.sync_runner`, :mod:`.async_runner`) share these: the users
read the run's clocks and halt flag, the waiter decides when the run ends and folds the users'
buffers into progress about once a second.

Busy users are counted without a shared lock (``up`` is a deque: its append, pop and len are
atomic): with thousands of threads, a lock taken by every user at its start lines them all up
behind a holder that lost the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .collector import Buffer, Collector
from .histogram import LatencyHistogram
from .loadspec import LoadSpec, default_max_users
from .result import LOOP_LAG_SATURATION, LoadInterrupted, LoadResult, Progress, Saturation
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["LoopLag", "Outcome", "Run", "Waiter"]

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
        self.up: collections.deque[None] = collections.deque()  # one entry per busy user
        self.halted_clock = math.inf  # when the run was halted (clock)
        self.last_down = -math.inf  # when a user last went down (clock)
        # closed-model users: (first start, relative; their buffer): were they due and idle?
        self.due: list[tuple[float, Buffer]] = []
        self.not_created = 0  # users whose thread could not be created
        self.start_error = ""  # why users could not be started
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
        if not self.halted:
            self.halted_clock = self.clock()
        self.halted = True
        self.halt.set()

    @property
    def active(self) -> int:
        return len(self.up)

    @property
    def peak_active(self) -> int:
        return max((b.peak for b in self.collector.bufs), default=0)

    def user_up(self, buf: Buffer) -> None:
        up = self.up
        up.append(None)
        n = len(up)
        if n > buf.peak:  # each user keeps its own peak: no write shared between threads
            buf.peak = n

    def user_down(self) -> None:
        self.up.pop()
        self.last_down = self.clock()

    def load_end(self) -> float:
        """The end of the load: when the last user that finished went down, or the halt (the
        planned end at the latest) if that came later. Not the grace spent on stuck users."""
        return max(min(self.halted_clock, self.stop_at), self.last_down)

    def could_not_start(self, users: int) -> None:
        """``users`` could not be started (``start_error`` says why)."""
        self.not_created += users

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

    def late_users(self, outcome: Outcome) -> int:
        """Closed-model users that were due before the halt but never went up: their thread or
        task got no CPU in time. Not counted when the run ended early on purpose (iterations
        all taken, stop, Ctrl-C, an error): then idle users were simply not needed."""
        if self.iterations_done or outcome.interrupted or self.fatal is not None:
            return 0
        halted = self.halted_clock - self.start
        return sum(1 for begin, buf in self.due if buf.peak == 0 and begin < halted)

    def result(
        self,
        outcome: Outcome,
        recorder: StatsRecorder,
        cpu: float,
        wall: float,
        lag: LoopLag | None = None,
    ) -> LoadResult:
        """Fold what is left and build the result; ``cpu``/``wall`` and the loop ``lag`` judge
        the generator's saturation."""
        spec = self.spec
        c = self.collector
        c.pull(None)
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
        requested = self.max_users
        if self.not_created:
            warnings.append(
                f"{self.not_created} of {requested} users could not be started "
                f"({self.start_error}); the run went on with the others"
            )
        late = self.late_users(outcome)
        if late:
            warnings.append(
                f"{late} of {requested} users were due but never ran: their threads or tasks "
                "got no CPU before the end (too many users for this machine? spread them with "
                "pytest -n, or use an async body)"
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
        cpu_ratio = cpu / wall if wall > 0 else 0.0
        if lag is None:
            sat = Saturation.judge(cpu_ratio, None, run_s=wall)
        else:
            p99 = lag.hist.p(99) if lag.hist.count else None
            sat = Saturation.judge(cpu_ratio, p99, lag.over, lag.worst, wall)
        if sat.saturated:  # the one place it is said (the verdict shows the warnings)
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
            abandoned_users=outcome.stuck,
            users_not_started=self.not_created + late,
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
    stuck: int  # users abandoned inside an iteration
    keyboard: bool = False


@dataclass
class LoopLag:
    """What the async runner's ticker saw: how late the loop woke it up (seconds)."""

    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    over: int = 0  # samples later than LOOP_LAG_SATURATION
    worst: float = 0.0  # the longest stall

    def record(self, late: float) -> None:
        self.hist.record(late)
        if late > LOOP_LAG_SATURATION:
            self.over += 1
        if late > self.worst:
            self.worst = late


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
        # the users up at the start: a starved caller's thread may not sample them for a while
        run.collector.note_users(int(self.now - run.start), run.active)

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
        if not run.halted:  # users stuck after the end are not load
            run.collector.note_users(int(now - run.start), run.active)
        if now >= self.next_progress:
            late = math.floor((now - self.next_progress) / self.interval) + 1
            self.next_progress += self.interval * max(1, late)
            run.collector.pull(int(now - run.start))
            self.engine._emit(run)
