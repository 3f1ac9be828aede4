"""Which PostgreSQL to test against: the DSN from the CLI or the environment, made safe to print.

``resolve_dsn`` picks the DSN: the CLI option, then ``STRESSGUARD_DSN``, then ``DATABASE_URL``;
``None`` means the embedded server of ``pgembed.py``. ``wait_for_dsn`` waits until a server
accepts connections.

No password may reach any output. pytest prints the arguments of every frame of a traceback and,
with ``-l``, their locals, through ``repr``: DSNs travel as :class:`Dsn`, a ``str`` whose repr is
redacted; messages use :func:`redact_dsn`, and error texts that may quote a DSN's parts (libpq
quotes a malformed token) go through :func:`scrub`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_DSN",
    "DatabaseUnavailable",
    "Dsn",
    "dsn_problem",
    "normalize_dsn",
    "passwords",
    "redact_dsn",
    "resolve_dsn",
    "scrub",
    "wait_for_dsn",
]

ENV_DSN: Final = "STRESSGUARD_DSN"
ENV_DATABASE_URL: Final = "DATABASE_URL"


class DatabaseUnavailable(TimeoutError):
    """A DSN did not accept connections in time; the message carries the last error."""


_SQLA_SCHEME: Final = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://")


def normalize_dsn(dsn: str) -> str:
    """Strip surrounding space and an SQLAlchemy driver suffix (``postgresql+psycopg://``).

    libpq understands ``postgresql://`` and ``postgres://`` URLs and ``key=value`` strings;
    ``DATABASE_URL`` values written for SQLAlchemy carry a ``+driver`` that libpq rejects.
    """
    text = dsn.strip()
    return _SQLA_SCHEME.sub(lambda m: f"{m.group(1)}://", text, count=1)


def resolve_dsn(cli: str | None, env: Mapping[str, str]) -> str | None:
    """The DSN to use: ``cli``, else ``env["STRESSGUARD_DSN"]``, else ``env["DATABASE_URL"]``.

    Empty or blank values count as unset. ``None`` means "start the embedded server".
    """
    for value in (cli, env.get(ENV_DSN), env.get(ENV_DATABASE_URL)):
        if value is not None and value.strip():
            return Dsn(normalize_dsn(value))
    return None


class Dsn(str):
    """A DSN (a ``str``, usable wherever one is) whose ``repr`` hides its password."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_dsn(str(self)))


_KV_PASSWORD: Final = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for messages and reports)."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return "<unparsable dsn>"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = _KV_PASSWORD.sub(r"\1***", parts.query.replace("&", " ")).replace(" ", "&")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return _KV_PASSWORD.sub(r"\1***", dsn)


_URL_PASSWORD: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:([^@/?#]*)@")


def passwords(dsn: str) -> set[str]:
    """The passwords a DSN carries, as written and percent-decoded (found without libpq, so also
    in a DSN that libpq cannot parse)."""
    found = [m.group(1) for m in (_URL_PASSWORD.match(dsn.strip()),) if m]
    for text in (dsn, dsn.replace("&", " ")):  # key=value strings, and URL query parameters
        found += [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(text)]
    return {p for raw in found for p in (raw, unquote(raw)) if p}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def dsn_problem(dsn: str) -> str | None:
    """Why libpq cannot parse ``dsn`` (scrubbed of its passwords), or None when it can."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        return scrub(str(exc).strip(), passwords(dsn))
    return None


def wait_for_dsn(
    dsn: str,
    timeout: float = 30.0,
    *,
    interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Wait until ``dsn`` accepts a connection (``SELECT 1`` succeeds); return the seconds waited.

    Raises :class:`DatabaseUnavailable` after ``timeout`` seconds, quoting the last error.
    """
    import psycopg

    dsn = Dsn(dsn)  # this frame's locals show in tracebacks

    start = clock()
    deadline = start + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - clock()
        try:
            # connect_timeout is whole seconds in libpq, minimum 2 is what libpq enforces anyway
            with psycopg.connect(
                dsn, connect_timeout=max(2, int(remaining + 0.999)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
            return clock() - start
        except psycopg.Error as exc:
            last = scrub(f"{type(exc).__name__}: {str(exc).strip()}", passwords(dsn))
        if clock() + interval > deadline:
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact_dsn(dsn)} did not accept connections within "
                f"{timeout:.1f}s; last error: {last}"
            )
        time.sleep(interval)
