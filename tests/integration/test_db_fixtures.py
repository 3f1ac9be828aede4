"""db_pool_probe and stressguard_dsn through pytest, against the local server and the embedded one."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

LOCAL_DSN = os.environ.get("STRESSGUARD_TEST_LOCAL_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def local_server_up() -> bool:
    try:
        with psycopg.connect(LOCAL_DSN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


POOL_TESTS = """
import threading, time, pytest

@pytest.mark.load(users=20, iterations=60, sla=["errors==0"])
def test_small_pool_under_load(pool):
    with pool.connection() as conn:
        conn.execute("select pg_sleep(0.01)")

def test_leaks_a_connection(db_pool_probe):
    pool = db_pool_probe.pool(max_size=2, timeout=2)
    pool.getconn()  # never returned

def test_dirty_return(db_pool_probe):
    pool = db_pool_probe.pool(max_size=2, timeout=2)
    conn = pool.getconn()
    conn.execute("select 1")  # opens a transaction (autocommit off) and leaves it open
    pool.putconn(conn)
    assert db_pool_probe.metrics()["dirty_returns"] == 1

def test_timeout_gate(db_pool_probe):
    pool = db_pool_probe.pool(max_size=1, timeout=0.2)
    from psycopg_pool import PoolTimeout
    def hold():
        try:
            with pool.connection() as conn:
                conn.execute("select pg_sleep(0.6)")
        except PoolTimeout:
            pass
    threads = [threading.Thread(target=hold) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    db_pool_probe.check(["pool_timeouts==0"])
"""

CONFTEST = """
import pytest

@pytest.fixture
def pool(db_pool_probe):
    return db_pool_probe.pool(max_size=5, timeout=10)
"""


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pool=POOL_TESTS)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess("-p", "no:randomly", f"--stressguard-json={report}",
                                           *args, timeout=180)
    return result, json.loads(report.read_text())


def check(result: pytest.RunResult, doc: dict) -> None:
    result.assert_outcomes(passed=3, failed=1, errors=1)
    tests = {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}
    load = tests["test_small_pool_under_load"]
    m = load["pool"]["metrics"]
    assert load["kind"] == "load" and m["pool_waiting_max"] >= 5 and m["pool_wait_p95"] > 0
    result.stdout.fnmatch_lines([
        "*leaked connection*test_leaks_a_connection*was never returned*",
        "*pool gates failed: FAIL pool_timeouts==0 (2)*",
        "db pool*wait p95*waiting max*",
    ])
    assert tests["test_leaks_a_connection"]["pool"]["metrics"]["leaked_connections"] == 1
    assert "test_leaks_a_connection" in json.dumps(tests["test_leaks_a_connection"]["pool"]["leaked"])


@pytest.mark.skipif(not local_server_up(), reason=f"no PostgreSQL at {LOCAL_DSN}")
def test_against_the_local_server(pytester: pytest.Pytester) -> None:
    result, doc = run(pytester, f"--stressguard-dsn={LOCAL_DSN}")
    check(result, doc)


def test_against_the_embedded_default(pytester: pytest.Pytester,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRESSGUARD_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result, doc = run(pytester)
    check(result, doc)
