"""Options: one group, one prefix, CLI > env > ini > default, resolved in one place."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import pytest

if TYPE_CHECKING:
    from pytest_stressguard.core.thresholds import CompareRule, Threshold

Progress = Literal["auto", "on", "off"]

# The threshold parser loads every metric declaration: these import it only when an option,
# env var or ini value is given, so a session without one does not pay for it at start-up.


def parse_threshold(text: str) -> Threshold:
    from pytest_stressguard.core.thresholds import parse_threshold

    return parse_threshold(text)


def parse_gate(text: str) -> Threshold:
    from pytest_stressguard.core.thresholds import parse_threshold

    return parse_threshold(text, scope="session")


def parse_compare(text: str) -> CompareRule:
    from pytest_stressguard.core.thresholds import parse_compare

    return parse_compare(text)


def _checked_by(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type= that keeps the text but rejects what `parse` rejects, with its message."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:  # ThresholdError and UnitsError are ValueErrors
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


_threshold_type = _checked_by(parse_threshold)
_gate_type = _checked_by(parse_gate)
_compare_type = _checked_by(parse_compare)


def _time_scale_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stressguard-time-scale: {text!r} is not a number (e.g. 0.05 for a 2h soak in 6m)"
        ) from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(
            f"--stressguard-time-scale: {text!r} must be greater than 0 (and at most 1000)"
        )
    return value


def _on_off_type(text: str) -> str:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"--stressguard-trends: {text!r} is not one of on, off")
    return text


def _progress_type(text: str) -> str:
    if text not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError(
            f"--stressguard-progress: {text!r} is not one of auto, on, off"
        )
    return text


class _Option(NamedTuple):  # not a dataclass: made at every start-up, a NamedTuple is cheaper
    name: str  # without the --stressguard- prefix
    help: str
    ini_type: Literal["string", "linelist"] = "string"
    repeatable: bool = False
    parse: Callable[[str], Any] | None = None

    @property
    def flag(self) -> str:
        return f"--stressguard-{self.name}"

    @property
    def ini(self) -> str:
        return "stressguard_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "STRESSGUARD_" + self.name.replace("-", "_").upper()

    @property
    def dest(self) -> str:
        return "stressguard_" + self.name.replace("-", "_")


OPTIONS: tuple[_Option, ...] = (
    _Option("sla", "default threshold for load, stress and soak tests without an sla of their "
            "own, e.g. 'p95<500ms' (repeatable; ini: stressguard_sla)", "linelist", True,
            _threshold_type),
    _Option("gate", "session gate, e.g. 'peak_rss<2GB' or 'test_duration_p95<1s' "
            "(repeatable; ini: stressguard_gates)", "linelist", True, _gate_type),
    _Option("time-scale", "multiply every load/stress/soak duration by F (0.05 runs a 2h soak "
            "in 6m)", parse=_time_scale_type),
    _Option("json", "write the versioned JSON report to PATH (atomically)"),
    _Option("html", "write a self-contained HTML report to PATH"),
    _Option("csv", "write time series (load timelines, memory samples) as CSV files into DIR"),
    _Option("save", "save this run's figures as baseline NAME"),
    _Option("compare", "compare with baseline NAME and print the changes"),
    _Option("compare-fail", "fail the session on a regression, e.g. 'p95:+10%' or 'rps:-10%' "
            "(repeatable)", "linelist", True, _compare_type),
    _Option("dsn", "PostgreSQL DSN for stressguard_dsn (else env STRESSGUARD_DSN, DATABASE_URL, "
            "else an embedded throw-away server)"),
    _Option("progress", "live progress for long tests: auto (on a TTY), on, off",
            parse=_progress_type),
    _Option("trends", "per-test memory trends across repetitions: on (default) or off",
            parse=_on_off_type),
    _Option("dir", "where baselines are stored (default: .stressguard in the rootdir)"),
)

# The ini key for gates reads better in the plural; every other key is the option's name.
_INI_NAMES = {"gate": "stressguard_gates"}


def ini_name(opt: _Option) -> str:
    return _INI_NAMES.get(opt.name, opt.ini)


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stressguard", "load, stress, soak and race testing (stressguard)")
    for opt in OPTIONS:
        # argparse %-formats help strings: a literal % (as in 'p95:+10%') must be doubled
        kwargs: dict[str, Any] = {"dest": opt.dest, "default": None,
                                  "help": opt.help.replace("%", "%%")}
        if opt.repeatable:
            kwargs["action"] = "append"
        if opt.parse is not None:
            kwargs["type"] = opt.parse
        metavar = opt.name.split("-")[-1].upper()
        group.addoption(opt.flag, metavar=metavar, **kwargs)
        parser.addini(ini_name(opt), opt.help, type=opt.ini_type, default=None)


@dataclass(frozen=True)
class Settings:
    sla: tuple[Threshold, ...] = ()
    gates: tuple[Threshold, ...] = ()
    time_scale: float = 1.0
    json_path: str | None = None
    html_path: str | None = None
    csv_dir: str | None = None
    save: str | None = None
    compare: str | None = None
    compare_fail: tuple[CompareRule, ...] = ()
    dsn: str | None = None
    progress: Progress = "auto"
    baseline_dir: str | None = None
    trends: bool = True

    @property
    def writes_files(self) -> bool:
        """Whether the session ends by writing a report, CSV files or a baseline."""
        return bool(self.json_path or self.html_path or self.csv_dir or self.save)

    @property
    def has_session_result(self) -> bool:
        """Whether the end of the session has anything to decide: gates to check, a baseline to
        compare with, or files to write (they carry the session's figures)."""
        return bool(self.gates or self.compare or self.writes_files)


def _resolve(config: pytest.Config, opt: _Option) -> tuple[Any, str]:
    """Return (raw value, where it came from): CLI > env > ini > default (None)."""
    cli = config.getoption(opt.dest)
    if cli is not None:
        return cli, opt.flag
    env = os.environ.get(opt.env)
    if env:
        if opt.repeatable:
            return [line.strip() for line in env.replace(";", "\n").splitlines() if line.strip()], opt.env
        return env, opt.env
    ini = config.getini(ini_name(opt))
    if ini:
        return ini, f"ini {ini_name(opt)}"
    return None, "default"


def _parse_many(
    values: Sequence[str], parse: Callable[[str], Any], where: str
) -> tuple[Any, ...]:
    out = []
    for text in values:
        try:
            out.append(parse(text))
        except ValueError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
    return tuple(out)


def load_settings(config: pytest.Config) -> Settings:
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        value, where = _resolve(config, opt)
        raw[opt.name] = value
        sources[opt.name] = where
        # Values from env and ini have not been through argparse's type= check yet.
        if value is not None and opt.parse is not None and not where.startswith("--"):
            try:
                if opt.repeatable:
                    for v in value:
                        opt.parse(v)
                else:
                    raw[opt.name] = opt.parse(value)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"{where}: {exc}") from None

    def text(name: str) -> str | None:
        value = raw[name]
        return None if value is None else str(value)

    settings = Settings(
        sla=_parse_many(raw["sla"] or (), parse_threshold, sources["sla"]),
        gates=_parse_many(raw["gate"] or (), parse_gate, sources["gate"]),
        time_scale=float(raw["time-scale"]) if raw["time-scale"] is not None else 1.0,
        json_path=text("json"),
        html_path=text("html"),
        csv_dir=text("csv"),
        save=text("save"),
        compare=text("compare"),
        compare_fail=_parse_many(raw["compare-fail"] or (), parse_compare, sources["compare-fail"]),
        dsn=text("dsn"),
        progress=raw["progress"] or "auto",
        baseline_dir=text("dir"),
        trends=raw["trends"] != "off",
    )
    if any((settings.json_path, settings.html_path, settings.csv_dir, settings.save,
            settings.compare)):
        check_outputs(config, settings)
    return settings


def check_outputs(config: pytest.Config, settings: Settings) -> None:
    """Every report path and baseline name, checked before any test runs (exit 4, one line):
    a report that cannot be written must not surface as a traceback after a long soak."""
    from pytest_stressguard.report import paths

    try:
        for flag, value in (("--stressguard-json", settings.json_path),
                            ("--stressguard-html", settings.html_path)):
            if value:
                paths.check_file(flag, value)
        if settings.csv_dir:
            paths.check_dir("--stressguard-csv", settings.csv_dir)
        for flag, name in (("--stressguard-save", settings.save),
                           ("--stressguard-compare", settings.compare)):
            if name:
                try:
                    paths.check_baseline_name(name)
                except paths.OutputPathError as exc:
                    raise pytest.UsageError(f"{flag}={name}: {exc}") from None
        if settings.save:
            where = paths.baseline_directory(config.rootpath, settings.baseline_dir)
            paths.check_dir("--stressguard-dir", str(where))
    except paths.OutputPathError as exc:
        raise pytest.UsageError(str(exc)) from None
