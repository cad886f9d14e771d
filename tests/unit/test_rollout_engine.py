"""The engine's run loop through the context, with the in-memory provider and router:
every strategy to completion, failures rolling back, restart and resume from the journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollout_world import SERVICE, World, actions, run, settle, wait_for

from imm.rollout.engine import Engine
from imm.rollout.services import load_services
from imm.rollout.states import COMPLETED, PAUSED, ROLLED_BACK, ROLLING_BACK, RUNNING


def test_blue_green_replaces_the_fleet_and_records_each_step(tmp_path: Path) -> None:
    w = World(tmp_path)
    old_digest, new_digest = w.image("1"), w.image("2")
    old = w.old_fleet(old_digest)

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    assert st["previous"] == old_digest and st["image"] == new_digest
    assert [s["status"] for s in st["plan"]] == ["done"] * len(st["plan"])
    assert [s["op"] for s in st["plan"]] == ["launch", "attach", "shift", "retire"]
    live = w.provider.instances
    assert not set(old) & set(live), "old instances terminated"
    assert {i.tags["imm:digest"] for i in live.values()} == {new_digest}
    assert len(live) == 2
    assert set(w.router.serving()) == set(live)
    # every step was decided (begin) before it was acted on (done)
    acts = actions(st)
    for s in st["plan"]:
        assert acts.index((s["name"], "begin")) < acts.index((s["name"], "done"))
    assert acts[0] == ("start", "start") and acts[-1] == ("complete", "complete")
    # the switch: all traffic moved in one set_weights, old ones to 0
    shift = [a for c, a in w.router.history if c == "set_weights"][0]
    assert all(shift[i] == 0 for i in old) and all(shift[i] == 100 for i in live)


def test_rolling_replaces_one_batch_at_a_time(tmp_path: Path) -> None:
    svc = {**SERVICE, "strategy": "rolling", "batch": "1",
           "targets": [{"provider": "mem", "region": "r1", "count": 3}]}
    w = World(tmp_path, {"web": svc})
    old = w.old_fleet(w.image("1"), 3)
    new_digest = w.image("2")
    serving_sizes: list[int] = []
    real_remove = w.router.remove

    def remove(route: str, name: str) -> None:
        real_remove(route, name)
        serving_sizes.append(len(w.router.serving()))

    w.router.remove = remove  # type: ignore[method-assign]

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    ops = [s["op"] for s in st["plan"]]
    assert ops == ["launch", "attach", "shift", "retire"] * 3
    retired = [d for j in st["journal"] if j["action"] == "begin" and "retire" in j["detail"]
               for d in j["detail"]["retire"]]
    assert [r["id"] for r in retired] == old, "oldest first, one per batch"
    assert {i.tags["imm:digest"] for i in w.provider.instances.values()} == {new_digest}
    # the route never dropped below the fleet size while batches were replaced
    assert serving_sizes and min(serving_sizes) >= 3


def test_canary_shifts_traffic_in_steps_then_completes(tmp_path: Path) -> None:
    svc = {**SERVICE, "strategy": "canary", "canary_steps": [10, 50],
           "targets": [{"provider": "mem", "region": "r1", "count": 1}]}
    w = World(tmp_path, {"web": svc})
    old = w.old_fleet(w.image("1"), 1)
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    assert [s["op"] for s in st["plan"]] == ["launch", "attach", "shift", "pause", "shift",
                                             "pause", "shift", "retire"]
    shifts = [a for c, a in w.router.history if c == "set_weights"]
    new = next(i for i in shifts[0] if i not in old)
    share = [s[new] / (s[new] + s[old[0]]) for s in shifts]
    assert share[0] == pytest.approx(0.10, abs=0.01)
    assert share[1] == pytest.approx(0.50, abs=0.01)
    assert share[2] == 1.0
    assert list(w.provider.instances) == [new]


def test_strategy_given_at_start_overrides_the_service_default(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2", strategy="canary")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["strategy"] == "canary" and st["state"] == COMPLETED
    assert "pause" in [s["op"] for s in st["plan"]]


def test_first_rollout_of_an_empty_service_has_no_previous_image(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.image("1")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@1")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED and st["previous"] is None
    assert len(w.router.serving()) == 2


def test_service_without_router_launches_and_retires_by_provider_only(tmp_path: Path) -> None:
    svc = {k: v for k, v in SERVICE.items() if k not in ("router", "route")}
    w = World(tmp_path, {"web": svc})
    old = [i.id for i in w.provider.add_old(w.image("1"), 2)]
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED
    assert not set(old) & set(w.provider.instances) and len(w.provider.instances) == 2
    assert w.router.history == []


def test_a_router_without_health_checks_gates_on_running(tmp_path: Path) -> None:
    w = World(tmp_path, checks=False)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]


def test_restart_resumes_from_the_first_step_not_done(tmp_path: Path) -> None:
    """A rollout parked mid-way (immd stopped) carries on in a new engine from its journal,
    without launching its instances a second time."""
    svc = {**SERVICE, "strategy": "canary", "canary_pause_s": 30}
    w = World(tmp_path, {"web": svc})
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> tuple[dict, int]:
        st = await w.engine.start("alice", "web", "app@2")
        rid = st["id"]
        await wait_for(lambda: any(c == "set_weights" for c, _ in w.router.history))
        await w.engine.shutdown()  # parked in the first 30 s pause
        launches = w.provider.calls.count("launch")
        assert (await w.engine.status(rid))["state"] == RUNNING
        again = Engine(w.ctx)
        await again.startup()
        assert rid in again.tasks
        await again.set_state("bob", rid, "promote")  # skip the remaining pauses
        done = await settle(again, rid)
        await again.shutdown()
        return done, launches

    st, launches = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    assert w.provider.calls.count("launch") == launches == 2  # the old fleet, then ours
    begins = [j["step"] for j in st["journal"] if j["action"] == "begin"]
    assert len(begins) == len(set(begins)), "no step decided twice"


def test_restart_finishes_an_interrupted_rollback(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.router.fail["set_weights"] = 1  # the switch fails: the rollout rolls back

    async def body() -> dict:
        # the first engine cannot finish its rollback: the provider refuses to terminate
        w.provider.fail["terminate"] = 10**6
        st = await w.engine.start("alice", "web", "app@2")
        rid = st["id"]
        await settle(w.engine, rid, [ROLLING_BACK])
        await wait_for(lambda: w.provider.calls.count("terminate") >= 2)  # retried
        await w.engine.shutdown()
        assert (await w.engine.status(rid))["state"] == ROLLING_BACK
        assert w.router.serving() == {i: 100 for i in old}, "old set serving meanwhile"
        w.provider.fail["terminate"] = 0
        again = Engine(w.ctx)
        await again.startup()
        done = await settle(again, rid)
        await again.shutdown()
        return done

    st = run(w, body)
    assert st["state"] == ROLLED_BACK
    assert set(w.provider.instances) == set(old)
    assert w.router.serving() == {i: 100 for i in old}


def test_startup_brings_up_every_route(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.router.routes.clear()

    async def body() -> None:
        return None

    run(w, body)
    assert w.router.started == 1 and "web" in w.router.routes


def test_a_route_start_up_could_not_declare_is_declared_before_the_rollout_uses_it(
        tmp_path: Path) -> None:
    """The router failed at start-up (haproxy slow to come back from a reload, on a loaded
    host): the route was not declared. The next rollout declares it first and completes; it
    used to fail with 'route not declared' and retry its rollback against it forever."""
    w = World(tmp_path, {"api": {**SERVICE, "route": "api"}})
    w.image("2")
    w.router.fail["ensure_route"] = 1

    async def body() -> dict:
        assert "api" not in w.router.routes  # start-up could not declare it
        rid = (await w.engine.start("alice", "api", "app@2"))["id"]
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    assert sorted(w.router.serving("api")) == sorted(w.provider.instances)


def test_a_service_a_reload_added_gets_its_route_before_its_first_rollout(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        # as SIGHUP does: the services are replaced, the engine is not restarted
        w.engine.services = load_services({"web": SERVICE, "api": {**SERVICE, "route": "api"}},
                                          {"mem"}, {"lb"})
        rid = (await w.engine.start("alice", "api", "app@2"))["id"]
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    assert len(w.router.serving("api")) == 2 and len(w.router.serving("web")) == 2


def test_paused_rollout_waits_without_polling_and_resumes(tmp_path: Path) -> None:
    svc = {**SERVICE, "strategy": "canary", "canary_pause_s": 30}
    w = World(tmp_path, {"web": svc})
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        rid = st["id"]
        await wait_for(lambda: any(c == "set_weights" for c, _ in w.router.history))
        await w.engine.set_state("bob", rid, "pause")
        await settle(w.engine, rid, [PAUSED])
        # the waiting step is interrupted, not done
        st = await w.engine.status(rid)
        assert not any(j["action"] == "done" and j["step"] == "3-pause" for j in st["journal"])
        await w.engine.set_state("bob", rid, "resume")
        await w.engine.set_state("bob", rid, "promote")
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    skipped = [j["step"] for j in st["journal"] if j["detail"].get("skipped") == "promoted"]
    assert "5-pause" in skipped and "4-shift" in skipped


def test_shutdown_parks_a_rollout_even_as_a_provider_call_returns(tmp_path: Path) -> None:
    """Parking cancels each rollout's task; a cancellation that arrives just as a provider call
    hands back its result must still park it (Python 3.11's asyncio.wait_for dropped it then, and
    the "parked" rollout ran on to its end). The window is small: many short tries."""
    slow = {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}}
    ran_on = []
    for n in range(30):
        w = World(tmp_path / str(n), slow)
        w.image("1")

        async def body(w: World = w) -> str:
            await w.engine.startup()
            rid = (await w.engine.start("alice", "web", "app@1"))["id"]
            for _ in range(n % 4):  # land the cancellation at a different point each time
                await asyncio.sleep(0)
            await w.engine.shutdown()
            return str((await w.engine.status(rid))["state"])

        try:
            state = asyncio.run(body())
        finally:
            w.close()
        if state != RUNNING:
            ran_on.append((n, state))
    assert ran_on == [], "parked rollouts ran on after shutdown"
