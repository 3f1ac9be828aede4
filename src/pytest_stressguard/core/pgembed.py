"""Which PostgreSQL to test against, and a throw-away embedded one when none is given.

``resolve_dsn`` picks the DSN: the CLI option, then ``STRESSGUARD_DSN``, then ``DATABASE_URL``.
When none is set the plugin falls back to :func:`acquire_embedded`: one PostgreSQL server per test
run, started from the binaries bundled with the ``pgserver`` wheel (so no PostgreSQL needs to be
installed), shared by every process of the run (xdist workers and, if it wants, the controller)
and stopped when the last of them leaves.

Sharing protocol (all under ``<base_dir>/<run_id>/``):

* ``lock`` is an ``fcntl.flock`` lock held while starting the server, taking or dropping a lease.
  A process that waited on a lock file that meanwhile got deleted (the run directory was removed
  by the last leaver) notices that the inode changed and starts over, so two processes can never
  believe they hold the lock at once.
* ``leases/<pid>-<token>.json`` is one lease per :class:`EmbeddedLease`, naming the process (pid and
  its start time, so a recycled pid is not mistaken for the owner). Leases of dead processes are
  ignored and removed.
* The last live lease to be released stops the server (``pg_ctl stop -m fast``, then signals) and
  removes the whole directory. ``release()`` also runs from ``atexit``, so Ctrl-C and failed
  sessions stop the server too; a process killed with SIGKILL leaves a stale lease, which the next
  process of the run ignores, and :func:`sweep_stale` (run by every :func:`acquire_embedded`)
  stops and removes servers whose every lease is dead, e.g. after the whole session was killed.

Why not pgserver's own sharing: ``pgserver.get_server`` keeps a pid list in the data directory,
but never drops the pids of processes that died without cleaning up (so after one killed worker
the server is never stopped), keeps its lock in a per-user runtime directory shared by unrelated
runs, and waits for readiness without a bound. We only use its bundled binaries.

The server listens on 127.0.0.1 on a free port (TCP only, so the DSN is an ordinary URL every
driver and ORM understands), with durability switched off (it is thrown away) and
``max_connections`` raised so that several workers with a pool each fit. PostgreSQL refuses to run
as root; when we are root it runs as the unprivileged user ``pgserver`` (the same convention as
the pgserver package), created if missing.

This module never imports pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_DSN",
    "DatabaseUnavailable",
    "EmbeddedLease",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ServerInfo",
    "acquire_embedded",
    "cleanup_run",
    "default_base_dir",
    "find_postgres_bin",
    "live_leases",
    "normalize_dsn",
    "redact_dsn",
    "resolve_dsn",
    "sweep_stale",
    "wait_for_dsn",
]

ENV_DSN: Final = "STRESSGUARD_DSN"
ENV_DATABASE_URL: Final = "DATABASE_URL"

#: The OS user PostgreSQL runs as when we are root (pgserver's convention).
PG_OS_USER: Final = "pgserver"

#: Settings of the throw-away server (appended to its postgresql.conf).
DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped; the message says why and what to do."""


class DatabaseUnavailable(TimeoutError):
    """A DSN did not accept connections in time; the message carries the last error."""


# ---------------------------------------------------------------------------------------------
# DSN resolution


_SQLA_SCHEME: Final = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://")


def normalize_dsn(dsn: str) -> str:
    """Strip surrounding space and an SQLAlchemy driver suffix (``postgresql+psycopg://``).

    libpq understands ``postgresql://`` and ``postgres://`` URLs and ``key=value`` strings;
    ``DATABASE_URL`` values written for SQLAlchemy carry a ``+driver`` that libpq rejects.
    """
    text = dsn.strip()
    return _SQLA_SCHEME.sub(lambda m: f"{m.group(1)}://", text, count=1)


def resolve_dsn(cli: str | None, env: Mapping[str, str]) -> str | None:
    """The DSN to use: ``cli``, else ``env["STRESSGUARD_DSN"]``, else ``env["DATABASE_URL"]``.

    Empty or blank values count as unset. ``None`` means "start the embedded server".
    """
    for value in (cli, env.get(ENV_DSN), env.get(ENV_DATABASE_URL)):
        if value is not None and value.strip():
            return normalize_dsn(value)
    return None


_KV_PASSWORD: Final = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for messages and reports)."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return "<unparsable dsn>"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = _KV_PASSWORD.sub(r"\1***", parts.query.replace("&", " ")).replace(" ", "&")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return _KV_PASSWORD.sub(r"\1***", dsn)


def wait_for_dsn(
    dsn: str,
    timeout: float = 30.0,
    *,
    interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Wait until ``dsn`` accepts a connection (``SELECT 1`` succeeds); return the seconds waited.

    Raises :class:`DatabaseUnavailable` after ``timeout`` seconds, quoting the last error.
    """
    import psycopg

    start = clock()
    deadline = start + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - clock()
        try:
            # connect_timeout is whole seconds in libpq, minimum 2 is what libpq enforces anyway
            with psycopg.connect(
                dsn, connect_timeout=max(2, int(remaining + 0.999)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
            return clock() - start
        except psycopg.Error as exc:
            last = f"{type(exc).__name__}: {str(exc).strip()}"
        if clock() + interval > deadline:
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact_dsn(dsn)} did not accept connections within "
                f"{timeout:.1f}s; last error: {last}"
            )
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# binaries and OS user


def find_postgres_bin(explicit: Path | str | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``explicit`` wins; then the binaries bundled with the ``pgserver`` wheel (found without
    importing it: its import has side effects); then ``pg_ctl`` on ``PATH`` and the usual
    Debian/RedHat locations.
    """
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    else:
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
        for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
            candidates.extend(sorted(Path("/").glob(pattern.lstrip("/")), reverse=True))
    for c in candidates:
        if (c / "pg_ctl").exists() and (c / "initdb").exists() and (c / "postgres").exists():
            return c
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found for the embedded server (looked in "
        f"{looked}); install the 'pgserver' package, or point the tests at a server with "
        "--stressguard-dsn / STRESSGUARD_DSN / DATABASE_URL"
    )


@dataclass(frozen=True)
class _OsUser:
    uid: int
    gid: int
    name: str


def _pg_os_user() -> _OsUser | None:
    """The unprivileged user to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _create_pg_os_user()
        entry = pwd.getpwnam(PG_OS_USER)
    return _OsUser(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _create_pg_os_user() -> None:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedPostgresError(
            "PostgreSQL refuses to run as root and there is no user "
            f"{PG_OS_USER!r} to run it as (and no 'useradd' to create one); run the tests "
            "as an unprivileged user or set STRESSGUARD_DSN"
        )
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/bin/false",
         PG_OS_USER],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if proc.returncode not in (0, 9):  # 9: created meanwhile by someone else
        raise EmbeddedPostgresError(
            f"could not create the user {PG_OS_USER!r} to run PostgreSQL as (we are root, "
            f"which PostgreSQL refuses): {proc.stderr.strip()}"
        )


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables (PGDATA/PGPORT would redirect pg_ctl)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


def _run(
    cmd: list[str],
    *,
    user: _OsUser | None,
    timeout: float,
    cwd: Path,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as ``user`` if given, output to a file (never a pipe: pg_ctl's
    postmaster would inherit a pipe and keep it open)."""
    with tempfile.TemporaryFile("w+") as sink:
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
        try:
            proc = subprocess.run(
                cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, timeout=max(timeout, 1.0), cwd=str(cwd), env=_clean_env(),
                check=False, **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{Path(cmd[0]).name} did not finish within {timeout:.1f}s"
            ) from exc
        except OSError as exc:  # cannot execute it (as that user): report like a failed run
            return subprocess.CompletedProcess(cmd, 126, f"cannot run {cmd[0]}: {exc}", "")
        sink.flush()
        sink.seek(0)
        text = sink.read()
        return subprocess.CompletedProcess(cmd, proc.returncode, text, "")


def _usable_bin_dir(bin_dir: Path, user: _OsUser | None, base_dir: Path) -> Path:
    """``bin_dir`` if ``user`` can run it; otherwise a world-readable copy of the installation.

    As root, a virtualenv under a 0700 home directory is not reachable by the ``pgserver`` user.
    Instead of loosening permissions up the user's tree (what pgserver does), copy the
    relocatable installation (bin/lib/share and the wheel's ``.libs``, ~40 MB) once into
    ``base_dir``.
    """
    if user is None:
        return bin_dir
    probe = _run([str(bin_dir / "pg_ctl"), "--version"], user=user, timeout=30, cwd=Path("/"))
    if probe.returncode == 0:
        return bin_dir
    root = bin_dir.parent
    if not (root / "lib").is_dir() or not (root / "share").is_dir():
        raise EmbeddedPostgresError(
            f"the user {user.name!r} cannot run {bin_dir / 'pg_ctl'} ({probe.stdout.strip()}); "
            "make the directory readable or set STRESSGUARD_DSN"
        )
    # the wheel's binaries find their shared libraries in "<package>.libs" beside the package
    # ($ORIGIN/../../../pgserver.libs, the auditwheel layout): copy both, keeping the layout
    package = root.parent
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    target = base_dir / f".pginstall-{digest}"
    install = target / package.name / root.name
    if not (install / "bin" / "pg_ctl").exists():
        tmp = base_dir / f".pginstall-{digest}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        shutil.copytree(root, tmp / package.name / root.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        for dirpath, dirnames, filenames in os.walk(tmp):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode | 0o444
                    os.chmod(path, mode | 0o011 if mode & 0o100 else mode)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return install / "bin"


# ---------------------------------------------------------------------------------------------
# the lock


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs a POSIX system (fcntl); set STRESSGUARD_DSN or "
            "DATABASE_URL to a server instead"
        ) from None
    return fcntl


class _RunLock:
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

    def __enter__(self) -> _RunLock:
        fcntl = _fcntl()
        deadline = time.monotonic() + self.timeout
        while True:
            if self.create:
                self.run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
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


# ---------------------------------------------------------------------------------------------
# leases


def _process_start_time(pid: int) -> float | None:
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
    actual = _process_start_time(pid)
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


# ---------------------------------------------------------------------------------------------
# one server in one directory


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server is (plain data, also stored as ``server.json``)."""

    dsn: str
    host: str
    port: int
    pid: int
    version: str
    data_dir: str
    log_path: str
    started_at: float
    started_by: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn, "host": self.host, "port": self.port, "pid": self.pid,
            "version": self.version, "data_dir": self.data_dir, "log_path": self.log_path,
            "started_at": self.started_at, "started_by": self.started_by,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerInfo:
        return cls(
            dsn=str(d["dsn"]), host=str(d["host"]), port=int(d["port"]), pid=int(d["pid"]),
            version=str(d.get("version", "")), data_dir=str(d["data_dir"]),
            log_path=str(d["log_path"]), started_at=float(d["started_at"]),
            started_by=int(d["started_by"]),
        )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "(empty log)"


class EmbeddedPostgres:
    """A PostgreSQL server living in ``run_dir`` (data in ``run_dir/data``).

    Not process-safe on its own: :func:`acquire_embedded` calls it with the run lock held. Tests
    may call :meth:`stop` to simulate a server going away.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        bin_dir: Path | str | None = None,
        max_connections: int = 300,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.data_dir = self.run_dir / "data"
        self.log_path = self.run_dir / "postgres.log"
        self.info_path = self.run_dir / "server.json"
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.max_connections = max_connections
        self.settings = dict(settings or {})

    # -- state
    def info(self) -> ServerInfo | None:
        """What ``server.json`` says (the server may have died since: see :meth:`is_running`)."""
        try:
            return ServerInfo.from_dict(json.loads(self.info_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def dsn(self) -> str | None:
        info = self.info()
        return info.dsn if info else None

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` if that process is alive and is a postgres."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first.strip())
        except (OSError, ValueError):
            return None
        import psutil

        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or "postgres" not in proc.name():
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    # -- start
    def ensure_started(self, timeout: float = 60.0) -> tuple[ServerInfo, bool]:
        """Start the server unless it runs; return its info and whether we started it.

        Raises :class:`EmbeddedPostgresError` with the server log's tail when it does not come up
        within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        info = self.info()
        if info is not None and self.is_running():
            try:
                wait_for_dsn(info.dsn, timeout=min(10.0, max(1.0, deadline - time.monotonic())))
                return info, False
            except DatabaseUnavailable:
                self.stop(timeout=10.0)  # running but not answering: replace it
        elif self.is_running():
            self.stop(timeout=10.0)  # a server without our info file: we cannot know its port
        user = _pg_os_user()
        bin_dir = _usable_bin_dir(
            self._bin_dir or find_postgres_bin(), user, self.run_dir.parent
        )
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, user, deadline)
        last_error = ""
        for _attempt in range(3):
            port = _free_port()
            started = self._pg_ctl_start(bin_dir, user, port, deadline)
            if started is None:
                info = self._write_info(port)
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    wait_for_dsn(info.dsn, timeout=remaining)
                except DatabaseUnavailable as exc:
                    self.stop(timeout=10.0)
                    raise self._error(f"started but does not accept connections: {exc}") from exc
                return info, True
            last_error = started
            if "could not bind" not in started and "already in use" not in started:
                break
        raise self._error(last_error)

    def _error(self, what: str) -> EmbeddedPostgresError:
        return EmbeddedPostgresError(
            f"embedded PostgreSQL in {self.data_dir} failed: {what}\n"
            f"  server log ({self.log_path}):\n{_tail(self.log_path)}\n"
            "  Point the tests at an existing server instead with --stressguard-dsn, "
            "STRESSGUARD_DSN or DATABASE_URL."
        )

    def _prepare_dir(self, path: Path, user: _OsUser | None, mode: int = 0o700) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if user is not None:
            os.chown(path, user.uid, user.gid)

    def _check_reachable(self, user: _OsUser | None) -> None:
        """As root, PostgreSQL runs as another user who must be able to reach the data dir."""
        if user is None:
            return
        for p in self.data_dir.resolve().parents:
            st = p.stat()
            if st.st_uid == user.uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid == user.gid:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                raise EmbeddedPostgresError(
                    f"PostgreSQL refuses to run as root, so it runs as {user.name!r}, which "
                    f"cannot reach {self.data_dir}: {p} is not traversable by others (mode "
                    f"{oct(st.st_mode & 0o777)}). Use a base directory under a world-traversable "
                    f"one (the default {default_base_dir()} is), or set STRESSGUARD_DSN."
                )

    def _initdb(self, bin_dir: Path, user: _OsUser | None, deadline: float) -> None:
        self._check_reachable(user)
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made data dir
        self.run_dir.chmod(0o711)
        self._prepare_dir(self.data_dir, user)
        cmd = [
            str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        ]
        proc = _run(cmd, user=user, timeout=deadline - time.monotonic(), cwd=self.run_dir)
        if proc.returncode != 0:
            output = proc.stdout.strip()[-2000:]
            raise self._error(f"initdb exited with {proc.returncode}: {output}")
        conf = dict(DEFAULT_SETTINGS)
        conf["max_connections"] = str(int(self.max_connections))
        conf.update(self.settings)
        lines = ["", "# pytest-stressguard embedded server (throw-away: durability off)"]
        lines += [f"{k} = {v}" for k, v in conf.items()]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _pg_ctl_start(
        self, bin_dir: Path, user: _OsUser | None, port: int, deadline: float
    ) -> str | None:
        """Start on ``port``; None on success, else the reason (pg_ctl output + log tail)."""
        self.log_path.touch(mode=0o600)
        if user is not None:
            os.chown(self.log_path, user.uid, user.gid)
        wait_s = max(1, int(deadline - time.monotonic()))
        cmd = [
            str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
            "-w", "-t", str(wait_s), "-o", f"-p {port}", "start",
        ]
        proc = _run(cmd, user=user, timeout=wait_s + 5, cwd=self.run_dir)
        if proc.returncode == 0 and self.is_running():
            return None
        self.stop(timeout=10.0)  # in case it came up after pg_ctl gave up
        return f"pg_ctl start exited with {proc.returncode}: {proc.stdout.strip()[-1000:]}\n" + (
            _tail(self.log_path)
        )

    def _write_info(self, port: int) -> ServerInfo:
        pid = self.postmaster_pid() or 0
        try:
            version = (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            version = ""
        info = ServerInfo(
            dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres",
            host="127.0.0.1", port=port, pid=pid, version=version,
            data_dir=str(self.data_dir), log_path=str(self.log_path),
            started_at=time.time(), started_by=os.getpid(),
        )
        tmp = self.info_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info.to_dict()))
        os.replace(tmp, self.info_path)
        return info

    # -- stop
    def stop(self, timeout: float = 30.0, *, mode: str = "fast") -> bool:
        """Stop the server (``mode``: ``fast``, ``immediate`` = crash-like, ``smart``).

        Falls back to signals when ``pg_ctl`` is unavailable or does not finish in ``timeout``.
        Returns whether a server was running. Never raises for an already stopped server.
        """
        pid = self.postmaster_pid()
        if pid is None:
            return False
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"mode must be fast, immediate or smart, got {mode!r}")
        try:
            bin_dir = self._bin_dir or find_postgres_bin()
            user = _pg_os_user()
            bin_dir = _usable_bin_dir(bin_dir, user, self.run_dir.parent)
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                 "-t", str(max(1, int(timeout))), "stop"],
                user=user, timeout=timeout + 5, cwd=self.run_dir,
            )
        except (EmbeddedPostgresError, OSError):
            pass
        if self.postmaster_pid() is not None:
            _kill_tree(pid)
        return True


def _kill_tree(pid: int) -> None:
    """SIGQUIT (immediate shutdown) the postmaster, then SIGKILL it and its children."""
    import psutil

    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGQUIT)
    _gone, alive = psutil.wait_procs([proc], timeout=5)
    for p in [*alive, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs([proc, *children], timeout=5)


# ---------------------------------------------------------------------------------------------
# leases: the public entry point


def default_base_dir() -> Path:
    """``<tmp>/stressguard-pg-<uid>``: short (socket paths), per user, on a local filesystem."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"stressguard-pg-{uid}"


_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def _run_dir_name(run_id: str) -> str:
    if not run_id or not run_id.strip():
        raise ValueError("run_id must be a non-empty string")
    safe = _SAFE.sub("_", run_id.strip())
    if len(safe) > 40 or safe.startswith("."):
        safe = hashlib.sha256(run_id.encode()).hexdigest()[:32]
    return safe


def _remove_run_dir(run_dir: Path) -> None:
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


def _ensure_base(base: Path) -> None:
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # the pgserver user must be able to traverse to its data directory
        base.chmod(base.stat().st_mode | 0o011)


class EmbeddedLease:
    """One process's claim on the shared embedded server; :meth:`release` when done.

    ``dsn`` connects as the superuser ``postgres`` to the database ``postgres`` over TCP.
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
    def dsn(self) -> str:
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
        with _RunLock(self.run_dir, timeout=self._lock_timeout, create=False) as lock:
            if not lock.acquired:
                return False  # directory already gone
            with contextlib.suppress(FileNotFoundError):
                self._lease_path.unlink()
            if live_leases(self.run_dir, prune=True):
                return False
            self.server.stop()
            _remove_run_dir(self.run_dir)
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
    _fcntl()
    _ensure_base(base)
    name = _run_dir_name(run_id)
    if sweep:
        with contextlib.suppress(Exception):  # housekeeping must never stop a session
            sweep_stale(base, exclude=(name,))
    run_dir = base / name
    lock_timeout = start_timeout + 60.0
    server = EmbeddedPostgres(
        run_dir, bin_dir=bin_dir, max_connections=max_connections, settings=settings
    )
    with _RunLock(run_dir, timeout=lock_timeout):
        live_leases(run_dir, prune=True)
        try:
            info, started = server.ensure_started(start_timeout)
        except BaseException:
            if not live_leases(run_dir):
                server.stop(timeout=10.0)
                _remove_run_dir(run_dir)
            raise
        lease_dir = run_dir / "leases"
        lease_dir.mkdir(mode=0o700, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        lease_path = lease_dir / f"{os.getpid()}-{token}.json"
        lease_path.write_text(json.dumps({
            "pid": os.getpid(), "create_time": _process_start_time(os.getpid()),
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
    run_dir = base / _run_dir_name(run_id)
    return _remove_if_abandoned(run_dir, timeout=timeout)


def _remove_if_abandoned(run_dir: Path, *, timeout: float) -> bool:
    if not run_dir.is_dir():
        return False
    with _RunLock(run_dir, timeout=timeout, create=False) as lock:
        if not lock.acquired or live_leases(run_dir, prune=True):
            return False
        EmbeddedPostgres(run_dir).stop(timeout=10.0)
        _remove_run_dir(run_dir)
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
