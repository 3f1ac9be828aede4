"""PoolProbe against a real PostgreSQL: the local server (STRESSGUARD_DSN or 127.0.0.1:5432) and
the embedded throw-away server.

The issue's must-show items:
1. pool of 5, 20 concurrent users: waiting/wait p95 reported; pool_timeouts==0 fails when the
   pool timeout is shorter than the hold time;
2. two concurrent SERIALIZABLE finalisations of one row: with retry both succeed and
   serialization_failures >= 1; without retry one fails and the gate says so;
3. a connection never returned is reported with the test's name; a connection returned inside a
   transaction (or with autocommit changed) is counted as dirty;
4. the server stopped in the middle of a load test: errors counted with a clear message, no wait
   beyond the pool timeout, nothing left running (embedded server only: we never stop the
   machine's shared server).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg_pool import PoolTimeout

from pytest_stressguard.core.pgembed import EmbeddedLease, acquire_embedded
from pytest_stressguard.core.pool import PoolProbe, PoolReport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _reachable(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


@pytest.fixture(scope="module")
def local_dsn() -> str:
    dsn = os.environ.get("STRESSGUARD_DSN") or LOCAL_DSN
    problem = _reachable(dsn)
    if problem is not None:
        pytest.skip(f"local PostgreSQL at {dsn} unreachable: {problem}")
    return dsn


@pytest.fixture(scope="module")
def pg_base() -> Iterator[Path]:
    """A base directory for embedded servers. Not pytest's tmp_path: that is private (0700),
    and as root the server runs as another user who must reach its data directory."""
    base = Path(tempfile.mkdtemp(prefix="sg-pgtest-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded(pg_base: Path) -> Iterator[EmbeddedLease]:
    lease = acquire_embedded(f"dbprobe-{uuid.uuid4().hex[:8]}", base_dir=pg_base, sweep=False)
    try:
        yield lease
    finally:
        lease.release()


@pytest.fixture(params=["local", "embedded"])
def dsn(request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        return str(request.getfixturevalue("local_dsn"))
    lease: EmbeddedLease = request.getfixturevalue("embedded")
    return lease.dsn


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A one-row table ``(id int primary key, n int)`` with a unique name, dropped afterwards."""
    name = f"sg_probe_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def probe(request: pytest.FixtureRequest, dsn: str) -> Iterator[PoolProbe]:
    p = PoolProbe(request.node.nodeid, dsn=dsn)
    try:
        yield p
    finally:
        p.finish()


def run_users(
    n: int, body: Callable[[int], object], *, timeout: float = 60.0
) -> list[BaseException]:
    """Run ``body(i)`` in ``n`` threads released together; return the exceptions they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def user(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            body(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=user, args=(i,), name=f"user-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "users did not finish"
    return errors


def app_backends(dsn: str, app: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# ------------------------------------------------------------------------------------------------
# 1. pool of 5, 20 users


def test_pool_of_5_under_20_users_reports_waiting_and_wait_p95(probe: PoolProbe, dsn: str) -> None:
    pool = probe.pool(max_size=5, timeout=10.0)
    hold = 0.1

    def body(i: int) -> None:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(%s)", (hold,))

    assert run_users(20, body) == []
    m = probe.metrics()
    # 20 users on 5 connections: up to 15 wait; released together, most of them queue at once
    assert m["pool_waiting_max"] is not None and 10 <= m["pool_waiting_max"] <= 15
    # three quarters of the requests wait at least one hold time
    assert m["pool_wait_p95"] is not None and m["pool_wait_p95"] >= hold * 0.9
    assert m["pool_requests"] == 60
    assert m["pool_timeouts"] == 0 and m["pool_errors"] == 0
    assert m["leaked_connections"] == 0 and m["dirty_returns"] == 0
    results = probe.check(["pool_timeouts==0", "pool_waiting_max<=15", "pool_wait_p95<10s"])
    assert all(r.ok for r in results), [r.describe() for r in results]

    snap = probe.server()
    assert snap.error is None
    assert snap.by_state.get("idle") == 5  # the pool's five backends, nothing else
    report = probe.finish()
    assert report.timeline and max(r.waiting for r in report.timeline) <= 15
    assert max(r.in_use for r in report.timeline) <= 5
    assert report.wait_ms["p95"] is not None and report.wait_ms["p95"] >= hold * 900
    data = report.to_dict()
    assert data["metrics"]["pool_waiting_max"] == m["pool_waiting_max"]
    assert data["pools"][0]["max_size"] == 5
    app = report.application_names[0]
    assert wait_until(lambda: app_backends(dsn, app) == 0), "pool connections left open"


def test_pool_timeout_shorter_than_hold_time_fails_the_gate(probe: PoolProbe) -> None:
    timeout, hold = 0.2, 0.6
    pool = probe.pool(max_size=5, timeout=timeout)
    caught: list[float] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        t0 = time.perf_counter()
        try:
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(%s)", (hold,))
        except PoolTimeout:
            with lock:
                caught.append(time.perf_counter() - t0)

    assert run_users(20, body) == []
    m = probe.metrics()
    # what the users saw is what the probe counted
    assert caught and m["pool_timeouts"] == len(caught)
    # every waiter gave up at the pool timeout, not later (generous slack for a busy machine)
    assert max(caught) < timeout + 1.0
    [result] = probe.check(["pool_timeouts==0"])
    assert not result.ok
    assert result.describe().startswith("FAIL pool_timeouts==0")
    assert result.value == len(caught)
    report = probe.finish()
    assert any("timed out waiting for a connection" in p for p in report.problems)
    assert any(k.startswith("PoolTimeout") for k in report.errors_by_kind)


# ------------------------------------------------------------------------------------------------
# 2. SERIALIZABLE finalisation


def _finalise(pool: Any, table: str, barrier: threading.Barrier, *, retry: bool) -> int:
    """Read-modify-write of one row under SERIALIZABLE; both users read before either writes."""
    attempts = 0
    while True:
        attempts += 1
        try:
            with pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                row = conn.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone()
                if attempts == 1:
                    barrier.wait(timeout=20)
                conn.execute(f"UPDATE {table} SET n = %s WHERE id = 1", (row[0] + 1,))
            return attempts
        except pgerrors.SerializationFailure:
            if not retry or attempts >= 5:
                raise


def _final_n(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


def test_serializable_finalisation_with_retry_succeeds_and_counts_failures(
    probe: PoolProbe, table: str, dsn: str
) -> None:
    pool = probe.pool(max_size=2, timeout=10.0)
    barrier = threading.Barrier(2)
    attempts: list[int] = []
    errors = run_users(2, lambda i: attempts.append(_finalise(pool, table, barrier, retry=True)))
    assert errors == []
    assert sorted(attempts)[0] == 1 and sorted(attempts)[1] >= 2  # one of them had to retry
    assert _final_n(dsn, table) == 2  # no lost update
    m = probe.metrics()
    assert m["serialization_failures"] is not None and m["serialization_failures"] >= 1
    assert m["serialization_failures"] == sum(attempts) - 2
    assert m["pool_errors"] == 0 and m["dirty_returns"] == 0  # SET TRANSACTION is not dirty
    [gate] = probe.check(["serialization_failures>=1"])
    assert gate.ok
    report = probe.finish()
    assert report.sqlstates["40001"]["count"] == m["serialization_failures"]
    assert report.sqlstates["40001"]["name"] == "SerializationFailure"


def test_serializable_finalisation_without_retry_fails_and_the_gate_says_so(
    probe: PoolProbe, table: str, dsn: str
) -> None:
    pool = probe.pool(max_size=2, timeout=10.0)
    barrier = threading.Barrier(2)
    errors = run_users(2, lambda i: _finalise(pool, table, barrier, retry=False))
    assert len(errors) == 1 and isinstance(errors[0], pgerrors.SerializationFailure)
    assert _final_n(dsn, table) == 1  # only one finalisation went through
    [gate] = probe.check(["serialization_failures==0"])
    assert not gate.ok and gate.value == 1
    assert gate.describe() == "FAIL serialization_failures==0 (1)"


def test_deadlock_is_counted_and_lock_waits_are_seen(
    probe: PoolProbe, table: str, dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (2, 0)")
    pool = probe.pool(max_size=2, timeout=10.0)
    barrier = threading.Barrier(2)

    def body(i: int) -> None:
        first, second = (1, 2) if i == 0 else (2, 1)
        with pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL deadlock_timeout = '100ms'")
            conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = %s", (first,))
            barrier.wait(timeout=20)
            conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = %s", (second,))

    errors = run_users(2, body)
    assert len(errors) == 1 and isinstance(errors[0], pgerrors.DeadlockDetected)
    assert probe.metrics()["deadlocks"] == 1
    assert not probe.check(["deadlocks==0"])[0].ok
    # backends publish their counters lazily (up to ~10 s once idle); ask both to flush now
    held = [pool.getconn(), pool.getconn()]
    for conn in held:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.commit()
        pool.putconn(conn)
    assert wait_until(lambda: (probe.server().deadlocks_delta or 0) >= 1, timeout=15)

    # a lock wait: hold the row in one connection, update it from the pool
    with psycopg.connect(dsn) as holder:
        holder.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
        done = threading.Event()

        def blocked() -> None:
            with pool.connection() as conn:
                conn.execute(f"UPDATE {table} SET n = 0 WHERE id = 1")
            done.set()

        t = threading.Thread(target=blocked)
        t.start()
        try:
            assert wait_until(lambda: probe.server().lock_waits == 1, timeout=10)
            snap = probe.server()
            assert snap.waiting_on_lock == 1 and snap.lock_waits_db >= 1
            [detail] = snap.lock_wait_details
            assert detail["blocked_by"] == [holder.info.backend_pid]
            assert "UPDATE" in detail["query"]
        finally:
            holder.rollback()
            t.join(timeout=10)
    assert done.is_set()


# ------------------------------------------------------------------------------------------------
# 3. leaks and dirty returns


def test_connection_never_returned_names_the_test(
    request: pytest.FixtureRequest, probe: PoolProbe, dsn: str
) -> None:
    pool = probe.pool(max_size=2, timeout=5.0)
    kept: list[Any] = []

    def leaky_body(i: int) -> None:
        conn = pool.getconn()
        conn.execute("SELECT 1")
        kept.append(conn)  # ... and never pool.putconn(conn)

    assert run_users(1, leaky_body) == []
    with pool.connection() as conn:  # a well-behaved user is not a leak
        conn.execute("SELECT 1")
    assert probe.metrics()["leaked_connections"] == 1
    app = probe.finish().application_names[0]
    report = probe.finish()  # idempotent
    assert report.metrics["leaked_connections"] == 1
    [leak] = report.leaked
    assert leak.probe == request.node.nodeid
    assert leak.thread == "user-0" and not leak.closed
    assert leak.where and "test_dbprobe.py" in leak.where[0] and "leaky_body" in leak.where[0]
    assert any(request.node.nodeid in p and "never returned" in p for p in report.problems)
    [gate] = probe.check(["leaked_connections==0"])
    assert not gate.ok and gate.value == 1
    # the probe closed the leaked connection of its own pool: nothing stays connected
    assert kept[0].closed
    assert wait_until(lambda: app_backends(dsn, app) == 0)


def test_dirty_returns_are_counted_by_kind(probe: PoolProbe) -> None:
    pool = probe.pool(max_size=1, timeout=5.0)

    conn = pool.getconn()
    conn.execute("SELECT 1")  # opens a transaction (autocommit is off)
    pool.putconn(conn)  # returned inside it

    conn = pool.getconn()
    with pytest.raises(pgerrors.UndefinedTable):
        conn.execute("SELECT * FROM sg_no_such_table")
    pool.putconn(conn)  # returned inside a failed transaction

    conn = pool.getconn()
    conn.autocommit = True
    pool.putconn(conn)  # contaminates the pool: the next user gets autocommit on

    with pool.connection() as conn:
        assert conn.autocommit  # psycopg_pool does not reset it: that is the contamination
        conn.autocommit = False  # put it back as it was: not dirty
    with pool.connection() as conn:  # the normal path commits at exit: not dirty
        conn.execute("SELECT 1")

    m = probe.metrics()
    assert m["dirty_returns"] == 3
    assert probe.dirty == {"open_transaction": 1, "failed_transaction": 1, "autocommit_changed": 1}
    report = probe.finish()
    assert report.dirty == probe.dirty
    assert report.dirty_examples[0]["kinds"] == ["open_transaction"]
    assert "test_dbprobe.py" in report.dirty_examples[0]["where"][0]
    assert report.sqlstates["42P01"]["count"] == 1  # recorded, but not a pool error
    assert report.metrics["pool_errors"] == 0
    assert any("returned dirty" in p for p in report.problems)


def test_report_round_trips_and_timeline_stays_bounded(dsn: str) -> None:
    probe = PoolProbe("bounded", dsn=dsn, sample_interval=0.01, max_samples=8)
    pool = probe.pool(max_size=2, timeout=5.0)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    report = probe.finish()
    assert 2 <= len(report.timeline) <= 9
    assert report.timeline_interval_s > 0.01  # merged in pairs, the interval doubled
    assert sum(r.requests for r in report.timeline) == report.metrics["pool_requests"]
    again = PoolReport.from_dict(report.to_dict())
    assert again.to_dict() == report.to_dict()
    assert again.wait_latency().count == report.metrics["pool_requests"]
    assert report.summary().startswith("pool 2 conns: wait p95 ")
    assert "timeouts 0, errors 0, leaked 0, dirty 0" in report.summary()


def test_exhaust_and_recover(probe: PoolProbe) -> None:
    pool = probe.pool(max_size=3, timeout=5.0)
    report = probe.exhaust_and_recover(pool, hold_timeout=0.3, waiters=2)
    assert report.ok, report.describe()
    assert report.held == 3 and report.timed_out == 2
    assert all(0.25 <= w.elapsed_s < 0.3 + 1.0 for w in report.waiters)
    assert report.recovered and report.served_after == 3
    # the helper's deliberate timeouts are not the test's
    assert probe.metrics()["pool_timeouts"] == 0
    final = probe.finish()
    assert final.recovery[0].to_dict()["ok"] is True


def test_watch_users_own_pool_and_restores_it(dsn: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=2, max_size=2, open=True, timeout=5.0) as pool:
        probe = PoolProbe("watch")
        assert probe.watch(pool) is pool
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        conn = pool.getconn()
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        pool.putconn(conn)
        report = probe.finish()
        assert report.metrics["pool_requests"] == 2
        assert report.dirty == {"isolation_changed": 1}
        assert report.server is not None and report.server.error is None
        # restored: no instance attributes left, the pool still works, its connections too
        assert "getconn" not in pool.__dict__ and "putconn" not in pool.__dict__
        with pool.connection() as conn:
            assert "wait" not in conn.__dict__
            conn.execute("SELECT 1")
        assert not pool.closed  # watched pools are the user's to close


@pytest.mark.asyncio
async def test_watch_async_pool(dsn: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False, timeout=0.3) as pool:
        probe = PoolProbe("async")
        probe.watch(pool)
        async with pool.connection() as conn:
            with pytest.raises(pgerrors.DivisionByZero):
                await conn.execute("SELECT 1/0")
        held = await pool.getconn()
        with pytest.raises(PoolTimeout):
            await pool.getconn()
        await pool.putconn(held)
        m = probe.metrics()
        assert m["pool_timeouts"] == 1 and m["pool_requests"] == 3
        rec = await probe.aexhaust_and_recover(pool, hold_timeout=0.2, waiters=2)
        assert rec.ok, rec.describe()
        report = probe.finish()
        assert report.sqlstates["22012"]["count"] == 1
        assert report.metrics["pool_timeouts"] == 1  # the helper's timeouts are not counted
        assert report.recovery[0].timed_out == 2
        assert "getconn" not in pool.__dict__


# ------------------------------------------------------------------------------------------------
# 4. the server goes away mid-load (embedded server of its own: we stop it)


def test_server_stopped_mid_load(request: pytest.FixtureRequest, pg_base: Path) -> None:
    lease = acquire_embedded(f"stop-{uuid.uuid4().hex[:8]}", base_dir=pg_base, sweep=False)
    try:
        timeout = 1.0
        probe = PoolProbe(request.node.nodeid)
        pool = probe.pool(lease.dsn, max_size=4, timeout=timeout)
        pool_name = str(pool.name)
        stop = threading.Event()
        slowest_after_stop = 0.0
        stopped_at: list[float] = []
        user_errors: list[str] = []
        lock = threading.Lock()

        def body(i: int) -> None:
            nonlocal slowest_after_stop
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    with pool.connection() as conn:
                        conn.execute("SELECT pg_sleep(0.02)")
                except psycopg.Error as exc:  # PoolTimeout is one
                    with lock:
                        user_errors.append(type(exc).__name__)
                    time.sleep(0.01)
                elapsed = time.perf_counter() - t0
                if stopped_at and t0 >= stopped_at[0]:
                    with lock:
                        slowest_after_stop = max(slowest_after_stop, elapsed)

        def chaos() -> None:
            time.sleep(0.6)
            stopped_at.append(time.perf_counter())
            lease.server.stop(mode="fast")
            time.sleep(2.5)  # keep the load on while the server is gone
            stop.set()

        killer = threading.Thread(target=chaos)
        killer.start()
        t0 = time.perf_counter()
        assert run_users(8, body, timeout=30) == []
        killer.join(timeout=30)
        assert time.perf_counter() - t0 < 10
        assert user_errors, "the users saw no error although the server stopped"
        # no request waited beyond the pool timeout (+ slack for a busy 2-core machine)
        assert slowest_after_stop < timeout + 1.5

        t_finish = time.perf_counter()
        report = probe.finish()
        assert time.perf_counter() - t_finish < 8
        m = report.metrics
        assert m["pool_errors"] is not None and m["pool_errors"] >= 1
        assert m["pool_timeouts"] is not None and m["pool_timeouts"] >= 1
        assert m["pool_timeouts"] + m["pool_errors"] >= 1
        assert report.server is not None and report.server.error is not None
        problems = "\n".join(report.problems)
        assert "the database server went away or refused connections" in problems, problems
        assert "timed out waiting for a connection" in problems
        assert any("refused" in k.lower() or "terminating" in k.lower()
                   for k in report.errors_by_kind), report.errors_by_kind
        # nothing left running: the pool's threads end, the probe's sampler too
        assert wait_until(lambda: not [t for t in threading.enumerate()
                                       if t.name.startswith((pool_name, "stressguard-"))])
        assert not lease.server.is_running()
    finally:
        lease.release()
    assert not lease.run_dir.exists()
