"""docs/internals.md promises that nothing under core/ imports pytest or xdist: the measuring core
is plain Python, usable (and tested) without them. Imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest_stressguard.core

CORE = Path(pytest_stressguard.core.__file__).parent
FORBIDDEN = ("pytest", "_pytest", "xdist", "pluggy")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_under_core_imports_pytest_or_xdist() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20
    offenders = {
        str(path.relative_to(CORE)): sorted(name for name in imported_modules(path)
                                            if name.split(".")[0] in FORBIDDEN)
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_imports_in_a_process_without_pytest() -> None:
    code = ("import sys, importlib, pkgutil, pytest_stressguard.core as core\n"
            "sys.modules['pytest'] = None; sys.modules['_pytest'] = None\n"
            "for m in pkgutil.walk_packages(core.__path__, 'pytest_stressguard.core.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
