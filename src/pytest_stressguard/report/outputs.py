"""Files the session writes: JSON (a contract), CSV time series, HTML, and baselines."""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_stressguard.report.files import atomic_write
from pytest_stressguard.session import SessionOutcome
from pytest_stressguard.settings import Settings
from pytest_stressguard.store import SessionStore

SCHEMA = "pytest-stressguard/1"


def machine_info() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def commit_info(rootdir: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=rootdir, capture_output=True, text=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    return {"id": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def build_document(config: pytest.Config, store: SessionStore, outcome: SessionOutcome | None,
                   exitstatus: int) -> dict[str, Any]:
    from pytest_stressguard.report.trends_view import trend_rows

    tests = []
    for record in store.records:
        entry = {k: v for k, v in record.items() if k != "when"}
        tests.append(entry)
    session: dict[str, Any] = {
        "exitstatus": exitstatus,
        "duration_s": outcome.duration_s if outcome else None,
        "gates": [g.to_dict() for g in outcome.gates] if outcome else [],
        "trends": trend_rows(store),
        "metrics": outcome.metrics if outcome else {},
        "regressions": list(outcome.regressions) if outcome else [],
        "comparison": outcome.comparison if outcome else [],
        "problems": list(outcome.problems) if outcome else [],
        "processes": [p.to_dict() for p in store.processes.values()],
        "lost_workers": list(store.lost_workers),
    }
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "commit": commit_info(config.rootpath),
        "session": session,
        "tests": tests,
    }


def write_csv(directory: Path, store: SessionStore) -> None:
    """One CSV file per kind of row (``load_timeline.csv``, ``memory.csv``...), each row naming
    its test; the rows come from each entry's kind."""
    from pytest_stressguard.kinds import KINDS

    files: dict[str, list[dict[str, object]]] = {}
    for record in store.records:
        owners = [KINDS[record["kind"]]] if record.get("kind") in KINDS else []
        if "pool" in record and record.get("kind") != "pool":
            owners.append(KINDS["pool"])
        for kind in owners:
            for name, rows in kind.csv_rows(record).items():
                files.setdefault(name, []).extend(rows)
    memory = files.setdefault("memory", [])
    for proc in store.processes.values():
        memory += [{"nodeid": "(session)", "pid": proc.worker, "t": t, "rss": rss}
                   for t, rss in proc.series]
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        if not rows:
            continue
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(directory / f"{name}.csv", buffer.getvalue())


def render_html(document: dict[str, Any]) -> str:
    rows = []
    for t in document["tests"]:
        lat = t.get("latency_ms") or {}
        failed = [x.get("describe", x.get("expr")) for x in t.get("thresholds", [])
                  if not x.get("ok")]
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                t.get("nodeid"), t.get("kind"), t.get("outcome"), t.get("iterations", ""),
                f"{t.get('rps', 0) or 0:.1f}", lat.get("p95", ""), lat.get("p99", ""),
                f"{(t.get('error_rate') or 0) * 100:.2f}%", "; ".join(failed) or "ok")) + "</tr>")
    gates = "".join(f"<li>{html.escape(str(g.get('expr')))}: "
                    f"{'ok' if g.get('ok') else 'FAILED'}</li>"
                    for g in document["session"]["gates"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>stressguard report</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 6px}}</style></head><body><h1>stressguard report</h1>
<p>{html.escape(document['created'])} · exit status {document['session']['exitstatus']}</p>
<table><tr><th>test</th><th>kind</th><th>outcome</th><th>iterations</th><th>rps</th>
<th>p95 ms</th><th>p99 ms</th><th>errors</th><th>verdict</th></tr>{''.join(rows)}</table>
<h2>gates</h2><ul>{gates}</ul></body></html>"""


def write_all(config: pytest.Config, store: SessionStore, settings: Settings,
              outcome: SessionOutcome | None, exitstatus: int) -> tuple[list[str], list[str]]:
    """Write every file asked for; return (what was written, what could not be) as one line
    each. A failure is reported, not raised: the summary and the other files still come."""
    written: list[str] = []
    failed: list[str] = []
    wanted = settings.json_path or settings.html_path or settings.save

    def attempt(what: str, where: Path, write: Callable[[], object]) -> None:
        try:
            write()
        except (OSError, ValueError) as exc:
            failed.append(f"could not write {what} to {where}: {exc}")
        else:
            written.append(f"{what}: {where}")

    document = build_document(config, store, outcome, exitstatus) if wanted else None
    if settings.json_path and document is not None:
        path = Path(settings.json_path)
        attempt("the JSON report", path,
                lambda: atomic_write(path, json.dumps(document, indent=1, default=str)))
    if settings.html_path and document is not None:
        html_path = Path(settings.html_path)
        attempt("the HTML report", html_path,
                lambda: atomic_write(html_path, render_html(document)))
    if settings.csv_dir:
        csv_dir = Path(settings.csv_dir)
        attempt("the CSV files", csv_dir, lambda: write_csv(csv_dir, store))
    if settings.save and document is not None:
        from pytest_stressguard.report import baselines

        target = baselines.directory(config, settings) / f"{settings.save}.json"
        attempt(f"baseline {settings.save!r}", target,
                lambda: baselines.save(config, settings, document))
    return written, failed
