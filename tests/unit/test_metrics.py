"""Every metric is declared once, beside its producer: what is produced is declared, and what is
declared is produced. Each producer runs here for real (small, fast) and its keys are compared
with the declarations, so a misspelt or forgotten name fails here instead of reading 'not
measured' at the end of a soak."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_stressguard.core import metrics
from pytest_stressguard.core.engine import Engine
from pytest_stressguard.core.loadspec import LoadSpec
from pytest_stressguard.core.metrics import Metric, declared, is_percentile, lookup
from pytest_stressguard.core.monitor import ResourceMonitor
from pytest_stressguard.core.session_metrics import session_metrics
from pytest_stressguard.core.soak import SoakSpec, run_soak
from pytest_stressguard.core.stats import current_recorder
from pytest_stressguard.core.stress import search
from pytest_stressguard.core.thresholds import parse_threshold

DOCS = Path(__file__).resolve().parents[2] / "docs" / "thresholds.md"


def declared_name(produced: str, scope: metrics.Scope = "test") -> str:
    found = lookup(produced, scope)
    assert found is not None, f"{produced!r} is produced but not declared ({scope})"
    return found.name


def test_load_soak_stress_monitor_and_pool_produce_exactly_what_they_declare() -> None:
    def body() -> None:
        recorder = current_recorder.get()
        assert recorder is not None
        recorder.record("GET /x", 0.001, None)

    load = Engine().run_sync(body, LoadSpec(users=1, iterations=20))
    soak = run_soak(lambda: time.sleep(0.001), SoakSpec(duration=0.5, sample_interval=0.05))
    stress = search(lambda level: load, [1.0], [parse_threshold("errors==0")], recovery=False)
    monitor = ResourceMonitor(interval=0.02)
    monitor.start()
    time.sleep(0.1)
    monitor.stop()
    pytest.importorskip("psycopg_pool")
    from pytest_stressguard.core.pool import PoolProbe

    produced = {*load.metrics(), *soak.metrics(), *stress.metrics(), *monitor.metrics(),
                *PoolProbe("t").metrics()}
    for endpoint in load.endpoint_metrics().values():
        produced |= set(endpoint)
    names = {declared_name(p) for p in produced}  # raises for a produced, undeclared name
    assert names == set(declared("test")), "declared but never produced"


def test_endpoint_figures_are_the_per_endpoint_declarations() -> None:
    def body() -> None:
        recorder = current_recorder.get()
        assert recorder is not None
        recorder.record("GET /x", 0.001, None)

    load = Engine().run_sync(body, LoadSpec(users=1, iterations=5))
    (endpoint,) = load.endpoint_metrics().values()
    per_endpoint = {m.name for m in declared("test").values() if m.per_endpoint}
    assert {declared_name(k) for k in endpoint} == per_endpoint


def test_session_metrics_are_declared_in_the_session_scope() -> None:
    values = session_metrics([0.1, 0.2], ["passed", "failed"], 1.0, [10_000_000],
                             [[(float(t), 1000 * t) for t in range(10)]], wanted={"leak"})
    assert {declared_name(k, "session") for k in values} == set(declared("session"))


def test_a_declaration_has_what_users_and_reports_need() -> None:
    for metric in (*declared("test").values(), *declared("session").values()):
        assert metric.meaning and "\n" not in metric.meaning, metric  # one line: a table cell
        assert metric.dimension in ("time", "size", "ratio", "rate", "size_rate", "number")
    assert lookup("p97.5") == lookup("p95") == declared()["pNN"]
    assert is_percentile("p99.9") and not is_percentile("p0")


def test_a_producer_declaring_one_name_with_two_dimensions_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("fake_producer")
    fake.METRICS = (Metric("rps", "time", "a second, wrong rps"),)  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "fake_producer", fake)
    monkeypatch.setattr(metrics, "_PRODUCERS", (*metrics._PRODUCERS, "fake_producer:METRICS"))
    metrics._load.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="'rps' declared twice"):
            metrics.declared()
    finally:
        monkeypatch.undo()
        metrics._load.cache_clear()


def test_the_metrics_table_in_the_docs_is_built_from_the_declarations() -> None:
    table = metrics.markdown_table()
    text = DOCS.read_text(encoding="utf-8")
    start, end = "<!-- metrics table: generated -->", "<!-- end of metrics table -->"
    assert start in text and end in text
    shown = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert shown == table.strip(), (
        "docs/thresholds.md is out of date: regenerate with "
        "`python -m pytest_stressguard.core.metrics`")
