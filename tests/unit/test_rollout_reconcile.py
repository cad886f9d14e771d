"""The reconciler through the context, with the in-memory provider and router: a service left at
2 of 2 by a completed rollout is held there outside rollouts; never during one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rollout_world import FAST, SERVICE, World, at_step, run, settle, wait_for

from imm.catalog.verify import verify_ledger
from imm.context import Timings
from imm.rollout import reconcile, teardown
from imm.rollout.reconcile import Reconciler
from imm.rollout.states import ACTIVE, COMPLETED


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def world(tmp: Path, **svc: Any) -> tuple[World, Reconciler, Clock]:
    w = World(tmp, {"web": {**SERVICE, "heal_grace_s": 5, **svc}})
    rec = Reconciler(w.ctx, w.engine.fleet)
    clock = Clock()
    rec.clock = clock
    return w, rec, clock


async def steady(w: World) -> list[str]:
    """Roll app@2 out to completion; the ids of its (serving) instances."""
    w.old_fleet(w.image("1"))
    w.image("2")
    st = await w.engine.start("alice", "web", "app@2")
    st = await settle(w.engine, st["id"])
    assert st["state"] == COMPLETED, st["error"]
    ids = sorted(w.provider.instances)
    assert set(w.router.serving()) == set(ids) and len(ids) == 2
    return ids


async def rows(w: World, fn: Any, *args: Any) -> Any:
    return await w.db.read(fn, *args)


def test_a_steady_service_is_left_alone(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        ids = await steady(w)
        assert await rec.tick() == {}
        assert sorted(w.provider.instances) == ids

    run(w, body)


def test_a_vanished_instance_is_removed_from_the_route_and_replaced(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        ids = await steady(w)
        gone = w.provider.instances.pop(ids[0])  # terminated behind imm's back
        done = (await rec.tick())["web"]
        assert [r["action"] for r in done] == ["vanished", "replace"]
        assert gone.id in done[0]["reason"]
        assert gone.id not in w.router.routes["web"]
        live = sorted(w.provider.instances)
        assert len(live) == 2 and ids[1] in live
        new = next(i for i in live if i != ids[1])
        assert set(w.router.serving()) == {ids[1], new}
        assert w.router.serving()[new] == w.router.serving()[ids[1]]
        # same image, same tags as a rollout gives
        assert w.provider.instances[new].image_id == gone.image_id
        assert w.provider.instances[new].tags == gone.tags
        # the replacement is a signed ledger record with its reason
        evs = await rows(w, reconcile.events, "web")
        assert [e["action"] for e in evs] == ["replace", "vanished"]
        assert gone.id in evs[0]["reason"]
        assert (await rows(w, verify_ledger, w.keyring, "imm.test/ledger"))["ok"]
        leaf = await w.db.read(lambda c: c.execute(
            "SELECT envelope FROM heal_events WHERE action='replace'").fetchone()[0])
        assert json.loads(leaf)["payloadType"] == "application/vnd.imm.heal.v1+json"
        assert await rec.tick() == {}, "converged"

    run(w, body)


def test_an_exited_instance_is_quarantined_not_terminated(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        ids = await steady(w)
        w.provider.instances[ids[0]].state = "stopped"  # its process died
        done = (await rec.tick())["web"]
        assert [r["action"] for r in done] == ["quarantine", "replace"]
        assert "exited" in done[0]["reason"]
        assert ids[0] in w.provider.instances, "kept for inspection"
        assert ids[0] not in w.router.routes["web"], "out of traffic"
        assert len(w.router.serving()) == 2
        q = await rows(w, reconcile.quarantined, "web")
        assert [(r["instance"], r["state"]) for r in q] == [(ids[0], "quarantined")]
        assert await rec.tick() == {}, "a quarantined instance is not counted nor replaced twice"

    run(w, body)


def test_unhealthy_past_grace_is_taken_out_and_replaced(tmp_path: Path) -> None:
    w, rec, clock = world(tmp_path, heal_grace_s=5)

    async def body() -> None:
        ids = await steady(w)
        w.router.sick.add(ids[0])
        assert await rec.tick() == {}, "within grace"
        clock.t += 4
        assert await rec.tick() == {}, "still within grace"
        clock.t += 2
        done = (await rec.tick())["web"]
        assert [r["action"] for r in done] == ["quarantine", "replace"]
        assert "health check" in done[0]["reason"]
        assert ids[0] not in w.router.routes["web"]
        assert ids[0] in w.provider.instances

    run(w, body)


def test_a_recovered_instance_restarts_its_grace(tmp_path: Path) -> None:
    w, rec, clock = world(tmp_path, heal_grace_s=5)

    async def body() -> None:
        ids = await steady(w)
        w.router.sick.add(ids[0])
        await rec.tick()
        clock.t += 4
        w.router.sick.discard(ids[0])
        await rec.tick()
        w.router.sick.add(ids[0])
        clock.t += 4
        assert await rec.tick() == {}

    run(w, body)


def test_quarantine_keeps_only_the_newest(tmp_path: Path) -> None:
    w, rec, clock = world(tmp_path, quarantine_keep=1, heal_max_per_min=10)

    async def body() -> None:
        first = (await steady(w))[0]
        w.provider.instances[first].state = "stopped"
        await rec.tick()
        second = next(i for i in sorted(w.provider.instances, key=lambda x: int(x[2:]))
                      if w.provider.instances[i].state == "running")
        w.provider.instances[second].state = "stopped"
        done = (await rec.tick())["web"]
        assert [r["action"] for r in done] == ["quarantine", "quarantine-expired", "replace"]
        assert first not in w.provider.instances, "the oldest is terminated"
        assert second in w.provider.instances
        held = await rows(w, reconcile.quarantined, "web")
        assert [r["instance"] for r in held] == [second]

    run(w, body)


def test_a_crash_looping_image_backs_off_and_raises_a_finding(tmp_path: Path) -> None:
    w, rec, clock = world(tmp_path, heal_max_per_min=2, quarantine_keep=100)

    async def body() -> None:
        await steady(w)
        launches = 0
        findings = 0
        for _ in range(6):  # every instance dies right after its start
            for i in w.provider.instances.values():
                i.state = "stopped"
            done = (await rec.tick()).get("web", [])
            launches += sum(r["detail"]["count"] for r in done if r["action"] == "replace")
            findings += sum(r["action"] == "crash-loop" for r in done)
            clock.t += 1
        assert launches == 2, "at most heal_max_per_min launches within the minute"
        assert findings == 1, "one finding per window, not one per pass"
        crash = [e for e in await rows(w, reconcile.events, "web") if e["action"] == "crash-loop"]
        assert "heal_max_per_min=2" in crash[0]["reason"]
        clock.t += 60  # the window passed: launches resume
        for i in w.provider.instances.values():
            i.state = "stopped"
        done = (await rec.tick())["web"]
        assert sum(r["detail"]["count"] for r in done if r["action"] == "replace") == 2

    run(w, body)


def test_a_service_with_an_active_rollout_is_untouched(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path, canary_pause_s=30)  # steady() rolls out blue-green

    async def body() -> None:
        ids = await steady(w)
        w.image("3")
        # a canary with long pauses: still under way when it is paused below
        st = await w.engine.start("alice", "web", "app@3", strategy="canary")
        # paused inside its first pause: no launch or shift of it is still in flight
        await at_step(w.engine, st["id"], "3-pause")
        await w.engine.set_state("alice", st["id"], "pause")
        assert (await w.engine.status(st["id"]))["state"] in ACTIVE
        w.provider.instances[ids[0]].state = "stopped"
        w.provider.instances.pop(ids[1])
        before = dict(w.provider.instances)
        assert await rec.tick() == {}
        assert w.provider.instances == before
        assert await rows(w, reconcile.events, "web") == []
        await w.engine.set_state("alice", st["id"], "abort")

    run(w, body)


def test_a_service_taken_down_after_its_rollout_is_not_healed(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        ids = await steady(w)
        rid = (await w.engine.list("web", 1))[0]["id"]
        await w.engine.journal.record(rid, "down", "down", {"reason": "decommissioned"},
                                      actor="alice")
        w.provider.instances.pop(ids[0])
        assert await rec.tick() == {}
        assert len(w.provider.instances) == 1

    run(w, body)


def test_an_instance_an_operator_terminated_is_not_replaced(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        ids = await steady(w)
        await teardown.terminate_instance(w.engine, "bob", ids[0], None, "too many")
        assert sorted(w.provider.instances) == [ids[1]]
        assert await rec.tick() == {}, "one fewer on purpose is not a fault to heal"
        assert sorted(w.provider.instances) == [ids[1]]
        w.provider.instances.pop(ids[1])  # the other one vanishing is still healed
        done = (await rec.tick())["web"]
        assert [r["action"] for r in done] == ["vanished", "replace"]
        assert len(w.provider.instances) == 1

    run(w, body)


def test_a_service_never_rolled_out_is_not_reconciled(tmp_path: Path) -> None:
    w, rec, _ = world(tmp_path)

    async def body() -> None:
        w.old_fleet(w.image("1"))
        w.provider.instances.pop(sorted(w.provider.instances)[0])
        assert await rec.tick() == {}

    run(w, body)


def test_the_background_task_heals_on_its_interval(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "heal_grace_s": 0}},
              timings=Timings(**{**FAST.__dict__, "heal_interval_s": 0.01}))
    rec = Reconciler(w.ctx, w.engine.fleet)

    async def body() -> None:
        ids = await steady(w)
        await rec.start()
        try:
            w.provider.instances[ids[0]].state = "stopped"
            await wait_for(lambda: len(w.router.serving()) == 2
                           and ids[0] not in w.router.routes["web"])
        finally:
            await rec.stop()
        await asyncio.sleep(0)

    run(w, body)
