"""@concurrent through pytest: the counter race is exposed run after run; its locked twin never."""

from __future__ import annotations

import json

import pytest

RACY = '''
import threading

def bump(value):
    return value + 1

class Counter:
    def __init__(self):
        self.n = 0
    def increment(self):
        v = self.n
        v = bump(v)
        self.n = v

class LockedCounter(Counter):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
    def increment(self):
        with self.lock:
            super().increment()

class Lazy:
    def __init__(self):
        self.made = 0
        self.instance = None
    def get(self):
        if self.instance is None:
            self.made += 1
            self.instance = object()
        return self.instance

class Registry:
    def __init__(self):
        self.items = {}
        self.duplicates = 0
    def register(self, key):
        if key not in self.items:
            value = [key]
            if key in self.items:
                self.duplicates += 1
            self.items[key] = value
        else:
            pass
        return self.items[key]
'''

TESTS = '''
import pytest
from racy import Counter, LockedCounter, Lazy, Registry

@pytest.fixture
def counter():
    c = Counter()
    yield c
    assert c.n == 8, f"lost updates: {c.n} of 8"

@pytest.fixture
def locked():
    c = LockedCounter()
    yield c
    assert c.n == 8, f"lost updates: {c.n} of 8"

@pytest.mark.concurrent(workers=8)
def test_racy(counter):
    counter.increment()

@pytest.mark.concurrent(workers=8)
def test_locked(locked):
    locked.increment()
'''


def run_count(pytester: pytest.Pytester, *extra: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(racy=RACY, test_counter=TESTS)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--count=100", "-p", "no:randomly", f"--stressguard-json={report}",
                                *extra)
    return result, json.loads(report.read_text())


def test_counter_race_exposed_in_most_runs_and_locked_twin_never(pytester: pytest.Pytester) -> None:
    result, doc = run_count(pytester)
    outcomes = result.parseoutcomes()
    # 200 items: 100 locked runs all pass; the racy invariant fails at teardown (errors).
    assert outcomes.get("errors", 0) >= 95, outcomes
    # every call passes (the locked twin, and the racy body: its invariant is checked at
    # teardown, where the errors are)
    assert outcomes.get("passed", 0) == 200 and outcomes.get("failed", 0) == 0, outcomes
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    trends = {r["test"].split("::")[-1]: r for r in doc["session"]["trends"]}
    assert trends["test_locked"]["passed"] == 100
    result.stdout.fnmatch_lines(["*repeated*runs*pass*", "*test_locked*100*100%*"])
    result.stdout.fnmatch_lines(["*lost updates*of 8*"])


def test_lazy_singleton_and_check_then_act_are_exposed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(racy=RACY, test_more='''
import pytest
from racy import Lazy, Registry

@pytest.fixture
def lazy():
    l = Lazy()
    yield l
    assert l.made == 1, f"initialised {l.made} times"

@pytest.fixture
def registry():
    r = Registry()
    yield r
    assert r.duplicates == 0, f"{r.duplicates} duplicate registrations"

@pytest.mark.concurrent(workers=8)
def test_singleton(lazy):
    lazy.get()

@pytest.mark.concurrent(workers=8)
def test_registry(registry):
    registry.register("k")
''')
    result = pytester.runpytest("--count=20", "-p", "no:randomly")
    errors = result.parseoutcomes().get("errors", 0)
    assert errors >= 2 * 20 * 0.6, result.stdout.str()[-3000:]


def test_worker_failure_names_worker_and_round(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
import pytest
from pytest_stressguard.core.race import current_worker

@pytest.mark.concurrent(workers=4, rounds=3)
def test_third_worker_fails():
    worker, rnd = current_worker()
    assert not (worker == 2 and rnd == 1), "worker 2 broke in round 1"
''')
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*concurrent gates failed: 1 of 4 workers failed in round 1 of 3*",
        "*worker 2, round 1: AssertionError*",
        "*worker 2 broke in round 1*",
    ])


def test_hang_is_reported_within_the_bound(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
import threading, pytest
from pytest_stressguard.core.race import current_worker

never = threading.Event()

@pytest.mark.concurrent(workers=3, timeout="1s")
def test_one_worker_hangs():
    if current_worker()[0] == 1:  # workers and rounds count from 1
        never.wait(5)
''')
    result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*HANG: 1 of 3 workers still running*",
        "*worker 1, round 1: still running*",
    ])
