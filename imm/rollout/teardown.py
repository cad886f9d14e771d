"""Taking things down on purpose: a whole service, or one instance.

Instances outlive immd by design, so removing them is an explicit, recorded act. Like a rollout
step, the decision is signed into the ledger (a ``fleet`` record naming the actor and every
instance) before anything is drained or terminated; a retry after a failure finds what is left
by the same tags and finishes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from ..catalog.service import now, query_one
from ..errors import Ambiguous, Conflict, NotFound
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, Instance
from .engine import ACTIVE

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("imm.rollout")


def _active_rollout(conn: sqlite3.Connection, service: str) -> dict[str, Any] | None:
    return query_one(conn, "SELECT id, state FROM rollouts WHERE service=? AND state IN (?,?,?)",
                     (service, *ACTIVE))


def _described(i: Instance) -> dict[str, Any]:
    return {"id": i.id, "provider": i.provider, "region": i.region,
            "digest": i.tags.get(TAG_DIGEST), "service": i.tags.get(TAG_SERVICE)}


async def _record(engine: Engine, action: str, actor: str, **detail: Any) -> int:
    """Sign the decision into the ledger before acting on it; the leaf index."""
    cat = engine.d.catalog

    def write(conn: sqlite3.Connection) -> int:
        body = {"type": "fleet", "action": action, **detail, "actor": actor, "time": now()}
        _env, idx, _text = cat.append(conn, "fleet", body)
        cat.checkpoint(conn)
        return idx

    return int(await engine.d.db.write(write))


async def service_down(engine: Engine, actor: str, name: str,
                       reason: str | None) -> dict[str, Any]:
    """Drain the service's route, terminate every instance, record it."""
    svc = engine.service(name)
    active = await engine.d.db.read(_active_rollout, svc.name)
    if active:
        raise Conflict(f"rollout {active['id']} of service {svc.name} is {active['state']}; "
                       f"abort it first ('immctl rollout abort {svc.name}'), then take the "
                       "service down", detail={"active": active["id"]})
    instances = await engine.service_instances(svc)
    items = [{"id": i.id, "provider": i.provider} for i in instances]
    idx = await _record(engine, "service-down", actor, service=svc.name, reason=reason,
                        instances=[_described(i) for i in instances])
    router = engine.router(svc)
    if router is not None and svc.route and items:
        present = {b.name for b in await asyncio.to_thread(router.backends, svc.route)}
        names = sorted(present & {i.id for i in instances})
        for n in names:
            await asyncio.to_thread(router.drain, svc.route, n)
        await engine._remove(router, svc.route, names, items)
    elif items:
        await engine._terminate(items)
    ids = sorted(i.id for i in instances)
    log.info("service %s down by %s: terminated %d instance(s)%s", svc.name, actor, len(ids),
             f" ({reason})" if reason else "")
    return {"service": svc.name, "terminated": ids, "ledger_index": idx, "reason": reason}


async def terminate_instance(engine: Engine, actor: str, instance_id: str,
                             provider: str | None, reason: str | None) -> dict[str, Any]:
    """Terminate one instance (drained from its service's route first), record it. Refused
    while an active rollout owns the instance or its service."""
    d = engine.d
    names = [provider] if provider else sorted(d.providers)
    if provider and provider not in d.providers:
        raise NotFound(f"no provider named {provider!r}; configured: "
                       f"{', '.join(sorted(d.providers))}")
    found: list[Instance] = []
    for p in names:
        found += [i for i in await d.provider_call(p, "list_instances", None)
                  if i.id == instance_id and i.state not in ("terminated",)]
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

    def owning(conn: sqlite3.Connection) -> dict[str, Any] | None:
        if service:
            row = _active_rollout(conn, service)
            if row:
                return row
        if owner:
            return query_one(conn, "SELECT id, state FROM rollouts WHERE id=? AND state IN "
                                   "(?,?,?)", (owner, *ACTIVE))
        return None

    active = await d.db.read(owning)
    if active:
        raise Conflict(f"instance {instance_id} belongs to service {service or '-'}, whose "
                       f"rollout {active['id']} is {active['state']}: the rollout owns its "
                       f"instances; wait for it or abort it ('immctl rollout abort "
                       f"{active['id']}')", detail={"active": active["id"]})
    idx = await _record(engine, "instance-terminate", actor, reason=reason,
                        instance=_described(inst))
    svc = engine.services.get(service) if service else None
    router = engine.router(svc) if svc is not None else None
    item = [{"id": inst.id, "provider": inst.provider}]
    if svc is not None and router is not None and svc.route:
        present = {b.name for b in await asyncio.to_thread(router.backends, svc.route)}
        names_in_route = [inst.id] if inst.id in present else []
        if names_in_route:
            await asyncio.to_thread(router.drain, svc.route, inst.id)
        await engine._remove(router, svc.route, names_in_route, item)
    else:
        await engine._terminate(item)
    log.info("instance %s (%s/%s%s) terminated by %s%s", inst.id, inst.provider, inst.region,
             f", service {service}" if service else "", actor, f" ({reason})" if reason else "")
    return {**_described(inst), "ledger_index": idx, "reason": reason}
