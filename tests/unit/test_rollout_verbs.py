"""The operator verbs: start, pause, resume, promote, abort, undo, status, list; the rules
each enforces (one rollout per service, which state a verb applies to, policy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollout_world import SERVICE, Events, World, at_step, run, settle, wait_for

from imm.errors import BadRequest, Conflict, NotFound, PolicyRefused
from imm.plugins.hookspecs import hookimpl
from imm.rollout.states import COMPLETED, PAUSED, ROLLED_BACK, RUNNING

SLOW = {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}}


def _first_shift(w: World) -> bool:
    return any(c == "set_weights" for c, _ in w.router.history)


def test_start_returns_the_plan_and_records_actor_image_and_previous(tmp_path: Path) -> None:
    events = Events()
    w = World(tmp_path, plugins=[events])
    old_digest = w.image("1")
    w.old_fleet(old_digest)
    new = w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        assert st["state"] == RUNNING and st["actor"] == "alice"
        assert st["image"] == new and st["image_ref"] == "app@2"
        assert st["previous"] == old_digest
        assert [s["status"] for s in st["plan"]][-1] == "pending"
        return await settle(w.engine, st["id"])

    st = run(w, body)
    start = st["journal"][0]
    assert start["action"] == "start" and start["actor"] == "alice"
    assert start["detail"]["plan"] == [s["name"] for s in st["plan"]]
    assert isinstance(start["ledger_index"], int)
    # observers see every entry, the start included, each signed into the ledger in order
    assert [e["seq"] for e in events.seen] == [j["seq"] for j in st["journal"]]
    assert events.seen[0]["action"] == "start"


def test_one_active_rollout_per_service(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.image("1")
    w.image("2")

    async def body() -> None:
        first = await w.engine.start("alice", "web", "app@1")
        with pytest.raises(Conflict) as e:
            await w.engine.start("bob", "web", "app@2")
        assert e.value.detail == {"active": first["id"]}
        assert f"rollout {first['id']} of service web is running" in e.value.message
        # two at once: the store's check lets exactly one through
        await w.engine.set_state("alice", first["id"], "abort")
        await settle(w.engine, first["id"])
        got = await asyncio.gather(w.engine.start("a", "web", "app@2"),
                                   w.engine.start("b", "web", "app@2"), return_exceptions=True)
        assert sorted(type(g).__name__ for g in got) == ["Conflict", "dict"]

    run(w, body)


def test_pause_and_resume_only_from_the_right_state(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        with pytest.raises(Conflict, match="only a paused rollout can be resumed"):
            await w.engine.set_state("bob", rid, "resume")
        st = await w.engine.set_state("bob", rid, "pause")
        assert st["state"] == PAUSED
        with pytest.raises(Conflict, match="only a running rollout can be paused"):
            await w.engine.set_state("bob", rid, "pause")
        st = await w.engine.set_state("carol", rid, "resume")
        assert st["state"] == RUNNING
        who = [(j["action"], j["actor"]) for j in st["journal"] if j["action"] in
               ("pause", "resume")]
        assert who == [("pause", "bob"), ("resume", "carol")]

    run(w, body)


def test_promote_skips_remaining_waits_and_partial_shifts(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    old = w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await wait_for(lambda: _first_shift(w))
        await w.engine.set_state("bob", rid, "promote")
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED
    pct = [a for c, a in w.router.history if c == "set_weights"]
    assert len(pct) == 2, "10 %, then straight to 100 %"
    assert all(pct[-1][i] == 0 for i in old)
    assert any(j["action"] == "promote" and j["actor"] == "bob" for j in st["journal"])


def test_promote_a_paused_rollout_and_not_a_finished_one(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await w.engine.set_state("bob", rid, "pause")
        st = await w.engine.set_state("bob", rid, "promote")
        assert st["state"] == RUNNING, "promote resumes a paused rollout"
        st = await settle(w.engine, rid)
        with pytest.raises(Conflict, match="already completed; nothing to promote"):
            await w.engine.set_state("bob", rid, "promote")

    run(w, body)


def test_a_promote_landing_while_the_paused_task_reads_its_state_is_not_lost(
        tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.old_fleet(w.image("1"))
    w.image("2")
    load = w.engine.journal.load

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await w.engine.set_state("bob", rid, "pause")
        await wait_for(lambda: not w.engine.wake[rid].is_set())  # the task sleeps, paused
        task = w.engine.tasks[rid]
        landed: list[str] = []

        async def stale_load(r: str) -> dict:
            got = await load(r)
            if asyncio.current_task() is task and not landed and got["state"] == PAUSED:
                # the promote lands after the task read "paused" and before it acts on it
                landed.append("promoting")
                landed[0] = (await w.engine.set_state("bob", rid, "promote"))["state"]
            return got

        w.engine.journal.load = stale_load  # type: ignore[method-assign]
        w.engine.wake[rid].set()  # the task wakes once, reads the state it is about to miss
        await wait_for(lambda: landed == [RUNNING])
        st = await settle(w.engine, rid)
        assert st["state"] == COMPLETED

    run(w, body)


def test_abort_twice_and_after_the_end_is_a_conflict(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.old_fleet(w.image("1"))
    w.image("2")
    w.provider.fail["terminate"] = 10**6  # keeps the rollback going

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await w.engine.set_state("bob", rid, "abort")
        with pytest.raises(Conflict, match="already rolling back"):
            await w.engine.set_state("bob", rid, "abort")
        w.provider.fail["terminate"] = 0
        await settle(w.engine, rid)
        with pytest.raises(Conflict, match="already rolled-back; nothing to abort"):
            await w.engine.set_state("bob", rid, "abort")

    run(w, body)


def test_unknown_verb_rollout_and_service_are_named(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1")

    async def body() -> None:
        with pytest.raises(BadRequest, match="'restart'"):
            await w.engine.set_state("bob", "web-x", "restart")
        with pytest.raises(NotFound, match="no rollout 'web-x'"):
            await w.engine.set_state("bob", "web-x", "pause")
        with pytest.raises(NotFound, match="no rollout 'web-x'"):
            await w.engine.status("web-x")
        with pytest.raises(NotFound, match=r"no service named 'api' \(services: web\)"):
            await w.engine.start("bob", "api", "app@1")
        with pytest.raises(BadRequest, match="strategy 'big-bang'; use one of blue-green, "
                                             "rolling, canary"):
            await w.engine.start("bob", "web", "app@1", strategy="big-bang")

    run(w, body)


def test_policy_refusal_starts_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1", regions=("r2",))  # no artifact in the service's region

    async def body() -> None:
        with pytest.raises(PolicyRefused, match="artifact-in-every-region"):
            await w.engine.start("bob", "web", "app@1")
        assert await w.engine.list(None, 10) == []

    run(w, body)
    assert w.provider.instances == {}


def test_undo_rolls_back_to_the_previous_image(tmp_path: Path) -> None:
    w = World(tmp_path)
    first = w.image("1")
    w.old_fleet(first)
    w.image("2")

    async def body() -> dict:
        with pytest.raises(Conflict, match="no completed rollout"):
            await w.engine.undo("bob", "web")
        done = await settle(w.engine, (await w.engine.start("alice", "web", "app@2"))["id"])
        undo = await w.engine.undo("bob", "web")
        assert undo["image"] == first
        st = await settle(w.engine, undo["id"])
        assert st["journal"][0]["detail"]["undo_of"] == done["id"]
        return st

    st = run(w, body)
    assert st["state"] == COMPLETED
    assert {i.tags["imm:digest"] for i in w.provider.instances.values()} == {first}


def test_undo_refused_by_policy_names_the_rollout_undone(tmp_path: Path) -> None:
    w = World(tmp_path)
    first = w.image("1")
    w.old_fleet(first)
    w.image("2")

    async def body() -> None:
        done = await settle(w.engine, (await w.engine.start("alice", "web", "app@2"))["id"])
        await w.db.write(w.catalog.revoke, "sec", "app@1", "CVE-2026-0001", False)
        with pytest.raises(PolicyRefused) as e:
            await w.engine.undo("bob", "web")
        assert e.value.message.startswith(f"undo of {done['id']} to {first[:19]}: ")
        assert "not-revoked" in e.value.message

    run(w, body)


def test_list_newest_first_filtered_and_limited(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1")
    w.image("2")

    async def body() -> None:
        a = await settle(w.engine, (await w.engine.start("alice", "web", "app@1"))["id"])
        b = await settle(w.engine, (await w.engine.start("alice", "web", "app@2"))["id"])
        rows = await w.engine.list(None, 10)
        assert [r["id"] for r in rows] == [b["id"], a["id"]]
        assert rows[0]["state"] == COMPLETED and rows[0]["previous_digest"] == a["image"]
        assert [r["id"] for r in await w.engine.list("web", 1)] == [b["id"]]
        assert await w.engine.list("api", 10) == []

    run(w, body)


def test_status_shows_live_instances_while_running_and_none_after(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    old = w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        st = await at_step(w.engine, rid, "3-pause")  # the first canary pause has begun
        by_id = {i["id"]: i for i in st["instances"]}
        assert {i for i, v in by_id.items() if not v["new"]} == set(old)
        new = [v for v in by_id.values() if v["new"]]
        assert len(new) == 2 and all(v["healthy"] is True and v["state"] == "ready" for v in new)
        assert {s["name"]: s["status"] for s in st["plan"]}["0-launch"] == "done"
        assert {s["name"]: s["status"] for s in st["plan"]}["3-pause"] == "running"
        await w.engine.set_state("alice", rid, "abort")
        st = await settle(w.engine, rid)
        assert st["state"] == ROLLED_BACK and st["instances"] == [] and st["finished_at"]

    run(w, body)


def test_status_reports_a_provider_outage_instead_of_failing(tmp_path: Path) -> None:
    w = World(tmp_path, SLOW)
    w.image("2")

    async def body() -> None:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await wait_for(lambda: _first_shift(w))
        w.provider.fail["list_instances"] = 1
        st = await w.engine.status(rid)
        assert st["instances"] == []
        assert st["instances_error"] == "provider mem: list_instances failed (injected)"

    run(w, body)


def test_a_policy_plugin_refusal_names_the_plugin_and_starts_nothing(tmp_path: Path) -> None:
    class Veto:
        @hookimpl
        def imm_policy_check(self, image: dict, service: dict, rollout: dict) -> str:
            return f"{image['name']}@{image['version']} is not signed off"

    w = World(tmp_path, plugins=[Veto()])
    w.image("1")

    async def body() -> None:
        with pytest.raises(PolicyRefused) as e:
            await w.engine.start("bob", "web", "app@1")
        assert e.value.message == "refused by rule 'plugin': veto: app@1 is not signed off"
        assert e.value.detail["plugins"] == ["veto"]
        assert await w.engine.list(None, 10) == []

    run(w, body)
    assert w.provider.instances == {}


def test_a_health_gate_that_raises_fails_closed(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        def imm_health_gate(self, rollout: dict, step: dict, instances: list) -> None:
            raise RuntimeError("metrics backend down")

    w = World(tmp_path, plugins=[Broken()])
    old = w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        return await settle(w.engine, (await w.engine.start("alice", "web", "app@2"))["id"])

    st = run(w, body)
    assert st["state"] == ROLLED_BACK and set(w.provider.instances) == set(old)
    assert st["error"] == ("health gate at 1-attach failed: broken: imm_health_gate raised "
                           "RuntimeError: metrics backend down")
