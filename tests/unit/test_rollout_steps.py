"""The plan the steps carry out (make_plan, weights) and the step actions themselves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollout_world import SERVICE, World, at_step, run

from imm.rollout.plan import make_plan, weights
from imm.rollout.services import parse_service
from imm.rollout.states import StepFailed


def _svc(**kw: object):  # type: ignore[no-untyped-def]
    return parse_service("web", {**SERVICE, **kw}, {"mem"}, {"lb"})


def test_blue_green_plan_with_and_without_bake() -> None:
    ops = [(s["name"], s.get("pct"), s.get("count")) for s in make_plan(_svc(), "blue-green")]
    assert ops == [("0-launch", None, None), ("1-attach", None, None), ("2-shift", 100, None),
                   ("3-retire", None, "all")]
    baked = make_plan(_svc(bake_time_s=60), "blue-green")
    assert [s["op"] for s in baked] == ["launch", "attach", "shift", "bake", "retire"]
    assert baked[3]["seconds"] == 60
    assert baked[0]["slots"] == [0, 1]


def test_rolling_plan_batches_cover_every_slot_once() -> None:
    svc = _svc(targets=[{"provider": "mem", "region": "r1", "count": 5}], batch="2")
    plan = make_plan(svc, "rolling")
    launches = [s for s in plan if s["op"] == "launch"]
    assert [s["slots"] for s in launches] == [[0, 1], [2, 3], [4]]
    assert [s["batch"] for s in launches] == [0, 1, 2]
    retires = [s["count"] for s in plan if s["op"] == "retire"]
    assert retires == [2, 2, "all"], "the last batch retires whatever old is left"
    assert all(s["pct"] == "even" for s in plan if s["op"] == "shift")
    pct = make_plan(_svc(targets=[{"provider": "mem", "region": "r1", "count": 4}],
                         batch="50%"), "rolling")
    assert [s["slots"] for s in pct if s["op"] == "launch"] == [[0, 1], [2, 3]]


def test_canary_plan_shifts_then_pauses_per_step() -> None:
    plan = make_plan(_svc(canary_steps=[5, 25, 60], canary_pause_s=7), "canary")
    assert [(s["op"], s.get("pct"), s.get("seconds")) for s in plan] == [
        ("launch", None, None), ("attach", None, None),
        ("shift", 5, None), ("pause", None, 7), ("shift", 25, None), ("pause", None, 7),
        ("shift", 60, None), ("pause", None, 7), ("shift", 100, None), ("retire", None, None)]
    assert [s["name"] for s in plan][:3] == ["0-launch", "1-attach", "2-shift"]


@pytest.mark.parametrize(("pct", "new", "old", "share"), [
    (10, 1, 1, 0.10), (50, 2, 2, 0.50), (25, 1, 3, 0.25), (90, 3, 1, 0.90), (1, 1, 9, 0.01)])
def test_weights_give_the_new_set_its_share(pct: int, new: int, old: int, share: float) -> None:
    n = [f"n{i}" for i in range(new)]
    o = [f"o{i}" for i in range(old)]
    w = weights(pct, n, o)
    assert all(1 <= v <= 256 for v in w.values())
    got = sum(w[x] for x in n) / sum(w.values())
    assert got == pytest.approx(share, abs=0.01)
    assert max(w.values()) == 256, "scaled to the router's full weight range"


def test_weights_at_the_edges() -> None:
    assert weights(100, ["n"], ["o"]) == {"n": 100, "o": 0}
    assert weights(0, ["n"], ["o"]) == {"n": 0, "o": 100}
    assert weights(40, ["n"], []) == {"n": 100}, "nothing old: all to the new"
    assert weights(40, [], ["o"]) == {"o": 100}, "nothing new: all to the old"
    assert weights(100, ["n"], ["o"], scale=1) == {"n": 1, "o": 0}


def test_launch_is_idempotent_per_batch(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1")

    async def body() -> None:
        svc = w.engine.service("web")
        digest = await w.db.read(w.catalog.resolve, "app@1")
        r = {"id": "web-t", "digest": digest, "params": {"artifacts": {"mem/r1": "img-1-r1"}}}
        step = make_plan(svc, "blue-green")[0]
        a = await w.engine.steps.launch(svc, r, step)
        b = await w.engine.steps.launch(svc, r, step)  # after a crash: same client token
        assert a == b and len(a["instances"]) == 2
        inst = w.provider.instances[a["instances"][0]]
        assert inst.tags == {"imm:service": "web", "imm:rollout": "web-t", "imm:slot": "b0",
                             "imm:digest": digest}

    run(w, body)
    assert len(w.provider.instances) == 2


def test_attach_adds_at_weight_zero_and_refuses_an_unreachable_instance(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1")

    async def body() -> None:
        svc = w.engine.service("web")
        r = {"id": "web-t", "digest": "sha256:x", "strategy": "blue-green",
             "params": {"artifacts": {"mem/r1": "img-1-r1"}}}
        plan = make_plan(svc, "blue-green")
        got = await w.engine.steps.launch(svc, r, plan[0])
        res = await w.engine.steps.attach(svc, r, plan[1])
        assert res == {"instances": sorted(got["instances"]), "healthy": True}
        assert {b.name: b.weight for b in w.router.backends("web")} == {
            i: 0 for i in got["instances"]}
        w.router.routes["web"].clear()
        w.provider.instances[got["instances"][0]].address = None
        with pytest.raises(StepFailed, match="has no address the router can reach"):
            await w.engine.steps.attach(svc, r, plan[1])

    run(w, body)


def test_retire_never_leaves_the_route_without_a_healthy_backend(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))

    async def body() -> None:
        svc = w.engine.service("web")
        items = [{"id": i, "provider": "mem"} for i in old]
        with pytest.raises(StepFailed, match="would be left without a healthy backend"):
            await w.engine.steps.retire(svc, items)
        assert set(w.provider.instances) == set(old), "nothing terminated"
        assert await w.engine.steps.retire(svc, items[:1]) == {"retired": [old[0]]}
        assert list(w.provider.instances) == [old[1]]
        assert [c for c, _ in w.router.history] == ["drain", "remove"]

    run(w, body)


def test_retire_terminates_then_removes_a_backend_the_router_kept(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.router.fail["remove"] = 1  # sessions outlived the drain: the first removal is refused

    async def body() -> None:
        await w.engine.steps.retire(w.engine.service("web"), [{"id": old[0], "provider": "mem"}])

    run(w, body)
    assert old[0] not in w.provider.instances and old[0] not in w.router.routes["web"]


def test_a_wait_stops_when_the_rollout_is_paused(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}})
    w.image("1")

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@1"))["id"]
        await at_step(w.engine, rid, "3-pause")
        svc = w.engine.service("web")
        r = await w.engine.journal.load(rid)
        waiting = asyncio.create_task(w.engine.steps.wait(svc, r, r["params"]["plan"][3]))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await w.engine.set_state("bob", rid, "pause")
        assert await asyncio.wait_for(waiting, 2) == {"interrupted": "paused"}

    run(w, body)
