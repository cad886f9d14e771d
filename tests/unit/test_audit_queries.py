"""The audit's reads: findings and instances, filtered and paged."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_world import World, managed, run

from imm.audit.queries import as_of, list_findings, list_instances


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    d = w.image("1")
    w.rollouts.known.add("r-1")
    w.fleet.add("img-1", 2, **managed(d, service="web"))  # ok
    w.fleet.add("ami-unknown", 3)  # unknown-image + outside-rollout each
    yield w
    w.close()


def findings(world: World, **kw: object) -> dict:
    args = {"open_only": False, "verdict": None, "instance": None, "after": 0, "limit": 100}
    return world.db.write_sync(list_findings, **{**args, **kw})


def test_as_of_is_none_before_any_sweep_then_the_last_finished_one(world: World) -> None:
    assert world.db.write_sync(as_of) is None
    run(world, world.auditor.run_sweep("t"))
    assert world.db.write_sync(as_of)["state"] == "completed"


def test_findings_filter_count_and_page(world: World) -> None:
    run(world, world.auditor.run_sweep("t"))
    every = findings(world)
    assert len(every["findings"]) == 6 and every["next"] is None
    assert every["open"] == {"outside-rollout": 3, "unknown-image": 3}
    assert all(isinstance(f["detail"], dict) for f in every["findings"])

    unknown = findings(world, verdict="unknown-image")["findings"]
    assert {f["verdict"] for f in unknown} == {"unknown-image"} and len(unknown) == 3
    one = findings(world, instance=unknown[0]["instance_id"])["findings"]
    assert {f["instance_id"] for f in one} == {unknown[0]["instance_id"]} and len(one) == 2

    page = findings(world, limit=4)
    assert len(page["findings"]) == 4 and page["next"] == page["findings"][-1]["id"]
    rest = findings(world, after=page["next"], limit=4)
    assert len(rest["findings"]) == 2 and rest["next"] is None


def test_open_only_leaves_out_resolved_findings(world: World) -> None:
    run(world, world.auditor.run_sweep("t"))
    gone = next(i for i in world.fleet.instances.values() if i.image_id == "ami-unknown")
    del world.fleet.instances[gone.id]
    run(world, world.auditor.run_sweep("t"))
    assert len(findings(world)["findings"]) == 6
    opened = findings(world, open_only=True)
    assert len(opened["findings"]) == 4 and gone.id not in {
        f["instance_id"] for f in opened["findings"]}
    assert opened["open"] == {"outside-rollout": 2, "unknown-image": 2}


def test_instances_by_verdict_and_service_with_their_image(world: World) -> None:
    run(world, world.auditor.run_sweep("t"))

    def instances(**kw: object) -> dict:
        args = {"verdict": None, "service": None, "after": 0, "limit": 100}
        return world.db.write_sync(list_instances, **{**args, **kw})

    every = instances()
    assert len(every["instances"]) == 5 and every["as_of"]["state"] == "completed"
    web = instances(service="web")["instances"]
    assert len(web) == 2 and {i["image"] for i in web} == {"app@1"}
    assert all(i["verdicts"] == ["ok"] and i["details"] == {} for i in web)
    unknown = instances(verdict="unknown-image")["instances"]
    assert len(unknown) == 3 and all(i["image"] is None for i in unknown)
    assert all("unknown-image" in i["details"] for i in unknown)
    page = instances(limit=2)
    assert page["next"] == page["instances"][-1]["cursor"]
    assert len(instances(after=page["next"])["instances"]) == 3
