"""@stress against a loopback server of known capacity: K requests at a time, 50 ms each."""

from __future__ import annotations

import json

import pytest

CONFTEST = """
import pytest
from pytest_stressguard.core.testserver import start_test_server

@pytest.fixture(scope="module")
def server():
    with start_test_server(concurrency={k}, service_ms=50, die_after={die_after}) as handle:
        yield handle
"""

BODY = """
import pytest

@pytest.mark.stress(start_users=1, step_users=1, max_users=8, step_duration="1.5s",
                    sla=["p95<75ms", "error_rate<1%"], expect_capacity={expect})
async def test_breaking_point(server, stressguard_http):
    await stressguard_http.get(server.url + "/items", name="GET /items")
"""


def run(pytester: pytest.Pytester, k: int, expect: int, die_after: str = "None"):
    pytester.makeconftest(CONFTEST.format(k=k, die_after=die_after))
    pytester.makepyfile(BODY.format(expect=expect))
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(f"--stressguard-json={report}", timeout=120)
    return result, json.loads(report.read_text())["tests"][0]


def test_capacity_is_found_within_one_step_of_the_servers(pytester: pytest.Pytester) -> None:
    result, test = run(pytester, k=4, expect=3)
    stress = test["stress"]
    assert stress["capacity"] in (3, 4, 5), stress
    assert stress["broke_at"] == stress["capacity"] + 1
    steps = {s["users"]: s for s in stress["steps"]}
    # Past the capacity requests queue: p95 rises well above the 50 ms service time.
    assert steps[stress["broke_at"]]["p95_ms"] > 1.3 * steps[1]["p95_ms"]
    assert stress["recovered"] is True
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "stress*capacity*broke at*",
        "*test_breaking_point*users*users*ok*",
        "degradation*",
    ])


def test_expected_capacity_not_reached_fails(pytester: pytest.Pytester) -> None:
    result, test = run(pytester, k=2, expect=6)
    assert test["stress"]["capacity"] in (1, 2, 3)
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*capacity * users is below the expected 6 users*"])


def test_server_dying_mid_ramp_gives_a_clear_result(pytester: pytest.Pytester) -> None:
    # ~20 requests/s per user at 50 ms: the server dies during the second or third step.
    result, test = run(pytester, k=8, expect=4, die_after="60")
    stress = test["stress"]
    assert stress["broke_at"] is not None
    assert stress["capacity"] is None or stress["capacity"] < 4
    broken = next(s for s in stress["steps"] if not s["ok"])
    assert any(k.startswith(("Http", "Connection")) or "refused" in k or "reset" in k
               for k in broken["errors_by_kind"]), broken["errors_by_kind"]
    assert stress["recovered"] is False
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no recovery at 1 users*error_rate*"])
