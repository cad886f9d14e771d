"""Instances alike share one judgement per sweep, and a steady chunk is settled by counts: what
the sweep decides and records must be exactly what judging and comparing each one would give.

Time is the audit's own clock (``record._now``), set by the test: the age limit is crossed
without waiting.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from audit_world import World, managed

from imm.audit import record
from imm.audit.facts import CatalogFacts, Observed, RolloutLookup
from imm.audit.record import SweepRun, apply_chunk, close_unseen, new_sweep
from imm.audit.verdicts import judge, verdicts_text
from imm.plugins.base import Instance

T0 = 1_800_000_000
LIMIT = 3600
SERVICES = {"web": {"max_instance_age_s": LIMIT}}


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(record, "_now", lambda: (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now)), self.now))


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, services=SERVICES)
    yield w
    w.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def inst(iid: str, image_id: str, launched_at: int, state: str = "running",
         **tags: str) -> Instance:
    return Instance(id=iid, provider="mem", region="r1", image_id=image_id, state=state,
                    launched_at=launched_at, tags=dict(tags))


KNOWN = RolloutLookup(exists=lambda _c, rid: rid == "r-1", active=lambda _c, _s: None)


def new_run(world: World) -> SweepRun:
    return SweepRun(world.db.write_sync(new_sweep, "t"), "t", world.catalog,
                    CatalogFacts(world.keyring, SERVICES, KNOWN))


def verdicts(world: World) -> dict[str, list[str]]:
    return {r["instance_id"]: [v["verdict"] for v in json.loads(r["verdicts"])]
            for r in world.sql("SELECT instance_id, verdicts FROM observations "
                               "WHERE closed_at IS NULL")}


def test_instances_alike_of_different_ages_get_their_own_verdicts(world: World,
                                                                   clock: Clock) -> None:
    d = world.image("1")
    young = inst("i-young", "img-1", T0 - LIMIT, **managed(d))  # at the limit: not past it
    old = inst("i-old", "img-1", T0 - LIMIT - 1, **managed(d))
    unknown = inst("i-unknown", "img-1", 0, **managed(d))  # no launch time: never too old
    world.db.write_sync(apply_chunk, new_run(world), "mem", [young, old, unknown])
    v = verdicts(world)
    assert "too-old" not in v["i-young"] and "too-old" not in v["i-unknown"]
    assert "too-old" in v["i-old"]
    [detail] = [json.loads(r["detail"]) for r in world.sql(
        "SELECT detail FROM findings WHERE verdict='too-old' AND status='open'")]
    assert detail == {"age_s": LIMIT + 1, "max_instance_age_s": LIMIT, "launched_at": T0 - LIMIT - 1}


def test_crossing_the_age_limit_between_chunks_of_one_sweep(world: World, clock: Clock) -> None:
    d = world.image("1")
    run = new_run(world)
    world.db.write_sync(apply_chunk, run, "mem", [inst("i-1", "img-1", T0 - 10, **managed(d))])
    clock.now = T0 + LIMIT  # the next chunk, an hour later: an instance alike is now too old
    world.db.write_sync(apply_chunk, run, "mem", [inst("i-2", "img-1", T0 - 10, **managed(d))])
    v = verdicts(world)
    assert "too-old" not in v["i-1"] and "too-old" in v["i-2"]


def test_crossing_the_age_limit_between_sweeps_opens_too_old(world: World, clock: Clock) -> None:
    d = world.image("1")
    fleet = [inst(f"i-{n}", "img-1", T0 - 100 * n, **managed(d)) for n in range(3)]
    world.db.write_sync(apply_chunk, new_run(world), "mem", fleet)
    assert world.open_findings() == set()
    clock.now = T0 + LIMIT - 150  # i-2 (launched 200 s before T0) is now past the limit
    r = world.db.write_sync(apply_chunk, new_run(world), "mem", fleet)
    assert world.open_findings() == {("i-2", "too-old")}
    assert [f["verdict"] for f in r.opened] == ["too-old"]
    clock.now = T0 + LIMIT - 50  # and i-1 too; i-2's age in its observation moves on
    world.db.write_sync(apply_chunk, new_run(world), "mem", fleet)
    assert world.open_findings() == {("i-1", "too-old"), ("i-2", "too-old")}
    ages = {r["instance_id"]: json.loads(r["verdicts"]) for r in world.sql(
        "SELECT instance_id, verdicts FROM observations WHERE closed_at IS NULL")}
    assert [v["detail"]["age_s"] for v in ages["i-2"] if v["verdict"] == "too-old"] == [
        LIMIT + 150]


def test_a_memoized_judgement_is_what_judging_each_instance_gives(world: World,
                                                                  clock: Clock) -> None:
    d1, d2 = world.image("1"), world.image("2")
    world.db.write_sync(lambda c: c.execute(  # image 2's row edited: signature-invalid
        "UPDATE images SET version='9' WHERE digest=?", (d2,)))
    fleet = []
    for n, (image_id, tags, age, state) in enumerate([
            ("img-1", managed(d1), 10, "running"), ("img-1", managed(d1), 20, "running"),
            ("img-1", managed(d1), LIMIT + 5, "running"), ("img-1", managed(d1), 10, "stopped"),
            ("img-1", managed(d2), 10, "running"),  # imm:digest names another image
            ("img-2", managed(d2), 10, "running"), ("img-2", managed(d2), LIMIT + 9, "running"),
            ("ami-pet", {}, 10, "running"), ("ami-pet", {}, 10, "running"),
            ("img-1", managed(d1, service="api"), 10, "running")]):
        fleet.append(inst(f"i-{n}", image_id, T0 - age, state, **tags))
    facts = CatalogFacts(world.keyring, SERVICES, RolloutLookup.none())
    mixed: list[Observed | Instance] = [Observed(i) if n % 2 else i for n, i in enumerate(fleet)]
    insts, judged = world.db.write_sync(facts.judge, "mem", mixed, T0)
    assert insts == fleet
    fresh = CatalogFacts(world.keyring, SERVICES, RolloutLookup.none())
    for i, j in zip(fleet, judged, strict=True):
        expect = world.db.write_sync(
            lambda c, i=i: judge(i, fresh.facts(c, "mem", Observed(i), T0)))
        assert j.verdicts == expect, i.id
        assert j.text == verdicts_text(expect)
        assert j.failing == {v for v, _ in expect if v != "ok"}
        assert j.row == (i.region, i.image_id, None if i.image_id == "ami-pet" else
                         (d2 if i.image_id == "img-2" else d1), i.tags.get("imm:service"),
                         i.state, j.text)
    assert judged[0] is judged[1]  # alike and under the limit: one judgement
    assert judged[2] is not judged[0] and not judged[2].alike  # too old: its own
    assert judged[3] is not judged[0]  # another state, another row
    assert judged[7] is judged[8]


def _two_sweeps(world: World, edit: Any) -> tuple[dict[str, dict[str, Any]],
                                                   dict[str, dict[str, Any]], Any]:
    d = world.image("1")
    fleet = [inst(f"i-{n}", "img-1", T0 - 10, **managed(d)) for n in range(4)]
    fleet.append(inst("i-pet", "ami-pet", T0 - 10))
    world.db.write_sync(apply_chunk, new_run(world), "mem", fleet)
    cols = "instance_id, verdicts, last_sweep, state, digest, service"
    before = {r["instance_id"]: r for r in world.sql(f"SELECT {cols} FROM observations")}
    world.db.write_sync(edit)
    run = new_run(world)
    r = world.db.write_sync(apply_chunk, run, "mem", fleet)
    world.db.write_sync(close_unseen, run, "mem")
    after = {r["instance_id"]: r for r in world.sql(
        f"SELECT {cols} FROM observations WHERE closed_at IS NULL")}
    return before, after, r


@pytest.mark.parametrize("column,value", [("verdicts", "[]"), ("state", "stopped"),
                                          ("digest", None), ("service", "api")])
def test_a_row_changed_behind_the_sweep_is_rewritten(world: World, clock: Clock,
                                                     column: str, value: Any) -> None:
    before, after, r = _two_sweeps(world, lambda c: c.execute(
        f"UPDATE observations SET {column}=? WHERE instance_id='i-2'", (value,)))  # noqa: S608
    assert after["i-2"] == {**before["i-2"], "last_sweep": after["i-2"]["last_sweep"]}
    assert after["i-2"]["last_sweep"] != before["i-2"]["last_sweep"]  # rewritten
    for n in ("i-0", "i-1", "i-3", "i-pet"):  # the others alike: not written
        assert after[n] == before[n]
    assert (r.observations_opened, r.observations_closed) == (0, 0)


def test_a_second_open_observation_of_an_instance_is_not_taken_as_settled(world: World,
                                                                          clock: Clock) -> None:
    d = world.image("1")
    fleet = [inst(f"i-{n}", "img-1", T0 - 10, **managed(d)) for n in range(2)]
    run = new_run(world)
    world.db.write_sync(apply_chunk, run, "mem", fleet)
    [j] = {id(j): j for j in world.db.write_sync(run.facts.judge, "mem", fleet, T0)[1]}.values()
    assert world.db.write_sync(record._unchanged, "mem", j.row, ["i-0", "i-1"])
    assert not world.db.write_sync(record._unchanged, "mem", j.row, ["i-0", "i-0"])  # twice
    assert not world.db.write_sync(record._unchanged, "mem", j.row, ["i-0", "i-9"])
    world.db.write_sync(lambda c: c.execute(  # i-1 also shows as running another image
        "INSERT INTO observations (provider, region, instance_id, image_id, digest, service, "
        "state, launched_at, first_seen, last_seen, last_sweep, verdicts, ledger_index, entry) "
        "SELECT provider, region, instance_id, 'img-z', digest, service, state, launched_at, "
        "first_seen, last_seen, last_sweep, verdicts, ledger_index, entry FROM observations "
        "WHERE instance_id='i-1'"))
    assert world.db.write_sync(record._unchanged, "mem", j.row, ["i-0"])
    assert not world.db.write_sync(record._unchanged, "mem", j.row, ["i-0", "i-1"])


def test_a_finding_changed_behind_the_sweep_is_put_right(world: World, clock: Clock) -> None:
    def edit(c: Any) -> None:
        c.execute("UPDATE findings SET status='resolved' WHERE instance_id='i-pet' AND "
                  "verdict='unknown-image'")
        c.execute("INSERT INTO findings (id, provider, region, instance_id, image_id, service, "
                  "verdict, detail, status, opened_at, open_ledger_index, open_entry) VALUES "
                  "(900, 'mem', 'r1', 'i-3', 'img-1', 'web', 'revoked', '{}', 'open', 't', 0, 0)")

    _, _, r = _two_sweeps(world, edit)
    assert [(f["instance"], f["verdict"]) for f in r.opened] == [("i-pet", "unknown-image")]
    assert [(f["instance"], f["verdict"]) for f in r.resolved] == [("i-3", "revoked")]
    assert world.open_findings() == {("i-pet", "unknown-image"), ("i-pet", "outside-rollout")}
    assert len(world.sql("SELECT 1 FROM findings WHERE status='open' AND verdict='revoked'")) == 0


def test_an_instance_listed_twice_in_a_sweep_is_compared_again(world: World,
                                                               clock: Clock) -> None:
    d = world.image("1")
    a = inst("i-1", "img-1", T0 - 10, **managed(d))
    run0 = new_run(world)
    world.db.write_sync(apply_chunk, run0, "mem", [a])
    run = new_run(world)
    stopped = inst("i-1", "img-1", T0 - 10, "stopped", **managed(d))
    world.db.write_sync(apply_chunk, run, "mem", [stopped])  # changed: rewritten
    world.db.write_sync(apply_chunk, run, "mem", [a])  # listed again, running: rewritten back
    [row] = world.sql("SELECT state, last_sweep FROM observations WHERE closed_at IS NULL")
    assert row == {"state": "running", "last_sweep": run.id}
