"""Under xdist the controller gathers every worker's results and prints one summary."""

from __future__ import annotations

import json

import pytest

LOAD_TESTS = """
import time, pytest

@pytest.mark.load(users=2, iterations=30, sla=["p95<2s"])
def test_a():
    time.sleep(0.001)

@pytest.mark.load(users=2, iterations=30, sla=["p95<2s"])
def test_b():
    time.sleep(0.001)

@pytest.mark.load(users=2, iterations=30, sla=["p95<2s"])
def test_c():
    time.sleep(0.001)

@pytest.mark.load(users=2, iterations=10, sla=["p95<1ms"])
def test_too_slow():
    time.sleep(0.01)
"""


def test_two_workers_one_summary_and_exit_code(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_load=LOAD_TESTS)
    report = pytester.path / "report.json"
    result = pytester.runpytest("-n", "2", f"--stressguard-json={report}")
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert out.count("= stressguard =") == 1
    result.stdout.fnmatch_lines([
        "*= stressguard =*",
        "load*iters*",
        "*test_a*30*ok*",
        "*test_too_slow*FAIL p95<1ms*",
    ])
    doc = json.loads(report.read_text())
    tests = {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}
    assert set(tests) == {"test_a", "test_b", "test_c", "test_too_slow"}
    assert {t["worker"] for t in tests.values()} <= {"gw0", "gw1"}
    assert tests["test_too_slow"]["outcome"] == "failed"
    workers = {p["worker"] for p in doc["session"]["processes"]}
    assert {"gw0", "gw1"} <= workers


def test_session_gate_on_merged_data_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time

        def test_a():
            time.sleep(0.05)

        def test_b():
            pass
        """
    )
    result = pytester.runpytest("-n", "2", "--stressguard-gate", "test_duration_max<10ms")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*gate: FAIL test_duration_max<10ms (*ms)*",
        "*stressguard: session FAILED: gate*test_duration_max<10ms*",
    ])


def test_worker_that_dies_keeps_finished_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, pytest

        @pytest.mark.load(iterations=10)
        def test_1_measured():
            pass

        def test_2_dies():
            os._exit(1)
        """
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest("-n", "1", "-p", "no:randomly", f"--stressguard-json={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_1_measured*10*ok*"])
    doc = json.loads(report.read_text())
    assert [t["nodeid"].split("::")[-1] for t in doc["tests"]] == ["test_1_measured"]
