"""Fixtures shared by the examples: the demo upload service and a small client for its API.

``demo_service`` starts the service once per session (per xdist worker) on the database that
``stressguard_dsn`` gives (with no DSN set: an embedded throw-away PostgreSQL), in a schema of its
own that is dropped at the end. The ``DEMO_BUG_*`` variables of your environment reach the
service: that is how you watch a gate turn red, e.g.

    DEMO_BUG_LEAK=1 pytest examples/test_upload_soak.py --stressguard-time-scale=0.01

``demo_api`` wraps ``stressguard_http`` (the plugin's fast async client, which records every call
under its endpoint name) with the calls the examples make. Copy both into your own conftest.py
and point them at your service.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# examples/ is not installed: make `examples.demo_service` importable in every import mode.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from examples.demo_service.launcher import DemoService, start_demo_service  # noqa: E402
from examples.demo_service.settings import Settings  # noqa: E402

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _dsn(request: pytest.FixtureRequest) -> str:
    try:
        return str(request.getfixturevalue("stressguard_dsn"))
    except pytest.FixtureLookupError:  # the plugin is disabled (-p no:stressguard)
        return os.environ.get("STRESSGUARD_DSN") or os.environ.get("DATABASE_URL") or LOCAL_DSN


@pytest.fixture(scope="session")
def demo_service(request: pytest.FixtureRequest) -> Iterator[DemoService]:
    """The running demo service: ``.url``, ``.pid`` (for ``soak(watch=...)`` and
    ``resource_monitor.watch``), ``.dsn`` and ``.schema`` (its tables), ``.stop()``.

    Its upload directory is a fresh temporary directory that ``stop()`` removes. It runs with
    ``MALLOC_ARENA_MAX=2``, as thread-pool Python services are usually deployed: glibc otherwise
    gives each of its 40 threads an arena of its own, and RSS creeps for minutes before it
    plateaus, which a short soak cannot tell from a leak."""
    service = start_demo_service(_dsn(request),
                                 env={"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")})
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def demo_url(demo_service: DemoService) -> str:
    return demo_service.url


@pytest.fixture
def service_settings(demo_service: DemoService) -> Settings:
    """The service's settings, to call its data layer (``examples.demo_service.db``) from the
    test process: same database, same schema (its tables), same ``DEMO_*`` switches."""
    return Settings.from_env(os.environ, dsn=demo_service.dsn, schema=demo_service.schema,
                             data_dir=Path(tempfile.gettempdir()))


class DemoError(AssertionError):
    """A call the service refused. The message is stable per endpoint and cause
    (``POST /api/uploads/{id}/finalize: 500 database_error 40001``), so the load report groups
    errors by cause, and a failed example names it."""


class DemoApi:
    """The demo service's API as the examples use it, on ``stressguard_http``.

    Every call is recorded under its endpoint name (``POST /api/uploads``), which is what
    endpoint-scoped thresholds such as ``"p95{POST /api/uploads}<2s"`` refer to.
    """

    def __init__(self, http: Any, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, name: str, *, ok: tuple[int, ...] = (200, 201),
                   **kw: Any) -> Any:
        response = await self.http.request(method, self.url + path, name=name,
                                           raise_for_status=False, **kw)
        if response.status not in ok:
            raise DemoError(f"{name}: {response.status} {_cause(response)}")
        return response.json() if response.body else None

    async def upload(self, file: Any, user: str, *, name: str = "POST /api/uploads") -> dict[str, Any]:
        """Stream ``file`` (from ``upload_file_factory``) with its sha256: the service checks it."""
        headers = {"X-User": user, "X-Filename": file.name, "X-Content-SHA256": file.sha256,
                   "Content-Length": str(file.size)}
        row: dict[str, Any] = await self.call("POST", "/api/uploads", name,
                                              data=file.async_stream(chunk_size="256KiB"),
                                              headers=headers)
        return row

    async def upload_bytes(self, body: bytes, user: str) -> dict[str, Any]:
        row: dict[str, Any] = await self.call("POST", "/api/uploads", "POST /api/uploads",
                                              data=body, headers={"X-User": user})
        return row

    async def finalize(self, upload_id: int) -> dict[str, Any]:
        row: dict[str, Any] = await self.call("POST", f"/api/uploads/{upload_id}/finalize",
                                              "POST /api/uploads/{id}/finalize")
        return row

    async def quota(self, user: str) -> dict[str, Any]:
        row: dict[str, Any] = await self.call("GET", f"/api/users/{user}/quota",
                                              "GET /api/users/{user}/quota")
        return row

    async def create_item(self, name: str, value: int = 0, data: dict[str, Any] | None = None) -> Any:
        return await self.call("POST", "/api/items", "POST /api/items",
                               json={"name": name, "value": value, "data": data or {}})

    async def get_item(self, item_id: int, timeout: float | None = None) -> Any:
        return await self.call("GET", f"/api/items/{item_id}", "GET /api/items/{id}", timeout=timeout)

    async def update_item(self, item_id: int, **fields: Any) -> Any:
        return await self.call("PUT", f"/api/items/{item_id}", "PUT /api/items/{id}", json=fields)

    async def list_items(self, limit: int = 20, offset: int = 0) -> Any:
        return await self.call("GET", f"/api/items?limit={limit}&offset={offset}", "GET /api/items")

    async def delete_item(self, item_id: int) -> None:
        await self.call("DELETE", f"/api/items/{item_id}", "DELETE /api/items/{id}", ok=(204,))

    async def seed_jobs(self, count: int) -> int:
        """Make ``count`` finished jobs (what the workers produce all day) for the archiver."""
        row = await self.call("POST", f"/api/jobs/seed?count={count}", "POST /api/jobs/seed")
        return int(row["inserted"])

    async def archive(self, batch: int) -> int:
        """Move up to ``batch`` finished jobs to the archive in one transaction; how many moved."""
        row = await self.call("POST", f"/api/archive?batch={batch}", "POST /api/archive")
        return int(row["archived"])

    async def stats(self) -> dict[str, Any]:
        """RSS, leaked buffers/connections and the service's pool statistics."""
        row: dict[str, Any] = await self.call("GET", "/api/debug/stats", "GET /api/debug/stats")
        return row


def _cause(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or "(no body)"
    if not isinstance(body, dict):
        return response.reason
    cause = str(body.get("error", response.reason))
    if body.get("sqlstate"):
        cause += f" {body['sqlstate']} ({body.get('type', '')})"
    return cause


@pytest.fixture
def demo_api(stressguard_http: Any, demo_service: DemoService) -> DemoApi:
    return DemoApi(stressguard_http, demo_service.url)
