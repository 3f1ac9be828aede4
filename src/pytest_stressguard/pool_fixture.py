"""db_pool_probe's object: the core probe with the session DSN by default and pytest verdicts.

Apart from adapters.py because it needs the `postgres` extra (psycopg, psycopg_pool), which the
other fixtures do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from pytest_stressguard.core.pg_dsn import Dsn
from pytest_stressguard.core.pool import PoolProbe
from pytest_stressguard.core.thresholds import ThresholdError, ThresholdResult
from pytest_stressguard.verdict import Verdict


class ProbeFixture(PoolProbe):
    """db_pool_probe: the core probe, with the session DSN by default and pytest verdicts."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request.node.nodeid)
        self._request = request

    def pool(self, dsn: str | None = None, **kwargs: Any) -> Any:
        dsn = None if dsn is None else Dsn(dsn)  # this frame's locals show in tracebacks
        if dsn is None and self.dsn is None:
            self.dsn = Dsn(self._request.getfixturevalue("stressguard_dsn"))
        return super().pool(dsn, **kwargs)

    def check(self, exprs: Iterable[str] | str) -> list[ThresholdResult]:
        """Evaluate pool thresholds now; a violation fails the test with every value."""
        try:
            results = super().check(exprs)
        except ThresholdError as exc:
            raise pytest.UsageError(f"db_pool_probe.check: {exc}") from None
        verdict = Verdict("pool", tuple(results))
        if not verdict.ok:
            pytest.fail(verdict.long_repr(self.name) + "\n\n" + verdict.section(), pytrace=False)
        return results
