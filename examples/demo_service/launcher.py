"""Start and stop the demo service in a subprocess, for fixtures and scripts.

    service = start_demo_service(dsn, env={"DEMO_BUG_LEAK": "1"})
    try:
        httpx.get(service.url + "/healthz")
    finally:
        service.stop()

``stop()`` always ends the process (SIGTERM, then SIGKILL after a grace period), removes the
data directory the launcher created and, when the launcher chose the schema, drops it. It is
also registered with :mod:`atexit`, and the service exits by itself if its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from .settings import BUG_SWITCHES, NO_BUGS, check_schema

__all__ = ["BUG_SWITCHES", "NO_BUGS", "DemoService", "DemoServiceError", "start_demo_service"]

#: The directory holding the ``examples`` package: the subprocess runs from here.
ROOT = Path(__file__).resolve().parents[2]
PORT_PREFIX = "DEMO_SERVICE_PORT="
DATA_PREFIX = "stressguard-demo-"


class DemoServiceError(RuntimeError):
    """The service did not start; the message ends with the tail of its output."""


class DemoService:
    """A running demo service: ``url``, ``pid``, ``process``; ``stop()`` ends it."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        *,
        schema: str,
        data_dir: Path,
        dsn: str,
        drop_schema: bool,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.url = ""
        self.port = 0
        self.schema = schema
        self.data_dir = data_dir
        self.dsn = dsn
        self.drop_schema = drop_schema
        self._lines: deque[str] = deque(maxlen=500)
        self._port_seen = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._reader = threading.Thread(
            target=self._read_output, name=f"demo-service-{self.pid}-output", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<DemoService {self.url or '(starting)'} pid={self.pid} {state}>"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """The last lines the service printed (stdout and stderr)."""
        return "".join(self._lines)

    def _read_output(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        for line in stream:  # ends at EOF, i.e. when the process exits
            self._lines.append(line)
            if line.startswith(PORT_PREFIX) and not self._port_seen.is_set():
                with contextlib.suppress(ValueError):
                    self.port = int(line[len(PORT_PREFIX) :].strip())
                    self.url = f"http://127.0.0.1:{self.port}"
                self._port_seen.set()
        self._port_seen.set()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._port_seen.wait(0.05):
            if time.monotonic() > deadline:
                raise DemoServiceError(f"no {PORT_PREFIX} line within {timeout:g}s")
        if not self.port:
            code = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            raise DemoServiceError(f"the service exited with code {code} before listening")
        while True:  # the socket listens; wait until startup (schema, pool, worker) is done
            if self.process.poll() is not None:
                raise DemoServiceError(f"the service exited with code {self.process.returncode}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoServiceError(f"/healthz did not answer 200 within {timeout:g}s")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=min(2.0, left))
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        """End the process (SIGTERM, SIGKILL after ``grace`` s), remove data dir and schema."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=30)
        finally:
            self._reader.join(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.drop_schema:
                self._drop_schema()

    def _drop_schema(self) -> None:
        try:
            from .db import drop_schema

            drop_schema(self.dsn, self.schema)
        except Exception as exc:  # the process is gone already; report, do not mask
            warnings.warn(
                f"demo service: could not drop schema {self.schema!r}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )

    def __enter__(self) -> DemoService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_demo_service(
    dsn: str,
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    startup_timeout: float = 30.0,
    *,
    schema: str | None = None,
    drop_schema: bool | None = None,
    inherit_bugs: bool = True,
    python: str | None = None,
    log_level: str = "warning",
) -> DemoService:
    """Start ``python -m examples.demo_service`` on a free loopback port; wait for /healthz.

    ``env`` adds to (and overrides) this process's environment, e.g. ``{"DEMO_BUG_RACE": "1"}``;
    with ``inherit_bugs=False`` the ``DEMO_BUG_*`` switches of this process are ignored.
    ``data_dir`` is where the launcher creates the service's own upload directory (default: the
    system temp dir). ``schema`` defaults to a fresh ``sg_demo_<pid>_<hex>`` that ``stop()``
    drops (``drop_schema`` overrides that).
    """
    if schema is None:
        schema = f"sg_demo_{os.getpid()}_{secrets.token_hex(4)}"
        if drop_schema is None:
            drop_schema = True
    check_schema(schema)
    child_env = dict(os.environ)
    if not inherit_bugs:
        child_env.update(NO_BUGS)
    child_env.update(env or {})
    child_env["STRESSGUARD_DSN"] = dsn  # not on the command line: ps would show a password
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), child_env.get("PYTHONPATH", "")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    made = Path(tempfile.mkdtemp(prefix=DATA_PREFIX, dir=data_dir))
    command = [
        python or sys.executable,
        "-m",
        "examples.demo_service",
        "--port",
        "0",
        "--schema",
        schema,
        "--data-dir",
        str(made),
        "--log-level",
        log_level,
        "--exit-with-parent",
    ]
    try:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
    except BaseException:
        shutil.rmtree(made, ignore_errors=True)
        raise
    service = DemoService(process, schema=schema, data_dir=made, dsn=dsn, drop_schema=bool(drop_schema))
    atexit.register(service.stop)
    try:
        service._wait_ready(startup_timeout)
    except BaseException as exc:
        service.stop(grace=2.0)
        if isinstance(exc, DemoServiceError):
            raise DemoServiceError(
                f"demo service did not start: {exc}\n--- its output ---\n{service.output()}"
            ) from None
        raise
    return service
