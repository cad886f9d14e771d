"""The step actions of a plan: launch, attach (with its health gate), shift, pause/bake, retire.

Each action is idempotent: it finds its instances again by their tags and its backends by name,
so running a step a second time after a crash does no harm. A step that cannot be carried out
raises :class:`StepFailed`; the engine then rolls the rollout back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..context import Context, RouterHandle
from ..errors import HealthTimeout, ImmError, NotLeader
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, TAG_SLOT, Instance, LaunchRequest
from . import approve
from .analysis import Analysis
from .fleet import Fleet
from .journal import Journal
from .plan import wave_weights, weights
from .services import Service, target_key
from .states import (
    OP_APPROVE,
    OP_ATTACH,
    OP_LAUNCH,
    OP_PAUSE,
    OP_RETIRE,
    OP_SHIFT,
    OP_WAVE,
    RUNNING,
    WAITS,
    StepFailed,
)

log = logging.getLogger("imm.rollout")

Rollout = dict[str, Any]  # a rollouts row with its params and journal (journal.load)
Step = dict[str, Any]  # one step of the plan (plan.make_plan)


def slot_of(step: Step) -> str:
    return f"b{step['batch']}"


def wave_of(r: Rollout, step: Step) -> dict[str, Any] | None:
    """The wave (as the rollout stored it at start) a step belongs to; None without waves."""
    waves = r["params"].get("waves")
    n = step.get("wave")
    return waves[n - 1] if waves and n else None


def wave_keys(wave: dict[str, Any]) -> set[str]:
    return {target_key(t["provider"], t["region"]) for t in wave["targets"]}


def in_wave(i: Instance, keys: set[str] | None) -> bool:
    """Whether the instance runs in one of the wave's targets (every instance without waves)."""
    return keys is None or target_key(i.provider, i.region) in keys


def step_targets(svc: Service, r: Rollout, step: Step) -> list[tuple[str, str, int]]:
    """(provider, region, count) of the targets a step works on: its wave's, or the service's."""
    wave = wave_of(r, step)
    if wave is None:
        return [(t.provider, t.region, t.count) for t in svc.targets]
    return [(t["provider"], t["region"], int(t["count"])) for t in wave["targets"]]


class Steps:
    def __init__(self, ctx: Context, journal: Journal, fleet: Fleet,
                 wakes: dict[str, asyncio.Event] | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.fleet = fleet
        # the engine's wake-up of each running rollout, set when a verb changes it: a wait in
        # a step ends at once rather than at its next look at the journal
        self.wakes = wakes if wakes is not None else {}
        self.analysis = Analysis(ctx, journal, fleet)

    async def decide(self, svc: Service, r: Rollout, step: Step) -> dict[str, Any]:
        """The concrete decision of a step, journalled before it is acted on."""
        wave = wave_of(r, step)
        keys = wave_keys(wave) if wave else None
        if step["op"] == OP_RETIRE:
            old = [i for i in await self.fleet.instances(svc)
                   if i.tags.get(TAG_ROLLOUT) != r["id"] and in_wave(i, keys)]
            old.sort(key=lambda i: (i.launched_at, i.id))
            n = len(old) if step["count"] == "all" else min(int(step["count"]), len(old))
            return {"retire": [{"id": i.id, "provider": i.provider} for i in old[:n]]}
        if step["op"] == OP_APPROVE:
            return await approve.open_change(self.ctx, svc, r, step)
        if step["op"] == OP_LAUNCH:
            return {"tokens": [f"{r['id']}-{slot_of(step)}-{p}-{region}"
                               for p, region, _ in step_targets(svc, r, step)]}
        return {}

    async def execute(self, svc: Service, r: Rollout, step: Step,
                      decision: dict[str, Any]) -> dict[str, Any]:
        op = step["op"]
        if op == OP_LAUNCH:
            return await self.launch(svc, r, step)
        if op == OP_ATTACH:
            return await self.attach(svc, r, step)
        if op == OP_SHIFT:
            return await self.shift(svc, r, step["pct"], wave_of(r, step))
        if op in WAITS:
            return await self.wait(svc, r, step)
        if op == OP_RETIRE:
            return await self.retire(svc, decision["retire"])
        if op == OP_APPROVE:
            return await approve.wait(self.ctx, self.journal, r, step, decision)
        raise StepFailed(f"unknown step {op!r}")

    async def _interrupted(self, rid: str) -> dict[str, Any] | None:
        """``{"interrupted": state}`` when an operator paused or aborted the rollout meanwhile."""
        cur = await self.journal.load(rid)
        return {"interrupted": cur["state"]} if cur["state"] != RUNNING else None

    async def launch(self, svc: Service, r: Rollout, step: Step) -> dict[str, Any]:
        slots = [(p, region) for p, region, count in step_targets(svc, r, step)
                 for _ in range(count)]
        want: dict[tuple[str, str], int] = {}
        for s in step["slots"]:
            want[slots[s]] = want.get(slots[s], 0) + 1
        launched = []
        for (provider, region), count in want.items():
            image_id = r["params"]["artifacts"][f"{provider}/{region}"]
            req = LaunchRequest(
                region=region, image_id=image_id, count=count,
                tags={TAG_SERVICE: svc.name, TAG_ROLLOUT: r["id"], TAG_SLOT: slot_of(step),
                      TAG_DIGEST: r["digest"]},
                client_token=f"{r['id']}-{slot_of(step)}-{provider}-{region}", size=svc.size,
                settings=dict(svc.settings.get("launch", {})))
            try:
                got = await self.ctx.provider(provider).launch(req)
            except NotLeader:
                raise  # a deposed leader stops; it does not fail the rollout
            except ImmError as e:
                raise StepFailed(f"launch on {provider}/{region} failed: {e.message}") from None
            launched += [i.id for i in got]
        return {"instances": launched}

    async def attach(self, svc: Service, r: Rollout, step: Step) -> dict[str, Any]:
        """Add the batch's instances to the route at weight 0 and wait for their health."""
        new = [i for i in await self.fleet.instances(svc, r["id"])
               if i.tags.get(TAG_SLOT) == slot_of(step)]
        routed = self.fleet.router(svc)
        if routed is None:
            return {"instances": [i.id for i in new]}
        router, route = routed
        present = {b.name for b in await router.backends(route)}
        for i in new:
            if i.id not in present:
                if not i.address:
                    raise StepFailed(f"instance {i.id} has no address the router can reach")
                await router.add(route, i.id, i.address)
        ids = {i.id for i in new}
        if router.checks_health:
            stop = await self.await_health(r["id"], router, route, sorted(ids),
                                           svc.health_timeout_s)
            if stop:
                return stop
        await self.gate(svc, r, step, new)
        if step.get("first", step["batch"] == 0):  # the first batch (of the wave)
            stop = await self.analysis.run(svc, r, step["name"], "before-traffic",
                                           wave_of(r, step))
            if stop:
                return stop
        return {"instances": sorted(ids), "healthy": True}

    def wake(self, rid: str) -> asyncio.Event:
        return self.wakes.setdefault(rid, asyncio.Event())

    async def await_health(self, rid: str, router: RouterHandle, route: str, ids: list[str],
                           timeout_s: float) -> dict[str, Any] | None:
        """Wait until every one of ``ids`` passes the route's health check: None then, or
        ``{"interrupted": state}`` as soon as an operator pauses or aborts the rollout.

        The router says the moment the check passes (``wait_health``); a verb wakes the wait
        through the engine's wake-up, so neither waits for a poll.
        """
        wake = self.wake(rid)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                health = await router.wait_health(
                    route, ids, max(0.0, deadline - time.monotonic()), wake)
            except HealthTimeout as e:
                bad = e.detail.get("unhealthy") or ids
                raise StepFailed(
                    f"{len(bad)} of {len(ids)} new instance(s) did not pass the health check of "
                    f"route {route} within {timeout_s:g}s: {', '.join(sorted(bad))}") from None
            if all(health.get(n) is True for n in ids):
                return None
            # woken: cleared before the state is read, so a verb landing after the read
            # ends the next wait at once (one set before this step began ends the first)
            wake.clear()
            stop = await self._interrupted(rid)
            if stop:
                return stop

    async def gate(self, svc: Service, r: Rollout, step: Step, instances: list[Instance]) -> None:
        """Ask the ``imm_health_gate`` plugins; any refusal fails the step."""
        view = {"id": r["id"], "service": svc.name, "image": r["digest"],
                "strategy": r["strategy"]}
        # A gate that hangs (an analysis query that never returns) fails like one that says no:
        # the rollout never waits past its health timeout.
        try:
            async with asyncio.timeout(svc.health_timeout_s):
                refusals = await self.ctx.plugins.health_gate(
                    view, {"name": step["name"], "op": step["op"]},
                    [i.to_dict() for i in instances])
        except TimeoutError:
            raise StepFailed(f"health gate at {step['name']} gave no verdict within the "
                             f"service's health_timeout_s ({svc.health_timeout_s:g}s)") from None
        if refusals:
            raise StepFailed(f"health gate at {step['name']} failed: "
                             + "; ".join(str(x) for x in refusals))

    async def shift(self, svc: Service, r: Rollout, pct: int | str,
                    wave: dict[str, Any] | None = None) -> dict[str, Any]:
        """Set the weights; in a wave, only the backends of the wave's targets are touched."""
        routed = self.fleet.router(svc)
        if routed is None:
            return {}
        router, route = routed
        backends = await router.backends(route)
        if wave is not None:
            keys = wave_keys(wave)
            where = {i.id: in_wave(i, keys) for i in await self.fleet.instances(svc)}
            backends = [b for b in backends if where.get(b.name)]
        mine = {i.id for i in await self.fleet.instances(svc, r["id"])}
        new = [b.name for b in backends if b.name in mine]
        old = [b.name for b in backends if b.name not in mine and b.state != "maint"]
        if wave is not None:
            total = 100 * sum(int(t["count"]) for t in wave["targets"])
            w = wave_weights(pct, new, old, total)
        else:
            w = {n: 100 for n in new} if pct == "even" else weights(int(pct), new, old)
        try:
            await router.set_weights(route, w)
        except NotLeader:
            raise  # a deposed leader stops; it does not fail the rollout
        except ImmError as e:
            raise StepFailed(f"setting weights on route {route} failed: {e.message}") from None
        return {"weights": w}

    async def wait(self, svc: Service, r: Rollout, step: Step) -> dict[str, Any]:
        """Wait the step's seconds (promote cuts it short); a ``pause`` then gates again."""
        deadline = time.monotonic() + float(step.get("seconds", 0))
        wake = self.wake(r["id"])
        while time.monotonic() < deadline:
            wake.clear()  # before the state is read: a verb landing after the read wakes us
            cur = await self.journal.load(r["id"])
            if cur["state"] != RUNNING:
                return {"interrupted": cur["state"]}  # paused or aborted: the wait is not done
            if cur["params"].get("promote"):
                break
            self.analysis.check_background(r["id"])
            # a verb (pause, abort, promote) ends the nap at once; the background analysis
            # is looked at again every poll_s
            left = deadline - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(self.ctx.timings.poll_s, left))):
                    await wake.wait()
        if step["op"] in (OP_PAUSE, OP_WAVE):
            wave = wave_of(r, step)
            keys = wave_keys(wave) if wave else None
            mine = [i for i in await self.fleet.instances(svc, r["id"]) if in_wave(i, keys)]
            routed = self.fleet.router(svc)
            if routed is not None and routed[0].checks_health:
                health = await routed[0].health(routed[1])
                sick = [i.id for i in mine if health.get(i.id) is not True]
                if sick:
                    raise StepFailed(f"new instance(s) unhealthy after {step['name']}: "
                                     + ", ".join(sick))
            await self.gate(svc, r, step, mine)
        when = "each-wave" if step["op"] == OP_WAVE else "each-step"
        stop = await self.analysis.run(svc, r, step["name"], when, wave_of(r, step))
        return stop or {}

    async def terminate(self, items: list[dict[str, str]]) -> None:
        by_provider: dict[str, list[str]] = {}
        for it in items:
            by_provider.setdefault(it["provider"], []).append(it["id"])
        for provider, ids in by_provider.items():
            await self.ctx.provider(provider).terminate(ids)

    async def retire(self, svc: Service, items: list[dict[str, str]]) -> dict[str, Any]:
        """Drain, remove from the route and terminate ``items``; never the last healthy one."""
        routed = self.fleet.router(svc)
        ids = {it["id"] for it in items}
        if routed is not None and ids:
            router, route = routed
            backends = await router.backends(route)
            serving = [b for b in backends if b.name not in ids and b.weight > 0
                       and (b.healthy or (b.healthy is None and not router.checks_health))]
            if not serving:
                raise StepFailed(f"refusing to retire {len(ids)} instance(s): route {route} would "
                                 "be left without a healthy backend")
            present = {b.name for b in backends}
            for name in sorted(ids & present):
                await router.drain(route, name)
            await self.remove(router, route, sorted(ids & present), items)
        else:
            await self.terminate(items)
        return {"retired": sorted(ids)}

    async def remove(self, router: RouterHandle, route: str, names: list[str],
                     items: list[dict[str, str]]) -> None:
        """Remove drained backends, then terminate the instances.

        A router may refuse to delete a backend whose sessions outlived the drain timeout (it
        stays in maintenance, taking no traffic); terminating the instance ends those sessions,
        so the removal is tried again afterwards.
        """
        stuck = []
        for name in names:
            try:
                await router.remove(route, name)
            except NotLeader:
                raise  # a deposed leader stops; it does not fail the rollout
            except ImmError as e:
                log.warning("route %s: %s; retrying after terminating it", route, e.message)
                stuck.append(name)
        await self.terminate(items)
        for name in stuck:
            await router.remove(route, name)
