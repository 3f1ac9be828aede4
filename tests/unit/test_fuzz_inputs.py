"""Any input gives a result or a clean usage error, never an exception of ours: the threshold and
comparison parser, the units, the marker arguments and the option values, fuzzed."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_stressguard import settings as options
from pytest_stressguard.core.thresholds import (
    CompareRule,
    Threshold,
    ThresholdError,
    parse_compare,
    parse_threshold,
)
from pytest_stressguard.core.units import (
    UnitsError,
    parse_duration,
    parse_quantity,
    parse_rate,
    parse_size,
)
from pytest_stressguard.kinds import MARKER_KINDS, bind_spec
from pytest_stressguard.markers import MarkerError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# Text near the grammar finds more than random unicode: metric names, operators, numbers, units.
ATOMS = ["p95", "p99.9", "p0", "p101", "rps", "error_rate", "leak", "capacity", "drift",
         "errors", "peak_rss", "{", "}", "{GET /x}", "<", "<=", ">", ">=", "==", "=", "!",
         ":", "+", "-", "%", "10", "0", "-1", "1e309", "nan", "inf", "0.5", ".", "ms", "s",
         "MB/h", "GB", "/s", "/min", " ", "µs", "\u00a0", "\x00"]
near_grammar = st.lists(st.sampled_from(ATOMS), max_size=8).map("".join)
any_text = st.one_of(near_grammar, st.text(max_size=30))


@FUZZ
@given(any_text)
def test_threshold_text_parses_or_says_why(text: str) -> None:
    for scope in ("test", "session"):
        try:
            t = parse_threshold(text, scope=scope)  # type: ignore[arg-type]
        except ThresholdError as exc:
            assert str(exc).startswith("invalid threshold")
            continue
        assert isinstance(t, Threshold) and math.isfinite(t.limit)


@FUZZ
@given(any_text)
def test_comparison_text_parses_or_says_why(text: str) -> None:
    try:
        rule = parse_compare(text)
    except ThresholdError as exc:
        assert str(exc).startswith("invalid comparison")
        return
    assert isinstance(rule, CompareRule) and math.isfinite(rule.tolerance)


@FUZZ
@given(st.one_of(any_text, st.integers(), st.floats()))
def test_units_parse_or_say_why(value: Any) -> None:
    for parse in (parse_duration, parse_size, parse_rate):
        with contextlib.suppress(UnitsError):
            parse(value)
    if isinstance(value, str):
        with contextlib.suppress(UnitsError):
            parse_quantity(value)


values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True), any_text,
    st.lists(st.one_of(any_text, st.integers()), max_size=3),
    st.lists(st.tuples(any_text, st.one_of(st.integers(-5, 500), any_text)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FUZZ
@given(st.sampled_from(sorted(MARKER_KINDS)), st.data())
def test_marker_arguments_bind_or_say_why(name: str, data: st.DataObject) -> None:
    params = list(inspect.signature(MARKER_KINDS[name].marker).parameters)
    keys = data.draw(st.lists(st.sampled_from([*params, "typo_argument"]), max_size=4,
                              unique=True))
    kwargs = {key: data.draw(values) for key in keys}
    args = tuple(data.draw(st.lists(values, max_size=2)))
    try:
        spec = bind_spec(name, args, kwargs, 1.0)
    except MarkerError as exc:
        assert str(exc)
        return
    assert spec.scaled(0.5) is not None


@FUZZ
@given(any_text)
def test_option_values_parse_or_say_why(text: str) -> None:
    for opt in options.OPTIONS:
        if opt.parse is None:
            continue
        try:
            opt.parse(text)
        except argparse.ArgumentTypeError as exc:
            assert str(exc)
