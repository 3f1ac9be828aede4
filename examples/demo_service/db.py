"""PostgreSQL side of the demo service: schema, pool, and the queries behind every endpoint.

The service uses the *synchronous* ``psycopg_pool.ConnectionPool`` (max 20), called from
Starlette's thread pool. That is deliberate: the service imitates a Flask/gunicorn application
with a 20-connection pool per worker, and its failure modes (a connection never returned, a pool
exhausted under load, threads waiting for a connection) are those of a sync pool used by threads.
It is also the kind of pool ``db_pool_probe.watch()`` instruments.

Connections are in autocommit mode; every unit of work opens an explicit transaction, so a
connection always goes back to the pool clean (no open transaction, isolation unchanged).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow, dict_row
from psycopg_pool import ConnectionPool

from .settings import Settings

Pool: TypeAlias = "ConnectionPool[psycopg.Connection[TupleRow]]"
Conn: TypeAlias = "psycopg.Connection[TupleRow]"

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS user_quota (
    user_id text PRIMARY KEY,
    finalized_count bigint NOT NULL DEFAULT 0,
    finalized_bytes bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS uploads (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    filename text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    path text,
    status text NOT NULL DEFAULT 'uploaded',
    created_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    processed_at timestamptz
);
CREATE TABLE IF NOT EXISTS jobs (
    id bigserial PRIMARY KEY,
    upload_id bigint,
    status text NOT NULL DEFAULT 'pending',
    attempts int NOT NULL DEFAULT 0,
    worker_id text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_pending_idx ON jobs (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (id) WHERE status IN ('done', 'failed');
CREATE INDEX IF NOT EXISTS jobs_upload_idx ON jobs (upload_id);
CREATE INDEX IF NOT EXISTS jobs_processing_idx ON jobs (started_at) WHERE status = 'processing';
CREATE TABLE IF NOT EXISTS jobs_archive (
    id bigint PRIMARY KEY,
    upload_id bigint,
    status text NOT NULL,
    attempts int NOT NULL,
    worker_id text,
    error text,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    archived_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id text PRIMARY KEY,
    pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    processed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    paused boolean NOT NULL DEFAULT false
);
"""


# --------------------------------------------------------------------------- errors


class ServiceError(Exception):
    """An expected refusal, turned into an HTTP response with ``status`` and a JSON body."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class QuotaExceeded(ServiceError):
    status = 429
    code = "quota_exceeded"


class QueueFull(ServiceError):
    """The queue safeguard: no new work while ``queue_limit`` jobs are pending."""

    status = 503
    code = "queue_full"


class Busy(ServiceError):
    """Serialization failures on every attempt: the client should retry later."""

    status = 503
    code = "busy"


# --------------------------------------------------------------------------- pool, schema


def open_pool(settings: Settings) -> Pool:
    """The service's pool. ``search_path`` puts every table in the instance's own schema."""
    return ConnectionPool(
        settings.dsn,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.pool_timeout_s,
        kwargs={
            "autocommit": True,
            "application_name": settings.application_name,
            "options": f"-c search_path={settings.schema}",
        },
        name=f"demo-{settings.schema}",
        open=False,
    )


def create_schema(pool: Pool, schema: str) -> None:
    """Idempotent; an advisory lock lets several instances start on one schema at once."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"stressguard-demo:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement.encode())


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


# --------------------------------------------------------------------------- uploads


def create_upload(pool: Pool, user: str, filename: str, size: int, sha256: str, path: str) -> dict[str, Any]:
    with pool.connection() as conn, conn.transaction():
        conn.execute("INSERT INTO user_quota (user_id) VALUES (%s) ON CONFLICT DO NOTHING", (user,))
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            "INSERT INTO uploads (user_id, filename, size, sha256, path)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id, user_id, filename, size, sha256, status",
            (user, filename, size, sha256, path),
        ).fetchone()
    assert row is not None
    return _jsonable(row)


def get_upload(pool: Pool, upload_id: int) -> dict[str, Any]:
    with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            "SELECT u.id, u.user_id, u.filename, u.size, u.sha256, u.status, u.created_at,"
            " u.finalized_at, u.processed_at, j.id AS job_id, j.status AS job_status"
            " FROM uploads u LEFT JOIN jobs j ON j.upload_id = u.id WHERE u.id = %s"
            " ORDER BY j.id DESC LIMIT 1",
            (upload_id,),
        ).fetchone()
    if row is None:
        raise NotFound(f"upload {upload_id} not found")
    return _jsonable(row)


def get_quota(pool: Pool, user: str) -> dict[str, Any]:
    with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            "SELECT user_id, finalized_count, finalized_bytes FROM user_quota WHERE user_id = %s",
            (user,),
        ).fetchone()
    if row is None:
        raise NotFound(f"user {user!r} has no uploads")
    return _jsonable(row)


@dataclass(frozen=True)
class Finalized:
    upload_id: int
    job_id: int
    user_id: str
    finalized_count: int
    attempts: int
    isolation: str

    def body(self) -> dict[str, object]:
        return {
            "id": self.upload_id,
            "status": "finalized",
            "job_id": self.job_id,
            "user_id": self.user_id,
            "finalized_count": self.finalized_count,
            "attempts": self.attempts,
            "isolation": self.isolation,
        }


def _finalize_once(conn: Conn, upload_id: int, settings: Settings) -> tuple[int, str, int]:
    """One attempt, inside the caller's transaction: safeguards, then read-modify-write.

    The quota counter is read, checked and written back from Python on purpose: it is the
    pattern real services use (the limit check needs the value), and only the isolation level
    decides whether it is correct."""
    row = conn.execute("SELECT user_id, size, status FROM uploads WHERE id = %s", (upload_id,)).fetchone()
    if row is None:
        raise NotFound(f"upload {upload_id} not found")
    user, size, status = row
    if status != "uploaded":
        raise Conflict(f"upload {upload_id} is already {status}", status=status)
    pending_row = conn.execute("SELECT count(*) FROM jobs WHERE status = 'pending'").fetchone()
    pending = int(pending_row[0]) if pending_row else 0
    if pending >= settings.queue_limit:
        raise QueueFull(
            f"{pending} jobs pending (limit {settings.queue_limit})",
            pending=pending,
            limit=settings.queue_limit,
        )
    quota = conn.execute(
        "SELECT finalized_count, finalized_bytes FROM user_quota WHERE user_id = %s", (user,)
    ).fetchone()
    count, nbytes = (int(quota[0]), int(quota[1])) if quota else (0, 0)
    if settings.user_quota and count >= settings.user_quota:
        raise QuotaExceeded(f"user {user!r} reached {settings.user_quota} uploads")
    if settings.finalize_work_s:
        time.sleep(settings.finalize_work_s)  # validation work between the read and the write
    conn.execute(
        "INSERT INTO user_quota (user_id, finalized_count, finalized_bytes) VALUES (%s, %s, %s)"
        " ON CONFLICT (user_id) DO UPDATE SET finalized_count = EXCLUDED.finalized_count,"
        " finalized_bytes = EXCLUDED.finalized_bytes, updated_at = now()",
        (user, count + 1, nbytes + int(size)),
    )
    conn.execute(
        "UPDATE uploads SET status = 'finalized', finalized_at = now() WHERE id = %s",
        (upload_id,),
    )
    job = conn.execute("INSERT INTO jobs (upload_id) VALUES (%s) RETURNING id", (upload_id,)).fetchone()
    assert job is not None
    return int(job[0]), str(user), count + 1


def _retryable(exc: psycopg.Error) -> bool:
    return isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def finalize(
    pool: Pool, upload_id: int, settings: Settings, sleep: Callable[[float], None] = time.sleep
) -> Finalized:
    """Finalise an upload: quota counter, upload row and a new job, atomically.

    Correct: SERIALIZABLE, retried with jittered exponential backoff on serialization failure.
    ``DEMO_BUG_RACE``: READ COMMITTED and no retry (concurrent finalisations lose updates).
    ``DEMO_BUG_NO_RETRY``: SERIALIZABLE but the first serialization failure escapes (a 500).
    """
    bugs = settings.bugs
    if bugs.race:
        with pool.connection() as conn, conn.transaction():
            job_id, user, count = _finalize_once(conn, upload_id, settings)
        return Finalized(upload_id, job_id, user, count, 1, "read committed")
    attempts = 1 if bugs.no_retry else settings.finalize_retries
    for attempt in range(1, attempts + 1):
        try:
            with pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                job_id, user, count = _finalize_once(conn, upload_id, settings)
            return Finalized(upload_id, job_id, user, count, attempt, "serializable")
        except psycopg.Error as exc:
            if bugs.no_retry or not _retryable(exc):
                raise
            if attempt == attempts:
                raise Busy(f"gave up after {attempts} serialization failures", attempts=attempts) from exc
            sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
    raise AssertionError("unreachable")


def queue_counts(pool: Pool) -> dict[str, int]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    counts = {"pending": 0, "processing": 0, "done": 0, "failed": 0}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def latest_heartbeats(pool: Pool, stale_after_s: float) -> dict[str, Any]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => %s)),"
            " count(*), max(last_heartbeat) FROM workers",
            (stale_after_s,),
        ).fetchone()
    assert row is not None
    latest = row[2].isoformat() if row[2] is not None else None
    return {"active": int(row[0]), "total": int(row[1]), "latest_heartbeat": latest}


# --------------------------------------------------------------------------- archival


def archive(pool: Pool, batch: int) -> int:
    """Move up to ``batch`` finished jobs into ``jobs_archive`` in one transaction.

    ``SKIP LOCKED`` lets several archivers run at once without moving a row twice."""
    with pool.connection() as conn, conn.transaction():
        cur = conn.execute(
            "WITH moved AS ("
            " DELETE FROM jobs WHERE id IN ("
            "  SELECT id FROM jobs WHERE status IN ('done', 'failed')"
            "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, upload_id, status, attempts, worker_id, error,"
            "  created_at, started_at, finished_at)"
            " INSERT INTO jobs_archive (id, upload_id, status, attempts, worker_id, error,"
            "  created_at, started_at, finished_at)"
            " SELECT id, upload_id, status, attempts, worker_id, error,"
            "  created_at, started_at, finished_at FROM moved",
            (batch,),
        )
        return cur.rowcount


def archive_stats(pool: Pool) -> dict[str, int]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE status IN ('done', 'failed')),"
            " (SELECT count(*) FROM jobs_archive)"
        ).fetchone()
    assert row is not None
    return {"archivable": int(row[0]), "archived": int(row[1])}


def seed_jobs(pool: Pool, count: int) -> int:
    """Insert ``count`` finished jobs without uploads: data for archival scenarios."""
    with pool.connection() as conn, conn.transaction():
        cur = conn.execute(
            "INSERT INTO jobs (status, attempts, started_at, finished_at)"
            " SELECT 'done', 1, now(), now() FROM generate_series(1, %s)",
            (count,),
        )
        return cur.rowcount


# --------------------------------------------------------------------------- items

_ITEM_COLUMNS = "id, name, value, data, created_at, updated_at"


def list_items(pool: Pool, limit: int, offset: int, settings: Settings) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        if settings.bugs.slow_query:
            # Stands in for a query that lost its index: it holds the pool connection for
            # DEMO_SLOW_QUERY_MS, so p95 breaks and, under load, the pool runs dry.
            conn.execute("SELECT pg_sleep(%s)", (settings.slow_query_s,))
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY id LIMIT %s OFFSET %s",
            (limit, offset),
        ).fetchall()
    return [_jsonable(r) for r in rows]


def _fetch_item(conn: Conn, item_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,)).fetchone()
    return _jsonable(row) if row is not None else None


def get_item(pool: Pool, item_id: int, leaked: list[Conn] | None) -> dict[str, Any]:
    """Read one item. With ``leaked`` (DEMO_BUG_CONN_LEAK) the connection is never returned."""
    conn = pool.getconn()
    if leaked is not None:
        # The bug: a hand-written getconn() path with no putconn(). The connection is kept
        # referenced (as a request-scoped cache would) so it is never garbage-collected.
        leaked.append(conn)
        row = _fetch_item(conn, item_id)
    else:
        try:
            row = _fetch_item(conn, item_id)
        finally:
            pool.putconn(conn)
    if row is None:
        raise NotFound(f"item {item_id} not found")
    return row


def create_item(pool: Pool, name: str, value: int, data: str) -> dict[str, Any]:
    with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            f"INSERT INTO items (name, value, data) VALUES (%s, %s, %s::jsonb) RETURNING {_ITEM_COLUMNS}",
            (name, value, data),
        ).fetchone()
    assert row is not None
    return _jsonable(row)


def update_item(
    pool: Pool, item_id: int, name: str | None, value: int | None, data: str | None
) -> dict[str, Any]:
    with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            "UPDATE items SET name = coalesce(%s, name), value = coalesce(%s, value),"
            " data = coalesce(%s::jsonb, data), updated_at = now() WHERE id = %s"
            f" RETURNING {_ITEM_COLUMNS}",
            (name, value, data, item_id),
        ).fetchone()
    if row is None:
        raise NotFound(f"item {item_id} not found")
    return _jsonable(row)


def delete_item(pool: Pool, item_id: int) -> None:
    with pool.connection() as conn:
        cur = conn.execute("DELETE FROM items WHERE id = %s", (item_id,))
        if cur.rowcount == 0:
            raise NotFound(f"item {item_id} not found")
