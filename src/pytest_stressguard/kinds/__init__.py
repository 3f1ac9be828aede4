"""The registry of kinds: adding a kind is one module in this package and one line here.

The order is the order of the summary's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_stressguard.kinds import concurrent, load, pool, soak, stress
from pytest_stressguard.markers import MarkerError, bind

if TYPE_CHECKING:  # the protocols type the registry; a run imports kinds.base itself
    from pytest_stressguard.kinds.base import Kind, MarkerKind

MARKER_KINDS: dict[str, MarkerKind] = {
    load.KIND.name: load.KIND,
    stress.KIND.name: stress.KIND,
    soak.KIND.name: soak.KIND,
    concurrent.KIND.name: concurrent.KIND,
}
KINDS: dict[str, Kind] = {**MARKER_KINDS, pool.KIND.name: pool.KIND}


def marks_of(node: Any) -> list[tuple[str, Any]]:
    return [(m.name, m) for m in node.iter_markers() if m.name in MARKER_KINDS]


def bind_spec(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], time_scale: float) -> Any:
    """A marker's arguments bound to its spec, scaled by --stressguard-time-scale: the only place
    the time scale is applied (marks and load_runner.run alike)."""
    return bind(MARKER_KINDS[name].marker, args, kwargs).scaled(time_scale)


def bind_item_mark(nodeid: str, node: Any, time_scale: float) -> tuple[str, Any] | None:
    """The one stressguard mark of a test, bound to its spec; raises MarkerError naming the test."""
    found = marks_of(node)
    if not found:
        return None
    names = sorted({name for name, _ in found})
    if len(names) > 1:
        raise MarkerError(f"{nodeid}: a test takes one of "
                          f"{', '.join('@' + n for n in MARKER_KINDS)}; "
                          f"found {', '.join('@' + n for n in names)}")
    name, mark = found[0]  # the closest one wins, like any pytest marker
    try:
        return name, bind_spec(name, mark.args, dict(mark.kwargs), time_scale)
    except MarkerError as exc:
        raise MarkerError(f"{nodeid}: @pytest.mark.{name}: {exc}") from None
