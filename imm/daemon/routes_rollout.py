"""/v1 routes for rollouts, services and instances."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ..catalog import lifecycle
from ..errors import BadRequest
from ..rollout import reconcile
from ..rollout.states import STRATEGIES, TERMINAL, VERBS
from .http import body, field, json_response, query_int
from .routes import Route, actor, d
from .trust import TRUST

STR = {"type": "string"}


async def rollouts_start(request: web.Request) -> web.Response:
    data = await body(request)
    service, image = field(data, "service", str, required=True), field(data, "image", str,
                                                                       required=True)
    strategy = field(data, "strategy", str)
    pending = await request.app[TRUST].guard_rollout(actor(request), service, image, strategy)
    if pending is not None:
        return json_response(pending, status=202)
    result = await d(request).engine.start(actor(request), service, image, strategy)
    result["warnings"] = (await d(request).db.read(lifecycle.status, result["image"]))["warnings"]
    return json_response(result, status=201)


async def rollouts_list(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", default=50, minimum=1, maximum=1000)
    rows = await d(request).engine.list(request.query.get("service") or None, limit or 50)
    return json_response({"rollouts": rows})


async def rollouts_show(request: web.Request) -> web.Response:
    return json_response(await d(request).engine.status(request.match_info["id"]))


async def rollouts_analysis(request: web.Request) -> web.Response:
    return json_response({"analysis": await d(request).engine.analyses(request.match_info["id"])})


WATCH_EVERY_S = 1.0  # a line at least this often: live counts and countdowns move between steps


async def rollouts_watch(request: web.Request) -> web.StreamResponse:
    """The rollout as it goes: one JSON object per line (chunked) at once when its journal gets
    an entry (the engine wakes this), and at least every second in between, because what a
    watcher shows (healthy instances, traffic, a pause's countdown) moves without journal
    entries, and a long pause or approval must not look like a dead connection."""
    engine = d(request).engine
    rid = request.match_info["id"]

    async def next_entry() -> asyncio.Future[bool]:
        """A wait for the rollout's next journal entry, registered before the status it
        follows is read: an entry written while that is read still wakes the stream."""
        waiter = asyncio.ensure_future(engine.changed(rid, WATCH_EVERY_S))
        await asyncio.sleep(0)
        return waiter

    waiter = await next_entry()
    try:
        status = await engine.status(rid)  # an unknown id is a 404 before the stream starts
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(json.dumps(status, ensure_ascii=False, default=str).encode()
                                 + b"\n")
                if status["state"] in TERMINAL:
                    break
                await waiter
                waiter = await next_entry()
                status = await engine.status(rid)
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the watcher went away (Ctrl-C): the rollout goes on, nobody is left to tell
        return resp
    finally:
        waiter.cancel()


async def rollouts_verb(request: web.Request) -> web.Response:
    await body(request)
    verb = request.match_info["verb"]
    if verb not in VERBS:
        raise BadRequest(f"unknown rollout verb {verb!r}; use {', '.join(VERBS[:-1])} or "
                         f"{VERBS[-1]}")
    return json_response(await d(request).engine.set_state(actor(request),
                                                           request.match_info["id"], verb))


async def services_undo(request: web.Request) -> web.Response:
    await body(request)
    pending = await request.app[TRUST].guard_undo(actor(request), request.match_info["name"])
    if pending is not None:
        return json_response(pending, status=202)
    return json_response(await d(request).engine.undo(actor(request),
                                                      request.match_info["name"]), status=201)


async def services_list(request: web.Request) -> web.Response:
    eng = d(request).engine
    return json_response({"services": [eng.fleet.describe(svc)
                                       for svc in eng.services.values()]})


async def services_show(request: web.Request) -> web.Response:
    eng = d(request).engine
    svc = eng.service(request.match_info["name"])
    instances = [i.to_dict() for i in await eng.service_instances(svc)]
    rollouts = await eng.list(svc.name, 5)
    heal = await d(request).context.store.read(reconcile.events, svc.name, 10)
    return json_response({**eng.fleet.describe(svc), "instances": instances,
                          "rollouts": rollouts, "heal": heal})


async def instances_list(request: web.Request) -> web.Response:
    flag = request.query.get("quarantined", "")
    if flag not in ("", "0", "1", "true", "false"):
        raise BadRequest(f"quarantined={flag!r}: use 1 or 0")
    if flag in ("1", "true"):
        held = await d(request).context.store.read(
            reconcile.quarantined, request.query.get("service") or None)
        return json_response({"instances": held})
    providers = d(request).context.providers
    out = []
    for name in sorted(providers):
        for i in await providers[name].list_instances(None):
            out.append(i.to_dict())
    return json_response({"instances": out})


ROUTES = [
    Route("POST", "/v1/rollouts", rollouts_start, "Start a rollout of a service to an image",
          tag="rollouts", body={"type": "object", "required": ["service", "image"],
                                "properties": {"service": STR, "image": STR, "strategy": {
                                    "enum": list(STRATEGIES)}}}),
    Route("GET", "/v1/rollouts", rollouts_list, "Recent rollouts", tag="rollouts",
          query={"service": {"schema": STR},
                 "limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 1000}}}),
    Route("GET", "/v1/rollouts/{id}", rollouts_show, "A rollout: plan, steps, waves, live instances",
          tag="rollouts", query={"id": {"in": "path"}}),
    Route("GET", "/v1/rollouts/{id}/analysis", rollouts_analysis,
          "Every analysis run of a rollout, with its measurements and ledger index",
          tag="rollouts", query={"id": {"in": "path"}}),
    Route("GET", "/v1/rollouts/{id}/watch", rollouts_watch,
          "The rollout as it changes, one JSON object per line (chunked) until it ends",
          tag="rollouts", query={"id": {"in": "path"}}),
    Route("POST", "/v1/rollouts/{id}/{verb}", rollouts_verb,
          "pause, resume, promote or abort a rollout", tag="rollouts",
          query={"id": {"in": "path"}, "verb": {"in": "path", "schema": {
              "enum": list(VERBS)}}}, body={"type": "object"}),
    Route("GET", "/v1/services", services_list, "Configured services", tag="services"),
    Route("GET", "/v1/services/{name}", services_show, "A service with its live instances",
          tag="services", query={"name": {"in": "path"}}),
    Route("POST", "/v1/services/{name}/undo", services_undo,
          "Roll a service back to the image before its last rollout", tag="services",
          query={"name": {"in": "path"}}, body={"type": "object"}),
    Route("GET", "/v1/instances", instances_list,
          "Every instance of every provider, or (quarantined=1) those the reconciler took out "
          "of traffic and keeps for inspection", tag="instances",
          query={"quarantined": {"schema": {"enum": ["0", "1", "true", "false"]}},
                 "service": {"schema": STR}}),
]
