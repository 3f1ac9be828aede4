#!/usr/bin/env python
"""How fast is the load generator's HTTP client? stressguard vs Locust, aiohttp, httpx and wrk.

nginx (Debian's ``nginx-light``, installed with apt-get when missing, as is ``wrk``) serves a
tiny static response on loopback, pinned to core 1; every generator runs in its own process pinned
to core 0, for the same number of users (connections) and the same duration, one after the other::

    python benchmarks/bench_http.py                 # 50 users, 10 s per generator
    python benchmarks/bench_http.py --users 20 --duration 5 --extra   # + uvloop / pyreqwest rows

It prints requests/s, p50, p99 (as each tool reports them), the generator's and nginx's CPU use
(CPU seconds / wall seconds of the whole process, start-up included) and the ratio to Locust
FastHttpUser, both in requests/s and in requests per CPU-second of the generator (the latter is
the one to read on a shared, busy machine: a generator that got half its core did half the work),
then a low-load run (one connection) comparing our p50 with wrk's. A client at ~100 % CPU while
nginx idles is the bottleneck: its latencies then measure its own queueing, not the server.
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_CORE = 1
CLIENT_CORE = 0
MAX_REQUESTS = 50_000_000  # every generator loop is bounded in count as well as in time


# --------------------------------------------------------------------------- setup


def ensure_tools() -> tuple[str, str]:
    """Paths of nginx and wrk, installing Debian's nginx-light and wrk when missing."""

    def find() -> tuple[str | None, str | None]:
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        return nginx, shutil.which("wrk")

    nginx, wrk = find()
    if nginx and wrk:
        return nginx, wrk
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("need nginx and wrk: apt-get install nginx-light wrk (as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "nginx-light", "wrk"]
    print("installing nginx-light and wrk with apt-get ...", flush=True)
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    nginx, wrk = find()
    if not (nginx and wrk):
        sys.exit("nginx or wrk still missing after apt-get install")
    return nginx, wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {core})

    return _pin


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type text/plain;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello world\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(nginx: str, core: int | None) -> Iterator[tuple[str, int]]:
    """Run nginx (own config, pid file and logs in a temp dir); yields (url, master pid)."""
    with tempfile.TemporaryDirectory(prefix="sg-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", tmp, "-e", f"{tmp}/error.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            preexec_fn=pin(core), start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    sys.exit(f"nginx exited at start: {err}")
                with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=0.2
                ):
                    break
                if time.monotonic() > deadline:
                    sys.exit("nginx did not start within 10 s")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/", proc.pid
        finally:
            if proc.poll() is None:
                proc.terminate()  # fast shutdown of master and worker
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind, if any
            if proc.stderr is not None:
                proc.stderr.close()


def nginx_cpu(master_pid: int) -> float:
    """CPU seconds used so far by nginx (master + workers)."""
    import psutil

    try:
        p = psutil.Process(master_pid)
        procs = [p, *p.children(recursive=True)]
        return float(sum(q.cpu_times().user + q.cpu_times().system for q in procs))
    except psutil.Error:
        return 0.0


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    requests: int = 0
    errors: int = 0
    client_cpu: float | None = None  # ratio of one core
    server_cpu: float | None = None
    note: str = ""


def run_generator(
    name: str, cmd: list[str], parse: Callable[[str], Row], timeout: float, nginx_pid: int,
    core: int | None, env: dict[str, str] | None = None,
) -> Row:
    """Run one generator process pinned to ``core``; CPU from RUSAGE_CHILDREN deltas."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ncpu0 = nginx_cpu(nginx_pid)
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pin(core),
            stdin=subprocess.DEVNULL, env=env,
        )
    except subprocess.TimeoutExpired:
        return Row(name, None, None, None, note=f"timed out after {timeout:.0f}s")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ncpu = nginx_cpu(nginx_pid) - ncpu0
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return Row(name, None, None, None, note=f"failed: {tail[0][:80]}")
    row = parse(out.stdout)
    row.name = name
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row.client_cpu = cpu / wall if wall > 0 else None
    row.server_cpu = ncpu / wall if wall > 0 else None
    return row


def parse_worker(out: str) -> Row:
    d = json.loads(out.strip().splitlines()[-1])
    return Row("", d["rps"], d["p50_ms"], d["p99_ms"], d["requests"], d["errors"])


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> Row:
    def lat(q: str) -> float | None:
        m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else None

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    e = int(errs.group(1)) if errs else 0
    if sock:
        e += sum(int(g) for g in sock.groups())
    return Row("", float(rps.group(1)) if rps else None, lat("50"), lat("99"),
               int(n.group(1)) if n else 0, e)


def parse_locust(csv_prefix: str) -> Callable[[str], Row]:
    def parse(_: str) -> Row:
        import csv

        with open(f"{csv_prefix}_stats.csv", newline="") as f:
            for rec in csv.DictReader(f):
                if rec["Name"] == "Aggregated":
                    return Row(
                        "", float(rec["Requests/s"]), _num(rec["50%"]), _num(rec["99%"]),
                        int(rec["Request Count"]), int(rec["Failure Count"]),
                        note="percentiles rounded by Locust",
                    )
        return Row("", None, None, None, note="no Locust stats")

    return parse


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


# --------------------------------------------------------------------------- workers


def _result(count: int, errors: int, wall: float, hist: Any) -> dict[str, Any]:
    return {
        "requests": count, "errors": errors, "rps": count / wall if wall else 0.0,
        "p50_ms": hist.p(50) * 1e3 if hist.count else None,
        "p99_ms": hist.p(99) * 1e3 if hist.count else None,
    }


async def worker_ours(url: str, users: int, duration: float) -> dict[str, Any]:
    from pytest_stressguard.core.http import HttpClient, HttpError
    from pytest_stressguard.core.stats import StatsRecorder, current_recorder

    rec = StatsRecorder()
    current_recorder.set(rec)  # the real path: every call records per endpoint
    count = 0
    async with HttpClient(timeout=30.0, max_connections=users) as client:
        t0 = time.perf_counter()
        end = t0 + duration

        async def user() -> None:
            nonlocal count
            while time.perf_counter() < end and count < MAX_REQUESTS:
                with contextlib.suppress(HttpError):  # counted by the recorder
                    await client.get(url, name="GET /")
                count += 1

        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - t0
    st = rec.snapshot()["GET /"]
    return _result(st.count, st.errors, wall, st.histogram)


async def worker_aiohttp(url: str, users: int, duration: float) -> dict[str, Any]:
    import aiohttp

    from pytest_stressguard.core.histogram import LatencyHistogram

    hist = LatencyHistogram()
    count = errors = 0
    conn = aiohttp.TCPConnector(limit=users, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        end = t0 + duration

        async def user() -> None:
            nonlocal count, errors
            while time.perf_counter() < end and count < MAX_REQUESTS:
                a = time.perf_counter()
                try:
                    async with s.get(url) as r:
                        await r.read()
                        errors += r.status >= 400
                except aiohttp.ClientError:
                    errors += 1
                hist.record(time.perf_counter() - a)
                count += 1

        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - t0
    return _result(count, errors, wall, hist)


async def worker_httpx(url: str, users: int, duration: float) -> dict[str, Any]:
    import httpx

    from pytest_stressguard.core.histogram import LatencyHistogram

    hist = LatencyHistogram()
    count = errors = 0
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as s:
        t0 = time.perf_counter()
        end = t0 + duration

        async def user() -> None:
            nonlocal count, errors
            while time.perf_counter() < end and count < MAX_REQUESTS:
                a = time.perf_counter()
                try:
                    r = await s.get(url)
                    errors += r.status_code >= 400
                except httpx.HTTPError:
                    errors += 1
                hist.record(time.perf_counter() - a)
                count += 1

        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - t0
    return _result(count, errors, wall, hist)


async def worker_pyreqwest(url: str, users: int, duration: float) -> dict[str, Any]:
    client_builder: Any = importlib.import_module("pyreqwest.client").ClientBuilder

    from pytest_stressguard.core.histogram import LatencyHistogram

    hist = LatencyHistogram()
    count = errors = 0
    async with client_builder().build() as s:
        t0 = time.perf_counter()
        end = t0 + duration

        async def user() -> None:
            nonlocal count, errors
            while time.perf_counter() < end and count < MAX_REQUESTS:
                a = time.perf_counter()
                try:
                    r = await s.get(url).build().send()
                    await r.bytes()
                    errors += r.status >= 400
                except Exception:
                    errors += 1
                hist.record(time.perf_counter() - a)
                count += 1

        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - t0
    return _result(count, errors, wall, hist)


WORKERS = {
    "ours": worker_ours, "ours-uvloop": worker_ours, "aiohttp": worker_aiohttp,
    "httpx": worker_httpx, "pyreqwest": worker_pyreqwest,
}

LOCUSTFILE = """\
from locust import FastHttpUser, constant, task


class User(FastHttpUser):
    wait_time = constant(0)
    host = {host!r}

    @task
    def get(self):
        self.client.get("/")
"""


# --------------------------------------------------------------------------- main


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def per_cpu(r: Row) -> float | None:
    """Requests per CPU-second of the generator: its efficiency, robust to CPU contention."""
    return r.rps / r.client_cpu if r.rps and r.client_cpu else None


def print_table(rows: list[Row], locust: Row | None) -> None:
    locust_rps = locust.rps if locust else None
    locust_eff = per_cpu(locust) if locust else None
    head = (f"{'generator':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
            f"{'gen CPU':>8} {'nginx CPU':>9} {'x Locust':>8} {'req/CPU-s':>10} {'x Locust':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = (r.rps / locust_rps) if (r.rps and locust_rps) else None
        eff = per_cpu(r)
        eff_ratio = eff / locust_eff if (eff and locust_eff) else None
        print(
            f"{r.name:<34} {fmt(r.rps, ',.0f'):>9} {fmt(r.p50_ms, '.3f'):>8} "
            f"{fmt(r.p99_ms, '.3f'):>8} {r.errors:>7} "
            f"{fmt(None if r.client_cpu is None else r.client_cpu * 100, '.0f') + '%':>8} "
            f"{fmt(None if r.server_cpu is None else r.server_cpu * 100, '.0f') + '%':>9} "
            f"{fmt(ratio, '.2f'):>8} {fmt(eff, ',.0f'):>10} {fmt(eff_ratio, '.2f'):>8}"
            + (f"  ({r.note})" if r.note else "")
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=50, help="concurrent users/connections (50)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per generator (10)")
    ap.add_argument("--low-duration", type=float, default=3.0,
                    help="seconds per generator of the one-connection run (3)")
    ap.add_argument("--extra", action="store_true",
                    help="also run our client on uvloop and pyreqwest, when importable")
    ap.add_argument("--only", default=None,
                    help="comma list of generators: ours,locust,aiohttp,httpx,wrk")
    ap.add_argument("--env-pad", default="0",
                    help="comma list of byte counts: run our client once per size with an extra\n"
                         "environment variable that long (the process's memory layout shifts;\n"
                         "a client allocating per read flipped between two speeds with it) (0)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not 1 <= a.users <= 10_000 or not 0 < a.duration <= 600:
        ap.error("--users must be 1..10000 and --duration 0..600 s")
    try:
        pads = [int(x) for x in a.env_pad.split(",")]
    except ValueError:
        ap.error(f"--env-pad must be a comma list of byte counts, got {a.env_pad!r}")
    if not all(0 <= n <= 1_000_000 for n in pads):
        ap.error("--env-pad sizes must be 0..1000000 bytes")

    if a.worker:  # child process: one generator
        if a.worker == "ours-uvloop":
            importlib.import_module("uvloop").install()
        res = asyncio.run(WORKERS[a.worker](a.url, a.users, a.duration))
        print(json.dumps(res))
        return 0

    nginx, wrk = ensure_tools()
    cores = os.sched_getaffinity(0)
    if {SERVER_CORE, CLIENT_CORE} <= cores:
        server_core: int | None = SERVER_CORE
        client_core: int | None = CLIENT_CORE
    else:
        server_core = client_core = None
        print("warning: fewer than 2 cores available, running unpinned", file=sys.stderr)
    only = set(a.only.split(",")) if a.only else {"ours", "locust", "aiohttp", "httpx", "wrk"}
    if a.extra:
        only.add("extra")
    me = [sys.executable, os.path.abspath(__file__)]
    limit = a.duration + 60
    results: dict[str, Any] = {"users": a.users, "duration_s": a.duration}
    with nginx_server(nginx, server_core) as (url, npid), \
            tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        from importlib.metadata import version

        print(f"nginx {url} on core {server_core}; generators on core {client_core}; "
              f"{a.users} users x {a.duration:g} s each\n", flush=True)

        def worker(kind: str, users: int, duration: float) -> list[str]:
            return [*me, "--worker", kind, "--url", url, "--users", str(users),
                    "--duration", str(duration)]

        rows: list[Row] = []
        plan: list[tuple[str, str, list[str], Callable[[str], Row]]] = [
            ("ours", "stressguard HttpClient", worker("ours", a.users, a.duration),
             parse_worker),
        ]
        if a.extra and importlib.util.find_spec("uvloop"):
            plan.append(("extra", "stressguard on uvloop",
                         worker("ours-uvloop", a.users, a.duration), parse_worker))
        lf = Path(tmp) / "locustfile.py"
        lf.write_text(LOCUSTFILE.format(host=url.rstrip("/")))
        prefix = f"{tmp}/locust"
        plan.append((
            "locust", f"Locust {version('locust')} FastHttpUser",
            [sys.executable, "-m", "locust", "-f", str(lf), "--headless", "-u", str(a.users),
             "-r", str(a.users * 20), "-t", f"{a.duration:g}s", "--csv", prefix,
             "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"],
            parse_locust(prefix),
        ))
        plan.append(("aiohttp", f"aiohttp {version('aiohttp')}",
                     worker("aiohttp", a.users, a.duration), parse_worker))
        plan.append(("httpx", f"httpx {version('httpx')} AsyncClient",
                     worker("httpx", a.users, a.duration), parse_worker))
        if a.extra and importlib.util.find_spec("pyreqwest"):
            plan.append(("extra", "pyreqwest (Rust)", worker("pyreqwest", a.users, a.duration),
                         parse_worker))
        plan.append(("wrk", "wrk -t1 (C, reference)",
                     [wrk, "-t1", f"-c{a.users}", f"-d{max(1, round(a.duration))}s",
                      "--latency", url], parse_wrk))
        for key, name, cmd, parse in plan:
            if key not in only:
                continue
            for pad in pads if key == "ours" else [0]:
                label = name if len(pads) == 1 or key != "ours" else f"{name} env+{pad}"
                print(f"  running {label} ...", flush=True)
                env = dict(os.environ, SG_BENCH_PAD=" " * pad) if pad else None
                rows.append(run_generator(label, cmd, parse, limit, npid, client_core, env))
        locust_row = next((r for r in rows if r.name.startswith("Locust")), None)
        print()
        print_table(rows, locust_row)
        runs = sorted((r for r in rows if r.name.startswith("stressguard HttpClient")),
                      key=lambda r: r.rps or 0.0)
        ours = runs[len(runs) // 2] if runs else None  # the median run
        if len(runs) > 1:
            for what, fig in (("requests/s", lambda r: r.rps), ("requests/CPU-s", per_cpu)):
                vals = sorted(v for v in map(fig, runs) if v)
                if vals:
                    print(f"stressguard over {len(runs)} env sizes, {what} min/median/max: "
                          f"{vals[0]:,.0f} / {vals[len(vals) // 2]:,.0f} / {vals[-1]:,.0f}")
        if ours and locust_row:
            for what, mine, theirs in (
                ("requests/s", ours.rps, locust_row.rps),
                ("requests per CPU-second", per_cpu(ours), per_cpu(locust_row)),
            ):
                if mine and theirs:
                    ratio = mine / theirs
                    verdict = ("goal met (>= 3x)" if ratio >= 3 else
                               "done (>= 2x)" if ratio >= 2 else "NOT met (< 2x)")
                    print(f"stressguard / Locust FastHttpUser, {what}: {ratio:.2f}x: {verdict}")
            if ours.client_cpu is not None and ours.client_cpu < 0.8:
                print("note: our generator got only "
                      f"{ours.client_cpu:.0%} of its core: the machine is busy, so compare "
                      "requests per CPU-second rather than requests/s")
        results["rows"] = [vars(r) for r in rows]

        # Low load: one connection; our p50 against wrk's.
        low: list[Row] = []
        if {"ours", "wrk"} <= only:
            print(f"\nlow load: 1 connection, {a.low_duration:g} s each", flush=True)
            low.append(run_generator("stressguard HttpClient", worker("ours", 1, a.low_duration),
                                     parse_worker, limit, npid, client_core))
            low.append(run_generator(
                "wrk -t1 -c1", [wrk, "-t1", "-c1", f"-d{max(1, round(a.low_duration))}s",
                                "--latency", url], parse_wrk, limit, npid, client_core))
            print_table(low, None)
            if low[0].p50_ms is not None and low[1].p50_ms is not None:
                diff = low[0].p50_ms - low[1].p50_ms
                print(f"\np50 difference stressguard - wrk = {diff * 1000:+.0f} us: "
                      f"{'within' if abs(diff) <= 0.2 else 'NOT within'} 0.2 ms")
        results["low_load"] = [vars(r) for r in low]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
