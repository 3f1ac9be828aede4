"""One throw-away PostgreSQL server in one directory.

The server listens on 127.0.0.1 on a free port (TCP only, so the DSN is an ordinary URL every
driver and ORM understands), with durability switched off (it is thrown away) and
``max_connections`` raised so that several workers with a pool each fit. As root it runs as the
unprivileged user of ``pg_binaries.py``.

Its superuser has a random password (scram-sha-256): on 127.0.0.1 any local user could
otherwise connect as superuser and, with ``COPY ... TO PROGRAM``, run programs as the server's OS
user. The password is in the DSN, kept in files only we can read (``password``, ``server.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .pg_binaries import (
    EmbeddedPostgresError,
    OsUser,
    find_postgres_bin,
    pg_os_user,
    run_tool,
    usable_bin_dir,
)
from .pg_dsn import DatabaseUnavailable, Dsn, wait_for_dsn

__all__ = ["DEFAULT_SETTINGS", "EmbeddedPostgres", "ServerInfo"]

#: Settings of the throw-away server (appended to its postgresql.conf).
DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
}


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server is (plain data, also stored as ``server.json``)."""

    dsn: Dsn
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
            dsn=Dsn(d["dsn"]), host=str(d["host"]), port=int(d["port"]), pid=int(d["pid"]),
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
        self.password_path = self.run_dir / "password"
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
    def dsn(self) -> Dsn | None:
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
        user = pg_os_user()
        bin_dir = usable_bin_dir(
            self._bin_dir or find_postgres_bin(), user, self.run_dir.parent
        )
        if not (self.data_dir / "PG_VERSION").exists() or not self.password_path.exists():
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

    def _prepare_dir(self, path: Path, user: OsUser | None, mode: int = 0o700) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if user is not None:
            os.chown(path, user.uid, user.gid)

    def _initdb(self, bin_dir: Path, user: OsUser | None, deadline: float) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made data dir
        if user is not None:  # the server's user traverses to its data dir; nobody else may
            os.chown(self.run_dir, -1, user.gid)
        self.run_dir.chmod(0o700 if user is None else 0o710)
        self._prepare_dir(self.data_dir, user)
        self.password_path.unlink(missing_ok=True)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")  # URL-safe: no quoting in the DSN
        cmd = [
            str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth=scram-sha-256", f"--pwfile={self.password_path}", "--encoding=UTF8",
            "--locale=C", "--no-sync",
        ]
        try:
            if user is not None:  # initdb reads it as the server's user
                os.chown(self.password_path, user.uid, user.gid)
            proc = run_tool(cmd, user=user, timeout=deadline - time.monotonic(), cwd=self.run_dir)
        finally:  # then it is ours alone again
            if user is not None:
                os.chown(self.password_path, os.geteuid(), os.getegid())
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
        self, bin_dir: Path, user: OsUser | None, port: int, deadline: float
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
        proc = run_tool(cmd, user=user, timeout=wait_s + 5, cwd=self.run_dir)
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
        password = self.password_path.read_text().strip()
        info = ServerInfo(
            dsn=Dsn(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"),
            host="127.0.0.1", port=port, pid=pid, version=version,
            data_dir=str(self.data_dir), log_path=str(self.log_path),
            started_at=time.time(), started_by=os.getpid(),
        )
        tmp = self.info_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(json.dumps(info.to_dict()))
        os.replace(tmp, self.info_path)
        return info

    # -- stop
    def stop(self, timeout: float = 30.0, *, mode: str = "fast") -> bool:
        """Stop the server (``mode``: ``fast``, ``immediate`` = crash-like, ``smart``).

        Signals the postmaster as ``pg_ctl stop`` does (so no binaries are needed: a watchdog or
        a sweep can stop a server whose installation is gone), waits up to ``timeout`` seconds,
        then kills it and its children. Returns whether a server was running.
        """
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be fast, immediate or smart, got {mode!r}")
        pid = self.postmaster_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _STOP_SIGNALS[mode])
        deadline = time.monotonic() + timeout
        while self.postmaster_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.postmaster_pid() is not None:
            _kill_tree(pid)
        return True


#: What pg_ctl sends for each shutdown mode.
_STOP_SIGNALS: Final = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
                        "immediate": signal.SIGQUIT}


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
