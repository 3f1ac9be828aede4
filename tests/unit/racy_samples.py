"""Racy code for the race-hunting tests and benchmark: each bug spreads over several lines.

It lives in its own module under the project root so the amplifier treats it as code under test.
"""

from __future__ import annotations

import asyncio
import threading


def bump(value: int) -> int:
    return value + 1


class RacyCounter:
    """Read-call-write: two threads that read the same `n` lose an update."""

    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> None:
        v = self.n
        v = bump(v)
        self.n = v


class LockedCounter:
    """The same counter with the read-call-write under a lock: never loses an update."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def increment(self) -> None:
        with self._lock:
            v = self.n
            v = bump(v)
            self.n = v


class Service:
    """Something expensive that must exist once; every construction is recorded."""

    def __init__(self, created: list[Service]) -> None:
        created.append(self)


class LazySingleton:
    """Lazily initialised on first `get()`: two first callers can both construct it."""

    def __init__(self) -> None:
        self.created: list[Service] = []
        self._instance: Service | None = None

    def get(self) -> Service:
        if self._instance is None:
            self._instance = Service(self.created)
        return self._instance


class LockedLazySingleton(LazySingleton):
    """Double-checked locking: constructed exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def get(self) -> Service:
        if self._instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = Service(self.created)
        return self._instance


class SessionStore:
    """Check-then-act on a dict: two callers for the same key can both create a session."""

    def __init__(self) -> None:
        self.sessions: dict[str, Service] = {}
        self.created: list[Service] = []

    def get_or_create(self, key: str) -> Service:
        if key not in self.sessions:
            session = Service(self.created)
            self.sessions[key] = session
        return self.sessions[key]


class AsyncRacyCounter:
    """Read, await, write: tasks interleave at the await and lose updates."""

    def __init__(self) -> None:
        self.n = 0

    async def increment(self) -> None:
        v = self.n
        await asyncio.sleep(0)
        self.n = v + 1


class InlineCounter:
    """`self.n += 1`: the race is inside one line (only opcode granularity splits it)."""

    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> None:
        self.n += 1
