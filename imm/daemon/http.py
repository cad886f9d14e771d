"""Middlewares and request helpers: JSON errors, authorization, body and query parsing."""

from __future__ import annotations

import json
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import BadRequest, Forbidden, ImmError, PayloadTooLarge
from .auth import AdminRule, Peer, tcp_peer, unix_peer

log = logging.getLogger("imm.daemon")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PEER: web.AppKey[str] = web.AppKey("admin_group", str)
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False, default=str),
                        status=status, content_type="application/json")


def error_response(err: ImmError) -> web.Response:
    return json_response(err.to_dict(), status=err.status)


# SO_PEERCRED cannot change during a connection: identify each connection once.
_PEERS: weakref.WeakKeyDictionary[Any, tuple[AdminRule, Peer | None]] = \
    weakref.WeakKeyDictionary()


def peer_of(request: web.Request, rule: AdminRule) -> Peer | None:
    transport = request.transport
    if transport is None:
        return None
    cached = _PEERS.get(transport)
    if cached is not None and cached[0] == rule:
        return cached[1]
    peer = _identify(transport, rule)
    _PEERS[transport] = (rule, peer)
    return peer


def _identify(transport: Any, rule: AdminRule) -> Peer | None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        return unix_peer(sock, rule)
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    if peer and local and peer[0] in ("127.0.0.1", "::1"):
        return tcp_peer(peer[:2], local[:2], sock.family, rule)
    return None


def make_middlewares(admin_rule: Callable[[], AdminRule],
                     observe: Callable[[str, str, int, float], None]) -> list[Any]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except ImmError as e:
            status = e.status
            return error_response(e)
        except web.HTTPRequestEntityTooLarge as e:
            status = 413
            return error_response(PayloadTooLarge(
                f"request body is larger than the daemon's limit: {e.text}; raise "
                "daemon.max_body_bytes or send less"))
        except web.HTTPException as e:
            status = e.status
            if e.status >= 400:
                code = {404: "not-found", 405: "method-not-allowed"}.get(e.status, "http-error")
                msg = (f"no such API endpoint: {request.method} {request.path}"
                       if e.status in (404, 405) else e.reason)
                return json_response({"error": {"code": code, "message": msg, "detail": None}},
                                     status=e.status)
            raise
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path)
            return json_response({"error": {"code": "internal", "message":
                                  "internal error; see the immd log", "detail": None}}, status=500)
        finally:
            observe(request.method, name, status, time.perf_counter() - start)

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = admin_rule()
        peer = peer_of(request, rule)
        if peer is None:
            raise Forbidden("cannot identify the peer of this connection; connect through the "
                            "unix socket or a loopback TCP connection")
        request["peer"] = peer
        if request.method in MUTATING and not peer.admin:
            raise Forbidden(
                f"{peer.user} (uid {peer.uid}) may only read; changing things needs root"
                + (", the daemon's user" if rule.owner_is_admin else "")
                + f" or membership of group {rule.group!r}",
                detail={"uid": peer.uid})
        return await handler(request)

    return [errors, authorize]


async def body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
          required: bool = False, default: Any = None) -> Any:
    value = data.get(name, default)
    if value is None:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRequest(f"field {name!r} must be {want}, got {json.dumps(value)[:80]}")
    return value


def query_int(request: web.Request, name: str, *, default: int | None = None,
              minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        rng = f"{minimum}..{maximum}" if maximum is not None else f"≥ {minimum}"
        raise BadRequest(f"query parameter {name}={value} is out of range ({rng})")
    return value
