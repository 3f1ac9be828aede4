"""core.thresholds: one grammar for SLAs, gates and baseline comparisons."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_stressguard.core.metrics import Scope, declared
from pytest_stressguard.core.thresholds import (
    CompareRule,
    Threshold,
    ThresholdError,
    evaluate,
    find_metric,
    format_metric_value,
    is_percentile,
    metric_dimension,
    parse_compare,
    parse_compares,
    parse_threshold,
    parse_thresholds,
    percentile_of,
)
from pytest_stressguard.core.units import format_duration, format_ratio, format_size

# --------------------------------------------------------------------------------- registry


def test_metric_registry_covers_the_spec() -> None:
    spec = [
        "mean",
        "min",
        "max",
        "rps",
        "errors",
        "error_rate",
        "dropped",
        "peak_rss",
        "leak",
        "drift",
        "cpu",
        "capacity",
        "pool_wait_p95",
        "pool_waiting_max",
        "pool_timeouts",
        "pool_errors",
        "leaked_connections",
        "deadlocks",
        "serialization_failures",
        "test_duration_p95",
        "test_duration_max",
        "tests_per_s",
        "failure_rate",
    ]
    assert set(spec) <= set(declared("test")) | set(declared("session"))
    assert all(metric_dimension(name) for name in declared("session"))
    assert metric_dimension("p95") == "time"
    assert metric_dimension("p99.9") == "time"
    assert metric_dimension("p75") == "time"  # any pNN
    assert metric_dimension("leak") == "size_rate"
    assert metric_dimension("error_rate") == "ratio"
    assert metric_dimension("rps") == "rate"
    assert metric_dimension("peak_rss") == "size"
    assert metric_dimension("deadlocks") == "number"
    with pytest.raises(ValueError, match="unknown metric"):
        metric_dimension("latency")


@pytest.mark.parametrize(
    ("name", "q"), [("p50", 50.0), ("p99.9", 99.9), ("p100", 100.0), ("p0.1", 0.1)]
)
def test_percentiles(name: str, q: float) -> None:
    assert is_percentile(name)
    assert percentile_of(name) == q


@pytest.mark.parametrize("name", ["p0", "p101", "p", "px", "mean", "p95x", "P95"])
def test_not_percentiles(name: str) -> None:
    assert not is_percentile(name)
    with pytest.raises(ValueError):
        percentile_of(name)


# --------------------------------------------------------------------------------- parsing


def scope_of(metric: str) -> Scope:
    """Session gates' metrics parse in the session scope only."""
    return "test" if find_metric(metric, "test") else "session"


@pytest.mark.parametrize(
    ("expr", "metric", "endpoint", "op", "limit", "dimension"),
    [
        ("p95<500ms", "p95", None, "<", 0.5, "time"),
        ("  p95  <=  500 ms  ", "p95", None, "<=", 0.5, "time"),
        ("p99.9<1s", "p99.9", None, "<", 1.0, "time"),
        ("p95.0<1s", "p95", None, "<", 1.0, "time"),  # normalised name
        ("p75>=2ms", "p75", None, ">=", 0.002, "time"),
        ("mean<1.5s", "mean", None, "<", 1.5, "time"),
        ("max<2m", "max", None, "<", 120.0, "time"),
        ("error_rate<0.1%", "error_rate", None, "<", 0.001, "ratio"),
        ("error_rate<0.01", "error_rate", None, "<", 0.01, "ratio"),
        ("errors==0", "errors", None, "==", 0.0, "number"),
        ("dropped<=10", "dropped", None, "<=", 10.0, "number"),
        ("rps>100", "rps", None, ">", 100.0, "rate"),
        ("rps>=6000/min", "rps", None, ">=", 100.0, "rate"),
        ("rps > 100/s", "rps", None, ">", 100.0, "rate"),
        ("peak_rss<2GB", "peak_rss", None, "<", 2e9, "size"),
        ("peak_rss<512MiB", "peak_rss", None, "<", 512 * 1024**2, "size"),
        ("leak<10MB/h", "leak", None, "<", 1e7, "size_rate"),
        ("drift<20%", "drift", None, "<", 0.2, "ratio"),
        ("drift>-50%", "drift", None, ">", -0.5, "ratio"),
        ("cpu<80%", "cpu", None, "<", 0.8, "ratio"),
        ("capacity>=200", "capacity", None, ">=", 200.0, "number"),
        ("capacity>=50/s", "capacity", None, ">=", 50.0, "rate"),
        ("pool_wait_p95<50ms", "pool_wait_p95", None, "<", 0.05, "time"),
        ("deadlocks==0", "deadlocks", None, "==", 0.0, "number"),
        ("test_duration_max<10m", "test_duration_max", None, "<", 600.0, "time"),
        ("tests_per_s>2", "tests_per_s", None, ">", 2.0, "rate"),
        ("failure_rate<1%", "failure_rate", None, "<", 0.01, "ratio"),
        ("p95{GET /items}<200ms", "p95", "GET /items", "<", 0.2, "time"),
        ("p95 { GET /items } < 200ms", "p95", "GET /items", "<", 0.2, "time"),
        ("p95{GET /items/{id}}<200ms", "p95", "GET /items/{id}", "<", 0.2, "time"),
        ("error_rate{login}<1%", "error_rate", "login", "<", 0.01, "ratio"),
    ],
)
def test_parse_threshold(
    expr: str, metric: str, endpoint: str | None, op: str, limit: float, dimension: str
) -> None:
    t = parse_threshold(expr, scope=scope_of(metric))
    assert t.expr == expr.strip()
    assert (t.metric, t.endpoint, t.op, t.dimension) == (metric, endpoint, op, dimension)
    assert t.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    ("expr", "fragment", "caret"),
    [
        # unit of the wrong dimension names the metric, the unit and what is allowed
        ("p95<5MB", "p95 is a latency; 'MB' does not fit (use a time unit (us ms s m h))", "^^^"),
        ("p95<5xx", "unknown unit 'xx' (p95 is a latency; use a time unit (us ms s m h))", "^^"),
        # time metrics require a unit and the message suggests one
        ("p95<500", "needs a time unit (us ms s m h), e.g. 500ms", "^^^"),
        # ratios: a bare number above 1 suggests %
        ("error_rate<5", "did you mean 5%?", "^"),
        ("errors<5%", "for a share of iterations use error_rate", "^^"),
        ("leak<10MB", "leak is a memory growth rate", "^^^^"),
        ("peak_rss<2000", "needs a size unit", "^^^^"),
        ("rps>5ms", "rps is a rate", "^^^"),
        ("p95", "expected an operator", "^"),
        ("p95 500ms", "expected an operator", "^"),
        ("p95<", "the value is missing", "^"),
        ("p95<5ms junk", "unexpected text after the value", "^^^^"),
        ("p95<5ms<6ms", "unexpected text after the value", "^^^^"),
        ("p95=5ms", "unknown operator '='", "^"),
        ("p95=<5ms", "unknown operator '=<'", "^^"),
        ("p95!=5ms", "unknown operator '!='", "^^"),
        ("p0<1ms", "out of range", "^^"),
        ("p101<1s", "out of range", "^^^^"),
        ("errors<-1", "negative limit", "^^"),
        ("p95<-5ms", "negative limit", "^^^^"),
        ("p95<nan", "expected a number", "^^^"),
        ("p95<infms", "expected a number", "^^^^^"),
        ("p95<1e999s", "not a finite number", "^^^^^^"),
        ("p95{GET /x<1s", "no closing '}'", "^^^^^^^^^^"),
        ("p95{ }<1s", "endpoint name is empty", "^^^"),
        ("p95}<1s", "without an opening", "^"),
        ("peak_rss{a}<1GB", "peak_rss has no per-endpoint value", "^^^^^^^^^^^"),
        ("<5ms", "expected a metric name", "^"),
    ],
)
def test_parse_threshold_errors_quote_and_point(expr: str, fragment: str, caret: str) -> None:
    with pytest.raises(ThresholdError) as info:
        parse_threshold(expr)
    err = info.value
    lines = str(err).splitlines()
    assert lines[0].startswith(f"invalid threshold {expr!r}: ")
    assert fragment in lines[0]
    assert lines[1] == f"    {expr}"
    assert lines[2].strip() == caret
    assert err.span is not None
    assert lines[2] == "    " + " " * err.span[0] + caret


def test_caret_points_under_the_bad_unit() -> None:
    with pytest.raises(ThresholdError) as info:
        parse_threshold("p95<5xx")
    assert str(info.value) == (
        "invalid threshold 'p95<5xx': unknown unit 'xx' (p95 is a latency; use a time unit "
        "(us ms s m h))\n    p95<5xx\n         ^^"
    )


def test_unknown_metric_lists_close_matches_and_allowed() -> None:
    with pytest.raises(ThresholdError) as info:
        parse_threshold("eror_rate<1%")
    message = str(info.value)
    assert "unknown metric 'eror_rate'; did you mean error_rate" in message
    assert "(allowed: p50 p90 p95 p99 p99.9 mean" in message
    assert "(any pNN)" in message
    with pytest.raises(ThresholdError, match="did you mean p95"):
        parse_threshold("P95<1s")


@pytest.mark.parametrize("bad", ["", "   ", None, 5, b"p95<1s"])
def test_empty_and_non_string_are_clean_errors(bad: object) -> None:
    with pytest.raises(ThresholdError, match="invalid threshold"):
        parse_threshold(bad)  # type: ignore[arg-type]


def test_threshold_error_is_a_value_error() -> None:
    assert issubclass(ThresholdError, ValueError)


def test_caret_line_survives_tabs_and_newlines() -> None:
    with pytest.raises(ThresholdError) as info:
        parse_threshold("p95\t<\n5xx")
    lines = str(info.value).splitlines()
    assert lines[1] == "    p95 < 5xx"
    assert lines[2] == "    " + " " * 7 + "^^"


def test_allowed_restricts_metrics() -> None:
    assert parse_threshold("peak_rss<2GB", scope="session").metric == "peak_rss"
    with pytest.raises(ThresholdError, match="'p95' is not available here"):
        parse_threshold("p95<1s", scope="session")
    assert parse_threshold("p75<1s", allowed=("p95", "errors")).metric == "p75"  # pNN entry
    with pytest.raises(ThresholdError, match="'capacity' is not available here"):
        parse_threshold("capacity>10", allowed=("p95", "errors"))
    with pytest.raises(ThresholdError, match="did you mean test_duration_max"):
        parse_threshold("test_duration_mx<1s", scope="session")


def test_parse_thresholds_keeps_order_and_treats_str_as_one() -> None:
    ts = parse_thresholds(["p95<1s", "errors==0"])
    assert [t.metric for t in ts] == ["p95", "errors"]
    assert [t.metric for t in parse_thresholds("p95<1s")] == ["p95"]


# --------------------------------------------------------------------------------- checking


@pytest.mark.parametrize(
    ("expr", "value", "ok"),
    [
        ("p95<500ms", 0.4999, True),
        ("p95<500ms", 0.5, False),
        ("p95<=500ms", 0.5, True),
        ("rps>100", 100.0, False),
        ("rps>=100", 100.0, True),
        ("errors==0", 0, True),
        ("errors==0", 1, False),
        ("error_rate<0.1%", 0.0009, True),
        ("error_rate<0.1%", 0.0011, False),
        ("p95<0.3s", 0.1 + 0.2, False),  # 0.30000000000000004
        ("p95==300ms", 0.1 + 0.2, True),  # == tolerates float noise
    ],
)
def test_check(expr: str, value: float, ok: bool) -> None:
    result = parse_threshold(expr).check(value)
    assert result.ok is ok
    assert result.value == value


def test_describe_uses_the_units_formatters() -> None:
    t = parse_threshold("p95<300ms")
    assert t.check(0.4802).describe() == "FAIL p95<300ms (480.2ms)"
    assert parse_threshold("p95<500ms").check(0.4802).describe() == "ok p95<500ms (480.2ms)"
    assert parse_threshold("error_rate<0.1%").check(0.004).describe() == (
        "FAIL error_rate<0.1% (0.40%)"
    )
    assert parse_threshold("peak_rss<2GB").check(2.3e9).describe() == "FAIL peak_rss<2GB (2.3GB)"
    assert parse_threshold("leak<10MB/h").check(3.1e6).describe() == "ok leak<10MB/h (3.1MB/h)"
    assert parse_threshold("rps>100").check(1003.7).describe() == "ok rps>100 (1003.7/s)"
    assert parse_threshold("errors==0").check(3).describe() == "FAIL errors==0 (3)"
    assert parse_threshold("capacity>=100").check(80).describe() == "FAIL capacity>=100 (80 users)"


def test_none_is_not_measured_and_fails() -> None:
    result = parse_threshold("p95<300ms").check(None)
    assert result.ok is False
    assert result.note == "not measured"
    assert result.describe() == "FAIL p95<300ms (not measured)"


def test_nan_is_not_a_pass() -> None:
    result = parse_threshold("p95<300ms").check(math.nan)
    assert result.ok is False
    assert "not a number" in result.describe()


def test_to_dict_is_plain_data_in_canonical_units() -> None:
    d = parse_threshold("p95{GET /x}<300ms").check(0.25).to_dict()
    assert d["expr"] == "p95{GET /x}<300ms"
    assert d["metric"] == "p95"
    assert d["endpoint"] == "GET /x"
    assert d["value"] == 0.25
    assert d["limit"] == pytest.approx(0.3)
    assert d["unit"] == "s"
    assert d["ok"] is True
    assert parse_threshold("leak<1MB/h").unit == "B/h"
    assert parse_threshold("error_rate<1%").unit == "ratio"


def test_evaluate_uses_metrics_and_endpoints() -> None:
    thresholds = parse_thresholds(
        ["p95<1s", "errors==0", "p95{GET /a}<100ms", "p95{GET /b}<100ms", "p99<1s"]
    )
    results = evaluate(
        thresholds,
        {"p95": 0.5, "errors": 2, "p99": None},
        {"GET /a": {"p95": 0.05}},
    )
    assert [r.ok for r in results] == [True, False, True, False, False]
    assert results[3].note == "endpoint 'GET /b' not measured"
    assert results[3].value is None
    assert results[4].note == "not measured"
    assert results[0].threshold is thresholds[0]


def test_evaluate_missing_metric_is_not_measured() -> None:
    [result] = evaluate([parse_threshold("p75<1s")], {"p95": 0.1})
    assert not result.ok
    assert result.note == "not measured"


def test_threshold_is_frozen_and_hashable() -> None:
    t = parse_threshold("p95<1s")
    assert t == parse_threshold("p95<1s")
    assert len({t, parse_threshold("p95<1s")}) == 1
    with pytest.raises(AttributeError):
        t.limit = 2.0  # type: ignore[misc]
    assert str(t) == "p95<1s"
    assert isinstance(t, Threshold)


# --------------------------------------------------------------------------------- compare


@pytest.mark.parametrize(
    ("expr", "metric", "direction", "tolerance", "absolute"),
    [
        ("p95:+10%", "p95", 1, 0.1, False),
        ("rps:-10%", "rps", -1, 0.1, False),
        ("p95 : + 10 %", "p95", 1, 0.1, False),
        ("p95:10%", "p95", 1, 0.1, False),  # unsigned: worse is higher
        ("rps:10%", "rps", -1, 0.1, False),  # unsigned: worse is lower
        ("mean:+5ms", "mean", 1, 0.005, True),
        ("errors:+2", "errors", 1, 2.0, True),
        ("rps:-100/s", "rps", -1, 100.0, True),
        ("peak_rss:+100MB", "peak_rss", 1, 1e8, True),
    ],
)
def test_parse_compare(
    expr: str, metric: str, direction: int, tolerance: float, absolute: bool
) -> None:
    rule = parse_compare(expr)
    assert (rule.metric, rule.direction, rule.absolute) == (metric, direction, absolute)
    assert rule.tolerance == pytest.approx(tolerance)


def test_parse_compare_endpoint() -> None:
    rule = parse_compare("p95{GET /items}:+20%")
    assert rule.endpoint == "GET /items"
    assert rule.tolerance == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("p95", "expected ':'"),
        ("p95+10%", "expected ':'"),
        ("p95:", "the value is missing (expected a percentage like +10%)"),
        ("p95:10", "as a percentage"),
        ("p95:+5MB", "'MB' does not fit"),
        ("p95:++10%", "only one sign"),
        ("p95:+10% x", "unexpected text"),
        ("latency:+10%", "unknown metric"),
        ("", "empty comparison"),
    ],
)
def test_parse_compare_errors(expr: str, fragment: str) -> None:
    with pytest.raises(ThresholdError) as info:
        parse_compare(expr)
    assert str(info.value).startswith(f"invalid comparison {expr!r}: ")
    assert fragment in str(info.value)


def test_compare_growth_rule() -> None:
    rule = parse_compare("p95:+10%")
    bad = rule.check(0.012, 0.0137)
    assert not bad.ok
    assert bad.change_ratio == pytest.approx(0.14166, rel=1e-3)
    assert bad.describe() == "p95 +14.2% (12.0ms -> 13.7ms) > +10%"
    good = rule.check(0.012, 0.0125)
    assert good.ok
    assert good.describe() == "p95 +4.2% (12.0ms -> 12.5ms) <= +10%"
    assert rule.check(0.012, 0.0132).ok  # exactly +10% is allowed
    assert rule.check(0.012, 0.001).ok  # getting faster is never a regression


def test_compare_shrink_rule() -> None:
    rule = parse_compare("rps:-10%")
    bad = rule.check(1000.0, 880.0)
    assert not bad.ok
    assert bad.describe() == "rps -12.0% (1000.0/s -> 880.0/s) < -10%"
    assert rule.check(1000.0, 950.0).ok
    assert rule.check(1000.0, 5000.0).ok


def test_compare_absolute_rule() -> None:
    rule = parse_compare("mean:+5ms")
    assert not rule.check(0.012, 0.019).ok
    assert rule.check(0.012, 0.016).ok
    assert rule.check(0.012, 0.019).describe() == "mean +7.0ms (12.0ms -> 19.0ms) > +5.0ms"


def test_compare_from_zero_and_missing() -> None:
    rule = parse_compare("errors:+10%")
    grew = rule.check(0, 3)
    assert not grew.ok
    assert grew.change_ratio == math.inf
    assert rule.check(0, 0).ok
    missing_base = rule.check(None, 3)
    assert missing_base.ok and missing_base.note == "no baseline"
    missing_now = rule.check(3, None)
    assert missing_now.ok and missing_now.note == "not measured"
    assert "no baseline" in missing_base.describe()


def test_compare_result_to_dict() -> None:
    d = parse_compare("p95:+10%").check(1.0, 1.2).to_dict()
    assert d["metric"] == "p95"
    assert d["base"] == 1.0
    assert d["current"] == 1.2
    assert d["change"] == pytest.approx(0.2)
    assert d["ok"] is False


def test_parse_compares() -> None:
    rules = parse_compares(["p95:+10%", "rps:-10%"])
    assert [r.metric for r in rules] == ["p95", "rps"]
    assert [r.metric for r in parse_compares("p95:+10%")] == ["p95"]
    assert all(isinstance(r, CompareRule) for r in rules)


# --------------------------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    [
        "p95", "p99.9", "p0", "errors", "error_rate", "leak", "rps", "capacity", "{", "}", "GET /x",
        "<", "<=", ">", ">=", "==", "=", "!", ":", "+", "-", "5", "0.1", "1e3", ".", "ms", "%",
        "MB/h", "/s", "MB", "h", " ", "\t", "nan", "µs",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=8).map("".join)))
def test_fuzz_parse_threshold_raises_only_threshold_error(text: str) -> None:
    try:
        t = parse_threshold(text)
    except ThresholdError as err:
        assert str(err).startswith("invalid threshold ")
        return
    assert math.isfinite(t.limit)
    assert find_metric(t.metric) is not None


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=8).map("".join)))
def test_fuzz_parse_compare_raises_only_threshold_error(text: str) -> None:
    with contextlib.suppress(ThresholdError):
        rule = parse_compare(text)
        assert rule.tolerance >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["p95", "mean", "test_duration_max"]),
    st.sampled_from(["<", "<=", ">", ">="]),
    st.floats(min_value=1e-6, max_value=1e5),
)
def test_round_trip_formatted_time_limit(metric: str, op: str, seconds: float) -> None:
    t = parse_threshold(f"{metric}{op}{format_duration(seconds)}", scope=scope_of(metric))
    coarse = 30.0 if seconds >= 3570 else 0.5 if seconds >= 59 else 0.0
    assert abs(t.limit - seconds) <= max(seconds * 0.006, coarse)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**14), st.floats(min_value=0, max_value=1))
def test_round_trip_formatted_size_and_ratio(nbytes: int, ratio: float) -> None:
    t = parse_threshold(f"peak_rss < {format_size(nbytes)}")
    assert abs(t.limit - nbytes) <= max(nbytes * 0.051, 0.5)
    r = parse_threshold(f"error_rate<{format_ratio(ratio)}")
    assert abs(r.limit - ratio) <= 0.00005 + 1e-12


def test_format_metric_value() -> None:
    assert format_metric_value("p95", 0.0031) == "3.1ms"
    assert format_metric_value("capacity", 200) == "200 users"
    assert format_metric_value("capacity", 50, "rate") == "50.0/s"
    assert format_metric_value("failure_rate", 0.5) == "50.00%"
