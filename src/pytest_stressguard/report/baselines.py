"""Baselines: save a run's figures under a name, compare a later run against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_stressguard.core.records import Record
from pytest_stressguard.core.thresholds import format_metric_value
from pytest_stressguard.report import paths
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
    return paths.baseline_directory(config.rootpath, settings.baseline_dir)


def check_name(name: str) -> str:
    try:
        return paths.check_baseline_name(name)
    except paths.OutputPathError as exc:
        raise BaselineError(str(exc)) from None


def save(config: pytest.Config, settings: Settings, document: dict[str, Any]) -> Path:
    path = directory(config, settings) / f"{check_name(settings.save or '')}.json"
    # every metric the entry measured: a later rule may compare any of them
    tests = {t["nodeid"]: dict(t.get("metrics", {})) for t in document["tests"] if t.get("nodeid")}
    atomic_write(path, json.dumps({"schema": BASELINE_SCHEMA,
                                   "machine": document["machine"], "commit": document["commit"],
                                   "created": document["created"], "tests": tests}, indent=1))
    return path


BASELINE_SCHEMA = "pytest-stressguard-baseline/1"
#: nodeid -> metric -> value in the metric's canonical unit
Figures = dict[str, dict[str, float | None]]


def _checked(data: object, where: str) -> Figures:
    """The baseline's figures, or a BaselineError naming the file and the field that is wrong."""

    def bad(field: str, expected: str, got: object) -> BaselineError:
        return BaselineError(f"{where}: field {field!r} must be {expected}, got {got!r:.80}")

    if not isinstance(data, dict):
        raise bad("(top level)", "an object", data)
    if data.get("schema") != BASELINE_SCHEMA:
        raise bad("schema", f"{BASELINE_SCHEMA!r} (a baseline saved by --stressguard-save)",
                  data.get("schema"))
    tests = data.get("tests")
    if not isinstance(tests, dict):
        raise bad("tests", "an object of test ids", tests)
    figures: Figures = {}
    for nodeid, values in tests.items():
        if not isinstance(values, dict):
            raise bad(f"tests/{nodeid}", "an object of metrics", values)
        for metric, value in values.items():
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float))):
                raise bad(f"tests/{nodeid}/{metric}", "a number or null", value)
        figures[str(nodeid)] = {str(k): None if v is None else float(v) for k, v in values.items()}
    return figures


def load(config: pytest.Config, settings: Settings, name: str) -> Figures:
    """The figures of baseline ``name``, validated: a file of another shape is refused with its
    path and the first wrong field, never an internal error."""
    path = directory(config, settings) / f"{check_name(name)}.json"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise BaselineError(f"baseline {name!r} not found in {path.parent}"
                            + (f" (known: {', '.join(known)})" if known else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"baseline {name!r} at {path} is unreadable: {exc}") from None
    return _checked(data, f"baseline {name!r} at {path}")


def compare(config: pytest.Config, settings: Settings,
            records: list[Record]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the comparison table, and one line per regression past a compare-fail rule."""
    base = load(config, settings, settings.compare or "")
    rules = {r.metric: r for r in settings.compare_fail}
    rows: list[dict[str, Any]] = []
    regressions: list[str] = []
    for record in records:
        before = base.get(record.get("nodeid", ""))
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
