"""teardown: service down and instance terminate through the engine's context, against the
in-memory provider and router of rollout_world (the real ones: tests/test_teardown.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rollout_world import SERVICE, World, at_step, run

from imm.errors import Conflict, NotFound
from imm.rollout import teardown
from imm.store import query

SLOW = {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}}


async def fleet_records(w: World) -> list[dict]:
    import base64

    rows = await w.db.read(lambda c: query(c, "SELECT data FROM ledger_leaves ORDER BY idx"))
    out = []
    for r in rows:
        env = json.loads(r["data"])
        if env["payloadType"].endswith("fleet.v1+json"):
            out.append(json.loads(base64.b64decode(env["payload"])))
    return out


def test_service_down_drains_removes_terminates_and_records(tmp_path: Path) -> None:
    w = World(tmp_path)
    ids = w.old_fleet(w.image("1"), 3)

    async def body() -> tuple[dict, list[dict]]:
        out = await teardown.service_down(w.engine, "alice", "web", "decommissioned")
        return out, await fleet_records(w)

    out, records = run(w, body)
    assert out["terminated"] == sorted(ids) and out["reason"] == "decommissioned"
    assert w.provider.instances == {} and w.router.routes["web"] == {}
    assert [c for c, _ in w.router.history] == ["drain"] * 3 + ["remove"] * 3
    (rec,) = records
    assert rec["action"] == "service-down" and rec["actor"] == "alice"
    assert sorted(i["id"] for i in rec["instances"]) == sorted(ids)


def test_terminate_one_instance_and_the_refusals(tmp_path: Path) -> None:
    w = World(tmp_path, services=SLOW)
    ids = w.old_fleet(w.image("1"), 2)
    w.image("2")

    async def body() -> list[dict]:
        out = await teardown.terminate_instance(w.engine, "bob", ids[0], None, None)
        assert out["id"] == ids[0] and out["service"] == "web"
        assert ids[0] not in w.provider.instances and ids[0] not in w.router.routes["web"]
        with pytest.raises(NotFound, match=f"no live instance '{ids[0]}'"):
            await teardown.terminate_instance(w.engine, "bob", ids[0], None, None)
        with pytest.raises(NotFound, match="no provider named 'nope'"):
            await teardown.terminate_instance(w.engine, "bob", ids[1], "nope", None)
        st = await w.engine.start("alice", "web", "app@2")
        await at_step(w.engine, st["id"], "3-pause")
        with pytest.raises(Conflict, match=f"rollout {st['id']} is running"):
            await teardown.terminate_instance(w.engine, "bob", ids[1], None, None)
        with pytest.raises(Conflict, match="abort it first"):
            await teardown.service_down(w.engine, "bob", "web", None)
        await w.engine.set_state("alice", st["id"], "abort")
        return await fleet_records(w)

    records = run(w, body)
    assert [r["action"] for r in records] == ["instance-terminate"]  # refusals record nothing
