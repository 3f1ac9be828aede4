"""--stressguard-csv and --stressguard-html write what they promise, and nothing half-written."""

from __future__ import annotations

import csv

import pytest


def test_csv_time_series_and_html_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.load(users=2, duration="2.5s", sla=["p95<1s"])
        def test_api():
            time.sleep(0.002)

        @pytest.mark.soak(duration="2s")
        def test_soak():
            time.sleep(0.005)
        """
    )
    out = pytester.path / "series"
    page = pytester.path / "report.html"
    result = pytester.runpytest(f"--stressguard-csv={out}", f"--stressguard-html={page}")
    result.assert_outcomes(passed=2)
    rows = list(csv.DictReader((out / "load_timeline.csv").open()))
    assert {"nodeid", "t", "users", "iterations", "rps", "p95_ms", "errors"} <= set(rows[0])
    assert sum(1 for r in rows if r["nodeid"].endswith("test_api")) >= 2
    memory = list(csv.DictReader((out / "memory.csv").open()))
    assert any(r["nodeid"].endswith("test_soak") and int(r["rss"]) > 0 for r in memory)
    html = page.read_text()
    assert "<table>" in html and "test_api" in html and "test_soak" in html
    assert not list(pytester.path.glob("**/.*.csv.*")) + list(pytester.path.glob(".report.html.*"))
