"""Never green without evidence: a load test whose users hung, or that measured nothing, fails
with the reason in the summary (issue 11, item 1)."""

from __future__ import annotations

import json

import pytest

HANGING = """
import threading, time, pytest

release = threading.Event()

@pytest.mark.load(users=2, duration="1s")
def test_one_user_hangs():
    if threading.current_thread().name.endswith("-1"):
        release.wait(15)  # user 1 hangs (a server that never answers)
    else:
        time.sleep(0.01)

@pytest.mark.load(users=2, duration="1s")
def test_every_user_hangs():
    release.wait(15)

def test_release():
    release.set()
"""


def test_hung_users_and_an_empty_run_fail_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_hang=HANGING)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                           f"--stressguard-json={report}")
    result.assert_outcomes(failed=2, passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "no iteration completed: nothing was measured" in out
    assert "were abandoned" in out
    tests = {t["nodeid"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    every = tests["test_every_user_hangs"]
    assert every["iterations"] == 0 and every["abandoned_users"] == 2
    assert any("nothing was measured" in p for p in every["problems"])
    one = tests["test_one_user_hangs"]
    assert one["abandoned_users"] == 1 and one["iterations"] > 10
    # the rate is over the load window, not the grace spent waiting for the hung user
    assert one["duration_s"] < 2.0 and one["rps"] > 0.5 * one["iterations"] / 1.0
