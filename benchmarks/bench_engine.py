#!/usr/bin/env python
"""How much does the load engine itself cost? stressguard's engine vs Locust, empty bodies.

Every generator runs an *empty* iteration as fast as it can, for the same duration, in its own
process pinned to the same core (``os.sched_setaffinity``), one after the other::

    python benchmarks/bench_engine.py                    # 5 s per row
    python benchmarks/bench_engine.py --duration 2 --core 1 --users 1,10

Rows:
* ``stressguard sync``   closed model, N threads calling ``def body(): pass``; every iteration
  is timed and recorded (latency histogram, per-second timeline).
* ``stressguard async``  closed model, N tasks awaiting ``async def body(): pass``.
* ``stressguard open`` / ``aopen``  open model at a fixed high rate (sync threads / async
  tasks): the scheduler's cost per arrival and how late it starts them (p99).
* ``locust (no stats)``  a Locust ``User`` whose task does nothing, ``wait_time = constant(0)``:
  Locust's scheduling loop only, nothing measured (it is not comparable work, but it is
  Locust's floor).
* ``locust (stats)``     the same task timing itself and firing ``events.request`` the way
  Locust's clients do, so Locust records it like a request: the comparable row.

Columns: iterations/s (wall), iterations per CPU-second of the generator process (the one to
read on a shared, busy machine: a generator that got half of its core did half the work), the
cost per iteration in microseconds of CPU, the process CPU ratio, and the ratio to the
``locust (stats)`` row. This is a script that prints figures, not a test; every loop is bounded
in time and count and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

MAX_ITERATIONS = 200_000_000  # a bound in count as well as in time


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def _measure(run: Any) -> dict[str, Any]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    iterations, extra = run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"iterations": iterations, "wall": wall, "cpu": cpu, **extra}


# --------------------------------------------------------------------------- workers
def worker_stressguard(kind: str, users: int, duration: float) -> dict[str, Any]:
    import asyncio

    from pytest_stressguard.core.engine import Engine
    from pytest_stressguard.core.loadspec import LoadSpec

    def body() -> None:
        pass

    async def abody() -> None:
        pass

    def run() -> tuple[int, dict[str, Any]]:
        if kind == "sync":
            r = Engine().run_sync(body, LoadSpec(users=users, duration=duration))
        elif kind == "async":
            r = asyncio.run(Engine().run_async(abody, LoadSpec(users=users, duration=duration)))
        elif kind.startswith("a"):
            spec = LoadSpec(rate=float(kind[1:]), duration=duration)
            r = asyncio.run(Engine().run_async(abody, spec))
        else:
            r = Engine().run_sync(body, LoadSpec(rate=float(kind), duration=duration))
        return r.iterations, {
            "p50_us": r.latency.p(50) * 1e6,
            "p99_us": r.latency.p(99) * 1e6,
            "dropped": r.dropped,
            "saturated": r.saturation.saturated,
        }

    return _measure(run)


def worker_locust(with_stats: bool, users: int, duration: float) -> dict[str, Any]:
    import gevent  # type: ignore[import-untyped]
    from locust import User, constant, events, task
    from locust.env import Environment

    count = [0]

    class Empty(User):
        wait_time = constant(0)

        @task
        def noop(self) -> None:
            count[0] += 1
            if with_stats:
                t0 = time.perf_counter()
                self.environment.events.request.fire(
                    request_type="noop",
                    name="noop",
                    response_time=(time.perf_counter() - t0) * 1000.0,
                    response_length=0,
                    exception=None,
                    context={},
                )
            if count[0] >= MAX_ITERATIONS:
                raise SystemExit

    def run() -> tuple[int, dict[str, Any]]:
        env = Environment(user_classes=[Empty], events=events)
        runner = env.create_local_runner()
        runner.start(users, spawn_rate=max(users, 1) * 100)
        gevent.sleep(duration)
        runner.quit()
        extra: dict[str, Any] = {}
        if with_stats:
            extra["recorded"] = env.stats.total.num_requests
        return count[0], extra

    return _measure(run)


def worker_main(args: argparse.Namespace) -> None:
    _pin(args.core)
    name, users, duration = args.worker, args.users_one, args.duration
    if name.startswith("sg-"):
        out = worker_stressguard(name[3:], users, duration)
    elif name == "locust":
        out = worker_locust(False, users, duration)
    elif name == "locust-stats":
        out = worker_locust(True, users, duration)
    else:
        raise SystemExit(f"unknown worker {name!r}")
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- driver
def run_worker(name: str, users: int, duration: float, core: int) -> dict[str, Any] | None:
    cmd = [
        sys.executable, __file__, "--worker", name, "--users-one", str(users),
        "--duration", str(duration), "--core", str(core),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration * 3 + 60, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"  {name}: timed out", file=sys.stderr)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data: dict[str, Any] = json.loads(line[len("RESULT "):])
            return data
    print(f"  {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per row (default 5)")
    p.add_argument("--core", type=int, default=0, help="CPU core every generator is pinned to")
    p.add_argument("--users", default="1", help="comma-separated user counts (default 1)")
    p.add_argument("--rate", type=float, default=20_000.0, help="open-model row rate per second")
    p.add_argument("--no-locust", action="store_true", help="skip the Locust rows")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--users-one", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return

    rows: list[tuple[str, int, dict[str, Any]]] = []
    for users in [int(u) for u in args.users.split(",") if u.strip()]:
        plan = [("stressguard sync", "sg-sync"), ("stressguard async", "sg-async")]
        if users == 1:
            plan.append((f"stressguard open {args.rate:g}/s", f"sg-{args.rate:g}"))
            plan.append((f"stressguard aopen {args.rate:g}/s", f"sg-a{args.rate:g}"))
        if not args.no_locust:
            plan += [("locust (no stats)", "locust"), ("locust (stats)", "locust-stats")]
        for label, worker in plan:
            print(f"running {label}, {users} user(s), {args.duration:g}s ...", file=sys.stderr)
            res = run_worker(worker, users, args.duration, args.core)
            if res is not None:
                rows.append((label, users, res))

    ref: dict[int, float] = {}
    for label, users, res in rows:
        if label == "locust (stats)" and res["cpu"] > 0:
            ref[users] = res["iterations"] / res["cpu"]
    header = (
        f"{'generator':<28}{'users':>6}{'iter/s':>12}{'iter/CPU-s':>13}{'us/iter':>9}"
        f"{'cpu':>6}{'vs locust(stats)':>18}  notes"
    )
    print(f"\nempty-body throughput, every generator pinned to core {args.core}, "
          f"{args.duration:g}s each, python {sys.version.split()[0]}")
    print(header)
    print("-" * len(header))
    for label, users, res in rows:
        it, wall, cpu = res["iterations"], res["wall"], res["cpu"]
        per_cpu = it / cpu if cpu > 0 else float("nan")
        us_iter = cpu / it * 1e6 if it else float("nan")
        vs = f"{per_cpu / ref[users]:.1f}x" if users in ref else "-"
        notes = []
        if "p50_us" in res:
            notes.append(f"p50 {res['p50_us']:.1f}us p99 {res['p99_us']:.1f}us")
        if res.get("dropped"):
            notes.append(f"dropped {res['dropped']}")
        if res.get("saturated"):
            notes.append("saturated")
        if "recorded" in res:
            notes.append(f"recorded {res['recorded']}")
        print(
            f"{label:<28}{users:>6}{it / wall:>12,.0f}{per_cpu:>13,.0f}{us_iter:>9.2f}"
            f"{cpu / wall:>6.0%}{vs:>18}  {'; '.join(notes)}"
        )


if __name__ == "__main__":
    main()
