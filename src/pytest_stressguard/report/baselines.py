"""Baselines: save a run's figures under a name, compare a later run against them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_stressguard.core.thresholds import format_metric_value
from pytest_stressguard.settings import Settings

# Figures compared per test, read from a test entry of the JSON report (canonical units).
_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "p50": lambda t: _ms(t, "p50"),
    "p90": lambda t: _ms(t, "p90"),
    "p95": lambda t: _ms(t, "p95"),
    "p99": lambda t: _ms(t, "p99"),
    "mean": lambda t: _ms(t, "mean"),
    "max": lambda t: _ms(t, "max"),
    "rps": lambda t: t.get("rps"),
    "error_rate": lambda t: t.get("error_rate"),
    "capacity": lambda t: (t.get("stress") or {}).get("capacity"),
    "leak": lambda t: (t.get("soak") or {}).get("leak_bytes_per_h"),
    "peak_rss": lambda t: (t.get("soak") or {}).get("peak_rss"),
}


class BaselineError(Exception):
    pass


def _ms(test: dict[str, Any], key: str) -> float | None:
    value = (test.get("latency_ms") or {}).get(key)
    return None if value is None else float(value) / 1000.0


def directory(config: pytest.Config, settings: Settings) -> Path:
    return Path(settings.baseline_dir) if settings.baseline_dir else \
        config.rootpath / ".stressguard" / "baselines"


def _safe(name: str) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise BaselineError(f"baseline name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def save(config: pytest.Config, settings: Settings, document: dict[str, Any]) -> Path:
    from pytest_stressguard.report.outputs import atomic_write

    path = directory(config, settings) / f"{_safe(settings.save or '')}.json"
    figures = {t["nodeid"]: {k: f(t) for k, f in _FIGURES.items()}
               for t in document["tests"] if t.get("nodeid")}
    atomic_write(path, json.dumps({"schema": "pytest-stressguard-baseline/1",
                                   "machine": document["machine"], "commit": document["commit"],
                                   "created": document["created"], "tests": figures}, indent=1))
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
            records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the comparison table, and one line per regression past a compare-fail rule."""
    base = load(config, settings, settings.compare or "")["tests"]
    rules = {r.metric: r for r in settings.compare_fail}
    shown = set(rules) | {"p95", "rps"}
    rows: list[dict[str, Any]] = []
    regressions: list[str] = []
    for record in records:
        before = base.get(record.get("nodeid"))
        if not before:
            continue
        for metric in sorted(shown):
            getter = _FIGURES.get(metric)
            if getter is None:
                continue
            now, then = getter(record), before.get(metric)
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
