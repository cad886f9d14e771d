"""Failover at every step: two immd on one real PostgreSQL database (tests/unit/cluster_world.py),
the leader dies (as kill -9: its task stops where it is, its lease is neither renewed nor
released) before or after each step of a blue-green and a canary rollout, and while a failed
canary rolls back; the other immd takes the lease over, resumes the rollout from the journal and
converges to completed or rolled back with no orphan instance and no orphan backend.

The engine's crash points (``IMM_TEST_KILL_AT`` in a real immd) are where the leader dies here:
the journal says the step began (``before``) or the step's work is done but not yet journalled
(``after``). The takeover time of each case is printed (``-s``); bench/bench_failover.py
measures it with real immd processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cluster_world import Cluster, Killed
from rollout_world import SERVICE, Gate, settle, wait_for

import imm.rollout.engine
from imm.rollout.plan import make_plan
from imm.rollout.services import parse_service
from imm.rollout.states import COMPLETED, ROLLED_BACK


def _points(strategy: str) -> list[tuple[str, str, str]]:
    """Before and after every step of the strategy's plan."""
    svc = parse_service("web", {**SERVICE, "strategy": strategy}, {"mem"}, {"lb"})
    return [(strategy, s["name"], when) for s in make_plan(svc, strategy)
            for when in ("before", "after")]


CASES = [*_points("blue-green"), *_points("canary")]


def _converge(pg_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str,
              step: str, when: str, refuse: set[str] | None = None) -> tuple[dict[str, Any],
                                                                                Cluster, str]:
    fired: list[str] = []

    def kill_at(name: str, at: str) -> None:
        if (name, at) == (step, when) and not fired:
            fired.append(name)
            raise Killed(f"{name}:{at}")

    monkeypatch.setattr(imm.rollout.engine, "_test_kill", kill_at)
    gate = Gate(refuse=refuse or set())
    w = Cluster(pg_cluster.dsn(pg_cluster.emptied()), tmp_path,
                services={"web": {**SERVICE, "strategy": strategy}}, plugins=(gate,))
    a, b = w.hosts
    old = w.image("1")
    w.old_fleet(old)
    w.image("2")

    async def main() -> dict[str, Any]:
        nonlocal a, b
        loop = asyncio.get_running_loop()
        await a.elector.start()
        await b.elector.start()
        # exactly one leads (on a loaded machine a's short lease may lapse before b first looks,
        # and b then leads: the test kills whichever does)
        await wait_for(lambda: a.elector.is_leader() != b.elector.is_leader())
        if b.elector.is_leader():
            a, b = b, a
        rid = (await a.engine.start("alice", "web", "app@2"))["id"]
        await wait_for(lambda: bool(fired))
        await a.kill()
        killed_at, mark = loop.time(), len(a.calls)
        st = await settle(b.engine, rid)
        takeover = b.elected[0] - killed_at
        print(f"\n{strategy} killed at {step}:{when}: takeover {takeover:.2f}s "
              f"(lease {b.elector.lease_s}s), {st['state']}")
        assert a.changes(mark) == []
        await b.stop()
        return st

    try:
        st = asyncio.run(main())
    except BaseException:
        w.close()
        raise
    return st, w, old


def _no_orphans(w: Cluster, serving_digest: str, rid: str | None) -> None:
    web = [i for i in w.provider.instances.values() if i.tags.get("imm:service") == "web"]
    assert len(web) == 2, [i.id for i in web]
    assert {i.tags["imm:digest"] for i in web} == {serving_digest}
    if rid is not None:
        assert {i.tags["imm:rollout"] for i in web} == {rid}
    route = w.router.routes["web"]
    assert set(route) == {i.id for i in web}, "every backend is a live instance and vice versa"
    assert w.router.serving() == {i.id: 100 for i in web}


@pytest.mark.parametrize(("strategy", "step", "when"), CASES,
                         ids=[f"{s}-{n}-{w}" for s, n, w in CASES])
def test_the_leader_killed_at_any_step_the_other_finishes_the_rollout(
        pg_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str,
        step: str, when: str) -> None:
    st, w, _old = _converge(pg_cluster, tmp_path, monkeypatch, strategy, step, when)
    try:
        assert st["state"] == COMPLETED, st["error"]
        _no_orphans(w, st["image"], st["id"])
        assert asyncio.run(w.ledger_ok())["ok"]
    finally:
        w.close()


@pytest.mark.parametrize(("step", "when"), [("3-pause", "before"), ("rollback", "after")])
def test_the_leader_killed_while_a_failed_canary_rolls_back_the_other_rolls_it_back(
        pg_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str,
        when: str) -> None:
    st, w, old = _converge(pg_cluster, tmp_path, monkeypatch, "canary", step, when,
                           refuse={"3-pause"})
    try:
        assert st["state"] == ROLLED_BACK
        _no_orphans(w, old, None)
        assert asyncio.run(w.ledger_ok())["ok"]
    finally:
        w.close()
