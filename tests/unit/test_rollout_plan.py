"""Rollout plans (imm.rollout.plan): the exact steps each strategy writes, and traffic weights.

Pure functions, no daemon: a plan is compared step for step, weights value for value, and the
traffic share the weights give is checked against the percentage asked for.
"""

from __future__ import annotations

import pytest

from imm.errors import BadRequest
from imm.rollout.plan import make_plan, weights
from imm.rollout.services import Service, Target


def service(count: int = 3, **kw) -> Service:
    targets = kw.pop("targets", None) or [Target("local", "local", count)]
    return Service(name="web", targets=targets, router="haproxy", route="web", **kw)


def named(steps: list[dict]) -> list[dict]:
    """The steps as make_plan names them: ``<position>-<op>``."""
    return [{**s, "name": f"{i}-{s['op']}"} for i, s in enumerate(steps)]


# -- make_plan -------------------------------------------------------------------------------


def test_blue_green_without_bake():
    assert make_plan(service(3), "blue-green") == named([
        {"op": "launch", "batch": 0, "slots": [0, 1, 2]},
        {"op": "attach", "batch": 0},
        {"op": "shift", "pct": 100},
        {"op": "retire", "count": "all"},
    ])


def test_blue_green_keeps_the_old_set_for_its_bake_time():
    plan = make_plan(service(2, bake_time_s=30.0), "blue-green")
    assert plan == named([
        {"op": "launch", "batch": 0, "slots": [0, 1]},
        {"op": "attach", "batch": 0},
        {"op": "shift", "pct": 100},
        {"op": "bake", "seconds": 30.0},
        {"op": "retire", "count": "all"},
    ])
    assert [s["name"] for s in plan] == ["0-launch", "1-attach", "2-shift", "3-bake", "4-retire"]


def test_an_unknown_strategy_name_plans_like_blue_green():
    assert make_plan(service(1), "anything") == make_plan(service(1), "blue-green")


def test_canary_shifts_each_step_then_pauses_then_goes_to_100():
    # 4 instances, surge 1: at 5 % and 25 % the new set is 2 and the old 3; at 60 % 4 and 1
    plan = make_plan(service(4, canary_steps=[5, 25, 60], canary_pause_s=7.0), "canary")
    assert plan == named([
        {"op": "launch", "batch": 0, "slots": [0, 1]},
        {"op": "attach", "batch": 0},
        {"op": "retire", "count": 1},
        {"op": "shift", "pct": 5},
        {"op": "pause", "seconds": 7.0},
        {"op": "shift", "pct": 25},
        {"op": "pause", "seconds": 7.0},
        {"op": "launch", "batch": 1, "slots": [2, 3]},
        {"op": "attach", "batch": 1},
        {"op": "retire", "count": 2},
        {"op": "shift", "pct": 60},
        {"op": "pause", "seconds": 7.0},
        {"op": "shift", "pct": 100},
        {"op": "retire", "count": "all"},
    ])


def test_canary_ignores_bake_time_and_without_steps_goes_straight_to_100():
    plan = make_plan(service(1, canary_steps=[], bake_time_s=99.0), "canary")
    assert plan == named([
        {"op": "launch", "batch": 0, "slots": [0]},
        {"op": "attach", "batch": 0},
        {"op": "shift", "pct": 100},
        {"op": "retire", "count": "all"},
    ])


def test_rolling_in_batches_of_two_with_a_short_last_batch():
    plan = make_plan(service(5, batch="2"), "rolling")
    assert plan == named([
        {"op": "launch", "batch": 0, "slots": [0, 1]},
        {"op": "attach", "batch": 0},
        {"op": "shift", "pct": "even"},
        {"op": "retire", "count": 2},
        {"op": "launch", "batch": 1, "slots": [2, 3]},
        {"op": "attach", "batch": 1},
        {"op": "shift", "pct": "even"},
        {"op": "retire", "count": 2},
        {"op": "launch", "batch": 2, "slots": [4]},
        {"op": "attach", "batch": 2},
        {"op": "shift", "pct": "even"},
        {"op": "retire", "count": "all"},
    ])


def test_rolling_counts_every_target_and_takes_a_percentage_batch():
    svc = service(targets=[Target("aws", "eu-west-1", 2), Target("aws", "us-east-1", 2)],
                  batch="50%")
    plan = make_plan(svc, "rolling")
    assert [s for s in plan if s["op"] == "launch"] == [
        {"op": "launch", "batch": 0, "slots": [0, 1], "name": "0-launch"},
        {"op": "launch", "batch": 1, "slots": [2, 3], "name": "4-launch"},
    ]
    assert plan[-1] == {"op": "retire", "count": "all", "name": "7-retire"}
    assert plan[3] == {"op": "retire", "count": 2, "name": "3-retire"}


def test_rolling_with_a_batch_larger_than_the_service_is_one_batch():
    assert make_plan(service(2, batch="10"), "rolling") == named([
        {"op": "launch", "batch": 0, "slots": [0, 1]},
        {"op": "attach", "batch": 0},
        {"op": "shift", "pct": "even"},
        {"op": "retire", "count": "all"},
    ])


def test_rolling_refuses_a_bad_batch_naming_the_service_and_value():
    with pytest.raises(BadRequest) as e:
        make_plan(service(3, batch="0"), "rolling")
    assert e.value.message == ("service web batch '0' must be a count ≥ 1 or a percentage "
                               "like 25%")


# -- weights ---------------------------------------------------------------------------------


def share(w: dict[str, int], new: list[str]) -> float:
    total = sum(w.values())
    return 100 * sum(w[n] for n in new) / total


def test_all_traffic_to_the_new_set_at_100_or_without_old_instances():
    assert weights(100, ["n1", "n2"], ["o1"]) == {"n1": 100, "n2": 100, "o1": 0}
    assert weights(150, ["n1"], ["o1"]) == {"n1": 100, "o1": 0}
    assert weights(30, ["n1"], []) == {"n1": 100}
    assert weights(100, ["n1"], ["o1"], scale=256) == {"n1": 256, "o1": 0}


def test_all_traffic_to_the_old_set_at_0_or_without_new_instances():
    assert weights(0, ["n1"], ["o1", "o2"]) == {"n1": 0, "o1": 100, "o2": 100}
    assert weights(-5, ["n1"], ["o1"]) == {"n1": 0, "o1": 100}
    assert weights(50, [], ["o1"]) == {"o1": 100}
    assert weights(0, ["n1"], ["o1"], scale=1) == {"n1": 0, "o1": 1}


def test_no_instances_at_all():
    assert weights(50, [], []) == {}
    assert weights(100, [], []) == {}


@pytest.mark.parametrize(
    ("pct", "n_new", "n_old", "w_new", "w_old"),
    [
        (10, 1, 3, 85, 256),   # canary step 10 %: one new instance beside three old ones
        (50, 1, 3, 256, 85),   # canary step 50 %
        (50, 2, 2, 256, 256),  # half and half, equal sets
        (25, 4, 4, 85, 256),
        (99, 1, 1, 256, 3),
        (1, 1, 1, 3, 256),
        (60, 3, 3, 256, 171),
    ],
)
def test_weights_part_way_through_a_canary(pct, n_new, n_old, w_new, w_old):
    new = [f"n{i}" for i in range(n_new)]
    old = [f"o{i}" for i in range(n_old)]
    w = weights(pct, new, old)
    assert w == {**{n: w_new for n in new}, **{o: w_old for o in old}}
    # the largest weight uses the whole 0..256 range; the share is the one asked for
    assert max(w.values()) == 256
    assert share(w, new) == pytest.approx(pct, abs=0.6)


def test_part_way_weights_ignore_scale():
    assert weights(10, ["n"], ["a", "b", "c"], scale=7) == {"n": 85, "a": 256, "b": 256, "c": 256}


def test_a_tiny_share_still_gets_weight_1_on_either_side():
    many = [f"n{i}" for i in range(600)]
    w = weights(1, many, ["o"])
    assert w["o"] == 256 and {w[n] for n in many} == {1}
    w = weights(99, ["n"], many)
    assert w["n"] == 256 and {w[o] for o in many} == {1}
