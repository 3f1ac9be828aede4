"""pytest11 entry point `stressguard`: options, markers, configure. Every other hook lives on
the StressGuardPlugin object registered here (`-p no:stressguard` disables it all)."""

from __future__ import annotations

import pytest

from pytest_stressguard import settings as _settings

PLUGIN_NAME = "stressguard-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    _settings.addoption(parser)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_stressguard import fixtures
    from pytest_stressguard.hooks import StressGuardPlugin, TrendTracker, XdistHooks
    from pytest_stressguard.kinds import MARKER_KINDS
    from pytest_stressguard.markers import marker_help

    for name, kind in MARKER_KINDS.items():
        config.addinivalue_line("markers", marker_help(name, kind.marker))

    plugin = StressGuardPlugin(config, _settings.load_settings(config))
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if plugin.settings.trends:
        config.pluginmanager.register(TrendTracker(), "stressguard-trends")
    config.pluginmanager.register(fixtures, "stressguard-fixtures")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(plugin.store), "stressguard-xdist")
