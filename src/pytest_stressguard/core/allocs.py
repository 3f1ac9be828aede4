"""Name the allocation sites that grew, with memray.

:class:`AllocationTracker` runs a memray ``Tracker`` over a window of the workload, writing to a
private temporary directory, then reads the capture back with ``memray.FileReader``:
``get_leaked_allocation_records`` gives the allocations made inside the window that were still
alive when it closed — for a leaking body, the leak; for a body that only churns or whose caches
are already warm, close to nothing. Records are grouped by their innermost Python frame (frames of
stressguard's own run loop and of ``threading`` are skipped) and the biggest sites are reported.

Choices:

* ``trace_python_allocators=True`` so small objects are attributed to the line that made them,
  not to whichever allocation happened to open a new pymalloc arena. It is slower, which is fine
  for a short window that only runs once a leak has been found.
* The aggregated file format keeps the capture small (kilobytes, not gigabytes, for a long
  window); it supports exactly the "still allocated at the end" query we need.
* Degrades, never crashes: without memray (e.g. on Windows) or when another tracker is active
  (pytest-memray, ``memray run``), :attr:`AllocationTracker.note` says why and
  :meth:`~AllocationTracker.top_sites` is empty. Exceptions from the tracked code propagate
  unchanged. The temporary directory is removed in every case.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .units import format_size

__all__ = ["AllocSite", "AllocationTracker", "aggregate_sites"]

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Frames from these files are skipped when naming a site (the runner, not the user's code).
_SKIP_FILES = frozenset(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("allocs.py", "engine.py", "soak.py", "monitor.py")
)
_SKIP_SUFFIXES = (
    os.sep + "threading.py",
    os.sep + "contextvars.py",
)


@dataclass(frozen=True)
class AllocSite:
    """One allocation site: bytes still allocated at the end of the window, and how many blocks.

    ``location`` is ``"file:line"``; ``stack`` the callers (``"function (file:line)"``),
    innermost first, for context.
    """

    function: str
    location: str
    size_bytes: int
    count: int
    stack: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{format_size(self.size_bytes)} in {self.count} blocks at {self.function} " \
               f"({self.location})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "location": self.location,
            "size_bytes": self.size_bytes,
            "count": self.count,
            "stack": list(self.stack),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AllocSite:
        return cls(
            function=str(d["function"]),
            location=str(d["location"]),
            size_bytes=int(d["size_bytes"]),
            count=int(d["count"]),
            stack=tuple(str(s) for s in d.get("stack", ())),
        )


def _skipped(filename: str) -> bool:
    return filename in _SKIP_FILES or filename.endswith(_SKIP_SUFFIXES)


def aggregate_sites(
    records: Iterable[tuple[list[tuple[str, str, int]], int, int]], context: int = 4
) -> list[AllocSite]:
    """Group ``(stack, size, count)`` records (stack innermost first, memray's
    ``(function, file, line)`` tuples) by their innermost non-runner frame, biggest first."""
    sites: dict[tuple[str, str], list[Any]] = {}
    for stack, size, count in records:
        frames = [f for f in stack if not _skipped(f[1])]
        if frames:
            fn, file, line = frames[0]
            key = (fn, f"{file}:{line}")
            ctx = tuple(f"{f} ({p}:{n})" for f, p, n in frames[1: 1 + context])
        else:
            key = ("<native or runner>", "?")
            ctx = ()
        entry = sites.get(key)
        if entry is None:
            sites[key] = [size, count, ctx, size]
        else:
            entry[0] += size
            entry[1] += count
            if size > entry[3]:  # keep the context of the biggest contributing stack
                entry[2], entry[3] = ctx, size
    out = [
        AllocSite(function=k[0], location=k[1], size_bytes=int(v[0]), count=int(v[1]), stack=v[2])
        for k, v in sites.items()
    ]
    out.sort(key=lambda s: (-s.size_bytes, s.location))
    return out


class AllocationTracker:
    """Context manager: track allocations inside the block, then :meth:`top_sites`.

    ``path_dir`` is where the temporary capture directory is made (default: the system temp
    dir). After the block, :attr:`available` says whether sites were captured and :attr:`note`
    why not.
    """

    def __init__(
        self,
        path_dir: str | os.PathLike[str] | None = None,
        *,
        trace_python_allocators: bool = True,
        native_traces: bool = False,
    ) -> None:
        self.path_dir = None if path_dir is None else Path(path_dir)
        self.trace_python_allocators = trace_python_allocators
        self.native_traces = native_traces
        self.note: str | None = None
        self.sites: list[AllocSite] = []
        self.capture_bytes = 0
        self._dir: str | None = None
        self._tracker: Any = None
        self._done = False

    @property
    def available(self) -> bool:
        return self._done and self.note is None

    def __enter__(self) -> AllocationTracker:
        try:
            import memray
        except ImportError as exc:
            self.note = f"allocation sites not available: memray cannot be imported ({exc})"
            return self
        try:
            self._dir = tempfile.mkdtemp(prefix="stressguard-memray-", dir=self.path_dir)
            tracker = memray.Tracker(
                os.path.join(self._dir, "capture.bin"),
                native_traces=self.native_traces,
                trace_python_allocators=self.trace_python_allocators,
                file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS,
            )
            tracker.__enter__()
            self._tracker = tracker
        except Exception as exc:  # another tracker active, unwritable dir, ...
            self.note = f"allocation sites not available: memray could not start ({exc})"
            self._tracker = None
            self._cleanup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tracker, self._tracker = self._tracker, None
        try:
            if tracker is None:
                return
            # cyclic garbage is not a leak: collect it while still tracking, so it is not
            # reported as "still allocated at the end of the window"
            gc.collect()
            try:
                tracker.__exit__(None, None, None)
            except Exception as err:
                self.note = f"allocation sites not available: memray failed to stop ({err})"
                return
            try:
                self._read()
            except Exception as err:
                self.note = f"allocation sites not available: capture unreadable ({err})"
        finally:
            self._done = True
            self._cleanup()

    def _read(self) -> None:
        import memray

        assert self._dir is not None
        path = os.path.join(self._dir, "capture.bin")
        self.capture_bytes = os.path.getsize(path)
        reader = memray.FileReader(path)
        try:
            records = [
                (list(r.stack_trace()), int(r.size), int(r.n_allocations))
                for r in reader.get_leaked_allocation_records(merge_threads=True)
            ]
        finally:
            reader.close()
        self.sites = aggregate_sites(records)

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def top_sites(self, n: int = 5) -> list[AllocSite]:
        """The ``n`` sites holding the most bytes allocated in the window and not freed."""
        return self.sites[: max(0, n)]
