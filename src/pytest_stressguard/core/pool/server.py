"""What the server sees of a probe's pools: ``pg_stat_activity`` by state for the pools'
backends (by ``application_name`` and by backend pid), lock waits from ``pg_locks``, and deltas
of the database-wide counters of ``pg_stat_database`` (deadlocks, rollbacks, commits) since the
probe started. Asked on a connection of its own, outside the pools.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import psycopg

from ..pg_dsn import Dsn, passwords, scrub
from .report import ServerSnapshot, _error_kind


class ServerMonitor:
    """One autocommit monitor connection to the database of a probe's pools."""

    def __init__(self) -> None:
        self.dsn: Dsn | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._baseline: dict[str, int] | None = None

    def start(self, dsn: Dsn) -> None:
        """Monitor ``dsn`` (the first one given wins); read the counters deltas start from."""
        if self.dsn is None:
            self.dsn = dsn
            self._baseline = self._read_db_counters()

    def snapshot(self, t: float, apps: list[str], pids: list[int]) -> ServerSnapshot:
        """The backends named by ``apps`` or ``pids`` now. Never raises: when the server cannot
        be reached the snapshot's ``error`` says why."""
        had_conn = self._conn is not None
        try:
            return self._snapshot(t, apps, pids)
        except psycopg.Error as exc:
            self.close()
            if not had_conn:
                return ServerSnapshot(t=t, error=self._error(exc))
        try:  # the old monitor connection may just have been cut: try a fresh one once
            return self._snapshot(t, apps, pids)
        except psycopg.Error as exc:
            self.close()
            return ServerSnapshot(t=t, error=self._error(exc))

    def _error(self, exc: BaseException) -> str:
        # libpq quotes the bad token of a malformed DSN, which may be its password
        return scrub(_error_kind(exc), passwords(self.dsn or ""))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self.dsn is None:
            raise psycopg.OperationalError("no DSN known for the server monitor")
        self._conn = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=3,
            application_name=f"sg-monitor-{uuid.uuid4().hex[:8]}",
        )
        return self._conn

    def _read_db_counters(self) -> dict[str, int] | None:
        try:
            conn = self._connect()
            row = conn.execute(
                "SELECT deadlocks, xact_rollback, xact_commit FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).fetchone()
        except psycopg.Error:
            self.close()
            return None
        if row is None:
            return None
        return {"deadlocks": int(row[0] or 0), "xact_rollback": int(row[1] or 0),
                "xact_commit": int(row[2] or 0)}

    def _snapshot(self, t: float, apps: list[str], pids: list[int]) -> ServerSnapshot:
        conn = self._connect()
        mine = "(a.application_name = ANY(%(apps)s) OR a.pid = ANY(%(pids)s))"
        params = {"apps": apps, "pids": pids}
        by_state: dict[str, int] = {}
        waiting_on_lock = 0
        longest: float | None = None
        for state, n, on_lock, oldest in conn.execute(
            "SELECT coalesce(a.state, 'unknown'), count(*), "
            "count(*) FILTER (WHERE a.wait_event_type = 'Lock'), "
            "extract(epoch FROM max(now() - a.xact_start)) "
            f"FROM pg_stat_activity a WHERE {mine} AND a.pid <> pg_backend_pid() "
            "GROUP BY 1", params,
        ).fetchall():
            by_state[str(state)] = int(n)
            waiting_on_lock += int(on_lock)
            if oldest is not None:
                longest = max(longest or 0.0, float(oldest))
        details: list[dict[str, Any]] = []
        lock_waits = lock_waits_db = 0
        for (pid, app, locktype, mode, relation, waited, blockers, query, is_mine) in (
            conn.execute(
                "SELECT a.pid, a.application_name, l.locktype, l.mode, "
                "CASE WHEN l.relation IS NULL THEN NULL ELSE l.relation::regclass::text END,"
                " extract(epoch FROM now() - coalesce(a.state_change, a.query_start)), "
                "pg_blocking_pids(a.pid), left(a.query, 200), "
                f"{mine} "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND a.datname = current_database() "
                "ORDER BY 6 DESC NULLS LAST", params,
            ).fetchall()
        ):
            lock_waits_db += 1
            if is_mine:
                lock_waits += 1
                if len(details) < 10:
                    details.append({
                        "pid": pid, "application_name": app, "locktype": locktype,
                        "mode": mode, "relation": relation,
                        "waiting_s": None if waited is None else round(float(waited), 3),
                        "blocked_by": list(blockers or []), "query": query,
                    })
        counters = self._read_db_counters()
        base = self._baseline

        def delta(key: str) -> int | None:
            if counters is None or base is None:
                return None
            return counters[key] - base[key]

        return ServerSnapshot(
            t=t, by_state=by_state, connections=sum(by_state.values()),
            waiting_on_lock=waiting_on_lock, lock_waits=lock_waits, lock_waits_db=lock_waits_db,
            lock_wait_details=tuple(details), longest_transaction_s=longest,
            deadlocks_delta=delta("deadlocks"), rollbacks_delta=delta("xact_rollback"),
            commits_delta=delta("xact_commit"),
        )
