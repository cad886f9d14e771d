"""Bearer tokens for the loopback TCP listener: minted, listed and revoked over the socket."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..errors import BadRequest, Forbidden
from .http import PEER, body, field, json_response
from .routes import DAEMON, Route
from .tokens import SCOPES, TokenStore, parse_ttl

log = logging.getLogger("imm.daemon")


def _store(request: web.Request) -> TokenStore:
    store = request.app[DAEMON].tokens
    assert store is not None  # made when the daemon opens
    return store


def _socket_only(request: web.Request, what: str) -> None:
    if request[PEER].scope:
        raise Forbidden(f"tokens are {what} over the unix socket only ('immctl token ...'), "
                        "not with another token")


async def tokens_create(request: web.Request) -> web.Response:
    _socket_only(request, "minted")
    data = await body(request)
    ttl = field(data, "ttl", str, required=True)
    scope = field(data, "scope", str, default="read")
    if scope not in SCOPES:
        raise BadRequest(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    peer = request[PEER]
    token, rec = await asyncio.to_thread(_store(request).create, peer.uid, peer.user,
                                         peer.admin, scope, parse_ttl(ttl))
    # the id only: the token itself is shown once, to its owner, and never logged
    log.info("token %s minted for %s, scope %s, expires at %s", rec["id"], peer.actor,
             scope, rec["expires_at"])
    return json_response({**rec, "token": token}, status=201)


async def tokens_list(request: web.Request) -> web.Response:
    peer = request[PEER]
    return json_response({"tokens": _store(request).listing(None if peer.admin else peer.uid)})


async def tokens_revoke(request: web.Request) -> web.Response:
    _socket_only(request, "revoked")
    await body(request)
    peer = request[PEER]
    rec = await asyncio.to_thread(_store(request).revoke, request.match_info["id"], peer.uid,
                                  peer.admin, peer.actor)
    log.info("token %s of %s revoked by %s", rec["id"], rec["user"], peer.actor)
    return json_response(rec)


ROUTES = [
    Route("POST", "/v1/tokens", tokens_create,
          "Mint a bearer token for the loopback TCP listener, for the caller (socket only)",
          tag="tokens", body={"type": "object", "required": ["ttl"], "properties": {
              "ttl": {"type": "string"}, "scope": {"enum": list(SCOPES)}}}),
    Route("GET", "/v1/tokens", tokens_list,
          "Tokens: the caller's own, or every token for an admin", tag="tokens"),
    Route("DELETE", "/v1/tokens/{id}", tokens_revoke, "Revoke a token (its owner or an admin)",
          tag="tokens", query={"id": {"in": "path"}}),
]
