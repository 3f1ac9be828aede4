"""The one units module: parse and format durations, sizes, ratios and rates.

Canonical units inside the core: seconds for time, bytes for size, a ratio (0..1) for
percentages, per second for rates and bytes per hour for size rates (memory leaks).

Spelling rules (strict but helpful): the exact spellings (``ms``, ``MB``, ``kB``, ``KiB``, ``/min``)
are accepted, and so are all-lowercase or all-uppercase variants when that is unambiguous
(``mb`` -> ``MB``, ``MS`` -> ``ms``). Mixed-case spellings that usually mean something else
(``Mb`` is a megabit) and a bare ``M`` (mega? months? minutes?) are rejected with a suggestion.
A bare ``m`` is minutes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = [
    "CANONICAL_UNIT",
    "DIMENSIONS",
    "Dimension",
    "Quantity",
    "UnitsError",
    "allowed_units",
    "format_duration",
    "format_latency",
    "format_number",
    "format_rate",
    "format_ratio",
    "format_size",
    "format_size_rate",
    "format_value",
    "parse_duration",
    "parse_quantity",
    "parse_rate",
    "parse_ratio",
    "parse_size",
    "parse_size_rate",
]

Dimension = Literal["time", "size", "ratio", "rate", "size_rate", "number"]
DIMENSIONS: Final[tuple[Dimension, ...]] = get_args(Dimension)

#: The unit each dimension is stored in inside the core (used in JSON ``unit`` fields).
CANONICAL_UNIT: Final[dict[Dimension, str]] = {
    "time": "s",
    "size": "B",
    "ratio": "ratio",
    "rate": "/s",
    "size_rate": "B/h",
    "number": "",
}


class UnitsError(ValueError):
    """A value that is not a valid quantity; the message quotes it and says what is allowed.

    ``text`` is the input, ``reason`` the explanation without the quoted input, ``span`` the
    ``(start, end)`` character range of the bad part within ``text`` (``None`` when the whole
    input is at fault) and ``unit`` the offending unit spelling for unknown-unit errors.
    """

    def __init__(
        self,
        kind: str,
        text: str,
        reason: str,
        span: tuple[int, int] | None = None,
        unit: str | None = None,
    ) -> None:
        self.kind = kind
        self.text = text
        self.reason = reason
        self.span = span
        self.unit = unit
        super().__init__(f"invalid {kind} {text!r}: {reason}")


# ---------------------------------------------------------------------------------------------
# unit tables (canonical spelling -> factor to the canonical unit)

_TIME: Final[dict[str, float]] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign U+00B5
    "μs": 1e-6,  # greek small mu U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_TIME_CANON: Final[dict[str, str]] = {"µs": "us", "μs": "us", "sec": "s", "min": "m"}

_SIZE: Final[dict[str, int]] = {
    "B": 1,
    "KB": 1000,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_SIZE_CANON: Final[dict[str, str]] = {"kB": "KB"}

# the time part of a rate ("/s", "/min") -> seconds per that unit
_PER: Final[dict[str, float]] = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PER_CANON: Final[dict[str, str]] = {"sec": "s", "m": "min"}

_TIME_HELP: Final = "us ms s m h"
_SIZE_HELP: Final = "B KB MB GB TB KiB MiB GiB TiB"
_RATE_HELP: Final = "/s /min /h, or a bare number per second"
_SIZE_RATE_HELP: Final = "a size per time, e.g. KB/h MB/h GB/h MiB/h B/s"
_RATIO_HELP: Final = "%, or a bare fraction between 0 and 1"

_HELP: Final[dict[Dimension, str]] = {
    "time": _TIME_HELP,
    "size": _SIZE_HELP,
    "ratio": _RATIO_HELP,
    "rate": _RATE_HELP,
    "size_rate": _SIZE_RATE_HELP,
    "number": "a plain number",
}


def allowed_units(dimension: Dimension) -> str:
    """Human text listing the units accepted for ``dimension`` (for error messages)."""
    return _HELP[dimension]


def _lookup(unit: str, table: dict[str, float] | dict[str, int]) -> str | None:
    """Return the table key ``unit`` stands for, or None (see module docstring for the rules)."""
    if unit in table:
        return unit
    if unit not in (unit.lower(), unit.upper()):
        return None  # mixed case that is not an exact spelling: "Mb", "Ms"
    if unit == "M":
        return None  # mega? month? minutes? refuse to guess
    folded = unit.lower()
    for key in table:
        if key.lower() == folded:
            return key
    return None


def _time_unit(unit: str) -> str | None:
    return _lookup(unit, _TIME)


def _size_unit(unit: str) -> str | None:
    return _lookup(unit, _SIZE)


def _per_unit(unit: str) -> str | None:
    return _lookup(unit, _PER)


def _suggest(unit: str) -> str:
    """A hint for a unit that is close to a valid one."""
    if unit == "M":
        return " (write 'm' for minutes or 'MB' for megabytes)"
    if len(unit) == 2 and unit[1] == "b" and unit[0] in "KkMGT":
        return f" ({unit} is a bit unit; did you mean {unit[0].upper()}B?)"
    if unit in ("sec", "secs", "seconds", "second"):
        return " (write 's')"
    if unit.lower() in ("mins", "minute", "minutes"):
        return " (write 'm' or 'min')"
    if unit.lower() in ("hr", "hrs", "hour", "hours"):
        return " (write 'h')"
    lower = unit.lower()
    for table in (_TIME, _SIZE):
        for key in table:
            if key.lower() == lower:
                return f" (did you mean {key!r}?)"
    return ""


# ---------------------------------------------------------------------------------------------
# parsing

_NUMBER: Final = re.compile(
    r"[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d+)?"
)
# a unit: letters (or %), optionally "/ per-unit"; or "/ per-unit" alone (rates)
_UNIT: Final = re.compile(r"(?:[^\W\d_]|%)+(?:\s*/\s*[^\W\d_]+)?|/\s*[^\W\d_]+")
_SPACE: Final = re.compile(r"\s*")


def _skip(text: str, pos: int) -> int:
    """Index of the first non-space character at or after ``pos``."""
    m = _SPACE.match(text, pos)
    return pos if m is None else m.end()


@dataclass(frozen=True)
class Quantity:
    """A parsed value, already in the canonical unit of its dimension.

    ``unit`` is the normalised spelling that was written (``"ms"``, ``"MB/h"``, ``"%"``), or
    ``""`` for a bare number.
    """

    value: float
    dimension: Dimension
    unit: str


def _classify(unit: str, text: str, start: int, kind: str) -> tuple[Dimension, float, str]:
    """Map a unit spelling to (dimension, factor to canonical, normalised spelling)."""
    span = (start, start + len(unit))
    if unit == "%":
        return "ratio", 0.01, "%"
    compact = re.sub(r"\s+", "", unit)
    if "/" in compact:
        num, _, den = compact.partition("/")
        per = _per_unit(den)
        if per is None:
            raise UnitsError(
                kind,
                text,
                f"unknown time unit {den!r} after '/' (allowed: /s /min /m /h)",
                span,
                unit,
            )
        canon_per = _PER_CANON.get(per, per)
        if num == "":
            return "rate", 1.0 / _PER[per], "/" + canon_per
        size = _size_unit(num)
        if size is None:
            raise UnitsError(
                kind,
                text,
                f"unknown size unit {num!r} in {unit!r} (allowed: {_SIZE_HELP}){_suggest(num)}",
                span,
                unit,
            )
        canon_size = _SIZE_CANON.get(size, size)
        return "size_rate", _SIZE[size] * 3600.0 / _PER[per], f"{canon_size}/{canon_per}"
    time = _time_unit(compact)
    if time is not None:
        return "time", _TIME[time], _TIME_CANON.get(time, time)
    size = _size_unit(compact)
    if size is not None:
        return "size", float(_SIZE[size]), _SIZE_CANON.get(size, size)
    raise UnitsError(
        kind,
        text,
        f"unknown unit {unit!r} (allowed: {_TIME_HELP}; {_SIZE_HELP}; %; /s /min /h; MB/h)"
        + _suggest(compact),
        span,
        unit,
    )


def _to_float(token: str) -> float:
    return float(token.replace("_", ""))


def _parse(text: str, kind: str) -> Quantity:
    if not isinstance(text, str):
        raise UnitsError(kind, repr(text), "expected a string or a number")
    pos = _skip(text, 0)
    if pos == len(text):
        raise UnitsError(kind, text, "empty value")
    total = 0.0
    dimension: Dimension | None = None
    unit_out = ""
    last_time_factor = math.inf
    first = True
    while pos < len(text):
        m = _NUMBER.match(text, pos)
        if m is None:
            if first:
                raise UnitsError(kind, text, "expected a number", (pos, len(text)))
            raise UnitsError(kind, text, "unexpected text after the value", (pos, len(text)))
        token = m.group()
        if not first and token[0] in "+-":
            raise UnitsError(kind, text, "a sign is only allowed at the start", m.span())
        number = _to_float(token)
        pos = _skip(text, m.end())
        u = _UNIT.match(text, pos)
        if u is None:
            if first:
                if pos < len(text):
                    raise UnitsError(
                        kind, text, "unexpected text after the value", (pos, len(text))
                    )
                return _finish(Quantity(number, "number", ""), text, kind)
            raise UnitsError(kind, text, "a unit is missing after the number", m.span())
        unit = u.group()
        dim, factor, spelled = _classify(unit, text, pos, kind)
        pos = _skip(text, u.end())
        if dimension is not None and dim != "time":
            raise UnitsError(
                kind,
                text,
                "only durations can be combined, like 1h30m",
                (m.start(), u.end()),
            )
        if dimension is None and dim != "time" and pos < len(text):
            raise UnitsError(kind, text, "unexpected text after the value", (pos, len(text)))
        if dim == "time":
            if factor >= last_time_factor:
                raise UnitsError(
                    kind,
                    text,
                    "combine durations from the largest unit to the smallest, like 1h30m",
                    (m.start(), u.end()),
                )
            last_time_factor = factor
        total += number * factor
        if dimension is None:
            dimension = dim
            unit_out = spelled
        first = False
    assert dimension is not None
    return _finish(Quantity(total, dimension, unit_out), text, kind)


def _finish(q: Quantity, text: str, kind: str) -> Quantity:
    if not math.isfinite(q.value):
        raise UnitsError(kind, text, "the value is not a finite number")
    return q


def parse_quantity(text: str) -> Quantity:
    """Parse ``"250ms"``, ``"1h30m"``, ``"10MB/h"``, ``"0.1%"``, ``"100/s"``, ``"42"``.

    The value is returned in the canonical unit of its dimension; a leading sign is kept
    (``"+10%"`` -> ratio 0.1, ``"-5ms"`` -> time -0.005). Raises :class:`UnitsError`.
    """
    return _parse(text, "quantity")


def _number_input(v: object, kind: str) -> float | None:
    """Return a float for int/float input (rejecting bools and non-finite), None for str."""
    if isinstance(v, bool):
        raise UnitsError(kind, repr(v), "expected a string or a number, not a bool")
    if isinstance(v, (int, float)):
        f = float(v)
        if not math.isfinite(f):
            raise UnitsError(kind, repr(v), "the value is not a finite number")
        return f
    if isinstance(v, str):
        return None
    raise UnitsError(kind, repr(v), f"expected a string or a number, not {type(v).__name__}")


def _non_negative(value: float, text: str, kind: str) -> float:
    if value < 0:
        raise UnitsError(kind, text, f"a {kind} cannot be negative")
    return value


def _wrong_dimension(q: Quantity, text: str, kind: str, expected: Dimension) -> UnitsError:
    return UnitsError(
        kind,
        text,
        f"{q.unit!r} is a {_DIM_NOUN[q.dimension]} unit; use {allowed_units(expected)}",
    )


_DIM_NOUN: Final[dict[Dimension, str]] = {
    "time": "time",
    "size": "size",
    "ratio": "percentage",
    "rate": "rate",
    "size_rate": "size-rate",
    "number": "plain number",
}


def parse_duration(v: str | int | float) -> float:
    """Seconds from ``"250ms"``, ``"1.5s"``, ``"2m"``, ``"2h"``, ``"30us"``, ``"1h30m"``.

    Bare numbers are seconds."""
    kind = "duration"
    f = _number_input(v, kind)
    if f is not None:
        return _non_negative(f, repr(v), kind)
    assert isinstance(v, str)
    q = _parse(v, kind)
    if q.dimension not in ("time", "number"):
        raise _wrong_dimension(q, v, kind, "time")
    return _non_negative(q.value, v, kind)


def parse_size(v: str | int | float) -> int:
    """Bytes from ``"512KB"``, ``"1.5GB"``, ``"64MiB"`` (KB = 1000 B, KiB = 1024 B).

    Bare numbers are bytes; fractional bytes are rounded."""
    kind = "size"
    f = _number_input(v, kind)
    if f is None:
        assert isinstance(v, str)
        q = _parse(v, kind)
        if q.dimension not in ("size", "number"):
            raise _wrong_dimension(q, v, kind, "size")
        f = q.value
        text = v
    else:
        text = repr(v)
    return round(_non_negative(f, text, kind))


def parse_rate(v: str | int | float) -> float:
    """Per second from ``"100/s"``, ``"6000/min"``, ``"10/m"``, ``"5/h"``; bare = per second."""
    kind = "rate"
    f = _number_input(v, kind)
    if f is not None:
        return _non_negative(f, repr(v), kind)
    assert isinstance(v, str)
    q = _parse(v, kind)
    if q.dimension not in ("rate", "number"):
        raise _wrong_dimension(q, v, kind, "rate")
    return _non_negative(q.value, v, kind)


def parse_ratio(v: str | int | float) -> float:
    """A ratio 0..1 from ``"5%"`` or a bare fraction ``0.05``.

    A bare number above 1 is refused with a hint (``5`` -> write ``5%``)."""
    kind = "ratio"
    f = _number_input(v, kind)
    if f is None:
        assert isinstance(v, str)
        q = _parse(v, kind)
        if q.dimension not in ("ratio", "number"):
            raise _wrong_dimension(q, v, kind, "ratio")
        f, text, bare = q.value, v, q.dimension == "number"
    else:
        text, bare = repr(v), True
    _non_negative(f, text, kind)
    if bare and f > 1:
        raise UnitsError(kind, text, f"a bare ratio must be between 0 and 1; did you mean {f:g}%?")
    return f


def parse_size_rate(v: str | int | float) -> float:
    """Bytes per hour from ``"10MB/h"``, ``"512KB/min"``, ``"1MiB/h"``; numbers are bytes/hour.

    A bare number in a string is refused (``"10"`` could mean anything): write ``10MB/h``.
    """
    kind = "size rate"
    f = _number_input(v, kind)
    if f is not None:
        return _non_negative(f, repr(v), kind)
    assert isinstance(v, str)
    q = _parse(v, kind)
    if q.dimension == "number":
        raise UnitsError(kind, v, f"a unit is required, e.g. '{v.strip()}MB/h'")
    if q.dimension != "size_rate":
        raise _wrong_dimension(q, v, kind, "size_rate")
    return _non_negative(q.value, v, kind)


# ---------------------------------------------------------------------------------------------
# formatting


def _compact(x: float) -> str:
    """About three significant figures: 850, 45.2, 3.14."""
    if x >= 99.95:
        return f"{x:.0f}"
    if x >= 9.995:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _signed(x: float, fmt: str) -> str:
    return fmt if x >= 0 else "-" + fmt


def format_duration(s: float) -> str:
    """Compact duration: ``"2h00m"``, ``"1m30s"``, ``"45.2s"``, ``"850ms"``, ``"12.0us"``."""
    if not math.isfinite(s):
        return str(s)
    a = abs(s)
    if a == 0:
        return "0s"
    if a >= 3600 - 30:
        minutes = round(a / 60)
        out = f"{minutes // 60}h{minutes % 60:02d}m"
    elif a >= 60 - 0.5:
        secs = round(a)
        out = f"{secs // 60}m{secs % 60:02d}s"
    elif a >= 1 - 0.0005:
        out = f"{a:.1f}s" if a >= 9.95 else f"{a:.2f}s"
    elif a >= 1e-3 - 5e-7:
        out = _compact(a * 1e3) + "ms"
    else:
        out = _compact(a * 1e6) + "us"
    return _signed(s, out)


def format_latency(s: float) -> str:
    """Millisecond-oriented latency: ``"3.1ms"``, ``"480.2ms"``, ``"850us"``, ``"1.2s"``."""
    if not math.isfinite(s):
        return str(s)
    a = abs(s)
    if a == 0:
        return "0ms"
    if a >= 60 - 0.005:
        return _signed(s, format_duration(a))
    if a >= 1 - 0.00005:
        text = f"{a:.2f}".rstrip("0").rstrip(".")
        return _signed(s, text + "s")
    if a >= 1e-3 - 5e-7:
        return _signed(s, _three_figures(a * 1e3) + "ms")
    us = a * 1e6
    return _signed(s, (f"{us:.0f}" if us >= 99.95 else _three_figures(us)) + "us")


def _three_figures(v: float) -> str:
    """One decimal, or two below 10 so that three figures remain: "1.95", "7.0", "48.2"."""
    if v >= 9.995:
        return f"{v:.1f}"
    text = f"{v:.2f}"
    return text[:-1] if text.endswith("0") else text


_SIZE_STEPS: Final = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def format_size(b: float) -> str:
    """Decimal size: ``"2.3GB"``, ``"512KB"``, ``"12.5MB"``, ``"800B"``."""
    if not math.isfinite(b):
        return str(b)
    a = abs(b)
    for name, factor in _SIZE_STEPS:
        x = a / factor
        if x >= 0.9995:
            text = f"{x:.0f}" if x >= 99.95 else f"{x:.1f}"
            return _signed(b, text + name)
    return _signed(b, f"{a:.0f}B")


def format_size_rate(bph: float) -> str:
    """Bytes per hour as ``"3.1MB/h"``."""
    return format_size(bph) + "/h"


def format_rate(r: float) -> str:
    """Per-second rate: ``"1003.7/s"``, ``"2.50/s"``; slow rates per hour (``"180/h"``)."""
    if not math.isfinite(r):
        return str(r)
    a = abs(r)
    if a == 0:
        return "0/s"
    if a >= 9.995:
        return _signed(r, f"{a:.1f}/s")
    if a >= 0.0995:
        return _signed(r, f"{a:.2f}/s")
    return _signed(r, _compact(a * 3600) + "/h")


def format_ratio(r: float) -> str:
    """A ratio as a percentage: ``"0.40%"``, ``"12.50%"``."""
    if not math.isfinite(r):
        return str(r)
    return f"{r * 100:.2f}%"


def format_number(x: float) -> str:
    """A count or plain number: ``"12"``, ``"3.5"``."""
    if not math.isfinite(x):
        return str(x)
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4g}"


def format_value(value: float, dimension: Dimension) -> str:
    """Format a canonical value of ``dimension`` with the matching formatter."""
    if dimension == "time":
        return format_latency(value)
    if dimension == "size":
        return format_size(value)
    if dimension == "ratio":
        return format_ratio(value)
    if dimension == "rate":
        return format_rate(value)
    if dimension == "size_rate":
        return format_size_rate(value)
    return format_number(value)
