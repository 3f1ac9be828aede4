"""Bad marker arguments and bad thresholds: clear collection or usage errors, never INTERNALERROR."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        ('load(users="ten", iterations=5)', "*test_x*@pytest.mark.load*users='ten'*positive integer*"),
        ("load(userz=3, iterations=5)", "*test_x*unknown argument 'userz'; allowed: users, duration*"),
        ("load(users=2)", "*test_x*needs duration=*iterations=*stages=*"),
        ('load(duration="5 parsecs")', "*test_x*duration='5 parsecs'*"),
        ('load(iterations=5, sla=["p95<5xx"])', "*test_x*p95<5xx*unknown unit*"),
        ('load(iterations=5, sla=["p95<500"])', "*test_x*p95<500*500ms*"),
        ('load(iterations=5, sla=["latency<5ms"])', "*test_x*unknown metric*latency*"),
        ('load(iterations=5, duration="1s")', "*test_x*duration= or iterations=, not both*"),
        ('load(stages=[("10s", "lots")])', "*test_x*stages*"),
        ("stress(start_users=1, step_users=1)", "*test_x*start_users=, step_users= and max_users=*"),
        ("soak(users=2)", "*test_x*missing a required argument: 'duration'*"),
        ('soak(duration="1s", leak="fast")', "*test_x*leak*"),
        ("concurrent(workers=0)", "*test_x*workers=0*positive integer*"),
        ('concurrent(amplify="yes")', "*test_x*amplify='yes'*True or False*"),
    ],
)
def test_bad_marker_argument_is_a_collection_error(
    pytester: pytest.Pytester, mark: str, expected: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{mark}
        def test_x():
            raise AssertionError("must never run")
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting*", expected])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*must never run*")


def test_two_kinds_on_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.load(iterations=5)
        @pytest.mark.concurrent(workers=2)
        def test_x():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*test_x*one of @load, @stress, @soak, @concurrent*"])


def test_bad_mark_on_a_parameter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.load(users=-1))])
        def test_x(n):
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x[[]2[]]*users=-1*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--stressguard-sla", "p95<<5ms"], "*--stressguard-sla*p95<<5ms*"),
        (["--stressguard-gate", "peak_rss<2XB"], "*--stressguard-gate*peak_rss<2XB*"),
        (["--stressguard-time-scale", "fast"], "*--stressguard-time-scale*'fast'*not a number*"),
        (["--stressguard-compare-fail", "p95+10"], "*--stressguard-compare-fail*p95+10*"),
        (["--stressguard-progress", "loud"], "*--stressguard-progress*'loud'*auto, on, off*"),
    ],
)
def test_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], expected: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_bad_ini_value_is_a_usage_error_naming_the_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nstressguard_gates =\n    peak_rss<2GB\n    tests_per_s>>1\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini stressguard_gates*tests_per_s>>1*"])


def test_bad_env_value_is_a_usage_error_naming_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRESSGUARD_TIME_SCALE", "-1")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*STRESSGUARD_TIME_SCALE*"])
