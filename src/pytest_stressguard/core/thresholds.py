"""The one threshold parser: SLAs, gates and baseline comparisons.

Grammar: ``<metric>[{endpoint}] <op> <value>[unit]`` with ``op`` in ``< <= > >= ==``, spaces
allowed between tokens (``"p95<500ms"``, ``"error_rate <= 0.1%"``, ``"p95{GET /items}<200ms"``).
Comparisons with a saved baseline: ``<metric>[{endpoint}]:<+|-><value>%`` (``"p95:+10%"``).

Limits are stored in canonical units (see :mod:`pytest_stressguard.core.units`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, get_args

from .metrics import Metric, Scope, declared, is_percentile, lookup
from .units import (
    CANONICAL_UNIT,
    Dimension,
    Quantity,
    UnitsError,
    format_number,
    format_value,
    parse_quantity,
)

__all__ = [
    "OPS",
    "CompareResult",
    "CompareRule",
    "Op",
    "Threshold",
    "ThresholdError",
    "ThresholdResult",
    "evaluate",
    "format_metric_value",
    "is_percentile",
    "metric_dimension",
    "parse_compare",
    "parse_compares",
    "parse_threshold",
    "parse_thresholds",
    "percentile_of",
]

Op = Literal["<=", ">=", "==", "<", ">"]
OPS: Final[tuple[Op, ...]] = get_args(Op)

_PERCENTILE: Final = re.compile(r"p(\d+(?:\.\d+)?)")
_METRIC_TOKEN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OP_TOKEN: Final = re.compile(r"<=|>=|==|<|>")
_BAD_OP: Final = re.compile(r"=<|=>|!=|<>|=|≤|≥|≠")
_SPACE: Final = re.compile(r"\s*")

_EMPTY_ENDPOINTS: Final[Mapping[str, Mapping[str, float | None]]] = MappingProxyType({})


class ThresholdError(ValueError):
    """A bad threshold or comparison; quotes the expression and marks the bad part::

        invalid threshold 'p95<5xx': unknown unit 'xx' (allowed: us ms s m h)
            p95<5xx
                 ^^
    """

    def __init__(
        self,
        expr: str,
        reason: str,
        span: tuple[int, int] | None = None,
        kind: str = "threshold",
    ) -> None:
        self.expr = expr
        self.reason = reason
        self.span = span
        self.kind = kind
        message = f"invalid {kind} {expr!r}: {reason}"
        if span is not None:
            start, end = span
            start = max(0, min(start, len(expr)))
            end = max(start + 1, min(end, len(expr) + 1))
            shown = "".join(" " if ch.isspace() else ch for ch in expr)
            message += f"\n    {shown}\n    {' ' * start}{'^' * (end - start)}"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# the metric registry


def percentile_of(name: str) -> float:
    """``"p99.9"`` -> 99.9. Raises ValueError for a name that is not a percentile."""
    if not is_percentile(name):
        raise ValueError(f"{name!r} is not a percentile metric (like p95 or p99.9)")
    return float(name[1:])


def _normal_name(name: str) -> str:
    """Canonical spelling of a metric: ``p95.0`` -> ``p95``, ``p099.90`` -> ``p99.9``."""
    if is_percentile(name):
        return f"p{float(name[1:]):g}"
    return name


def find_metric(name: str, scope: Scope | None = None) -> Metric | None:
    """The declaration of ``name`` in ``scope`` (None: a test metric, else a session one)."""
    if scope is not None:
        return lookup(name, scope)
    return lookup(name, "test") or lookup(name, "session")


def _declared(name: str) -> Metric:
    found = find_metric(name)
    if found is None:
        raise ValueError(f"unknown metric {name!r} (allowed: {_allowed_text(None, 'test')})")
    return found


def metric_dimension(name: str) -> Dimension:
    """The dimension of a metric name; raises ValueError for an unknown metric."""
    return _declared(name).dimension


_USUAL_PERCENTILES: Final = ("p50", "p90", "p95", "p99", "p99.9")


def _names(allowed: Collection[str] | None, scope: Scope) -> list[str]:
    if allowed is not None:
        return list(allowed)
    names: list[str] = []
    for name in declared(scope):
        names += _USUAL_PERCENTILES if name == "pNN" else (name,)
    return names


def _allowed_text(allowed: Collection[str] | None, scope: Scope) -> str:
    names = _names(allowed, scope)
    pattern = "pNN" in declared(scope) if allowed is None else any(is_percentile(n) for n in names)
    return " ".join(names) + (" (any pNN)" if pattern else "")


def _accepts(metric: str) -> tuple[Dimension, ...]:
    found = _declared(metric)
    return (found.dimension, *found.also)


def _dim_noun(metric: str) -> str:
    dim = metric_dimension(metric)
    if metric == "capacity":
        return "a number of users or a rate"
    return {
        "time": "a latency" if metric not in ("test_duration_p95", "test_duration_max")
        else "a duration",
        "size": "a memory size",
        "size_rate": "a memory growth rate",
        "ratio": "a ratio",
        "rate": "a rate",
        "number": "a count",
    }[dim]


def _unit_hint(metric: str) -> str:
    dim = metric_dimension(metric)
    if metric == "capacity":
        return "a plain number of users or a rate (/s /min /h)"
    return {
        "time": "a time unit (us ms s m h)",
        "size": "a size unit (B KB MB GB TB KiB MiB GiB TiB)",
        "size_rate": "a size per time (KB/h MB/h GB/h MiB/h B/s)",
        "ratio": "% or a bare fraction between 0 and 1",
        "rate": "a rate (/s /min /h) or a bare number per second",
        "number": "a plain number",
    }[dim]


# ---------------------------------------------------------------------------------------------
# tokenising


def _skip(text: str, pos: int) -> int:
    m = _SPACE.match(text, pos)
    return pos if m is None else m.end()


def _metric_and_endpoint(
    expr: str, kind: str, allowed: Collection[str] | None, scope: Scope
) -> tuple[str, str | None, int]:
    """Read ``metric[{endpoint}]`` from the start; return (metric, endpoint, position after)."""
    pos = _skip(expr, 0)
    m = _METRIC_TOKEN.match(expr, pos)
    if m is None:
        reason = f"expected a metric name (allowed: {_allowed_text(allowed, scope)})"
        raise ThresholdError(expr, reason, (pos, pos + 1), kind)
    written = m.group()
    _check_metric(expr, written, m.span(), kind, allowed, scope)
    metric = _normal_name(written)
    pos = _skip(expr, m.end())
    endpoint: str | None = None
    if pos < len(expr) and expr[pos] == "{":
        depth = 0
        end = -1
        for i in range(pos, len(expr)):
            if expr[i] == "{":
                depth += 1
            elif expr[i] == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end < 0:
            raise ThresholdError(expr, "the endpoint has no closing '}'", (pos, len(expr)), kind)
        endpoint = expr[pos + 1 : end].strip()
        if not endpoint:
            raise ThresholdError(expr, "the endpoint name is empty", (pos, end + 1), kind)
        found = find_metric(metric, scope)
        if found is None or not found.per_endpoint:
            per_endpoint = sorted(m.name for m in declared(scope).values() if m.per_endpoint)
            raise ThresholdError(
                expr,
                f"{metric} has no per-endpoint value (per endpoint: {' '.join(per_endpoint)})",
                (m.start(), end + 1),
                kind,
            )
        pos = _skip(expr, end + 1)
    elif pos < len(expr) and expr[pos] == "}":
        raise ThresholdError(expr, "'}' without an opening '{'", (pos, pos + 1), kind)
    return metric, endpoint, pos


def _check_metric(
    expr: str, name: str, span: tuple[int, int], kind: str, allowed: Collection[str] | None,
    scope: Scope,
) -> None:
    if name.startswith("p") and _PERCENTILE.fullmatch(name) and not is_percentile(name):
        reason = f"percentile {name!r} is out of range (above p0, at most p100)"
        raise ThresholdError(expr, reason, span, kind)
    known = find_metric(name, scope) is not None
    if not known and find_metric(name) is not None:  # a metric, but of the other scope
        raise ThresholdError(
            expr,
            f"metric {name!r} is not available here (allowed: {_allowed_text(allowed, scope)})",
            span,
            kind,
        )
    if known and allowed is not None:
        ok = name in allowed or (is_percentile(name) and any(is_percentile(a) for a in allowed))
        if not ok:
            raise ThresholdError(
                expr,
                f"metric {name!r} is not available here "
                f"(allowed: {_allowed_text(allowed, scope)})",
                span,
                kind,
            )
    if known:
        return
    candidates = _names(allowed, scope)
    lower = name.lower()
    if find_metric(lower, scope) is not None:
        close = [lower]
    else:
        import difflib  # only on a typo: it costs 5 ms of every start-up otherwise

        close = difflib.get_close_matches(lower, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ThresholdError(
        expr,
        f"unknown metric {name!r}{hint} (allowed: {_allowed_text(allowed, scope)})",
        span,
        kind,
    )


def _quantity(
    expr: str, text_start: int, kind: str, metric: str, expected: str | None = None
) -> Quantity:
    """Parse the value that starts at ``text_start`` (to the end), mapping errors to ``expr``."""
    value_text = expr[text_start:].rstrip()
    if not value_text:
        reason = f"the value is missing (expected {expected or _unit_hint(metric)})"
        raise ThresholdError(expr, reason, (len(expr), len(expr) + 1), kind)
    try:
        return parse_quantity(value_text)
    except UnitsError as exc:
        span = None
        if exc.span is not None:
            span = (exc.span[0] + text_start, exc.span[1] + text_start)
        else:
            span = (text_start, text_start + len(value_text))
        reason = exc.reason
        if exc.unit is not None:
            reason = (
                f"unknown unit {exc.unit!r} ({metric} is {_dim_noun(metric)}; "
                f"use {_unit_hint(metric)})"
            )
        raise ThresholdError(expr, reason, span, kind) from None


def _check_dimension(
    expr: str, metric: str, q: Quantity, span: tuple[int, int], kind: str
) -> Dimension:
    """Validate ``q`` for ``metric``; return the dimension the limit is stored in."""
    accepts = _accepts(metric)
    own = accepts[0]
    if q.dimension == "number" and own in ("time", "size", "size_rate"):
        example = {"time": "ms", "size": "MB", "size_rate": "MB/h"}[own]
        number = expr[span[0] : span[1]].strip()
        raise ThresholdError(
            expr,
            f"{metric} is {_dim_noun(metric)} and needs {_unit_hint(metric)}, "
            f"e.g. {number}{example}",
            span,
            kind,
        )
    if q.dimension == "number" and own == "ratio":
        if q.value > 1:
            raise ThresholdError(
                expr,
                f"a bare {metric} is a fraction between 0 and 1; did you mean {q.value:g}%?",
                span,
                kind,
            )
        return "ratio"
    if q.dimension in accepts:
        return "rate" if q.dimension == "number" and own == "rate" else q.dimension
    hint = ""
    if metric == "errors" and q.dimension == "ratio":
        hint = "; for a share of iterations use error_rate"
    raise ThresholdError(
        expr,
        f"{metric} is {_dim_noun(metric)}; {q.unit!r} does not fit "
        f"(use {_unit_hint(metric)}){hint}",
        span,
        kind,
    )


# ---------------------------------------------------------------------------------------------
# thresholds


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold; ``limit`` is in the canonical unit of ``dimension``."""

    expr: str
    metric: str
    endpoint: str | None
    op: Op
    limit: float
    dimension: Dimension

    @property
    def unit(self) -> str:
        """The canonical unit of ``limit`` and measured values (``"s"``, ``"B"``, ``"ratio"``)."""
        return CANONICAL_UNIT[self.dimension]

    def passes(self, value: float) -> bool:
        """Whether a measured ``value`` (canonical units) satisfies the threshold."""
        limit = self.limit
        if self.op == "<":
            return value < limit
        if self.op == "<=":
            return value <= limit
        if self.op == ">":
            return value > limit
        if self.op == ">=":
            return value >= limit
        return value == limit or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)

    def check(self, value: float | None) -> ThresholdResult:
        """Compare a measured value; ``None`` (not measured) fails with a note."""
        if value is None:
            return ThresholdResult(self, None, False, "not measured")
        if isinstance(value, float) and math.isnan(value):
            return ThresholdResult(self, value, False, "not a number")
        return ThresholdResult(self, float(value), self.passes(value), "")

    def __str__(self) -> str:
        return self.expr


def format_metric_value(metric: str, value: float, dimension: Dimension | None = None) -> str:
    """Format a canonical value the way reports show ``metric`` (``480.2ms``, ``0.40%``)."""
    dim = dimension if dimension is not None else metric_dimension(metric)
    if metric == "capacity" and dim == "number":
        return f"{format_number(value)} users"
    return format_value(value, dim)


@dataclass(frozen=True)
class ThresholdResult:
    """The verdict of one threshold on one measured value."""

    threshold: Threshold
    value: float | None
    ok: bool
    note: str = field(default="")

    def describe(self) -> str:
        """``"ok p95<500ms (480.2ms)"``, ``"FAIL p95<300ms (480.2ms)"``.

        A value of None reads ``"FAIL p95<300ms (not measured)"``."""
        verdict = "ok" if self.ok else "FAIL"
        if self.value is None or math.isnan(self.value):
            shown = self.note or "not measured"
        else:
            shown = format_metric_value(self.threshold.metric, self.value, self.threshold.dimension)
            if self.note:
                shown += f"; {self.note}"
        return f"{verdict} {self.threshold.expr} ({shown})"

    def to_dict(self) -> dict[str, object]:
        """Plain data for the JSON report; value and limit in canonical units."""
        t = self.threshold
        return {
            "expr": t.expr,
            "metric": t.metric,
            "endpoint": t.endpoint,
            "op": t.op,
            "value": self.value,
            "limit": t.limit,
            "unit": t.unit,
            "ok": self.ok,
            "note": self.note,
        }


def parse_threshold(expr: str, *, allowed: Collection[str] | None = None,
                    scope: Scope = "test") -> Threshold:
    """Parse ``"p95<500ms"``, ``"error_rate <= 0.1%"``, ``"p95{GET /items}<200ms"``.

    ``scope`` picks the declared metrics (``"session"`` for session gates); ``allowed`` restricts
    the names further (a ``pNN`` entry in it admits every percentile).
    Raises :class:`ThresholdError`.
    """
    if not isinstance(expr, str):
        raise ThresholdError(repr(expr), "expected a string like 'p95<500ms'")
    if not expr.strip():
        raise ThresholdError(expr, "empty threshold (expected e.g. 'p95<500ms' or 'errors==0')")
    metric, endpoint, pos = _metric_and_endpoint(expr, "threshold", allowed, scope)
    m = _OP_TOKEN.match(expr, pos)
    if m is None:
        bad = _BAD_OP.match(expr, pos)
        if bad is not None:
            reason = f"unknown operator {bad.group()!r} (allowed: < <= > >= ==)"
            raise ThresholdError(expr, reason, bad.span())
        where = "after the metric" if endpoint is None else "after the endpoint"
        raise ThresholdError(
            expr, f"expected an operator (< <= > >= ==) {where}", (pos, pos + 1)
        )
    op: Op = _as_op(m.group())
    value_start = _skip(expr, m.end())
    q = _quantity(expr, value_start, "threshold", metric)
    span = (value_start, len(expr.rstrip()))
    dimension = _check_dimension(expr, metric, q, span, "threshold")
    if q.value < 0 and not _declared(metric).signed:
        raise ThresholdError(expr, f"a negative limit makes no sense for {metric}", span)
    return Threshold(expr.strip(), metric, endpoint, op, q.value, dimension)


def _as_op(text: str) -> Op:
    for op in OPS:
        if op == text:
            return op
    raise AssertionError(text)  # pragma: no cover - the regex only matches OPS


def parse_thresholds(
    exprs: Iterable[str] | str, *, allowed: Collection[str] | None = None, scope: Scope = "test"
) -> list[Threshold]:
    """Parse many thresholds; a single string is one threshold (not its characters)."""
    if isinstance(exprs, str):
        return [parse_threshold(exprs, allowed=allowed, scope=scope)]
    return [parse_threshold(e, allowed=allowed, scope=scope) for e in exprs]


def evaluate(
    thresholds: Iterable[Threshold],
    metrics: Mapping[str, float | None],
    endpoints: Mapping[str, Mapping[str, float | None]] = _EMPTY_ENDPOINTS,
) -> list[ThresholdResult]:
    """Check each threshold against ``metrics[metric]`` or ``endpoints[endpoint][metric]``.

    A missing key or unknown endpoint is "not measured" (a failure). ``metrics`` can be any
    Mapping, e.g. a lazy one that computes arbitrary percentiles on lookup.
    """
    results: list[ThresholdResult] = []
    for t in thresholds:
        if t.endpoint is None:
            source: Mapping[str, float | None] | None = metrics
        else:
            source = endpoints.get(t.endpoint)
        if source is None:
            results.append(ThresholdResult(t, None, False, f"endpoint {t.endpoint!r} not measured"))
            continue
        results.append(t.check(source.get(t.metric)))
    return results


# ---------------------------------------------------------------------------------------------
# baseline comparisons


@dataclass(frozen=True)
class CompareRule:
    """A regression rule against a saved baseline, e.g. ``p95:+10%`` or ``rps:-10%``.

    ``direction`` +1: the metric may not grow by more than ``tolerance``; -1: it may not shrink by
    more than ``tolerance``. ``tolerance`` is a ratio, or with ``absolute`` an amount in the
    metric's canonical unit (``mean:+5ms``).
    """

    expr: str
    metric: str
    endpoint: str | None
    direction: Literal[1, -1]
    tolerance: float
    absolute: bool = False

    @property
    def dimension(self) -> Dimension:
        return metric_dimension(self.metric)

    def check(self, base: float | None, current: float | None) -> CompareResult:
        """Compare ``current`` with ``base``; a missing value on either side is not a failure."""
        if base is None or current is None or math.isnan(base) or math.isnan(current):
            note = "no baseline" if base is None or math.isnan(base) else "not measured"
            return CompareResult(self, base, current, None, True, note)
        delta = current - base
        if base != 0:
            change: float = delta / abs(base)
        elif delta == 0:
            change = 0.0
        else:
            change = math.copysign(math.inf, delta)
        worse = delta if self.absolute else change
        ok = self.direction * worse <= self.tolerance * (1 + 1e-12)
        return CompareResult(self, base, current, change, ok, "")

    def limit_text(self) -> str:
        sign = "+" if self.direction > 0 else "-"
        if self.absolute:
            return sign + format_metric_value(self.metric, self.tolerance)
        return f"{sign}{_pct(self.tolerance)}"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}".rstrip("0").rstrip(".") + "%"


@dataclass(frozen=True)
class CompareResult:
    """The verdict of one comparison rule."""

    rule: CompareRule
    base: float | None
    current: float | None
    change_ratio: float | None
    ok: bool
    note: str = field(default="")

    def describe(self) -> str:
        """``"p95 +14.2% (12.0ms -> 13.7ms) > +10%"`` or ``"rps -2.0% (...) >= -10%"``."""
        r = self.rule
        name = r.metric if r.endpoint is None else f"{r.metric}{{{r.endpoint}}}"
        if self.base is None or self.current is None or self.change_ratio is None:
            return f"{name} ({self.note or 'not compared'})"
        fmt_base = format_metric_value(r.metric, self.base)
        fmt_cur = format_metric_value(r.metric, self.current)
        if r.absolute:
            delta = self.current - self.base
            change = ("+" if delta >= 0 else "-") + format_metric_value(r.metric, abs(delta))
        elif math.isinf(self.change_ratio):
            change = "+inf%" if self.change_ratio > 0 else "-inf%"
        else:
            change = f"{self.change_ratio * 100:+.1f}%"
        cmp = {(1, True): "<=", (1, False): ">", (-1, True): ">=", (-1, False): "<"}[
            (r.direction, self.ok)
        ]
        return f"{name} {change} ({fmt_base} -> {fmt_cur}) {cmp} {r.limit_text()}"

    def to_dict(self) -> dict[str, object]:
        r = self.rule
        return {
            "expr": r.expr,
            "metric": r.metric,
            "endpoint": r.endpoint,
            "base": self.base,
            "current": self.current,
            "change": self.change_ratio,
            "tolerance": r.tolerance,
            "absolute": r.absolute,
            "direction": r.direction,
            "ok": self.ok,
            "note": self.note,
        }


def parse_compare(expr: str, *, allowed: Collection[str] | None = None) -> CompareRule:
    """Parse ``"p95:+10%"``, ``"rps:-10%"``, ``"mean:+5ms"``, ``"p95{GET /items}:+20%"``.

    Without a sign the direction is the one that is worse for the metric (lower for rps,
    tests_per_s and capacity; higher for everything else). Raises :class:`ThresholdError`.
    """
    kind = "comparison"
    if not isinstance(expr, str):
        raise ThresholdError(repr(expr), "expected a string like 'p95:+10%'", kind=kind)
    if not expr.strip():
        raise ThresholdError(expr, "empty comparison (expected e.g. 'p95:+10%')", kind=kind)
    metric, endpoint, pos = _metric_and_endpoint(expr, kind, allowed, "test")
    if pos >= len(expr) or expr[pos] != ":":
        raise ThresholdError(
            expr, "expected ':' then a tolerance, like p95:+10% or rps:-10%", (pos, pos + 1), kind
        )
    pos = _skip(expr, pos + 1)
    direction: Literal[1, -1] = -1 if _declared(metric).higher_is_better else 1
    if pos < len(expr) and expr[pos] in "+-":
        direction = 1 if expr[pos] == "+" else -1
        pos = _skip(expr, pos + 1)
    value_start = pos
    q = _quantity(expr, value_start, kind, metric, "a percentage like +10%")
    span = (value_start, len(expr.rstrip()))
    if expr[value_start : value_start + 1] in ("+", "-"):
        raise ThresholdError(expr, "only one sign is allowed", (value_start, value_start + 1), kind)
    if q.dimension == "ratio":
        return CompareRule(expr.strip(), metric, endpoint, direction, q.value, False)
    if q.dimension == "number" and metric_dimension(metric) not in ("number", "rate"):
        raise ThresholdError(
            expr,
            "write the tolerance as a percentage, like +10%",
            span,
            kind,
        )
    dimension = _check_dimension(expr, metric, q, span, kind)
    if dimension not in (metric_dimension(metric), "rate"):
        raise ThresholdError(expr, "write the tolerance as a percentage", span, kind)
    return CompareRule(expr.strip(), metric, endpoint, direction, q.value, True)


def parse_compares(
    exprs: Iterable[str] | str, *, allowed: Collection[str] | None = None
) -> list[CompareRule]:
    """Parse many comparison rules; a single string is one rule."""
    if isinstance(exprs, str):
        return [parse_compare(exprs, allowed=allowed)]
    return [parse_compare(e, allowed=allowed) for e in exprs]

