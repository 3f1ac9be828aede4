"""What a kind is: one object behind one protocol.

A *kind* is a sort of test entry in the report (load, stress, soak, concurrent, and the pool
figures that db_pool_probe adds). Every kind prints its own summary section and CSV rows and
names the metrics its baselines keep. A *marker kind* is also a marker: a typed marker function
(its signature is the contract and the ``--markers`` help) and a ``run`` that turns a test into a
record and a verdict.

Kind modules are imported at configure (the markers' help), so they import nothing heavy at
module level: the engine, the drivers, the threshold parser, the record types and the report's
tables load inside the methods that use them (``run``, ``summary``, ``csv_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pytest

    from pytest_stressguard.core.records import Record
    from pytest_stressguard.core.result import LoadResult
    from pytest_stressguard.core.thresholds import Threshold
    from pytest_stressguard.settings import Settings
    from pytest_stressguard.verdict import Verdict

ProgressSink = Callable[[Any], None]
CsvRows = Mapping[str, list[dict[str, object]]]

#: When no SLA is given anywhere (marker, --stressguard-sla, ini), a load must at least not fail.
DEFAULT_SLA = ("errors==0",)


class Spec(Protocol):
    """A bound marker: frozen, with its durations scaled in one place (the binder)."""

    def scaled(self, factor: float) -> Spec: ...


@dataclass(frozen=True)
class RunContext:
    settings: Settings
    progress: ProgressSink | None


class Kind(Protocol):
    """Anything that makes test entries of its own ``kind``."""

    name: str
    #: The metrics a comparison with a baseline shows for this kind (the baseline keeps them all).
    baseline_metrics: tuple[str, ...]

    def summary(self, records: Sequence[Record]) -> list[str]:
        """Lines of this kind's table in the terminal summary (empty: nothing to show)."""
        ...

    def csv_rows(self, record: Record) -> CsvRows:
        """Rows this entry adds to the CSV files, by file name (``timeline``, ``memory``...)."""
        ...


class MarkerKind(Kind, Protocol):
    """A kind that is also a marker (``@pytest.mark.<name>``)."""

    #: The typed marker function: binding a mark's arguments to it gives the spec.
    marker: Callable[..., Any]

    def run(self, item: pytest.Function, spec: Any, ctx: RunContext) -> tuple[Record, Verdict]:
        """Run the test under this kind; raise :class:`Interrupted` on Ctrl-C."""
        ...


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a marked test; carries what was measured so the report keeps it."""

    def __init__(self, record: Record, verdict: Verdict) -> None:
        super().__init__("interrupted")
        self.record = record
        self.verdict = verdict


def effective_sla(own: Sequence[Threshold], settings: Settings) -> tuple[Threshold, ...]:
    """The marker's SLA, else --stressguard-sla / ini, else :data:`DEFAULT_SLA` (parsed here, at
    run time: parsing loads the metric declarations, which start-up must not pay for)."""
    if own or settings.sla:
        return tuple(own) or settings.sla
    from pytest_stressguard.core.thresholds import parse_threshold

    return tuple(parse_threshold(t) for t in DEFAULT_SLA)


def error_notes(errors_by_kind: Mapping[str, int], top: int = 5) -> tuple[str, ...]:
    ranked = sorted(errors_by_kind.items(), key=lambda kv: -kv[1])[:top]
    return tuple(f"errors: {n} x {kind}" for kind, n in ranked)


def timeline_rows(record: Record) -> CsvRows:
    rows: list[dict[str, object]] = [{"nodeid": record["nodeid"], **row}
                                     for row in record.get("timeline", [])]
    return {"load_timeline": rows} if rows else {}


def evidence_problems(result: LoadResult) -> tuple[str, ...]:
    """What makes a load run no evidence at all: never green when nothing was measured, or
    when users hung or never ran (the load asked for was not the load applied)."""
    problems = []
    if result.iterations == 0 and not result.interrupted:
        problems.append("no iteration completed: nothing was measured")
    if result.abandoned_users:
        problems.append(f"{result.abandoned_users} user(s) were still inside an iteration when "
                        "the run ended and were abandoned: a body that hangs or a server that "
                        "never answers (give the call a timeout)")
    if result.users_not_started:
        problems.append(f"{result.users_not_started} of the requested users never ran: the "
                        "load asked for was not applied")
    return tuple(problems)

