"""Resource sampling of this process and of watched processes, in a background thread.

What is measured and why
------------------------
* **RSS** (resident set size) at every tick: what the OS, the OOM killer and dashboards see, so it
  is what the leak and ``peak_rss`` gates use. It includes allocator behaviour (pymalloc arenas,
  glibc free lists kept for reuse): freed memory does not always go back to the OS. That is why
  leaks are judged by a robust *persistent* slope (:mod:`.trends`), not by "RSS went up".
  Conversely, memory allocated but never written (large zero-filled ``calloc`` blocks, e.g.
  ``bytes(100_000)``) is not resident and does not show in RSS until it is touched; memray
  (:mod:`.allocs`) sees it.
* **USS** (memory unique to the process) is optional and slow (it reads ``/proc/pid/smaps``), so
  it is sampled only every ``uss_interval`` seconds (or on request with :meth:`sample_uss`).
* **No ``gc.collect()`` at sampling points.** Forcing a collection from the sampler thread would
  change the program being measured (pauses in every user thread, different heap shape) and
  would hide a real-world problem: garbage that waits for the collector *is* memory the process
  holds. Cycles show up as a sawtooth, which the robust slope ignores.
* **Peak RSS** is the highest sampled RSS, raised to the kernel's exact high-water mark
  (``VmHWM``, Linux) when that mark moved while we were watching — a spike shorter than the
  sampling interval is not missed.
* **CPU** as a ratio of one core (CPU seconds / wall seconds, 1.0 = one core busy); threads,
  open file descriptors, and (every ``children_interval`` s, because psutil scans every process to
  find them) the number of child processes.

Cost: on Linux one tick reads ``/proc/<pid>/stat`` and lists ``/proc/<pid>/fd`` per process
(psutil elsewhere, and for USS and children). A tick in a thread that slept is slower than the
same code in a hot loop (cold caches): about 0.3 ms of CPU here, 0.3 % of a core at 10 Hz for
this process and 0.1 ms more per watched process (``benchmarks/bench_sampler.py``). The sampler
thread measures its own CPU time (:meth:`ResourceMonitor.overhead`), so the overhead is reported,
not assumed. Memory is bounded: each series keeps at most ``max_points`` points in preallocated
arrays; when full, neighbouring points are merged pairwise and later samples are averaged in
groups of the new stride, so a soak of any length keeps uniformly spaced points and the
sampler's own memory does not grow (it would otherwise show up as a leak of this process).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from .metrics import Metric
from .thresholds import ThresholdResult, evaluate, parse_thresholds
from .trends import LeakEstimate, estimate_leak

__all__ = ["MonitorError", "ResourceMonitor", "Sample"]

_NAN = float("nan")
_FIELDS = ("t", "rss", "uss", "cpu", "threads", "fds", "children")


MONITOR_METRICS: tuple[Metric, ...] = (
    Metric("peak_rss", "size", "the largest resident memory sampled"),
    Metric("leak", "size_rate", "robust memory growth after the warm-up, 0 unless established"),
    Metric("cpu", "ratio", "CPU time / wall time (1.0 = one core busy)"),
)


class MonitorError(ValueError):
    """A watch target that is not a process (or no longer exists)."""


@dataclass(frozen=True)
class Sample:
    """One (possibly averaged) observation of one process.

    ``t`` is seconds since the monitor started; sizes in bytes; ``cpu_ratio`` 1.0 = one core.
    After decimation a sample is the mean of several ticks (counts are their maximum).
    """

    t: float
    rss: int
    uss: int | None
    cpu_ratio: float
    threads: int
    fds: int | None
    children: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "rss": self.rss,
            "uss": self.uss,
            "cpu_ratio": self.cpu_ratio,
            "threads": self.threads,
            "fds": self.fds,
            "children": self.children,
        }


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_reader() -> Callable[[], int] | None:
    """Bytes in use by malloc in this process (all arenas plus mmapped chunks), from glibc's
    mallinfo2() (~0.4 us). Unlike RSS it is not hidden when a leak refills memory the allocator
    already held from earlier work. None where unavailable (musl, macOS, glibc < 2.33)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []

    def read() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return read


def _opt_int(x: float) -> int | None:
    return None if math.isnan(x) else round(x)


class _Series:
    """Bounded, uniformly decimated storage of samples in preallocated arrays."""

    def __init__(self, capacity: int) -> None:
        if capacity < 4:
            raise ValueError("max_points must be >= 4")
        self.capacity = capacity - capacity % 2
        self.cols = {name: array("d", [_NAN]) * self.capacity for name in _FIELDS}
        self.size = 0
        self.stride = 1
        self.raw_count = 0
        self._pending: list[tuple[float, ...]] = []

    def add(self, row: tuple[float, ...]) -> None:
        self.raw_count += 1
        self._pending.append(row)
        if len(self._pending) >= self.stride:
            self._put(_merge(self._pending))
            self._pending.clear()

    def _put(self, row: tuple[float, ...]) -> None:
        i = self.size
        for name, v in zip(_FIELDS, row, strict=True):
            self.cols[name][i] = v
        self.size += 1
        if self.size == self.capacity:  # every stored point then stands for `stride` ticks
            self._compact()

    def _compact(self) -> None:
        half = self.size // 2
        for k in range(half):
            a = tuple(self.cols[name][2 * k] for name in _FIELDS)
            b = tuple(self.cols[name][2 * k + 1] for name in _FIELDS)
            for name, v in zip(_FIELDS, _merge([a, b]), strict=True):
                self.cols[name][k] = v
        for name in _FIELDS:
            col = self.cols[name]
            for k in range(half, self.size):
                col[k] = _NAN
        self.size = half
        self.stride *= 2

    def rows(self) -> list[tuple[float, ...]]:
        out = [tuple(self.cols[name][i] for name in _FIELDS) for i in range(self.size)]
        if self._pending:
            out.append(_merge(self._pending))
        return out


def _merge(rows: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Average t, rss, uss, cpu; keep the maximum of the counts (threads, fds, children)."""
    if len(rows) == 1:
        return rows[0]
    out: list[float] = []
    for idx, name in enumerate(_FIELDS):
        vals = [r[idx] for r in rows if not math.isnan(r[idx])]
        if not vals:
            out.append(_NAN)
        elif name in ("threads", "fds", "children"):
            out.append(max(vals))
        else:
            out.append(math.fsum(vals) / len(vals))
    return tuple(out)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _Gone(Exception):
    """The process exited (or its pid now belongs to another process)."""


def _read_stat(pid: int) -> tuple[int, float, int, int, bool] | None:
    """Linux fast path, one read of /proc/<pid>/stat: (rss, cpu seconds, threads, start time in
    clock ticks, zombie). None where /proc is not available. psutil reads three files for the
    same figures; a tick in a sleeping thread has cold caches, so every file read counts."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise _Gone() from None
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    try:
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return int(fields[21]) * _PAGE, cpu, int(fields[17]), int(fields[19]), fields[0] == b"Z"
    except (IndexError, ValueError):
        return None


def _count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        raise _Gone() from None
    except OSError:
        return None


def _read_hwm(pid: int) -> int | None:
    """The kernel's peak RSS (VmHWM) in bytes, Linux only."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Watched:
    """Sampling state of one process."""

    def __init__(self, proc: psutil.Process, label: str, capacity: int, now: float) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.label = label
        self.series = _Series(capacity)
        self.peak_rss = 0
        self.peak_t: float | None = None
        self.exited_at: float | None = None
        self.uss_ok = True
        self.last_uss_at: float | None = None
        self.last_children_at: float | None = None
        self.children: int | None = None
        self.hwm_start = _read_hwm(self.pid)
        self.hwm_end: int | None = None
        ct = proc.cpu_times()
        self.cpu0 = ct.user + ct.system
        try:
            stat = _read_stat(self.pid)
        except _Gone:
            raise psutil.NoSuchProcess(self.pid) from None
        #: start time from /proc (Linux fast path) guards against a reused pid
        self.start_ticks = None if stat is None else stat[3]
        self.cpu0_t = now
        self.cpu_last = self.cpu0
        self.cpu_last_t = now

    @property
    def peak(self) -> int:
        peak = self.peak_rss
        if self.hwm_start is not None and self.hwm_end is not None and (
            self.hwm_end > self.hwm_start
        ):
            # the process set a new lifetime peak while watched: the kernel's mark is exact
            peak = max(peak, self.hwm_end)
        return peak


def _pid_of(target: object) -> int:
    if isinstance(target, bool):
        raise MonitorError(f"cannot watch {target!r}: expected a pid, psutil.Process or .pid")
    if isinstance(target, int):
        return target
    if isinstance(target, psutil.Process):
        return int(target.pid)
    pid = getattr(target, "pid", None)
    if isinstance(pid, int) and not isinstance(pid, bool):
        return pid
    raise MonitorError(
        f"cannot watch {target!r}: expected a pid (int), a psutil.Process or an object with an "
        "integer .pid (e.g. subprocess.Popen)"
    )


class ResourceMonitor:
    """Samples this process (and watched ones) every ``interval`` seconds in a daemon thread.

    ``clock`` stamps samples (seconds; ``Sample.t`` is relative to :meth:`start`). Use as a
    context manager or call :meth:`start` / :meth:`stop` (idempotent; stop joins the thread).
    """

    def __init__(
        self,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_points: int = 4096,
        uss_interval: float | None = 5.0,
        children_interval: float | None = 2.0,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = float(interval)
        self.clock = clock
        self.max_points = max_points
        self.uss_interval = uss_interval
        self.children_interval = children_interval
        self.notes: list[str] = []
        self.samples_taken = 0
        self.late_ticks = 0
        self.sampler_cpu_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._t_end: float | None = None
        self._self_pid = os.getpid()
        self._procs: dict[int, _Watched] = {}
        self._pending: list[tuple[psutil.Process, str]] = [(psutil.Process(), "self")]
        self._heap_read = _heap_reader()
        self._heap: list[tuple[float, int]] = []  # (t, bytes in use by malloc), this process

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started_at(self) -> float | None:
        """The clock value at :meth:`start` (``Sample.t`` is relative to it)."""
        return self._t0

    def now(self) -> float:
        """Seconds since start on the monitor's clock (0 before start)."""
        return 0.0 if self._t0 is None else self.clock() - self._t0

    def start(self) -> ResourceMonitor:
        """Start sampling (a first sample is taken immediately). Calling it again is a no-op."""
        with self._lock:
            if self._t0 is not None:
                return self
            self._t0 = self.clock()
            self._attach_pending(0.0)
        self.sample_now()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="stressguard-monitor", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the sampler (a last sample is taken). Idempotent."""
        th = self._thread
        if th is None:
            return
        self._stop.set()
        th.join(timeout=max(5.0, 10 * self.interval))
        self._thread = None
        self.sample_now()
        with self._lock:
            self._t_end = self.now()
            for w in self._procs.values():
                if w.exited_at is None:
                    w.hwm_end = _read_hwm(w.pid)

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ watching
    def watch(self, target: object, label: str | None = None) -> int:
        """Also sample ``target``: a pid, a ``psutil.Process`` or any object with ``.pid``.

        Returns the pid. Raises :class:`MonitorError` if it is not a (running) process.
        """
        pid = _pid_of(target)
        try:
            proc = target if isinstance(target, psutil.Process) else psutil.Process(pid)
            proc.memory_info()
        except psutil.NoSuchProcess:
            raise MonitorError(f"cannot watch pid {pid}: no such process") from None
        except psutil.AccessDenied:
            raise MonitorError(f"cannot watch pid {pid}: access denied") from None
        name = label if label is not None else str(pid)
        with self._lock:
            if pid in self._procs or any(p.pid == pid for p, _ in self._pending):
                return pid
            self._pending.append((proc, name))
            if self._t0 is not None:
                self._attach_pending(self.now())
        return pid

    def _attach_pending(self, t: float) -> None:
        for proc, label in self._pending:
            try:
                self._procs[proc.pid] = _Watched(proc, label, self.max_points, t)
            except psutil.Error as exc:
                self.notes.append(f"pid {proc.pid} ({label}) could not be watched: {exc}")
        self._pending.clear()

    @property
    def pids(self) -> list[int]:
        """Watched pids (not this process)."""
        with self._lock:
            return [p for p in self._procs if p != self._self_pid]

    def label(self, pid: int | None = None) -> str:
        return self._get(pid).label

    def exited(self, pid: int | None = None) -> bool:
        return self._get(pid).exited_at is not None

    def _get(self, pid: int | None) -> _Watched:
        key = self._self_pid if pid is None else pid
        w = self._procs.get(key)
        if w is None:
            raise KeyError(f"pid {key} is not watched (watched: {sorted(self._procs)})")
        return w

    # ------------------------------------------------------------------ sampling
    def _run(self) -> None:
        cpu_start = time.thread_time()
        wall_next = time.monotonic() + self.interval
        try:
            while True:
                now = time.monotonic()
                if self._stop.wait(max(0.0, wall_next - now)):
                    return
                self.sample_now()
                wall_next += self.interval
                now = time.monotonic()
                if wall_next < now:  # we fell behind (a stalled machine): do not burst
                    self.late_ticks += 1
                    wall_next = now + self.interval
                with self._lock:
                    self.sampler_cpu_s = time.thread_time() - cpu_start
        finally:
            with self._lock:
                self.sampler_cpu_s = time.thread_time() - cpu_start

    def sample_now(self) -> None:
        """Take one sample of every process now (also used by tests with a fake clock)."""
        if self._t0 is None:
            raise RuntimeError("ResourceMonitor.sample_now() before start()")
        with self._lock:
            t = self.now()
            for w in list(self._procs.values()):
                if w.exited_at is None:
                    self._sample_one(w, t)
            if self._heap_read is not None:
                self._heap.append((t, self._heap_read()))
                if len(self._heap) >= self.max_points:  # bounded: keep every other point
                    self._heap = self._heap[::2]
            self.samples_taken += 1

    @staticmethod
    def _read_fast(w: _Watched) -> tuple[int, float, int, int | None] | None:
        if w.start_ticks is None:
            return None
        stat = _read_stat(w.pid)
        if stat is None:
            return None
        rss, cpu, threads, start, zombie = stat
        if zombie or start != w.start_ticks:
            raise _Gone()
        return rss, cpu, threads, _count_fds(w.pid)

    @staticmethod
    def _read_psutil(w: _Watched) -> tuple[int, float, int, int | None]:
        proc = w.proc
        with proc.oneshot():
            rss = int(proc.memory_info().rss)
            ct = proc.cpu_times()
            threads = int(proc.num_threads())
            fds: int | None
            try:
                fds = int(proc.num_fds()) if hasattr(proc, "num_fds") else int(
                    proc.num_handles()
                )
            except psutil.AccessDenied:
                fds = None
            if rss == 0 and proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.ZombieProcess(w.pid)
        return rss, ct.user + ct.system, threads, fds

    def _sample_one(self, w: _Watched, t: float) -> None:
        proc = w.proc
        try:
            got = self._read_fast(w)
            if got is None:
                got = self._read_psutil(w)
            rss, cpu, threads, fds = got
        except (psutil.NoSuchProcess, psutil.ZombieProcess, _Gone):
            w.exited_at = t
            w.hwm_end = None
            self.notes.append(f"pid {w.pid} ({w.label}) exited at t={t:.1f}s; its series ends there")
            return
        except psutil.AccessDenied as exc:
            w.exited_at = t
            self.notes.append(f"pid {w.pid} ({w.label}): access denied at t={t:.1f}s ({exc})")
            return
        dt = t - w.cpu_last_t
        cpu_ratio = (cpu - w.cpu_last) / dt if dt > 0 else 0.0
        w.cpu_last, w.cpu_last_t = cpu, t
        uss = _NAN
        if (
            self.uss_interval is not None
            and w.uss_ok
            and (w.last_uss_at is None or t - w.last_uss_at >= self.uss_interval)
        ):
            w.last_uss_at = t
            uss_now = self._uss(w)
            if uss_now is not None:
                uss = float(uss_now)
        if self.children_interval is not None and (
            w.last_children_at is None or t - w.last_children_at >= self.children_interval
        ):
            w.last_children_at = t
            try:
                w.children = len(proc.children())
            except psutil.Error:
                w.children = None
        if rss > w.peak_rss:
            w.peak_rss, w.peak_t = rss, t
        w.series.add(
            (
                t,
                float(rss),
                uss,
                cpu_ratio,
                float(threads),
                _NAN if fds is None else float(fds),
                _NAN if w.children is None else float(w.children),
            )
        )

    def _uss(self, w: _Watched) -> int | None:
        try:
            return int(w.proc.memory_full_info().uss)
        except psutil.AccessDenied:
            w.uss_ok = False
            self.notes.append(f"pid {w.pid} ({w.label}): USS not readable (access denied)")
        except (psutil.NoSuchProcess, AttributeError, NotImplementedError, OSError):
            w.uss_ok = False
        return None

    def sample_uss(self, pid: int | None = None) -> int | None:
        """Read the USS of a process now (slow: reads smaps). None if not available."""
        with self._lock:
            w = self._get(pid)
        if w.exited_at is not None:
            return None
        return self._uss(w)

    # ------------------------------------------------------------------ results
    def series(self, pid: int | None = None) -> list[Sample]:
        """The (bounded, uniformly decimated) samples of ``pid`` (default: this process)."""
        with self._lock:
            rows = self._get(pid).series.rows()
        return [
            Sample(
                t=r[0],
                rss=round(r[1]),
                uss=_opt_int(r[2]),
                cpu_ratio=r[3],
                threads=round(r[4]),
                fds=_opt_int(r[5]),
                children=_opt_int(r[6]),
            )
            for r in rows
        ]

    def heap_points(self) -> list[tuple[float, int]]:
        """(t, bytes in use by malloc) of this process; empty where glibc's mallinfo2 is not."""
        with self._lock:
            return list(self._heap)

    def rss_points(self, pid: int | None = None) -> list[tuple[float, int]]:
        """``(t, rss)`` pairs, the form reports and the leak estimate use."""
        return [(s.t, s.rss) for s in self.series(pid)]

    @property
    def peak_rss(self) -> int:
        """Peak RSS of this process while monitored (bytes)."""
        return self.peak_rss_of(None)

    def peak_rss_of(self, pid: int | None = None) -> int:
        with self._lock:
            return self._get(pid).peak

    def peaks(self) -> dict[int, int]:
        """Peak RSS of every watched process (and this one) by pid."""
        with self._lock:
            return {pid: w.peak for pid, w in self._procs.items()}

    def cpu_ratio(self, pid: int | None = None) -> float | None:
        """Mean CPU over the monitored time as a ratio of one core (None before two samples)."""
        with self._lock:
            w = self._get(pid)
            dt = w.cpu_last_t - w.cpu0_t
            return (w.cpu_last - w.cpu0) / dt if dt > 0 else None

    def leak_rate(
        self, pid: int | None = None, warmup: float = 0.0, origin: float | None = None
    ) -> LeakEstimate:
        """Robust RSS growth (bytes/h) of ``pid``, ignoring samples before ``origin + warmup``
        (``origin``: seconds since start, default the first sample)."""
        pts = self.rss_points(pid)
        return estimate_leak(
            [p[0] for p in pts], [float(p[1]) for p in pts], warmup=warmup, origin=origin
        )

    def metrics(self, pid: int | None = None, warmup: float = 0.0) -> dict[str, float | None]:
        """Threshold metrics of one process: ``peak_rss`` (B), ``leak`` (B/h), ``cpu`` (ratio)."""
        with self._lock:
            w = self._get(pid)
            peak = w.peak if w.series.raw_count else None
        return {
            "peak_rss": None if peak is None else float(peak),
            "leak": self.leak_rate(pid, warmup).gate_bytes_per_h,
            "cpu": self.cpu_ratio(pid),
        }

    def check(
        self, exprs: Iterable[str] | str, pid: int | None = None, warmup: float = 0.0
    ) -> list[ThresholdResult]:
        """Evaluate thresholds such as ``"peak_rss<2GB"``, ``"leak<10MB/h"``, ``"cpu<80%"``
        on ``pid`` (default this process); ``leak`` ignores samples before ``warmup``."""
        return evaluate(parse_thresholds(exprs), self.metrics(pid, warmup))

    def overhead(self) -> dict[str, float]:
        """The sampler's own cost: CPU seconds, ticks, and CPU as a ratio of one core."""
        with self._lock:
            wall = (self._t_end if self._t_end is not None else self.now())
            cpu = self.sampler_cpu_s
            return {
                "cpu_s": cpu,
                "wall_s": wall,
                "ticks": float(self.samples_taken),
                "late_ticks": float(self.late_ticks),
                "cpu_ratio": cpu / wall if wall > 0 else 0.0,
            }
