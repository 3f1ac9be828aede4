from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

REPORT_SCHEMA = "pytest-stressguard/1"


@cache
def report_validator() -> Any:
    import jsonschema

    schema = json.loads((resources.files("pytest_stressguard.report") / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_report(path: Path) -> None:
    """Fail when a JSON report does not match the schema shipped in the package."""
    document = json.loads(path.read_text(encoding="utf-8"))
    errors = sorted(report_validator().iter_errors(document), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path)
        pytest.fail(f"{path}: {len(errors)} schema error(s); first at /{where}: {first.message}",
                    pytrace=False)


def written_reports(directory: Path) -> list[Path]:
    found = []
    for path in directory.rglob("*.json"):
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:200]
        except OSError:
            continue
        if f'"schema": "{REPORT_SCHEMA}"' in head:
            found.append(path)
    return found


@pytest.fixture(autouse=True)
def _every_report_matches_the_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every JSON report a test of this suite writes (in its tmp_path or pytester directory) is
    validated against report/schema.json after the test."""
    places = []
    for name in ("tmp_path", "pytester"):
        if name in request.fixturenames:  # set up now: their teardown may come before ours
            value = request.getfixturevalue(name)
            places.append(value if isinstance(value, Path) else value.path)
    yield
    for place in places:
        for path in written_reports(place):
            validate_report(path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Where a database is expected (STRESSGUARD_REQUIRE_DB=1, set by scripts/test.sh under CI),
    a test that skips because PostgreSQL is unreachable fails instead: a green CI must not
    mean that thirty database tests did not run."""
    report = yield
    if (report.skipped and os.environ.get("STRESSGUARD_REQUIRE_DB") == "1"
            and isinstance(report.longrepr, tuple) and "PostgreSQL" in str(report.longrepr[2])):
        report.outcome = "failed"
        report.longrepr = (f"STRESSGUARD_REQUIRE_DB=1 expects a database, but the test skipped: "
                           f"{report.longrepr[2]}")
    return report
