"""One chunk's transaction: observations, findings and their signed events; the sweeps table."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_world import World, managed

from imm.audit.facts import CatalogFacts, Observed, RolloutLookup
from imm.audit.record import (
    SweepRun,
    abort_stale,
    apply_chunk,
    close_unseen,
    finish_sweep,
    new_sweep,
    sweep_row,
)
from imm.plugins.base import Instance


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w
    w.close()


def inst(iid: str, image_id: str, **tags: str) -> Instance:
    return Instance(id=iid, provider="mem", region="r1", image_id=image_id, state="running",
                    launched_at=1000, tags=dict(tags))


def new_run(world: World, lookup: RolloutLookup | None = None) -> SweepRun:
    sweep = world.db.write_sync(new_sweep, "t")
    return SweepRun(sweep, "t", world.catalog,
                    CatalogFacts(world.keyring, {}, lookup or RolloutLookup.none()))


def test_a_new_image_on_the_same_instance_closes_the_old_observation(world: World) -> None:
    d1, d2 = world.image("1"), world.image("2")
    run1 = new_run(world)
    world.db.write_sync(apply_chunk, run1, "mem", [Observed(inst("i-1", "img-1", **managed(d1)))])
    run2 = new_run(world)
    r = world.db.write_sync(apply_chunk, run2, "mem", [Observed(inst("i-1", "img-2", **managed(d2)))])
    assert (r.observations_closed, r.observations_opened, r.records) == (1, 1, 1)
    rows = world.sql("SELECT image_id, closed_at IS NULL AS open FROM observations "
                     "ORDER BY image_id")
    assert rows == [{"image_id": "img-1", "open": 0}, {"image_id": "img-2", "open": 1}]
    # the closing event says why
    [ev] = [e for e in world.sql("SELECT body FROM audit_events") if '"close"' in e["body"]]
    assert '"reason":"image changed"' in ev["body"]


def test_close_unseen_works_in_chunks_and_resolves_findings(world: World) -> None:
    run1 = new_run(world)
    world.db.write_sync(apply_chunk, run1, "mem", [Observed(inst(f"i-{n}", "ami-x"))
                                                   for n in range(5)])
    assert len(world.open_findings()) == 10
    run2 = new_run(world)
    first = world.db.write_sync(close_unseen, run2, "mem", 3)
    assert first.observations_closed == 3 and first.more and len(first.resolved) == 6
    second = world.db.write_sync(close_unseen, run2, "mem", 3)
    assert second.observations_closed == 2 and not second.more
    assert world.open_findings() == set()
    assert world.db.write_sync(close_unseen, run2, "mem", 3).records == 0  # nothing left


def test_observations_of_another_provider_are_left_alone(world: World) -> None:
    run1 = new_run(world)
    world.db.write_sync(apply_chunk, run1, "other", [Observed(inst("i-1", "ami-x"))])
    run2 = new_run(world)
    assert world.db.write_sync(close_unseen, run2, "mem").observations_closed == 0
    assert len(world.sql("SELECT 1 FROM observations WHERE closed_at IS NULL")) == 1


def test_the_sweeps_table(world: World) -> None:
    assert world.db.write_sync(sweep_row) is None
    a = world.db.write_sync(new_sweep, "alice")
    b = world.db.write_sync(new_sweep, "bob")
    world.db.write_sync(finish_sweep, a, "completed", None)
    assert world.db.write_sync(sweep_row)["id"] == b  # the latest
    assert world.db.write_sync(sweep_row, a)["state"] == "completed"
    assert world.db.write_sync(sweep_row, 99) is None
    assert world.db.write_sync(abort_stale) == 1  # only b was running
    row = world.db.write_sync(sweep_row, b)
    assert row["state"] == "aborted" and row["finished_at"] and row["actor"] == "bob"


def test_a_sweep_writes_only_what_changed_and_closes_only_what_it_did_not_see(
        world: World) -> None:
    d1 = world.image("1")
    fleet = [inst(f"i-{n}", "img-1", **managed(d1)) for n in range(4)]
    run1 = new_run(world)
    world.db.write_sync(apply_chunk, run1, "mem", [Observed(i) for i in fleet])
    before = world.sql("SELECT instance_id, last_seen, last_sweep, state FROM observations "
                       "ORDER BY instance_id")
    ledger0 = world.sql("SELECT COUNT(*) AS n FROM ledger_leaves")[0]["n"]

    run2 = new_run(world)
    # i-0 unchanged, i-1 stopped (changed), i-2 unchanged, i-3 not listed (gone)
    stopped = inst("i-1", "img-1", **managed(d1))
    stopped = Instance(**{**stopped.__dict__, "state": "stopped"})
    r = world.db.write_sync(apply_chunk, run2, "mem",
                            [Observed(fleet[0]), Observed(stopped), Observed(fleet[2])])
    assert (r.observations_opened, r.observations_closed, r.records) == (0, 0, 0)
    c = world.db.write_sync(close_unseen, run2, "mem")
    assert c.observations_closed == 1 and c.records == 1  # i-3: its close is ledgered
    after = {row["instance_id"]: row for row in world.sql(
        "SELECT instance_id, last_seen, last_sweep, state, closed_at FROM observations")}
    old = {row["instance_id"]: row for row in before}
    for unchanged in ("i-0", "i-2"):  # not rewritten: the row is as the first sweep left it
        assert after[unchanged]["last_sweep"] == old[unchanged]["last_sweep"] == run1.id
        assert after[unchanged]["closed_at"] is None
    assert after["i-1"]["state"] == "stopped" and after["i-1"]["last_sweep"] == run2.id
    assert after["i-3"]["closed_at"] is not None
    # the ledger got one record: the close (a state change is not an observation event)
    assert world.sql("SELECT COUNT(*) AS n FROM ledger_leaves")[0]["n"] == ledger0 + 1


def test_when_every_open_observation_was_seen_nothing_is_scanned(world: World) -> None:
    d1, d2 = world.image("1"), world.image("2")
    fleet = [inst(f"i-{n}", "img-1", **managed(d1)) for n in range(3)]
    run1 = new_run(world)
    world.db.write_sync(apply_chunk, run1, "mem", [Observed(i) for i in fleet])
    run2 = new_run(world)
    # i-2 now runs another image: its old observation is closed, a new one opened (still one
    # open observation per instance seen)
    moved = inst("i-2", "img-2", **managed(d2))
    world.db.write_sync(apply_chunk, run2, "mem", [Observed(fleet[0]), Observed(fleet[1]),
                                                   Observed(moved)])
    c = world.db.write_sync(close_unseen, run2, "mem")
    assert (c.observations_closed, c.records, c.more) == (0, 0, False)
    assert "mem" not in run2.close_after  # decided from the count: no key was read
    assert len(world.sql("SELECT 1 FROM observations WHERE closed_at IS NULL")) == 3
    # one instance fewer: the count differs, the scan runs and closes it
    run3 = new_run(world)
    world.db.write_sync(apply_chunk, run3, "mem", [Observed(fleet[0]), Observed(moved)])
    c = world.db.write_sync(close_unseen, run3, "mem")
    assert c.observations_closed == 1 and c.records == 1
    assert {r["instance_id"] for r in world.sql(
        "SELECT instance_id FROM observations WHERE closed_at IS NULL")} == {"i-0", "i-2"}
