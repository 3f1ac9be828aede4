"""Observe psycopg connection pools under load (see :mod:`.probe`).

The plain records and :data:`POOL_METRICS` load eagerly; :class:`PoolProbe` and the
exhaustion-and-recovery functions load on first use, because they import psycopg (an optional
extra) and :mod:`.report` is read whenever thresholds are parsed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .report import (
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

if TYPE_CHECKING:
    from .probe import PoolProbe
    from .recovery import aexhaust_and_recover, exhaust_and_recover

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

_LAZY = {"PoolProbe": "probe", "exhaust_and_recover": "recovery",
         "aexhaust_and_recover": "recovery"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
