"""Baselines: save a run, compare a later one, regressions fail the session with a reason."""

from __future__ import annotations

import json

import pytest

SUITE = """
import os, time, pytest

@pytest.mark.load(users=2, iterations=40, sla=["p95<5s"])
def test_api():
    time.sleep(float(os.environ.get("SERVICE_DELAY", "0.002")))
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["solo", "xdist"])
def test_regression_fails_the_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                      workers: list[str]) -> None:
    pytester.makepyfile(test_api=SUITE)
    base = pytester.path / "bl"
    saved = pytester.runpytest(*workers, "--stressguard-save=main", f"--stressguard-dir={base}")
    assert saved.ret == 0
    doc = json.loads((base / "main.json").read_text())
    assert doc["machine"]["cpus"] and "commit" in doc
    assert doc["tests"]["test_api.py::test_api"]["p95"] > 0

    monkeypatch.setenv("SERVICE_DELAY", "0.02")
    result = pytester.runpytest(*workers, "--stressguard-compare=main", f"--stressguard-dir={base}",
                                "--stressguard-compare-fail=p95:+10%")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "compare*metric*baseline*now*change*",
        "*test_api*p95*REGRESSION*",
        "regression: FAILED test_api.py::test_api: p95 +*% (*ms -> *ms) > +10%",
        "stressguard: session FAILED: regression*",
    ])


def test_unchanged_run_passes_and_missing_baseline_is_clear(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_api=SUITE)
    base = pytester.path / "bl"
    assert pytester.runpytest("--stressguard-save=main", f"--stressguard-dir={base}").ret == 0
    ok = pytester.runpytest("--stressguard-compare=main", f"--stressguard-dir={base}",
                            "--stressguard-compare-fail=rps:-90%")
    assert ok.ret == 0
    missing = pytester.runpytest("--stressguard-compare=nope", f"--stressguard-dir={base}")
    assert missing.ret == pytest.ExitCode.TESTS_FAILED
    missing.stdout.fnmatch_lines(["*baseline 'nope' not found*(known: main)*"])


@pytest.mark.parametrize(("content", "field"), [
    ("{}", "schema"),
    ("[]", "(top level)"),
    ('"main"', "(top level)"),
    ('{"schema": "pytest-stressguard-baseline/1", "tests": []}', "tests"),
    ('{"schema": "pytest-stressguard-baseline/1", "tests": {"t.py::x": 3}}', "tests/t.py::x"),
    ('{"schema": "pytest-stressguard-baseline/1", "tests": {"test_api.py::test_api": '
     '{"p95": "fast"}}}', "tests/test_api.py::test_api/p95"),
    ('{"schema": "pytest-stressguard-baseline/2", "tests": {}}', "schema"),
])
def test_a_baseline_of_the_wrong_shape_is_refused_with_its_file_and_field(
        pytester: pytest.Pytester, content: str, field: str) -> None:
    pytester.makepyfile(test_api=SUITE)
    base = pytester.path / "bl"
    base.mkdir()
    (base / "main.json").write_text(content)
    result = pytester.runpytest("--stressguard-compare=main", f"--stressguard-dir={base}",
                                "--stressguard-compare-fail=p95:+10%")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*baseline 'main' at *main.json: field '{field}' must be*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
