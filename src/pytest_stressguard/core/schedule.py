"""When each closed-model user is active and when each open-model arrival is intended.

Pure functions of a :class:`~pytest_stressguard.core.loadspec.LoadSpec`, in seconds since the
start of the run; the runners turn them into sleeps.
"""

from __future__ import annotations

import itertools
import math

from .loadspec import LoadSpec, Stage

__all__ = ["Arrivals", "closed_intervals", "user_intervals"]


def _points(stages: tuple[Stage, ...]) -> list[tuple[float, float]]:
    """Piecewise-linear target curve: [(t, target)], starting at (0, 0)."""
    pts = [(0.0, 0.0)]
    t = 0.0
    for s in stages:
        t += s.duration
        pts.append((t, float(s.target)))
    return pts


def user_intervals(idx: int, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time intervals during which user ``idx`` (0-based) is active: where target(t) > idx."""
    out: list[tuple[float, float]] = []
    level = float(idx)
    for (ta, fa), (tb, fb) in itertools.pairwise(pts):
        if tb <= ta:  # a zero-length stage: a jump
            continue
        a_in, b_in = fa > level, fb > level
        if a_in and b_in:
            seg = (ta, tb)
        elif not a_in and not b_in:
            continue
        else:
            tc = ta + (level - fa) / (fb - fa) * (tb - ta)
            seg = (tc, tb) if fb > fa else (ta, tc)
        if out and abs(out[-1][1] - seg[0]) < 1e-9:
            out[-1] = (out[-1][0], seg[1])
        elif seg[1] > seg[0]:
            out.append(seg)
    return out


def closed_intervals(spec: LoadSpec, idx: int) -> list[tuple[float, float]]:
    if spec.stages:
        return user_intervals(idx, _points(spec.stages))
    start = spec.ramp_up * idx / spec.users if spec.ramp_up else 0.0
    return [(start, math.inf)]


class Arrivals:
    """Intended start times (seconds since start) of the open model, in order."""

    def __init__(self, spec: LoadSpec) -> None:
        self.rate = spec.rate
        self.pts = _points(spec.stages) if spec.stages else []
        self.seg = 0
        self.cum = 0.0  # integral of the rate up to the start of segment `seg`

    def time_of(self, k: int) -> float | None:
        """When the integral of the rate reaches ``k`` (call with increasing ``k``)."""
        if self.rate is not None:
            return k / self.rate
        pts = self.pts
        while self.seg < len(pts) - 1:
            (ta, ra), (tb, rb) = pts[self.seg], pts[self.seg + 1]
            d = tb - ta
            area = (ra + rb) / 2.0 * d
            need = k - self.cum
            if d > 0 and need <= area + 1e-12:
                a = (rb - ra) / (2.0 * d)
                disc = ra * ra + 4.0 * a * need
                denom = ra + math.sqrt(max(0.0, disc))
                x = 0.0 if denom <= 0 else 2.0 * need / denom
                return ta + min(max(x, 0.0), d)
            self.cum += area
            self.seg += 1
        return None
