"""Rolling back: give the old instances their traffic back, then remove every new one.

The old set gets its weight back *before* any new instance is drained, so the route is never
left without a healthy backend. If retire steps had already removed old instances, as many as
are missing are relaunched from the previous image first. Every action is idempotent: a
rollback interrupted by a crash or an outage is simply run again.

With waves, a failure in wave N rolls back waves 1..N only (the waves with a step begun): the
old instances of their targets get their traffic back (a target short of its count relaunches
the missing ones from the previous image in that target), every new instance is removed; the
instances and backends of the later waves are not touched at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..context import Context
from ..errors import HealthTimeout
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, TAG_SLOT, Instance, LaunchRequest
from .fleet import Fleet
from .journal import Journal
from .services import Service, target_key
from .states import BEGIN, DONE, OP_LAUNCH, OP_RETIRE, ROLLBACK_SLOT, ROLLED_BACK
from .steps import Rollout, Steps, in_wave


def started_waves(r: Rollout) -> list[dict[str, Any]] | None:
    """The waves with a step begun (those a rollback undoes); None for a rollout without
    waves (all of its targets)."""
    waves = r["params"].get("waves")
    if not waves:
        return None
    begun = {j["step"] for j in r["journal"] if j["action"] in (BEGIN, DONE)}
    numbers = {s.get("wave") for s in r["params"]["plan"] if s["name"] in begun}
    return [w for w in waves if w["wave"] in numbers]


def launched_by(r: Rollout) -> set[str]:
    """The instance ids the rollout's launch steps reported, from its journal."""
    return {i for j in r["journal"] if j["action"] == DONE and j["step"].endswith(f"-{OP_LAUNCH}")
            for i in j["detail"].get("instances", [])}


log = logging.getLogger("imm.rollout")

class Rollback:
    def __init__(self, ctx: Context, journal: Journal, fleet: Fleet, steps: Steps,
                 checkpoint: Callable[[str, str], None] = lambda _step, _when: None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.fleet = fleet
        self.steps = steps
        self.checkpoint = checkpoint

    async def run(self, r: Rollout) -> None:
        rid = r["id"]
        svc = self.fleet.service(r["service"])
        await self.fleet.ready(svc)  # not up (its router was down): retried with backoff
        await self.journal.record(rid, "rollback", BEGIN, {"reason": r["error"]})
        everything = await self.fleet.instances(svc)
        new = [i for i in everything if i.tags.get(TAG_ROLLOUT) == rid
               and i.tags.get(TAG_SLOT) != ROLLBACK_SLOT]
        waves = started_waves(r)
        keys = None if waves is None else {target_key(t["provider"], t["region"])
                                           for w in waves for t in w["targets"]}
        old = [i for i in everything if i not in new and in_wave(i, keys)]
        retired = r["previous_digest"] and any(
            j["action"] == DONE and j["step"].endswith(f"-{OP_RETIRE}") for j in r["journal"])
        if waves is None:
            missing = svc.count - len(old)
            if missing > 0 and retired:
                old += await self.relaunch_previous(svc, r, missing)
        elif retired:
            old += await self.relaunch_in_waves(svc, r, waves, old)
        routed = self.fleet.router(svc)
        if routed is not None:
            router, route = routed
            present = {b.name: b for b in await router.backends(route)}
            for i in old:
                if i.id not in present and i.address:
                    await router.add(route, i.id, i.address)
            if old:
                # every old instance (a relaunched one too) gets its weight back once healthy:
                # one left at weight 0 would be the only serving backend the next rollout
                # could not retire (a canary retires old instances before its first shift)
                if router.checks_health:
                    with contextlib.suppress(HealthTimeout):  # those healthy by then serve
                        await router.wait_health(route, [i.id for i in old],
                                                 svc.health_timeout_s)
                health = await router.health(route)
                healthy_old = [i.id for i in old
                               if health.get(i.id) or not router.checks_health]
                w = {i: 100 for i in healthy_old}
                w.update({i.id: 0 for i in new if i.id in present})
                if healthy_old:
                    await router.set_weights(route, w)
            for i in new:
                if i.id in present:
                    await router.drain(route, i.id)
            # backends of instances this rollout launched that are already gone (a rollback
            # interrupted after terminating them) leave the route too
            gone = sorted((launched_by(r) & set(present)) - {i.id for i in new})
            await self.steps.remove(router, route, [i.id for i in new] + gone,
                                    [{"id": i.id, "provider": i.provider} for i in new])
        else:
            await self.steps.terminate([{"id": i.id, "provider": i.provider} for i in new])
        self.checkpoint("rollback", "after")
        await self.journal.record(rid, "rollback", DONE, {"removed": sorted(i.id for i in new)},
                                  state=ROLLED_BACK)
        log.info("rollout %s of %s rolled back: %d new instance(s) removed", rid, svc.name,
                 len(new))

    async def relaunch_in_waves(self, svc: Service, r: Rollout, waves: list[dict[str, Any]],
                                old: list[Instance]) -> list[Instance]:
        """Relaunch from the previous image what each target of the waves lacks."""
        arts = await self.journal.artifacts(r["previous_digest"])
        out: list[Instance] = []
        for w in waves:
            for t in w["targets"]:
                key = target_key(t["provider"], t["region"])
                missing = int(t["count"]) - sum(1 for i in old if in_wave(i, {key}))
                image_id = arts.get(key)
                if missing <= 0 or image_id is None:
                    continue
                req = LaunchRequest(
                    region=t["region"], image_id=image_id, count=missing,
                    tags={TAG_SERVICE: svc.name, TAG_ROLLOUT: r["id"], TAG_SLOT: ROLLBACK_SLOT,
                          TAG_DIGEST: r["previous_digest"]},
                    client_token=f"{r['id']}-{ROLLBACK_SLOT}-{t['provider']}-{t['region']}",
                    size=svc.size)
                out += await self.ctx.provider(t["provider"]).launch(req)
        return out

    async def relaunch_previous(self, svc: Service, r: Rollout, missing: int) -> list[Instance]:
        prev = r["previous_digest"]
        arts = await self.journal.artifacts(prev)
        t = svc.targets[0]
        image_id = arts.get(f"{t.provider}/{t.region}")
        if image_id is None:
            return []
        req = LaunchRequest(region=t.region, image_id=image_id, count=missing,
                            tags={TAG_SERVICE: svc.name, TAG_ROLLOUT: r["id"],
                                  TAG_SLOT: ROLLBACK_SLOT, TAG_DIGEST: prev},
                            client_token=f"{r['id']}-{ROLLBACK_SLOT}", size=svc.size)
        return list(await self.ctx.provider(t.provider).launch(req))
