"""The stressguard section of the terminal summary. It only prints; decisions are made elsewhere."""

from __future__ import annotations

from typing import Any

from pytest_stressguard.core.records import Record
from pytest_stressguard.core.units import format_size
from pytest_stressguard.kinds import KINDS
from pytest_stressguard.report.table import short, spark, table
from pytest_stressguard.report.trends_view import repetition_of, trend_rows
from pytest_stressguard.session import SessionOutcome
from pytest_stressguard.settings import Settings
from pytest_stressguard.store import SessionStore


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
    records: list[Record] = [
        {**r, "failure_kind": store.failure_kinds.get(r["nodeid"], "")} for r in store.records
        if r.get("kind") and repetition_of(r["nodeid"], store.repeat_count) is None]
    lines: list[str] = []
    for name, kind in KINDS.items():
        # pool figures show in their own table, whichever entry they joined
        mine = [r for r in records if (r.get("kind") == name if name != "pool" else "pool" in r)]
        if mine:
            lines += kind.summary(mine)
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

