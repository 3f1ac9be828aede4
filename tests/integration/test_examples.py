"""The examples run as users run them: pytest in a subprocess from the repository root, with no
DSN (so on the embedded PostgreSQL), once clean and once per bug switch.

* clean: exit code 0 and a summary with every kind of table (a fast subset; the full run is the
  main job, ``bash scripts/examples.sh``, or ``EXAMPLES_FULL=1`` here);
* each ``DEMO_BUG_*`` switch on its example: exit code 1, and the output names the failed gate
  and its cause;
* nothing is left behind: the run gets a private ``TMPDIR`` that must be empty afterwards (the
  embedded server, the demo service's uploads, the upload files, pytest's own temp dirs all live
  there), and no process that the run started is still alive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCALE = "0.01"  # the main job's time scale: a 2 h soak runs 72 s
RUN_TIMEOUT = 240.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class Run:
    ret: int
    output: str
    report: dict[str, Any]
    seconds: float
    pid: int

    def test(self, name: str) -> dict[str, Any]:
        found = [t for t in self.report.get("tests", []) if t["nodeid"].endswith("::" + name)]
        assert found, f"{name} is not in the JSON report:\n{self.output[-3000:]}"
        return found[-1]


def _clean_env(tmpdir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STRESSGUARD_", "DEMO_", "EXAMPLES_", "PYTEST_"))
           and k not in ("DATABASE_URL", "PYTEST_ADDOPTS")}
    env.update({"TMPDIR": str(tmpdir), "PYTHONDONTWRITEBYTECODE": "1"}, **extra)
    return env


def _leftover_processes(tmpdir: Path) -> list[str]:
    """Processes started by the run: their command line or their TMPDIR points into ours."""
    mark = str(tmpdir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            in_env = proc.environ().get("TMPDIR") == mark
        except (psutil.Error, OSError):
            continue
        if mark in cmdline or in_env:
            found.append(f"pid {proc.pid}: {cmdline[:200]}")
    return found


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    # Short (the embedded server's paths stay short) and traversable by the unprivileged user
    # the embedded PostgreSQL runs as when we are root.
    path = Path(tempfile.mkdtemp(prefix="sgex-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_examples(private_tmp: Path, report_dir: Path, *args: str, scale: str = SCALE,
                 timeout: float = RUN_TIMEOUT, **env: str) -> Run:
    report = report_dir / "report.json"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--stressguard-time-scale={scale}", f"--stressguard-json={report}",
               "--stressguard-progress=off", "-rfE", *args]
    started = time.monotonic()
    with subprocess.Popen(command, cwd=ROOT, env=_clean_env(private_tmp, env), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise AssertionError(f"the run took more than {timeout:g}s:\n{output[-6000:]}") from None
    seconds = time.monotonic() - started
    data = json.loads(report.read_text()) if report.exists() else {}
    run = Run(proc.returncode, output, data, seconds, proc.pid)
    # Nothing left behind: no file in the run's temp dir, no process it started.
    deadline = time.monotonic() + 10
    while (left := _leftover_processes(private_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)  # a server in its last milliseconds of shutdown
    assert not left, f"processes left behind: {left}"
    remains = sorted(str(p.relative_to(private_tmp)) for p in private_tmp.rglob("*"))
    assert not remains, f"files left in the temp dir: {remains[:20]}"
    return run


SUMMARY_TABLES = [r"^load\s+iters\s+rps", r"^stress\s+capacity\s+broke at", r"^degradation \(",
                  r"^soak\s+ran\s+leak", r"^concurrent\s+workers\s+rounds", r"^db pool\s+wait p95",
                  r"^repeated\s+runs\s+pass", r"^gate: ok peak_rss<1GB"]


def test_examples_pass_clean_with_every_kind_of_result(private_tmp: Path, tmp_path: Path) -> None:
    # A fast subset (the soak and the two heaviest load levels are left to the main job), with a
    # session gate so that the summary has every kind of line.
    run = run_examples(private_tmp, tmp_path, "examples", "-k",
                       "not test_upload_soak and not spike and not peak_load",
                       "--stressguard-gate=peak_rss<1GB", scale="0.005")
    assert run.ret == 0, run.output[-6000:]
    summary = run.output[run.output.index("== stressguard =="):]
    for table in SUMMARY_TABLES:
        assert re.search(table, summary, re.M), f"no {table!r} in the summary:\n{summary}"
    kinds = {t["kind"] for t in run.report["tests"]}
    assert {"load", "stress", "soak", "concurrent"} <= kinds
    assert run.report["session"]["exitstatus"] == 0


@dataclass(frozen=True)
class Bug:
    example: str
    env: dict[str, str]
    test: str
    must_say: tuple[str, ...]  # regular expressions, each must be found in the output
    select: str = ""
    scale: str = SCALE

    def __str__(self) -> str:
        return f"{Path(self.example).stem}-{'+'.join(k for k in self.env if k.startswith('DEMO_BUG'))}"


BUGS = [
    Bug("examples/test_finalize_regression.py", {"DEMO_BUG_NO_RETRY": "1"},
        "test_two_uploads_finalise_at_once",
        (r"500 database_error 40001 \(SerializationFailure\)", r"workers failed in round \d+")),
    Bug("examples/test_race_hunting.py", {"DEMO_BUG_RACE": "1"},
        "test_concurrent_finalisations_never_lose_an_update",
        (r"lost update: uploads \d+ and \d+ of user racer-\w+ were both finalised",)),
    Bug("examples/test_large_uploads.py", {"DEMO_BUG_LEAK": "1", "DEMO_LEAK_BYTES": "200000000"},
        "test_twelve_concurrent_large_uploads", (r"FAIL peak_rss<2GB \([\d.]+GB\)",)),
    Bug("examples/test_upload_soak.py", {"DEMO_BUG_LEAK": "1"},
        "test_repeated_uploads_do_not_leak",
        (r"FAIL leak<10.0MB/h \([\d.]+[MG]B/h; watched demo_service pid \d+\)",), scale="0.003"),
    Bug("examples/test_crud_load.py", {"DEMO_BUG_SLOW_QUERY": "1"}, "test_crud_basic_load",
        (r"FAIL p95\{GET /api/items\}<200ms \([\d.]+m?s\)",), select="basic"),
    Bug("examples/test_pool_exhaustion.py", {"DEMO_BUG_CONN_LEAK": "1"},
        "test_data_layer_pool_exhausts_and_recovers",
        (r"FAIL pool_timeouts==0 \(\d+\)", r"\d+ connections never returned",
         r"at examples/demo_service/db.py:\d+ in get_item <- examples/test_pool_exhaustion.py")),
    Bug("examples/test_breaking_point.py", {"DEMO_BUG_SLOW_QUERY": "1"},
        "test_breaking_point_of_the_item_list", (r"capacity [\d.]+ ?/s is below the expected 100 ?/s",)),
    Bug("examples/test_batch_archival.py", {"DEMO_BUG_CONN_LEAK": "1"},
        "test_sustained_batch_archival",
        (r"FAIL error_rate<0.1% \(\d", r"\d+ of \d+ application reads failed during the archival"),
        scale="0.007"),
]


@pytest.mark.parametrize("bug", BUGS, ids=str)
def test_each_bug_switch_turns_its_example_red(bug: Bug, private_tmp: Path, tmp_path: Path) -> None:
    args = [bug.example] + (["-k", bug.select] if bug.select else [])
    run = run_examples(private_tmp, tmp_path, *args, scale=bug.scale, **bug.env)
    assert run.ret == 1, f"exit code {run.ret}, expected 1:\n{run.output[-6000:]}"
    assert run.test(bug.test)["outcome"] == "failed", run.output[-6000:]
    for pattern in bug.must_say:
        assert re.search(pattern, run.output), f"{pattern!r} not in the output:\n{run.output[-6000:]}"


LOCAL_DSN = os.environ.get("STRESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _local_postgres() -> Any:
    import psycopg

    try:
        return psycopg.connect(LOCAL_DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {LOCAL_DSN}: {exc}")


def test_examples_on_a_given_database_leave_no_connection_or_schema(
    private_tmp: Path, tmp_path: Path
) -> None:
    """With STRESSGUARD_DSN set (a database you own), the run leaves nothing in it."""
    app = f"sgex-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    with _local_postgres() as conn:
        run = run_examples(private_tmp, tmp_path, "examples/test_finalize_regression.py",
                           "examples/test_pool_exhaustion.py", STRESSGUARD_DSN=LOCAL_DSN,
                           DEMO_APPLICATION_NAME=app)
        assert run.ret == 0, run.output[-6000:]
        left = conn.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
                            (app,)).fetchall()
        assert not left, f"connections left open: {left}"
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                               (f"sg_demo_{run.pid}_%",)).fetchall()
        assert not schemas, f"schemas left behind: {schemas}"


@pytest.mark.skipif(not os.environ.get("EXAMPLES_FULL"),
                    reason="the full run is the main job (scripts/examples.sh); EXAMPLES_FULL=1 runs it")
@pytest.mark.timeout(900)  # above the 300 s the test asserts, so that assertion can fail
def test_the_main_job_passes_in_five_minutes(private_tmp: Path, tmp_path: Path) -> None:
    run = run_examples(private_tmp, tmp_path, "examples", timeout=800)
    assert run.ret == 0, run.output[-8000:]
    assert run.seconds < 300, f"the main job took {run.seconds:.0f}s"
