"""Nobody else gets into the embedded database, and no password reaches any output.

The embedded server has a random password (scram-sha-256) that travels in the DSN the fixture
yields and in files only our user can read; a DSN's password never appears in the terminal (also
with ``pytest -l``, which shows the locals of every frame), in the JSON report or in logs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_stressguard.core.pgembed import EmbeddedLease, acquire_embedded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SECRET = "Sekr1tPw42"  # what must never be printed
LOCAL_DSN = os.environ.get("STRESSGUARD_TEST_LOCAL_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def lease() -> Iterator[EmbeddedLease]:
    base = Path(tempfile.mkdtemp(prefix="sg-pgsec-"))  # not tmp_path: see test_pgembed.py
    held = acquire_embedded(f"sec-{uuid.uuid4().hex[:8]}", base_dir=base, sweep=False)
    try:
        yield held
    finally:
        held.release()
        shutil.rmtree(base, ignore_errors=True)


def password_of(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn).get("password") or ""


def with_password(dsn: str, password: str | None) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.pop("password", None)
    if password is not None:
        params["password"] = password
    # no ~/.pgpass or PGPASSWORD may supply the password behind our back
    params["passfile"] = "/nonexistent"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# the embedded server's door


def test_the_dsn_carries_a_random_password_that_works(lease: EmbeddedLease) -> None:
    password = password_of(lease.dsn)
    assert len(password) >= 20
    with psycopg.connect(lease.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row == ("postgres",)
    assert password not in repr(lease) and password not in repr(lease.dsn)


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_a_connection_without_the_password_is_refused(lease: EmbeddedLease,
                                                      password: str | None) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(with_password(lease.dsn, password), connect_timeout=5).close()
    msg = str(info.value)
    assert "password authentication failed" in msg or "no password supplied" in msg, msg


def test_the_password_lives_only_in_files_of_our_user(lease: EmbeddedLease) -> None:
    """Every file holding the password is ours and 0600; its directories let nobody else list or
    enter them (as root the server's own OS user may traverse to its data directory)."""
    password = password_of(lease.dsn).encode()
    base = lease.run_dir.parent
    holders = []
    for dirpath, _dirnames, filenames in os.walk(base):
        for name in filenames:
            path = Path(dirpath, name)
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if password in data:
                holders.append(path)
    assert holders, "the password is stored nowhere: how do other workers connect?"
    for path in holders:
        st = path.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600, path
        for parent in path.parents:
            mode = stat.S_IMODE(parent.stat().st_mode)
            assert mode & 0o007 == 0, f"{parent} is open to others ({oct(mode)})"
            if parent == base:
                break


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_another_user_cannot_read_the_password(lease: EmbeddedLease) -> None:
    password = password_of(lease.dsn)
    proc = subprocess.run(
        ["grep", "-rF", "--", password, str(lease.run_dir.parent)],
        user="nobody", group="nogroup", extra_groups=[], capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert password not in proc.stdout
    assert proc.returncode != 0  # grep found nothing, and was refused entry
    assert "Permission denied" in proc.stderr


# ------------------------------------------------------------------------------------------------
# no password in any output


FAILING_POOLS = """
import os
import pytest

def test_refused(db_pool_probe):
    db_pool_probe.pool(os.environ["SG_REFUSED_DSN"], max_size=1, open_timeout=1)

def test_wrong_password(db_pool_probe):
    db_pool_probe.pool(os.environ["SG_WRONG_DSN"], max_size=1, open_timeout=2)

def test_malformed(db_pool_probe):
    db_pool_probe.pool(os.environ["SG_MALFORMED_DSN"], max_size=1, open_timeout=1)

def test_default_dsn(stressguard_dsn):
    assert stressguard_dsn is None
"""


def test_no_password_in_the_output_of_failing_pools(pytester: pytest.Pytester,
                                                    lease: EmbeddedLease,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``pytest -l`` shows the arguments and locals of every frame of a traceback, and captured
    logs: a wrong, unreachable or malformed DSN must not bring its password along."""
    embedded = psycopg.conninfo.conninfo_to_dict(lease.dsn)
    port = free_port()
    monkeypatch.setenv("SG_REFUSED_DSN", f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/x")
    monkeypatch.setenv("SG_WRONG_DSN",
                       f"postgresql://postgres:{SECRET}@127.0.0.1:{embedded['port']}/postgres")
    monkeypatch.setenv("SG_MALFORMED_DSN",
                       f"postgresql://postgres:{SECRET}%zz@127.0.0.1:{embedded['port']}/postgres")
    # the session DSN of the last test: the embedded server's, with its real password
    monkeypatch.setenv("STRESSGUARD_DSN", lease.dsn)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    pytester.makepyfile(test_pools=FAILING_POOLS)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-l", "--tb=long", "--log-level=DEBUG", "-rA",
        f"--stressguard-json={report}", timeout=120,
    )
    result.assert_outcomes(failed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str() + result.stderr.str() + report.read_text()
    for secret in (SECRET, password_of(lease.dsn)):
        assert secret not in output, f"{secret!r} leaked:\n{_around(output, secret)}"
    # and the failures still say what went wrong, with the DSN redacted
    result.stdout.fnmatch_lines_random([
        f"*postgres:[*][*][*]@127.0.0.1:{port}*",
        "*password authentication failed*",
        "*invalid percent-encoded token*",
        "*stressguard_dsn = 'postgresql://postgres:[*][*][*]@127.0.0.1:*",
    ])
    assert json.loads(report.read_text())["tests"] is not None


def _around(text: str, needle: str, width: int = 300) -> str:
    i = text.find(needle)
    return text[max(0, i - width): i + width]


def test_a_malformed_session_dsn_fails_at_once_without_its_password(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRESSGUARD_DSN", f"postgresql://postgres:{SECRET}%zz@127.0.0.1:1/x")
    pytester.makepyfile("def test_db(stressguard_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-l", "--tb=long", timeout=60)
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*stressguard_dsn: postgresql://postgres:[*][*][*]@127.0.0.1:1/x is not a valid DSN: "
        "invalid percent-encoded token*"])
    assert SECRET not in result.stdout.str() + result.stderr.str()
