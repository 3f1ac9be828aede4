"""The background worker: claims pending jobs, verifies the stored upload, marks it processed.

A thread (not an asyncio task) because its work is blocking: sha256 over a file on disk and
psycopg calls on the service's sync pool — the same 20 connections the requests use, as in the
real service, so a pool exhausted by requests starves the worker and its heartbeat goes stale.

The heartbeat is written to the ``workers`` table (and kept in memory) every ``heartbeat_s``;
jobs stuck in ``processing`` longer than ``job_timeout_s`` go back to ``pending`` (recovery after
a worker died mid-job).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .db import Pool
from .settings import Settings


class Worker:
    def __init__(self, pool: Pool, settings: Settings, worker_id: str | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.worker_id = worker_id or f"worker-{os.getpid()}"
        self.processed = 0
        self.failed = 0
        self.last_error: str | None = None
        self._last_error_at: float | None = None
        self._heartbeat_mono: float | None = None
        self._heartbeat_wall: datetime | None = None
        self._next_heartbeat = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._paused = threading.Event()
        self._claim_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pause(self) -> None:
        """Stop claiming jobs. When this returns, no claim is in flight (the queue only grows)."""
        with self._claim_lock:
            self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    def wake(self) -> None:
        """New work arrived: process it now instead of at the next poll."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def status(self) -> dict[str, Any]:
        age = None
        if self._heartbeat_mono is not None:
            age = round(time.monotonic() - self._heartbeat_mono, 3)
        recent_error = self._last_error_at is not None and time.monotonic() - self._last_error_at < 10.0
        return {
            "id": self.worker_id,
            "alive": self.alive,
            "paused": self.paused,
            "processed": self.processed,
            "failed": self.failed,
            "heartbeat_age_s": age,
            "last_heartbeat": self._heartbeat_wall.isoformat() if self._heartbeat_wall else None,
            "last_error": self.last_error,
            "recent_error": recent_error,
        }

    # ----------------------------------------------------------------- loop

    def _run(self) -> None:
        poll = self.settings.worker_poll_s
        while not self._stop.is_set():
            did = 0
            try:
                self._maybe_heartbeat()
                if not self._paused.is_set():
                    with self._claim_lock:
                        if not self._paused.is_set():
                            did = self._process_batch()
            except Exception as exc:  # keep running: a worker that dies silently is the bug
                self._record_error(exc)
                self._stop.wait(min(1.0, 10 * poll))
                continue
            if not did:
                self._wake.wait(poll)
                self._wake.clear()

    def _record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = time.monotonic()

    def _maybe_heartbeat(self) -> None:
        if time.monotonic() < self._next_heartbeat:
            return
        with self.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO workers (worker_id, pid, processed, failed, paused)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET"
                " last_heartbeat = now(), pid = EXCLUDED.pid, processed = EXCLUDED.processed,"
                " failed = EXCLUDED.failed, paused = EXCLUDED.paused RETURNING last_heartbeat",
                (self.worker_id, os.getpid(), self.processed, self.failed, self.paused),
            ).fetchone()
            # Recovery: a job 'processing' for longer than the timeout lost its worker.
            conn.execute(
                "UPDATE jobs SET status = 'pending', worker_id = NULL WHERE status = 'processing'"
                " AND started_at < now() - make_interval(secs => %s)",
                (self.settings.job_timeout_s,),
            )
        self._heartbeat_mono = time.monotonic()
        self._heartbeat_wall = row[0] if row else datetime.now(timezone.utc)
        self._next_heartbeat = self._heartbeat_mono + self.settings.heartbeat_s

    def _process_batch(self) -> int:
        with self.pool.connection() as conn:
            jobs = conn.execute(
                "UPDATE jobs SET status = 'processing', started_at = now(), worker_id = %s,"
                " attempts = attempts + 1 WHERE id IN (SELECT id FROM jobs"
                " WHERE status = 'pending' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING id, upload_id",
                (self.worker_id, self.settings.worker_batch),
            ).fetchall()
        for job_id, upload_id in sorted(jobs):
            if self._stop.is_set():
                break  # unfinished claims are recovered by the job timeout
            self._process(int(job_id), None if upload_id is None else int(upload_id))
            self._maybe_heartbeat()
        return len(jobs)

    def _process(self, job_id: int, upload_id: int | None) -> None:
        error: str | None = None
        path: Path | None = None
        if upload_id is not None:
            with self.pool.connection() as conn:
                row = conn.execute("SELECT path, sha256 FROM uploads WHERE id = %s", (upload_id,)).fetchone()
            if row is None:
                error = f"upload {upload_id} vanished"
            elif row[0] is not None:
                path = Path(row[0])
                error = _verify(path, str(row[1]))  # no connection is held while hashing
        if self.settings.job_work_s:
            self._stop.wait(self.settings.job_work_s)
        status = "failed" if error else "done"
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE jobs SET status = %s, error = %s, finished_at = now() WHERE id = %s",
                (status, error, job_id),
            )
            if upload_id is not None:
                conn.execute(
                    "UPDATE uploads SET status = %s, processed_at = now(),"
                    " path = CASE WHEN %s THEN path END WHERE id = %s",
                    ("failed" if error else "processed", self.settings.keep_files, upload_id),
                )
        if path is not None and not self.settings.keep_files:
            with contextlib.suppress(OSError):
                path.unlink()  # the blob "moved to object storage": disk use stays flat
        if error:
            self.failed += 1
            self.last_error = error
            self._last_error_at = time.monotonic()
        else:
            self.processed += 1


def _verify(path: Path, expected: str) -> str | None:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        return f"cannot read {path.name}: {exc}"
    if h.hexdigest() != expected:
        return f"sha256 mismatch on disk for {path.name}"
    return None
