"""Markers as typed functions: their signature is the contract, binding a mark gives a frozen spec.

`bind_mark("load", mark.args, mark.kwargs)` returns a spec or raises `MarkerError` naming the
argument and what is allowed. The plugin calls it at collection, so a typo never waits for a soak.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pytest_stressguard.core.thresholds import Threshold, ThresholdError, parse_threshold
from pytest_stressguard.core.units import (
    UnitsError,
    parse_duration,
    parse_rate,
    parse_ratio,
    parse_size_rate,
)

if TYPE_CHECKING:
    from pytest_stressguard.core.engine import Stage

Duration = str | float | int


class MarkerError(ValueError):
    """A marker argument that cannot be used; the message names the argument and what is allowed."""


# -- argument checks ------------------------------------------------------------------------


def _positive_int(name: str, value: object, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        floor = "a non-negative" if zero else "a positive"
        raise MarkerError(f"{name}={value!r}: must be {floor} integer")
    return value


def _duration(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MarkerError(f"{name}={value!r}: must be a duration such as '30s', '500ms', '2h'")
    try:
        seconds = parse_duration(value)
    except UnitsError as exc:
        raise MarkerError(f"{name}={value!r}: {exc}") from None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise MarkerError(f"{name}={value!r}: must be a duration greater than 0")
    return seconds


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MarkerError(f"{name}={value!r}: must be a rate such as '100/s' or '600/min'")
    try:
        rate = parse_rate(value)
    except UnitsError as exc:
        raise MarkerError(f"{name}={value!r}: {exc}") from None
    if rate <= 0:
        raise MarkerError(f"{name}={value!r}: must be a rate greater than 0")
    return rate


def _thresholds(name: str, value: object) -> tuple[Threshold, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise MarkerError(f"{name}={value!r}: must be a list of thresholds such as ['p95<500ms']")
    out = []
    for expr in value:
        if not isinstance(expr, str):
            raise MarkerError(f"{name}: {expr!r} is not a threshold string such as 'p95<500ms'")
        try:
            out.append(parse_threshold(expr))
        except ThresholdError as exc:
            raise MarkerError(f"{name}: {exc}") from None
    return tuple(out)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MarkerError(f"{name}={value!r}: must be True or False")
    return value


def _stages(value: object) -> tuple[Stage, ...]:
    from pytest_stressguard.core.profiles import parse_stages  # the engine: only when used

    try:
        return parse_stages(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise MarkerError(str(exc)) from None


# -- specs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadMark:
    users: int
    duration: float | None
    iterations: int | None
    ramp_up: float
    rate: float | None
    max_users: int | None
    stages: tuple[Stage, ...]
    think_time: float
    warmup: float
    sla: tuple[Threshold, ...]

    def scaled(self, factor: float) -> LoadMark:
        """Apply --stressguard-time-scale to every 'how long' (not to think time: that is the
        user's behaviour, scaling it would change the load)."""
        if factor == 1.0:
            return self
        return replace(
            self,
            duration=None if self.duration is None else self.duration * factor,
            ramp_up=self.ramp_up * factor,
            warmup=self.warmup * factor,
            stages=tuple(replace(s, duration=s.duration * factor) for s in self.stages),
        )


@dataclass(frozen=True)
class StressMark:
    start: float
    step: float
    maximum: float
    kind: str  # "users" or "rate"
    step_duration: float
    sla: tuple[Threshold, ...]
    recovery: bool
    expect_capacity: float | None
    think_time: float
    max_users: int | None

    def scaled(self, factor: float) -> StressMark:
        return replace(self, step_duration=self.step_duration * factor)


@dataclass(frozen=True)
class SoakMark:
    duration: float
    users: int
    think_time: float
    warmup: float
    leak: float | None  # bytes per hour
    drift: float | None  # ratio
    sla: tuple[Threshold, ...]
    watch: str | None
    sample_interval: float

    def scaled(self, factor: float) -> SoakMark:
        return replace(self, duration=self.duration * factor, warmup=self.warmup * factor)


@dataclass(frozen=True)
class ConcurrentMark:
    workers: int
    rounds: int
    amplify: bool
    timeout: float

    def scaled(self, factor: float) -> ConcurrentMark:
        return self


# -- the marker functions (their signatures and docstrings are the --markers help) ------------


def load(
    users: int = 1,
    *,
    duration: Duration | None = None,
    iterations: int | None = None,
    ramp_up: Duration = "0s",
    rate: str | float | None = None,
    max_users: int | None = None,
    stages: Sequence[tuple[Duration, int | str]] | None = None,
    think_time: Duration = "0s",
    warmup: Duration = "0s",
    sla: Sequence[str] = (),
) -> LoadMark:
    """Run the test body as one iteration of a virtual user, under load; gate on `sla`."""
    users = _positive_int("users", users)
    dur = None if duration is None else _duration("duration", duration, allow_zero=False)
    iters = None if iterations is None else _positive_int("iterations", iterations)
    stage_specs = () if stages is None else _stages(stages)
    if dur is not None and iters is not None:
        raise MarkerError("give duration= or iterations=, not both")
    if stage_specs and (dur is not None or iters is not None or rate is not None):
        raise MarkerError("stages= sets its own duration and load; drop duration/iterations/rate")
    if dur is None and iters is None and not stage_specs:
        raise MarkerError("needs duration= (e.g. '30s'), iterations= or stages=")
    rate_value = None if rate is None else _rate("rate", rate)
    cap = None if max_users is None else _positive_int("max_users", max_users)
    if cap is not None and rate_value is None and not (stage_specs and stage_specs[0].kind == "rate"):
        raise MarkerError("max_users= only applies to the open model (rate= or rate stages)")
    mark = LoadMark(
        users=users,
        duration=dur,
        iterations=iters,
        ramp_up=_duration("ramp_up", ramp_up),
        rate=rate_value,
        max_users=cap,
        stages=stage_specs,
        think_time=_duration("think_time", think_time),
        warmup=_duration("warmup", warmup),
        sla=_thresholds("sla", sla),
    )
    _check_engine_spec(mark)
    return mark


def _check_engine_spec(mark: LoadMark) -> None:
    """The engine's own rules (e.g. think_time has no meaning with rate=), checked now."""
    from pytest_stressguard.kinds import to_load_spec

    try:
        to_load_spec(mark)
    except ValueError as exc:
        raise MarkerError(str(exc).removeprefix("invalid load spec: ")) from None


def stress(
    *,
    start_users: int | None = None,
    step_users: int | None = None,
    max_users: int | None = None,
    start_rate: str | float | None = None,
    step_rate: str | float | None = None,
    max_rate: str | float | None = None,
    step_duration: Duration = "10s",
    sla: Sequence[str] = (),
    recovery: bool = True,
    expect_capacity: int | str | None = None,
    think_time: Duration = "0s",
) -> StressMark:
    """Find the breaking point: step the load up, evaluate `sla` per step; capacity is the last
    step that held. Then check recovery at the start load."""
    by_users = any(v is not None for v in (start_users, step_users))
    by_rate = any(v is not None for v in (start_rate, step_rate, max_rate))
    if by_users and by_rate:
        raise MarkerError("give start_users/step_users/max_users or start_rate/step_rate/max_rate, "
                          "not both")
    if by_rate:
        if start_rate is None or step_rate is None or max_rate is None:
            raise MarkerError("rate steps need start_rate=, step_rate= and max_rate=")
        start, step, top = (_rate("start_rate", start_rate), _rate("step_rate", step_rate),
                            _rate("max_rate", max_rate))
        kind = "rate"
        cap = None if max_users is None else _positive_int("max_users", max_users)
    else:
        if start_users is None or step_users is None or max_users is None:
            raise MarkerError("user steps need start_users=, step_users= and max_users=")
        start = float(_positive_int("start_users", start_users))
        step = float(_positive_int("step_users", step_users))
        top = float(_positive_int("max_users", max_users))
        kind = "users"
        cap = None
    if top < start:
        raise MarkerError(f"the maximum ({top:g}) is below the start ({start:g})")
    if kind == "rate" and think_time not in ("0s", 0, 0.0):
        raise MarkerError("think_time= has no meaning with rate steps: the rate sets the pace")
    thresholds = _thresholds("sla", sla)
    expected: float | None = None
    if expect_capacity is not None:
        if isinstance(expect_capacity, str):
            expected = _rate("expect_capacity", expect_capacity)
        else:
            expected = float(_positive_int("expect_capacity", expect_capacity))
    return StressMark(
        start=start, step=step, maximum=top, kind=kind,
        step_duration=_duration("step_duration", step_duration, allow_zero=False),
        sla=thresholds, recovery=_bool("recovery", recovery), expect_capacity=expected,
        think_time=_duration("think_time", think_time), max_users=cap,
    )


def soak(
    *,
    duration: Duration,
    users: int = 1,
    think_time: Duration = "0s",
    warmup: Duration = "0s",
    leak: str | None = None,
    drift: str | None = None,
    sla: Sequence[str] = (),
    watch: str | None = None,
    sample_interval: Duration = "100ms",
) -> SoakMark:
    """Run the body repeatedly for `duration` while sampling memory; gate on `leak` (e.g.
    '10MB/h', a robust slope after `warmup`), `drift` (e.g. '20%') and `sla`. `watch` names a
    fixture whose value is a pid, a psutil.Process or has `.pid`."""
    try:
        leak_limit = None if leak is None else parse_size_rate(leak)
    except (UnitsError, TypeError) as exc:
        raise MarkerError(f"leak={leak!r}: must be a rate of growth such as '10MB/h' ({exc})") \
            from None
    try:
        drift_limit = None if drift is None else parse_ratio(drift)
    except (UnitsError, TypeError) as exc:
        raise MarkerError(f"drift={drift!r}: must be a percentage such as '20%' ({exc})") from None
    if watch is not None and (not isinstance(watch, str) or not watch.isidentifier()):
        raise MarkerError(f"watch={watch!r}: must be the name of a fixture")
    return SoakMark(
        duration=_duration("duration", duration, allow_zero=False),
        users=_positive_int("users", users),
        think_time=_duration("think_time", think_time),
        warmup=_duration("warmup", warmup),
        leak=leak_limit,
        drift=drift_limit,
        sla=_thresholds("sla", sla),
        watch=watch,
        sample_interval=_duration("sample_interval", sample_interval, allow_zero=False),
    )


def concurrent(
    workers: int = 8,
    *,
    rounds: int = 1,
    amplify: bool = True,
    timeout: Duration = "30s",
) -> ConcurrentMark:
    """Run the body in `workers` threads (tasks for async bodies) released together by a barrier,
    `rounds` times; all must pass. `amplify` forces thread switches inside your code."""
    return ConcurrentMark(
        workers=_positive_int("workers", workers),
        rounds=_positive_int("rounds", rounds),
        amplify=_bool("amplify", amplify),
        timeout=_duration("timeout", timeout, allow_zero=False),
    )


MARKERS: dict[str, Callable[..., Any]] = {
    "load": load,
    "stress": stress,
    "soak": soak,
    "concurrent": concurrent,
}


def marker_help(name: str) -> str:
    fn = MARKERS[name]
    params = []
    star = False
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        default = "" if param.default is param.empty else f"={param.default!r}"
        params.append(f"{param.name}{default}")
    sig = f"({', '.join(params)})"
    doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    return f"{name}{sig}: {' '.join(doc.split())}"


def bind_mark(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Bind a mark's arguments to its marker function. Raises MarkerError with a clear message."""
    fn = MARKERS[name]
    sig = inspect.signature(fn)
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        allowed = ", ".join(sig.parameters)
        unknown = [k for k in kwargs if k not in sig.parameters]
        if unknown:
            raise MarkerError(
                f"unknown argument {unknown[0]!r}; allowed: {allowed}"
            ) from None
        raise MarkerError(f"{exc}; allowed: {allowed}") from None
    try:
        return fn(*args, **kwargs)
    except MarkerError:
        raise
    except (ThresholdError, UnitsError) as exc:
        raise MarkerError(str(exc)) from None
