"""Every example config in config/ loads, and its providers, routers and services build."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm import config
from imm.plugins.base import PluginContext
from imm.plugins.manager import Plugins
from imm.rollout.services import load_services

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "config").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_builds(path: Path, tmp_path: Path) -> None:
    import logging

    s = config.load(str(path), state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s"))
    plugins = Plugins()
    for name, entry in s.providers.items():
        cls = plugins.providers.get(entry["kind"])
        cls(name, {k: v for k, v in entry.items() if k != "kind"},
            PluginContext(tmp_path, logging.getLogger("t")))
    for name, entry in s.routers.items():
        rcls = plugins.routers.get(entry["kind"])
        rcls(name, {k: v for k, v in entry.items() if k != "kind"},
             PluginContext(tmp_path, logging.getLogger("t")))
    services = load_services(s.services, set(s.providers), set(s.routers))
    assert all(svc.count >= 1 for svc in services.values())


def test_embedded_default_is_there() -> None:
    assert any(p.name == "immd.toml" for p in CONFIGS)
    s = config.load(None)
    assert s.providers["local"]["kind"] == "local"
