"""Metrics are declared once, beside the code that produces them.

A producer module holds a tuple of :class:`Metric` (``LOAD_METRICS`` next to ``LoadResult``,
``POOL_METRICS`` next to the pool report, ...). This module only knows *where* the declarations
are (``_PRODUCERS``); the threshold parser, the baselines, the summary and the metrics table of
docs/thresholds.md read them from :func:`declared`. A test runs every producer and fails when a
metric is produced but not declared, or declared but never produced.

Declaring modules must stay cheap to import (no database driver, no event loop): thresholds are
parsed at collection.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Literal

from .units import CANONICAL_UNIT, Dimension

Scope = Literal["test", "session"]

_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")

#: Where declarations live: ``module:ATTRIBUTE``, each a tuple of Metric. One line per producer.
_PRODUCERS: tuple[str, ...] = (
    "pytest_stressguard.core.result:LOAD_METRICS",
    "pytest_stressguard.core.stress:STRESS_METRICS",
    "pytest_stressguard.core.soak:SOAK_METRICS",
    "pytest_stressguard.core.monitor:MONITOR_METRICS",
    "pytest_stressguard.core.pool.report:POOL_METRICS",
    "pytest_stressguard.core.session_metrics:SESSION_METRICS",
)


@dataclass(frozen=True)
class Metric:
    """One gateable figure.

    ``name`` is what thresholds write (``pNN`` stands for every percentile: p50, p99.9, ...);
    the value is in the canonical unit of ``dimension`` (seconds, bytes, ratio, per second,
    bytes per hour, or a plain number).
    """

    name: str
    dimension: Dimension
    meaning: str
    higher_is_better: bool = False
    scope: Scope = "test"
    per_endpoint: bool = False  # also exists per endpoint: ``p95{GET /items}<200ms``
    signed: bool = False  # a limit may be negative (drift can be an improvement)
    also: tuple[Dimension, ...] = ()  # other dimensions a limit may be written in

    @property
    def unit(self) -> str:
        """The canonical unit of the value, as the JSON report names it (``s``, ``B``...)."""
        return CANONICAL_UNIT[self.dimension]

    @property
    def is_pattern(self) -> bool:
        return self.name == "pNN"

    def matches(self, name: str) -> bool:
        return name == self.name or (self.is_pattern and is_percentile(name))


def is_percentile(name: str) -> bool:
    """True for ``p50``, ``p99.9``... (0 < q <= 100)."""
    m = _PERCENTILE.fullmatch(name)
    return m is not None and 0 < float(m.group(1)) <= 100


@cache
def _load(scope: Scope) -> tuple[Metric, ...]:
    out: dict[str, Metric] = {}
    for where in _PRODUCERS:
        module, _, attr = where.partition(":")
        for metric in getattr(importlib.import_module(module), attr):
            if metric.scope != scope:
                continue
            known = out.get(metric.name)
            if known is not None and known.dimension != metric.dimension:
                raise RuntimeError(f"metric {metric.name!r} declared twice with different "
                                   f"dimensions ({known.dimension}, {metric.dimension})")
            out.setdefault(metric.name, metric)
    return tuple(out.values())


def declared(scope: Scope = "test") -> Mapping[str, Metric]:
    """Every declared metric of ``scope`` by name (``pNN`` once, for all percentiles)."""
    return MappingProxyType({m.name: m for m in _load(scope)})


def lookup(name: str, scope: Scope = "test") -> Metric | None:
    """The declaration of ``name`` (``p97.5`` finds ``pNN``), or None."""
    metrics = declared(scope)
    found = metrics.get(name)
    if found is None and is_percentile(name):
        found = metrics.get("pNN")
    return found


def producers() -> tuple[tuple[str, tuple[Metric, ...]], ...]:
    """(``module:ATTRIBUTE``, its metrics) for every producer: the completeness test's input."""
    out = []
    for where in _PRODUCERS:
        module, _, attr = where.partition(":")
        out.append((where, tuple(getattr(importlib.import_module(module), attr))))
    return tuple(out)


_UNIT_TEXT = {"time": "us ms s m h", "size": "B KB MB GB KiB MiB GiB", "ratio": "% or a fraction",
              "rate": "/s /min", "size_rate": "KB/h MB/h GB/h", "number": "a count"}


def markdown_table() -> str:
    """The metrics table of docs/thresholds.md, from the declarations (a test keeps it current)."""
    rows = ["| metric | where | written in | better | per endpoint | meaning |",
            "|---|---|---|---|---|---|"]
    scopes: tuple[tuple[Scope, str], ...] = (("test", "sla, checks"),
                                             ("session", "--stressguard-gate"))
    for scope, where in scopes:
        for m in declared(scope).values():
            units = " or ".join(_UNIT_TEXT[d] for d in (m.dimension, *m.also))
            better = "higher" if m.higher_is_better else "lower"
            rows.append(f"| `{m.name}` | {where} | {units} | {better} | "
                        f"{'yes' if m.per_endpoint else ''} | {m.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
