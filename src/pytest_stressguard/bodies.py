"""Turning a pytest test function into a body the engines can call, sync or async."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from pytest_stressguard.core.loadspec import LoadSpec
    from pytest_stressguard.core.result import LoadResult

T = TypeVar("T")


def _original(obj: Any) -> Any:
    """pytest-asyncio replaces an async test with a sync wrapper (functools.wraps): unwrap it."""
    fn = obj
    while not inspect.iscoroutinefunction(fn) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn if inspect.iscoroutinefunction(fn) else obj


def test_kwargs(item: pytest.Function) -> dict[str, Any]:
    fn = _original(item.obj)
    params = inspect.signature(fn).parameters
    return {name: item.funcargs[name] for name in params if name in item.funcargs}


def is_async(item: pytest.Function) -> bool:
    return inspect.iscoroutinefunction(_original(item.obj))


def sync_body(item: pytest.Function) -> Callable[[], object]:
    fn = item.obj
    kwargs = test_kwargs(item)
    return lambda: fn(**kwargs)


def async_body(item: pytest.Function) -> Callable[[], Awaitable[object]]:
    fn = _original(item.obj)
    kwargs = test_kwargs(item)
    return lambda: fn(**kwargs)


CLOSERS_KEY = pytest.StashKey[list[Callable[[], Awaitable[None]]]]()


async def _then_close(item: pytest.Item, coro: Coroutine[Any, Any, T]) -> T:
    """Await the run, then close what fixtures opened on this loop (e.g. HTTP connections):
    the loop may be closed right after the test, and sockets must not outlive it."""
    try:
        return await coro
    finally:
        closers = item.stash.get(CLOSERS_KEY, None) or []
        for close in reversed(closers):
            await close()


def run_coroutine(item: pytest.Function, coro: Coroutine[Any, Any, T]) -> T:
    """Run on the test's loop: pytest-asyncio's (set as the current loop by its runner fixture)
    when it handles the test, else a fresh loop of our own."""
    coro = _then_close(item, coro)
    if item.get_closest_marker("asyncio") is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                loop = asyncio.get_event_loop()
            except RuntimeError:
                loop = None
        if loop is not None and not loop.is_closed() and not loop.is_running():
            return loop.run_until_complete(coro)
    return asyncio.run(coro)


def run_load(item: pytest.Function, spec: LoadSpec, progress: Callable[[Any], None] | None,
             ) -> LoadResult:
    """Run the test's body under the engine, sync (threads) or async (tasks on its loop)."""
    from pytest_stressguard.core.engine import Engine
    from pytest_stressguard.core.result import LoadInterrupted

    engine = Engine(progress=progress)
    if not is_async(item):
        return engine.run_sync(sync_body(item), spec)
    try:
        return run_coroutine(item, engine.run_async(async_body(item), spec))
    except LoadInterrupted:
        raise
    except KeyboardInterrupt as exc:
        # asyncio turns Ctrl-C into a cancellation of the run; the engine keeps what it measured.
        if engine.last_result is None:
            raise
        engine.last_result.interrupted = True
        raise LoadInterrupted(engine.last_result) from exc
