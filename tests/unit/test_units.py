"""core.units: parsing to canonical units, strict-but-helpful spellings, formatting."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_stressguard.core.units import (
    CANONICAL_UNIT,
    DIMENSIONS,
    Quantity,
    UnitsError,
    allowed_units,
    format_duration,
    format_latency,
    format_number,
    format_rate,
    format_ratio,
    format_size,
    format_size_rate,
    format_value,
    parse_duration,
    parse_quantity,
    parse_rate,
    parse_ratio,
    parse_size,
    parse_size_rate,
)

# --------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("2min", 120.0),
        ("2h", 7200.0),
        ("30us", 30e-6),
        ("30µs", 30e-6),  # micro sign
        ("30μs", 30e-6),  # greek mu
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1m30s", 90.0),
        (" 250 ms ", 0.25),
        ("10", 10.0),
        ("0.5", 0.5),
        (".5s", 0.5),
        ("1e3ms", 1.0),
        ("1MS", 0.001),  # all-uppercase is unambiguous for time units
        ("2H", 7200.0),
    ],
)
def test_parse_duration_returns_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_numbers_are_seconds() -> None:
    assert parse_duration(3) == 3.0
    assert parse_duration(0.25) == 0.25


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("5xx", "unknown unit 'xx'"),
        ("2M", "write 'm' for minutes"),
        ("5MB", "use us ms s m h"),
        ("5%", "use us ms s m h"),
        ("-1s", "cannot be negative"),
        ("30s1m", "largest unit to the smallest"),
        ("1h30", "unit is missing"),
        ("1h 5MB", "only durations can be combined"),
        ("5 5", "unexpected text"),
        ("5ms junk", "unexpected text"),
        ("nan", "expected a number"),
        ("inf", "expected a number"),
        ("1e999s", "not a finite number"),
        ("ms", "expected a number"),
        ("5mS", "did you mean 'ms'"),
    ],
)
def test_parse_duration_rejects_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(UnitsError) as info:
        parse_duration(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message  # the input is quoted


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, True, None, [1]])
def test_parse_duration_rejects_bad_python_values(bad: object) -> None:
    with pytest.raises(UnitsError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_units_error_is_a_value_error_with_span() -> None:
    with pytest.raises(ValueError) as info:
        parse_quantity("12 parsecs")
    err = info.value
    assert isinstance(err, UnitsError)
    assert err.span == (3, 10)
    assert err.unit == "parsecs"
    assert err.text == "12 parsecs"


# --------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("512", 512),
        ("512B", 512),
        ("1KB", 1000),
        ("1kB", 1000),
        ("1kb", 1000),
        ("1.5MB", 1_500_000),
        ("1mb", 1_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("64MiB", 64 * 1024**2),
        ("1gib", 1024**3),
        ("1TiB", 1024**4),
        ("100 MB", 100_000_000),
    ],
)
def test_parse_size_returns_bytes(text: str, nbytes: int) -> None:
    value = parse_size(text)
    assert value == nbytes
    assert isinstance(value, int)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5Mb", "bit unit; did you mean MB"),
        ("5Kb", "bit unit; did you mean KB"),
        ("5M", "MB"),
        ("5ms", "'ms' is a time unit"),
        ("-5MB", "cannot be negative"),
        ("5XB", "unknown unit 'XB'"),
    ],
)
def test_parse_size_rejects_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(UnitsError, match=None) as info:
        parse_size(text)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------------- rates


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("6000/min", 100.0),
        ("600/m", 10.0),
        ("3600/h", 1.0),
        ("100 / s", 100.0),
        ("100/S", 100.0),
        ("100/sec", 100.0),
        ("42", 42.0),
    ],
)
def test_parse_rate_returns_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("text", "fragment"), [("100/d", "after '/'"), ("100s", "time unit"), ("5/M", "after '/'")]
)
def test_parse_rate_rejects(text: str, fragment: str) -> None:
    with pytest.raises(UnitsError) as info:
        parse_rate(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "bytes_per_hour"),
    [
        ("10MB/h", 10_000_000.0),
        ("10 MB / h", 10_000_000.0),
        ("1mb/h", 1_000_000.0),
        ("1KB/min", 60_000.0),
        ("1B/s", 3600.0),
        ("1MiB/h", float(1024**2)),
        ("1GB/h", 1e9),
    ],
)
def test_parse_size_rate_returns_bytes_per_hour(text: str, bytes_per_hour: float) -> None:
    assert parse_size_rate(text) == pytest.approx(bytes_per_hour)


def test_parse_size_rate_needs_a_unit_in_text_but_takes_numbers() -> None:
    with pytest.raises(UnitsError, match="10MB/h"):
        parse_size_rate("10")
    with pytest.raises(UnitsError, match=r"size-rate|size per time"):
        parse_size_rate("10MB")
    assert parse_size_rate(5.0) == 5.0


# --------------------------------------------------------------------------------- ratios


@pytest.mark.parametrize(
    ("value", "ratio"), [("5%", 0.05), ("0.1%", 0.001), ("0.05", 0.05), (0.2, 0.2), ("150%", 1.5)]
)
def test_parse_ratio(value: str | float, ratio: float) -> None:
    assert parse_ratio(value) == pytest.approx(ratio)


def test_parse_ratio_bare_number_above_one_suggests_percent() -> None:
    with pytest.raises(UnitsError, match="did you mean 5%"):
        parse_ratio("5")
    with pytest.raises(UnitsError, match="did you mean 20%"):
        parse_ratio(20)


# --------------------------------------------------------------------------------- quantities


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10MB/h", Quantity(10_000_000.0, "size_rate", "MB/h")),
        ("0.1%", Quantity(0.001, "ratio", "%")),
        ("250ms", Quantity(0.25, "time", "ms")),
        ("100/s", Quantity(100.0, "rate", "/s")),
        ("10/min", Quantity(10 / 60, "rate", "/min")),
        ("2kb", Quantity(2000.0, "size", "KB")),
        ("42", Quantity(42.0, "number", "")),
        ("+10%", Quantity(0.1, "ratio", "%")),
        ("-5ms", Quantity(-0.005, "time", "ms")),
        ("10_000/s", Quantity(10_000.0, "rate", "/s")),
    ],
)
def test_parse_quantity_dimension_and_canonical_value(text: str, expected: Quantity) -> None:
    q = parse_quantity(text)
    assert (q.dimension, q.unit) == (expected.dimension, expected.unit)
    assert q.value == pytest.approx(expected.value)


def test_every_dimension_has_a_canonical_unit_and_help() -> None:
    assert set(CANONICAL_UNIT) == set(DIMENSIONS)
    assert allowed_units("time") == "us ms s m h"
    for dim in DIMENSIONS:
        assert allowed_units(dim)


# --------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (7200, "2h00m"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (45.2, "45.2s"),
        (0.85, "850ms"),
        (12e-6, "12.0us"),
        (0, "0s"),
        (59.7, "1m00s"),  # no "60.0s"
        (3599.9, "1h00m"),  # no "59m60s"
        (-0.85, "-850ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0031, "3.1ms"),
        (0.4802, "480.2ms"),
        (0.012, "12.0ms"),
        (850e-6, "850us"),
        (12e-6, "12.0us"),
        (1.2, "1.2s"),
        (1.0, "1s"),
        (0.99996, "1s"),
        (90, "1m30s"),
    ],
)
def test_format_latency(seconds: float, text: str) -> None:
    assert format_latency(seconds) == text


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (2.3e9, "2.3GB"),
        (512_000, "512KB"),
        (12_500_000, "12.5MB"),
        (800, "800B"),
        (999_600, "1.0MB"),  # no "1000KB"
        (-12_000, "-12.0KB"),
    ],
)
def test_format_size(nbytes: float, text: str) -> None:
    assert format_size(nbytes) == text


def test_format_rates_ratios_numbers() -> None:
    assert format_rate(1003.7) == "1003.7/s"
    assert format_rate(2.5) == "2.50/s"
    assert format_rate(0.05) == "180/h"
    assert format_ratio(0.004) == "0.40%"
    assert format_size_rate(3.1e6) == "3.1MB/h"
    assert format_number(12.0) == "12"
    assert format_number(3.5) == "3.5"
    assert format_value(0.0031, "time") == "3.1ms"
    assert format_value(0.004, "ratio") == "0.40%"
    assert format_value(3, "number") == "3"


def test_formatters_do_not_crash_on_non_finite() -> None:
    for fmt in (format_duration, format_latency, format_size, format_rate, format_ratio):
        assert fmt(math.inf) == "inf"
        assert fmt(math.nan) == "nan"


# --------------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_parsers_raise_only_units_error(text: str) -> None:
    for parse in (parse_duration, parse_size, parse_rate, parse_ratio, parse_size_rate):
        with contextlib.suppress(UnitsError):
            parse(text)
    try:
        q = parse_quantity(text)
    except UnitsError:
        return
    assert math.isfinite(q.value)


_UNITY = st.sampled_from(
    ["", " ", "ms", "s", "m", "h", "us", "KB", "MiB", "%", "/s", "/min", "MB/h", "1", "e", "+", "."]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_UNITY, max_size=6).map("".join))
def test_fuzz_unit_like_text_raises_only_units_error(text: str) -> None:
    with contextlib.suppress(UnitsError):
        parse_quantity(text)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e6))
def test_duration_round_trip_within_rounding(seconds: float) -> None:
    for fmt in (format_duration, format_latency):
        back = parse_duration(fmt(seconds))
        # three significant figures, or whole seconds/minutes for long durations
        coarse = 30.0 if seconds >= 3570 else 0.5 if seconds >= 59 else 0.0
        tolerance = max(seconds * 0.006, coarse)
        assert abs(back - seconds) <= tolerance, (fmt.__name__, seconds, fmt(seconds))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**15))
def test_size_round_trip_within_rounding(nbytes: int) -> None:
    back = parse_size(format_size(nbytes))
    assert abs(back - nbytes) <= max(nbytes * 0.051, 0.5)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e7))
def test_rate_round_trip_within_rounding(rate: float) -> None:
    back = parse_rate(format_rate(rate))
    assert back == pytest.approx(rate, rel=0.051)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=10))
def test_ratio_round_trip_within_rounding(ratio: float) -> None:
    assert abs(parse_ratio(format_ratio(ratio)) - ratio) <= 0.00005 + 1e-12
