"""Baselines: save a run's figures under a name, compare a later run against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_stressguard.core.records import Record
from pytest_stressguard.core.thresholds import format_metric_value
from pytest_stressguard.report.files import atomic_write
from pytest_stressguard.settings import Settings


class BaselineError(Exception):
    pass


def compared(record: Record) -> list[str]:
    """The metrics a comparison shows for an entry: its kind's baseline figures (and those of the
    pool figures it carries); a --stressguard-compare-fail rule adds its own."""
    from pytest_stressguard.kinds import KINDS

    names = list(KINDS[record["kind"]].baseline_metrics) if record.get("kind") in KINDS else []
    if "pool" in record:
        names += KINDS["pool"].baseline_metrics
    return names


def directory(config: pytest.Config, settings: Settings) -> Path:
    return Path(settings.baseline_dir) if settings.baseline_dir else \
        config.rootpath / ".stressguard" / "baselines"


def _safe(name: str) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise BaselineError(f"baseline name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def save(config: pytest.Config, settings: Settings, document: dict[str, Any]) -> Path:
    path = directory(config, settings) / f"{_safe(settings.save or '')}.json"
    # every metric the entry measured: a later rule may compare any of them
    tests = {t["nodeid"]: dict(t.get("metrics", {})) for t in document["tests"] if t.get("nodeid")}
    atomic_write(path, json.dumps({"schema": "pytest-stressguard-baseline/1",
                                   "machine": document["machine"], "commit": document["commit"],
                                   "created": document["created"], "tests": tests}, indent=1))
    return path


def load(config: pytest.Config, settings: Settings, name: str) -> dict[str, Any]:
    path = directory(config, settings) / f"{_safe(name)}.json"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise BaselineError(f"baseline {name!r} not found in {path.parent}"
                            + (f" (known: {', '.join(known)})" if known else ""))
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"baseline {name!r} at {path} is unreadable: {exc}") from None
    return data


def compare(config: pytest.Config, settings: Settings,
            records: list[Record]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the comparison table, and one line per regression past a compare-fail rule."""
    base = load(config, settings, settings.compare or "")["tests"]
    rules = {r.metric: r for r in settings.compare_fail}
    rows: list[dict[str, Any]] = []
    regressions: list[str] = []
    for record in records:
        before = base.get(record.get("nodeid"))
        if not before:
            continue
        now_figures = record.get("metrics", {})
        for metric in sorted(set(rules) | set(compared(record))):
            now, then = now_figures.get(metric), before.get(metric)
            if now is None or then is None:
                continue
            change = (now - then) / then if then else 0.0
            ok = True
            if metric in rules:
                result = rules[metric].check(then, now)
                ok = result.ok
                if not ok:
                    regressions.append(f"{record['nodeid']}: {result.describe()}")
            rows.append({"nodeid": record["nodeid"], "metric": metric, "base": then, "now": now,
                         "base_text": format_metric_value(metric, then),
                         "now_text": format_metric_value(metric, now),
                         "change": change, "ok": ok})
    return rows, regressions
