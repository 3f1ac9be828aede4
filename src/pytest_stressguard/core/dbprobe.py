"""Former home of the pool probe, now :mod:`pytest_stressguard.core.pool`; kept until the last
importers move there."""

from __future__ import annotations

from .pool import (
    DIRTY_KINDS,
    POOL_METRICS,
    SQLSTATE_DEADLOCK,
    SQLSTATE_SERIALIZATION_FAILURE,
    LeakedConnection,
    PoolReport,
    PoolTimelineRow,
    RecoveryReport,
    ServerSnapshot,
    WaiterOutcome,
)
from .pool.probe import PoolProbe
from .pool.recovery import aexhaust_and_recover, exhaust_and_recover

__all__ = [
    "DIRTY_KINDS",
    "POOL_METRICS",
    "SQLSTATE_DEADLOCK",
    "SQLSTATE_SERIALIZATION_FAILURE",
    "LeakedConnection",
    "PoolProbe",
    "PoolReport",
    "PoolTimelineRow",
    "RecoveryReport",
    "ServerSnapshot",
    "WaiterOutcome",
    "aexhaust_and_recover",
    "exhaust_and_recover",
]
