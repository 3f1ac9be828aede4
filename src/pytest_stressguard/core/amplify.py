"""Forced thread switches in the code under test, for the race runner in `race.py`.

While a round runs, the worker threads are made to give up the interpreter at every line (or
bytecode) of *the code under test* — files under the roots, never the standard library,
site-packages or this package (`ProjectFilter`) — so a read-modify-write spread over two lines
is interleaved in nearly every run instead of almost never.

Backends:

* ``monitoring`` (Python >= 3.12): a `sys.monitoring` tool (id 4, else 3, 5, 2, whichever is
  free) with LINE (or INSTRUCTION) events; code outside the roots gets `DISABLE` on its first
  event, so it costs nothing afterwards. It does not touch `sys.settrace`, so coverage.py, a
  debugger or a profiler keep working; they use their own tool ids.
* ``settrace`` (Python 3.10/3.11, or when no tool id is free): each worker thread installs a
  global trace function whose 'call' event returns None for code outside the roots, so no line
  events are generated there. When the worker thread already has a trace function (coverage.py
  installs one in every new thread through `threading.settrace`), ours *chains* to it: every
  event is passed on to it first, and if it re-installs itself at the C level (coverage's
  CTracer does so on 'call') ours is put back. Coverage keeps measuring the workers; the mode
  is reported as ``settrace-chained``. The previous function is restored when the worker ends.

A forced switch is `time.sleep(0)`: it releases the GIL, and another runnable worker takes it
(see `switch` for when that is not enough).
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

__all__ = [
    "Amplifier",
    "AmplifyMode",
    "Backend",
    "Granularity",
    "ProjectFilter",
    "make_amplifier",
    "switch",
]

Granularity = Literal["line", "opcode"]
Backend = Literal["auto", "monitoring", "settrace"]
AmplifyMode = Literal["off", "settrace", "settrace-chained", "monitoring", "await", "unavailable"]

_TOOL_NAME = "pytest-stressguard"
_TOOL_IDS = (4, 3, 5, 2)  # 0 debugger, 1 coverage: never ours
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_HANDOFF_S = 1e-6  # asks for 1us; the kernel's timer slack makes it ~50us on Linux


# ----------------------------------------------------------------------------- project filter


class ProjectFilter:
    """Decides, once per file name, whether code belongs to the project under test.

    A file is project code when it lies under one of `roots` and not under: the standard library
    and site-packages (`sysconfig` paths), any `site-packages`/`dist-packages` directory, the
    interpreter prefixes (a virtualenv inside the project is therefore excluded; a prefix that
    contains a root is not excluded as a whole), this package, and `exclude`. Pseudo file names
    (`<string>`, `<frozen ...>`) are never project code.
    """

    def __init__(self, roots: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        normalized = tuple(_norm(r) for r in roots)
        self.roots: tuple[str, ...] = normalized or (_norm(os.getcwd()),)
        excluded: list[str] = [_norm(p) for p in exclude]
        excluded.append(_norm(_PACKAGE_DIR))
        paths = sysconfig.get_paths()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                excluded.append(_norm(paths[key]))
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
            p = _norm(prefix)
            if not any(_under(root, p) for root in self.roots):
                excluded.append(p)
        self.excluded: tuple[str, ...] = tuple(dict.fromkeys(excluded))
        self._cache: dict[str, bool] = {}

    def __call__(self, filename: str) -> bool:
        hit = self._cache.get(filename)
        if hit is None:
            hit = self._cache[filename] = self._decide(filename)
        return hit

    def _decide(self, filename: str) -> bool:
        if not filename or filename.startswith("<"):
            return False
        path = _norm(filename)
        parts = set(Path(path).parts)
        if "site-packages" in parts or "dist-packages" in parts:
            return False
        if any(_under(path, e) for e in self.excluded):
            return False
        return any(_under(path, r) for r in self.roots)


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def _under(path: str, root: str) -> bool:
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


# ----------------------------------------------------------------------------- amplifiers


class Amplifier(Protocol):
    """Started and stopped around a run; `thread_enter` runs in each worker and returns its undo."""

    mode: AmplifyMode

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def thread_enter(self) -> Callable[[], None]: ...
    @property
    def switches(self) -> int: ...


class _NoAmplifier:
    def __init__(self, mode: AmplifyMode) -> None:
        self.mode: AmplifyMode = mode

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def thread_enter(self) -> Callable[[], None]:
        return _noop

    @property
    def switches(self) -> int:
        return 0


def _noop() -> None:
    pass


# sys.settrace's type in typeshed is recursive; trace functions here return Any.
_TraceFn = Callable[[FrameType, Any, Any], Any]


class _TraceAmplifier:
    """Per-thread `sys.settrace`; chains to a trace function already installed in the thread."""

    def __init__(self, wanted: ProjectFilter, every: int, granularity: Granularity) -> None:
        self.mode: AmplifyMode = "settrace"
        self._wanted = wanted
        self._every = every
        self._opcode = granularity == "opcode"
        self._active = False
        self._lock = threading.Lock()
        self._switches = 0
        self._progress = [0]

    @property
    def switches(self) -> int:
        return self._switches

    def start(self) -> None:
        self._active = True

    def stop(self) -> None:
        self._active = False  # hung workers keep our function but stop switching

    def thread_enter(self) -> Callable[[], None]:
        prev = sys.gettrace()
        cell = [0, 0]  # events seen, switches forced (this thread only: no lost updates)
        every = self._every
        step_event = "opcode" if self._opcode else "line"
        opcode = self._opcode
        wanted = self._wanted
        amp = self

        progress = self._progress

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == step_event and amp._active:
                progress[0] += 1
                cell[0] += 1
                if cell[0] % every == 0:
                    cell[1] += 1
                    switch(progress)
            return local

        def ours(frame: FrameType) -> _TraceFn | None:
            if wanted(frame.f_code.co_filename):
                if opcode:
                    frame.f_trace_opcodes = True
                return local
            return None

        if prev is None:

            def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
                return ours(frame)

            tracer: _TraceFn = global_trace
        else:
            self.mode = "settrace-chained"
            tracer = _chained_global(prev, ours)
        sys.settrace(tracer)

        def undo() -> None:
            sys.settrace(prev)
            with self._lock:
                self._switches += cell[1]

        return undo


def _chained_global(prev: _TraceFn, ours: Callable[[FrameType], _TraceFn | None]) -> _TraceFn:
    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        theirs = prev(frame, event, arg)
        if sys.gettrace() is not global_trace:
            # coverage's CTracer re-installs itself at the C level when called for 'call'
            sys.settrace(global_trace)
        mine = ours(frame)
        if mine is None:
            return theirs
        if theirs is None:
            return mine
        return _chained_local(theirs, mine)

    return global_trace


def _chained_local(theirs: _TraceFn, mine: _TraceFn) -> _TraceFn:
    state: list[_TraceFn | None] = [theirs]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        t = state[0]
        if t is not None:
            state[0] = t(frame, event, arg)
        mine(frame, event, arg)
        return local

    return local


class _MonitoringAmplifier:
    """A `sys.monitoring` tool (Python >= 3.12): LINE/INSTRUCTION events, DISABLE outside roots."""

    def __init__(self, wanted: ProjectFilter, every: int, granularity: Granularity) -> None:
        self.mode: AmplifyMode = "monitoring"
        self._mon: Any = getattr(sys, "monitoring")  # noqa: B009 - absent before 3.12
        self._wanted = wanted
        self._every = every
        ev = self._mon.events
        self._event: int = ev.INSTRUCTION if granularity == "opcode" else ev.LINE
        self._tool: int | None = None
        self._cells: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._switches = 0

    @property
    def switches(self) -> int:
        return self._switches

    def acquire(self) -> bool:
        """Take a free tool id; False when all are in use."""
        for tool in _TOOL_IDS:
            if self._mon.get_tool(tool) is None:
                try:
                    self._mon.use_tool_id(tool, _TOOL_NAME)
                except ValueError:  # taken meanwhile
                    continue
                self._tool = tool
                return True
        return False

    def start(self) -> None:
        if self._tool is None and not self.acquire():
            raise RuntimeError("no free sys.monitoring tool id")
        mon, tool = self._mon, self._tool
        wanted, cells, every = self._wanted, self._cells, self._every
        get_ident, disable, progress = threading.get_ident, mon.DISABLE, [0]

        def on_event(code: Any, where: int) -> Any:
            if not wanted(code.co_filename):
                return disable
            cell = cells.get(get_ident())
            if cell is None:  # project code in a thread that is not a worker
                return None
            progress[0] += 1
            cell[0] += 1
            if cell[0] % every == 0:
                cell[1] += 1
                switch(progress)
            return None

        mon.register_callback(tool, self._event, on_event)
        mon.set_events(tool, self._event)

    def stop(self) -> None:
        if self._tool is None:
            return
        mon, tool = self._mon, self._tool
        self._tool = None
        try:
            mon.set_events(tool, 0)
            mon.register_callback(tool, self._event, None)
        finally:
            mon.free_tool_id(tool)

    def thread_enter(self) -> Callable[[], None]:
        ident = threading.get_ident()
        cell = [0, 0]
        self._cells[ident] = cell

        def undo() -> None:
            self._cells.pop(ident, None)
            with self._lock:
                self._switches += cell[1]

        return undo


def switch(progress: list[int], _sleep: Callable[[float], None] = time.sleep) -> None:
    """Give the interpreter to another worker. `sleep(0)` releases the GIL, but the releasing
    thread often takes it back before a waiter wakes (nearly always on 3.10); when no other
    worker made progress meanwhile, a real sleep (tens of microseconds) hands it over."""
    seen = progress[0]
    _sleep(0)
    if progress[0] == seen:
        _sleep(_HANDOFF_S)


@functools.lru_cache(maxsize=32)
def _project_filter(roots: tuple[str, ...], exclude: tuple[str, ...]) -> ProjectFilter:
    """One filter per (roots, exclude), so its per-file decisions are kept across runs."""
    return ProjectFilter(roots, exclude)


def make_amplifier(
    *,
    enabled: bool,
    roots: tuple[str, ...],
    exclude: tuple[str, ...],
    backend: Backend,
    every: int,
    granularity: Granularity,
) -> tuple[Amplifier, list[str]]:
    """The amplifier for these settings (`roots` empty: the current directory), and warnings."""
    warnings: list[str] = []
    if not enabled:
        return _NoAmplifier("off"), warnings
    wanted = _project_filter(roots or (os.getcwd(),), exclude)
    if backend == "auto":
        backend = "monitoring" if hasattr(sys, "monitoring") else "settrace"
    if backend == "monitoring":
        mon_amp = _MonitoringAmplifier(wanted, every, granularity)
        if mon_amp.acquire():
            return mon_amp, warnings
        warnings.append("amplify: every sys.monitoring tool id is in use; used sys.settrace")
    return _TraceAmplifier(wanted, every, granularity), warnings
