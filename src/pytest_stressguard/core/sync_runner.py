"""Sync bodies: one thread per virtual user (closed model) or per busy worker (open model).

Starting many users
-------------------
A thread that wants the GIL while hundreds of others want it too waits in a lottery against all
of them (and each waiter wakes up every 5 ms to ask again), so users started while the earlier
ones already iterate, or released all at once, took longer than the run to start (2000 users:
under 1000 ever ran). So closed-model users are created *before* the run's clock starts, each
parked on a gate of its own (:class:`_Start`); at the start the gates open one after another,
each user opening the next, so at most two threads want the GIL at once; the users due at the
start go up, then wait on a second gate that opens for all of them when the last one is through
(or after ``_START_WAIT``). A user whose thread cannot be created is counted in
``users_not_started`` and the run goes on with the others.

With many threads, each waiter of the GIL wakes up every switch interval (5 ms) to ask for it:
2000 waiters make 400k wake-ups a second and throughput collapses (2000 users sleeping 10 ms:
~500 iterations/s instead of ~20k on 2 cores). For the run, the switch interval is raised so
that the waiters wake up at most ~40k times a second (:func:`_fewer_gil_wakeups`; 50 ms for
2000 users, unchanged up to 200; closed model only), and restored afterwards.

The open-model scheduler is a thread of its own that sleeps on the halt event until each
intended start; it wakes up on a futex, about 0.1 ms late at 20k/s on one core.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .collector import MASK, Buffer
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
#: Users whose thread is not created within this time are not started (seconds).
_START_BUDGET = 30.0
#: The longest the users due at the start wait for each other to be up (seconds).
_START_WAIT = 2.0
#: GIL waiters' wake-ups per second the switch interval is raised to stay under.
_GIL_WAKEUPS = 40_000


@contextlib.contextmanager
def _fewer_gil_wakeups(threads: int) -> Iterator[None]:
    """Raise the switch interval (at most 0.1 s) while ``threads`` users run (see above)."""
    before = sys.getswitchinterval()
    wanted = min(0.1, threads / _GIL_WAKEUPS)
    if wanted <= before:
        yield
        return
    sys.setswitchinterval(wanted)
    ours = sys.getswitchinterval()  # stored in microseconds: not always == wanted
    try:
        yield
    finally:
        if sys.getswitchinterval() == ours:  # unless someone else changed it meanwhile
            sys.setswitchinterval(before)


class _Start:
    """The gates of the closed-model users (see the module docstring)."""

    def __init__(self) -> None:
        self.gates: list[threading.Lock] = []  # one per user, opened in a chain
        self.gos: list[threading.Lock] = []  # one per user due at the start
        self.through = threading.Event()  # the last user is through its gate

    @staticmethod
    def _closed() -> threading.Lock:
        lock = threading.Lock()
        lock.acquire()
        return lock

    def add(self, due_at_start: bool) -> tuple[int, threading.Lock | None]:
        """The next user's gate (its index) and, if due at the start, its go gate."""
        self.gates.append(self._closed())
        go = self._closed() if due_at_start else None
        if go is not None:
            self.gos.append(go)
        return len(self.gates) - 1, go

    def drop(self, go: threading.Lock | None) -> None:
        """Take back the last :meth:`add`: its thread could not be started."""
        self.gates.pop()
        if go is not None:
            self.gos.pop()

    def wait_at(self, i: int) -> None:
        """In user ``i``'s thread: wait for its gate, then open the next one."""
        self.gates[i].acquire()
        if i + 1 < len(self.gates):
            self.gates[i + 1].release()
        else:
            self.through.set()

    def open(self, wait: float) -> None:
        """In the caller's thread, once the run began: open the chain, wait (at most
        ``wait`` seconds) until the last user is through, then let the users go."""
        if not self.gates:
            return
        try:
            self.gates[0].release()
            self.through.wait(wait)
        finally:
            for go in self.gos:  # a tight loop: done before a woken thread can claim the GIL
                go.release()


class SyncRunner:
    """Runs a sync body for an :class:`~pytest_stressguard.core.engine.Engine`, in threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, fn: Callable[[], object], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (one iteration) as ``spec`` says (see :meth:`Engine.run_sync`)."""
        run = Run(self.engine.clock, spec, is_async=False)
        # not for the open model: its scheduler must get the GIL back within 5 ms to start
        # arrivals on time, and its workers are few unless the server is slow
        with _fewer_gil_wakeups(0 if spec.is_open else spec.peak_users):
            return self._run(run, fn)

    def _run(self, run: Run, fn: Callable[[], object]) -> LoadResult:
        spec = run.spec
        recorder = StatsRecorder()
        token = current_recorder.set(recorder)
        try:
            ctx = contextvars.copy_context()
        finally:
            current_recorder.reset(token)
        threads: list[threading.Thread] = []
        alive: collections.deque[None] = collections.deque()  # lock-free, as Run.up
        all_done = threading.Event()

        def spawn(
            target: Callable[..., None], *args: object, gate: Callable[[], None] | None = None
        ) -> bool:
            """Start a thread running ``gate()`` then ``target(*args)``; False when the OS
            refuses a thread."""

            def main() -> None:
                try:
                    if gate is not None:
                        gate()
                    target(*args)
                except BaseException as exc:  # re-raised in the caller's thread
                    run.fatal_error(exc)
                finally:
                    alive.pop()
                    if not alive:
                        all_done.set()

            th = threading.Thread(
                target=ctx.copy().run, args=(main,), name=f"stressguard-user-{len(threads)}",
                daemon=True,
            )
            alive.append(None)
            try:
                th.start()
            except RuntimeError as exc:  # "can't start new thread"
                alive.pop()
                run.start_error = run.start_error or str(exc)
                return False
            threads.append(th)
            return True

        start = None if spec.is_open else self._start_users(run, fn, spawn)
        cpu0, wall0 = time.process_time(), time.monotonic()
        run.begin()
        if start is None and not spawn(self._scheduler, run, fn, spawn):
            run.could_not_start(run.max_users)
        if not alive:  # not one thread could be started
            all_done.set()
        outcome = self._wait(run, all_done, threads, start)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        result = self.engine.last_result = run.result(outcome, recorder, cpu, wall)
        run.reraise(result)
        if outcome.keyboard:
            raise LoadInterrupted(result)
        return result

    def _start_users(
        self, run: Run, fn: Callable[[], object], spawn: Callable[..., bool]
    ) -> _Start:
        """Create every closed-model user's thread, parked on its gate."""
        spec = run.spec
        users = spec.peak_users
        start = _Start()
        deadline = time.monotonic() + _START_BUDGET
        try:
            for i in range(users):
                if time.monotonic() > deadline:
                    run.start_error = f"starting their threads took over {_START_BUDGET:g}s"
                    run.could_not_start(users - i)
                    break
                intervals = closed_intervals(spec, i)
                begin = intervals[0][0] if intervals else math.inf
                buf = run.collector.new_buf()
                index, go = start.add(begin <= 0)
                gate = functools.partial(start.wait_at, index)
                if not spawn(self._closed_user, run, fn, intervals, buf, go, gate=gate):
                    start.drop(go)
                    run.could_not_start(users - i)
                    break
                run.due.append((begin, buf))
        except BaseException:  # Ctrl-C while starting: let the started users go and end
            run.stop(abort=True)
            start.open(0.0)
            raise
        return start

    def _wait(
        self,
        run: Run,
        all_done: threading.Event,
        threads: list[threading.Thread],
        start: _Start | None,
    ) -> Outcome:
        interrupted = False
        keyboard = False
        try:
            if start is not None:
                start.open(_START_WAIT)
            waiter = Waiter(self.engine, run)
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
            deadline = time.monotonic() + min(run.spec.effective_grace, _INTERRUPT_JOIN)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                all_done.wait(max(0.0, deadline - time.monotonic()))
        run.stop(abort=True)  # finished, or done waiting: nothing new may start
        # users that did not finish: give them a moment to notice the halt (sleepers wake up)
        stuck_deadline = time.monotonic() + 0.2
        for th in threads:
            th.join(max(0.0, stuck_deadline - time.monotonic()))
        stuck = 0 if all_done.is_set() else run.active  # still inside an iteration
        return Outcome(run.load_end(), interrupted=interrupted, stuck=stuck, keyboard=keyboard)

    @staticmethod
    def _closed_user(
        run: Run,
        fn: Callable[[], object],
        intervals: list[tuple[float, float]],
        buf: Buffer,
        go: threading.Lock | None,
    ) -> None:
        clock = run.clock
        start = run.start
        warm_end = run.warm_end
        tickets = run.tickets
        limit = run.limit
        think = run.spec.think_time
        halt = run.halt
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
            run.user_up(buf)
            try:
                if go is not None:  # due at the start: wait until the others are up too
                    go.acquire()
                    go = None
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
        spawn: Callable[..., bool],
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
                run.user_up(buf)
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
                elif action == 2 and not spawn(worker, (target, measured)):
                    # the OS refused a thread: no more workers than now; this arrival drops
                    with idle_lock:
                        workers[0] -= 1
                    run.could_not_start(max_users - workers[0])
                    max_users = workers[0]
                    action = 0
                if action == 0 and measured:  # a drop during warm-up is not measured either
                    sched_buf.add_dropped(int(target - start))
        finally:
            if limit and issued >= limit:
                run.iterations_done = True
            for _ in range(workers[0]):
                jobs.put(None)
