"""Load profiles in the user's form and their validation.

The user form of ``stages`` (SPEC: ``@pytest.mark.load(stages=[...])``) is a list of pairs
``(duration, target)``: ``duration`` a duration string or seconds (``"10s"``, ``"1m30s"``, ``5``),
``target`` either a whole number of users (closed model) or a rate string (``"50/s"``, open
model). Each stage moves linearly from the previous target (the first from 0) to its own target
over its duration, like k6's ``stages``; a ``"0s"`` stage is a jump.

:func:`spike` and :func:`ramp` build such lists; :func:`parse_stages` turns one into
:class:`~pytest_stressguard.core.engine.Stage` values or raises ``ValueError`` saying which stage
is wrong and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .loadspec import Stage, StageKind
from .units import UnitsError, parse_duration, parse_rate

__all__ = ["StageTarget", "UserStage", "parse_stages", "ramp", "spike"]

#: A stage target in user form: users (int) or a rate string such as ``"50/s"``.
StageTarget = int | str
#: A stage in user form: ``(duration, target)``.
UserStage = tuple[str | int | float, StageTarget]

#: Most stages a helper will generate (a typo like step=0.001 must not build a million stages).
MAX_GENERATED_STAGES = 1000

_ALLOWED = (
    "each stage is (duration, target): duration like '10s' or seconds, target a whole "
    "number of users like 50 or a rate like '50/s'"
)


def _target(value: object, where: str) -> tuple[float, StageKind]:
    if isinstance(value, bool):
        raise ValueError(f"{where}: target {value!r} is not a number of users or a rate")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: users must be >= 0, got {value}")
        return float(value), "users"
    if isinstance(value, float):
        if value.is_integer() and value >= 0:
            return value, "users"
        raise ValueError(
            f"{where}: users must be a whole number >= 0, got {value!r} "
            "(for an arrival rate write a string like '2.5/s')"
        )
    if isinstance(value, str):
        text = value.strip()
        if "/" not in text:
            if text.isdigit():
                return float(int(text)), "users"
            raise ValueError(
                f"{where}: target {value!r} is neither a number of users (like 50) nor a "
                "rate (like '50/s')"
            )
        try:
            return parse_rate(text), "rate"
        except UnitsError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    raise ValueError(
        f"{where}: target {value!r} is not a number of users (like 50) or a rate (like '50/s')"
    )


def _duration(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: duration {value!r} is not a duration like '10s' or seconds")
    try:
        seconds = parse_duration(value)
    except UnitsError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}: duration must be >= 0, got {value!r}")
    return seconds


def parse_stages(user_stages: Iterable[object]) -> tuple[Stage, ...]:
    """Validate the user form and return engine stages.

    Raises ``ValueError`` naming the stage (``stages[2]``), the bad part and what is allowed:
    not a pair, a bad duration, a bad target, users mixed with rates, or a profile that lasts
    0 seconds in total. :class:`Stage` values are accepted as they are.
    """
    if isinstance(user_stages, (str, bytes)) or not isinstance(user_stages, Iterable):
        raise ValueError(f"stages must be a list of (duration, target) pairs; {_ALLOWED}")
    out: list[Stage] = []
    for i, item in enumerate(user_stages):
        where = f"stages[{i}] {item!r}"
        if isinstance(item, Stage):
            out.append(item)
            continue
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{where}: not a (duration, target) pair; {_ALLOWED}")
        seconds = _duration(item[0], where)
        target, kind = _target(item[1], where)
        out.append(Stage(seconds, target, kind))
    if not out:
        raise ValueError(f"stages is empty; {_ALLOWED}")
    kinds = {s.kind for s in out}
    if len(kinds) > 1:
        first_rate = next(i for i, s in enumerate(out) if s.kind != out[0].kind)
        raise ValueError(
            f"stages mix users and rates (stages[0] is {out[0].kind}, stages[{first_rate}] is "
            f"{out[first_rate].kind}); use users everywhere or rates like '50/s' everywhere"
        )
    if sum(s.duration for s in out) <= 0:
        raise ValueError("stages last 0 seconds in total; give at least one duration > 0")
    return tuple(out)


def _level(value: StageTarget, name: str) -> tuple[float, StageKind]:
    return _target(value, name)


def _fmt_target(value: float, kind: StageKind) -> StageTarget:
    if kind == "users":
        return round(value)
    text = f"{value:.6g}"
    return f"{text}/s"


def spike(
    base: StageTarget,
    peak: StageTarget,
    hold: str | float = "30s",
    ramp: str | float = "10s",
) -> list[UserStage]:
    """A spike profile: reach ``base``, hold it, jump to ``peak`` in ``ramp``, hold, come back to
    ``base`` in ``ramp`` and hold again (to see whether the system recovers).

    ``base``/``peak`` are both users (ints) or both rates (``"20/s"``); ``hold``/``ramp`` are
    durations. Returns the user form, e.g. ``spike(10, 100, "30s", "5s")`` ->
    ``[("5s", 10), ("30s", 10), ("5s", 100), ("30s", 100), ("5s", 10), ("30s", 10)]``.
    """
    b, bk = _level(base, "spike(base)")
    p, pk = _level(peak, "spike(peak)")
    if bk != pk:
        raise ValueError("spike(): base and peak must both be users or both be rates")
    if p < b:
        raise ValueError(f"spike(): peak ({peak!r}) must be >= base ({base!r})")
    _duration(hold, "spike(hold)")
    _duration(ramp, "spike(ramp)")
    lo, hi = _fmt_target(b, bk), _fmt_target(p, pk)
    return [(ramp, lo), (hold, lo), (ramp, hi), (hold, hi), (ramp, lo), (hold, lo)]


def ramp(
    start: StageTarget,
    stop: StageTarget,
    step: StageTarget,
    step_duration: str | float = "30s",
) -> list[UserStage]:
    """A staircase from ``start`` to ``stop`` (inclusive) in increments of ``step``, holding each
    level for ``step_duration`` (each level is reached by a ``"0s"`` jump). Works downwards too
    when ``stop < start``. All three levels are users, or all three rates (``"10/s"``).

    ``ramp(10, 30, 10, "1m")`` -> ``[("0s", 10), ("1m", 10), ("0s", 20), ("1m", 20),
    ("0s", 30), ("1m", 30)]``.
    """
    a, ak = _level(start, "ramp(start)")
    z, zk = _level(stop, "ramp(stop)")
    s, sk = _level(step, "ramp(step)")
    if not ak == zk == sk:
        raise ValueError("ramp(): start, stop and step must all be users or all be rates")
    if s <= 0:
        raise ValueError(f"ramp(): step must be > 0, got {step!r}")
    if _duration(step_duration, "ramp(step_duration)") <= 0:
        raise ValueError(f"ramp(): step_duration must be > 0, got {step_duration!r}")
    n = math.floor(abs(z - a) / s + 1e-9) + 1
    if 2 * n > MAX_GENERATED_STAGES:
        raise ValueError(
            f"ramp(): {n} steps from {start!r} to {stop!r} by {step!r} is too many "
            f"(at most {MAX_GENERATED_STAGES // 2})"
        )
    sign = 1.0 if z >= a else -1.0
    levels = [a + sign * s * i for i in range(n)]
    if abs(levels[-1] - z) > 1e-9:
        levels.append(z)  # finish exactly at stop
    out: list[UserStage] = []
    for level in levels:
        target = _fmt_target(level, ak)
        out.append(("0s", target))
        out.append((step_duration, target))
    return out
