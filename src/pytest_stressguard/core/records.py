"""The typed shape of a test entry of the JSON report (docs/json-schema.md, report/schema.json).

Producers (``LoadResult.to_dict``, the kinds) build these and readers (summary, CSV, HTML,
baselines) read them under ``mypy --strict``. They are plain data so they cross xdist as they
are. Fields are added freely; none is renamed or dropped without bumping the schema.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

KindName = Literal["load", "stress", "soak", "concurrent", "pool"]


class LatencyMs(TypedDict, total=False):
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    min: float | None
    max: float | None
    # "p99.9" is not an identifier; it is there too, read with .get("p99.9")


class HistogramDict(TypedDict):
    hdr: str
    count: int
    clamped: int
    lowest_us: int
    highest_us: int
    sig_figs: int


class _Threshold(TypedDict):
    expr: str
    metric: str
    endpoint: str | None
    value: float | None
    limit: float
    unit: str
    ok: bool


class ThresholdDict(_Threshold, total=False):
    op: str
    note: str
    describe: str  # the verdict's own line: "FAIL p95<300ms (480.2ms)"


class TimelineRowDict(TypedDict):
    t: int
    users: int
    iterations: int
    rps: float
    p95_ms: float | None
    errors: int
    dropped: int


class EndpointDict(TypedDict):
    name: str
    count: int
    errors: int
    error_rate: float
    errors_by_kind: dict[str, int]
    latency_ms: dict[str, float | None]
    histogram: HistogramDict


class SaturationDict(TypedDict):
    cpu_ratio: float
    loop_lag_p99_ms: float | None
    loop_blocked_s: float | None
    saturated: bool
    reason: str


class LoadDict(TypedDict):
    """What one load run measured: ``LoadResult.to_dict()``."""

    model: str
    iterations: int
    errors: int
    error_rate: float
    dropped: int
    rps: float
    ok_rps: float
    duration_s: float
    latency_ms: dict[str, float | None]
    histogram: HistogramDict
    error_histogram: HistogramDict
    clamped: int
    timeline: list[TimelineRowDict]
    errors_by_kind: dict[str, int]
    endpoints: dict[str, EndpointDict]
    saturation: SaturationDict
    saturated: bool
    warnings: list[str]
    interrupted: bool
    warmup_iterations: int
    peak_users: int
    abandoned_users: int
    users_not_started: int


class StressStepDict(TypedDict, total=False):
    users: float
    rate: float
    iterations: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error_rate: float
    errors: int
    errors_by_kind: dict[str, int]
    saturated: bool
    ok: bool
    failed: list[str]


class StressDict(TypedDict):
    kind: str  # "users" or "rate"
    capacity: float | None
    broke_at: float | None
    steps: list[StressStepDict]
    recovery: StressStepDict | None
    recovered: bool | None
    interrupted: bool


class SoakDict(TypedDict, total=False):
    duration_s: float
    leak_bytes_per_h: float | None
    leak_bound_bytes_per_h: float | None
    leak_gate_bytes_per_h: float | None
    leak: dict[str, Any]
    drift: float | None
    peak_rss: int
    cpu: float | None
    memory: list[list[float]]
    watched: list[dict[str, Any]]
    watched_memory: dict[str, list[list[float]]]
    alloc_sites: list[dict[str, Any]]
    alloc_note: str
    interrupted: bool


class ConcurrentDict(TypedDict, total=False):
    workers: int
    rounds: int
    rounds_completed: int
    outcome: str
    duration_s: float
    failures: list[dict[str, Any]]
    failure_kinds: dict[str, int]
    hung: list[dict[str, Any]]
    warnings: list[str]


class PoolDict(TypedDict, total=False):
    name: str
    metrics: dict[str, float | None]
    timeline: list[dict[str, Any]]
    leaked: list[dict[str, Any]]
    problems: list[str]


class Record(TypedDict, total=False):
    """One entry of the report's ``tests``: the load figures (when the kind runs load), the
    kind's own block, the verdict's thresholds and problems, and ``metrics``: every declared
    metric the entry measured, in canonical units (what gates, baselines and tables read)."""

    nodeid: str
    kind: KindName
    outcome: str
    when: str
    worker: str
    label: str
    interrupted: bool
    failure_kind: str
    # the load block (LoadDict), flattened into the entry
    model: str
    iterations: int
    errors: int
    error_rate: float
    dropped: int
    rps: float
    ok_rps: float
    duration_s: float
    latency_ms: dict[str, float | None]
    histogram: HistogramDict
    error_histogram: HistogramDict
    clamped: int
    timeline: list[TimelineRowDict]
    errors_by_kind: dict[str, int]
    endpoints: dict[str, EndpointDict]
    saturation: SaturationDict
    saturated: bool
    warnings: list[str]
    warmup_iterations: int
    peak_users: int
    abandoned_users: int
    users_not_started: int
    # the verdict
    thresholds: list[ThresholdDict]
    problems: list[str]
    metrics: dict[str, float | None]
    # the kind's own block
    stress: StressDict
    soak: SoakDict
    concurrent: ConcurrentDict
    pool: PoolDict
