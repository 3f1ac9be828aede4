"""The demo upload service: a Starlette ASGI app imitating a real upload backend.

Endpoints (JSON everywhere):

- ``POST /api/uploads`` — raw request body streamed to disk, sha256 computed while streaming and
  compared with the ``X-Content-SHA256`` header (422 on mismatch). Headers ``X-User`` and
  ``X-Filename`` are optional. 201 with the upload row (status ``uploaded``).
- ``POST /api/uploads/{id}/finalize`` — SERIALIZABLE transaction with retry: queue safeguard
  (503 ``queue_full`` at ``DEMO_QUEUE_LIMIT`` = 50 pending jobs), per-user quota counter, upload
  row, new job. 503 ``busy`` when every retry hit a serialization failure.
- ``GET /api/uploads/{id}``, ``GET /api/users/{user}/quota``.
- ``GET /api/worker/status`` (health, heartbeat age, processed, queue depth),
  ``POST /api/worker/pause`` and ``/resume``.
- ``GET|POST /api/items``, ``GET|PUT|DELETE /api/items/{id}`` — a small CRUD API.
- ``POST /api/archive?batch=N`` — move up to N finished jobs to ``jobs_archive``;
  ``GET /api/archive/stats``; ``POST /api/jobs/seed?count=N`` makes finished jobs to archive.
- ``GET /healthz``, ``GET /api/debug/stats`` (RSS, leaked buffers/connections, pool stats).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import db
from .settings import Settings
from .worker import Worker

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_BUFFER = 1 << 20  # disk writes and hashing happen in 1 MiB pieces, off the event loop


class ServiceState:
    """Everything the app holds between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = db.open_pool(settings)
        self.worker: Worker | None = None
        self.uploads_dir = settings.data_dir / "uploads"
        # DEMO_BUG_LEAK: buffers that are never released. DEMO_BUG_CONN_LEAK: connections.
        self.leaked_buffers: list[bytearray] = []
        self.leaked_connections: list[db.Conn] = []
        self.started = time.monotonic()

    def open(self) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.pool.open(wait=True, timeout=self.settings.pool_timeout_s)
        db.create_schema(self.pool, self.settings.schema)
        if self.settings.worker_enabled:
            self.worker = Worker(self.pool, self.settings)
            self.worker.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for conn in self.leaked_connections:
            with contextlib.suppress(Exception):
                conn.close()
        self.pool.close(timeout=5.0)


class _Sink:
    """Hash and write an upload; called from the thread pool so disk stalls block no one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        self.file = path.open("wb")

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.file.write(data)

    def close(self) -> None:
        self.file.close()


def _error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise db.ServiceError(f"invalid {name}={raw!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise db.ServiceError(f"invalid {name}={value}: allowed {lo}..{hi}")
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise db.ServiceError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise db.ServiceError("the body must be a JSON object")
    return body


def _item_fields(body: dict[str, Any], *, partial: bool) -> tuple[str | None, int | None, str | None]:
    name = body.get("name")
    value = body.get("value")
    data = body.get("data")
    if name is None and not partial:
        raise db.ServiceError("'name' is required")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise db.ServiceError("'name' must be a string of 1 to 200 characters")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63):
        raise db.ServiceError("'value' must be a 64-bit integer")
    if data is not None and not isinstance(data, dict):
        raise db.ServiceError("'data' must be a JSON object")
    encoded = json.dumps(data) if data is not None else None
    if not partial:
        return name, 0 if value is None else value, encoded or "{}"
    return name, value, encoded


def _health(worker: dict[str, Any] | None, queue: dict[str, int] | None, settings: Settings) -> str:
    if worker is None:
        return "degraded"  # the service runs without a worker (DEMO_WORKER=0)
    stale = worker["heartbeat_age_s"] is None or worker["heartbeat_age_s"] > max(
        3 * settings.heartbeat_s + 1.0, 5.0
    )
    if not worker["alive"] or stale or queue is None:
        return "critical"
    if queue["pending"] >= settings.queue_limit:
        return "critical"
    if worker["paused"]:
        return "paused"
    if queue["pending"] >= 0.8 * settings.queue_limit or worker["recent_error"]:
        return "degraded"
    return "healthy"


def create_app(settings: Settings) -> Starlette:
    state = ServiceState(settings)
    pool = state.pool

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "pid": os.getpid(),
                "schema": settings.schema,
                "bugs": settings.bugs.enabled(),
            }
        )

    async def create_upload(request: Request) -> Response:
        user = request.headers.get("x-user", "demo")
        if not 0 < len(user) <= 100:
            raise db.ServiceError("X-User must have 1 to 100 characters")
        filename = Path(request.headers.get("x-filename", "upload.bin")).name[:255] or "upload.bin"
        expected = request.headers.get("x-content-sha256")
        if expected is not None:
            expected = expected.strip().lower()
            if not _SHA256_RE.match(expected):
                raise db.ServiceError("X-Content-SHA256 must be 64 hex digits")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            return _error(413, "too_large", f"limit is {settings.max_upload_bytes} bytes")

        path = state.uploads_dir / f"{uuid.uuid4().hex}.bin"
        part = path.with_name(path.name + ".part")
        size = 0
        head = bytearray()
        pending = bytearray()
        sink = await run_in_threadpool(_Sink, part)
        try:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        return _error(413, "too_large", f"limit is {settings.max_upload_bytes} B")
                    if settings.bugs.leak and len(head) < settings.leak_bytes:
                        head += chunk[: settings.leak_bytes - len(head)]
                    pending += chunk
                    if len(pending) >= _BUFFER:
                        await run_in_threadpool(sink.write, bytes(pending))
                        pending.clear()
                if pending:
                    await run_in_threadpool(sink.write, bytes(pending))
            except ClientDisconnect:
                return Response(status_code=400)  # the client is gone; nothing is kept
            finally:
                await run_in_threadpool(sink.close)
            digest = sink.hash.hexdigest()
            if expected is not None and expected != digest:
                return _error(
                    422,
                    "sha256_mismatch",
                    "body does not match X-Content-SHA256",
                    expected=expected,
                    actual=digest,
                    size=size,
                )
            os.replace(part, path)
            try:
                row = await run_in_threadpool(db.create_upload, pool, user, filename, size, digest, str(path))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        finally:
            part.unlink(missing_ok=True)  # nothing when the upload succeeded (renamed)
        if settings.bugs.leak:
            # The bug: a per-upload buffer kept in a list that lives as long as the process.
            # Filled (not just allocated) so the pages really count in RSS.
            buffer = bytearray(b"\xa5") * settings.leak_bytes
            buffer[: len(head)] = head
            state.leaked_buffers.append(buffer)
        return JSONResponse({**row, "verified": expected is not None}, status_code=201)

    async def finalize_upload(request: Request) -> Response:
        upload_id: int = request.path_params["upload_id"]
        result = await run_in_threadpool(db.finalize, pool, upload_id, settings)
        if state.worker is not None:
            state.worker.wake()
        return JSONResponse(result.body())

    async def get_upload(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(db.get_upload, pool, request.path_params["upload_id"]))

    async def get_quota(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(db.get_quota, pool, request.path_params["user"]))

    async def worker_status(request: Request) -> Response:
        worker = state.worker.status() if state.worker is not None else None
        queue: dict[str, int] | None = None
        workers: dict[str, Any] | None = None
        db_error = None
        try:
            queue = await run_in_threadpool(db.queue_counts, pool)
            stale_after = max(3 * settings.heartbeat_s + 1.0, 5.0)
            workers = await run_in_threadpool(db.latest_heartbeats, pool, stale_after)
        except psycopg.Error as exc:  # includes PoolTimeout: report it, do not hang the probe
            db_error = f"{type(exc).__name__}: {exc}"
        return JSONResponse(
            {
                "health": _health(worker, queue, settings),
                "heartbeat_age_s": worker["heartbeat_age_s"] if worker else None,
                "processed": worker["processed"] if worker else 0,
                "queue_depth": queue["pending"] if queue else None,
                "queue": None if queue is None else {**queue, "limit": settings.queue_limit},
                "worker": worker,
                "workers": workers,
                "latest_heartbeat": workers["latest_heartbeat"] if workers else None,
                "database_error": db_error,
            }
        )

    def _control(pause: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            worker = state.worker
            if worker is None:
                return _error(409, "no_worker", "the worker is disabled (DEMO_WORKER=0)")
            await run_in_threadpool(worker.pause if pause else worker.resume)
            return JSONResponse({"paused": worker.paused})

        return endpoint

    async def list_items(request: Request) -> Response:
        limit = _int_param(request, "limit", 50, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        rows = await run_in_threadpool(db.list_items, pool, limit, offset, settings)
        return JSONResponse({"items": rows, "limit": limit, "offset": offset})

    async def create_item(request: Request) -> Response:
        name, value, data = _item_fields(await _json_object(request), partial=False)
        assert name is not None and value is not None and data is not None
        row = await run_in_threadpool(db.create_item, pool, name, value, data)
        return JSONResponse(row, status_code=201)

    async def get_item(request: Request) -> Response:
        leaked = state.leaked_connections if settings.bugs.conn_leak else None
        row = await run_in_threadpool(db.get_item, pool, request.path_params["item_id"], leaked)
        return JSONResponse(row)

    async def update_item(request: Request) -> Response:
        name, value, data = _item_fields(await _json_object(request), partial=True)
        row = await run_in_threadpool(db.update_item, pool, request.path_params["item_id"], name, value, data)
        return JSONResponse(row)

    async def delete_item(request: Request) -> Response:
        await run_in_threadpool(db.delete_item, pool, request.path_params["item_id"])
        return Response(status_code=204)

    async def archive(request: Request) -> Response:
        batch = _int_param(request, "batch", 1000, 1, 100_000)
        started = time.perf_counter()
        moved = await run_in_threadpool(db.archive, pool, batch)
        return JSONResponse(
            {"archived": moved, "batch": batch, "seconds": round(time.perf_counter() - started, 4)}
        )

    async def archive_stats(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(db.archive_stats, pool))

    async def seed_jobs(request: Request) -> Response:
        count = _int_param(request, "count", 1000, 1, 1_000_000)
        return JSONResponse({"inserted": await run_in_threadpool(db.seed_jobs, pool, count)})

    async def debug_stats(request: Request) -> Response:
        return JSONResponse(
            {
                "pid": os.getpid(),
                "rss_bytes": psutil.Process().memory_info().rss,
                "uptime_s": round(time.monotonic() - state.started, 3),
                "bugs": settings.bugs.enabled(),
                "leaked_buffers": len(state.leaked_buffers),
                "leaked_bytes": sum(len(b) for b in state.leaked_buffers),
                "leaked_connections": len(state.leaked_connections),
                "pool": pool.get_stats(),
            }
        )

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, db.ServiceError)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def on_pool_timeout(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": "pool_timeout", "message": str(exc)},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def on_database_error(request: Request, exc: Exception) -> Response:
        # What an unhandled database error looks like to a client: a 500.
        sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None)
        return JSONResponse(
            {
                "error": "database_error",
                "type": type(exc).__name__,
                "sqlstate": sqlstate,
                "message": str(exc),
            },
            status_code=500,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(state.open)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    routes = [
        Route("/healthz", healthz),
        Route("/api/uploads", create_upload, methods=["POST"]),
        Route("/api/uploads/{upload_id:int}", get_upload),
        Route("/api/uploads/{upload_id:int}/finalize", finalize_upload, methods=["POST"]),
        Route("/api/users/{user}/quota", get_quota),
        Route("/api/worker/status", worker_status),
        Route("/api/worker/pause", _control(True), methods=["POST"]),
        Route("/api/worker/resume", _control(False), methods=["POST"]),
        Route("/api/items", list_items, methods=["GET"]),
        Route("/api/items", create_item, methods=["POST"]),
        Route("/api/items/{item_id:int}", get_item, methods=["GET"]),
        Route("/api/items/{item_id:int}", update_item, methods=["PUT"]),
        Route("/api/items/{item_id:int}", delete_item, methods=["DELETE"]),
        Route("/api/archive", archive, methods=["POST"]),
        Route("/api/archive/stats", archive_stats),
        Route("/api/jobs/seed", seed_jobs, methods=["POST"]),
        Route("/api/debug/stats", debug_stats),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            db.ServiceError: on_service_error,
            PoolTimeout: on_pool_timeout,
            psycopg.Error: on_database_error,
        },
    )
    app.state.service = state
    return app
