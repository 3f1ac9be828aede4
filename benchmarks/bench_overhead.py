"""Plugin overhead on a suite of trivial, unmarked tests, against plain pytest in the same run.

    python benchmarks/bench_overhead.py [--tests 2000] [--rounds 5]

Runs the same generated suite alternately with `-p no:stressguard` (the anchor: plain pytest) and
with the plugin active (which tracks per-test duration and memory for the trends), and prints the
median wall time of each and the overhead. Goals: at most 3 % (issue 2) and, with trend tracking,
at most 10 % (issue 4). Alternating the runs spreads the machine's noise over both sides.
"""

from __future__ import annotations

import argparse
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


def run(directory: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           *extra, str(directory)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, check=False)
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
        plain, plugin = [], []
        for _ in range(args.rounds):
            plain.append(run(suite, ["-p", "no:stressguard"]))
            plugin.append(run(suite, []))
    p, s = statistics.median(plain), statistics.median(plugin)
    overhead = (s - p) / p * 100
    print(f"{args.tests} trivial unmarked tests, {args.rounds} alternating rounds, median wall time")
    print(f"  {'plain pytest (-p no:stressguard)':40s} {p:7.3f} s")
    print(f"  {'pytest + stressguard (trends on)':40s} {s:7.3f} s")
    print(f"  overhead {overhead:+.1f} %   (goals: <= 3 % plugin, <= 10 % with trend tracking)")
    print(f"  all runs plain:  {', '.join(f'{x:.3f}' for x in plain)}")
    print(f"  all runs plugin: {', '.join(f'{x:.3f}' for x in plugin)}")


if __name__ == "__main__":
    main()
