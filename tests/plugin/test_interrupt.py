"""Ctrl-C in the middle of a long test: a clear stop, the measured part kept, nothing left running."""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def orphans() -> Iterator[Callable[[], list[psutil.Process]]]:
    """Make this process the subreaper of what it starts (Linux): a process the interrupted
    session leaves behind is re-parented to us instead of init, so it can be found (and is
    killed at the end)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs prctl(PR_SET_CHILD_SUBREAPER)")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    me = psutil.Process()
    try:
        yield lambda: [p for p in me.children(recursive=True) if p.status() != "zombie"]
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for child in me.children(recursive=True):
            child.kill()
        psutil.wait_procs(me.children(recursive=True), timeout=5)


def run_and_interrupt(path: Path, args: list[str], after: float = 1.0) -> tuple[int, str, float]:
    """Start pytest, wait until the body has run (it touches `started`), then press Ctrl-C."""
    started = path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", *args],
        cwd=path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(after)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, time.monotonic() - sent


@pytest.mark.parametrize("body", ["sync", pytest.param("async", marks=pytest.mark.xfail(
    sys.version_info < (3, 11), strict=False,
    reason="known bug: on Python 3.10 Ctrl-C leaves the event loop mid-run without cancelling "
           "the run's task, and the async load's measured part is lost (3 runs in 4)"))])
def test_ctrl_c_during_load_keeps_the_measured_part(
        pytester: pytest.Pytester, body: str,
        orphans: Callable[[], list[psutil.Process]]) -> None:
    touch = "    open('started', 'w').close()\n"
    if body == "sync":
        src = "def test_long():\n" + touch + "    time.sleep(0.001)\n"
    else:
        src = "async def test_long():\n" + touch + "    await asyncio.sleep(0.001)\n"
    pytester.makepyfile(
        "import asyncio, time, pytest\n\n"
        '@pytest.mark.load(users=4, duration="60s")\n' + src
    )
    report = pytester.path / "report.json"
    code, out, took = run_and_interrupt(pytester.path, [f"--stressguard-json={report}"])
    assert code == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert took < 20, "the engine must stop its users promptly"
    (test,) = json.loads(report.read_text())["tests"]
    assert test["interrupted"] is True and test["outcome"] == "interrupted"
    assert test["iterations"] > 50
    # The interrupted session exited by itself (no user thread kept it alive) and left no
    # process behind: what it started would be our child now (subreaper).
    assert orphans() == []
