"""Every way a rollout rolls back: a failed launch, a failed health check, a refusing health
gate, an abort, a provider or router error mid-step, an internal error; and what the rollback
guarantees: the old set serves again before any new instance is drained, every new instance
goes, old instances retired meanwhile are relaunched from the previous image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout_world import SERVICE, Gate, World, run, settle, wait_for

from imm.errors import ProviderError
from imm.rollout.states import ROLLED_BACK, ROLLING_BACK


def _roll(w: World, **start: Any) -> dict:
    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2", **start)
        return await settle(w.engine, st["id"])
    return run(w, body)


def _assert_back_to(w: World, old: list[str], st: dict) -> None:
    assert st["state"] == ROLLED_BACK, st
    assert set(w.provider.instances) == set(old), "every new instance terminated"
    assert w.router.serving() == {i: 100 for i in old}, "the old set serves again"
    assert set(w.router.routes["web"]) == set(old), "no new backend left in the route"


def test_launch_failure_rolls_back(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.provider.fail["launch"] = 1
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert "launch on mem/r1 failed" in st["error"]
    fail = [j for j in st["journal"] if j["action"] == "fail"]
    assert fail and fail[0]["detail"]["reason"] == st["error"]


def test_health_check_timeout_rolls_back_and_names_the_instances(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.engine.service("web").health_timeout_s = 0.05
    real_add = w.router.add

    def add(route: str, name: str, address: str) -> None:
        real_add(route, name, address)
        if name not in old:
            w.router.sick.add(name)

    w.router.add = add  # type: ignore[method-assign]
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert "did not pass the health check of route web" in st["error"]
    assert "2 of 2 new instance(s)" in st["error"]


def test_health_gate_refusal_at_attach_rolls_back(tmp_path: Path) -> None:
    gate = Gate(refuse={"1-attach"})
    w = World(tmp_path, plugins=[gate])
    old = w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert st["error"] == "health gate at 1-attach failed: gate: error rate 7% > 1%"
    assert gate.seen == ["1-attach"]


def test_health_gate_refusal_after_a_canary_pause_rolls_back(tmp_path: Path) -> None:
    gate = Gate(refuse={"5-pause"})
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary"}}, plugins=[gate])
    old = w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert gate.seen == ["1-attach", "3-pause", "5-pause"]
    # traffic had reached 50 % before the gate refused; the old set got all of it back first
    weights = [a for c, a in w.router.history if c == "set_weights"]
    last = weights[-1]
    assert all(last[i] == 100 for i in old)
    assert all(v == 0 for k, v in last.items() if k not in old)


def test_instance_unhealthy_after_a_canary_pause_rolls_back(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary"}})
    old = w.old_fleet(w.image("1"))
    w.image("2")
    real_set = w.router.set_weights

    def set_weights(route: str, weights: Any) -> None:
        real_set(route, weights)
        new = [n for n in weights if n not in old]
        if any(weights[n] > 0 for n in new):
            w.router.sick.add(new[0])  # takes traffic, then falls over

    w.router.set_weights = set_weights  # type: ignore[method-assign]
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert st["error"].startswith("new instance(s) unhealthy after 3-pause")


def test_router_error_while_shifting_rolls_back(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.router.fail["set_weights"] = 1
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert st["error"] == "setting weights on route web failed: router lb: set_weights failed " \
                          "(injected)"


def test_provider_error_while_listing_mid_step_rolls_back(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    real = w.provider.list_instances
    failed: list[str] = []

    def list_instances(tags: Any = None) -> Any:
        if tags and tags.get("imm:rollout", "web-old") != "web-old" and not failed:
            failed.append(tags["imm:rollout"])  # the attach step's listing of its own instances
            raise ProviderError("provider mem: list_instances failed (injected)")
        return real(tags)

    w.provider.list_instances = list_instances  # type: ignore[method-assign]
    st = _roll(w)
    _assert_back_to(w, old, st)
    assert failed == [st["id"]]
    assert st["error"] == "provider mem: list_instances failed (injected)"
    assert any(j["step"] == "1-attach" and j["action"] == "fail" for j in st["journal"])


def test_a_router_error_during_rollback_is_retried_until_it_finishes(tmp_path: Path) -> None:
    w = World(tmp_path, plugins=[Gate(refuse={"1-attach"})])
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.router.fail["drain"] = 2  # the first two rollback attempts meet a router outage
    st = _roll(w)
    _assert_back_to(w, old, st)
    begins = [j for j in st["journal"] if j["step"] == "rollback" and j["action"] == "begin"]
    assert len(begins) == 3, "two failed attempts, then one that finished"
    assert [j["action"] for j in st["journal"] if j["step"] == "rollback"][-1] == "done"


def test_abort_rolls_back_and_records_who(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}})
    old = w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        await wait_for(lambda: any(c == "set_weights" for c, _ in w.router.history))
        await w.engine.set_state("bob", st["id"], "abort")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    _assert_back_to(w, old, st)
    assert st["error"] == "aborted by bob"
    abort = [j for j in st["journal"] if j["action"] == "abort"]
    assert abort and abort[0]["actor"] == "bob"


def test_old_traffic_restored_before_any_new_instance_is_drained(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary"}})
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.provider.fail["terminate"] = 0
    gate = Gate(refuse={"3-pause"})
    w.plugins.register(gate, name="gate")
    _roll(w)
    h = w.router.history
    restore = max(n for n, (c, a) in enumerate(h)
                  if c == "set_weights" and all(a.get(i) == 100 for i in old))
    first_drain = min(n for n, (c, _a) in enumerate(h) if c == "drain")
    assert restore < first_drain


def test_rolling_rollback_relaunches_the_old_instances_it_retired(tmp_path: Path) -> None:
    svc = {**SERVICE, "strategy": "rolling", "batch": "1",
           "targets": [{"provider": "mem", "region": "r1", "count": 2}]}
    gate = Gate(refuse={"5-attach"})  # the second batch fails after the first retired one old
    w = World(tmp_path, {"web": svc}, plugins=[gate])
    old_digest = w.image("1")
    old = w.old_fleet(old_digest)
    w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK
    live = list(w.provider.instances.values())
    assert len(live) == 2
    assert {i.tags["imm:digest"] for i in live} == {old_digest}, "back on the previous image"
    relaunched = [i for i in live if i.tags["imm:slot"] == "rollback"]
    assert len(relaunched) == 1 and relaunched[0].image_id == "img-1-r1"
    assert old[0] not in w.provider.instances and old[1] in w.provider.instances
    assert set(w.router.serving()) == {i.id for i in live}


def test_internal_error_rolls_back_after_recording_it(tmp_path: Path) -> None:
    w = World(tmp_path)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    real = w.engine.steps.decide
    calls = {"n": 0}

    async def decide(*a: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyError("boom")
        return await real(*a)

    w.engine.steps.decide = decide  # type: ignore[method-assign]

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        await settle(w.engine, st["id"], [ROLLING_BACK, ROLLED_BACK])
        return await settle(w.engine, st["id"])  # restarted after retry_max_s

    st = run(w, body)
    _assert_back_to(w, old, st)
    assert st["error"] == "internal error: 'boom'"
