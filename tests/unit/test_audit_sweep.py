"""The Auditor through the context: sweeps, findings opened and resolved, failures, schedule."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from audit_world import HashingFleet, World, managed, run

from imm.audit.record import new_sweep
from imm.errors import ConfigError


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, services={"web": {"channel": "web/prod"}})
    yield w
    w.close()


def test_a_sweep_judges_every_instance_and_signs_what_changed(world: World) -> None:
    good = world.image("1")
    world.db.write_sync(world.catalog.set_channel, "test", "web/prod", good)
    world.rollouts.known.add("r-1")
    ok = world.fleet.add("img-1", 2, **managed(good))
    stray = world.fleet.add("ami-unknown", 1)
    before = world.db.write_sync(world.catalog.head)["size"]

    row = run(world, world.auditor.run_sweep("alice"))

    assert row["state"] == "completed" and row["actor"] == "alice"
    assert row["instances"] == 3 and row["observations_opened"] == 3
    assert world.open_findings() == {(stray[0], "unknown-image"), (stray[0], "outside-rollout")}
    assert row["findings_opened"] == 2 and row["records"] == 1
    assert world.db.write_sync(world.catalog.head)["size"] == before + 1  # one signed record
    verdicts = {r["instance_id"]: r["verdicts"] for r in world.sql(
        "SELECT instance_id, verdicts FROM observations WHERE closed_at IS NULL")}
    assert all('"ok"' in verdicts[i] for i in ok)
    # the observers were told, one payload per opened finding
    assert sorted((f["instance"], f["verdict"], f["status"]) for f in world.findings.seen) == [
        (stray[0], "outside-rollout", "open"), (stray[0], "unknown-image", "open")]


def test_a_second_sweep_resolves_what_is_gone_and_writes_nothing_when_nothing_changed(
        world: World) -> None:
    good = world.image("1")
    world.rollouts.known.add("r-1")
    world.fleet.add("img-1", 1, **managed(good, service="api"))
    stray = world.fleet.add("ami-unknown", 1)
    run(world, world.auditor.run_sweep("t"))
    size = world.db.write_sync(world.catalog.head)["size"]

    again = run(world, world.auditor.run_sweep("t"))
    assert again["records"] == 0 and again["findings_opened"] == 0
    assert world.db.write_sync(world.catalog.head)["size"] == size  # no new signed record

    del world.fleet.instances[stray[0]]
    world.findings.seen.clear()
    gone = run(world, world.auditor.run_sweep("t"))
    assert gone["observations_closed"] == 1 and gone["findings_resolved"] == 2
    assert world.open_findings() == set()
    assert {f["status"] for f in world.findings.seen} == {"resolved"}
    closed = world.sql("SELECT instance_id FROM observations WHERE closed_at IS NOT NULL")
    assert [r["instance_id"] for r in closed] == stray


def test_the_rollout_lookup_decides_outside_rollout_and_not_current_channel(world: World) -> None:
    old, new = world.image("1"), world.image("2")
    world.db.write_sync(world.catalog.set_channel, "test", "web/prod", new)
    [inst] = world.fleet.add("img-1", 1, **managed(old, rollout="r-9"))

    run(world, world.auditor.run_sweep("t"))
    assert world.open_findings() == {(inst, "outside-rollout"), (inst, "not-current-channel")}

    # the rollout package now knows r-9, and a rollout of web is in flight: both resolve
    world.rollouts.known.add("r-9")
    world.rollouts.active_by_service["web"] = "r-10"
    row = run(world, world.auditor.run_sweep("t"))
    assert row["findings_resolved"] == 2 and world.open_findings() == set()


def test_chunks_commit_separately(tmp_path: Path) -> None:
    w = World(tmp_path, chunk=2)
    try:
        w.fleet.add("ami-unknown", 5)
        row = run(w, w.auditor.run_sweep("t"))
        assert row["instances"] == 5 and row["records"] == 3  # 2 + 2 + 1
    finally:
        w.close()


def test_a_failed_listing_keeps_what_it_did_not_see_open(world: World) -> None:
    world.fleet.add("ami-unknown", 3)
    run(world, world.auditor.run_sweep("t"))
    world.fleet.fail_listing, world.fleet.fail_after = "the cloud said 503", 1

    row = run(world, world.auditor.run_sweep("t"))

    assert row["state"] == "failed" and "mem: " in row["error"] and "503" in row["error"]
    assert len(world.sql("SELECT 1 FROM observations WHERE closed_at IS NULL")) == 3
    assert len(world.open_findings()) == 6


def test_rehash_only_where_the_provider_declares_it(tmp_path: Path) -> None:
    fleet = HashingFleet()
    w = World(tmp_path, fleet=fleet)
    try:
        digest = w.image("1", kind="tree", content="sha256:" + "a" * 64)
        w.rollouts.known.add("r-1")
        [clean, changed] = fleet.add("img-1", 2, **managed(digest))
        def tree(d: str) -> dict:
            return {"entries": [{"path": "app.py", "type": "file", "digest": d, "mode": 0o644}]}

        fleet.manifests["img-1"] = tree("sha256:" + "1" * 64)
        fleet.trees[clean] = ("sha256:" + "a" * 64, tree("sha256:" + "1" * 64))
        fleet.trees[changed] = ("sha256:" + "b" * 64, tree("sha256:" + "2" * 64))

        run(w, w.auditor.run_sweep("t"))

        assert sorted(fleet.rehashed) == sorted([clean, changed])
        assert w.open_findings() == {(changed, "tampered")}
        [f] = w.sql("SELECT detail FROM findings WHERE verdict='tampered'")
        assert '"changed":["app.py"]' in f["detail"]  # the manifest names the changed file
    finally:
        w.close()


def test_a_fleet_without_the_feature_is_never_rehashed(world: World) -> None:
    digest = world.image("1", kind="tree", content="sha256:" + "a" * 64)
    world.fleet.add("img-1", 1, **managed(digest))
    run(world, world.auditor.run_sweep("t"))
    assert world.fleet.rehashed == []
    assert all(v != "tampered" for _, v in world.open_findings())


def test_two_callers_share_one_sweep(world: World) -> None:
    world.fleet.add("ami-unknown", 50)

    async def both() -> tuple[tuple[int, bool], tuple[int, bool]]:
        a = await world.auditor.start_sweep("a")
        b = await world.auditor.start_sweep("b")
        await world.auditor.wait()
        return a, b

    (sa, started_a), (sb, started_b) = run(world, both())
    assert sa == sb and started_a and not started_b
    assert len(world.sql("SELECT id FROM sweeps")) == 1


def test_progress_shows_while_a_sweep_runs_and_not_after(world: World) -> None:
    world.fleet.add("ami-unknown", 3)
    world.fleet.hold = threading.Event()  # the sweep stays under way until it is read

    async def body() -> tuple[dict, dict]:
        sweep, _ = await world.auditor.start_sweep("t")
        during = await world.auditor.sweep(sweep)
        world.fleet.hold.set()
        await world.auditor.wait()
        after = await world.auditor.sweep()
        return during, after

    during, after = run(world, body())
    assert during is not None and during["state"] == "running"
    assert set(during["progress"]["providers"]) == {"mem"}
    assert after is not None and after["state"] == "completed" and "progress" not in after


@pytest.mark.parametrize("value", [-1, "hourly", True])
def test_a_bad_interval_fails_start_naming_it(tmp_path: Path, value: object) -> None:
    w = World(tmp_path, audit={"interval_s": value})
    try:
        with pytest.raises(ConfigError, match=r"test.toml: \[audit\] interval_s"):
            run(w, w.auditor.start())
    finally:
        w.close()


def test_start_aborts_a_sweep_a_previous_immd_left_running(world: World) -> None:
    stale = world.db.write_sync(new_sweep, "old immd")

    async def body() -> None:
        await world.auditor.start()
        await world.auditor.stop()

    run(world, body())
    [row] = world.sql("SELECT state, error FROM sweeps WHERE id=?", (stale,))
    assert row["state"] == "aborted" and "immd stopped" in row["error"]


def test_the_schedule_sweeps_and_stop_ends_it(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import imm.audit.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SCHEDULE_TICK_S", 0.01)
    w = World(tmp_path, audit={"interval_s": 0.01})
    try:
        w.fleet.add("ami-unknown", 1)

        async def body() -> None:
            await w.auditor.start()
            for _ in range(500):
                if w.sql("SELECT 1 FROM sweeps WHERE state='completed'"):
                    break
                await asyncio.sleep(0.01)
            await w.auditor.stop()

        run(w, body())
        rows = w.sql("SELECT actor, state FROM sweeps ORDER BY id")
        assert rows and rows[0] == {"actor": sweep_module.SCHEDULED_ACTOR, "state": "completed"}
        assert all(r["state"] in ("completed", "aborted") for r in rows)
    finally:
        w.close()
