"""Verdicts are objects: what was checked, what was measured, and how it reads in a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_stressguard.core.records import ThresholdDict
    from pytest_stressguard.core.thresholds import ThresholdResult

STATUS_LETTER = "S"
STATUS_WORD = "SLA FAILED"
SECTION = "stressguard"


@dataclass(frozen=True)
class Verdict:
    """The gates of one test. `problems` are failures that are not a threshold (a recovery that
    did not hold, a leaked connection, a race), each one line."""

    kind: str
    results: tuple[ThresholdResult, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    detail: str = ""  # a longer explanation (tracebacks) shown under the failures

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and not self.problems

    def failures(self) -> list[str]:
        return [r.describe() for r in self.results if not r.ok] + list(self.problems)

    def section(self) -> str:
        """Every threshold with its measured value and verdict, then the problems and notes."""
        lines = [r.describe() for r in self.results]
        lines += [f"FAIL {p}" for p in self.problems]
        lines += self.notes
        return "\n".join(lines)

    def long_repr(self, nodeid: str) -> str:
        # The first line is what `-r` short summaries show: make it the reason itself.
        failures = self.failures()
        head = f"{self.kind} gates failed: {'; '.join(failures)}"
        lines = [head, f"  test: {nodeid}", *(f"  {line}" for line in failures)]
        if self.detail:
            lines += ["", self.detail]
        return "\n".join(lines)

    def to_list(self) -> list[ThresholdDict]:
        """The thresholds as the report's entries (canonical units, and the verdict's line)."""
        out: list[ThresholdDict] = []
        for r in self.results:
            t = r.threshold
            out.append({"expr": t.expr, "metric": t.metric, "endpoint": t.endpoint, "op": t.op,
                        "value": r.value, "limit": t.limit, "unit": t.unit, "ok": r.ok,
                        "note": r.note, "describe": r.describe()})
        return out

