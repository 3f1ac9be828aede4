"""Live progress of long tests: a redrawn line on a TTY, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

PLAIN_EVERY_S = 5.0


class ProgressPrinter:
    def __init__(self, config: pytest.Config, mode: str) -> None:
        self.config = config
        self.mode = mode
        self._lock = threading.Lock()
        self._last_plain = 0.0
        self._drawn = False

    def _writer(self) -> Any:
        if hasattr(self.config, "workerinput"):
            return None  # xdist workers have no terminal; the controller prints the summary
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        return None if reporter is None else reporter._tw

    def _tty(self) -> bool:
        return sys.__stdout__ is not None and sys.__stdout__.isatty()

    def enabled(self) -> bool:
        if self.mode == "off" or self.config.get_verbosity() < 0:
            return False
        if self.mode == "on":
            return True
        return True  # auto: TTY redraws, otherwise plain lines every few seconds

    def sink(self, nodeid: str, kind: str) -> Callable[[Any], None] | None:
        if not self.enabled() or self._writer() is None:
            return None
        from pytest_stressguard.core.units import format_duration, format_rate, format_size

        name = nodeid.split("::")[-1]

        def show(p: Any) -> None:
            parts = [f"{kind} {name}: {format_duration(p.elapsed_s)}"]
            if p.remaining_s:
                parts[0] += f" (remaining {format_duration(p.remaining_s)})"
            warming = getattr(p, "warming_up", False)
            parts += [f"users {p.users}", "warming up" if warming else format_rate(p.rps)]
            if p.p95_ms is not None:
                parts.append(f"p95 {p.p95_ms:.1f}ms")
            parts.append(f"errors {p.errors}")
            line = "  ".join(parts)
            rss = getattr(p, "rss", None)
            if rss:
                line += f"  mem {format_size(rss)}"
            self._emit(line)

        return show

    def _emit(self, line: str) -> None:
        writer = self._writer()
        if writer is None:
            return
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with self._lock:
            now = time.monotonic()
            tty = self._tty()
            if not tty and now - self._last_plain < PLAIN_EVERY_S:
                return
            self._last_plain = now
            ctx = capman.global_and_fixture_disabled() if capman else _nullcontext()
            with ctx:
                if tty:
                    writer.write("\r\x1b[K" + line[: max(20, writer.fullwidth - 1)], flush=True)
                    self._drawn = True
                else:
                    reporter = self.config.pluginmanager.get_plugin("terminalreporter")
                    if reporter is not None:
                        reporter.ensure_newline()
                    writer.line(f"[stressguard] {line}")
                    writer.flush()

    def done(self) -> None:
        if not self._drawn:
            return
        writer = self._writer()
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with self._lock, (capman.global_and_fixture_disabled() if capman else _nullcontext()):
            writer.write("\r\x1b[K", flush=True)
            self._drawn = False


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
