"""The /v1 API: one table of routes, from which the OpenAPI document is also built."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dfield
from typing import Any

from aiohttp import web

from ..catalog import lifecycle
from ..catalog.digest import Reader
from ..catalog.manifest import parse_label, parse_layer
from ..catalog.resolve import resolve_artifact
from ..errors import BadRequest
from .core import Daemon
from .http import FD_HEADER, PEER, body, field, json_response, path_int, query_int, receive_fd
from .trust import TRUST

log = logging.getLogger("imm.daemon")
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)
H = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    method: str
    path: str
    handler: H
    summary: str
    query: dict[str, dict[str, Any]] = dfield(default_factory=dict)
    body: dict[str, Any] | None = None  # JSON schema of the request body
    tag: str = "catalog"


def d(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def actor(request: web.Request) -> str:
    return str(request[PEER].actor)


def ref_of(request: web.Request) -> str:
    return request.match_info["ref"]


# -- status, keys ---------------------------------------------------------------------------

async def status(request: web.Request) -> web.Response:
    result = await d(request).status()
    peer = request[PEER]
    result["peer"] = {"user": peer.user, "uid": peer.uid, "admin": peer.admin}
    return json_response(result)


async def plugins(request: web.Request) -> web.Response:
    return json_response({"plugins": d(request).plugins.listing()})


async def keys_list(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response({"keys": await dm.db.read(dm.catalog.keys)})


async def keys_export(request: web.Request) -> web.Response:
    dm = d(request)
    keyid = request.query.get("keyid") or None
    pem = dm.keyring.export_pem(keyid)
    return json_response({"keyid": keyid or dm.keyring.keyid, "pem": pem})


async def keys_rotate(request: web.Request) -> web.Response:
    await body(request)
    result = await d(request).rotate_key(actor(request))
    return json_response(result, status=201)


# -- state ----------------------------------------------------------------------------------

async def state_backup(request: web.Request) -> web.StreamResponse:
    """Admin only (POST): the SQLite state as one consistent database file, streamed."""
    await body(request)
    path = await d(request).backup_state()
    try:
        size = path.stat().st_size
        resp = web.StreamResponse(headers={
            "Content-Disposition": 'attachment; filename="imm-state.db"',
            "Content-Length": str(size)})
        resp.content_type = "application/vnd.sqlite3"
        await resp.prepare(request)
        f = await asyncio.to_thread(open, path, "rb")
        sent = 0
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        except ConnectionResetError:
            log.info("state backup: the client went away after %d of %d bytes", sent, size)
        finally:
            await asyncio.to_thread(f.close)
        return resp
    finally:
        await asyncio.to_thread(path.unlink, True)


# -- images ---------------------------------------------------------------------------------

def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for item in value:
            if not isinstance(item, str):
                raise BadRequest(f"label {item!r} must be a K=V string")
            k, v = parse_label(item)
            if k in out:
                raise BadRequest(f"label {k!r} is given twice")
            out[k] = v
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str):
                raise BadRequest(f"label {k!r} must have a string value, got {v!r}")
            parse_label(f"{k}={v}")
        return dict(value)
    raise BadRequest("field 'labels' must be a list of K=V strings or an object")


def _layers(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("field 'layers' must be a list of ROLE=NAME@VERSION strings")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(parse_layer(item))
        elif isinstance(item, dict):
            out.append(item)
        else:
            raise BadRequest(f"layer {item!r} must be a ROLE=NAME@VERSION string")
    return out


MAX_PATH_BYTES = 4096  # PATH_MAX


def path_field(data: dict[str, Any], name: str) -> str:
    """An absolute path from a request body (NUL and surrogates are refused by ``body``)."""
    path = field(data, name, str, required=True)
    if not path.startswith("/"):
        raise BadRequest(f"path {path!r} must be absolute (immctl makes it so)")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise BadRequest(f"path {path[:60]!r}… is longer than {MAX_PATH_BYTES} bytes")
    return path


def _image_spec(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    path = path_field(data, "path")
    actions = field(data, "boot_actions", list, default=[])
    if not all(isinstance(a, str) for a in actions):
        raise BadRequest("field 'boot_actions' must be a list of strings")
    return path, {
        "name": field(data, "name", str, required=True),
        "version": field(data, "version", str, required=True),
        "layers": _layers(data.get("layers")),
        "boot_actions": actions,
        "parent": field(data, "parent", str),
        "labels": _labels(data.get("labels")),
    }


async def images_add(request: web.Request) -> web.Response:
    path, spec = _image_spec(await body(request))
    fd, reader = None, None
    if request.headers.get(FD_HEADER) == "1":
        peer = request[PEER]
        fd = await receive_fd(request)
        reader = Reader(peer.uid, peer.groups)
    result = await d(request).add_image(actor(request), path, spec, fd=fd, reader=reader)
    return json_response(result, status=201 if result["created"] else 200)


MAX_BATCH = 1000


async def images_add_batch(request: web.Request) -> web.Response:
    data = await body(request)
    items = field(data, "images", list, required=True)
    if not 1 <= len(items) <= MAX_BATCH:
        raise BadRequest(f"field 'images' holds {len(items)} images; send 1 to {MAX_BATCH} "
                         "per request (split a larger set into several)")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"images[{i}] must be an object like the body of POST /v1/images")
        try:
            specs.append(_image_spec(item))
        except BadRequest as e:
            raise BadRequest(f"images[{i}]: {e.message}", detail=e.detail) from None
    results = await d(request).add_images(actor(request), specs)
    created = any(r["created"] for r in results)
    return json_response({"images": results}, status=201 if created else 200)


async def images_import_packer(request: web.Request) -> web.Response:
    data = await body(request)
    text = field(data, "manifest", str, required=True)
    source = field(data, "source", str, default="packer manifest")
    images = await d(request).import_packer(
        actor(request), text, source, field(data, "name", str),
        field(data, "version", str), field(data, "all_runs", bool, default=False),
        field(data, "provider", str))
    if field(data, "attest", bool, default=False):
        for img in images:  # idempotent: the same build gives the same signed statement
            img["attestation"] = await request.app[TRUST].attest_packer(actor(request), img)
    created = any(i["created"] for i in images)
    return json_response({"images": images}, status=201 if created else 200)


async def images_list(request: web.Request) -> web.Response:
    dm = d(request)
    status = request.query.get("status") or None
    if status not in (None, "active", "revoked"):
        raise BadRequest(f"status={status!r}: use active or revoked")
    after = request.query.get("after") or None
    if after is not None and not after.startswith("sha256:"):
        raise BadRequest(f"after={after!r} must be a full image digest from a previous 'next'")
    limit = query_int(request, "limit", default=100, minimum=1, maximum=10000)
    result = await dm.db.read(dm.catalog.list_images, name=request.query.get("name") or None,
                              limit=limit, after=after, status=status)
    return json_response(result)


async def images_show(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.read(dm.catalog.show, ref_of(request))
    result["lifecycle"] = await dm.db.read(lifecycle.status, result["digest"])
    return json_response(result)


async def images_verify(request: web.Request) -> web.Response:
    dm = d(request)
    ref = request.query.get("ref") or None
    digest = await dm.db.read(dm.catalog.resolve, ref) if ref else None
    result = await dm.verify_images(digest)
    result["scope"] = digest or "all"
    return json_response(result)


async def artifacts_add(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    result = await dm.db.write(
        dm.catalog.add_artifact, actor(request), ref_of(request),
        field(data, "provider", str, required=True), field(data, "region", str, required=True),
        field(data, "image_id", str, required=True))
    return json_response(result, status=201 if result["created"] else 200)


async def images_revoke(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    result = await dm.db.write(dm.catalog.revoke, actor(request), ref_of(request),
                               field(data, "reason", str, required=True),
                               field(data, "cascade", bool, default=False))
    return json_response(result, status=201)


async def images_restore(request: web.Request) -> web.Response:
    dm = d(request)
    await body(request)
    pending = await request.app[TRUST].guard_restore(actor(request), ref_of(request))
    if pending is not None:
        return json_response(pending, status=202)
    result = await dm.db.write(dm.catalog.restore, actor(request), ref_of(request))
    return json_response(result, status=201)


# -- channels -------------------------------------------------------------------------------

async def channels_list(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response({"channels": await dm.db.read(dm.catalog.channels)})


async def channels_show(request: web.Request) -> web.Response:
    dm = d(request)
    return json_response(await dm.db.read(dm.catalog.channel, request.match_info["name"]))


async def channels_history(request: web.Request) -> web.Response:
    dm = d(request)
    name = request.match_info["name"]
    return json_response({"name": name,
                          "history": await dm.db.read(dm.catalog.channel_history, name)})


async def channels_resolve(request: web.Request) -> web.Response:
    dm = d(request)
    provider = request.query.get("provider") or None
    if provider is None:
        raise BadRequest("query parameter provider is required: the configured provider name "
                         "whose image id you want (e.g. aws-prod)")
    return json_response(await dm.db.read(resolve_artifact, dm.catalog,
                                          request.match_info["name"], provider,
                                          request.query.get("region") or None))


async def channels_set(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    name, ref = request.match_info["name"], field(data, "ref", str, required=True)
    pending = await request.app[TRUST].guard_channel(actor(request), name, ref)
    if pending is not None:
        return json_response(pending, status=202)
    result = await dm.db.write(dm.catalog.set_channel, actor(request), name, ref)
    return json_response(result, status=200)


# -- ledger ---------------------------------------------------------------------------------

async def ledger_head(request: web.Request) -> web.Response:
    dm = d(request)
    head = await dm.db.read(dm.catalog.head)
    head.update(await request.app[TRUST].witnessed(head["checkpoint"]))
    return json_response(head)


async def ledger_proof(request: web.Request) -> web.Response:
    dm = d(request)
    index = query_int(request, "index")
    if index is None:
        raise BadRequest("query parameter index is required (a leaf index, from 0)")
    size = query_int(request, "size", minimum=1)
    return json_response(await dm.db.read(dm.catalog.proof, index, size))


async def ledger_consistency(request: web.Request) -> web.Response:
    dm = d(request)
    old = query_int(request, "from")
    if old is None:
        raise BadRequest("query parameter from is required (the older tree size)")
    new = query_int(request, "to", minimum=1)
    return json_response(await dm.db.read(dm.catalog.consistency, old, new))


async def ledger_leaf(request: web.Request) -> web.Response:
    dm = d(request)
    index = path_int(request, "index", "leaf index")
    return json_response(await dm.db.read(dm.catalog.leaf, index))


async def ledger_verify(request: web.Request) -> web.Response:
    return json_response(await d(request).verify_ledger())


# -- meta -----------------------------------------------------------------------------------

async def metrics(request: web.Request) -> web.Response:
    dm = d(request)
    n = await dm.db.read(dm.catalog.counts)
    g: dict[str, tuple[str, float]] = {
        "images": ("Images in the catalog.", n["images"]),
        "images_revoked": ("Revoked images.", n["revoked"]),
        "ledger_size": ("Leaves in the Merkle ledger.", n["ledger_size"]),
    }
    g["uptime_seconds"] = ("Seconds since immd started.", time.time() - dm.started)
    return web.Response(text=dm.metrics.render(g),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


REF = {"ref": {"in": "path", "description": "digest, digest prefix (≥12 hex), name@version or "
                                            "channel:SERVICE/STAGE (URL-encoded)"}}
STR = {"type": "string"}
ROUTES: list[Route] = [
    Route("GET", "/v1/status", status, "Daemon status, counts and loaded plugins", tag="daemon"),
    Route("GET", "/v1/plugins", plugins, "Loaded plugins and the hooks they implement",
          tag="daemon"),
    Route("GET", "/v1/keys", keys_list, "Signing keys, current and retired", tag="keys"),
    Route("GET", "/v1/keys/export", keys_export, "A public key as PEM", tag="keys",
          query={"keyid": {"schema": STR}}),
    Route("POST", "/v1/keys/rotate", keys_rotate, "Rotate the signing key (announced by the old)",
          tag="keys", body={"type": "object"}),
    Route("POST", "/v1/state/backup", state_backup,
          "A consistent copy of the SQLite state (online backup API), streamed; admin only",
          body={"type": "object"}, tag="daemon"),
    Route("POST", "/v1/images", images_add, "Register an image from a file or directory",
          body={"type": "object", "required": ["path", "name", "version"], "properties": {
              "path": STR, "name": STR, "version": STR, "parent": STR,
              "layers": {"type": "array", "items": STR},
              "boot_actions": {"type": "array", "items": STR},
              "labels": {"type": "array", "items": STR}}}),
    Route("POST", "/v1/images/batch", images_add_batch,
          "Register many images in one request: each its own signed record, all or none",
          body={"type": "object", "required": ["images"], "properties": {
              "images": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                         "items": {"type": "object", "required": ["path", "name", "version"]}}}}),
    Route("POST", "/v1/images/import-packer", images_import_packer,
          "Import the builds of a Packer manifest post-processor file",
          body={"type": "object", "required": ["manifest"], "properties": {
              "manifest": STR, "source": STR, "name": STR, "version": STR,
              "all_runs": {"type": "boolean"}, "provider": STR, "attest": {"type": "boolean"}}}),
    Route("GET", "/v1/images", images_list, "List images (paged by 'next')",
          query={"name": {"schema": STR}, "status": {"schema": {"enum": ["active", "revoked"]}},
                 "limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                 "after": {"schema": STR}}),
    Route("GET", "/v1/verify/images", images_verify,
          "Re-verify stored rows from their envelopes (one image with ref, else all)",
          query={"ref": {"schema": STR}}),
    Route("GET", "/v1/images/{ref}", images_show, "One image with its envelope", query=REF),
    Route("POST", "/v1/images/{ref}/artifacts", artifacts_add, "Record where a copy lives",
          query=REF, body={"type": "object", "required": ["provider", "region", "image_id"],
                           "properties": {"provider": STR, "region": STR, "image_id": STR}}),
    Route("POST", "/v1/images/{ref}/revoke", images_revoke, "Revoke (optionally with descendants)",
          query=REF, body={"type": "object", "required": ["reason"], "properties": {
              "reason": STR, "cascade": {"type": "boolean"}}}),
    Route("POST", "/v1/images/{ref}/restore", images_restore, "Lift a revocation", query=REF,
          body={"type": "object"}),
    Route("GET", "/v1/channels", channels_list, "Every channel and where it points",
          tag="channels"),
    Route("GET", "/v1/channels/{name}", channels_show, "One channel", tag="channels",
          query={"name": {"in": "path", "description": "SERVICE/STAGE (URL-encoded)"}}),
    Route("GET", "/v1/channels/{name}/history", channels_history, "A channel's moves",
          tag="channels", query={"name": {"in": "path"}}),
    Route("GET", "/v1/channels/{name}/resolve", channels_resolve,
          "The provider image id of a channel's image in one provider/region (for Terraform)",
          tag="channels", query={"name": {"in": "path"}, "provider": {"required": True,
                                                                     "schema": STR},
                                 "region": {"schema": STR}}),
    Route("PUT", "/v1/channels/{name}", channels_set, "Point a channel at an image",
          tag="channels", query={"name": {"in": "path"}},
          body={"type": "object", "required": ["ref"], "properties": {"ref": STR}}),
    Route("GET", "/v1/ledger/head", ledger_head, "Size, root and signed checkpoint",
          tag="ledger"),
    Route("GET", "/v1/ledger/proof", ledger_proof, "Inclusion proof of a leaf", tag="ledger",
          query={"index": {"required": True, "schema": {"type": "integer", "minimum": 0}},
                 "size": {"schema": {"type": "integer", "minimum": 1}}}),
    Route("GET", "/v1/ledger/consistency", ledger_consistency, "Consistency proof between sizes",
          tag="ledger", query={"from": {"required": True, "schema": {"type": "integer",
                                                                      "minimum": 0}},
                               "to": {"schema": {"type": "integer", "minimum": 1}}}),
    Route("GET", "/v1/ledger/leaves/{index}", ledger_leaf, "One ledger leaf", tag="ledger",
          query={"index": {"in": "path", "schema": {"type": "integer", "minimum": 0}}}),
    Route("GET", "/v1/ledger/verify", ledger_verify, "Recompute and verify the whole ledger",
          tag="ledger"),
    Route("GET", "/metrics", metrics, "Prometheus metrics", tag="daemon"),
]
