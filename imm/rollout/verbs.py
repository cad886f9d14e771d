"""The operator verbs: start, pause, resume, promote, abort, undo, status, list.

A verb only writes its decision to the journal; the engine's run loop acts on it (``kick``
wakes the rollout's task, or starts one).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..context import Context
from ..errors import BadRequest, Conflict, PolicyRefused
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT
from . import policy
from .fleet import Fleet
from .journal import Journal
from .plan import make_plan
from .services import Service, target_key
from .states import (
    ABORT,
    ANALYSIS,
    BEGIN,
    DONE,
    FAILED,
    PAUSE,
    PAUSED,
    PROMOTE,
    RESUME,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    STRATEGIES,
    TERMINAL,
    VERBS,
)

_MOVES = {PAUSE: (RUNNING, PAUSED), RESUME: (PAUSED, RUNNING)}
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


log = logging.getLogger("imm.rollout")

class Verbs:
    def __init__(self, ctx: Context, journal: Journal, fleet: Fleet,
                 kick: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.journal = journal
        self.fleet = fleet
        self.kick = kick

    async def start(self, actor: str, service_name: str, ref: str, strategy: str | None = None,
                    undo_of: str | None = None) -> dict[str, Any]:
        svc = self.fleet.service(service_name)
        strategy = strategy or svc.strategy
        if strategy not in STRATEGIES:
            raise BadRequest(f"strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        ctx, cat = self.ctx, self.ctx.catalog
        digest = await ctx.store.read(cat.resolve, ref)
        checked = await ctx.store.read(policy.check, cat, ctx.keyring, svc, digest)
        image = await ctx.store.read(cat.show, digest)
        rid = f"{svc.name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
        refusals = await ctx.plugins.policy_check(
            image, svc.to_dict(), {"id": rid, "strategy": strategy, "actor": actor})
        if refusals:
            raise policy.refuse("plugin", "; ".join(str(x) for x in refusals), image=digest,
                                plugins=[x.plugin for x in refusals])
        counts: dict[str, int] = {}
        for i in await self.fleet.instances(svc):
            if i.tags.get(TAG_DIGEST):
                counts[i.tags[TAG_DIGEST]] = counts.get(i.tags[TAG_DIGEST], 0) + 1
        previous = max(counts, key=lambda k: counts[k]) if counts else None
        plan = make_plan(svc, strategy)
        params = {"plan": plan, "artifacts": checked["artifacts"],
                  "image": image["name"] + "@" + image["version"], "undo_of": undo_of,
                  "promote": False}
        if svc.waves:
            params["waves"] = [w.to_param(n) for n, w in enumerate(svc.waves, 1)]
        await self.journal.create(rid, svc.name, strategy, digest, previous, params, actor, {
            "image": digest, "previous": previous, "strategy": strategy,
            "plan": [s["name"] for s in plan], "undo_of": undo_of,
            # the signed record names each wave's targets (canonical JSON has no floats)
            **({"waves": [[target_key(t.provider, t.region) for t in w.targets]
                          for w in svc.waves]} if svc.waves else {})})
        log.info("rollout %s of %s started by %s: %s (%s), %s, %d steps", rid, svc.name, actor,
                 params["image"], digest[:19], strategy, len(plan))
        self.kick(rid)
        return await self.status(rid)

    async def set_state(self, actor: str, rid: str, verb: str) -> dict[str, Any]:
        """pause, resume, promote or abort."""
        if verb not in VERBS:
            raise BadRequest(f"unknown rollout verb {verb!r}; use {', '.join(VERBS)}")
        r = await self.journal.load(rid)
        state = r["state"]
        if state in TERMINAL:
            raise Conflict(f"rollout {rid} is already {state}; nothing to {verb}")
        if verb in _MOVES:
            want, to = _MOVES[verb]
            if state != want:
                raise Conflict(f"rollout {rid} is {state}; only a {want} rollout can be {verb}d")
            await self.journal.record(rid, verb, verb, {}, actor, state=to)
        elif verb == PROMOTE:
            if state not in (RUNNING, PAUSED):
                raise Conflict(f"rollout {rid} is {state}; only a running rollout can be promoted")
            await self.journal.promote(rid, actor)
        else:  # ABORT
            if state == ROLLING_BACK:
                raise Conflict(f"rollout {rid} is already rolling back")
            await self.journal.record(rid, ABORT, ABORT, {}, actor, state=ROLLING_BACK,
                                      error=f"aborted by {actor}")
        self.kick(rid)
        return await self.status(rid)

    async def undo(self, actor: str, service_name: str) -> dict[str, Any]:
        """Start a rollout back to the image before the service's last completed rollout."""
        svc = self.fleet.service(service_name)
        last = await self.journal.last_completed(svc.name)
        if last is None or not last["previous_digest"]:
            raise Conflict(f"service {svc.name} has no completed rollout with a previous image "
                           "to go back to")
        try:
            return await self.start(actor, svc.name, last["previous_digest"], undo_of=last["id"])
        except PolicyRefused as e:
            raise PolicyRefused(f"undo of {last['id']} to {last['previous_digest'][:19]}: "
                                f"{e.message}", detail=e.detail) from None

    async def status(self, rid: str) -> dict[str, Any]:
        r = await self.journal.load(rid)
        done = {j["step"] for j in r["journal"] if j["action"] == DONE}
        begun = {j["step"] for j in r["journal"] if j["action"] == BEGIN}
        plan = [{**s, "status": "done" if s["name"] in done else
                 "running" if s["name"] in begun else "pending"} for s in r["params"]["plan"]]
        svc = self.fleet.services.get(r["service"])
        instances: list[dict[str, Any]] = []
        instances_error: str | None = None
        if svc is not None and r["state"] not in TERMINAL:
            live, backends, instances_error = await self.fleet.live_view(svc)
            for i in live:
                b = backends.get(i.id)
                instances.append({"id": i.id, "digest": i.tags.get(TAG_DIGEST),
                                  "new": i.tags.get(TAG_ROLLOUT) == rid,
                                  "weight": b.weight if b else None,
                                  "healthy": b.healthy if b else None,
                                  "state": b.state if b else None})
        created = datetime.strptime(r["created_at"], _STAMP).replace(tzinfo=UTC)
        end = (datetime.strptime(r["finished_at"], _STAMP).replace(tzinfo=UTC)
               if r["finished_at"] else datetime.now(UTC))
        runs = [j for j in r["journal"] if j["action"] == ANALYSIS]
        return {
            "analysis": _analysis_row(runs[-1]) if runs else None,
            "id": rid, "service": r["service"], "strategy": r["strategy"], "state": r["state"],
            "image": r["digest"], "image_ref": r["params"].get("image"),
            "previous": r["previous_digest"], "step": r["step"], "error": r["error"],
            "actor": r["actor"], "created_at": r["created_at"], "finished_at": r["finished_at"],
            "elapsed_s": int((end - created).total_seconds()), "plan": plan,
            "instances": instances, "instances_error": instances_error, "journal": r["journal"],
            "waves": waves_status(r, svc, done, begun),
        }

    async def analyses(self, rid: str) -> list[dict[str, Any]]:
        """Every analysis run of the rollout, oldest first, with its measurements."""
        r = await self.journal.load(rid)
        return [_analysis_row(j) for j in r["journal"] if j["action"] == ANALYSIS]

    async def list(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.journal.list(service, limit)


def waves_status(r: dict[str, Any], svc: Service | None, done: set[str],
                 begun: set[str]) -> list[dict[str, Any]]:
    """Each wave's targets and status: pending, running, done, rolling-back or rolled-back
    (a wave that had begun when the rollout failed; later waves stay pending, untouched).

    A service without waves shows one wave of all its targets."""
    waves = r["params"].get("waves") or [
        {"wave": 1, "bake_s": 0, "targets": [] if svc is None else [
            {"provider": t.provider, "region": t.region, "count": t.count}
            for t in svc.targets]}]
    out = []
    for w in waves:
        names = [s["name"] for s in r["params"]["plan"] if s.get("wave", 1) == w["wave"]]
        started = any(n in begun or n in done for n in names)
        if started and r["state"] in (ROLLING_BACK, ROLLED_BACK, FAILED):
            status = r["state"]  # its new instances are being (or were) removed
        elif names and all(n in done for n in names):
            status = "done"
        elif started:
            status = "running"
        else:
            status = "pending"
        out.append({"wave": w["wave"], "status": status, "bake_s": w["bake_s"],
                    "targets": [target_key(t["provider"], t["region"]) for t in w["targets"]],
                    "count": sum(int(t["count"]) for t in w["targets"])})
    return out


def _analysis_row(entry: dict[str, Any]) -> dict[str, Any]:
    """An ``analysis`` journal entry as status shows it: where it ran and its ledger index."""
    return {**entry["detail"], "step": entry["step"], "seq": entry["seq"], "at": entry["at"],
            "ledger_index": entry["ledger_index"]}
