"""The JSON report matches the schema shipped in the package (tests/conftest.py checks every
report this suite writes); here: the schema has teeth, and a document of every kind passes."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import report_validator

SUITE = """
import pytest

@pytest.mark.load(users=2, iterations=30)
def test_load():
    pass

@pytest.mark.stress(start_users=1, step_users=1, max_users=2, step_duration="200ms")
def test_stress():
    pass

@pytest.mark.soak(duration="600ms", sample_interval="50ms")
def test_soak():
    pass

@pytest.mark.concurrent(workers=2)
def test_concurrent():
    pass

def test_plain():
    pass
"""


def test_every_kind_matches_the_schema_and_a_renamed_field_does_not(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kinds=SUITE)
    report = pytester.path / "report.json"
    result = pytester.runpytest(f"--stressguard-json={report}")
    result.assert_outcomes(passed=5)
    document = json.loads(report.read_text())
    assert sorted(t["kind"] for t in document["tests"]) == ["concurrent", "load", "soak", "stress"]
    validator = report_validator()
    assert list(validator.iter_errors(document)) == []
    for test in document["tests"]:
        assert test["metrics"] is not None and "nodeid" in test

    renamed = copy.deepcopy(document)
    load = next(t for t in renamed["tests"] if t["kind"] == "load")
    load["latency"] = load.pop("latency_ms")
    assert any("latency_ms" in e.message for e in validator.iter_errors(renamed))
    wrong_unit = copy.deepcopy(document)
    wrong_unit["session"]["exitstatus"] = "1"
    assert list(validator.iter_errors(wrong_unit))
