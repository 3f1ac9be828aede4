"""Race hunting: run one body in N threads (or tasks) released together, with forced switches.

`run_concurrent(fn, spec)` starts `spec.workers` threads per round; they wait on a barrier and
call `fn()` at the same moment. With `spec.amplify` the threads are made to give up the
interpreter at every line (or bytecode) of *the code under test* — files under `spec.roots`,
never the standard library, site-packages or this package — so a read-modify-write spread over
two lines is interleaved in nearly every run instead of almost never.

The switches are forced by an amplifier (`amplify.py`: `sys.monitoring` on Python >= 3.12, else
`sys.settrace`, chained to coverage's tracer). While amplifying, `sys.setswitchinterval` is
lowered to `spec.switch_interval` (when not None) so that switches also happen inside long
lines; the previous value is always restored.

A round that has not finished within `spec.timeout` seconds is a hang: the still running
workers are reported with their stacks, the barrier is broken so waiting workers leave, and the
run stops (threads cannot be killed; hung workers are daemon threads and are left behind).

Async bodies (`run_concurrent_async`) run as tasks on the running loop, released together by an
event. Tasks only interleave at awaits, so there is nothing to amplify; the mode says ``await``.
Hung tasks are cancelled.

Workers and rounds are numbered from 1 in data and text, like pytest-repeat's ids.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from .amplify import Amplifier, AmplifyMode, Backend, Granularity, ProjectFilter, make_amplifier, switch

__all__ = [
    "ConcurrentResult",
    "ConcurrentSpec",
    "WorkerFailure",
    "current_worker",
    "run_concurrent",
    "run_concurrent_async",
]

Outcome = Literal["passed", "failed", "hang"]

_MAX_KIND = 200

_current: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "stressguard_concurrent_worker", default=None
)


def current_worker() -> tuple[int, int] | None:
    """(worker, round) of the concurrent worker running this code, both from 1; None outside."""
    return _current.get()


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ConcurrentSpec:
    """How to run a body concurrently. Invalid values raise ValueError naming the argument.

    `timeout` bounds each round (seconds). `roots` are the directories (or files) of the project
    under test; empty means the current directory at run time. `exclude` adds paths that are
    never amplified. `switch_every=k` forces a switch at every k-th traced line of a worker.
    `granularity="opcode"` switches before every bytecode instead of every line: it exposes
    races inside one line (`self.n += 1`) at a higher cost. `stop_on_failure` ends the run after
    the first round with a failure.
    """

    workers: int = 8
    rounds: int = 1
    amplify: bool = True
    timeout: float = 30.0
    switch_interval: float | None = None
    roots: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    granularity: Granularity = "line"
    switch_every: int = 1
    backend: Backend = "auto"
    stop_on_failure: bool = True

    def __post_init__(self) -> None:
        for name in ("workers", "rounds", "switch_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an integer >= 1")
        if not isinstance(self.amplify, bool):
            raise ValueError(f"amplify={self.amplify!r}: expected True or False")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not (
            self.timeout > 0
        ):
            raise ValueError(f"timeout={self.timeout!r}: expected seconds > 0")
        si = self.switch_interval
        if si is not None and (
            isinstance(si, bool) or not isinstance(si, (int, float)) or not (0 < si <= 1)
        ):
            raise ValueError(f"switch_interval={si!r}: expected None or seconds in (0, 1]")
        if self.granularity not in ("line", "opcode"):
            raise ValueError(f"granularity={self.granularity!r}: expected 'line' or 'opcode'")
        if self.backend not in ("auto", "monitoring", "settrace"):
            raise ValueError(
                f"backend={self.backend!r}: expected 'auto', 'monitoring' or 'settrace'"
            )
        if self.backend == "monitoring" and not hasattr(sys, "monitoring"):
            raise ValueError("backend='monitoring' needs Python >= 3.12")
        object.__setattr__(self, "roots", _str_tuple("roots", self.roots))
        object.__setattr__(self, "exclude", _str_tuple("exclude", self.exclude))


def _str_tuple(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise ValueError(f"{name}={value!r}: expected paths")
    out = []
    for item in value:
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"{name}: {item!r} is not a path")
        out.append(os.fspath(item))
    return tuple(str(p) for p in out)


# ----------------------------------------------------------------------------- results


@dataclass
class WorkerFailure:
    """One worker's exception in one round (both from 1)."""

    worker: int
    round: int
    exc_type: str
    message: str
    traceback_text: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        """'Type: first line of the message', the key failures are grouped by."""
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        text = f"{self.exc_type}: {first}" if first else self.exc_type
        return text if len(text) <= _MAX_KIND else text[: _MAX_KIND - 3] + "..."

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "round": self.round,
            "exc_type": self.exc_type,
            "message": self.message,
            "kind": self.kind,
            "traceback": self.traceback_text,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerFailure:
        return cls(
            worker=int(data["worker"]),
            round=int(data["round"]),
            exc_type=str(data["exc_type"]),
            message=str(data["message"]),
            traceback_text=str(data.get("traceback", "")),
        )


@dataclass
class ConcurrentResult:
    """What happened. `outcome` is "passed", "failed" (some worker raised) or "hang"."""

    workers: int
    rounds: int
    duration_s: float
    failures: list[WorkerFailure] = field(default_factory=list)
    hung: list[tuple[int, int]] = field(default_factory=list)
    hang_stacks: dict[int, str] = field(default_factory=dict)
    rounds_completed: int = 0
    amplify: AmplifyMode = "off"
    switches: int = 0
    timeout: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if self.hung:
            return "hang"
        return "failed" if self.failures else "passed"

    @property
    def ok(self) -> bool:
        return self.outcome == "passed"

    def failure_kinds(self) -> dict[str, int]:
        """Failures counted by kind; a hang counts once as "hang"."""
        kinds: dict[str, int] = {}
        for failure in self.failures:
            kinds[failure.kind] = kinds.get(failure.kind, 0) + 1
        if self.hung:
            kinds["hang"] = kinds.get("hang", 0) + 1
        return kinds

    def headline(self) -> str:
        amp = f"amplify: {self.amplify}"
        if self.amplify in ("settrace", "settrace-chained", "monitoring"):
            amp += f", {self.switches} forced switches"
        if self.hung:
            rnd = self.hung[0][1]
            return (
                f"HANG: {len(self.hung)} of {self.workers} workers still running "
                f"{_secs(self.timeout)} after round {rnd} of {self.rounds} started ({amp})"
            )
        if self.failures:
            rounds = sorted({f.round for f in self.failures})
            where = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {_ints(rounds)}"
            return (
                f"{len(self.failures)} of {self.workers} workers failed in {where} "
                f"of {self.rounds} ({amp})"
            )
        return (
            f"{self.workers} workers x {self.rounds} rounds passed in "
            f"{_secs(self.duration_s)} ({amp})"
        )

    def summary(self) -> str:
        """Readable report: headline, then one traceback per failure kind (with the other
        workers that failed the same way), then the stacks of hung workers."""
        lines = [self.headline()]
        by_kind: dict[str, list[WorkerFailure]] = {}
        for failure in self.failures:
            by_kind.setdefault(failure.kind, []).append(failure)
        for group in by_kind.values():
            first = group[0]
            lines.append("")
            lines.append(f"worker {first.worker}, round {first.round}: {first.kind}")
            lines.append(first.traceback_text.rstrip("\n"))
            if len(group) > 1:
                others = ", ".join(f"worker {f.worker} (round {f.round})" for f in group[1:])
                lines.append(f"same error in: {others}")
        for worker, rnd in self.hung:
            lines.append("")
            lines.append(f"worker {worker}, round {rnd}: still running, stack:")
            lines.append(self.hang_stacks.get(worker, "  (stack not available)").rstrip("\n"))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "rounds": self.rounds,
            "rounds_completed": self.rounds_completed,
            "outcome": self.outcome,
            "duration_s": self.duration_s,
            "timeout_s": self.timeout,
            "amplify": self.amplify,
            "switches": self.switches,
            "failures": [f.to_dict() for f in self.failures],
            "failure_kinds": self.failure_kinds(),
            "hung": [
                {"worker": w, "round": r, "stack": self.hang_stacks.get(w, "")}
                for w, r in self.hung
            ],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConcurrentResult:
        hung = [(int(h["worker"]), int(h["round"])) for h in data.get("hung", [])]
        return cls(
            workers=int(data["workers"]),
            rounds=int(data["rounds"]),
            duration_s=float(data["duration_s"]),
            failures=[WorkerFailure.from_dict(f) for f in data.get("failures", [])],
            hung=hung,
            hang_stacks={int(h["worker"]): str(h.get("stack", "")) for h in data.get("hung", [])},
            rounds_completed=int(data.get("rounds_completed", 0)),
            amplify=data.get("amplify", "off"),
            switches=int(data.get("switches", 0)),
            timeout=float(data.get("timeout_s", 0.0)),
            warnings=[str(w) for w in data.get("warnings", [])],
        )


def _secs(s: float) -> str:
    return f"{s * 1000:.1f}ms" if s < 1 else f"{s:.1f}s"


def _ints(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values)


# ----------------------------------------------------------------------------- thread runner


def _failure(worker: int, rnd: int, exc: BaseException, skip_frames: int = 1) -> WorkerFailure:
    tb: TracebackType | None = exc.__traceback__
    for _ in range(skip_frames):  # our own worker frame(s) first
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return WorkerFailure(
        worker=worker,
        round=rnd,
        exc_type=type(exc).__qualname__,
        message=str(exc),
        traceback_text=text,
        exception=exc,
    )


def _call_sync(fn: Callable[[], object]) -> None:
    value = fn()
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()
        raise TypeError("the body returned an awaitable: use run_concurrent_async for async bodies")


def _stack_of(ident: int | None) -> str:
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return "  (thread ended)\n"
    return "".join(traceback.format_stack(frame))


def run_concurrent(
    fn: Callable[[], object],
    spec: ConcurrentSpec | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> ConcurrentResult:
    """Run `fn()` in `spec.workers` threads released together, `spec.rounds` times.

    Every worker thread gets a copy of the caller's contextvars. Trace/monitoring state and the
    switch interval are restored when this returns, also on an exception (KeyboardInterrupt).
    """
    spec = spec or ConcurrentSpec()
    if inspect.iscoroutinefunction(fn):
        raise TypeError("fn is a coroutine function: use run_concurrent_async")
    amp, warnings = make_amplifier(
        enabled=spec.amplify, roots=spec.roots, exclude=spec.exclude, backend=spec.backend,
        every=spec.switch_every, granularity=spec.granularity,
    )
    result = ConcurrentResult(
        workers=spec.workers, rounds=spec.rounds, duration_s=0.0, amplify=amp.mode,
        timeout=float(spec.timeout), warnings=warnings,
    )
    base_ctx = contextvars.copy_context()
    old_interval = sys.getswitchinterval()
    lower = spec.amplify and spec.switch_interval is not None
    started = clock()
    try:
        amp.start()
        if lower and spec.switch_interval is not None:
            sys.setswitchinterval(spec.switch_interval)
        for rnd in range(1, spec.rounds + 1):
            _run_round(fn, spec, rnd, amp, base_ctx, result)
            if result.hung:
                break
            result.rounds_completed = rnd
            if result.failures and spec.stop_on_failure:
                break
    finally:
        if lower:
            sys.setswitchinterval(old_interval)
        amp.stop()
        result.duration_s = clock() - started
        result.amplify = amp.mode
        result.switches = amp.switches
    if spec.amplify and result.amplify != "off" and result.switches == 0 and not result.hung:
        result.warnings.append(
            "amplify: no line of the code under test ran in a worker, so no switch was forced "
            f"(roots: {', '.join(ProjectFilter(spec.roots).roots)})"
        )
    return result


def _run_round(
    fn: Callable[[], object],
    spec: ConcurrentSpec,
    rnd: int,
    amp: Amplifier,
    base_ctx: contextvars.Context,
    result: ConcurrentResult,
) -> None:
    n = spec.workers
    barrier = threading.Barrier(n)
    failures: list[WorkerFailure | None] = [None] * n
    gate = [0]
    gate_lock = threading.Lock()

    def work(worker: int) -> None:
        undo = amp.thread_enter()
        try:
            try:
                barrier.wait()  # no timeout of its own: the round's deadline covers it
            except threading.BrokenBarrierError:
                return  # the round was abandoned before this worker started
            # The barrier lets its waiters out one by one (they re-take its lock); spinning
            # until every worker is out makes them all runnable when the body starts.
            with gate_lock:
                gate[0] += 1
            while gate[0] < n and not barrier.broken:
                switch(gate)
            _current.set((worker, rnd))
            try:
                _call_sync(fn)
            except BaseException as exc:
                failures[worker - 1] = _failure(worker, rnd, exc, skip_frames=2)
        finally:
            undo()

    threads = [
        threading.Thread(
            target=base_ctx.copy().run, args=(work, i), name=f"stressguard-w{i}-r{rnd}",
            daemon=True,
        )
        for i in range(1, n + 1)
    ]
    deadline = time.monotonic() + spec.timeout
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    except BaseException:  # can't start a thread, KeyboardInterrupt: release the waiters
        barrier.abort()
        raise
    alive = [(i, t) for i, t in enumerate(threads, start=1) if t.is_alive()]
    if alive:
        barrier.abort()
        for i, t in alive:
            result.hung.append((i, rnd))
            result.hang_stacks[i] = f"  thread {t.name}\n" + _stack_of(t.ident)
    result.failures.extend(f for f in failures if f is not None)


# ----------------------------------------------------------------------------- async runner


def _await_stack(task: asyncio.Task[None]) -> str:
    """The task's stack down the chain of awaits (`Task.print_stack` stops at its own frame)."""
    frames: list[traceback.FrameSummary] = []
    coro: Any = task.get_coro()
    for _ in range(1000):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(
            traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if not frames:
        return "  (task ended)\n"
    return "".join(traceback.format_list(frames))


async def run_concurrent_async(
    fn: Callable[[], Awaitable[object]],
    spec: ConcurrentSpec | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> ConcurrentResult:
    """Run `await fn()` in `spec.workers` tasks on the running loop, released together.

    Tasks that are still running `spec.timeout` seconds after their round started are reported
    as hung (with their stacks) and cancelled.
    """
    spec = spec or ConcurrentSpec()
    result = ConcurrentResult(
        workers=spec.workers, rounds=spec.rounds, duration_s=0.0,
        amplify="await" if spec.amplify else "off", timeout=float(spec.timeout),
    )
    started = clock()
    try:
        for rnd in range(1, spec.rounds + 1):
            await _run_round_async(fn, spec, rnd, result)
            if result.hung:
                break
            result.rounds_completed = rnd
            if result.failures and spec.stop_on_failure:
                break
    finally:
        result.duration_s = clock() - started
    return result


async def _run_round_async(
    fn: Callable[[], Awaitable[object]],
    spec: ConcurrentSpec,
    rnd: int,
    result: ConcurrentResult,
) -> None:
    n = spec.workers
    release = asyncio.Event()
    arrived = [0]
    abandoned = [False]
    failures: list[WorkerFailure | None] = [None] * n

    async def work(worker: int) -> None:
        arrived[0] += 1
        if arrived[0] == n:
            release.set()
        await release.wait()
        _current.set((worker, rnd))
        try:
            await fn()
        except BaseException as exc:
            if abandoned[0] and isinstance(exc, asyncio.CancelledError):
                raise
            failures[worker - 1] = _failure(worker, rnd, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise

    tasks = [
        asyncio.ensure_future(work(i)) for i in range(1, n + 1)
    ]
    for i, task in enumerate(tasks, start=1):
        task.set_name(f"stressguard-w{i}-r{rnd}")
    try:
        _done, pending = await asyncio.wait(tasks, timeout=spec.timeout)
    except BaseException:
        abandoned[0] = True
        for task in tasks:
            task.cancel()
        raise
    if pending:
        abandoned[0] = True
        for i, task in enumerate(tasks, start=1):
            if task in pending:
                result.hung.append((i, rnd))
                result.hang_stacks[i] = f"  task {task.get_name()}\n" + _await_stack(task)
                task.cancel()
        await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" log
    result.failures.extend(f for f in failures if f is not None)
