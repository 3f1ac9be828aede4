"""Markers as typed functions: their signature is the contract, binding a mark gives a frozen spec.

Each kind's module (pytest_stressguard/kinds/) holds its marker function, built from the argument
checks here. `bind(fn, mark.args, mark.kwargs)` returns the spec or raises `MarkerError` naming
the argument and what is allowed; the plugin binds at collection, so a typo never waits for a soak.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_stressguard.core.loadspec import Stage
    from pytest_stressguard.core.thresholds import Threshold

# The kinds' marker functions are imported at configure (for --markers), so the parsers they
# call load inside the checks: only a test that has a mark pays for them.

Duration = str | float | int


class MarkerError(ValueError):
    """A marker argument that cannot be used; the message names the argument and what is allowed."""


# -- argument checks ------------------------------------------------------------------------


def check_positive_int(name: str, value: object, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        floor = "a non-negative" if zero else "a positive"
        raise MarkerError(f"{name}={value!r}: must be {floor} integer")
    return value


def check_duration(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MarkerError(f"{name}={value!r}: must be a duration such as '30s', '500ms', '2h'")
    from pytest_stressguard.core.units import UnitsError, parse_duration

    try:
        seconds = parse_duration(value)
    except UnitsError as exc:
        raise MarkerError(f"{name}={value!r}: {exc}") from None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise MarkerError(f"{name}={value!r}: must be a duration greater than 0")
    return seconds


def check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MarkerError(f"{name}={value!r}: must be a rate such as '100/s' or '600/min'")
    from pytest_stressguard.core.units import UnitsError, parse_rate

    try:
        rate = parse_rate(value)
    except UnitsError as exc:
        raise MarkerError(f"{name}={value!r}: {exc}") from None
    if rate <= 0:
        raise MarkerError(f"{name}={value!r}: must be a rate greater than 0")
    return rate


def check_thresholds(name: str, value: object) -> tuple[Threshold, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise MarkerError(f"{name}={value!r}: must be a list of thresholds such as ['p95<500ms']")
    if not value:
        return ()
    from pytest_stressguard.core.thresholds import ThresholdError, parse_threshold

    out = []
    for expr in value:
        if not isinstance(expr, str):
            raise MarkerError(f"{name}: {expr!r} is not a threshold string such as 'p95<500ms'")
        try:
            out.append(parse_threshold(expr))
        except ThresholdError as exc:
            raise MarkerError(f"{name}: {exc}") from None
    return tuple(out)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MarkerError(f"{name}={value!r}: must be True or False")
    return value


def check_stages(value: object) -> tuple[Stage, ...]:
    from pytest_stressguard.core.profiles import parse_stages  # the engine: only when used

    try:
        return parse_stages(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise MarkerError(str(exc)) from None


def marker_help(name: str, fn: Callable[..., Any]) -> str:
    """The `--markers` line of a marker function: its signature and first paragraph."""
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


def bind(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Bind a mark's arguments to its marker function. Raises MarkerError with a clear message."""
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
        # one wording on every Python (3.13 says "a required keyword-only argument")
        reason = str(exc).replace("keyword-only argument", "argument")
        raise MarkerError(f"{reason}; allowed: {allowed}") from None
    try:
        return fn(*args, **kwargs)
    except MarkerError:
        raise
    except ValueError as exc:
        from pytest_stressguard.core.thresholds import ThresholdError
        from pytest_stressguard.core.units import UnitsError

        if isinstance(exc, (ThresholdError, UnitsError)):
            raise MarkerError(str(exc)) from None
        raise
