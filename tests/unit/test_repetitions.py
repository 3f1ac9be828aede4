"""Repetition reports: parsing pytest-repeat ids, grouping, merging across workers, tables."""

from __future__ import annotations

import json

import pytest

from pytest_stressguard.core.race import ConcurrentResult, WorkerFailure
from pytest_stressguard.core.repetitions import (
    RepeatId,
    RepetitionRecord,
    RepetitionStats,
    aggregate,
    format_table,
    merge_all,
    records_from_rounds,
    split_repeat_id,
)


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("t.py::test_x[3-100]", RepeatId("t.py::test_x", 3, 100)),
        ("t.py::test_x[100-100]", RepeatId("t.py::test_x", 100, 100)),
        ("t.py::TestC::test_m[1-3]", RepeatId("t.py::TestC::test_m", 1, 3)),
        # parametrized: pytest-repeat's id comes last, after the parameter ids
        ("t.py::test_p[a-1-2-3]", RepeatId("t.py::test_p[a-1]", 2, 3)),
        ("t.py::test_p[2-1-3]", RepeatId("t.py::test_p[2]", 1, 3)),
        ("t.py::test_p[x-y-10-20]", RepeatId("t.py::test_p[x-y]", 10, 20)),
        ("dir[1]/t.py::test_x[2-5]", RepeatId("dir[1]/t.py::test_x", 2, 5)),
    ],
)
def test_split_repeat_ids_as_pytest_repeat_writes_them(nodeid: str, expected: RepeatId) -> None:
    assert split_repeat_id(nodeid) == expected


@pytest.mark.parametrize(
    "nodeid",
    [
        "t.py::test_x",
        "t.py::test_p[a]",
        "t.py::test_p[a-1]",
        "t.py::test_p[0-3]",  # index from 1
        "t.py::test_p[4-3]",  # index beyond the total: not a repetition
        "t.py::test_p[1-x]",
    ],
)
def test_ids_without_a_repeat_tail_are_not_repetitions(nodeid: str) -> None:
    assert split_repeat_id(nodeid) is None


Rec = tuple[str, str] | tuple[str, str, str | None]


def test_aggregate_counts_pass_rate_first_failure_and_kinds() -> None:
    records: list[Rec] = [
        ("t.py::test_x[1-5]", "passed"),
        ("t.py::test_x[2-5]", "passed"),
        ("t.py::test_x[3-5]", "failed", "AssertionError: lost update"),
        ("t.py::test_x[4-5]", "failed", "AssertionError: lost update"),
        ("t.py::test_x[5-5]", "failed", "hang"),
        ("t.py::test_y[1-2]", "passed"),
        ("t.py::test_y[2-2]", "skipped"),
    ]
    x, y = aggregate(records)
    assert (x.base, x.runs, x.passed, x.failed, x.declared) == ("t.py::test_x", 5, 2, 3, 5)
    assert x.pass_rate == pytest.approx(0.4)
    assert x.first_failure == 3
    assert x.failure_kinds == {"AssertionError: lost update": 2, "hang": 1}
    assert (y.runs, y.passed, y.skipped, y.first_failure) == (2, 1, 1, None)
    assert y.pass_rate == 1.0  # skipped runs do not count against the pass rate


def test_first_failure_is_the_lowest_index_not_the_first_reported() -> None:
    # under xdist repetitions finish out of order
    records = [("t.py::test_x[9-10]", "failed", "E"), ("t.py::test_x[4-10]", "error", None)]
    (x,) = aggregate(records)
    assert x.first_failure == 4
    assert x.failure_kinds == {"E": 1, "error": 1}
    assert x.missing == 8


def test_parametrized_repetitions_group_per_parameter() -> None:
    records: list[Rec] = [
        ("t.py::test_p[a-1-1-2]", "passed"),
        ("t.py::test_p[a-1-2-2]", "failed", "E"),
        ("t.py::test_p[b-1-2]", "passed"),
        ("t.py::test_p[b-2-2]", "passed"),
    ]
    a, b = aggregate(records)
    assert (a.base, a.runs, a.first_failure) == ("t.py::test_p[a-1]", 2, 2)
    assert (b.base, b.runs, b.pass_rate) == ("t.py::test_p[b]", 2, 1.0)


def test_min_runs_keeps_only_repeated_tests() -> None:
    records = [("t.py::test_once", "passed"), ("t.py::test_x[1-2]", "passed"),
               ("t.py::test_x[2-2]", "passed")]
    assert [s.base for s in aggregate(records)] == ["t.py::test_once", "t.py::test_x"]
    assert [s.base for s in aggregate(records, min_runs=2)] == ["t.py::test_x"]


def test_explicit_placement_overrides_the_id_heuristic() -> None:
    # `test_x[1-2]` may be a parameter id; the plugin knows and says so
    rec = RepetitionRecord("t.py::test_x[1-2]", "passed", base="t.py::test_x[1-2]", index=1,
                           total=1)
    (s,) = aggregate([rec])
    assert s.base == "t.py::test_x[1-2]"


def test_unknown_outcome_is_rejected_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'weird'.*passed"):
        aggregate([("t.py::test_x[1-2]", "weird")])


def test_merge_of_worker_partials_equals_aggregate_of_all() -> None:
    records = [(f"t.py::test_x[{i}-10]", "failed" if i in (3, 7) else "passed",
                "E" if i in (3, 7) else None) for i in range(1, 11)]
    whole = aggregate(records)[0]
    gw0 = aggregate(records[::2])[0]  # 1,3,5,7,9
    gw1 = aggregate(records[1::2])[0]  # 2,4,6,8,10
    # partials travel as plain JSON, like xdist workeroutput
    gw0 = RepetitionStats.from_dict(json.loads(json.dumps(gw0.to_dict())))
    (merged,) = merge_all([gw1, gw0])
    assert merged.to_dict() == whole.to_dict()
    assert merged.first_failure == 3


def test_merge_refuses_another_test() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        RepetitionStats("a").merge(RepetitionStats("b"))


def _concurrent(rounds: int, failures: list[WorkerFailure], hung: list[tuple[int, int]],
                completed: int) -> dict[str, object]:
    return ConcurrentResult(workers=4, rounds=rounds, duration_s=0.1, failures=failures,
                            hung=hung, rounds_completed=completed).to_dict()


def test_rounds_become_repetitions() -> None:
    fail = WorkerFailure(2, 3, "AssertionError", "lost update", "tb")
    data = _concurrent(5, [fail], [], completed=3)  # stopped after the failing round
    recs = records_from_rounds("t.py::test_c", data)
    assert [(r.index, r.outcome) for r in recs] == [(1, "passed"), (2, "passed"), (3, "failed")]
    (s,) = aggregate(recs)
    assert (s.runs, s.declared, s.first_failure) == (3, 5, 3)
    assert s.failure_kinds == {"AssertionError: lost update": 1}


def test_rounds_under_pytest_repeat_are_numbered_across_repetitions() -> None:
    hang = _concurrent(4, [], [(1, 2)], completed=1)
    ok = _concurrent(4, [], [], completed=4)
    recs = records_from_rounds("t.py::test_c[1-3]", ok) + records_from_rounds(
        "t.py::test_c[2-3]", hang)
    (s,) = aggregate(recs)
    assert s.base == "t.py::test_c"
    assert (s.runs, s.declared, s.first_failure) == (6, 12, 6)
    assert s.failure_kinds == {"hang": 1}


def test_format_table_shows_rate_first_failure_and_kinds() -> None:
    stats = aggregate([("t.py::test_x[1-4]", "failed", "AssertionError: lost update"),
                       ("t.py::test_x[2-4]", "passed"),
                       ("t.py::test_lock[1-2]", "passed"), ("t.py::test_lock[2-2]", "passed")])
    lines = format_table(stats)
    assert lines[0].split() == ["repeated", "runs", "pass", "first", "failure", "failure",
                                "kinds"]
    assert lines[1].split()[:4] == ["t.py::test_x", "2/4", "50.0%", "#1"]
    assert lines[1].endswith("AssertionError: lost update x1")
    assert lines[2].split() == ["t.py::test_lock", "2", "100.0%", "-", "-"]
    assert format_table([]) == []


def test_format_table_limits_the_kinds_listed() -> None:
    stats = aggregate([(f"t.py::test_x[{i}-5]", "failed", f"E{i}") for i in range(1, 6)])
    assert format_table(stats, max_kinds=2)[1].endswith("E1 x1, E2 x1, +3 more")
