"""Taking things down on purpose: a whole service, or one instance.

Instances outlive immd by design, so removing them is an explicit, recorded act. Like a rollout
step, the decision is signed into the ledger (a ``fleet`` record naming the actor and every
instance) before anything is drained or terminated; a retry after a failure finds what is left
by the same tags and finishes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import Ambiguous, Conflict, NotFound
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, Instance
from ..store import Connection, now, query_one
from .journal import active_rollout
from .states import ACTIVE, DOWN, OPERATOR_TERMINATE

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("imm.rollout")
_ACTIVE_MARKS = ",".join("?" * len(ACTIVE))


def _described(i: Instance) -> dict[str, Any]:
    return {"id": i.id, "provider": i.provider, "region": i.region,
            "digest": i.tags.get(TAG_DIGEST), "service": i.tags.get(TAG_SERVICE)}


async def _record(engine: Engine, action: str, actor: str, **detail: Any) -> int:
    """Sign the decision into the ledger before acting on it; the leaf index."""
    cat = engine.ctx.catalog

    def write(conn: Connection) -> int:
        body = {"type": "fleet", "action": action, **detail, "actor": actor, "time": now()}
        _env, idx, _text = cat.append(conn, "fleet", body)
        cat.checkpoint(conn)
        return idx

    return int(await engine.ctx.store.write(write))


async def _drain_and_remove(engine: Engine, route_of: Any, instances: list[Instance]) -> None:
    """Drain the instances' backends, remove them from the route, terminate the instances."""
    items = [{"id": i.id, "provider": i.provider} for i in instances]
    if route_of is None:
        await engine.steps.terminate(items)
        return
    router, route = route_of
    present = {b.name for b in await router.backends(route)}
    names = sorted(present & {i.id for i in instances})
    for n in names:
        await router.drain(route, n)
    await engine.steps.remove(router, route, names, items)


async def service_down(engine: Engine, actor: str, name: str,
                       reason: str | None) -> dict[str, Any]:
    """Drain the service's route, terminate every instance, record it."""
    svc = engine.service(name)
    active = await engine.ctx.store.read(active_rollout, svc.name)
    if active:
        raise Conflict(f"rollout {active['id']} of service {svc.name} is {active['state']}; "
                       f"abort it first ('immctl rollout abort {svc.name}'), then take the "
                       "service down", detail={"active": active["id"]})
    await engine.fleet.ready(svc)  # before anything is recorded: its route must answer
    instances = await engine.service_instances(svc)
    idx = await _record(engine, "service-down", actor, service=svc.name, reason=reason,
                        instances=[_described(i) for i in instances])
    last = await engine.journal.list(svc.name, 1)
    if last:  # the reconciler heals no service whose latest rollout has a later "down" entry
        await engine.journal.record(last[0]["id"], DOWN, DOWN,
                                    {"reason": reason, "ledger_index": idx}, actor=actor)
    if instances:
        await _drain_and_remove(engine, engine.fleet.router(svc), instances)
    ids = sorted(i.id for i in instances)
    log.info("service %s down by %s: terminated %d instance(s)%s", svc.name, actor, len(ids),
             f" ({reason})" if reason else "")
    return {"service": svc.name, "terminated": ids, "ledger_index": idx, "reason": reason}


async def terminate_instance(engine: Engine, actor: str, instance_id: str,
                             provider: str | None, reason: str | None) -> dict[str, Any]:
    """Terminate one instance (drained from its service's route first), record it. Refused
    while an active rollout owns the instance or its service."""
    ctx = engine.ctx
    if provider is not None:
        ctx.provider(provider)  # NotFound naming the configured ones
    names = [provider] if provider else sorted(ctx.providers)
    found: list[Instance] = []
    for p in names:
        found += [i for i in await ctx.provider(p).list_instances(None)
                  if i.id == instance_id and i.state != "terminated"]
    if not found:
        raise NotFound(f"no live instance {instance_id!r} in "
                       f"{'provider ' + provider if provider else 'any provider'}; "
                       "'immctl instance list' shows them")
    if len(found) > 1:
        raise Ambiguous(f"instance id {instance_id!r} exists in providers "
                        f"{', '.join(i.provider for i in found)}; pass --provider",
                        detail={"candidates": [i.provider for i in found]})
    inst = found[0]
    service = inst.tags.get(TAG_SERVICE)
    owner = inst.tags.get(TAG_ROLLOUT)

    def owning(conn: Connection) -> dict[str, Any] | None:
        row = active_rollout(conn, service) if service else None
        if row is None and owner:
            row = query_one(conn, f"SELECT id, state FROM rollouts WHERE id=? "  # noqa: S608
                                  f"AND state IN ({_ACTIVE_MARKS})", (owner, *ACTIVE))
        return row

    active = await ctx.store.read(owning)
    if active:
        raise Conflict(f"instance {instance_id} belongs to service {service or '-'}, whose "
                       f"rollout {active['id']} is {active['state']}: the rollout owns its "
                       f"instances; wait for it or abort it ('immctl rollout abort "
                       f"{active['id']}')", detail={"active": active["id"]})
    svc = engine.services.get(service) if service else None
    if svc is not None:
        await engine.fleet.ready(svc)  # before anything is recorded: its route must answer
    idx = await _record(engine, "instance-terminate", actor, reason=reason,
                        instance=_described(inst))
    last = await engine.journal.list(svc.name, 1) if svc is not None else []
    if last:  # the reconciler keeps the service that many instances fewer there
        await engine.journal.record(last[0]["id"], OPERATOR_TERMINATE, OPERATOR_TERMINATE,
                                    {"instance": inst.id, "provider": inst.provider,
                                     "region": inst.region, "ledger_index": idx}, actor=actor)
    await _drain_and_remove(engine, engine.fleet.router(svc) if svc is not None else None,
                            [inst])
    log.info("instance %s (%s/%s%s) terminated by %s%s", inst.id, inst.provider, inst.region,
             f", service {service}" if service else "", actor, f" ({reason})" if reason else "")
    return {**_described(inst), "ledger_index": idx, "reason": reason}
