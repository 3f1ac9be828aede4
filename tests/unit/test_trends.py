"""Robust trend statistics on synthetic series: leaks must be caught, non-leaks never flagged."""

from __future__ import annotations

import math
import random

import pytest

from pytest_stressguard.core.trends import (
    SPARK_CHARS,
    LeakEstimate,
    RepetitionTrend,
    drift,
    estimate_leak,
    is_leak,
    median,
    reduce_points,
    sen_interval,
    session_leak_rate,
    sparkline,
    theil_sen,
)

MB = 1_000_000
HOUR = 3600.0


def grid(span: float, n: int) -> list[float]:
    return [span * i / (n - 1) for i in range(n)]


def linear(ts: list[float], per_h: float, noise: float, seed: int, base: float = 50 * MB
           ) -> list[float]:
    rng = random.Random(seed)
    return [base + per_h * t / HOUR + rng.gauss(0, noise) for t in ts]


# --------------------------------------------------------------------------- building blocks
def test_median() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 2, 3]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_theil_sen_exact_line_and_outliers() -> None:
    ts = [float(i) for i in range(40)]
    ys = [3.0 * t + 7 for t in ts]
    assert theil_sen(ts, ys) == pytest.approx(3.0)
    # a quarter of the points are wild: the median of slopes does not move much
    rng = random.Random(0)
    bad = list(ys)
    for i in rng.sample(range(40), 10):
        bad[i] += rng.choice([-1, 1]) * 1e6
    assert theil_sen(ts, bad) == pytest.approx(3.0, rel=0.05)
    assert theil_sen([1.0, 1.0], [1.0, 2.0]) is None


def test_sen_interval_covers_the_true_slope() -> None:
    ts = grid(10, 50)
    covered = 0
    for seed in range(100):
        ys = [2.0 * t + random.Random(seed).gauss(0, 1) * 0 + random.Random(seed * 7 + i).gauss(0, 3)
              for i, t in enumerate(ts)]
        got = sen_interval(ts, ys)
        assert got is not None
        slope, lo, hi = got
        assert lo <= slope <= hi
        covered += lo <= 2.0 <= hi
    # nominal 95 %; independent noise, so coverage must be close to it
    assert covered >= 88


def test_sen_interval_flat_series_with_ties_is_zero_width() -> None:
    got = sen_interval([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [5.0] * 6)
    assert got == (0.0, 0.0, 0.0)


def test_reduce_points_preserves_means_and_bounds_count() -> None:
    ts = [float(i) for i in range(1000)]
    ys = [2.0 * t for t in ts]
    rt, ry = reduce_points(ts, ys, 100)
    assert len(rt) == len(ry) == 100
    assert sum(rt) / 100 == pytest.approx(sum(ts) / 1000)
    assert theil_sen(rt, ry) == pytest.approx(2.0)
    assert reduce_points([1.0], [2.0], 10) == ([1.0], [2.0])


# --------------------------------------------------------------------------- leaks: caught
@pytest.mark.parametrize(
    ("per_h", "span", "n", "noise"),
    [
        (10 * MB, 2 * HOUR, 7200, 1 * MB),  # the SPEC's limit over a real 2-hour soak
        (3.1 * MB, 2 * HOUR, 7200, 0.2 * MB),
        (3600 * MB, 5.0, 100, 0.2 * MB),  # 5 KB/iteration at 200 it/s, 5-second window
        (36_000 * MB, 5.0, 50, 2 * MB),  # 100 KB/iteration at 100 it/s
        (60 * MB, 360.0, 3600, 0.1 * MB),  # a time-scaled 6-minute soak
    ],
)
def test_linear_leaks_with_noise_are_caught(per_h: float, span: float, n: int, noise: float
                                            ) -> None:
    for seed in range(5):
        ts = grid(span, n)
        est = estimate_leak(ts, linear(ts, per_h, noise, seed))
        assert est.established, est.describe()
        assert est.lower is not None and est.upper is not None
        assert est.lower <= per_h <= est.upper or est.bytes_per_h == pytest.approx(per_h, rel=0.1)
        assert est.gate_bytes_per_h == pytest.approx(per_h, rel=0.25)
        assert is_leak(est, per_h / 2)
        assert not is_leak(est, per_h * 2)


def test_weak_leak_power() -> None:
    # growth over the window only 5x the noise: 1.8 GB/h (5 KB x 100 it/s) for 3 s, sd 0.3 MB
    ts = grid(3.0, 60)
    caught = sum(is_leak(estimate_leak(ts, linear(ts, 1800 * MB, 0.3 * MB, seed)), 50 * MB)
                 for seed in range(200))
    assert caught >= 190


def test_leak_hidden_in_a_sawtooth_of_temporaries_is_caught() -> None:
    rng = random.Random(3)
    ts = grid(60, 600)
    ys = [100 * MB + 1 * MB * t + (20 * MB if rng.random() < 0.3 else 0) for t in ts]
    est = estimate_leak(ts, ys)
    assert est.established
    assert est.bytes_per_h == pytest.approx(3600 * MB, rel=0.1)


def test_leak_that_starts_late_is_caught() -> None:
    ts = grid(100, 500)
    ys = [80 * MB + (0 if t < 40 else (t - 40) * 0.5 * MB) for t in ts]
    est = estimate_leak(ts, ys)
    assert est.established
    assert is_leak(est, 100 * MB)


def test_leak_in_allocator_steps_is_caught() -> None:
    # RSS grows in 1 MiB arena steps every 2 s: still a leak
    ts = grid(60, 600)
    ys = [40 * MB + (int(t) // 2) * 1_048_576 for t in ts]
    est = estimate_leak(ts, ys)
    assert est.established
    assert est.bytes_per_h == pytest.approx(1_048_576 / 2 * HOUR, rel=0.1)


# --------------------------------------------------------------------------- non-leaks: never
def test_noise_is_not_a_leak_over_many_seeds() -> None:
    flagged = 0
    for seed in range(200):
        ts = grid(5.0, 50)
        est = estimate_leak(ts, linear(ts, 0.0, 0.3 * MB, seed))
        flagged += is_leak(est, 50 * MB)
    assert flagged == 0


def test_quantised_flat_rss_is_not_a_leak() -> None:
    # RSS moving by whole pages around a constant level
    rng = random.Random(9)
    ts = grid(10, 100)
    ys = [30 * MB + 4096 * rng.randint(-3, 3) for _ in ts]
    assert not estimate_leak(ts, ys).established


def test_warm_up_then_plateau_is_not_a_leak_even_without_warmup() -> None:
    ts = grid(10, 200)
    for ramp_end in (1.0, 3.0, 5.0, 6.0):
        ys = [30 * MB + min(t, ramp_end) / ramp_end * 40 * MB + random.Random(int(t * 10)).gauss(
              0, 50_000) for t in ts]
        est = estimate_leak(ts, ys)
        assert est.bytes_per_h is not None and est.bytes_per_h > 0  # the slope is positive...
        assert not est.established, (ramp_end, est.describe())  # ...but growth stopped
        assert est.gate_bytes_per_h == 0.0
        assert not is_leak(est, 10 * MB)


def test_step_then_plateau_with_warmup_given() -> None:
    ts = grid(10, 200)
    ys = [30 * MB + (20 * MB if t >= 1.5 else 0) for t in ts]
    est = estimate_leak(ts, ys, warmup=2.0)
    assert est.bytes_per_h == 0.0
    assert not est.established
    assert est.warmup_s == 2.0
    assert est.n == sum(1 for t in ts if t >= 2.0)


def test_sawtooth_from_freed_temporaries_is_not_a_leak() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        ts = grid(5.0, 60)
        ys = [40 * MB + (30 * MB if rng.random() < 0.5 else 0) for _ in ts]
        assert not is_leak(estimate_leak(ts, ys), 10 * MB)


def test_gc_cycle_pattern_is_not_a_leak() -> None:
    # garbage in cycles piles up for ~0.7 s, then the collector frees it (a regular sawtooth)
    ts = grid(10, 200)
    for phase in (0.0, 0.2, 0.45):
        ys = [25 * MB + ((t + phase) % 0.7) / 0.7 * 8 * MB for t in ts]
        est = estimate_leak(ts, ys)
        assert not is_leak(est, 50 * MB), (phase, est.describe())


def test_gc_cycles_of_random_period_and_phase_are_not_leaks() -> None:
    for seed in range(100):
        rng = random.Random(seed)
        period, span = rng.uniform(0.2, 1.0), rng.choice([3.0, 5.0, 10.0])
        phase = rng.uniform(0, period)
        ts = grid(span, int(span * 20))
        ys = [25 * MB + ((t + phase) % period) / period * 4 * MB for t in ts]
        assert not is_leak(estimate_leak(ts, ys), 50 * MB), (seed, period, span)


def test_leak_under_a_gc_sawtooth_is_caught() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        period, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 0.6)
        ts = grid(4.0, 80)
        ys = [25 * MB + 0.5 * MB * t + ((t + phase) % period) / period * 2 * MB for t in ts]
        est = estimate_leak(ts, ys)
        assert est.floor_bytes_per_h is not None
        assert is_leak(est, 50 * MB), (seed, est.describe())


def test_memory_that_shrinks_is_not_a_leak() -> None:
    ts = grid(10, 100)
    est = estimate_leak(ts, [90 * MB - t * MB for t in ts])
    assert est.bytes_per_h is not None and est.bytes_per_h < 0
    assert est.gate_bytes_per_h == 0.0


def test_too_few_samples() -> None:
    est = estimate_leak([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert not est.valid
    assert est.gate_bytes_per_h is None
    assert est.bound is None
    assert not is_leak(est, 0.0)
    assert "too few samples" in est.reason
    assert "not measured" in est.describe()
    assert not estimate_leak([], []).valid
    # everything inside the warm-up
    assert not estimate_leak(grid(5, 50), [0.0] * 50, warmup=10).valid


def test_origin_shifts_the_warmup() -> None:
    ts = grid(20, 200)
    ys = [0.0 if t < 12 else (t - 12) * MB for t in ts]
    assert estimate_leak(ts, ys, warmup=2, origin=10).established


def test_estimate_round_trips_and_describes() -> None:
    ts = grid(10, 100)
    est = estimate_leak(ts, linear(ts, 500 * MB, 10_000, 1))
    again = LeakEstimate.from_dict(est.to_dict())
    assert again == est
    text = est.describe()
    assert "MB/h" in text and "95%" in text and "n=100" in text
    assert est.resolves(100 * MB)
    assert est.growth_bytes == pytest.approx(est.bytes_per_h * 10 / HOUR)  # type: ignore[operator]


def test_session_leak_rate() -> None:
    ts = grid(600, 120)
    assert session_leak_rate([(t, 50 * MB + t * 1000) for t in ts]) == pytest.approx(
        3.6 * MB, rel=0.05)
    # imports and fixtures at the start, flat afterwards
    assert session_leak_rate([(t, 50 * MB + min(t, 60) * MB) for t in ts]) == 0.0
    assert session_leak_rate([(0.0, 1.0)]) is None


# --------------------------------------------------------------------------- drift
def test_drift_is_the_ratio_of_medians() -> None:
    assert drift([1.0, 1.0, 100.0], [1.2, 1.2, 0.1]) == pytest.approx(0.2)
    assert drift([2.0], [1.0]) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        drift([], [1.0])
    with pytest.raises(ValueError):
        drift([0.0], [1.0])


# --------------------------------------------------------------------------- repetitions
def test_repetitions_memory_growth_is_flagged() -> None:
    rng = random.Random(5)
    deltas = [5 * MB] + [12_000 + 4096 * rng.randint(-1, 1) for _ in range(99)]
    trend = RepetitionTrend.from_runs([0.01] * 100, deltas)
    assert trend.memory_grows
    assert trend.memory_per_run == pytest.approx(12_000, rel=0.35)
    assert trend.verdict == "LEAK?"
    assert trend.memory_label().endswith("/run ↑")
    assert trend.to_dict()["memory_grows"] is True


def test_repetitions_flat_memory_is_not_flagged() -> None:
    rng = random.Random(6)
    # first run warms caches (big step), later runs move by pages around a level
    rss = [80 * MB] + [90 * MB + 4096 * rng.randint(-5, 5) for _ in range(99)]
    trend = RepetitionTrend.from_runs([0.01] * 100, rss_after=rss)
    assert not trend.memory_grows
    assert trend.memory_label() == "flat"
    assert trend.verdict == "ok"


def test_repetitions_growth_below_the_noise_floor_is_not_flagged() -> None:
    trend = RepetitionTrend.from_runs([0.01] * 50, [1000.0] * 50)
    assert trend.memory_per_run == pytest.approx(1000)
    assert not trend.memory_grows
    assert "noise floor" in trend.memory_note


def test_repetitions_duration_drift() -> None:
    rng = random.Random(7)
    slow = [0.010 * (1 + i / 50) + rng.uniform(0, 0.001) for i in range(100)]
    trend = RepetitionTrend.from_runs(slow, [0.0] * 100)
    assert trend.duration_drifts
    assert trend.duration_change > 0.5
    assert trend.verdict == "SLOWER?"
    assert trend.duration_label().endswith("↑")
    steady = [0.010 + rng.uniform(0, 0.002) for _ in range(100)]
    assert not RepetitionTrend.from_runs(steady, [0.0] * 100).duration_drifts
    # 20 % slower but only microseconds: not meaningful
    tiny = [1e-5 * (1 + i / 50) for i in range(100)]
    assert not RepetitionTrend.from_runs(tiny, [0.0] * 100).duration_drifts


def test_repetitions_too_few_runs() -> None:
    trend = RepetitionTrend.from_runs([0.1, 0.2, 0.3], [1e9, 1e9, 1e9])
    assert not trend.memory_grows and not trend.duration_drifts
    assert "too few runs" in trend.memory_note
    assert RepetitionTrend.from_runs([0.1] * 20).memory_per_run == 0.0


# --------------------------------------------------------------------------- sparkline
def test_sparkline() -> None:
    assert sparkline(range(100)) == SPARK_CHARS
    assert sparkline([3.0, 3.0, 3.0]) == "▁▁▁"
    assert sparkline([]) == ""
    assert len(sparkline(range(1000), width=20)) == 20
    assert sparkline([5.0, 5.1, 5.0], min_range=10.0) == "▁▁▁"
    assert sparkline([0.0, math.nan, 1.0]) == "▁█"
    line = sparkline([1, 2, 2, 3, 3, 3, 3, 3])
    assert line[0] == "▁" and line[-1] == "█"
