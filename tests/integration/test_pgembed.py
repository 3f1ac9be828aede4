"""The embedded PostgreSQL: DSN resolution, sharing between processes, cleanup in every ending.

Each scenario uses its own base directory (under /tmp: as root the server runs as the
``pgserver`` user, who cannot enter pytest's private tmp_path) and checks that no server process
and no directory is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from pytest_stressguard.core.pg_leases import live_leases
from pytest_stressguard.core.pgembed import (
    DatabaseUnavailable,
    EmbeddedPostgresError,
    acquire_embedded,
    cleanup_run,
    normalize_dsn,
    redact_dsn,
    resolve_dsn,
    sweep_stale,
    wait_for_dsn,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# A process that takes a lease, prints it as JSON, then obeys one line on stdin:
# "release" (release and print the result), "exit" (leave it to atexit), or nothing (killed).
HOLDER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from pytest_stressguard.core.pgembed import acquire_embedded
    lease = acquire_embedded(sys.argv[1], base_dir=Path(sys.argv[2]), sweep=False)
    print(json.dumps({"dsn": lease.dsn, "started": lease.started, "pid": lease.info.pid}),
          flush=True)
    line = sys.stdin.readline().strip()
    if line == "release":
        print(json.dumps({"stopped": lease.release()}), flush=True)
    """
)


class Holder:
    def __init__(self, run_id: str, base: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, run_id, str(base)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.info: dict[str, Any] = {}

    def read(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"holder exited ({self.proc.poll()}): {err}")
        assert time.monotonic() < deadline
        data: dict[str, Any] = json.loads(line)
        return data

    def started(self) -> dict[str, Any]:
        self.info = self.read()
        return self.info

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sg-pgembed-"))
    try:
        yield path
    finally:
        # nothing may be left: stop whatever a failed test left running, then complain
        leftovers = [d for d in path.iterdir() if not d.name.startswith(".")] if path.exists() else []
        for d in leftovers:
            cleanup_run(d.name, path)
        shutil.rmtree(path, ignore_errors=True)
        assert not leftovers, f"left behind: {leftovers}"


@pytest.fixture
def holders() -> Iterator[Callable[[str, Path], Holder]]:
    made: list[Holder] = []

    def make(run_id: str, base: Path) -> Holder:
        h = Holder(run_id, base)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def run_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def accepts(dsn: str) -> bool:
    try:
        wait_for_dsn(dsn, timeout=0.5)
    except DatabaseUnavailable:
        return False
    return True


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------------
# resolve_dsn and friends (no server needed)


def test_resolve_dsn_order() -> None:
    env = {"STRESSGUARD_DSN": "postgresql://a/x", "DATABASE_URL": "postgresql://b/y"}
    assert resolve_dsn("postgresql://cli/z", env) == "postgresql://cli/z"
    assert resolve_dsn(None, env) == "postgresql://a/x"
    assert resolve_dsn(None, {"DATABASE_URL": "postgres://b/y"}) == "postgres://b/y"
    assert resolve_dsn("  ", {"STRESSGUARD_DSN": "", "DATABASE_URL": " "}) is None
    assert resolve_dsn(None, {}) is None
    # SQLAlchemy URLs in DATABASE_URL work with libpq once the driver suffix is gone
    assert resolve_dsn(None, {"DATABASE_URL": "postgresql+psycopg://u@h/db"}) == "postgresql://u@h/db"
    assert normalize_dsn(" host=h dbname=d ") == "host=h dbname=d"


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:secret@h:5/db?sslmode=require") == (
        "postgresql://u:***@h:5/db?sslmode=require"
    )
    assert redact_dsn("postgresql://h/db?password=secret&x=1") == "postgresql://h/db?password=***&x=1"
    assert redact_dsn("host=h password=secret user=u") == "host=h password=*** user=u"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def test_wait_for_dsn_times_out_with_the_last_error() -> None:
    with socket_port() as port:
        dsn = f"postgresql://postgres:pw@127.0.0.1:{port}/x"
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            wait_for_dsn(dsn, timeout=0.5)
        assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "pw" not in msg and "postgres:***@127.0.0.1" in msg
    assert "did not accept connections within 0.5s" in msg and "refused" in msg.lower()


class socket_port:
    """A free TCP port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------------------------
# sharing


def test_two_processes_share_one_server_and_the_last_one_stops_it(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    rid = run_id()
    a, b = holders(rid, base), holders(rid, base)  # racing for the start: the lock decides
    ia, ib = a.started(), b.started()
    assert ia["dsn"] == ib["dsn"] and ia["pid"] == ib["pid"]
    assert sorted([ia["started"], ib["started"]]) == [False, True]
    run_dir = base / rid
    assert len(live_leases(run_dir)) == 2
    with psycopg.connect(ia["dsn"]) as conn:
        row = conn.execute("SELECT current_setting('max_connections')").fetchone()
    assert row == ("300",)

    a.send("release")
    assert a.read() == {"stopped": False}  # b still holds it
    assert a.wait() == 0
    assert accepts(ib["dsn"])
    # this process joins too, then b leaves: we are the last
    lease = acquire_embedded(rid, base_dir=base, sweep=False)
    assert lease.dsn == ib["dsn"] and not lease.started
    b.send("release")
    assert b.read() == {"stopped": False}
    assert lease.release() is True
    assert lease.release() is False  # idempotent
    assert gone(ia["pid"]) and not run_dir.exists()


def test_a_killed_holder_does_not_keep_the_server_alive(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    rid = run_id()
    a = holders(rid, base)
    info = a.started()
    a.kill()  # SIGKILL: no atexit, the lease stays on disk
    assert accepts(info["dsn"])  # orphaned server still up
    lease = acquire_embedded(rid, base_dir=base, sweep=False)
    assert lease.dsn == info["dsn"] and not lease.started  # reused, stale lease ignored
    assert [x["pid"] for x in live_leases(base / rid)] == [os.getpid()]
    assert lease.release() is True
    assert gone(info["pid"]) and not (base / rid).exists()


def test_sweep_stops_servers_of_runs_whose_processes_all_died(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    dead, alive = run_id(), run_id()
    d, a = holders(dead, base), holders(alive, base)
    di, ai = d.started(), a.started()
    d.kill()
    assert sweep_stale(base, min_age=0) == [base / dead]
    assert gone(di["pid"]) and not (base / dead).exists()
    assert accepts(ai["dsn"])  # a live run is never touched
    a.send("release")
    assert a.read() == {"stopped": True}
    assert gone(ai["pid"])


def test_cleanup_run_for_the_controller(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    rid = run_id()
    h = holders(rid, base)
    info = h.started()
    assert cleanup_run(rid, base) is False  # a live worker holds it
    h.kill()
    assert cleanup_run(rid, base) is True
    assert gone(info["pid"]) and not (base / rid).exists()


@pytest.mark.parametrize("ending", ["exit", "sigint"])
def test_server_stopped_at_exit_and_on_ctrl_c(
    ending: str, base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    rid = run_id()
    h = holders(rid, base)
    info = h.started()
    if ending == "exit":
        h.send("exit")  # leaves without release(): atexit does it
        assert h.wait() == 0
    else:
        h.proc.send_signal(signal.SIGINT)  # Ctrl-C while it blocks: KeyboardInterrupt
        assert h.wait() != 0
    assert gone(info["pid"])
    assert not (base / rid).exists()


def test_failed_start_is_a_clear_error_and_leaves_nothing(base: Path) -> None:
    with pytest.raises(EmbeddedPostgresError) as info:
        acquire_embedded(run_id(), base_dir=base, sweep=False,
                         settings={"no_such_setting": "1"}, start_timeout=30)
    msg = str(info.value)
    assert "pg_ctl start exited" in msg
    assert 'unrecognized configuration parameter "no_such_setting"' in msg  # the log's tail
    assert "STRESSGUARD_DSN" in msg  # what to do instead
    assert not base.exists() or [d for d in base.iterdir() if not d.name.startswith(".")] == []


def test_embedded_server_supports_the_probe_scenarios(base: Path) -> None:
    lease = acquire_embedded(run_id(), base_dir=base, sweep=False,
                             settings={"deadlock_timeout": "'100ms'"})
    try:
        assert lease.started and lease.server.is_running()
        with psycopg.connect(lease.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('deadlock_timeout'), current_setting('fsync'), "
                "current_user, current_database()"
            ).fetchone()
        assert row == ("100ms", "off", "postgres", "postgres")
        assert lease.server.stop(mode="immediate") is True  # simulated crash
        assert not accepts(lease.dsn)
    finally:
        assert lease.release() is True
    assert not lease.run_dir.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_as_root_binaries_out_of_reach_of_the_server_user_are_copied(base: Path) -> None:
    """A virtualenv under a 0700 home (root in a CI container): the ``pgserver`` user cannot run
    its binaries, so a world-readable copy is made once in the base directory."""
    from pytest_stressguard.core.pg_binaries import find_postgres_bin

    private = Path(tempfile.mkdtemp(prefix="sg-private-"))  # 0700, root's
    try:
        original = find_postgres_bin().parent  # .../site-packages/pgserver/pginstall
        install = private / "site" / original.parent.name / original.name
        shutil.copytree(original, install, symlinks=True)
        libs = original.parent.parent / f"{original.parent.name}.libs"  # the wheel's own libs
        if libs.is_dir():
            shutil.copytree(libs, private / "site" / libs.name, symlinks=True)
        lease = acquire_embedded(run_id(), base_dir=base, sweep=False, bin_dir=install / "bin")
        try:
            assert accepts(lease.dsn)
            [copy] = [d for d in base.iterdir() if d.name.startswith(".pginstall-")]
            assert (copy / original.parent.name / original.name / "bin" / "postgres").exists()
        finally:
            assert lease.release() is True
    finally:
        shutil.rmtree(private, ignore_errors=True)
