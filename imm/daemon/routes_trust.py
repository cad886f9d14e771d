"""/v1 routes for operators who sign, protected changes and their approvals."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..catalog import approvals, operators
from .http import body, field, json_response
from .routes import Route, actor, d
from .trust import TRUST


async def trust_context(app: web.Application) -> AsyncIterator[None]:
    """A bad [protect] block fails start-up, naming it."""
    await app[TRUST].check_config()
    yield

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


async def changes_list(request: web.Request) -> web.Response:
    dm = d(request)
    everything = request.query.get("all") in ("1", "true")
    return json_response({"changes": await dm.db.read(approvals.listing, everything)})


async def changes_show(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response(await dm.db.read(approvals.show, request.match_info["id"]))


async def changes_cancel(request: web.Request) -> web.Response:
    dm = d(request)
    await body(request)
    return json_response(await dm.db.write(approvals.cancel, dm.catalog, actor(request),
                                            request.match_info["id"]))


async def changes_approve(request: web.Request) -> web.Response:
    data = await body(request)
    signature = field(data, "signature", str, required=True)
    result = await request.app[TRUST].approve(actor(request), request.match_info["id"],
                                              signature)
    return json_response(result, status=201)


NAME = {"name": {"in": "path", "description": "operator name"}}
CHANGE = {"id": {"in": "path", "description": "change id (c- and 8 hex digits)"}}
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
    Route("GET", "/v1/changes", changes_list,
          "Pending protected changes (all=1: every change)", tag="changes",
          query={"all": {"schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}}),
    Route("GET", "/v1/changes/{id}", changes_show,
          "A change: its statement to sign, approvals so far, state", tag="changes",
          query=CHANGE),
    Route("POST", "/v1/changes/{id}/approvals", changes_approve,
          "Submit an operator's SSHSIG over the change's statement", tag="changes",
          query=CHANGE, body={"type": "object", "required": ["signature"],
                              "properties": {"signature": STR}}),
    Route("POST", "/v1/changes/{id}/cancel", changes_cancel, "Cancel a pending change",
          tag="changes", query=CHANGE, body={"type": "object"}),
]
