#!/usr/bin/env python
"""What does the resource sampler cost? Goal: under 1 % of a core at 10 Hz.

    python benchmarks/bench_sampler.py                  # 10 s at 10 Hz, this process only
    python benchmarks/bench_sampler.py --watch 3        # plus 3 idle child processes
    python benchmarks/bench_sampler.py --seconds 5 --interval 0.05

Two independent measurements of the same thing:

* **thread CPU**: the sampler thread's own CPU time (``time.thread_time()`` read inside the
  thread, :meth:`ResourceMonitor.overhead`), divided by the wall time. This is exactly the cost of
  sampling, including USS every 5 s and the child count every 2 s.
* **process CPU delta**: this process's CPU time over an idle window with the monitor running,
  minus the same window without it. It also counts what the thread-clock cannot see (waking up,
  the final sample taken by ``stop()``), and is noisier on a busy machine.

A script that prints figures, not a test; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from pytest_stressguard.core.monitor import ResourceMonitor

GOAL = 0.01  # 1 % of one core at 10 Hz
IDLE_CHILD = "import time\nfor _ in range(3600):\n    time.sleep(1)\n"


def idle_window(seconds: float) -> float:
    """Process CPU seconds spent while sleeping ``seconds`` (in 0.1 s naps)."""
    cpu0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    return time.process_time() - cpu0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--watch", type=int, default=0, help="idle child processes to watch too")
    args = ap.parse_args()
    seconds = max(1.0, min(args.seconds, 600.0))

    children = [
        subprocess.Popen([sys.executable, "-c", IDLE_CHILD]) for _ in range(max(0, args.watch))
    ]
    try:
        base_cpu = idle_window(seconds)
        mon = ResourceMonitor(interval=args.interval)
        for child in children:
            mon.watch(child)
        with mon:
            with_cpu = idle_window(seconds)
        cost = mon.overhead()
    finally:
        for child in children:
            child.kill()
            child.wait()

    hz = 1.0 / args.interval
    procs = 1 + len(children)
    per_tick_us = cost["cpu_s"] / max(1.0, cost["ticks"]) * 1e6
    thread_ratio = cost["cpu_ratio"]
    delta_ratio = max(0.0, with_cpu - base_cpu) / seconds
    goal = GOAL * hz / 10.0  # the goal scales with the rate: 1 % at 10 Hz
    print(f"sampler at {hz:g} Hz for {seconds:g}s, {procs} process(es) "
          f"({len(mon.series())} stored samples, {int(cost['late_ticks'])} late ticks)")
    print(f"  thread CPU        {cost['cpu_s'] * 1e3:8.1f} ms  = {thread_ratio * 100:6.3f} % of a core"
          f"   ({per_tick_us:.0f} us per tick, {per_tick_us / procs:.0f} us per process)")
    print(f"  process CPU delta {(with_cpu - base_cpu) * 1e3:8.1f} ms  = {delta_ratio * 100:6.3f} % "
          f"of a core   (idle window {base_cpu * 1e3:.1f} ms without, {with_cpu * 1e3:.1f} ms with)")
    worst = max(thread_ratio, delta_ratio)
    verdict = "ok" if worst < goal else "OVER GOAL"
    print(f"  goal < {goal * 100:g} % of a core at this rate: {verdict} "
          f"(worst of the two: {worst * 100:.3f} %)")
    return 0 if worst < goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
