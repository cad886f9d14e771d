"""Turn a strategy into a fixed list of steps, written into the rollout before it starts.

Steps (each idempotent, each journalled before and after it runs):

- ``launch``  start the instances of a batch (a client token makes a retry harmless)
- ``attach``  add them to the route at weight 0 and wait until they pass their health check
- ``shift``   set traffic weights: ``pct`` of the traffic to the new instances (``even``: same
              weight as the old ones, for rolling batches)
- ``pause``   wait, then gate (router health + ``imm_health_gate`` plugins); promote skips it
- ``bake``    blue-green: keep the old set for instant rollback; promote skips it
- ``approve`` canary manual judgment: wait for k approvals of a pending change (approve.py)
- ``retire``  drain, remove from the route and terminate old instances (``count`` or all)

A canary is a small new set beside a shrinking old one, not a second fleet. For a service of
``N`` instances, at each canary weight ``w`` % the new set has ``ceil(w × N / 100)`` instances
plus ``canary_surge`` (default 1), capped at ``N``; the old set keeps ``N + surge`` minus that,
never fewer than one before 100 %. So the service runs at most ``N + surge`` instances and the
full new set exists only at the 100 % step. At each weight the plan launches and attaches the
instances the new set lacks, retires the oldest old instances it no longer needs (the new ones
are healthy by then, at their previous weight: while a step's new batch passes its health
check it runs beside the old set it replaces), then shifts ``w`` % of the traffic to the new
set and pauses. A router that can only put a backend in or out of the route (DNS) ignores the
weights' values; there the traffic share is carried by these instance counts.
Blue-green launches its full second set; rolling replaces batch by batch.

Waves (``waves`` in the service): the strategy's steps are made for each wave's targets alone
(its instance count, its slots), one wave after the other, and each wave ends with a ``wave``
step: bake ``bake_s`` (``wave_bake_s`` or the wave's own), gate the wave's new instances, run
the ``each-wave`` analyses. Every step of a wave carries ``wave`` (1, 2, ...) and is named
``w<wave>-<index>-<op>`` (the index counts over the whole plan, so names are unique); batch
numbers also count over the whole plan (slot tags ``b<batch>`` stay unique). A service without
waves gets the steps it always had, named ``<index>-<op>``.
"""

from __future__ import annotations

import math
from typing import Any

from .services import Service, parse_batch
from .states import CANARY, OP_ATTACH, OP_WAVE, ROLLING


def make_plan(service: Service, strategy: str) -> list[dict[str, Any]]:
    if not service.waves:
        steps = strategy_steps(service, strategy, service.count)
        for i, s in enumerate(steps):
            s["name"] = f"{i}-{s['op']}"
        return steps
    steps = []
    batches = 0
    for n, wave in enumerate(service.waves, 1):
        sub = strategy_steps(service, strategy, wave.count)
        first = True
        for s in sub:
            s["wave"] = n
            if "batch" in s:
                s["batch"] += batches
            if s["op"] == OP_ATTACH and first:
                s["first"] = True  # the wave's first batch: before-traffic analyses run here
                first = False
        batches = 1 + max((s["batch"] for s in [*steps, *sub] if "batch" in s), default=-1)
        steps += sub
        steps.append({"op": OP_WAVE, "wave": n, "seconds": wave.bake_s})
    for i, s in enumerate(steps):
        s["name"] = f"w{s['wave']}-{i}-{s['op']}"
    return steps


def strategy_steps(service: Service, strategy: str, total: int) -> list[dict[str, Any]]:
    """The strategy's steps for ``total`` instances (the service's, or one wave's), unnamed."""
    steps: list[dict[str, Any]] = []
    if strategy == ROLLING:
        size = parse_batch(service.batch, total, f"service {service.name} batch")
        batches = [(b, min(size, total - b * size)) for b in range((total + size - 1) // size)]
        first = 0
        for b, n in batches:
            steps += [
                {"op": "launch", "batch": b, "slots": list(range(first, first + n))},
                {"op": "attach", "batch": b},
                {"op": "shift", "pct": "even"},
                {"op": "retire", "count": n},
            ]
            first += n
        steps[-1] = {"op": "retire", "count": "all"}
    elif strategy == CANARY:
        steps = canary_steps(total, service.canary_steps, service.canary_surge,
                             service.canary_pause_s, service.approve_timeout_s)
    else:
        steps += [{"op": "launch", "batch": 0, "slots": list(range(total))},
                  {"op": "attach", "batch": 0},
                  {"op": "shift", "pct": 100}]
        if service.bake_time_s:
            steps.append({"op": "bake", "seconds": service.bake_time_s})
        steps.append({"op": "retire", "count": "all"})
    return steps


def canary_sizes(total: int, pct: int, surge: int) -> tuple[int, int]:
    """(new, old) instance counts of a canary of ``total`` instances at ``pct`` % (< 100)."""
    new = min(total, math.ceil(pct * total / 100) + surge)
    old = max(1, min(total, total + surge - new))
    return new, old


def canary_steps(total: int, pcts: list[int | str], surge: int, pause_s: float,
                 approve_s: float = 3600.0) -> list[dict[str, Any]]:
    """A canary's steps: per weight, grow the new set, shrink the old one, shift, pause; an
    ``"approve"`` entry holds the current split until k approvals (approve.py)."""
    steps: list[dict[str, Any]] = []
    have_new, have_old, batch = 0, total, 0

    def grow(to: int) -> None:
        nonlocal have_new, batch
        if to > have_new:
            steps.extend([{"op": "launch", "batch": batch, "slots": list(range(have_new, to))},
                          {"op": "attach", "batch": batch}])
            have_new, batch = to, batch + 1

    for pct in pcts:
        if not isinstance(pct, int):  # "approve": manual judgment at the current split
            steps.append({"op": "approve", "seconds": approve_s})
            continue
        new, old = canary_sizes(total, pct, surge)
        grow(new)
        if old < have_old:
            steps.append({"op": "retire", "count": have_old - old})
            have_old = old
        steps += [{"op": "shift", "pct": pct}, {"op": "pause", "seconds": pause_s}]
    grow(total)
    steps += [{"op": "shift", "pct": 100}, {"op": "retire", "count": "all"}]
    return steps


def wave_weights(pct: int | str, new: list[str], old: list[str],
                 total: int) -> dict[str, int]:
    """Weights for one wave's backends that keep the wave's share of a route shared with other
    waves: their sum stays ``total`` (100 per instance of the wave), ``pct`` % to the new set."""
    if pct == "even":
        return {n: 100 for n in new}
    pct = int(pct)
    if not old or pct >= 100:
        return {**{n: 100 for n in new}, **{o: 0 for o in old}}
    if not new or pct <= 0:
        return {**{n: 0 for n in new}, **{o: 100 for o in old}}

    def each(share: float, k: int) -> int:
        return max(1, min(256, round(share / k)))

    return {**{n: each(total * pct / 100, len(new)) for n in new},
            **{o: each(total * (100 - pct) / 100, len(old)) for o in old}}


def weights(pct: int, new: list[str], old: list[str], scale: int = 100) -> dict[str, int]:
    """Per-instance weights giving the new instances ``pct`` % of the traffic (0..256)."""
    if not old or pct >= 100:
        return {**{n: scale for n in new}, **{o: 0 for o in old}}
    if not new or pct <= 0:
        return {**{n: 0 for n in new}, **{o: scale for o in old}}
    wn, wo = pct * len(old), (100 - pct) * len(new)
    factor = 256 / max(wn, wo)
    return {**{n: max(1, round(wn * factor)) for n in new},
            **{o: max(1, round(wo * factor)) for o in old}}
