"""What an instance is judged against: catalog facts memoized per sweep, rollout answers handed in."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_world import World, managed
from test_audit_record import inst, new_run

from imm.audit.facts import CatalogFacts, Observed, RolloutLookup
from imm.audit.record import apply_chunk


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w
    w.close()


def test_facts_are_memoized_for_one_sweep(world: World) -> None:
    d = world.image("1")
    calls: list[str] = []
    lookup = RolloutLookup(exists=lambda _c, rid: calls.append(rid) or True,
                           active=lambda _c, _s: None)
    run = new_run(world, lookup)
    items = [Observed(inst(f"i-{n}", "img-1", **managed(d, rollout="r-1"))) for n in range(4)]
    world.db.write_sync(apply_chunk, run, "mem", items)
    assert calls == ["r-1"]  # asked once for four instances
    assert world.open_findings() == set()
    assert RolloutLookup.none().exists(None, "r-1") is False  # type: ignore[arg-type]


def test_an_artifact_maps_to_its_image_and_an_unknown_one_to_nothing(world: World) -> None:
    d = world.image("1")
    facts = CatalogFacts(world.keyring, {}, RolloutLookup.none())
    assert world.db.write_sync(facts.artifact, "mem", "r1", "img-1") == (d, ())
    assert world.db.write_sync(facts.artifact, "mem", "r1", "ami-x") == (None, ())
    image = world.db.write_sync(facts.image, d)
    assert image is not None and (image.name, image.version, image.problems) == ("app", "1", ())
    assert world.db.write_sync(facts.image, "sha256:" + "f" * 64) is None


def test_a_tampered_row_shows_as_problems(world: World) -> None:
    d = world.image("1")
    world.db.write_sync(lambda c: c.execute("UPDATE images SET version='9' WHERE digest=?", (d,)))
    facts = CatalogFacts(world.keyring, {}, RolloutLookup.none())
    image = world.db.write_sync(facts.image, d)
    assert image is not None and image.problems and d[:19] in image.problems[0]


def test_the_active_rollout_comes_from_the_lookup(world: World) -> None:
    lookup = RolloutLookup(exists=lambda _c, _r: False,
                           active=lambda _c, s: {"id": "r-7"} if s == "web" else None)
    facts = CatalogFacts(world.keyring, {}, lookup)
    assert world.db.write_sync(facts.active_rollout, "web") == "r-7"
    assert world.db.write_sync(facts.active_rollout, "api") is None


def test_instances_alike_share_one_facts_object_for_one_time(world: World) -> None:
    d = world.image("1")
    facts = CatalogFacts(world.keyring, {}, RolloutLookup.none())
    a, b = (Observed(inst(f"i-{n}", "img-1", **managed(d))) for n in range(2))
    other = Observed(inst("i-9", "ami-x"))
    fa = world.db.write_sync(facts.facts, "mem", a, 100)
    assert world.db.write_sync(facts.facts, "mem", b, 100) is fa  # same key, same time
    fo = world.db.write_sync(facts.facts, "mem", other, 100)
    assert fo is not fa and fo.image is None and fa.image is not None
    later = world.db.write_sync(facts.facts, "mem", a, 160)
    assert later is not fa and later.now == 160 and fa.now == 100  # time is part of it
    rehashed = Observed(a.instance, rehash=("sha256:" + "0" * 64, {}))
    assert world.db.write_sync(facts.facts, "mem", rehashed, 160).rehash == rehashed.rehash
