"""Blast radius from the audit's observations, and its replacement through the engine's start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from audit_world import World, managed, run

from imm.audit import blast_radius as radius
from imm.errors import Conflict


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, services={"web": {"channel": "web/prod"}, "api": {"channel": "api/prod"},
                                  "batch": {}})
    yield w
    w.close()


def swept(world: World) -> dict[str, str]:
    """Three images (v2 built on v1), instances of each on three services, one sweep."""
    v1 = world.image("1")
    v2 = world.image("2", parent=v1)
    v3 = world.image("3")
    world.fleet.add("img-1", 2, **managed(v1, service="web"))
    world.fleet.add("img-2", 1, **managed(v2, service="api"))
    world.fleet.add("img-2", 1, **managed(v2, service="batch"))
    world.fleet.add("img-3", 3, **managed(v3, service="web"))
    run(world, world.auditor.run_sweep("t"))
    return {"v1": v1, "v2": v2, "v3": v3}


def test_an_image_and_its_descendants(world: World) -> None:
    d = swept(world)
    r = world.db.write_sync(radius.blast_radius, world.catalog, "app@1", 100)
    assert r["digest"] == d["v1"]
    assert [i["digest"] for i in r["images"]] == [d["v1"], d["v2"]]
    assert r["total"] == 4 and r["services"] == {"web": 2, "api": 1, "batch": 1}
    assert not r["truncated"] and len(r["instances"]) == 4
    assert r["as_of"]["state"] == "completed"


def test_the_limit_truncates_the_listing_not_the_counts(world: World) -> None:
    swept(world)
    r = world.db.write_sync(radius.blast_radius, world.catalog, "app@1", 3)
    assert r["total"] == 4 and len(r["instances"]) == 3 and r["truncated"]


def test_without_a_ref_every_revoked_image(world: World) -> None:
    d = swept(world)
    assert world.db.write_sync(radius.blast_radius, world.catalog, None, 10)["total"] == 0
    world.db.write_sync(world.catalog.revoke, "test", "app@3", "CVE-1", False)
    r = world.db.write_sync(radius.blast_radius, world.catalog, None, 10)
    assert r["ref"] is None and r["total"] == 3 and r["services"] == {"web": 3}
    assert r["images"][0]["digest"] == d["v3"] and r["images"][0]["revoked"]
    assert r["images"][0]["reason"] == "CVE-1"


def test_replace_starts_one_rollout_per_service_and_names_each_refusal(world: World) -> None:
    d = swept(world)
    world.db.write_sync(world.catalog.set_channel, "test", "web/prod", d["v3"])
    world.db.write_sync(world.catalog.set_channel, "test", "api/prod", d["v2"])
    started: list[tuple[str, str, str]] = []

    async def start(actor: str, service: str, ref: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        started.append((actor, service, ref))
        return {"id": f"r-{service}", "service": service, "digest": ref}

    r = run(world, radius.replace(world.ctx, start, "alice", "app@1"))

    assert started == [("alice", "web", d["v3"])]
    assert r["rollouts"] == [{"id": "r-web", "service": "web", "digest": d["v3"]}]
    assert set(r["refused"]) == {"api", "batch"}
    assert "still points at" in r["refused"]["api"] and "in the blast radius" in r["refused"]["api"]
    assert "no channel" in r["refused"]["batch"]


def test_a_refusal_of_the_engine_is_reported_per_service(world: World) -> None:
    d = swept(world)
    world.db.write_sync(world.catalog.set_channel, "test", "web/prod", d["v3"])

    async def start(actor: str, service: str, ref: str) -> dict[str, Any]:
        raise Conflict(f"service {service} already has a rollout in flight")

    r = run(world, radius.replace(world.ctx, start, "alice", "app@1"))
    assert r["rollouts"] == []
    assert r["refused"]["web"] == "service web already has a rollout in flight"


def test_a_channel_never_set_is_a_refusal_not_an_error(world: World) -> None:
    swept(world)

    async def start(actor: str, service: str, ref: str) -> dict[str, Any]:
        raise AssertionError("nothing may start")

    r = run(world, radius.replace(world.ctx, start, "alice", "app@1"))
    assert r["rollouts"] == [] and set(r["refused"]) == {"web", "api", "batch"}
