"""@soak through pytest: leaks fail with the rate and the sites, plateaus pass, watched processes
are gated, Ctrl-C keeps the samples."""

from __future__ import annotations

import json

import pytest

from tests.plugin.test_interrupt import run_and_interrupt

CORPUS = """
import subprocess, sys, time, pytest

kept = []
cache = {}

@pytest.mark.soak(duration="6s", warmup="1s", leak="50MB/h")
def test_leaks_100kb_per_iteration():
    kept.append(b"x" * 100_000)
    time.sleep(0.005)

@pytest.mark.soak(duration="6s", warmup="2s", leak="50MB/h")
def test_cache_warms_then_plateaus():
    key = len(cache) % 200 if len(cache) < 200 else 0
    cache.setdefault(key, b"y" * 50_000)
    time.sleep(0.005)

@pytest.mark.soak(duration="6s", warmup="1s", leak="50MB/h")
def test_large_temporaries_are_freed():
    data = b"z" * 5_000_000
    del data
    time.sleep(0.005)

LEAKER = "import time\\nkept=[]\\nwhile True:\\n    kept.append(b'x'*200_000)\\n    time.sleep(0.01)"

@pytest.fixture
def server_process():
    proc = subprocess.Popen([sys.executable, "-c", LEAKER])
    yield proc
    proc.kill()
    proc.wait()

@pytest.mark.soak(duration="5s", warmup="1s", leak="50MB/h", watch="server_process")
def test_watched_server_leaks():
    time.sleep(0.01)
"""


def test_leak_corpus_and_watched_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_soak_corpus=CORPUS)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess("-p", "no:randomly", f"--stressguard-json={report}",
                                           timeout=180)
    outcomes = {t["nodeid"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    assert outcomes["test_leaks_100kb_per_iteration"]["outcome"] == "failed"
    assert outcomes["test_cache_warms_then_plateaus"]["outcome"] == "passed"
    assert outcomes["test_large_temporaries_are_freed"]["outcome"] == "passed"
    assert outcomes["test_watched_server_leaks"]["outcome"] == "failed"
    watched = outcomes["test_watched_server_leaks"]["soak"]["watched"]
    assert watched and watched[0]["leak"]["bytes_per_h"] > 50e6
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*soak gates failed: FAIL leak<50*MB/h (*GB/h; this process)*",
        "soak*ran*leak (95% bound)*memory*drift*verdict*",
        "*test_cache_warms_then_plateaus*ok*",
    ])
    # The in-process leak names where the memory was allocated (memray).
    assert "test_soak_corpus.py" in json.dumps(
        outcomes["test_leaks_100kb_per_iteration"]["soak"]["alloc_sites"])


def test_soak_is_time_scaled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.soak(duration="2h", warmup="10m", leak="10MB/h")
        def test_two_hours():
            time.sleep(0.01)
        """
    )
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess("--stressguard-time-scale=0.0005",
                                           f"--stressguard-json={report}", timeout=120)
    result.assert_outcomes(passed=1)
    (test,) = json.loads(report.read_text())["tests"]
    assert 2.5 < test["soak"]["duration_s"] < 20  # 2 h x 0.0005 = 3.6 s


def test_ctrl_c_mid_soak_keeps_the_samples(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import time, pytest\n\n"
        '@pytest.mark.soak(duration="60s", leak="10MB/h")\n'
        "def test_soak():\n    open('started', 'w').close()\n    time.sleep(0.01)\n"
    )
    report = pytester.path / "r.json"
    code, out, took = run_and_interrupt(pytester.path, [f"--stressguard-json={report}"], after=2)
    assert code == pytest.ExitCode.INTERRUPTED, out
    assert took < 20
    (test,) = json.loads(report.read_text())["tests"]
    assert test["interrupted"] is True and test["iterations"] > 20
    assert len(test["soak"]["memory"]) > 5

