"""A demo upload service for the pytest-stressguard examples.

It imitates a real upload backend (streamed uploads with sha256 checks, SERIALIZABLE
finalisation with retry, a queue safeguard, a background worker with a heartbeat, a small CRUD
API and batch archival) on PostgreSQL, and each of its ``DEMO_BUG_*`` switches injects the bug
one example test guards. Start it with :func:`examples.demo_service.launcher.start_demo_service`
or ``python -m examples.demo_service --dsn DSN``. See ``README.md`` next to this file.
"""

from __future__ import annotations
