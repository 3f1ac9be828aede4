"""Report paths are checked at start-up: a path that cannot be written fails the run before any
test (exit 4, one line), not with a traceback after a 30-minute soak."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    pass


def _writable_dir(directory: Path, option: str, shown: str) -> None:
    """``directory`` exists and is writable, or can be created (its nearest existing ancestor is
    a writable directory)."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"{option}={shown}: {probe} is not a directory")
    try:  # a real write: os.access says yes to root where the kernel says no (/proc)
        with tempfile.TemporaryFile(dir=probe, prefix=".stressguard-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"{option}={shown}: {probe} is not writable "
                              f"({exc.strerror or exc})") from None


def check_file(option: str, value: str) -> None:
    """A report file: not a directory, in a directory that is or can be made writable."""
    path = Path(value)
    if path.is_dir():
        raise OutputPathError(f"{option}={value}: is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option}={value}: the file exists and is not writable")
    _writable_dir(path.parent if str(path.parent) else Path("."), option, value)


def check_dir(option: str, value: str) -> None:
    """A directory of report files: a directory, or creatable."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option}={value}: exists and is not a directory")
    _writable_dir(path, option, value)


def check_baseline_name(name: str) -> str:
    """A baseline is a file in the baselines directory: its name stays a plain file name."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise OutputPathError(f"baseline name {name!r}: use letters, digits, '-', '_' and '.' "
                              f"(not starting with '.')")
    return name


def baseline_directory(rootpath: Path, configured: str | None) -> Path:
    return Path(configured) if configured else rootpath / ".stressguard" / "baselines"
