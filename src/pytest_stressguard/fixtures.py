"""Fixtures: thin, and cheap until used (their objects live in adapters.py, imported lazily).

The database fixtures need the `postgres` extra; without it they fail with one line naming it,
since the base install (what @load on a plain function needs) does not bring a driver.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_stressguard.adapters import LoadRunner, LoopHttp, MonitorFixture
    from pytest_stressguard.core.files import UploadFileFactory
    from pytest_stressguard.pool_fixture import ProbeFixture


def require_extra(fixture: str, extra: str, *modules: str) -> None:
    """Fail the test in one line when a module of ``extra`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{fixture} needs {', '.join(missing)}, which the base install does not "
                    f"bring: pip install 'pytest-stressguard[{extra}]'", pytrace=False)


@pytest.fixture
def load_runner(request: pytest.FixtureRequest) -> LoadRunner:
    """Run a callable under load: `load_runner.run(fn, users=.., duration=..)`."""
    from pytest_stressguard.adapters import LoadRunner

    return LoadRunner(request.node)


@pytest.fixture(scope="session")
def upload_file_factory() -> Iterator[UploadFileFactory]:
    """`upload_file_factory("100MB", content="random"|"zeros", seed=0, name=None)` -> a file with
    `.path .size .sha256 .chunks() .stream()`; cached per session, removed at the end."""
    from pytest_stressguard.core.files import UploadFileFactory, remove_stale_directories

    remove_stale_directories()  # what a killed session (SIGKILL) could not remove
    factory = UploadFileFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def stressguard_http(request: pytest.FixtureRequest) -> Iterator[LoopHttp]:
    """A fast async HTTP/1.1 client for load bodies, recording per-endpoint stats by `name`:
    `await stressguard_http.get(url, name="GET /items")`; post/put/patch/delete alike."""
    from pytest_stressguard.adapters import LoopHttp
    from pytest_stressguard.bodies import CLOSERS_KEY

    http = LoopHttp()
    request.node.stash.setdefault(CLOSERS_KEY, []).append(http.aclose)
    yield http
    http.close()


@pytest.fixture(scope="session")
def stressguard_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """The PostgreSQL DSN: --stressguard-dsn, env STRESSGUARD_DSN, DATABASE_URL, else an embedded
    throw-away server started once per run (shared by xdist workers) and stopped at the end."""
    require_extra("stressguard_dsn", "postgres", "psycopg")
    from pytest_stressguard.adapters import run_id, settings_of
    from pytest_stressguard.core import pgembed

    # a Dsn: a str whose repr (in tracebacks, as the argument of a test) hides the password;
    # no local holds the settings, whose repr shows the raw --stressguard-dsn
    dsn = pgembed.resolve_dsn(settings_of(request.config).dsn, os.environ)
    if dsn is not None:
        problem = pgembed.dsn_problem(dsn)
        if problem is not None:
            pytest.fail(f"stressguard_dsn: {pgembed.redact_dsn(dsn)} is not a valid DSN: "
                        f"{problem}", pytrace=False)
        try:  # a wrong DSN fails here, once, with the reason, not in every test
            pgembed.wait_for_dsn(dsn, timeout=10)
        except pgembed.DatabaseUnavailable as exc:
            pytest.fail(f"stressguard_dsn: {pgembed.redact_dsn(dsn)} is not reachable: {exc}",
                        pytrace=False)
        yield dsn
        return
    try:
        lease = pgembed.acquire_embedded(run_id(request.config))
    except pgembed.EmbeddedPostgresError as exc:
        pytest.fail(f"stressguard_dsn: the embedded PostgreSQL did not start: {exc}",
                    pytrace=False)
    try:
        yield lease.dsn
    finally:
        lease.release()


@pytest.fixture
def db_pool_probe(request: pytest.FixtureRequest) -> Iterator[ProbeFixture]:
    """Observe psycopg pools: `pool(max_size=20)` makes an instrumented ConnectionPool on
    stressguard_dsn, `watch(pool)` instruments yours; `server()`, `metrics()`, `check([...])`.
    Connections never returned fail the test at teardown, naming where they were taken."""
    require_extra("db_pool_probe", "postgres", "psycopg", "psycopg_pool")
    from pytest_stressguard.hooks import keep
    from pytest_stressguard.kinds.pool import pool_record
    from pytest_stressguard.pool_fixture import ProbeFixture
    from pytest_stressguard.verdict import Verdict

    probe = ProbeFixture(request)
    try:
        yield probe
    finally:
        report = probe.finish()
        problems = tuple(leak.describe() for leak in report.leaked)
        notes = tuple(report.problems)
        if report.dirty:
            notes += (f"dirty returns: {report.dirty}",)
        verdict = Verdict("pool", (), tuple(f"leaked connection: {p}" for p in problems), notes)
        keep(request.node, pool_record(report), verdict)


@pytest.fixture
def resource_monitor(request: pytest.FixtureRequest) -> Iterator[MonitorFixture]:
    """Samples RSS/USS, CPU, threads, fds and children of this process (and `watch(pid)`) in a
    background thread: `peak_rss`, `series()`, `leak_rate()`, `check([...])`."""
    from pytest_stressguard.adapters import MonitorFixture

    monitor = MonitorFixture(request.node.nodeid)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()
