"""The exhaustion-and-recovery scenario: hold every connection of a pool, show that further
requests fail with ``PoolTimeout`` in time, release, and show that the pool serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .instrument import raw_method
from .report import RecoveryReport, WaiterOutcome, _error_kind


def exhaust_and_recover(
    pool: ConnectionPool[Any],
    *,
    hold_timeout: float = 1.0,
    waiters: int = 2,
    acquire_timeout: float = 10.0,
    tolerance: float = 1.0,
    verify_full: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> RecoveryReport:
    """Hold every connection of ``pool``, show that ``waiters`` more requests fail with
    ``PoolTimeout`` within ``hold_timeout`` (+ ``tolerance`` for a busy machine), release, and
    show that the pool serves again (``max_size`` connections at once with ``verify_full``,
    each running ``SELECT 1``).

    Run it while nothing else uses the pool. Never hangs: every wait is bounded, and every held
    connection is returned even on error.
    """
    getconn = raw_method(pool, "getconn")
    putconn = raw_method(pool, "putconn")
    max_size = int(pool.max_size)
    held: list[Any] = []
    outcomes: list[WaiterOutcome] = []
    error: str | None = None
    t0 = clock()
    hold_s = 0.0
    try:
        try:
            for _ in range(max_size):
                held.append(getconn(timeout=acquire_timeout))
        except Exception as exc:
            error = f"could not take all {max_size} connections: {_error_kind(exc)}"
        hold_s = clock() - t0
        if error is None:
            results: list[WaiterOutcome | None] = [None] * waiters

            def wait_one(i: int) -> None:
                s = clock()
                try:
                    conn = getconn(timeout=hold_timeout)
                except PoolTimeout:
                    results[i] = WaiterOutcome("timeout", clock() - s)
                except Exception as exc:
                    results[i] = WaiterOutcome("error", clock() - s, _error_kind(exc))
                else:
                    results[i] = WaiterOutcome("served", clock() - s, "got a connection")
                    putconn(conn)

            threads = [threading.Thread(target=wait_one, args=(i,), daemon=True,
                                        name=f"stressguard-waiter-{i}") for i in range(waiters)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=hold_timeout + tolerance + 30.0)
            outcomes = [r if r is not None else WaiterOutcome("error", hold_timeout + tolerance,
                                                              "did not return")
                        for r in results]
    finally:
        for conn in held:
            with contextlib.suppress(Exception):
                putconn(conn)
    if error is not None:
        return RecoveryReport(str(pool.name), max_size, len(held), hold_s, hold_timeout,
                              tolerance, tuple(outcomes), False, None, 0, error)
    r0 = clock()
    served: list[Any] = []
    recovered = False
    try:
        for _ in range(max_size if verify_full else 1):
            conn = getconn(timeout=acquire_timeout)
            served.append(conn)
            conn.execute("SELECT 1").fetchone()
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
        recovered = True
    except Exception as exc:
        error = f"the pool did not serve again after release: {_error_kind(exc)}"
    finally:
        for conn in served:
            with contextlib.suppress(Exception):
                putconn(conn)
    return RecoveryReport(
        str(pool.name), max_size, len(held), hold_s, hold_timeout, tolerance,
        tuple(outcomes), recovered, clock() - r0 if recovered else None, len(served), error,
    )


async def aexhaust_and_recover(
    pool: AsyncConnectionPool[Any],
    *,
    hold_timeout: float = 1.0,
    waiters: int = 2,
    acquire_timeout: float = 10.0,
    tolerance: float = 1.0,
    verify_full: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> RecoveryReport:
    """:func:`exhaust_and_recover` for an ``AsyncConnectionPool`` (waiters are tasks)."""
    getconn = raw_method(pool, "getconn")
    putconn = raw_method(pool, "putconn")
    max_size = int(pool.max_size)
    held: list[Any] = []
    outcomes: list[WaiterOutcome] = []
    error: str | None = None
    t0 = clock()
    hold_s = 0.0
    try:
        try:
            for _ in range(max_size):
                held.append(await getconn(timeout=acquire_timeout))
        except Exception as exc:
            error = f"could not take all {max_size} connections: {_error_kind(exc)}"
        hold_s = clock() - t0
        if error is None:

            async def wait_one() -> WaiterOutcome:
                s = clock()
                try:
                    conn = await getconn(timeout=hold_timeout)
                except PoolTimeout:
                    return WaiterOutcome("timeout", clock() - s)
                except Exception as exc:
                    return WaiterOutcome("error", clock() - s, _error_kind(exc))
                await putconn(conn)
                return WaiterOutcome("served", clock() - s, "got a connection")

            outcomes = list(await asyncio.wait_for(
                asyncio.gather(*(wait_one() for _ in range(waiters))),
                timeout=hold_timeout + tolerance + 30.0,
            ))
    finally:
        for conn in held:
            with contextlib.suppress(Exception):
                await putconn(conn)
    if error is not None:
        return RecoveryReport(str(pool.name), max_size, len(held), hold_s, hold_timeout,
                              tolerance, tuple(outcomes), False, None, 0, error)
    r0 = clock()
    served: list[Any] = []
    recovered = False
    try:
        for _ in range(max_size if verify_full else 1):
            conn = await getconn(timeout=acquire_timeout)
            served.append(conn)
            await (await conn.execute("SELECT 1")).fetchone()
            if conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.rollback()
        recovered = True
    except Exception as exc:
        error = f"the pool did not serve again after release: {_error_kind(exc)}"
    finally:
        for conn in served:
            with contextlib.suppress(Exception):
                await putconn(conn)
    return RecoveryReport(
        str(pool.name), max_size, len(held), hold_s, hold_timeout, tolerance,
        tuple(outcomes), recovered, clock() - r0 if recovered else None, len(served), error,
    )
