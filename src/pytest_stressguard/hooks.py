"""StressGuardPlugin: the one object that carries every hook after configure."""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_stressguard.kinds import MARKER_KINDS, bind_item_mark
from pytest_stressguard.markers import MarkerError
from pytest_stressguard.settings import Settings
from pytest_stressguard.store import ProcessStats, SessionStore, TrendPoint

# What only a marked test, a verdict or the session's end needs is imported where it is used:
# every module imported at configure costs its compile time on each start without bytecode.
if TYPE_CHECKING:
    from pytest_stressguard.core.records import Record
    from pytest_stressguard.report.progress import ProgressPrinter
    from pytest_stressguard.session import SessionOutcome
    from pytest_stressguard.verdict import Verdict

SETTINGS_KEY = pytest.StashKey[Settings]()
STORE_KEY = pytest.StashKey[SessionStore]()
OUTCOME_KEY: pytest.StashKey[SessionOutcome] = pytest.StashKey()
MARK_KEY = pytest.StashKey[tuple[str, Any]]()
RECORDS_KEY: pytest.StashKey[list[Record]] = pytest.StashKey()
VERDICTS_KEY: pytest.StashKey[list[Verdict]] = pytest.StashKey()
RSS_KEY = pytest.StashKey[tuple[int, int]]()

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Statm:
    """RSS from /proc/self/statm through a descriptor kept open: one pread per reading (about
    1 us) instead of open/read/close. Reopened after a fork, since /proc/self resolves at open."""

    def __init__(self) -> None:
        self.fd = -1
        self.pid = -1

    def rss(self) -> int:
        pid = os.getpid()
        try:
            if self.pid != pid:
                self.fd = os.open("/proc/self/statm", os.O_RDONLY)
                self.pid = pid
            return int(os.pread(self.fd, 128, 0).split()[1]) * _PAGE
        except OSError:  # no /proc (macOS): psutil
            import psutil

            return int(psutil.Process().memory_info().rss)


    def close(self) -> None:
        if self.pid == os.getpid():
            os.close(self.fd)
        self.fd = self.pid = -1


_STATM = _Statm()
current_rss = _STATM.rss


def peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def keep(item: pytest.Item, record: Record, verdict: Verdict | None) -> None:
    """Hold a test's record (and verdict) until its report is made (see makereport)."""
    item.stash.setdefault(RECORDS_KEY, []).append(record)
    if verdict is not None:
        item.stash.setdefault(VERDICTS_KEY, []).append(verdict)


def failure_kind(report: pytest.TestReport) -> str:
    """'AssertionError: lost updates: N of N': the exception and message, numbers folded so that
    repetitions failing the same way count as one kind."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else (report.longreprtext or report.outcome)
    first = text.strip().splitlines()[0] if text.strip() else report.outcome
    if report.when != "call":
        first = f"{report.when}: {first}"
    return re.sub(r"\d+(\.\d+)?", "N", first)[:100]


class StressGuardPlugin:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.store = SessionStore(repeat_count=int(getattr(config.option, "count", 1) or 1))
        self.worker = worker_id(config)
        self._progress: ProgressPrinter | None = None
        self.bound: dict[str, tuple[str, Any] | None] = {}  # function definition -> its mark
        self.written: list[str] = []  # report files written at the end, one line each
        self.write_failures: list[str] = []
        config.stash[SETTINGS_KEY] = settings
        config.stash[STORE_KEY] = self.store

    @property
    def progress(self) -> ProgressPrinter:
        """The live progress printer, made for the first marked test."""
        if self._progress is None:
            from pytest_stressguard.report.progress import ProgressPrinter

            self._progress = ProgressPrinter(self.config, self.settings.progress)
        return self._progress

    # -- collection: validate every mark before anything runs ---------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        nodeid = metafunc.definition.nodeid
        try:
            self.bound[nodeid] = bind_item_mark(nodeid, metafunc.definition,
                                                self.settings.time_scale)
        except MarkerError as exc:
            pytest.fail(str(exc), pytrace=False)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        errors = []
        for item in items:
            parent = item.parent
            name = getattr(item, "originalname", item.name)
            bound = self.bound.get(f"{parent.nodeid}::{name}" if parent else name)
            # Marks given per parameter (pytest.param(marks=...)) are only on the item.
            if any(m.name in MARKER_KINDS for m in item.own_markers):
                try:
                    bound = bind_item_mark(item.nodeid, item, self.settings.time_scale)
                except MarkerError as exc:
                    errors.append(str(exc))
                    continue
            if bound is None:
                continue
            item.stash[MARK_KEY] = bound
            watch = getattr(bound[1], "watch", None)
            fixturenames = getattr(item, "fixturenames", None)
            if watch and fixturenames is not None and watch not in fixturenames:
                fixturenames.append(watch)  # set up like any requested fixture
        self.bound.clear()
        if errors:
            raise pytest.UsageError("\n".join(errors))

    # -- running ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        bound = pyfuncitem.stash.get(MARK_KEY, None)
        if bound is None:
            return None  # unmarked tests pass through untouched
        from pytest_stressguard.kinds.base import Interrupted, RunContext

        kind, spec = bound
        context = RunContext(self.settings, self.progress.sink(pyfuncitem.nodeid, kind))
        try:
            record, verdict = MARKER_KINDS[kind].run(pyfuncitem, spec, context)
        except Interrupted as exc:
            # pytest makes no report for an interrupted test: keep what was measured directly.
            self.store.add_record({**exc.record, "interrupted": True, "outcome": "interrupted",
                                   "nodeid": pyfuncitem.nodeid, "worker": self.worker,
                                   "thresholds": exc.verdict.to_list()})
            raise KeyboardInterrupt from None
        finally:
            self.progress.done()
        keep(pyfuncitem, record, verdict)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        stash = item.stash
        # The trend tracker's reading rides here: one wrapper per phase instead of two.
        if call.when == "call" and RSS_KEY in stash:
            rss, delta = stash[RSS_KEY]
            report.stressguard_trend = [rss, delta, self.worker]  # type: ignore[attr-defined]
        if RECORDS_KEY not in stash and VERDICTS_KEY not in stash:
            return report  # the common case: a test that recorded nothing
        records = stash.get(RECORDS_KEY, [])
        verdicts = stash.get(VERDICTS_KEY, [])
        # Records are reported with the phase that produced them (call, or the teardown of a
        # fixture such as db_pool_probe), then forgotten so none is sent twice.
        if records:
            report.stressguard = [  # type: ignore[attr-defined]
                {**r, "nodeid": item.nodeid, "worker": self.worker} for r in records
            ]
            item.stash[RECORDS_KEY] = []
        failed = [v for v in verdicts if not v.ok]
        if verdicts:
            from pytest_stressguard.verdict import SECTION

            item.stash[VERDICTS_KEY] = []
            report.sections.append((f"{SECTION} ({call.when})",
                                    "\n\n".join(v.section() for v in verdicts)))
        if failed and report.outcome != "failed":
            report.outcome = "failed"
            report.longrepr = "\n".join(v.long_repr(item.nodeid) for v in failed)
            report.stressguard_failed = True  # type: ignore[attr-defined]
        return report

    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
    ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
        # A gate failing at setup/teardown (e.g. a leaked connection) stays an error, "E".
        if getattr(report, "stressguard_failed", False) and report.failed and report.when == "call":
            from pytest_stressguard.verdict import STATUS_LETTER, STATUS_WORD

            return "failed", STATUS_LETTER, (STATUS_WORD, {"red": True})
        return None

    # -- gathering (here or from xdist workers: the same reports arrive) ----------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        store = self.store
        records = getattr(report, "stressguard", None)
        if records:
            self.gather(report, records)
        if report.when == "call":
            store.outcomes[report.nodeid] = report.outcome
            # Durations always (session gates); memory when the trend tracker measured it.
            rss_after, delta, worker = getattr(report, "stressguard_trend", None) or (0, 0, "")
            store.trends.append(TrendPoint(report.nodeid, report.outcome, report.duration,
                                           rss_after, delta, worker, time.time()))
        if report.failed:
            self.failed(report)

    def gather(self, report: pytest.TestReport, records: list[Record]) -> None:
        for record in records:
            self.store.add_record({**record, "outcome": report.outcome, "when": report.when})

    def failed(self, report: pytest.TestReport) -> None:
        store, nodeid = self.store, report.nodeid
        store.outcomes[nodeid] = "failed"
        store.failure_kinds.setdefault(nodeid, failure_kind(report))
        if report.when == "teardown":  # a failed teardown gate fails the test's entries too
            for record in store.records_of(nodeid):
                record["outcome"] = "failed"

    # -- the session result: decided here, printed in the terminal summary --------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            if not is_worker(self.config):
                self.store.processes.setdefault(self.worker, self.own_process_stats())
                self.decide(session)

    def decide(self, session: pytest.Session) -> None:
        if not self.settings.has_session_result:
            return  # no gates, comparison or files: no outcome, which reads as an empty one
        from pytest_stressguard.session import decide_session

        outcome = decide_session(self.store, self.settings, self.config)
        self.config.stash[OUTCOME_KEY] = outcome
        if outcome.failed and not session.shouldfail:
            session.testsfailed += 1

    def pytest_unconfigure(self) -> None:
        _STATM.close()

    def own_process_stats(self) -> ProcessStats:
        series = [(p.finished_at - self.store.started, p.rss_after) for p in self.store.trends
                  if p.worker == self.worker]
        return ProcessStats(self.worker, peak_rss(), series[-2000:])

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if is_worker(self.config):
            workeroutput = self.config.workeroutput  # type: ignore[attr-defined]
            workeroutput["stressguard"] = {"process": self.own_process_stats().to_dict()}
            return
        if not self.settings.writes_files:
            return  # the common case: no report, CSV or baseline asked for
        from pytest_stressguard.report import outputs

        self.written, self.write_failures = outputs.write_all(
            self.config, self.store, self.settings, self.config.stash.get(OUTCOME_KEY, None),
            int(exitstatus))
        if self.write_failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # CI reads the report: say so

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int,
                                config: pytest.Config) -> None:
        outcome = config.stash.get(OUTCOME_KEY, None)
        store = self.store
        if (store.records or store.repeat_count > 1 or store.lost_workers or
                (outcome is not None and (outcome.gates or outcome.failed or outcome.comparison))):
            from pytest_stressguard.report.terminal import write_summary

            write_summary(terminalreporter, store, outcome, self.settings)
        # after the summary, which is printed whether or not a file could be written
        for line in self.written:
            terminalreporter.write_line(f"stressguard: wrote {line}")
        for line in self.write_failures:
            terminalreporter.write_line(f"stressguard: FAILED: {line}", red=True)


class TrendTracker:
    """Per-test memory for the trends (on by default, `--stressguard-trends off`): RSS read right
    around the call, so what pytest keeps per test (reports, captured output), made later, does
    not count as the test's own growth. StressGuardPlugin's makereport puts it on the report."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        before = current_rss()
        try:
            return (yield)
        finally:
            after = current_rss()
            item.stash[RSS_KEY] = (after, after - before)


class XdistHooks:
    """Registered only when xdist is active: collect per-process figures from workers."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.run_id: str | None = None

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The embedded PostgreSQL goes when its last worker leaves; a worker that was killed
        cannot leave, so the controller sweeps the run's server once every worker is down."""
        if self.run_id is not None and not is_worker(session.config):
            from pytest_stressguard.core import pgembed

            pgembed.cleanup_run(self.run_id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        workerinput = getattr(node, "workerinput", {})
        workerid = str(workerinput.get("workerid", "?"))
        self.run_id = workerinput.get("testrunuid", self.run_id)
        data = getattr(node, "workeroutput", {}).get("stressguard")
        if data is None:
            self.store.lost_workers.append(workerid)
            return
        self.store.processes[workerid] = ProcessStats.from_dict(data["process"])
