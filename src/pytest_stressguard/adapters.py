"""The objects behind the fixtures: thin adapters from pytest to the core.

Imported only when one of these fixtures is used, so a suite that never uses them does not pay
for the database driver, the engine or the HTTP client (see benchmarks/bench_overhead.py).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import pytest

from pytest_stressguard.core.engine import Engine
from pytest_stressguard.core.http import HttpClient, Response
from pytest_stressguard.core.loadspec import LoadSpec
from pytest_stressguard.core.monitor import ResourceMonitor
from pytest_stressguard.core.result import LoadResult
from pytest_stressguard.core.thresholds import ThresholdError, ThresholdResult, parse_thresholds
from pytest_stressguard.hooks import keep
from pytest_stressguard.kinds import bind_spec
from pytest_stressguard.kinds.load import load_record, load_verdict
from pytest_stressguard.markers import MarkerError
from pytest_stressguard.verdict import Verdict


def settings_of(config: pytest.Config) -> Any:
    from pytest_stressguard.hooks import SETTINGS_KEY

    return config.stash[SETTINGS_KEY]


class LoadRunner:
    """The engine behind @load, for explicit use inside a test."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._settings = settings_of(item.config)
        self.results: list[LoadResult] = []

    def _spec(self, **kwargs: Any) -> LoadSpec:
        try:
            mark = bind_spec("load", (), kwargs, self._settings.time_scale)
        except MarkerError as exc:
            raise pytest.UsageError(f"load_runner.run: {exc}") from None
        spec: LoadSpec = mark.to_load_spec()
        return spec

    def _keep(self, result: LoadResult) -> LoadResult:
        self.results.append(result)
        record = load_record(result, None)
        record["label"] = f"run {len(self.results)}"
        keep(self._item, record, None)
        return result

    def run(self, fn: Callable[[], object] | Callable[[], Awaitable[object]], *,
            users: int = 1, **kwargs: Any) -> LoadResult:
        """Run `fn` under load (sync: threads; async: tasks on a loop of our own) and record the
        result under this test. Arguments as @pytest.mark.load."""
        spec = self._spec(users=users, **kwargs)
        engine = Engine()
        if inspect.iscoroutinefunction(fn):
            import asyncio

            result = asyncio.run(engine.run_async(fn, spec))
        else:
            result = engine.run_sync(fn, spec)
        return self._keep(result)

    async def run_async(self, fn: Callable[[], Awaitable[object]], *, users: int = 1,
                        **kwargs: Any) -> LoadResult:
        """Like run(), from inside an async test: users are tasks on the running loop."""
        spec = self._spec(users=users, **kwargs)
        return self._keep(await Engine().run_async(fn, spec))

    def check(self, result: LoadResult, sla: Sequence[str]) -> list[ThresholdResult]:
        """Evaluate thresholds; fail the test with every threshold, its value and verdict."""
        try:
            thresholds = parse_thresholds(sla)
        except ThresholdError as exc:
            raise pytest.UsageError(f"load_runner.check: {exc}") from None
        verdict = load_verdict(result, thresholds)
        if not verdict.ok:
            pytest.fail(verdict.long_repr(self._item.nodeid) + "\n\n" + verdict.section(),
                        pytrace=False)
        return list(verdict.results)


class LoopHttp:
    """One HttpClient per event loop, behind one fixture value.

    A stress search may run each step on a fresh loop, and a loop may be closed right after the
    test; connections belong to the loop that opened them, so each loop gets its own client and
    the run closes it on that same loop (see bodies.run_coroutine)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._clients: dict[asyncio.AbstractEventLoop, HttpClient] = {}

    def client(self) -> HttpClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = HttpClient(**self._options)
        return client

    async def request(self, method: str, url: str, **kw: Any) -> Response:
        return await self.client().request(method, url, **kw)

    async def get(self, url: str, **kw: Any) -> Response:
        return await self.client().get(url, **kw)

    async def head(self, url: str, **kw: Any) -> Response:
        return await self.client().head(url, **kw)

    async def post(self, url: str, **kw: Any) -> Response:
        return await self.client().post(url, **kw)

    async def put(self, url: str, **kw: Any) -> Response:
        return await self.client().put(url, **kw)

    async def patch(self, url: str, **kw: Any) -> Response:
        return await self.client().patch(url, **kw)

    async def delete(self, url: str, **kw: Any) -> Response:
        return await self.client().delete(url, **kw)

    async def aclose(self) -> None:
        """Close this loop's connections (the client is made anew if used again)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        for loop, client in list(self._clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
            else:  # the loop is gone: drop the sockets now rather than at garbage collection
                client.abort_now()
        self._clients.clear()


def run_id(config: pytest.Config) -> str:
    """xdist workers of one run share the testrunuid, so they share one embedded server."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("testrunuid"):
        return str(workerinput["testrunuid"])
    return f"solo-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class MonitorFixture(ResourceMonitor):
    """resource_monitor: the core sampler, with pytest verdicts and the figures in the report."""

    def __init__(self, name: str) -> None:
        super().__init__(interval=0.1)
        self.name = name

    def check(self, exprs: Iterable[str] | str, pid: int | None = None,
              warmup: float = 0.0) -> list[ThresholdResult]:
        """Evaluate thresholds now (`peak_rss<2GB`, `leak<10MB/h`, `cpu<80%`) on this process or
        a watched pid; a violation fails the test with every value."""
        try:
            results = super().check(exprs, pid, warmup)
        except ThresholdError as exc:
            raise pytest.UsageError(f"resource_monitor.check: {exc}") from None
        verdict = Verdict("resources", tuple(results))
        if not verdict.ok:
            pytest.fail(verdict.long_repr(self.name) + "\n\n" + verdict.section(), pytrace=False)
        return results


