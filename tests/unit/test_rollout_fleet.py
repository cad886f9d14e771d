"""The live view: a service's instances by tag, shared for view_ttl_s between status calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollout_world import FAST, World

from imm.context import Timings
from imm.errors import ConfigError


def test_instances_are_the_services_live_ones(tmp_path: Path) -> None:
    w = World(tmp_path)
    ids = [i.id for i in w.provider.add_old("sha256:a", 3)]
    w.provider.instances[ids[0]].state = "stopped"
    w.provider.add_old("sha256:a", 1, service="api")
    svc = w.engine.service("web")
    got = asyncio.run(w.engine.fleet.instances(svc))
    assert sorted(i.id for i in got) == sorted(ids[1:])
    assert asyncio.run(w.engine.fleet.instances(svc, rollout="web-9")) == []
    w.close()


def test_status_views_are_shared_for_their_ttl(tmp_path: Path) -> None:
    w = World(tmp_path, timings=Timings(**{**FAST.__dict__, "view_ttl_s": 60.0}))
    w.old_fleet("sha256:a")
    svc = w.engine.service("web")

    async def main() -> None:
        first = await w.engine.fleet.live_view(svc)
        n = w.provider.calls.count("list_instances")
        second = await w.engine.fleet.live_view(svc)
        assert second is first and w.provider.calls.count("list_instances") == n

    asyncio.run(main())
    w.close()


def test_reload_refuses_a_service_on_an_unknown_provider(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.settings.services = {"web": {"targets": [{"provider": "gone", "count": 1}]}}
    with pytest.raises(ConfigError, match="provider 'gone' is not a configured provider"):
        w.engine.fleet.reload()
    assert list(w.engine.services) == ["web"], "the running services are kept"
    w.close()
