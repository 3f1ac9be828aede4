"""Settings of the demo service, read once at startup from the command line and the environment.

Every knob is an environment variable so that a test (or a user in a shell) can inject a bug into
a running demo without touching code; see ``examples/demo_service/README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The bug switches. Each one makes the service misbehave in the way its example test guards.
BUG_SWITCHES: dict[str, str] = {
    "DEMO_BUG_LEAK": "every upload keeps a 256 KiB buffer in a list that is never emptied",
    "DEMO_BUG_RACE": "finalisation does read-modify-write at READ COMMITTED, no lock, no retry",
    "DEMO_BUG_CONN_LEAK": "GET /api/items/{id} takes a pool connection and never returns it",
    "DEMO_BUG_SLOW_QUERY": "GET /api/items holds its connection in a 250 ms query",
    "DEMO_BUG_NO_RETRY": "finalisation is SERIALIZABLE but a serialization failure is a 500",
}

#: Pass this as the environment to get a service with every bug switched off.
NO_BUGS: dict[str, str] = dict.fromkeys(BUG_SWITCHES, "0")

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class SettingsError(ValueError):
    """A bad command-line or environment value; the message names the variable."""


def check_schema(name: str) -> str:
    if not _SCHEMA_RE.match(name):
        raise SettingsError(f"invalid schema {name!r}: use lower-case letters, digits and '_' (max 63)")
    return name


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"invalid {name}={raw!r}: use 1 or 0")


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"invalid {name}={raw!r}: expected a number") from None
    if value < minimum:
        raise SettingsError(f"invalid {name}={raw!r}: must be >= {minimum:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    value = _number(env, name, float(default), float(minimum))
    if value != int(value):
        raise SettingsError(f"invalid {name}={env.get(name)!r}: expected a whole number")
    return int(value)


@dataclass(frozen=True)
class Bugs:
    leak: bool = False
    race: bool = False
    conn_leak: bool = False
    slow_query: bool = False
    no_retry: bool = False

    def enabled(self) -> list[str]:
        return [name for name, on in self.__dict__.items() if on]


@dataclass(frozen=True)
class Settings:
    dsn: str
    data_dir: Path
    schema: str = "demo"
    application_name: str = "stressguard-demo"
    pool_min: int = 2
    pool_max: int = 20
    pool_timeout_s: float = 10.0
    queue_limit: int = 50
    finalize_retries: int = 10
    finalize_work_s: float = 0.0
    user_quota: int = 0  # finalised uploads per user; 0 = unlimited
    max_upload_bytes: int = 4 << 30
    worker_enabled: bool = True
    worker_poll_s: float = 0.05
    worker_batch: int = 10
    heartbeat_s: float = 1.0
    job_work_s: float = 0.0
    job_timeout_s: float = 1800.0
    keep_files: bool = False
    leak_bytes: int = 256 << 10
    slow_query_s: float = 0.25
    bugs: Bugs = field(default_factory=Bugs)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, dsn: str, data_dir: Path, schema: str = "demo") -> Settings:
        bugs = Bugs(
            leak=_flag(env, "DEMO_BUG_LEAK"),
            race=_flag(env, "DEMO_BUG_RACE"),
            conn_leak=_flag(env, "DEMO_BUG_CONN_LEAK"),
            slow_query=_flag(env, "DEMO_BUG_SLOW_QUERY"),
            no_retry=_flag(env, "DEMO_BUG_NO_RETRY"),
        )
        # The buggy finalisation has the same race window as the correct one; it is widened
        # to 20 ms by default so that a short test sees the lost update. The knob overrides it.
        work_default = 20.0 if bugs.race else 0.0
        pool_max = _int(env, "DEMO_POOL_MAX", 20, 1)
        return cls(
            dsn=dsn,
            data_dir=data_dir,
            schema=check_schema(schema),
            application_name=env.get("DEMO_APPLICATION_NAME", "stressguard-demo"),
            pool_min=min(_int(env, "DEMO_POOL_MIN", 2, 0), pool_max),
            pool_max=pool_max,
            pool_timeout_s=_number(env, "DEMO_POOL_TIMEOUT", 10.0, 0.01),
            queue_limit=_int(env, "DEMO_QUEUE_LIMIT", 50, 1),
            finalize_retries=_int(env, "DEMO_FINALIZE_RETRIES", 10, 1),
            finalize_work_s=_number(env, "DEMO_FINALIZE_WORK_MS", work_default) / 1000.0,
            user_quota=_int(env, "DEMO_USER_QUOTA", 0, 0),
            max_upload_bytes=_int(env, "DEMO_MAX_UPLOAD_BYTES", 4 << 30, 0),
            worker_enabled=_flag(env, "DEMO_WORKER", True),
            worker_poll_s=_number(env, "DEMO_WORKER_POLL_MS", 50.0, 1.0) / 1000.0,
            worker_batch=_int(env, "DEMO_WORKER_BATCH", 10, 1),
            heartbeat_s=_number(env, "DEMO_HEARTBEAT_S", 1.0, 0.05),
            job_work_s=_number(env, "DEMO_JOB_WORK_MS", 0.0) / 1000.0,
            job_timeout_s=_number(env, "DEMO_JOB_TIMEOUT_S", 1800.0, 1.0),
            keep_files=_flag(env, "DEMO_KEEP_FILES"),
            leak_bytes=_int(env, "DEMO_LEAK_BYTES", 256 << 10, 1),
            slow_query_s=_number(env, "DEMO_SLOW_QUERY_MS", 250.0) / 1000.0,
            bugs=bugs,
        )
