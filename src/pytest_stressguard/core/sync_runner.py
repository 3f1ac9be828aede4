"""Sync bodies: one thread per virtual user (closed model) or per busy worker (open model).

The open-model scheduler is a thread of its own that sleeps on the halt event until each
intended start; it wakes up on a futex, about 0.1 ms late at 20k/s on one core.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .collector import MASK
from .loadspec import LoadSpec
from .result import LoadInterrupted, LoadResult
from .run import Outcome, Run, Waiter
from .schedule import Arrivals, closed_intervals
from .stats import StatsRecorder, current_recorder

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["SyncRunner"]

#: How long a Ctrl-C waits for users in the middle of an iteration (seconds).
_INTERRUPT_JOIN = 2.0


class SyncRunner:
    """Runs a sync body for an :class:`~pytest_stressguard.core.engine.Engine`, in threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, fn: Callable[[], object], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (one iteration) as ``spec`` says (see :meth:`Engine.run_sync`)."""
        run = Run(self.engine.clock, spec, is_async=False)
        recorder = StatsRecorder()
        token = current_recorder.set(recorder)
        try:
            ctx = contextvars.copy_context()
        finally:
            current_recorder.reset(token)
        threads: list[threading.Thread] = []
        alive = [0]
        alive_lock = threading.Lock()
        all_done = threading.Event()

        def spawn(target: Callable[..., None], *args: object) -> None:
            def main() -> None:
                try:
                    target(*args)
                except BaseException as exc:  # re-raised in the caller's thread
                    run.fatal_error(exc)
                finally:
                    with alive_lock:
                        alive[0] -= 1
                        if alive[0] == 0:
                            all_done.set()

            with alive_lock:
                alive[0] += 1
            th = threading.Thread(
                target=ctx.copy().run, args=(main,), name=f"stressguard-user-{len(threads)}",
                daemon=True,
            )
            threads.append(th)
            th.start()

        cpu0, wall0 = time.process_time(), time.monotonic()
        run.begin()
        if spec.is_open:
            spawn(self._scheduler, run, fn, spawn)
        else:
            for i in range(spec.peak_users):
                spawn(self._closed_user, run, fn, closed_intervals(spec, i))
        outcome = self._wait(run, all_done, threads)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        result = self.engine.last_result = run.result(outcome, recorder, cpu, wall, None)
        run.reraise(result)
        if outcome.keyboard:
            raise LoadInterrupted(result)
        return result

    def _wait(
        self, run: Run, all_done: threading.Event, threads: list[threading.Thread]
    ) -> Outcome:
        waiter = Waiter(self.engine, run)
        interrupted = False
        keyboard = False
        try:
            while True:
                waiter.decide()
                if waiter.expired():
                    break
                if all_done.wait(waiter.timeout()):
                    break
                waiter.tick()
            interrupted = waiter.interrupted
        except KeyboardInterrupt:
            interrupted = keyboard = True
            run.stop(abort=True)
            deadline = time.monotonic() + min(waiter.grace, _INTERRUPT_JOIN)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                all_done.wait(max(0.0, deadline - time.monotonic()))
        end = run.clock()
        run.stop(abort=True)  # finished, or done waiting: nothing new may start
        # users that did not finish: give them a moment to notice the halt (sleepers wake up)
        stuck_deadline = time.monotonic() + 0.2
        for th in threads:
            th.join(max(0.0, stuck_deadline - time.monotonic()))
        stuck = sum(1 for th in threads if th.is_alive())
        if stuck and not all_done.is_set():
            end = run.clock()
        return Outcome(end=end, interrupted=interrupted, stuck=stuck, keyboard=keyboard)

    @staticmethod
    def _closed_user(
        run: Run, fn: Callable[[], object], intervals: list[tuple[float, float]]
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        tickets = run.tickets
        limit = run.limit
        think = run.spec.think_time
        halt = run.halt
        buf = run.collector.new_buf()
        lock = buf.lock
        mask = MASK
        for a, b in intervals:
            begin = start + a
            until = min(start + b, run.stop_at)
            now = clock()
            if begin >= until:
                continue
            if begin > now and halt.wait(begin - now):
                return
            if run.halted:
                return
            run.user_up()
            try:
                while not run.halted:
                    t0 = clock()
                    if t0 >= until:
                        break
                    if t0 < warm_end:
                        with contextlib.suppress(Exception):  # warm-up errors: not measured
                            fn()
                        buf.warm += 1
                    else:
                        if tickets is not None and next(tickets) >= limit:
                            run.out_of_tickets()
                            break
                        try:
                            fn()
                        except Exception as exc:
                            t1 = clock()
                            buf.add_error(int(t1 - start), t1 - t0, exc)
                        else:
                            t1 = clock()
                            us = int((t1 - t0) * 1e6 + 0.5)
                            if 0 <= us <= mask:
                                key = (int(t1 - start) << 32) | us
                                with lock:
                                    d = buf.lat
                                    d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - t0)
                    if think and halt.wait(think):
                        break
            finally:
                run.user_down()

    def _scheduler(
        self,
        run: Run,
        fn: Callable[[], object],
        spawn: Callable[..., None],
    ) -> None:
        """Open model: start iterations at their intended times on free worker threads."""
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        halt = run.halt
        arrivals = Arrivals(run.spec)
        jobs: queue.SimpleQueue[tuple[float, bool] | None] = queue.SimpleQueue()
        idle = [0]
        idle_lock = threading.Lock()
        workers = [0]
        sched_buf = run.collector.new_buf()
        limit = run.limit
        issued = 0
        max_users = run.max_users

        def worker(job: tuple[float, bool] | None) -> None:
            buf = run.collector.new_buf()
            lock = buf.lock
            while job is not None:
                intended, measured = job
                run.user_up()
                try:
                    try:
                        fn()
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
                                with lock:
                                    d = buf.lat
                                    d[key] = d.get(key, 0) + 1
                            else:
                                buf.add_odd(int(t1 - start), t1 - intended)
                        else:
                            buf.warm += 1
                finally:
                    run.user_down()
                with idle_lock:
                    idle[0] += 1
                job = jobs.get()

        k = 0
        try:
            while not run.aborted:
                rel = arrivals.time_of(k)
                if rel is None:
                    break
                target = start + rel
                if target >= run.stop_at:
                    break
                now = clock()
                if target > now and halt.wait(target - now) and run.aborted:
                    break
                k += 1
                measured = target >= warm_end
                if measured and limit:
                    if issued >= limit:
                        break
                    issued += 1
                with idle_lock:
                    if idle[0] > 0:
                        idle[0] -= 1
                        action = 1
                    elif workers[0] < max_users:
                        workers[0] += 1
                        action = 2
                    else:
                        action = 0
                if action == 1:
                    jobs.put((target, measured))
                elif action == 2:
                    spawn(worker, (target, measured))
                elif measured:  # a drop during warm-up is not measured either
                    sched_buf.add_dropped(int(target - start))
        finally:
            if limit and issued >= limit:
                run.iterations_done = True
            for _ in range(workers[0]):
                jobs.put(None)
