"""/v1 routes for operators who sign, protected changes and their approvals."""

from __future__ import annotations

from aiohttp import web

from ..catalog import operators
from .http import body, field, json_response
from .routes import Route, actor, d

STR = {"type": "string"}


async def operators_list(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response({"operators": await dm.db.read(operators.listing)})


async def operators_add(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    result = await dm.db.write(
        operators.add, dm.catalog, actor(request), field(data, "name", str, required=True),
        field(data, "public_key", str, required=True),
        field(data, "source", str, default="SSH public key"))
    return json_response(result, status=201)


async def operators_show(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response(await dm.db.read(operators.get, request.match_info["name"]))


async def operators_remove(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.write(operators.remove, dm.catalog, actor(request),
                               request.match_info["name"])
    return json_response(result)


NAME = {"name": {"in": "path", "description": "operator name"}}
ROUTES = [
    Route("GET", "/v1/operators", operators_list, "Operators and their SSH key fingerprints",
          tag="operators"),
    Route("POST", "/v1/operators", operators_add,
          "Register an operator's SSH public key (a signed record)", tag="operators",
          body={"type": "object", "required": ["name", "public_key"], "properties": {
              "name": STR, "public_key": STR, "source": STR}}),
    Route("GET", "/v1/operators/{name}", operators_show, "One operator", tag="operators",
          query=NAME),
    Route("DELETE", "/v1/operators/{name}", operators_remove,
          "Remove an operator (a signed record; past approvals keep verifying)",
          tag="operators", query=NAME),
]
