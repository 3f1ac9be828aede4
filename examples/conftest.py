"""Fixtures for the examples: the demo upload service, started once per session (per xdist
worker), on the database ``stressguard_dsn`` gives, in a schema of its own that is dropped at
the end. ``DEMO_BUG_*`` variables in the environment reach the service: that is how a user
watches a gate turn red (``DEMO_BUG_LEAK=1 pytest examples/ -m soak``).

A first version; the plugin's author owns this file from here on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# examples/ is not installed: make `examples.demo_service` importable in every import mode.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from examples.demo_service.launcher import DemoService, start_demo_service  # noqa: E402

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _dsn(request: pytest.FixtureRequest) -> str:
    try:
        return str(request.getfixturevalue("stressguard_dsn"))
    except pytest.FixtureLookupError:  # the plugin is disabled (-p no:stressguard)
        return os.environ.get("STRESSGUARD_DSN") or os.environ.get("DATABASE_URL") or LOCAL_DSN


@pytest.fixture(scope="session")
def demo_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoService]:
    """The running demo service: ``.url``, ``.pid`` (for ``soak(watch=...)``), ``.stop()``."""
    service = start_demo_service(_dsn(request), data_dir=tmp_path_factory.getbasetemp())
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def demo_url(demo_service: DemoService) -> str:
    return demo_service.url
