"""Plugin overhead on a suite of trivial, unmarked tests, and its start-up cost, against plain
pytest in the same run, with and without cached bytecode.

    python benchmarks/bench_overhead.py [--tests 2000] [--rounds 7] [--startup-pairs 15]
                                        [--source DIR] [--callgrind]

Overhead: the same generated suite of `--tests` trivial tests, run alternately with
`-p no:stressguard` (the anchor: plain pytest), with `--stressguard-trends off` and with the
defaults (trend tracking on). Each round runs every side once (in a rotating order) and gives one
ratio per side against that round's plain run; the table shows min / median / max of the ratios.
Goals (issue 10): at most 2 % with trends off, at most 3 % by default.

Start-up: `pytest --co -q` on a 10-test file, plugin on minus plugin off, in alternating pairs.
Goal: at most 15 ms.

Both are measured in two modes, side by side:
- bytecode cached: an installed package, or a warm checkout;
- PYTHONDONTWRITEBYTECODE=1 (many CI containers): pytest assertion-rewrites a plugin's modules
  and cannot cache the result, so every module imported costs its compile time on every start.

Times are CPU (user + sys) of the pytest process, which waiting for a busy core does not inflate,
and wall. On a shared virtual machine both still drift by tens of ms from run to run; there,
`--callgrind` adds a count of the instructions of one run per side (valgrind's callgrind: the
same count whatever else runs), and turns the start-up's extra instructions into ms at the pace
of the fastest plain run.

The package under test is copied from `--source` (default: this checkout's src/) into a
directory of its own per mode, put first on PYTHONPATH: the cold copy never gains a __pycache__,
and the checkout's own __pycache__ is neither read nor written. `--source` also measures an older
version (a `git worktree` of it) with the same script.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODES = ("bytecode cached", "PYTHONDONTWRITEBYTECODE=1")
SIDES = {  # name -> extra pytest arguments
    "plain": ["-p", "no:stressguard"],
    "trends off": ["--stressguard-trends=off"],
    "default": [],
}
GOALS = {"trends off": 2.0, "default": 3.0}  # overhead, percent
STARTUP_GOAL_MS = 15.0
BASE_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
COLLECT = ["--co"]  # the start-up runs

Times = list[tuple[float, float]]  # (wall, CPU) seconds per run


def make_suite(directory: Path, tests: int) -> None:
    directory.mkdir()
    per_file = min(tests, 100)
    for f in range(max(1, tests // per_file)):
        body = "\n".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(per_file))
        (directory / f"test_trivial_{f:03d}.py").write_text(body)
    (directory / "pytest.ini").write_text("[pytest]\n")


def make_env(package: Path, tmp: Path, mode: str) -> dict[str, str]:
    home = tmp / ("cached" if mode == MODES[0] else "cold")
    shutil.copytree(package, home / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(home), env.get("PYTHONPATH")]))
    if mode == MODES[1]:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    found = subprocess.run(
        [sys.executable, "-c", "import pytest_stressguard as p; print(p.__file__)"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(home):  # an installed copy ahead of PYTHONPATH
        raise SystemExit(f"{mode}: pytest_stressguard imports from {found}, not from {home}")
    return env


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(directory: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one pytest process."""
    cmd = [sys.executable, "-m", "pytest", *BASE_ARGS, *extra]
    cpu = cpu_of_children()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True,
                          check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed, cpu_of_children() - cpu


def instructions(directory: Path, env: dict[str, str], extra: list[str]) -> int:
    """Instructions of one pytest process, counted by callgrind (hash seed fixed: same run)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, "-m", "pytest", *BASE_ARGS, *extra]
    done = subprocess.run(cmd, cwd=directory, env={**env, "PYTHONHASHSEED": "0"},
                          capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def spread(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values),
                                                max(values)))


def verdict(value: float, goal: float, unit: str) -> str:
    return f"(goal <= {goal:g} {unit}: {'ok' if value <= goal else 'MISSED'})"


WIDTH = 48


def header(title: str) -> None:
    print(f"  {title:34s}" + "".join(f"{m:{WIDTH}s}" for m in MODES))


def row(name: str, cells: list[str]) -> None:
    print(f"    {name:32s}" + "".join(f"{c:{WIDTH}s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--startup-pairs", type=int, default=15)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src/ directory holding pytest_stressguard (default: this one)")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions under valgrind (a few minutes more)")
    args = parser.parse_args()
    package = args.source.resolve() / "pytest_stressguard"
    if not (package / "plugin.py").is_file():
        raise SystemExit(f"no pytest_stressguard package in {args.source}")

    with tempfile.TemporaryDirectory(prefix="sg-bench-overhead-") as name:
        tmp = Path(name)
        envs = {mode: make_env(package, tmp, mode) for mode in MODES}
        suite, small = tmp / "suite", tmp / "small"
        make_suite(suite, args.tests)
        make_suite(small, 10)
        for env in envs.values():  # warm the file system cache and the cached mode's .pyc
            for extra in SIDES.values():
                run(suite, env, extra)
                run(small, env, [*COLLECT, *extra])

        # Overhead: every (mode, side) once per round, the order rotating so that no side always
        # follows the same one; each round's ratios use that round's plain run.
        runs = list(itertools.product(MODES, SIDES))
        times: dict[tuple[str, str], Times] = {r: [] for r in runs}
        for i in range(args.rounds):
            shift = i % len(runs)
            for r in runs[shift:] + runs[:shift]:
                times[r].append(run(suite, envs[r[0]], SIDES[r[1]]))

        # Start-up: plugin on minus off, in pairs; which one goes first alternates.
        startup: dict[tuple[str, str], Times] = {(m, s): [] for m in MODES for s in ("off", "on")}
        for i in range(args.startup_pairs):
            for mode in MODES:
                pair = [("off", SIDES["plain"]), ("on", SIDES["default"])]
                for side, extra in pair if i % 2 else pair[::-1]:
                    startup[mode, side].append(run(small, envs[mode], [*COLLECT, *extra]))

        counted: dict[tuple[str, str, str], int] = {}
        if args.callgrind:
            jobs = [(what, mode, side) for what in ("suite", "startup") for mode in MODES
                    for side in (SIDES if what == "suite" else ("plain", "default"))]
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                found = pool.map(lambda job: instructions(
                    suite if job[0] == "suite" else small, envs[job[1]],
                    [*(COLLECT if job[0] == "startup" else []), *SIDES[job[2]]]), jobs)
                counted = dict(zip(jobs, found, strict=True))

    print(f"pytest_stressguard from {package}")
    print(f"\n{args.tests} trivial unmarked tests, {args.rounds} rounds: the plugin's overhead on "
          "plain pytest (-p no:stressguard)\nof the same round, min / median / max")
    for clock, pick in (("CPU (user+sys)", 1), ("wall time", 0)):
        header(clock)
        row("plain pytest, median", [f"{statistics.median(t[pick] for t in times[m, 'plain']):.3f} s"
                                     for m in MODES])
        for side, goal in GOALS.items():
            cells = []
            for mode in MODES:
                over = [(t[pick] / p[pick] - 1) * 100
                        for t, p in zip(times[mode, side], times[mode, "plain"], strict=True)]
                cells.append(f"{spread(over, '+.1f')} %  "
                             f"{verdict(statistics.median(over), goal, '%')}")
            row(f"stressguard, {side}", cells)

    print(f"\nstart-up: pytest --co -q on 10 tests, {args.startup_pairs} pairs: plugin on minus "
          "plugin off, min / median / max")
    for clock, pick in (("CPU (user+sys)", 1), ("wall time", 0)):
        header(clock)
        row("plain pytest, median", [
            f"{statistics.median(t[pick] for t in startup[m, 'off']) * 1000:.0f} ms"
            for m in MODES])
        cells = []
        for mode in MODES:
            cost = [(on[pick] - off[pick]) * 1000
                    for on, off in zip(startup[mode, "on"], startup[mode, "off"], strict=True)]
            cells.append(f"{spread(cost, '+.0f')} ms  "
                         f"{verdict(statistics.median(cost), STARTUP_GOAL_MS, 'ms')}")
        row("stressguard start-up", cells)

    if counted:
        print("\ninstructions (callgrind, one run per side)")
        header("")
        row(f"plain pytest, {args.tests} tests",
            [f"{counted['suite', m, 'plain'] / 1e6:,.0f} M" for m in MODES])
        for side, goal in GOALS.items():
            cells = []
            for mode in MODES:
                over = (counted["suite", mode, side] / counted["suite", mode, "plain"] - 1) * 100
                cells.append(f"{over:+.1f} %  {verdict(over, goal, '%')}")
            row(f"stressguard, {side}", cells)
        row("plain pytest --co, 10 tests",
            [f"{counted['startup', m, 'plain'] / 1e6:,.0f} M" for m in MODES])
        cells = []
        for mode in MODES:
            plain = counted["startup", mode, "plain"]
            extra = counted["startup", mode, "default"] - plain
            # at the pace of the fastest plain run: the machine at its least disturbed
            ms = extra / plain * min(t[0] for t in startup[mode, "off"]) * 1000
            cells.append(f"{extra / 1e6:+,.0f} M = {ms:.0f} ms  {verdict(ms, STARTUP_GOAL_MS, 'ms')}")
        row("stressguard start-up", cells)


if __name__ == "__main__":
    main()
