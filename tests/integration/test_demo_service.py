"""The demo upload service of examples/, against a real PostgreSQL, over loopback HTTP.

Needs PostgreSQL: ``STRESSGUARD_DSN`` or the local default below. Every service instance uses its
own schema, dropped when it stops.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from pytest_stressguard.core.files import UploadFile, UploadFileFactory

# examples/ is not an installed package: import it from the repository root.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.demo_service.launcher import (  # noqa: E402
    NO_BUGS,
    DemoService,
    DemoServiceError,
    start_demo_service,
)

DSN = os.environ.get("STRESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TIMEOUT = httpx.Timeout(30.0)

pytestmark = pytest.mark.integration


def _postgres_error() -> str | None:
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_postgres() -> None:
    error = _postgres_error()
    if error is not None:
        pytest.skip(f"PostgreSQL at {DSN!r} is not reachable: {error}")


def start(tmp_path: Path, **env: str) -> DemoService:
    return start_demo_service(DSN, env={**NO_BUGS, **env}, data_dir=tmp_path)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    # A 10 ms pause between reading the quota and writing it makes concurrent finalisations
    # overlap for sure, so the SERIALIZABLE retry path is exercised, not just hoped for.
    svc = start(tmp_path_factory.mktemp("demo"), DEMO_HEARTBEAT_S="0.2", DEMO_FINALIZE_WORK_MS="10")
    yield svc
    svc.stop()


@pytest.fixture
def client(service: DemoService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UploadFileFactory]:
    factory = UploadFileFactory(tmp_path_factory.mktemp("files"), register_atexit=False)
    yield factory
    factory.cleanup()


def unique_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def upload(client: httpx.Client, body: bytes | UploadFile, user: str = "demo") -> dict[str, Any]:
    if isinstance(body, UploadFile):
        content: Any = body.stream(chunk_size=64 * 1024)  # chunked, never the whole file
        digest = body.sha256
    else:
        content, digest = body, hashlib.sha256(body).hexdigest()
    r = client.post(
        "/api/uploads",
        content=content,
        headers={"X-Content-SHA256": digest, "X-User": user, "X-Filename": "f.bin"},
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def concurrently(n: int, fn: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Run fn(0..n-1) in n threads released together by a barrier."""
    barrier = threading.Barrier(n)
    results: list[httpx.Response | BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    out = []
    for r in results:
        if not isinstance(r, httpx.Response):
            raise AssertionError(f"a concurrent request failed: {r!r}")
        out.append(r)
    return out


def finalize_all_at_once(url: str, upload_ids: list[int]) -> list[httpx.Response]:
    clients = [httpx.Client(base_url=url, timeout=TIMEOUT) for _ in upload_ids]
    try:
        for c in clients:  # connect first so the barrier releases requests, not handshakes
            c.get("/healthz")
        return concurrently(
            len(upload_ids), lambda i: clients[i].post(f"/api/uploads/{upload_ids[i]}/finalize")
        )
    finally:
        for c in clients:
            c.close()


def quota(client: httpx.Client, user: str) -> int:
    r = client.get(f"/api/users/{user}/quota")
    assert r.status_code == 200, r.text
    count: int = r.json()["finalized_count"]
    return count


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- uploads


def test_upload_is_streamed_verified_finalized_and_processed(
    client: httpx.Client, service: DemoService, files: UploadFileFactory
) -> None:
    f = files("3MB", seed=1)
    user = unique_user()
    row = upload(client, f, user)
    assert row["size"] == f.size and row["sha256"] == f.sha256
    assert row["status"] == "uploaded" and row["verified"] is True

    r = client.post(f"/api/uploads/{row['id']}/finalize")
    assert r.status_code == 200, r.text
    assert r.json()["isolation"] == "serializable" and r.json()["finalized_count"] == 1
    again = client.post(f"/api/uploads/{row['id']}/finalize")
    assert again.status_code == 409

    # The worker re-hashes the stored file, marks it processed and removes the blob.
    def processed() -> bool:
        return bool(client.get(f"/api/uploads/{row['id']}").json()["status"] == "processed")

    wait_for(processed, what="the worker to process the upload")
    assert client.get(f"/api/uploads/{row['id']}").json()["job_status"] == "done"
    assert quota(client, user) == 1
    assert client.get("/api/uploads/999999999").status_code == 404


def test_upload_with_a_wrong_sha256_is_refused_and_not_kept(
    client: httpx.Client, service: DemoService
) -> None:
    before = set((service.data_dir / "uploads").iterdir())
    r = client.post("/api/uploads", content=b"x" * 5000, headers={"X-Content-SHA256": "0" * 64})
    assert r.status_code == 422
    assert r.json()["actual"] == hashlib.sha256(b"x" * 5000).hexdigest()
    assert set((service.data_dir / "uploads").iterdir()) <= before
    bad = client.post("/api/uploads", content=b"x", headers={"X-Content-SHA256": "nothex"})
    assert bad.status_code == 400


def test_an_upload_aborted_midway_leaves_no_file(client: httpx.Client, service: DemoService) -> None:
    uploads = service.data_dir / "uploads"
    before = set(uploads.iterdir())
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"y" * 100_000
        )
        wait_for(lambda: any(p.suffix == ".part" for p in uploads.iterdir()), what="the partial file")
    wait_for(lambda: set(uploads.iterdir()) <= before, what="the partial file to be removed")
    assert client.get("/healthz").status_code == 200


# ----------------------------------------------------------------------------- finalisation


@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_finalisations_all_succeed_thanks_to_retry(
    client: httpx.Client, service: DemoService, n: int
) -> None:
    retried = False
    for _ in range(5):  # until the retry path was seen at least once
        user = unique_user()
        ids = [upload(client, f"{user}-{i}".encode(), user)["id"] for i in range(n)]
        responses = finalize_all_at_once(service.url, ids)
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
        assert quota(client, user) == n  # no lost update
        retried = any(r.json()["attempts"] > 1 for r in responses)
        if retried:
            break
    assert retried, "concurrent SERIALIZABLE finalisations never conflicted"


def test_race_bug_loses_updates(tmp_path: Path) -> None:
    with start(tmp_path, DEMO_BUG_RACE="1") as svc, httpx.Client(base_url=svc.url, timeout=TIMEOUT) as c:
        assert c.get("/healthz").json()["bugs"] == ["race"]
        n, counts = 8, []
        for _ in range(3):
            user = unique_user()
            ids = [upload(c, f"{user}-{i}".encode(), user)["id"] for i in range(n)]
            responses = finalize_all_at_once(svc.url, ids)
            assert all(r.status_code == 200 for r in responses)  # nothing tells the client
            assert {r.json()["isolation"] for r in responses} == {"read committed"}
            counts.append(quota(c, user))
            if counts[-1] < n:
                break
        assert min(counts) < n, f"no lost update in {len(counts)} rounds: {counts}"


def test_no_retry_bug_turns_conflicts_into_500s(tmp_path: Path) -> None:
    with (
        start(tmp_path, DEMO_BUG_NO_RETRY="1", DEMO_FINALIZE_WORK_MS="20") as svc,
        httpx.Client(base_url=svc.url, timeout=TIMEOUT) as c,
    ):
        failures: list[dict[str, Any]] = []
        for _ in range(3):
            user = unique_user()
            ids = [upload(c, f"{user}-{i}".encode(), user)["id"] for i in range(4)]
            responses = finalize_all_at_once(svc.url, ids)
            failures = [r.json() for r in responses if r.status_code == 500]
            assert all(r.status_code in (200, 500) for r in responses)
            if failures:
                break
        assert failures, "no serialization failure surfaced"
        assert {f["sqlstate"] for f in failures} == {"40001"}


def test_queue_safeguard_refuses_work_at_50_pending(client: httpx.Client, service: DemoService) -> None:
    assert client.post("/api/worker/pause").json() == {"paused": True}
    try:
        pending = client.get("/api/worker/status").json()["queue"]["pending"]
        user = unique_user()
        ids = [upload(client, f"q{i}".encode(), user)["id"] for i in range(51 - pending)]
        for upload_id in ids[:-1]:
            r = client.post(f"/api/uploads/{upload_id}/finalize")
            assert r.status_code == 200, r.text
        refused = client.post(f"/api/uploads/{ids[-1]}/finalize")
        assert refused.status_code == 503
        assert refused.json()["error"] == "queue_full" and refused.json()["pending"] == 50
        assert refused.headers["retry-after"] == "1"
        status = client.get("/api/worker/status").json()
        assert status["queue_depth"] == 50 and status["health"] == "critical"
        assert client.get(f"/api/uploads/{ids[-1]}").json()["status"] == "uploaded"
    finally:
        assert client.post("/api/worker/resume").json() == {"paused": False}
    wait_for(
        lambda: client.get("/api/worker/status").json()["queue_depth"] == 0,
        what="the worker to drain the queue",
    )
    # Room again: the refused upload goes through now.
    assert client.post(f"/api/uploads/{ids[-1]}/finalize").status_code == 200


# ----------------------------------------------------------------------------- worker


def test_worker_status_reports_a_live_heartbeat(client: httpx.Client) -> None:
    first = client.get("/api/worker/status").json()
    assert first["worker"]["alive"] is True
    assert first["heartbeat_age_s"] is not None and first["heartbeat_age_s"] < 5.0
    assert first["workers"]["active"] >= 1
    wait_for(
        lambda: client.get("/api/worker/status").json()["latest_heartbeat"] != first["latest_heartbeat"],
        what="a new heartbeat",
    )
    user = unique_user()
    row = upload(client, b"heartbeat", user)
    assert client.post(f"/api/uploads/{row['id']}/finalize").status_code == 200
    wait_for(
        lambda: client.get("/api/worker/status").json()["processed"] > first["processed"],
        what="processed to grow",
    )
    assert client.get("/api/worker/status").json()["health"] in ("healthy", "degraded")


# ----------------------------------------------------------------------------- CRUD, archival


def test_items_crud_round_trip(client: httpx.Client) -> None:
    created = client.post("/api/items", json={"name": "widget", "value": 7, "data": {"a": 1}})
    assert created.status_code == 201
    item = created.json()
    assert (item["name"], item["value"], item["data"]) == ("widget", 7, {"a": 1})
    assert client.get(f"/api/items/{item['id']}").json() == item
    listed = client.get("/api/items", params={"limit": 1000}).json()
    assert item in listed["items"] and listed["limit"] == 1000
    assert len(client.get("/api/items", params={"limit": 1}).json()["items"]) == 1
    updated = client.put(f"/api/items/{item['id']}", json={"value": 8}).json()
    assert (updated["name"], updated["value"]) == ("widget", 8)
    assert client.delete(f"/api/items/{item['id']}").status_code == 204
    assert client.get(f"/api/items/{item['id']}").status_code == 404
    assert client.delete(f"/api/items/{item['id']}").status_code == 404
    assert client.post("/api/items", json={"value": 1}).status_code == 400
    assert client.post("/api/items", content=b"[1]").status_code == 400
    assert client.get("/api/items", params={"limit": 0}).status_code == 400


def test_archive_moves_finished_jobs_in_batches(client: httpx.Client) -> None:
    assert client.post("/api/jobs/seed", params={"count": 2500}).json() == {"inserted": 2500}
    moved = []
    for _ in range(100):  # bounded: the loop ends when a batch finds nothing to move
        n = client.post("/api/archive", params={"batch": 1000}).json()["archived"]
        moved.append(n)
        if n == 0:
            break
    assert max(moved) == 1000 and sum(moved) >= 2500 and moved[-1] == 0
    stats = client.get("/api/archive/stats").json()
    assert stats["archivable"] == 0 and stats["archived"] >= 2500


# ----------------------------------------------------------------------------- other bugs


def test_leak_and_slow_query_bugs(tmp_path: Path) -> None:
    env = {"DEMO_BUG_LEAK": "1", "DEMO_BUG_SLOW_QUERY": "1", "DEMO_SLOW_QUERY_MS": "300"}
    with start(tmp_path, **env) as svc, httpx.Client(base_url=svc.url, timeout=TIMEOUT) as c:
        before = c.get("/api/debug/stats").json()
        for i in range(8):
            upload(c, f"leak-{i}".encode())
        after = c.get("/api/debug/stats").json()
        assert after["leaked_buffers"] == 8 and after["leaked_bytes"] == 8 * 256 * 1024
        assert after["rss_bytes"] > before["rss_bytes"]
        start_t = time.perf_counter()
        assert c.get("/api/items").status_code == 200
        assert time.perf_counter() - start_t >= 0.3


def test_connection_leak_bug_exhausts_the_pool(tmp_path: Path) -> None:
    env = {"DEMO_BUG_CONN_LEAK": "1", "DEMO_POOL_MAX": "3", "DEMO_POOL_MIN": "1"}
    with (
        start(tmp_path, DEMO_WORKER="0", DEMO_POOL_TIMEOUT="0.5", **env) as svc,
        httpx.Client(base_url=svc.url, timeout=TIMEOUT) as c,
    ):
        item = c.post("/api/items", json={"name": "x"}).json()
        for _ in range(3):
            assert c.get(f"/api/items/{item['id']}").status_code == 200
        starved = c.get(f"/api/items/{item['id']}")
        assert starved.status_code == 503 and starved.json()["error"] == "pool_timeout"
        assert c.get("/api/items").status_code == 503  # every endpoint starves now
        stats = c.get("/api/debug/stats").json()
        assert stats["leaked_connections"] == 3 and stats["pool"]["pool_available"] == 0


# ----------------------------------------------------------------------------- lifecycle


def _schema_exists(schema: str) -> bool:
    with psycopg.connect(DSN) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return bool(row and row[0])


def _connections(application_name: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_stop_leaves_no_process_no_data_dir_no_schema(tmp_path: Path) -> None:
    app_name = f"sg-stop-{uuid.uuid4().hex[:8]}"
    svc = start(tmp_path, DEMO_APPLICATION_NAME=app_name)
    with httpx.Client(base_url=svc.url, timeout=TIMEOUT) as c:
        upload(c, b"some bytes")
    assert any((svc.data_dir / "uploads").iterdir())
    assert _schema_exists(svc.schema) and _connections(app_name) >= 1
    svc.stop()
    assert svc.process.returncode is not None
    assert not psutil.pid_exists(svc.pid)
    assert not svc.data_dir.exists()
    assert list(tmp_path.iterdir()) == []
    assert not _schema_exists(svc.schema)
    assert _connections(app_name) == 0
    svc.stop()  # idempotent


def test_a_service_that_cannot_reach_the_database_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DemoServiceError, match="did not start") as info:
        start_demo_service(
            "postgresql://postgres@127.0.0.1:1/none",
            env={"DEMO_POOL_TIMEOUT": "1"},
            data_dir=tmp_path,
            drop_schema=False,
            schema="sg_demo_unreachable",
        )
    assert time.monotonic() - started < 20
    assert "its output" in str(info.value)
    assert list(tmp_path.iterdir()) == []


ORPHAN = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from examples.demo_service.launcher import start_demo_service
    svc = start_demo_service(sys.argv[2], data_dir=sys.argv[3], schema=sys.argv[4])
    print(svc.pid, flush=True)
    os._exit(0)  # the parent dies without stopping its service
    """
)


def test_the_service_exits_when_its_parent_dies(tmp_path: Path) -> None:
    schema = f"sg_demo_orphan_{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(ROOT), DSN, str(tmp_path), schema],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(out.stdout.strip())
    exited = True
    try:
        psutil.Process(pid).wait(timeout=20)  # it notices the re-parenting and shuts down
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        exited = False
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert exited, f"the orphaned service (pid {pid}) still ran 20 s after its parent died"
