"""Where the runs of the embedded server live, the lock of a run, and its leases.

Every run has a directory ``<base_dir>/<run_id>/`` with a ``lock`` file and ``leases/`` (one JSON
file per lease); ``pgembed.py`` describes the sharing protocol built on them.

A run directory holds the server's password, so nobody but us may enter the base directory: it
is ours and 0700, or as root (when the server runs as another OS user, who must reach its data
directory) 0710 with that user's group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from .pg_binaries import EmbeddedPostgresError, OsUser, pg_os_user, unreachable_dir

__all__ = [
    "RunLock",
    "default_base_dir",
    "ensure_base",
    "live_leases",
    "pick_base_dir",
    "process_start_time",
    "remove_run_dir",
    "require_fcntl",
    "run_dir_name",
]


def _base_name() -> str:
    return f"stressguard-pg-{os.getuid() if hasattr(os, 'getuid') else 0}"


def default_base_dir() -> Path:
    """``<tmp>/stressguard-pg-<uid>``: short, per user, on a local filesystem.

    As root, the first of the temp dir, ``/tmp`` and ``/var/tmp`` that the server's OS user can
    traverse (a ``TMPDIR`` under root's 0700 home is not); when none is, the temp dir's, and
    :func:`ensure_base` says why it cannot be used. Every process of a run computes the same.
    """
    tmp = Path(tempfile.gettempdir())
    try:
        user = pg_os_user()
        if user is not None:
            return pick_base_dir([tmp, Path("/tmp"), Path("/var/tmp")], user)
    except EmbeddedPostgresError:
        pass
    return tmp / _base_name()


def pick_base_dir(roots: Sequence[Path], user: OsUser) -> Path:
    """``<root>/stressguard-pg-<uid>`` for the first of ``roots`` that ``user`` can traverse."""
    why = []
    for root in roots:
        blocker = unreachable_dir(root, user)
        if blocker is None:
            return root / _base_name()
        why.append(f"{blocker} is not traversable by others "
                   f"(mode {oct(stat.S_IMODE(blocker.stat().st_mode))})")
    raise EmbeddedPostgresError(
        f"PostgreSQL refuses to run as root, so it runs as {user.name!r}, which cannot reach a "
        f"data directory in any of {', '.join(map(str, roots))}: {'; '.join(why)}. Set TMPDIR "
        "to a directory every user can traverse, or point the tests at a server with "
        "--stressguard-dsn / STRESSGUARD_DSN."
    )


_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def run_dir_name(run_id: str) -> str:
    if not run_id or not run_id.strip():
        raise ValueError("run_id must be a non-empty string")
    safe = _SAFE.sub("_", run_id.strip())
    if len(safe) > 40 or safe.startswith("."):
        safe = hashlib.sha256(run_id.encode()).hexdigest()[:32]
    return safe


def remove_run_dir(run_dir: Path) -> None:
    """Remove a run's directory; when no other run is left, also the binaries copied for the
    unprivileged server user and the base directory: a session leaves nothing in the temp dir
    (the copy costs well under a second at the next start)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    base = run_dir.parent
    with contextlib.suppress(OSError):
        if not [p for p in base.iterdir() if not p.name.startswith(".pginstall-")]:
            for cache in base.glob(".pginstall-*"):
                shutil.rmtree(cache, ignore_errors=True)
        base.rmdir()  # fails harmlessly while other runs live there


def ensure_base(base: Path) -> None:
    """Create ``base`` (or check it) as a directory of ours that nobody else may enter, except
    (as root) the server's OS user, who must traverse it to its data directory."""
    user = pg_os_user()
    if user is not None:
        pick_base_dir([base.parent], user)  # raises when that user could not reach it
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EmbeddedPostgresError(
            f"{base} is not a directory of ours (owner uid {st.st_uid}): it would hold the "
            "embedded PostgreSQL's password; remove it, or set TMPDIR elsewhere"
        )
    if user is not None:
        os.chown(base, -1, user.gid)
    base.chmod(0o700 if user is None else 0o710)


def require_fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs a POSIX system (fcntl); set STRESSGUARD_DSN or "
            "DATABASE_URL to a server instead"
        ) from None
    return fcntl


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/lock`` that survives the directory being removed.

    ``create=False`` returns ``acquired=False`` when the run directory does not exist, instead of
    creating it (used when releasing and sweeping). ``timeout=0`` tries once.
    """

    def __init__(self, run_dir: Path, *, timeout: float, create: bool = True) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "lock"
        self.timeout = timeout
        self.create = create
        self.acquired = False
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fcntl = require_fcntl()
        deadline = time.monotonic() + self.timeout
        while True:
            if self.create:
                ensure_base(self.run_dir.parent)  # again: the last leaver of a run removes it
                with contextlib.suppress(FileNotFoundError):  # ... maybe just now: retry
                    self.run_dir.mkdir(mode=0o700, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                if not self.create:
                    return self
                continue  # removed between mkdir and open: start over
            locked = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.02)
            if not locked:
                os.close(fd)
                if self.timeout <= 0:
                    return self
                raise EmbeddedPostgresError(
                    f"timed out after {self.timeout:.0f}s waiting for the lock {self.path} "
                    "(another process is starting or stopping the embedded PostgreSQL)"
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self.acquired = True
                return self
            os.close(fd)  # we locked a file that was deleted meanwhile: try the new one
            if not self.create and not self.run_dir.exists():
                return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        self.acquired = False


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def _lease_alive(data: Mapping[str, Any]) -> bool:
    try:
        pid = int(data["pid"])
        created = float(data["create_time"])
    except (KeyError, TypeError, ValueError):
        return False
    actual = process_start_time(pid)
    return actual is not None and abs(actual - created) < 1.0


def live_leases(run_dir: Path, *, prune: bool = False) -> list[dict[str, Any]]:
    """The leases of ``run_dir`` whose process is still alive; ``prune`` deletes the others.

    Call with the run lock held when pruning.
    """
    lease_dir = run_dir / "leases"
    alive: list[dict[str, Any]] = []
    try:
        files = sorted(lease_dir.glob("*.json"))
    except OSError:
        return alive
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and _lease_alive(data):
            alive.append(data)
        elif prune:
            with contextlib.suppress(OSError):
                f.unlink()
    return alive
