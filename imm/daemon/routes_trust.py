"""/v1 routes for operators who sign, protected changes and their approvals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..catalog import approvals, lifecycle, operators, tiles
from ..errors import BadRequest
from .http import body, field, json_response
from .routes import Route, actor, d
from .trust import TRUST


async def trust_context(app: web.Application) -> AsyncIterator[None]:
    """A bad [protect] or [trust] block fails start-up, naming it; heads and the checkpoint
    are kept fresh while the app runs."""
    await app[TRUST].check_config()
    await app[TRUST].resume()  # the engine has started (Daemon.lifecycle runs before this)
    task = asyncio.create_task(app[TRUST].keep_fresh(), name="keep-fresh")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def channels_head(request: web.Request) -> web.Response:
    return json_response(await request.app[TRUST].channel_head(request.match_info["name"]))

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


async def images_lifecycle_set(request: web.Request) -> web.Response:
    data = await body(request)
    action = request.match_info["action"]
    if action not in lifecycle.ACTIONS:
        raise BadRequest(f"unknown lifecycle action {action!r}; use deprecate, expire or revoke")
    result = await request.app[TRUST].lifecycle(
        actor(request), request.match_info["ref"], action, field(data, "at", str),
        field(data, "reason", str, default=""), field(data, "force", bool, default=False))
    return json_response(result, status=201)


async def images_lifecycle(request: web.Request) -> web.Response:
    dm = d(request)

    def read(conn: Any) -> dict[str, Any]:
        digest = dm.catalog.resolve(conn, request.match_info["ref"])
        return {"digest": digest, "status": lifecycle.status(conn, digest),
                "records": lifecycle.listing(conn, digest)}

    return json_response(await dm.db.read(read))


# -- the ledger as C2SP tlog tiles ----------------------------------------------------------------

async def tlog_checkpoint(request: web.Request) -> web.Response:
    dm = d(request)
    head = await dm.db.read(dm.catalog.head)
    return web.Response(text=head["checkpoint"] or "", content_type="text/plain",
                        charset="utf-8", headers={"Cache-Control": "no-cache, max-age=2"})


async def tlog_tile(request: web.Request) -> web.Response:
    dm = d(request)
    level, index, width = tiles.parse_path(request.match_info["tail"])
    if level is None:
        data = await dm.db.read(tiles.entries, index, width)
    else:
        data = await dm.db.read(tiles.tile, level, index, width)
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


def add_tile_routes(app: web.Application, spec: dict[str, Any]) -> None:
    """Serve ``/checkpoint`` and ``/tile/...`` (outside /v1: the paths tile clients expect)
    and describe them in the OpenAPI document."""
    app.router.add_get("/checkpoint", tlog_checkpoint)
    app.router.add_get("/tile/{tail:.+}", tlog_tile)
    err = {"description": "Error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    spec["paths"]["/checkpoint"] = {"get": {
        "summary": "The signed checkpoint (C2SP tlog-tiles)", "operationId": "get_tlog_checkpoint",
        "tags": ["ledger"], "responses": {"200": {"description": "OK", "content": {
            "text/plain": {"schema": {"type": "string"}}}}, "default": err}}}
    spec["paths"]["/tile/{tail}"] = {"get": {
        "summary": "A Merkle tile <L>/<N>[.p/<W>] or entry bundle entries/<N>[.p/<W>] "
                   "(C2SP tlog-tiles)", "operationId": "get_tlog_tile", "tags": ["ledger"],
        "parameters": [{"name": "tail", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "OK", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}, "default": err}}}


async def witness_info(request: web.Request) -> web.Response:
    return json_response(request.app[TRUST].info())


async def witness_add_checkpoint(request: web.Request) -> web.Response:
    data = await body(request)
    note = field(data, "checkpoint", str, required=True)
    old = field(data, "old_size", int, required=True)
    raw = field(data, "proof", list, default=[])
    try:
        proof = [bytes.fromhex(h) for h in raw]
    except (TypeError, ValueError):
        raise BadRequest("field 'proof' must be a list of hex hashes") from None
    if old < 0 or any(len(h) != 32 for h in proof):
        raise BadRequest("old_size must be ≥ 0 and each proof hash 32 bytes")
    return json_response(await request.app[TRUST].add_checkpoint(note, old, proof))


async def images_attest(request: web.Request) -> web.Response:
    data = await body(request)
    if "predicate" not in data:
        raise BadRequest("field 'predicate' is required (a JSON object)")
    result = await request.app[TRUST].attest(
        actor(request), request.match_info["ref"],
        field(data, "predicate_type", str, required=True), data["predicate"])
    return json_response(result, status=201 if result["created"] else 200)


async def images_attestations(request: web.Request) -> web.Response:
    return json_response(await request.app[TRUST].attestations(request.match_info["ref"]))


async def attestations_import(request: web.Request) -> web.Response:
    data = await body(request)
    result = await request.app[TRUST].import_attestation(
        actor(request), field(data, "envelope", dict, required=True))
    return json_response(result, status=201 if result["created"] else 200)


NAME = {"name": {"in": "path", "description": "operator name"}}
REF = {"ref": {"in": "path", "description": "digest, digest prefix, name@version or "
                                            "channel:SERVICE/STAGE (URL-encoded)"}}
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
    Route("GET", "/v1/channels/{name}/head", channels_head,
          "A channel's head as a signed statement with issued and expires times",
          tag="channels", query={"name": {"in": "path"}}),
    Route("POST", "/v1/images/{ref}/lifecycle/{action}", images_lifecycle_set,
          "Deprecate, expire (at) or schedule the revocation (at) of an image", tag="images",
          query={**REF, "action": {"in": "path", "schema": {"enum": list(lifecycle.ACTIONS)}}},
          body={"type": "object", "properties": {"at": STR, "reason": STR,
                                                 "force": {"type": "boolean"}}}),
    Route("GET", "/v1/images/{ref}/lifecycle", images_lifecycle,
          "An image's lifecycle: deprecation, expiry, scheduled revocation", tag="images",
          query=REF),
    Route("GET", "/v1/witness", witness_info,
          "This log's verifier key, this witness's cosigner key, and who it witnesses",
          tag="ledger"),
    Route("POST", "/v1/witness/add-checkpoint", witness_add_checkpoint,
          "Witness: cosign another log's checkpoint if consistent with the last one cosigned "
          "(C2SP tlog-cosignature v1)", tag="ledger",
          body={"type": "object", "required": ["checkpoint", "old_size"], "properties": {
              "checkpoint": STR, "old_size": {"type": "integer", "minimum": 0},
              "proof": {"type": "array", "items": STR}}}),
    Route("POST", "/v1/images/{ref}/attestations", images_attest,
          "Attest: an in-toto Statement v1 about the image, in a DSSE envelope", tag="images",
          query=REF, body={"type": "object", "required": ["predicate_type", "predicate"],
                           "properties": {"predicate_type": STR, "predicate": {"type": "object"}}}),
    Route("GET", "/v1/images/{ref}/attestations", images_attestations,
          "An image's attestations, each re-verified", tag="images", query=REF),
    Route("POST", "/v1/attestations/import", attestations_import,
          "Import an in-toto DSSE envelope signed by a [trust.builders] key", tag="images",
          body={"type": "object", "required": ["envelope"],
                "properties": {"envelope": {"type": "object"}}}),
]
