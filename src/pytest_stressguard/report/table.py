"""Cells and tables of the terminal summary, shared by every kind's section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_stressguard.core.records import Record


def ms(value: float | None) -> str:
    """A latency given in milliseconds, compact: 850us, 3.1ms, 480ms, 1.20s."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value >= 100:
        return f"{value:.0f}ms"
    if value >= 1:
        return f"{value:.1f}ms"
    return f"{value * 1000:.0f}us"


def metric_cell(metric: str, value: float | None) -> str:
    """A declared metric's value in a table cell, formatted by its dimension (compact: counts
    as integers, rates without their '/s')."""
    from pytest_stressguard.core.thresholds import metric_dimension
    from pytest_stressguard.core.units import format_value

    if value is None:
        return "-"
    dimension = metric_dimension(metric)
    if dimension == "number":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"
    if dimension == "rate":
        return f"{value:.1f}"
    return format_value(value, dimension)


def spark(values: Sequence[float]) -> str:
    from pytest_stressguard.core.trends import sparkline  # the trend statistics: only when drawn

    return sparkline(list(values), width=8)


def table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Aligned columns; ``right`` holds the indexes of right-aligned (numeric) columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(cells).rstrip())
    return out


def short(nodeid: str, width: int = 48) -> str:
    return nodeid if len(nodeid) <= width else "…" + nodeid[-(width - 1):]


def verdict_text(record: Record) -> str:
    """'ok', 'INTERRUPTED', or the first failed gate (+N more)."""
    failed = [t for t in record.get("thresholds", []) if not t["ok"]]
    problems = record.get("problems", [])
    if record.get("interrupted"):
        return "INTERRUPTED"
    if failed or problems:
        first = str(failed[0].get("describe", failed[0]["expr"]) if failed else problems[0])
        more = len(failed) + len(problems) - 1
        return first + (f" (+{more} more)" if more > 0 else "")
    if record.get("outcome") == "failed":
        return f"FAIL ({record.get('failure_kind') or 'test failed'})"
    return "ok"
