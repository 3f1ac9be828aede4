"""What a load run is asked to do: :class:`LoadSpec` and its :class:`Stage` ramps.

Models
------
* **Closed** (``users``, optionally ``ramp_up`` or ``stages`` of kind ``"users"``): each virtual
  user runs ``body; think_time`` in a loop. Sync bodies run in one thread per user, ``async``
  bodies as one task per user on the running loop. ``ramp_up`` starts user ``i`` at
  ``ramp_up * i / users``. Latency = end - start of the iteration.
* **Open** (``rate``, or ``stages`` of kind ``"rate"``): iteration ``k`` is *intended* to start at
  ``t0 + k / rate`` (for rate stages: where the integral of the rate reaches ``k``). A free
  user (worker thread / task, at most ``max_users`` at once) starts it; when every user is busy the
  iteration is **dropped** and counted (``LoadResult.dropped``), never silently skipped.
  Latency = end - *intended* start, so a stall delays and shows in every iteration scheduled
  during it (no coordinated omission, as in wrk2 / HdrHistogram's corrected recording).
  Default ``max_users`` = ``max(100, ceil(peak rate))`` (enough for 1-second iterations at the
  peak rate without drops), capped at 1000 for sync bodies (threads) and 10000 for async bodies
  (tasks). Workers are created lazily, so the cap costs nothing until it is needed.
* **Stages** interpolate the target (users or rate) linearly from the previous stage's target,
  starting at 0, like k6's ramping-vus / ramping-arrival-rate. When the users target goes down,
  the highest-numbered users stop after their current iteration (k6's graceful ramp-down).

Time line of a run
------------------
``t = 0`` is the start. ``warmup`` is the first window of the run: iterations that *start*
(closed) or are *intended to start* (open) in it are run but not measured (counted in
``warmup_iterations``). ``duration`` includes the warm-up and any ramp-up, like Locust's
``--run-time`` and the sum of k6 stages: the test takes ``duration`` seconds and measures
``duration - warmup``. ``iterations=N`` means exactly ``N`` measured iterations in total across
all users (closed) or ``N`` measured arrivals, executed or dropped (open). When the time is up,
iterations in flight are allowed to finish for ``grace`` seconds; after that the engine stops
waiting, counts the stuck users in ``LoadResult.abandoned_users`` (and says so in ``warnings``;
their threads are daemons and are left behind, async tasks are cancelled) and returns. The
grace is not part of the measured window (``duration_s``, the rates): it ends when the last user
that finished went down. ``max_duration`` is the hard bound on the whole run:
default ``duration + grace`` for timed runs and 3600 s for ``iterations`` runs. The engine never
waits longer than ``max_duration + grace`` in total, so every run stops by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LoadSpec", "Stage", "StageKind", "default_max_users"]

StageKind = Literal["users", "rate"]

#: Default hard bound for ``iterations`` runs without a duration (seconds).
DEFAULT_ITERATIONS_MAX_DURATION = 3600.0


@dataclass(frozen=True)
class Stage:
    """One ramp segment: move linearly from the previous target to ``target`` over ``duration``
    seconds. ``kind`` "users" (closed model) or "rate" (iterations per second, open model)."""

    duration: float
    target: float
    kind: StageKind = "users"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"stage duration must be >= 0 seconds, got {self.duration!r}")
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"stage target must be >= 0, got {self.target!r}")
        if self.kind not in ("users", "rate"):
            raise ValueError(f"stage kind must be 'users' or 'rate', got {self.kind!r}")


def default_max_users(peak_rate: float, is_async: bool) -> int:
    """Default concurrency cap of the open model (see Models above)."""
    cap = 10_000 if is_async else 1_000
    return min(cap, max(100, math.ceil(peak_rate)))


@dataclass(frozen=True)
class LoadSpec:
    """What to run. Times in seconds, rate in iterations per second (use ``core.units`` and
    ``core.profiles.parse_stages`` to build one from user strings)."""

    users: int = 1
    duration: float | None = None
    iterations: int | None = None
    ramp_up: float = 0.0
    rate: float | None = None
    max_users: int | None = None
    stages: tuple[Stage, ...] = ()
    think_time: float = 0.0
    warmup: float = 0.0
    #: hard bound on the run (see module docstring for the default)
    max_duration: float | None = None
    #: how long in-flight iterations may finish after the end; default min(30, max(5, duration))
    grace: float | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid load spec: {msg}")

        if isinstance(self.users, bool) or not isinstance(self.users, int) or self.users < 1:
            raise bad(f"users must be an integer >= 1, got {self.users!r}")
        for name in ("ramp_up", "think_time", "warmup"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise bad(f"{name} must be a duration >= 0 seconds, got {v!r}")
        for name in ("duration", "max_duration", "grace"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(f"{name} must be a duration > 0 seconds, got {v!r}")
        if self.iterations is not None and (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 1
        ):
            raise bad(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if self.rate is not None and not (
            isinstance(self.rate, (int, float)) and math.isfinite(self.rate) and self.rate > 0
        ):
            raise bad(f"rate must be > 0 per second, got {self.rate!r}")
        if self.max_users is not None and (
            isinstance(self.max_users, bool)
            or not isinstance(self.max_users, int)
            or self.max_users < 1
        ):
            raise bad(f"max_users must be an integer >= 1, got {self.max_users!r}")
        if not isinstance(self.stages, tuple) or not all(
            isinstance(s, Stage) for s in self.stages
        ):
            raise bad("stages must be a tuple of Stage (use profiles.parse_stages)")
        kinds = {s.kind for s in self.stages}
        if len(kinds) > 1:
            raise bad("stages mix user targets and rate targets; use one kind")
        if self.stages:
            if sum(s.duration for s in self.stages) <= 0:
                raise bad("stages must last longer than 0 seconds in total")
            if self.duration is not None or self.iterations is not None:
                raise bad("stages define the duration; do not give duration or iterations too")
            if self.ramp_up:
                raise bad("ramp_up does not combine with stages; ramp with a stage instead")
            if self.rate is not None:
                raise bad("rate does not combine with stages; use stages like ('10s', '50/s')")
        elif self.duration is None and self.iterations is None:
            raise bad("give duration, iterations or stages")
        if self.duration is not None and self.iterations is not None:
            raise bad("give duration or iterations, not both (max_duration bounds a run)")
        open_model = self.rate is not None or "rate" in kinds
        if open_model:
            if self.think_time:
                raise bad("think_time applies to the closed model (users), not to rate")
            if self.ramp_up:
                raise bad("ramp_up applies to users; ramp a rate with stages")
            if self.users != 1:
                raise bad("users applies to the closed model; with rate use max_users")
        elif self.max_users is not None:
            raise bad("max_users caps the open model (rate); with users it has no meaning")
        total = self.planned_duration
        if total is not None:
            if self.warmup and self.warmup >= total:
                raise bad(f"warmup ({self.warmup:g}s) must be shorter than the run ({total:g}s)")
            if self.ramp_up > total:
                raise bad(f"ramp_up ({self.ramp_up:g}s) is longer than duration ({total:g}s)")

    # ---- derived
    @property
    def is_open(self) -> bool:
        return self.rate is not None or any(s.kind == "rate" for s in self.stages)

    @property
    def planned_duration(self) -> float | None:
        """The run's planned length (stages sum or duration); None for iterations runs."""
        if self.stages:
            return float(sum(s.duration for s in self.stages))
        return None if self.duration is None else float(self.duration)

    @property
    def effective_grace(self) -> float:
        if self.grace is not None:
            return float(self.grace)
        total = self.planned_duration
        return 30.0 if total is None else min(30.0, max(5.0, total))

    @property
    def effective_max_duration(self) -> float:
        if self.max_duration is not None:
            return float(self.max_duration)
        total = self.planned_duration
        if total is None:
            return DEFAULT_ITERATIONS_MAX_DURATION
        return total + self.effective_grace

    @property
    def peak_users(self) -> int:
        if self.stages and not self.is_open:
            return max(1, math.ceil(max(s.target for s in self.stages) - 1e-9))
        return self.users

    @property
    def peak_rate(self) -> float:
        if self.rate is not None:
            return float(self.rate)
        return max((s.target for s in self.stages if s.kind == "rate"), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "duration": self.duration,
            "iterations": self.iterations,
            "ramp_up": self.ramp_up,
            "rate": self.rate,
            "max_users": self.max_users,
            "stages": [[s.duration, s.target, s.kind] for s in self.stages],
            "think_time": self.think_time,
            "warmup": self.warmup,
            "max_duration": self.max_duration,
            "grace": self.grace,
        }
