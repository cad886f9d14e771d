"""imm/store/lease.py against a real PostgreSQL 15 (the session's cluster): one leader, takeover
at a new epoch, fencing of a deposed leader's writes and cloud calls, verbs given on a follower
carried out by the leader (LISTEN/NOTIFY), a leader cut off from the database stepping down; and
SQLite, where one immd is always the leader with no election at all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster_world import Cluster
from rollout_world import SERVICE, at_step, settle, wait_for

from imm.audit.facts import RolloutLookup
from imm.audit.sweep import Auditor
from imm.context import Solo
from imm.daemon.core import SCHEMAS, Daemon
from imm.errors import NotLeader
from imm.rollout import journal
from imm.rollout.states import COMPLETED, PAUSED, ROLLED_BACK, RUNNING
from imm.store import fence
from imm.store.lease import check_epoch, release, renew, try_acquire
from imm.store.postgres import Database


@pytest.fixture
def dsn(pg_cluster: Any) -> str:
    return str(pg_cluster.dsn(pg_cluster.emptied()))


def test_one_holder_at_a_time_and_a_takeover_raises_the_epoch(dsn: str) -> None:
    db = Database(dsn, SCHEMAS)
    db.open()
    try:
        with db.session() as a, db.session() as b:
            assert try_acquire(a, "a", 30) is not None
            assert try_acquire(b, "b", 30) is None  # a live lease does not change hands
            assert renew(a, "a", 1, 30)
            a.execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second'")
            got = try_acquire(b, "b", 30)
            assert got is not None and got[0] == 2
            assert not renew(a, "a", 1, 30)  # the deposed holder learns it at its next renewal
            with pytest.raises(NotLeader, match="epoch 1.*b leads at epoch 2"), a.transaction():
                check_epoch(a, 1)
            with b.transaction():
                check_epoch(b, 2)
            release(b, "b", 2)
            assert try_acquire(a, "a", 30) is not None  # released: taken at once, epoch 3
            assert a.execute("SELECT holder, epoch FROM leases").fetchall() == [("a", 3)]
    finally:
        db.close()


def test_a_write_under_a_stale_epoch_is_refused_and_writes_nothing(dsn: str) -> None:
    db = Database(dsn, SCHEMAS)
    db.open()

    async def main() -> None:
        with db.session() as raw:
            try_acquire(raw, "a", 30)
            raw.execute("UPDATE leases SET epoch = 7")
            raw.execute("DROP TABLE IF EXISTS probe")
            raw.execute("CREATE TABLE probe (n BIGINT)")

        async def as_leader(epoch: int | None) -> None:
            fence(epoch)
            await db.write(lambda c: c.execute("INSERT INTO probe VALUES (?)", (epoch or 0,)))

        with pytest.raises(NotLeader, match="epoch 6"):
            await asyncio.create_task(as_leader(6))
        await asyncio.create_task(as_leader(7))
        await asyncio.create_task(as_leader(None))  # not the engine's: allowed anywhere
        assert await db.read(lambda c: [r[0] for r in c.execute(
            "SELECT n FROM probe ORDER BY n")]) == [0, 7]

    try:
        asyncio.run(main())
    finally:
        db.close()


def test_a_leader_stopped_past_its_lease_is_fenced_and_steps_down(dsn: str, tmp_path: Path) -> None:
    """As SIGSTOP then SIGCONT: the leader freezes mid-rollout (its lease is not renewed), the
    other immd takes over and carries the rollout on; when the old leader wakes, its next cloud
    call is refused by its guard and its next journal write by the database, it steps down, and
    no change of it reaches the cloud or the route after the freeze."""
    w = Cluster(dsn, tmp_path)
    a, b = w.hosts
    old = w.image("1")
    w.old_fleet(old)
    w.image("2")

    async def main() -> None:
        nonlocal a, b
        await a.elector.start()
        await b.elector.start()
        # exactly one leads (on a loaded machine a's short lease may lapse before b first looks)
        await wait_for(lambda: a.elector.is_leader() != b.elector.is_leader())
        if b.elector.is_leader():
            a, b = b, a
        frozen, thaw = asyncio.Event(), asyncio.Event()
        execute = a.engine.steps.execute

        async def freezing(svc: Any, r: Any, step: Any, decision: Any) -> Any:
            if step["name"] == "2-shift":
                frozen.set()
                await thaw.wait()
            return await execute(svc, r, step, decision)

        a.engine.steps.execute = freezing  # type: ignore[method-assign]
        rid = (await a.engine.start("alice", "web", "app@2"))["id"]
        await frozen.wait()
        a.elector.halt()  # the whole process is stopped: no renewal either
        mark = len(a.calls)
        st = await settle(b.engine, rid)  # b takes over and finishes
        assert st["state"] == COMPLETED
        assert b.changes(), "the new leader acted"
        thaw.set()  # SIGCONT: the old leader goes on where it stopped
        await wait_for(lambda: a.elector.role == "follower", 10)
        assert a.changes(mark) == []
        with pytest.raises(NotLeader):
            a.elector.guard("provider mem: launch")

        async def journal_as_old_leader() -> None:
            fence(1)
            await a.engine.journal.record(rid, "late", "late", {})

        before = len((await a.engine.status(rid))["journal"])
        with pytest.raises(NotLeader, match="epoch 1.*host-b leads at epoch 2"):
            await asyncio.create_task(journal_as_old_leader())
        assert len((await a.engine.status(rid))["journal"]) == before
        assert (await w.ledger_ok())["ok"]
        await b.stop()
        await a.stop()

    try:
        asyncio.run(main())
    finally:
        w.close()


def test_verbs_given_on_a_follower_are_carried_out_by_the_leader(dsn: str, tmp_path: Path) -> None:
    services = {"web": {**SERVICE, "strategy": "canary",
                        "canary_pause_s": 30}}
    w = Cluster(dsn, tmp_path, lease_s=2.0, services=services)
    a, b = w.hosts
    w.old_fleet(w.image("1"))
    w.image("2")

    async def main() -> None:
        await a.elector.start()
        await b.elector.start()
        assert a.elector.is_leader()
        rid = (await b.engine.start("bob", "web", "app@2"))["id"]  # started on the follower
        await at_step(a.engine, rid, "3-pause")
        await b.engine.set_state("bob", rid, "pause")
        await settle(a.engine, rid, (PAUSED,))
        await b.engine.set_state("bob", rid, "resume")
        await settle(a.engine, rid, (RUNNING,))
        await b.engine.set_state("bob", rid, "promote")  # skips the 30 s pauses
        st = await settle(a.engine, rid)
        assert st["state"] == COMPLETED
        assert {i.tags["imm:rollout"] for i in w.provider.instances.values()} == {rid}
        back = (await b.engine.undo("bob", "web"))["id"]  # undo, then abort, on the follower
        await at_step(a.engine, back, "3-pause")
        await b.engine.set_state("bob", back, "abort")
        assert (await settle(a.engine, back))["state"] == ROLLED_BACK
        assert {i.tags["imm:rollout"] for i in w.provider.instances.values()} == {rid}
        assert b.changes() == [] and not b.engine.tasks
        # an operator's change of instances on the follower is refused, naming the leader
        with pytest.raises(NotLeader, match=r"provider mem: terminate: .*follower; give it to "
                                            r"the leader, host-a \(epoch 1\)") as e:
            await b.ctx.provider("mem").terminate(["i-1"])
        assert e.value.exit_code == 4 and e.value.status == 409
        await b.stop()
        await a.stop()

    try:
        asyncio.run(main())
    finally:
        w.close()


def test_a_leader_cut_off_from_postgresql_steps_down(dsn: str, tmp_path: Path,
                                                     pg_cluster: Any) -> None:
    w = Cluster(dsn, tmp_path, n=1, lease_s=1.0)
    (a,) = w.hosts
    cut = False
    connect = a.db.session
    pids: list[int] = []

    def session() -> psycopg.Connection[Any]:
        if cut:
            raise psycopg.OperationalError("connection refused (cut off by the test)")
        raw = connect()
        pids.append(raw.info.backend_pid)
        return raw

    a.elector._connect = session

    async def main() -> None:
        nonlocal cut
        await a.elector.start()
        assert a.elector.is_leader()
        cut = True  # the network to the database goes away: the lease connection is killed
        for pid in pids:  # the lease's and the listener's connections
            pg_cluster.sql(f"SELECT pg_terminate_backend({pid})")
        await wait_for(lambda: a.elector.role == "follower", 10)
        assert "cut off from PostgreSQL" in a.elector.reason
        with pytest.raises(NotLeader):
            a.elector.guard("router lb: set_weights")
        cut = False
        await wait_for(a.elector.is_leader, 10)  # back: it leads again, at a new epoch
        assert a.elector.epoch == 2
        await a.stop()

    try:
        asyncio.run(main())
    finally:
        w.close()


def test_a_deposed_leaders_audit_schedule_writes_nothing_and_stops(dsn: str,
                                                                   tmp_path: Path) -> None:
    w = Cluster(dsn, tmp_path)
    a, b = w.hosts
    w.old_fleet(w.image("1"))
    a.settings.audit["interval_s"] = 0.05
    auditor = Auditor(a.ctx, RolloutLookup(exists=journal.rollout_exists,
                                           active=journal.active_rollout))

    async def main() -> None:
        await a.elector.start()
        await b.elector.start()
        a.elector.halt()  # frozen: b takes over; a still believes it leads at epoch 1
        await wait_for(b.elector.is_leader, 10)
        assert a.elector.role == "leader" and a.elector.fence == 1
        await asyncio.wait_for(auditor.schedule(), 10)  # returns: it was refused
        await wait_for(lambda: a.elector.role == "follower", 10)
        assert await a.db.read(lambda c: c.execute("SELECT count(*) FROM sweeps")
                               .fetchone()[0]) == 0
        await b.stop()
        await a.stop()

    try:
        asyncio.run(main())
    finally:
        w.close()


def test_sqlite_is_one_immd_always_the_leader_with_no_election(tmp_path: Path) -> None:
    from imm.config import load

    d = Daemon(load(None, state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s")))
    d.open("test")

    async def main() -> dict[str, Any]:
        return await d.cluster_status()

    try:
        assert d.elector is None and isinstance(d.context.cluster, Solo)
        assert d.context.cluster.is_leader() and d.context.cluster.fence is None
        st = asyncio.run(main())
        assert (st["backend"], st["role"], st["epoch"]) == ("sqlite", "leader", 1)
        assert st["leader"] == st["me"]
    finally:
        d.close()
    tables = {r[0] for r in sqlite3.connect(tmp_path / "state" / "imm.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "leases" not in tables and "lease_members" not in tables


def test_a_halted_immd_is_woken_by_nothing_its_listener_still_receives(dsn: str,
                                                                       tmp_path: Path) -> None:
    """A killed immd acts no more: a NOTIFY (a follower forwarding a verb) that its listener
    thread still receives after the stop must not start a rollout there. The failover tests saw
    a "killed" leader finish a rollout this way, before the other immd was even elected."""
    w = Cluster(dsn, tmp_path)
    a, b = w.hosts
    woken: list[str] = []

    async def main() -> None:
        await a.elector.start()
        await wait_for(a.elector.is_leader, 10)
        await wait_for(lambda: a.elector._listener is not None and a.elector._raw is not None)
        await asyncio.sleep(0.3)  # the listener is connected and LISTENs
        a.elector.on_wake = woken.append
        a.elector.halt()
        assert a.elector.is_leader(), "halted, it still believes it leads (as a frozen process)"
        for i in range(5):
            await b.elector.wake(f"r{i}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.6)  # the listener's longest wait for a notification
        assert woken == []
        await b.elector.stop()

    try:
        asyncio.run(main())
    finally:
        w.close()
