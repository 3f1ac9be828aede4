"""How often each way of hunting races exposes the same racy code, and what a run costs.

    python benchmarks/bench_races.py [--count 100] [--json PATH]

The racy code is `tests/unit/racy_samples.py`: a read-call-write counter, a lazily initialised
singleton, a dict check-then-act, and the locked counter (which must never fail: a method that
reports it is raising false alarms). Every race runs with 8 threads and its invariant is checked
after the threads are done. Methods, all in one run:

  core, amplify       `run_concurrent` in this process, forced switches in the project's code
  core, no amplify    the same runner with `amplify=False`: barrier + spin gate only
  @concurrent         the pytest marker, `--count=N`; the invariant is in a fixture's teardown
  run-parallel        pytest-run-parallel `--parallel-threads=8 --count=N`, same test file
  repeat              plain pytest-repeat `--count=N`; the test starts 8 threads behind a barrier

ms/run is the mean duration of one run (for pytest: setup + call + teardown of one repetition,
from the junit report); wall is the whole command, pytest start-up included.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_stressguard.core.race import ConcurrentSpec, run_concurrent
from pytest_stressguard.core.repetitions import aggregate, split_repeat_id

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "tests" / "unit" / "racy_samples.py"
sys.path.insert(0, str(SAMPLES.parent))
rs = importlib.import_module("racy_samples")

WORKERS = 8
RACES = ("counter", "locked_counter", "singleton", "dict")

# One fixture per race: it yields the shared object and checks the invariant at teardown.
FIXTURES = '''
import threading
import pytest
import racy_samples as rs

@pytest.fixture
def counter():
    c = rs.RacyCounter()
    yield c
    assert c.n == 8, f"lost update: n={c.n}, expected 8"

@pytest.fixture
def locked_counter():
    c = rs.LockedCounter()
    yield c
    assert c.n == 8, f"lost update: n={c.n}, expected 8"

@pytest.fixture
def singleton():
    s = rs.LazySingleton()
    yield s
    assert len(s.created) == 1, f"initialised {len(s.created)} times"

@pytest.fixture
def store():
    s = rs.SessionStore()
    yield s
    assert len(s.created) == 1, f"created {len(s.created)} sessions for one key"
'''

BODIES = {
    "counter": ("counter", "counter.increment()"),
    "locked_counter": ("locked_counter", "locked_counter.increment()"),
    "singleton": ("singleton", "singleton.get()"),
    "dict": ("store", "store.get_or_create('k')"),
}

MARKER_TESTS = FIXTURES + "".join(
    f"\n@pytest.mark.concurrent(workers=8)\ndef test_{race}({fx}):\n    {body}\n"
    for race, (fx, body) in BODIES.items()
)
PARALLEL_TESTS = FIXTURES + "".join(
    f"\ndef test_{race}({fx}):\n    {body}\n" for race, (fx, body) in BODIES.items()
)
REPEAT_TESTS = FIXTURES + '''
def in_threads(fn, n=8):
    barrier = threading.Barrier(n)
    def work():
        barrier.wait()
        fn()
    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
''' + "".join(
    f"\ndef test_{race}({fx}):\n    in_threads(lambda: {body})\n"
    for race, (fx, body) in BODIES.items()
)


@dataclass
class Row:
    race: str
    method: str
    runs: int
    exposed: int
    ms_per_run: float
    wall_s: float
    note: str = ""


def _core(count: int, amplify: bool) -> list[Row]:
    makers: dict[str, tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], bool]]] = {
        "counter": (rs.RacyCounter, lambda c: c.increment(), lambda c: c.n != WORKERS),
        "locked_counter": (rs.LockedCounter, lambda c: c.increment(), lambda c: c.n != WORKERS),
        "singleton": (rs.LazySingleton, lambda s: s.get(), lambda s: len(s.created) != 1),
        "dict": (rs.SessionStore, lambda s: s.get_or_create("k"), lambda s: len(s.created) != 1),
    }
    spec = ConcurrentSpec(workers=WORKERS, amplify=amplify, roots=(str(SAMPLES.parent),))
    rows = []
    for race in RACES:
        make, body, broken = makers[race]
        exposed, spent, mode = 0, 0.0, ""
        start = time.perf_counter()
        for _ in range(count):
            obj = make()
            t0 = time.perf_counter()
            result = run_concurrent(functools.partial(body, obj), spec)
            spent += time.perf_counter() - t0
            exposed += broken(obj) or not result.ok
            mode = result.amplify
        wall = time.perf_counter() - start
        method = "core, amplify" if amplify else "core, no amplify"
        rows.append(Row(race, method, count, exposed, spent / count * 1000, wall, mode))
    return rows


def _has_marker() -> bool:
    out = subprocess.run([sys.executable, "-m", "pytest", "--markers"], capture_output=True,
                         text=True, check=False).stdout
    return "@pytest.mark.concurrent(" in out


def _pytest(project: Path, name: str, source: str, method: str, count: int,
            extra: list[str]) -> list[Row]:
    test_file = project / f"test_{name}.py"
    test_file.write_text(source)
    junit = project / f"{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           f"--count={count}", f"--junitxml={junit}", *extra, str(test_file)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1) or not junit.exists():
        tail = (done.stdout + done.stderr)[-3000:]
        return [Row(r, method, 0, 0, 0.0, wall, f"pytest exit {done.returncode}: {tail!r}")
                for r in RACES]
    failed: dict[str, bool] = {}
    spent: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        nodeid = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") is not None or case.find("error") is not None
        failed[nodeid] = failed.get(nodeid, False) or bad  # a teardown error may add a case
        spent[nodeid] = spent.get(nodeid, 0.0) + float(case.get("time") or 0.0)
    stats = {s.base: s for s in aggregate((n, "failed" if f else "passed")
                                          for n, f in failed.items())}
    rows = []
    for race in RACES:
        base = f"test_{name}::test_{race}"
        s = stats.get(base)
        times = [t for n, t in spent.items() if (p := split_repeat_id(n)) and p.base == base]
        if s is None:
            rows.append(Row(race, method, 0, 0, 0.0, wall, "no result"))
            continue
        ms = sum(times) / len(times) * 1000 if times else 0.0
        rows.append(Row(race, method, s.runs, s.failed, ms, wall))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="runs per race and method")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    count: int = args.count

    rows = _core(count, amplify=True) + _core(count, amplify=False)
    with tempfile.TemporaryDirectory(prefix="sg-bench-races-") as tmp:
        project = Path(tmp)
        shutil.copy(SAMPLES, project / "racy_samples.py")
        (project / "pytest.ini").write_text(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        env_note = ""
        if _has_marker():
            rows += _pytest(project, "marker", MARKER_TESTS, "@concurrent --count", count, [])
        else:
            env_note = "@concurrent: marker not registered in this environment, skipped"
        rows += _pytest(project, "parallel", PARALLEL_TESTS, "run-parallel 8 thr --count",
                        count, ["-p", "no:stressguard", "--parallel-threads=8"])
        rows += _pytest(project, "repeat", REPEAT_TESTS, "repeat --count, 8 thr", count,
                        ["-p", "no:stressguard", "-p", "no:run_parallel"])

    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs; "
          f"{WORKERS} threads per run, {count} runs per race and method")
    print(f"{'race':15s} {'method':28s} {'exposed':>10s} {'rate':>6s} {'ms/run':>8s} "
          f"{'wall':>7s}")
    for race in RACES:
        for r in (r for r in rows if r.race == race):
            rate = f"{r.exposed / r.runs * 100:.0f}%" if r.runs else "-"
            print(f"{r.race:15s} {r.method:28s} {f'{r.exposed}/{r.runs}':>10s} {rate:>6s} "
                  f"{r.ms_per_run:8.2f} {r.wall_s:6.1f}s" + (f"  {r.note}" if r.note and
                                                          r.runs == 0 else ""))
    print("locked_counter is the control: any exposure there is a false alarm.")
    if env_note:
        print(env_note)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
