"""The engine waits for health on the router's word, and a verb ends such a wait at once.

The in-memory router's ``wait_health`` sleeps on a condition every change of health notifies
(rollout_world.MemRouter), so these tests see the engine wake on the change itself: a health
timeout of an hour cannot be what ends these waits.
"""

from __future__ import annotations

from pathlib import Path

from rollout_world import SERVICE, World, at_step, run, settle, wait_for

from imm.context import Timings
from imm.rollout.states import COMPLETED, PAUSED, ROLLED_BACK

PATIENT = {"web": {**SERVICE, "health_timeout_s": 3600}}


def sick_world(tmp: Path) -> tuple[World, list[str]]:
    """app@1 serving, app@2 registered, and every new backend failing its check until a test
    makes it well (no health timeout to end a wait); the world and the old instances."""
    w = World(tmp, PATIENT)
    old = w.old_fleet(w.image("1"))
    w.image("2")
    w.router.born_sick = True
    return w, old


def test_attach_goes_on_the_moment_the_new_instances_pass_their_check(tmp_path: Path) -> None:
    w, old = sick_world(tmp_path)

    async def body() -> dict:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await at_step(w.engine, rid, "1-attach")
        await wait_for(lambda: len(w.router.waits) == 1)  # the engine waits on the router
        new = w.router.waits[0][1]
        assert len(new) == 2 and not set(new) & set(old)
        for n in new:
            w.router.sick.discard(n)
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    # one wait, ended by the change: the engine asked the router nothing more meanwhile
    assert w.router.waits == [("web", sorted(set(w.provider.instances) - set(old)))]


def test_a_pause_ends_a_health_wait_at_once_and_a_resume_waits_again(tmp_path: Path) -> None:
    w, _old = sick_world(tmp_path)

    async def body() -> dict:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await wait_for(lambda: len(w.router.waits) == 1)
        await w.engine.set_state("bob", rid, "pause")
        st = await settle(w.engine, rid, [PAUSED])
        assert ("1-attach", "done") not in {(j["step"], j["action"]) for j in st["journal"]}
        await w.engine.set_state("bob", rid, "resume")
        await wait_for(lambda: len(w.router.waits) == 2)  # the attach waits again
        for n in w.router.waits[1][1]:
            w.router.sick.discard(n)
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]


def test_an_abort_ends_a_health_wait_at_once_and_rolls_back(tmp_path: Path) -> None:
    w, old = sick_world(tmp_path)

    async def body() -> dict:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await wait_for(lambda: len(w.router.waits) == 1)
        await w.engine.set_state("bob", rid, "abort")
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == ROLLED_BACK
    assert set(w.provider.instances) == set(old) and w.router.serving() == {i: 100 for i in old}


# an hour between looks at the journal: only the wake-up can end a pause step in a test's time
DROWSY = Timings(poll_s=3600, view_ttl_s=0.0, retry_min_s=0.005, retry_max_s=0.02)
BAKING = {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 3600}}


def _in_pause(st: dict) -> bool:
    begun = [j["step"] for j in st["journal"] if j["action"] == "begin"]
    return bool(begun) and begun[-1].endswith("-pause")


def test_a_verb_ends_a_pause_step_at_once(tmp_path: Path) -> None:
    w = World(tmp_path, BAKING, timings=DROWSY)
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> dict:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        while not _in_pause(await w.engine.status(rid)):
            await w.engine.changed(rid, 5)
        await w.engine.set_state("bob", rid, "pause")
        await settle(w.engine, rid, [PAUSED])
        await w.engine.set_state("bob", rid, "resume")
        await wait_for(lambda: not w.engine.wake[rid].is_set())  # back asleep in the step
        await w.engine.set_state("bob", rid, "promote")
        return await settle(w.engine, rid)

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
