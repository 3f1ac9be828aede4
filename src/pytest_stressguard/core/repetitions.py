"""Repetition reports: how often a repeated test passed, when it first failed, and how.

Repetitions come from pytest-repeat (`--count=N` or `@pytest.mark.repeat(N)`, which append
`-i-N` to the test id: `test_x[3-100]`, `test_x[a-1-3-100]` for a parametrized test) and from
the rounds of `@concurrent`. Everything here is pure and works on plain data, so xdist workers
can send records or partial stats and the controller merges them (`RepetitionStats.merge`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "RepeatId",
    "RepetitionRecord",
    "RepetitionStats",
    "aggregate",
    "format_table",
    "merge_all",
    "records_from_rounds",
    "split_repeat_id",
]

_PASSED = frozenset({"passed", "xfailed", "xpassed"})
_FAILED = frozenset({"failed", "error"})
_SKIPPED = frozenset({"skipped"})
_REPEAT_TAIL = re.compile(r"(?:(?P<params>.*)-)?(?P<index>\d+)-(?P<total>\d+)")


@dataclass(frozen=True)
class RepeatId:
    """A repetition's place: `base` is the nodeid without the repeat part, `index` from 1."""

    base: str
    index: int
    total: int


def split_repeat_id(nodeid: str) -> RepeatId | None:
    """`"t.py::test_x[3-100]"` -> `RepeatId("t.py::test_x", 3, 100)`;
    `"t.py::test_p[a-1-2-3]"` -> `RepeatId("t.py::test_p[a-1]", 2, 3)`; None when the id has
    no `-i-N` tail with 1 <= i <= N.

    pytest-repeat puts its id last, so the last two numbers are the repetition. A test whose
    own parameter id ends in two numbers (`test_x[1-2]` without pytest-repeat) cannot be told
    apart from the id alone: callers that know better (the plugin reads pytest-repeat's
    parameter) build `RepetitionRecord` with `base`/`index`/`total` directly.
    """
    if not nodeid.endswith("]"):
        return None
    open_at = nodeid.find("[", nodeid.find("::") + 1 if "::" in nodeid else 0)
    if open_at < 0:
        return None
    match = _REPEAT_TAIL.fullmatch(nodeid[open_at + 1 : -1])
    if match is None:
        return None
    index, total = int(match["index"]), int(match["total"])
    if not 1 <= index <= total:
        return None
    params = match["params"]
    base = nodeid[:open_at] + (f"[{params}]" if params else "")
    return RepeatId(base, index, total)


@dataclass(frozen=True)
class RepetitionRecord:
    """One run of one repetition. `outcome`: passed, failed, error, skipped, xfailed, xpassed.
    `failure_kind` is e.g. "AssertionError: lost update" or "hang"; None for passes."""

    nodeid: str
    outcome: str
    failure_kind: str | None = None
    base: str | None = None
    index: int | None = None
    total: int | None = None

    def place(self) -> RepeatId:
        """Where this run belongs; a nodeid without a repeat id is its own group, run 1."""
        if self.base is not None and self.index is not None:
            return RepeatId(self.base, self.index, self.total or self.index)
        parsed = split_repeat_id(self.nodeid)
        return parsed if parsed is not None else RepeatId(self.nodeid, 1, 1)


@dataclass
class RepetitionStats:
    """All repetitions of one base test."""

    base: str
    runs: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    declared: int | None = None
    first_failure: int | None = None
    failure_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float | None:
        """Passed / runs that were not skipped (0..1); None when every run was skipped."""
        ran = self.passed + self.failed
        return self.passed / ran if ran else None

    @property
    def missing(self) -> int:
        """Declared repetitions that did not report (interrupted session, -x, lost worker)."""
        return max(0, (self.declared or 0) - self.runs)

    def add(self, place: RepeatId, outcome: str, failure_kind: str | None = None) -> None:
        kind = outcome.lower()
        if kind in _PASSED:
            self.passed += 1
        elif kind in _FAILED:
            self.failed += 1
            label = failure_kind or kind
            self.failure_kinds[label] = self.failure_kinds.get(label, 0) + 1
            if self.first_failure is None or place.index < self.first_failure:
                self.first_failure = place.index
        elif kind in _SKIPPED:
            self.skipped += 1
        else:
            allowed = ", ".join(sorted(_PASSED | _FAILED | _SKIPPED))
            raise ValueError(f"outcome {outcome!r} of {place.base}: expected one of {allowed}")
        self.runs += 1
        self.declared = max(self.declared or 0, place.total)

    def merge(self, other: RepetitionStats) -> RepetitionStats:
        """Combine partial stats of the same base test (e.g. from several xdist workers)."""
        if other.base != self.base:
            raise ValueError(f"cannot merge {other.base!r} into {self.base!r}")
        kinds = dict(self.failure_kinds)
        for k, v in other.failure_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
        firsts = [f for f in (self.first_failure, other.first_failure) if f is not None]
        declared = [d for d in (self.declared, other.declared) if d is not None]
        return RepetitionStats(
            base=self.base,
            runs=self.runs + other.runs,
            passed=self.passed + other.passed,
            failed=self.failed + other.failed,
            skipped=self.skipped + other.skipped,
            declared=max(declared) if declared else None,
            first_failure=min(firsts) if firsts else None,
            failure_kinds=kinds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "runs": self.runs,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "declared": self.declared,
            "pass_rate": self.pass_rate,
            "first_failure": self.first_failure,
            "failure_kinds": dict(self.failure_kinds),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepetitionStats:
        declared = data.get("declared")
        first = data.get("first_failure")
        return cls(
            base=str(data["base"]),
            runs=int(data["runs"]),
            passed=int(data["passed"]),
            failed=int(data["failed"]),
            skipped=int(data.get("skipped", 0)),
            declared=int(declared) if declared is not None else None,
            first_failure=int(first) if first is not None else None,
            failure_kinds={str(k): int(v) for k, v in data.get("failure_kinds", {}).items()},
        )


RecordLike: TypeAlias = "RepetitionRecord | tuple[str, str] | tuple[str, str, str | None]"


def _record(item: RecordLike) -> RepetitionRecord:
    if isinstance(item, RepetitionRecord):
        return item
    if len(item) == 2:
        return RepetitionRecord(item[0], item[1])
    return RepetitionRecord(item[0], item[1], item[2])


def aggregate(records: Iterable[RecordLike], *, min_runs: int = 1) -> list[RepetitionStats]:
    """Group runs by base test, in order of first appearance. Accepts `RepetitionRecord`s or
    `(nodeid, outcome[, failure_kind])` tuples. Groups with fewer than `min_runs` runs are
    left out (`min_runs=2` keeps only tests that were actually repeated)."""
    groups: dict[str, RepetitionStats] = {}
    for item in records:
        rec = _record(item)
        place = rec.place()
        stats = groups.get(place.base)
        if stats is None:
            stats = groups[place.base] = RepetitionStats(place.base)
        stats.add(place, rec.outcome, rec.failure_kind)
    return [s for s in groups.values() if s.runs >= min_runs]


def merge_all(parts: Iterable[RepetitionStats]) -> list[RepetitionStats]:
    """Merge partial stats from several sources by base, in order of first appearance."""
    merged: dict[str, RepetitionStats] = {}
    for part in parts:
        have = merged.get(part.base)
        merged[part.base] = part if have is None else have.merge(part)
    return list(merged.values())


def records_from_rounds(nodeid: str, concurrent: Mapping[str, Any]) -> list[RepetitionRecord]:
    """One record per round of a `@concurrent` run (`ConcurrentResult.to_dict()`), so rounds
    are reported like repetitions. Under pytest-repeat, repetition i of a test with R rounds
    contributes indices (i-1)*R+1 .. i*R of the base test. Rounds after a stop (failure or
    hang) did not run and produce no record."""
    rounds = int(concurrent["rounds"])
    rep = split_repeat_id(nodeid)
    base, offset, total = (
        (rep.base, (rep.index - 1) * rounds, rep.total * rounds) if rep else (nodeid, 0, rounds)
    )
    kinds_by_round: dict[int, str] = {}
    for failure in concurrent.get("failures", []):
        r = int(failure["round"])
        kinds_by_round.setdefault(r, str(failure.get("kind") or failure.get("exc_type")))
    for hung in concurrent.get("hung", []):
        kinds_by_round[int(hung["round"])] = "hang"
    last = max([int(concurrent.get("rounds_completed", 0)), *kinds_by_round], default=0)
    out = []
    for r in range(1, last + 1):
        kind = kinds_by_round.get(r)
        out.append(
            RepetitionRecord(
                nodeid=nodeid,
                outcome="failed" if kind else "passed",
                failure_kind=kind,
                base=base,
                index=offset + r,
                total=total,
            )
        )
    return out


def format_table(stats: Sequence[RepetitionStats], *, max_kinds: int = 3) -> list[str]:
    """Plain-text table: runs, pass rate, first failing repetition and failure kinds."""
    if not stats:
        return []
    header = ("repeated", "runs", "pass", "first failure", "failure kinds")
    rows = [header]
    for s in stats:
        rate = s.pass_rate
        runs = f"{s.runs}" + (f"/{s.declared}" if s.missing else "")
        kinds = sorted(s.failure_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{k} x{v}" for k, v in kinds[:max_kinds])
        if len(kinds) > max_kinds:
            text += f", +{len(kinds) - max_kinds} more"
        rows.append(
            (
                s.base,
                runs,
                "-" if rate is None else f"{rate * 100:.1f}%",
                "-" if s.first_failure is None else f"#{s.first_failure}",
                text or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]),
                 r[3].rjust(widths[3]), r[4]]
        lines.append("  ".join(cells).rstrip())
    return lines
