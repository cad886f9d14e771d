"""Turn a strategy into a fixed list of steps, written into the rollout before it starts.

Steps (each idempotent, each journalled before and after it runs):

- ``launch``  start the instances of a batch (a client token makes a retry harmless)
- ``attach``  add them to the route at weight 0 and wait until they pass their health check
- ``shift``   set traffic weights: ``pct`` of the traffic to the new instances (``even``: same
              weight as the old ones, for rolling batches)
- ``pause``   wait, then gate (router health + ``imm_health_gate`` plugins); promote skips it
- ``bake``    blue-green: keep the old set for instant rollback; promote skips it
- ``retire``  drain, remove from the route and terminate old instances (``count`` or all)
"""

from __future__ import annotations

from typing import Any

from .services import Service, parse_batch
from .states import CANARY, ROLLING


def make_plan(service: Service, strategy: str) -> list[dict[str, Any]]:
    total = service.count
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
    else:
        steps += [{"op": "launch", "batch": 0, "slots": list(range(total))},
                  {"op": "attach", "batch": 0}]
        if strategy == CANARY:
            for pct in service.canary_steps:
                steps += [{"op": "shift", "pct": pct},
                          {"op": "pause", "seconds": service.canary_pause_s}]
            steps.append({"op": "shift", "pct": 100})
        else:
            steps.append({"op": "shift", "pct": 100})
            if service.bake_time_s:
                steps.append({"op": "bake", "seconds": service.bake_time_s})
        steps.append({"op": "retire", "count": "all"})
    for i, s in enumerate(steps):
        s["name"] = f"{i}-{s['op']}"
    return steps


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
