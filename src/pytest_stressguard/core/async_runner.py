"""Async bodies: one task per virtual user (closed model) or per busy arrival (open model), on
the running event loop.

The open-model scheduler sleeps on the event loop's timer, which rounds sleeps up to the next
millisecond, so async arrivals start up to ~1 ms late and that lateness is (correctly) part of
their latency. A lag ticker measures how late the loop wakes tasks up, and so how long the
loop was blocked (see :class:`~pytest_stressguard.core.result.Saturation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .collector import MASK, Buffer
from .loadspec import LoadSpec
from .result import LoadResult
from .run import LoopLag, Outcome, Run, Waiter
from .schedule import Arrivals, closed_intervals
from .stats import StatsRecorder, current_recorder

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["AsyncRunner"]

#: Interval of the loop-lag ticker (seconds).
LAG_TICK = 0.05
#: An async user yields to the loop at least this often even if its body never suspends.
_ASYNC_YIELD_EVERY = 0.005


class AsyncRunner:
    """Runs an ``async`` body for an :class:`~pytest_stressguard.core.engine.Engine`, as tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, fn: Callable[[], Awaitable[object]], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (an ``async`` iteration) as ``spec`` says (see :meth:`Engine.run_async`)."""
        run = Run(self.engine.clock, spec, is_async=True)
        recorder = StatsRecorder()
        token = current_recorder.set(recorder)
        tasks: set[asyncio.Task[None]] = set()
        in_body: dict[asyncio.Task[None], bool] = {}
        lag = LoopLag()
        cpu0, wall0 = time.process_time(), time.monotonic()
        run.begin()
        ticker = asyncio.create_task(self._lag_ticker(run, lag))
        try:
            if spec.is_open:
                tasks.add(
                    asyncio.create_task(self._scheduler(run, fn, tasks, in_body))
                )
            else:
                for i in range(spec.peak_users):
                    intervals = closed_intervals(spec, i)
                    buf = run.collector.new_buf()
                    run.due.append((intervals[0][0] if intervals else math.inf, buf))
                    t = asyncio.create_task(
                        self._closed_user(run, fn, intervals, in_body, buf)
                    )
                    tasks.add(t)
            outcome = await self._wait(run, tasks, in_body)
        except asyncio.CancelledError:
            run.stop(abort=True)
            for t in tasks:
                t.cancel()
            ticker.cancel()
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            partial = self.engine.last_result = run.result(
                Outcome(run.load_end(), True, 0), recorder, cpu, wall, lag
            )
            partial.interrupted = True
            raise
        finally:
            current_recorder.reset(token)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        result = self.engine.last_result = run.result(outcome, recorder, cpu, wall, lag)
        run.reraise(result)
        return result

    @staticmethod
    async def _lag_ticker(run: Run, lag: LoopLag) -> None:
        clock = time.perf_counter
        while not run.halted:
            t = clock()
            try:
                await asyncio.sleep(LAG_TICK)
            finally:
                # also when cancelled at the end: a block the run ended in is seen here only
                late = clock() - t - LAG_TICK
                if late > 0:
                    lag.record(late)

    async def _wait(
        self,
        run: Run,
        tasks: set[asyncio.Task[None]],
        in_body: dict[asyncio.Task[None], bool],
    ) -> Outcome:
        waiter = Waiter(self.engine, run)
        pending = {t for t in tasks if not t.done()}
        while pending:
            waiter.decide()
            if run.halted:
                # users waiting (ramp, think time) are cancelled; users mid-iteration finish
                for t in list(tasks):
                    if t.done():
                        continue
                    if not in_body.get(t, False) or (run.aborted and t is run.scheduler_task):
                        t.cancel()
                if waiter.expired():
                    break
            pending = {t for t in tasks if not t.done()}
            if not pending:
                break
            await asyncio.wait(pending, timeout=waiter.timeout())
            pending = {t for t in tasks if not t.done()}
            waiter.tick()
        interrupted = waiter.interrupted
        run.stop(abort=True)
        end = run.load_end()  # before the cancellation below takes the stuck users down
        stuck = [t for t in tasks if not t.done()]
        abandoned = sum(1 for t in stuck if t is not run.scheduler_task)
        for t in stuck:
            t.cancel()
        if stuck:
            await asyncio.gather(*stuck, return_exceptions=True)
        for t in tasks:
            if t.done() and not t.cancelled():
                exc = t.exception()
                if exc is not None:
                    run.fatal_error(exc)
        return Outcome(end=end, interrupted=interrupted, stuck=abandoned)

    @staticmethod
    async def _closed_user(
        run: Run,
        fn: Callable[[], Awaitable[object]],
        intervals: list[tuple[float, float]],
        in_body: dict[asyncio.Task[None], bool],
        buf: Buffer,
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        tickets = run.tickets
        limit = run.limit
        think = run.spec.think_time
        me = asyncio.current_task()
        assert me is not None
        mask = MASK
        sleep = asyncio.sleep
        for a, b in intervals:
            begin = start + a
            until = min(start + b, run.stop_at)
            now = clock()
            if begin >= until:
                continue
            if begin > now:
                await sleep(begin - now)
            if run.halted:
                return
            run.user_up(buf)
            last_yield = clock()
            try:
                while not run.halted:
                    t0 = clock()
                    if t0 >= until:
                        break
                    in_body[me] = True
                    if t0 < warm_end:
                        with contextlib.suppress(Exception):
                            await fn()
                        buf.warm += 1
                        t1 = clock()
                    else:
                        if tickets is not None and next(tickets) >= limit:
                            in_body[me] = False
                            run.out_of_tickets()
                            break
                        try:
                            await fn()
                        except Exception as exc:
                            t1 = clock()
                            buf.add_error(int(t1 - start), t1 - t0, exc)
                        else:
                            t1 = clock()
                            us = int((t1 - t0) * 1e6 + 0.5)
                            if 0 <= us <= mask:
                                key = (int(t1 - start) << 32) | us
                                d = buf.lat  # same thread as the collector: no lock needed
                                d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - t0)
                    in_body[me] = False
                    if think:
                        await sleep(think)
                        last_yield = clock()
                    elif t1 - last_yield >= _ASYNC_YIELD_EVERY:
                        await sleep(0)
                        last_yield = clock()
            finally:
                in_body[me] = False
                run.user_down()

    async def _scheduler(
        self,
        run: Run,
        fn: Callable[[], Awaitable[object]],
        tasks: set[asyncio.Task[None]],
        in_body: dict[asyncio.Task[None], bool],
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        arrivals = Arrivals(run.spec)
        buf = run.collector.new_buf()
        limit = run.limit
        max_users = run.max_users
        issued = 0
        busy = [0]

        async def job(intended: float, measured: bool) -> None:
            me = asyncio.current_task()
            assert me is not None
            run.user_up(buf)
            try:
                try:
                    await fn()
                except Exception as exc:
                    t1 = clock()
                    if measured:
                        buf.add_error(int(t1 - start), t1 - intended, exc)
                else:
                    t1 = clock()
                    if measured:
                        us = int((t1 - intended) * 1e6 + 0.5)
                        if 0 <= us <= MASK:
                            key = (int(t1 - start) << 32) | us
                            d = buf.lat
                            d[key] = d.get(key, 0) + 1
                        else:
                            buf.add_odd(int(t1 - start), t1 - intended)
                    else:
                        buf.warm += 1
            finally:
                busy[0] -= 1
                run.user_down()
                in_body.pop(me, None)
                tasks.discard(me)

        me = asyncio.current_task()
        assert me is not None
        run.scheduler_task = me
        in_body[me] = True  # not cancelled at a natural end: it accounts for every arrival
        k = 0
        while not run.aborted:
            rel = arrivals.time_of(k)
            if rel is None:
                break
            target = start + rel
            if target >= run.stop_at:
                break
            now = clock()
            if target > now:
                await asyncio.sleep(target - now)
                if run.aborted:
                    break
            k += 1
            measured = target >= warm_end
            if measured and limit:
                if issued >= limit:
                    break
                issued += 1
            if busy[0] < max_users:
                busy[0] += 1
                t = asyncio.create_task(job(target, measured))
                in_body[t] = True  # from now: the end must not cancel it before it starts
                tasks.add(t)
            elif measured:
                buf.add_dropped(int(target - start))
        if limit and issued >= limit:
            run.iterations_done = True
