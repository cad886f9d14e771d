"""/v1 routes that take things down on purpose: a whole service, or one instance."""

from __future__ import annotations

from aiohttp import web

from ..rollout import teardown
from .http import body, field, json_response
from .routes import Route, actor, d

STR = {"type": "string"}


async def services_down(request: web.Request) -> web.Response:
    data = await body(request)
    result = await teardown.service_down(d(request).engine, actor(request),
                                         request.match_info["name"], field(data, "reason", str))
    return json_response(result, status=201)


async def instances_terminate(request: web.Request) -> web.Response:
    data = await body(request)
    result = await teardown.terminate_instance(
        d(request).engine, actor(request), request.match_info["id"], field(data, "provider", str),
        field(data, "reason", str))
    return json_response(result, status=201)


ROUTES = [
    Route("POST", "/v1/services/{name}/down", services_down,
          "Take a service down: drain its route, terminate every instance, record it",
          tag="services", query={"name": {"in": "path"}},
          body={"type": "object", "properties": {"reason": STR}}),
    Route("POST", "/v1/instances/{id}/terminate", instances_terminate,
          "Terminate one instance (refused while an active rollout owns it), recorded",
          tag="instances", query={"id": {"in": "path"}},
          body={"type": "object", "properties": {"provider": STR, "reason": STR}}),
]
