"""@pytest.mark.load through pytest itself: outcomes, exit codes and output together."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_passing_load_test_is_summarised(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.load(users=4, iterations=200, sla=["p95<1s", "errors==0"])
        def test_list():
            pass

        def test_plain():
            assert True
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "*= stressguard =*",
        "load*iters*rps*p50*p95*p99*max*errors*verdict*",
        "*test_list*200*ok*",
    ])
    assert "test_plain" not in result.stdout.str().split("stressguard")[-1]


def test_violated_sla_fails_the_test_with_threshold_and_value(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.load(users=2, iterations=20, sla=["p95<1ms"])
        def test_slow():
            time.sleep(0.01)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*load gates failed: FAIL p95<1ms (*ms)*",
        "*FAIL p95<1ms (*ms)*",
        "*SLA FAILED*",
    ])


def test_default_sla_is_no_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import itertools, pytest
        counter = itertools.count()

        @pytest.mark.load(users=1, iterations=10)
        def test_sometimes_fails():
            if next(counter) % 5 == 0:
                raise ValueError("boom")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL errors==0 (2)*", "*2 x ValueError: boom*"])


def test_cli_default_sla_applies_to_tests_without_their_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.load(iterations=5)
        def test_default():
            time.sleep(0.005)

        @pytest.mark.load(iterations=5, sla=["p95<10s"])
        def test_own():
            time.sleep(0.005)
        """
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest("--stressguard-sla", "p99<1ms", f"--stressguard-json={report}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_default*", "*FAIL p99<1ms*"])
    tests = {t["nodeid"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    # the CLI SLA landed on the test without one, and only there
    assert tests["test_default"]["outcome"] == "failed"
    assert [t["expr"] for t in tests["test_default"]["thresholds"]] == ["p99<1ms"]
    assert tests["test_own"]["outcome"] == "passed"
    assert [t["expr"] for t in tests["test_own"]["thresholds"]] == ["p95<10s"]


def test_ini_sla_is_used_when_cli_is_silent(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nstressguard_sla = p99<1ms\n")
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.load(iterations=5)
        def test_default():
            time.sleep(0.005)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL p99<1ms*"])


def test_async_body_runs_as_tasks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, pytest

        active = 0
        peak = 0
        runs = 0

        @pytest.mark.asyncio
        @pytest.mark.load(users=10, iterations=100, sla=["errors==0"])
        async def test_async_body():
            global active, peak, runs
            active += 1
            runs += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001)
            active -= 1

        def test_tasks_overlapped():
            assert runs == 100  # the body ran once per iteration, as tasks on one loop
            assert peak > 1
        """
    )
    result = pytester.runpytest("-p", "asyncio", "--asyncio-mode=strict")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_async_body*100*ok*"])


def test_async_body_without_pytest_asyncio_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, pytest

        @pytest.mark.load(users=3, iterations=30)
        async def test_async_body():
            await asyncio.sleep(0)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_time_scale_shortens_durations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.load(users=1, duration="20s")
        def test_long():
            time.sleep(0.001)
        """
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest("--stressguard-time-scale=0.02", f"--stressguard-json={report}")
    result.assert_outcomes(passed=1)
    test = json.loads(report.read_text())["tests"][0]
    # 20 s x 0.02 = 0.4 s; generous bounds for a busy machine.
    assert 0.3 <= test["duration_s"] < 5


def test_json_report_follows_the_schema(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.load(users=2, iterations=40, sla=["p95<1s"])
        def test_a():
            pass
        """
    )
    report = pytester.path / "out" / "report.json"
    result = pytester.runpytest(f"--stressguard-json={report}")
    assert result.ret == 0
    doc = json.loads(report.read_text())
    assert doc["schema"] == "pytest-stressguard/1"
    assert {"created", "machine", "commit", "session", "tests"} <= set(doc)
    assert doc["session"]["exitstatus"] == 0
    (test,) = doc["tests"]
    assert test["nodeid"].endswith("test_a") and test["kind"] == "load"
    assert test["outcome"] == "passed" and test["iterations"] == 40
    assert set(test["latency_ms"]) >= {"p50", "p90", "p95", "p99", "p99.9", "mean", "min", "max"}
    for key in ("errors", "error_rate", "dropped", "rps", "duration_s", "histogram", "timeline",
                "endpoints", "errors_by_kind", "saturated", "warnings"):
        assert key in test
    (threshold,) = test["thresholds"]
    assert threshold["expr"] == "p95<1s" and threshold["ok"] is True
    assert threshold["metric"] == "p95" and threshold["limit"] == 1.0
    assert not list(report.parent.glob(".report.json.*")), "temp file left behind"


def test_unmarked_tests_and_disabled_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.load(iterations=3)
        def test_marked():
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:stressguard")
    result.assert_outcomes(passed=2)
    assert "stressguard" not in result.stdout.str()


def test_markers_help_lists_signatures(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.load(users=1, *, duration=None, *sla=()): Run the test body*",
        "@pytest.mark.stress(*",
        "@pytest.mark.soak(*",
        "@pytest.mark.concurrent(*",
    ])


def test_spike_stages_drive_the_users(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest
        from pytest_stressguard import spike

        @pytest.mark.load(stages=spike(1, 8, hold="1s", ramp="0s"))
        def test_spike():
            time.sleep(0.01)
        """
    )
    report = pytester.path / "r.json"
    result = pytester.runpytest(f"--stressguard-json={report}")
    result.assert_outcomes(passed=1)
    (test,) = json.loads(report.read_text())["tests"]
    users = [row["users"] for row in test["timeline"]]
    assert max(users) >= 6 and min(users) <= 2, users
