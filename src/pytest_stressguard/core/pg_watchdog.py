"""A watchdog that stops an embedded server once every process holding a lease on it is dead.

A session killed with SIGKILL runs no ``atexit``: without a watchdog its server would run until
the next run's sweep. :func:`spawn` starts one per server start (a Python running :func:`main`) in
a session of its own like the postmaster (which ``pg_ctl`` also detaches): a kill of the test
session's process group takes neither. It forks once more so that no test process has to reap
it, then polls the run's leases; when none is alive it takes the run lock, checks again, stops
the server (fast shutdown, then kill) and removes the run directory. It leaves when the server it
watches is gone (stopped by the last lease's release, or replaced by a restart, whose own
watchdog takes over).

This module never imports pytest.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from .pg_binaries import EmbeddedPostgresError
from .pg_leases import RunLock, live_leases, remove_run_dir
from .pg_server import EmbeddedPostgres

__all__ = ["spawn", "watch"]

#: How often the watchdog looks at the leases (a few cheap file reads and /proc lookups).
POLL_S: Final = 0.5


def spawn(run_dir: Path, postmaster_pid: int, *, timeout: float = 30.0) -> int:
    """Start the watchdog of the server ``postmaster_pid`` in ``run_dir``; return its pid.

    Call with the run lock held: the watchdog acts only with the lock, so it sees the lease
    written before the lock is let go.
    """
    # importable as we were, also when sys.path was extended at run time (pytest's pythonpath)
    here = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.append({here!r}); from {__name__} import main; "
            "sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, str(run_dir), str(postmaster_pid)]
    # our pipes reach it only until it reports its pid (a pipe kept by a process that outlives
    # its parent would keep a reader such as pytester waiting); fds are not inherited, so
    # neither is the run lock's
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, cwd="/", close_fds=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if not out.strip().isdigit():
        raise EmbeddedPostgresError(
            f"the watchdog of the embedded PostgreSQL in {run_dir} did not start "
            f"(exit status {proc.returncode}): {err.decode(errors='replace').strip()[-1000:]}"
        )
    return int(out)


def watch(run_dir: Path, postmaster_pid: int, *, poll: float = POLL_S) -> bool:
    """Poll until the server is gone; stop it when no lease holder is alive. Returns whether
    this watchdog stopped it."""
    server = EmbeddedPostgres(run_dir)
    while server.postmaster_pid() == postmaster_pid:
        if not live_leases(run_dir):
            with contextlib.suppress(EmbeddedPostgresError), \
                    RunLock(run_dir, timeout=60.0, create=False) as lock:
                # under the lock: a process joining now has written its lease, or waits
                if lock.acquired and not live_leases(run_dir, prune=True):
                    server.stop(timeout=10.0, mode="fast")
                    remove_run_dir(run_dir)
                    return True
        time.sleep(poll)
    return False


def main(argv: list[str]) -> int:
    run_dir, pid = Path(argv[0]), int(argv[1])
    if os.fork() > 0:  # the spawner reaps this parent at once; the child is init's
        os._exit(0)
    print(os.getpid(), flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):  # the spawner reads them to EOF
        os.dup2(devnull, fd)
    os.close(devnull)
    watch(run_dir, pid)
    return 0
