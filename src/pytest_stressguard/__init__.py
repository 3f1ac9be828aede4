"""pytest-stressguard: load, stress, soak and race-hunting markers with gates that fail CI.

Public helpers: `spike(base, peak, hold, ramp)` and `ramp(start, stop, step, step_duration)`
return `stages` lists for `@pytest.mark.load`; `LoadResult` is what `load_runner.run` returns.
They load on first use, so importing the plugin stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LoadResult", "ramp", "spike"]


def __getattr__(name: str) -> Any:
    if name in ("spike", "ramp"):
        from pytest_stressguard.core import profiles

        return getattr(profiles, name)
    if name == "LoadResult":
        from pytest_stressguard.core.result import LoadResult

        return LoadResult
    raise AttributeError(f"module 'pytest_stressguard' has no attribute {name!r}")
