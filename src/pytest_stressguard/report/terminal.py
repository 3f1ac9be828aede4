"""The stressguard section of the terminal summary. It only prints; decisions are made elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_stressguard.core.trends import sparkline
from pytest_stressguard.core.units import (
    format_duration,
    format_ratio,
    format_size,
)
from pytest_stressguard.report.trends_view import repetition_of, trend_rows
from pytest_stressguard.session import SessionOutcome
from pytest_stressguard.settings import Settings
from pytest_stressguard.store import SessionStore


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value >= 100:
        return f"{value:.0f}ms"
    if value >= 1:
        return f"{value:.1f}ms"
    return f"{value * 1000:.0f}us"


def spark(values: Sequence[float]) -> str:
    return sparkline(list(values), width=8)


def table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(cells).rstrip())
    return out


def verdict_text(record: dict[str, Any]) -> str:
    failed = [t for t in record.get("thresholds", []) if not t.get("ok")]
    problems = record.get("problems", [])
    if record.get("interrupted"):
        return "INTERRUPTED"
    if failed or problems:
        first = str(failed[0]["describe"] if failed else problems[0])
        more = len(failed) + len(problems) - 1
        return first + (f" (+{more} more)" if more > 0 else "")
    if record.get("outcome") == "failed":
        return f"FAIL ({record.get('failure_kind') or 'test failed'})"
    return "ok"


def short(nodeid: str, width: int = 48) -> str:
    return nodeid if len(nodeid) <= width else "…" + nodeid[-(width - 1):]


def load_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [["load", "iters", "rps", "p50", "p95", "p99", "max", "errors", "verdict"]]
    for r in records:
        lat = r.get("latency_ms") or {}
        verdict = verdict_text(r)
        if r.get("saturated"):
            verdict += "  [generator saturated]"
        if r.get("dropped"):
            verdict += f"  [{r['dropped']} dropped]"
        rows.append([short(r["nodeid"]), str(r.get("iterations", 0)), f"{r.get('rps', 0):.1f}",
                     ms(lat.get("p50")), ms(lat.get("p95")), ms(lat.get("p99")),
                     ms(lat.get("max")), format_ratio(r.get("error_rate") or 0.0), verdict])
    return table(rows, {1, 2, 3, 4, 5, 6, 7})


def stress_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [["stress", "capacity", "broke at", "p95 at capacity", "recovery", "verdict"]]
    curves: list[str] = []
    for r in records:
        s = r.get("stress") or {}
        unit = " users" if s.get("kind") == "users" else "/s"
        cap = s.get("capacity")
        steps = s.get("steps", [])
        at_cap = next((st for st in steps if st.get(s.get("kind")) == cap), None)
        recovered = s.get("recovered")
        rows.append([
            short(r["nodeid"]),
            "none" if cap is None else f"{cap:g}{unit}",
            "-" if s.get("broke_at") is None else f"{s['broke_at']:g}{unit}",
            ms(at_cap.get("p95_ms")) if at_cap else "-",
            "-" if recovered is None else ("ok" if recovered else "FAILED"),
            verdict_text(r),
        ])
        curve = [f"  {r['nodeid'].split('::')[-1]}: " + ", ".join(
            f"{st.get(s.get('kind')):g}{unit}→{st.get('rps', 0):.0f}/s p95 {ms(st.get('p95_ms'))}"
            f" err {format_ratio(st.get('error_rate') or 0)}" + ("" if st.get("ok") else " ✗")
            for st in steps)]
        curves += curve
    return [*table(rows, {1, 2, 3}), "degradation (load→rps, p95, errors per step):", *curves]


def soak_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [["soak", "ran", "leak (95% bound)", "memory", "drift", "verdict"]]
    for r in records:
        s = r.get("soak") or {}
        rate = s.get("leak_bytes_per_h")
        bound = s.get("leak_bound_bytes_per_h")
        leak = "-" if rate is None else f"{'+' if rate >= 0 else '-'}{format_size(abs(rate))}/h"
        if rate is not None and bound is not None:
            leak += f" (±{format_size(abs(bound))})"
        drift = s.get("drift")
        series = [v for _, v in s.get("memory", [])]
        rows.append([short(r["nodeid"]), format_duration(r.get("duration_s") or 0), leak,
                     spark(series), "-" if drift is None else f"{drift * 100:+.0f}%",
                     verdict_text(r)])
    return table(rows, {1})


def concurrent_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [["concurrent", "workers", "rounds", "failures", "verdict"]]
    for r in records:
        c = r.get("concurrent") or {}
        rows.append([short(r["nodeid"]), str(c.get("workers", "-")), str(c.get("rounds", "-")),
                     str(len(c.get("failures", []))), verdict_text(r)])
    return table(rows, {1, 2, 3})


def pool_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [["db pool", "wait p95", "waiting max", "timeouts", "errors", "dirty", "leaked",
             "serialization", "deadlocks"]]
    for r in records:
        m = (r.get("pool") or {}).get("metrics", {})

        def n(key: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "-" if v is None else f"{v:g}"

        wait = m.get("pool_wait_p95")
        rows.append([short(r["nodeid"]), "-" if wait is None else ms(wait * 1000),
                     n("pool_waiting_max"), n("pool_timeouts"), n("pool_errors"),
                     n("dirty_returns"), n("leaked_connections"), n("serialization_failures"),
                     n("deadlocks")])
    return table(rows, {1, 2, 3, 4, 5, 6, 7, 8})


def repeated_lines(store: SessionStore) -> list[str]:
    rows = [["repeated", "runs", "pass", "first fail", "memory trend", "duration trend", "",
             "failure kinds"]]
    for row in trend_rows(store):
        mem = dur = flag = ""
        if "memory_per_run_bytes" in row:
            per_run = row["memory_per_run_bytes"]
            mem = f"{'+' if per_run >= 0 else '-'}{format_size(abs(per_run))}/run "
            mem += spark([float(v) for v in row["rss_after"]])
            dur = f"{row['duration_change'] * 100:+.0f}%" if row["duration_drifts"] else "flat"
            dur += " " + spark(row["durations_s"])
            flag = "LEAK?" if row["memory_grows"] else ("SLOWER?" if row["duration_drifts"] else "")
        kinds = sorted(row["failure_kinds"].items(), key=lambda kv: -kv[1])
        first = row["first_failure"]
        rate = row["pass_rate"]
        rows.append([short(row["test"]), str(row["runs"]),
                     "-" if rate is None else f"{rate * 100:.0f}%",
                     "-" if first is None else f"#{first}", mem, dur, flag,
                     "; ".join(f"{k} x{n}" for k, n in kinds[:2])])
    return table(rows, {1, 2}) if len(rows) > 1 else []


def write_summary(tr: Any, store: SessionStore, outcome: SessionOutcome | None,
                  settings: Settings) -> None:
    # Repetitions (pytest-repeat) are summarised once, in the "repeated" table.
    records = [{**r, "failure_kind": store.failure_kinds.get(r["nodeid"])} for r in store.records
               if r.get("kind") and repetition_of(r["nodeid"], store.repeat_count) is None]
    lines: list[str] = []
    for kind, fn in (("load", load_lines), ("stress", stress_lines), ("soak", soak_lines),
                     ("concurrent", concurrent_lines), ("pool", pool_lines)):
        mine = [r for r in records if r.get("kind") == kind or (kind == "pool" and r.get("pool"))]
        if mine:
            lines += fn(mine)
    lines += repeated_lines(store)
    if outcome is not None:
        if outcome.comparison:
            lines += comparison_lines(outcome.comparison)
        for gate in outcome.gates:
            lines.append(f"gate: {gate.describe()}")
        for reason in outcome.regressions:
            lines.append(f"regression: FAILED {reason}")
        for problem in outcome.problems:
            lines.append(f"FAILED {problem}")
    if store.lost_workers:
        lines.append(f"workers lost before the end: {', '.join(store.lost_workers)} "
                     f"(their finished tests are kept above)")
    if not lines:
        return
    tr.write_sep("=", "stressguard")
    for line in lines:
        tr.write_line(line)
    if outcome is not None and outcome.failed:
        tr.write_line("stressguard: session FAILED: " + "; ".join(outcome.reasons()), red=True)


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    table_rows = [["compare", "metric", "baseline", "now", "change", ""]]
    for row in rows:
        table_rows.append([short(row["nodeid"]), row["metric"], row["base_text"], row["now_text"],
                           f"{row['change'] * 100:+.1f}%", "" if row["ok"] else "REGRESSION"])
    return table(table_rows, {2, 3, 4})

