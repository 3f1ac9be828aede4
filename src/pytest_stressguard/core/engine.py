"""The load engine: run a body as virtual users and measure every iteration.

Where the parts live
--------------------
* :mod:`.loadspec`: what to run (:class:`LoadSpec`, :class:`Stage`): the closed and open models,
  stages and the time line of a run (warm-up, duration, iterations, grace, max_duration).
* :mod:`.schedule`: when each user is active and when each open-model arrival is intended.
* :mod:`.sync_runner`, :mod:`.async_runner`: the users as threads or as tasks.
* :mod:`.run`: one run's shared state and the caller's wait (stop, deadlines, progress).
* :mod:`.collector`: the users' recording buffers and their once-a-second fold (the hot path).
* :mod:`.result`: what was measured (:class:`LoadResult`), errors, saturation, the metrics.

Errors
------
An iteration that raises an ``Exception`` is an error (see :mod:`.result`). A ``BaseException``
that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, pytest's skip/fail/exit
outcomes) is not an error: it stops the run and is re-raised by ``run_sync`` / ``run_async`` in
the caller's thread once the users are stopped (``KeyboardInterrupt`` as
:class:`LoadInterrupted` carrying the partial result). ``Engine.last_result`` always holds the
last (possibly partial) result.

What went wrong is a figure, not only a warning
-----------------------------------------------
``LoadResult.abandoned_users`` (users stuck in an iteration past the grace: a hung body),
``LoadResult.users_not_started`` (threads that could not be created, or got no CPU before the
end) and ``Saturation.loop_blocked_s`` (the longest stall of the event loop; one long stall
makes the generator saturated): a caller can fail a test on them with the reason.

Ctrl-C and stop
---------------
``KeyboardInterrupt`` while ``run_sync`` waits stops every user (bounded join) and raises
:class:`LoadInterrupted` (a ``KeyboardInterrupt``) with the partial result. Setting the ``stop``
event makes the run return early with ``interrupted=True``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

from .async_runner import AsyncRunner
from .loadspec import LoadSpec
from .result import LoadResult, Progress
from .run import Run
from .stats import error_key
from .sync_runner import SyncRunner

__all__ = ["Engine"]


class Engine:
    """Runs load. ``progress`` is called about once a second from the caller's thread (the
    event loop for async runs); ``stop`` ends a run early (``interrupted=True``)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.progress = progress
        self.stop = stop
        self.progress_interval = progress_interval
        self.last_result: LoadResult | None = None
        self._progress_failed = False

    def run_sync(self, fn: Callable[[], object], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (one iteration) as ``spec`` says, in threads. See the module docstring."""
        return SyncRunner(self).run(fn, spec)

    async def run_async(self, fn: Callable[[], Awaitable[object]], spec: LoadSpec) -> LoadResult:
        """Run ``fn`` (an ``async`` iteration) as ``spec`` says, as tasks on the running loop."""
        return await AsyncRunner(self).run(fn, spec)

    def _emit(self, run: Run) -> None:
        cb = self.progress
        if cb is None or self._progress_failed:
            return
        try:
            cb(run.progress())
        except Exception as exc:  # a broken progress display must not break the run
            self._progress_failed = True
            run.warnings.append(f"progress callback failed and was disabled: {error_key(exc)}")
