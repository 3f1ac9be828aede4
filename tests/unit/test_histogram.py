"""LatencyHistogram, EndpointStats and StatsRecorder: accuracy, no silent loss, exact merge,
serialisation round trips, thread safety."""

from __future__ import annotations

import json
import random
import threading

import pytest

from pytest_stressguard.core.histogram import (
    PERCENTILE_KEYS,
    LatencyHistogram,
    parse_percentile_name,
)
from pytest_stressguard.core.stats import (
    EndpointStats,
    StatsRecorder,
    current_recorder,
    error_key,
)


def _exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, int(q / 100.0 * len(ordered) + 0.5))
    return ordered[rank - 1]


def test_percentiles_are_within_three_significant_figures() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-5, 1.2) for _ in range(20_000)]  # ~ 0.1 ms .. 1 s
    h = LatencyHistogram()
    h.record_many(values)
    assert h.count == len(values)
    for q in (50.0, 90.0, 95.0, 99.0, 99.9):
        exact = _exact_percentile(values, q)
        # 3 significant figures, plus the 1 us resolution for tiny values
        assert h.p(q) == pytest.approx(exact, rel=2e-3, abs=2e-6), q
    assert h.min == pytest.approx(min(values), rel=2e-3, abs=2e-6)
    assert h.max == pytest.approx(max(values), rel=2e-3)
    assert h.mean == pytest.approx(sum(values) / len(values), rel=2e-3)
    assert h.p(100) == h.max


def test_out_of_range_values_are_clamped_and_counted_never_dropped() -> None:
    h = LatencyHistogram()
    h.record(0.010)
    h.record(7200.0)  # 2 h: above the 1 h range
    h.record(-0.5)  # a clock that went backwards
    assert h.count == 3  # nothing lost
    assert h.clamped == 2
    assert h.max == pytest.approx(3600.0, rel=1e-3)
    assert h.min == 0.0


def test_sub_microsecond_values_are_resolution_not_clamping() -> None:
    h = LatencyHistogram()
    h.record(0.2e-6)
    h.record(0.7e-6)
    assert h.count == 2
    assert h.clamped == 0
    assert h.max <= 1e-6


def test_merge_is_exact() -> None:
    rng = random.Random(1)
    a_vals = [rng.uniform(0.001, 0.5) for _ in range(3000)]
    b_vals = [rng.uniform(0.2, 2.0) for _ in range(1000)]
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(a_vals + b_vals)
    b.record(1e6)  # a clamped value travels with the merge
    both.record(1e6)
    merged = a.copy().merge(b)
    assert merged == both  # same counts bucket by bucket
    assert merged.count == 4001
    assert merged.clamped == 1
    assert merged.p(99) == both.p(99)
    assert a.count == 3000  # copy() left `a` alone


def test_encode_decode_round_trip_is_a_plain_string() -> None:
    h = LatencyHistogram()
    h.record_many([0.001 * i for i in range(1, 500)])
    text = h.encode()
    assert isinstance(text, str)
    json.dumps(text)  # crosses xdist as plain data
    back = LatencyHistogram.decode(text)
    assert back == h
    assert back.percentiles_ms() == h.percentiles_ms()
    empty = LatencyHistogram.decode(LatencyHistogram().encode())
    assert empty.count == 0


def test_decode_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="HdrHistogram"):
        LatencyHistogram.decode("not a histogram")


def test_to_dict_from_dict_keeps_clamped() -> None:
    h = LatencyHistogram()
    h.record(0.003)
    h.record(99_999.0)
    d = json.loads(json.dumps(h.to_dict()))
    back = LatencyHistogram.from_dict(d)
    assert back == h
    assert back.clamped == 1


def test_percentiles_ms_keys_and_units() -> None:
    h = LatencyHistogram()
    for ms in range(1, 101):
        h.record(ms / 1000.0)
    out = h.percentiles_ms()
    assert list(out) == [*PERCENTILE_KEYS, "mean", "min", "max"]
    assert out["p50"] == pytest.approx(50.0, rel=2e-3)
    assert out["max"] == pytest.approx(100.0, rel=2e-3)
    assert out["min"] == pytest.approx(1.0, rel=2e-3)
    assert set(LatencyHistogram().percentiles_ms().values()) == {None}


def test_percentile_argument_is_validated_and_empty_reads_zero() -> None:
    h = LatencyHistogram()
    assert h.p(99) == 0.0
    with pytest.raises(ValueError):
        h.p(101)
    with pytest.raises(ValueError):
        h.p(-1)


@pytest.mark.parametrize(
    ("name", "q"),
    [("p50", 50.0), ("p99.9", 99.9), ("p97.5", 97.5), ("p100", 100.0), ("p0", 0.0),
     ("p101", None), ("mean", None), ("p", None), ("pxx", None), ("p9.9.9", None)],
)
def test_parse_percentile_name(name: str, q: float | None) -> None:
    assert parse_percentile_name(name) == q


# ------------------------------------------------------------------------- stats.py
def test_error_key_groups_by_type_and_truncates() -> None:
    assert error_key(ValueError("bad x")) == "ValueError: bad x"
    assert error_key(KeyError()) == "KeyError"
    long = error_key(RuntimeError("y" * 1000 + "\nsecond line"))
    assert long.startswith("RuntimeError: yyy")
    assert len(long) <= len("RuntimeError: ") + 200
    assert "second line" not in long


def test_endpoint_stats_merge_and_round_trip() -> None:
    a = EndpointStats("GET /items")
    a.record(0.010)
    a.record(0.020, error="HTTPError: 500")
    b = EndpointStats("GET /items")
    b.record(0.030, error="HTTPError: 500")
    a.merge(b)
    assert (a.count, a.errors) == (3, 2)
    assert a.errors_by_kind == {"HTTPError: 500": 2}
    assert a.error_rate == pytest.approx(2 / 3)
    back = EndpointStats.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.histogram == a.histogram
    assert (back.count, back.errors, back.errors_by_kind) == (3, 2, {"HTTPError: 500": 2})
    m = back.metrics()
    assert m["max"] == pytest.approx(0.030, rel=2e-3)


def test_stats_recorder_is_thread_safe_and_exact() -> None:
    rec = StatsRecorder()
    per_thread = 2000

    def work(i: int) -> None:
        for j in range(per_thread):
            rec.record("A" if j % 2 else "B", 0.001 * (1 + j % 5), "E: x" if j % 10 == 0 else None)
            if j % 500 == 0:
                rec.snapshot()  # readers run while writers write

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    snap = rec.snapshot()
    assert snap["A"].count + snap["B"].count == 6 * per_thread
    assert snap["A"].histogram.count == snap["A"].count
    assert snap["B"].errors == 6 * per_thread // 10


def test_current_recorder_defaults_to_none() -> None:
    assert current_recorder.get() is None
