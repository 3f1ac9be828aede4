"""Plugin overhead on a suite of trivial, unmarked tests, against plain pytest in the same run.

    python benchmarks/bench_overhead.py [--tests 2000] [--rounds 5]

Runs the same generated suite alternately with `-p no:stressguard` (the anchor: plain pytest) and
with the plugin active, with and without per-test memory tracking, and prints the
median wall time of each and the overhead. Goals: at most 3 % (issue 2) and, with trend tracking,
at most 10 % (issue 4). Alternating the runs spreads the machine's noise over both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_suite(directory: Path, tests: int) -> None:
    per_file = 100
    for f in range(max(1, tests // per_file)):
        body = "\n".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(per_file))
        (directory / f"test_trivial_{f:03d}.py").write_text(body)
    (directory / "pytest.ini").write_text("[pytest]\n")


# An installed package has bytecode (pip compiles it); an editable checkout run with
# PYTHONDONTWRITEBYTECODE=1 would recompile and assertion-rewrite the plugin on every run and
# measure that instead of the plugin. Both sides run with bytecode caching on.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(directory: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           *extra, str(directory)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, check=False,
                          env=ENV)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-bench-overhead-") as tmp:
        suite = Path(tmp)
        make_suite(suite, args.tests)
        run(suite, [])  # warm the file system cache and .pyc files
        sides: dict[str, list[float]] = {"plain": [], "plugin": [], "trends": []}
        for _ in range(args.rounds):
            sides["plain"].append(run(suite, ["-p", "no:stressguard"]))
            sides["plugin"].append(run(suite, ["--stressguard-trends=off"]))
            sides["trends"].append(run(suite, []))
    med = {k: statistics.median(v) for k, v in sides.items()}
    base = med["plain"]
    print(f"{args.tests} trivial unmarked tests, {args.rounds} alternating rounds, median wall time")
    print(f"  {'plain pytest (-p no:stressguard)':44s} {base:7.3f} s")
    print(f"  {'stressguard, --stressguard-trends off':44s} {med['plugin']:7.3f} s"
          f"   {(med['plugin'] - base) / base * 100:+5.1f} %   (goal <= 3 %)")
    print(f"  {'stressguard, trend tracking on (default)':44s} {med['trends']:7.3f} s"
          f"   {(med['trends'] - base) / base * 100:+5.1f} %   (goal <= 10 %)")
    for name, runs in sides.items():
        print(f"  runs {name:7s} " + ", ".join(f"{x:.3f}" for x in runs))


if __name__ == "__main__":
    main()
