"""Real canaries: a small new set beside a shrinking old one, never a second fleet.

The plan (``plan.canary_steps``) and the engine carrying it out on the in-memory provider and
router of ``rollout_world``: at every canary weight the live instances are counted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from rollout_world import SERVICE, Gate, World, run, settle

from imm.errors import ConfigError
from imm.rollout.plan import canary_sizes, make_plan
from imm.rollout.services import parse_service
from imm.rollout.states import COMPLETED, ROLLED_BACK

TEN = [{"provider": "mem", "region": "r1", "count": 10}]


def _svc(**kw: object):  # type: ignore[no-untyped-def]
    raw = {**SERVICE, "strategy": "canary", "targets": TEN, **kw}
    if "canary_surge" not in kw:
        raw.pop("canary_surge")
    return parse_service("web", raw, {"mem"}, {"lb"})


def _walk(plan: list[dict[str, Any]], total: int) -> list[tuple[int, int, int]]:
    """(pct, new, old) at every shift, counting what the launch and retire steps leave."""
    new, old, out = 0, total, []
    for s in plan:
        if s["op"] == "launch":
            new += len(s["slots"])
        elif s["op"] == "retire":
            old = 0 if s["count"] == "all" else old - s["count"]
        elif s["op"] == "shift":
            out.append((s["pct"], new, old))
    assert (new, old) == (total, 0)
    return out


def test_default_surge_is_one() -> None:
    assert _svc().canary_surge == 1


@pytest.mark.parametrize("surge", [0, 1, 3])
def test_plan_of_ten_grows_new_by_ceil_weight_plus_surge_and_shrinks_old(surge: int) -> None:
    plan = make_plan(_svc(canary_steps=[5, 10, 30, 50, 80, 95], canary_surge=surge), "canary")
    walked = _walk(plan, 10)
    for pct, new, old in walked[:-1]:
        assert new == min(10, math.ceil(pct * 10 / 100) + surge), (pct, new)
        assert old == max(1, 10 + surge - new), (pct, old)
        assert new + old <= 10 + max(surge, 1)
    assert walked[-1] == (100, 10, walked[-2][2]), "the full new set exists only at 100 %"
    slots = [x for s in plan if s["op"] == "launch" for x in s["slots"]]
    assert slots == list(range(10)), "every slot launched once, in order"
    batches = [s["batch"] for s in plan if s["op"] == "launch"]
    assert batches == list(range(len(batches)))
    assert [s["batch"] for s in plan if s["op"] == "attach"] == batches


def test_plan_of_ten_in_figures() -> None:
    plan = make_plan(_svc(canary_steps=[10, 50], canary_pause_s=3), "canary")
    assert [(s["name"], s.get("slots", s.get("count", s.get("pct")))) for s in plan] == [
        ("0-launch", [0, 1]), ("1-attach", None), ("2-retire", 1), ("3-shift", 10),
        ("4-pause", None), ("5-launch", [2, 3, 4, 5]), ("6-attach", None), ("7-retire", 4),
        ("8-shift", 50), ("9-pause", None), ("10-launch", [6, 7, 8, 9]), ("11-attach", None),
        ("12-shift", 100), ("13-retire", "all")]
    assert plan[4]["seconds"] == 3


def test_sizes_keep_an_old_instance_until_the_end() -> None:
    assert canary_sizes(10, 10, 1) == (2, 9)
    assert canary_sizes(10, 95, 1) == (10, 1)
    assert canary_sizes(10, 95, 0) == (10, 1), "a canary always has an old set to compare"
    assert canary_sizes(1, 50, 1) == (1, 1)
    assert canary_sizes(3, 34, 1) == (3, 1)  # ceil(1.02) = 2, + 1


def test_a_single_instance_canary_keeps_its_old_one() -> None:
    plan = make_plan(_svc(targets=[{"provider": "mem", "region": "r1", "count": 1}]), "canary")
    assert [s["op"] for s in plan] == ["launch", "attach", "shift", "pause", "shift", "pause",
                                       "shift", "retire"]


def test_blue_green_and_rolling_are_unchanged() -> None:
    bg = make_plan(_svc(), "blue-green")
    assert bg[0]["slots"] == list(range(10)), "blue-green keeps its full second set"
    rolling = make_plan(_svc(batch="3"), "rolling")
    assert [s["slots"] for s in rolling if s["op"] == "launch"] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_surge_is_a_config_error_naming_the_value(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"canary_surge must be an integer ≥ 0, got " +
                       repr(bad).replace(".", r"\.")):
        _svc(canary_surge=bad)


class Counter:
    """Counts the live instances per image at every weight change and after every launch."""

    def __init__(self, w: World, old_digest: str) -> None:
        self.w, self.old_digest = w, old_digest
        self.at_shift: list[tuple[float, int, int]] = []  # (new share, new, old)
        self.peak = 0
        real_set, real_launch = w.router.set_weights, w.provider.launch

        def set_weights(route: str, weights: Any) -> None:
            real_set(route, weights)
            new, old = self.count()
            ids_new = {i for i, x in w.provider.instances.items()
                       if x.tags["imm:digest"] != old_digest}
            total = sum(weights.values())
            share = sum(v for k, v in weights.items() if k in ids_new) / total
            self.at_shift.append((share, new, old))

        def launch(req: Any) -> Any:
            got = real_launch(req)
            self.peak = max(self.peak, sum(self.count()))
            return got

        w.router.set_weights = set_weights  # type: ignore[method-assign]
        w.provider.launch = launch  # type: ignore[method-assign]

    def count(self) -> tuple[int, int]:
        digests = [i.tags["imm:digest"] for i in self.w.provider.instances.values()]
        old = sum(d == self.old_digest for d in digests)
        return len(digests) - old, old


def test_engine_canary_of_ten_never_runs_twenty(tmp_path: Path) -> None:
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary", "targets": TEN,
                                 "canary_steps": [10, 30, 50, 80], "canary_surge": 1}})
    old_digest = w.image("1")
    w.old_fleet(old_digest, 10)
    w.image("2")
    seen = Counter(w, old_digest)

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == COMPLETED, st["error"]
    expect = [(pct, min(10, math.ceil(pct / 10) + 1)) for pct in (10, 30, 50, 80)]
    assert [(n, o) for _, n, o in seen.at_shift] == [(n, 11 - n) for _, n in expect] + [(10, 2)]
    for (pct, _), (share, _, _) in zip(expect, seen.at_shift, strict=False):
        assert share == pytest.approx(pct / 100, abs=0.01), "the weights still give w %"
    assert seen.at_shift[-1][0] == 1.0
    # a step's new batch starts beside the old set it then replaces: at 80 % the 3 new ones
    # (6 → 9) join 6 new and 5 old for the time of their health check; never 20
    assert seen.peak == 6 + 3 + 5
    assert len(w.provider.instances) == 10


def test_engine_canary_failing_at_first_pause_restores_ten_old(tmp_path: Path) -> None:
    gate = Gate(refuse={"4-pause"})
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary", "targets": TEN,
                                 "canary_steps": [10, 50], "canary_surge": 1}}, plugins=[gate])
    old_digest = w.image("1")
    old = w.old_fleet(old_digest, 10)
    w.image("2")
    seen = Counter(w, old_digest)

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    st = run(w, body)
    assert st["state"] == ROLLED_BACK
    assert seen.at_shift[0][1:] == (2, 9), "at 10 %: 2 new beside 9 old"
    live = w.provider.instances.values()
    assert len(live) == 10 and {i.tags["imm:digest"] for i in live} == {old_digest}
    assert len(set(old) & set(w.provider.instances)) == 9, "one old was retired, one relaunched"
    assert set(w.router.serving()) == set(w.provider.instances)
