"""pytest-stressguard: load, stress, soak and race-hunting markers with gates that fail CI."""

from __future__ import annotations

__version__ = "0.1.0"
