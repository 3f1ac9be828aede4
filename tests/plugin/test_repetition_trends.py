"""Per-test trends across pytest-repeat repetitions, and session gates that fail the session."""

from __future__ import annotations

import json

import pytest

SUITE = """
import time

kept = []

def test_leaks():
    kept.append(b"x" * 300_000)  # touched pages: RSS grows ~300 KB per run

def test_clean():
    data = [b"y" * 300_000 for _ in range(3)]
    del data

def test_steady():
    time.sleep(0.002)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["solo", "xdist"])
def test_leaking_test_is_named_across_repetitions(pytester: pytest.Pytester,
                                                  workers: list[str]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--count=30", "-p", "no:randomly", *workers,
                                f"--stressguard-json={report}")
    result.assert_outcomes(passed=90)
    result.stdout.fnmatch_lines(["repeated*runs*pass*memory trend*", "*test_leaks*30*100%*LEAK?*"])
    rows = {r["test"].split("::")[-1]: r for r in json.loads(report.read_text())["session"]["trends"]}
    assert rows["test_leaks"]["memory_grows"] is True
    assert rows["test_leaks"]["runs"] == 30
    assert rows["test_clean"]["memory_grows"] is False
    assert rows["test_steady"]["memory_grows"] is False


def test_session_gate_fails_an_all_green_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    result = pytester.runpytest("--stressguard-gate", "peak_rss<1MB",
                                "--stressguard-gate", "failure_rate<1%")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "gate: FAIL peak_rss<1MB (*MB)",
        "gate: ok failure_rate<1% (0.00%)",
        "stressguard: session FAILED: gate FAIL peak_rss<1MB*",
    ])


def test_passing_gates_keep_exit_code_zero(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("--stressguard-gate", "peak_rss<100GB",
                                "--stressguard-gate", "tests_per_s>0.001/s")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
