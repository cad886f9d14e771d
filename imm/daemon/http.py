"""Middlewares and request helpers: JSON errors, authorization, body and query parsing."""

from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import os
import re
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import (
    BadRequest,
    Forbidden,
    ImmError,
    NoSpace,
    PayloadTooLarge,
    Unauthorized,
)
from .auth import AdminRule, Peer, is_admin, peer_credentials, user_name
from .tokens import TokenStore

# the caller, as the kernel named it when it connected (SO_PEERCRED), or a token's holder
PEER = web.RequestKey("peer", Peer)

log = logging.getLogger("imm.daemon")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
MAX_JSON_DEPTH = 32  # the deepest a request body may nest; no request needs more than a few
# minting and revoking one's own tokens is open to readers (the handler enforces the scope)
READER_MAY = {("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{id}")}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False, default=str),
                        status=status, content_type="application/json")


def error_response(err: ImmError) -> web.Response:
    resp = json_response(err.to_dict(), status=err.status)
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="immd"'
    return resp


# The kernel records a unix peer's credentials when it connects (SO_PEERCRED, SO_PEERGROUPS);
# they are read once per connection and kept with it, with the user's name resolved then.
# Nothing is looked up later by pid.
@dataclass(frozen=True)
class Creds:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    user: str


_CREDS: weakref.WeakKeyDictionary[Any, Creds | None] = weakref.WeakKeyDictionary()


def connection_creds(transport: Any) -> Creds | None:
    """The kernel's record of who connected on ``transport`` (None for a TCP connection)."""
    if transport in _CREDS:
        return _CREDS[transport]
    sock = transport.get_extra_info("socket")
    creds = None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            pid, uid, gid, groups = peer_credentials(sock)
        except OSError as e:
            raise Forbidden(f"cannot identify the peer of this connection ({e.strerror}); "
                            "nothing is done for an unknown caller") from None
        creds = Creds(pid, uid, gid, frozenset(groups | {gid}), user_name(uid))
    _CREDS[transport] = creds
    return creds


def peer_of(request: web.Request, rule: AdminRule) -> Peer | None:
    """The unix socket peer of ``request``'s connection, or None on TCP. Whether it is an admin
    is judged per request, so a reloaded admin rule applies at once."""
    transport = request.transport
    if transport is None:
        return None
    c = connection_creds(transport)
    if c is None:
        return None
    return Peer(uid=c.uid, gid=c.gid, pid=c.pid, groups=c.groups,
                admin=is_admin(c.uid, c.groups, rule, os.geteuid()), user=c.user)


def token_peer(request: web.Request, tokens: TokenStore | None) -> Peer:
    """The identity a loopback TCP request's bearer token stands for; 401 without one."""
    how = ("mint one over the unix socket with 'immctl token create --ttl 1h' and send "
           "'Authorization: Bearer TOKEN'")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized(f"this loopback TCP listener needs a bearer token: {how}")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"the Authorization header is not 'Bearer TOKEN': {how}")
    rec = tokens.check(token.strip()) if tokens is not None else None
    if rec is None:
        # never echo the token: it may be a real one mistyped, and this may be logged
        raise Unauthorized(f"the bearer token is unknown, expired or revoked: {how}")
    return Peer(uid=rec.uid, gid=-1, pid=None, groups=frozenset(), admin=rec.scope == "admin",
                user=rec.user, via=f"token {rec.id}", scope=rec.scope)


def _bad_text(value: str) -> str | None:
    """Why ``value`` cannot be taken as text from a request, or None."""
    if "\x00" in value:
        return "holds a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    return None


def check_params(request: web.Request) -> None:
    """Path and query parameters: text without NUL, and numbers in ASCII digits only."""
    for where, items in (("path parameter", request.match_info.items()),
                         ("query parameter", request.query.items())):
        for name, value in items:
            why = _bad_text(value)
            if why is None and value.isdigit() and not value.isascii():
                why = "is a number in non-ASCII digits; use 0-9"
            if why is not None:
                raise BadRequest(f"{where} {name}={value!r} {why}",
                                 detail={"parameter": name})

def make_middlewares(admin_rule: Callable[[], AdminRule],
                     observe: Callable[[str, str, int, float], None],
                     tokens: Callable[[], TokenStore | None] = lambda: None,
                     state_dir: Callable[[], Path | None] = lambda: None) -> list[Any]:
    """The error and authorization middlewares; ``tokens`` checks bearer tokens on loopback
    TCP, ``state_dir`` names where a full disk is."""
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
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                state = state_dir() or "the state directory"
                err = NoSpace(f"no space left under {state}; nothing was written. Free space "
                              "there and try again")
                status = err.status
                log.error("%s %s: %s", request.method, request.path, err.message)
                return error_response(err)
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
            peer = token_peer(request, tokens())
        request[PEER] = peer
        check_params(request)
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if (request.method, canonical) in READER_MAY:
            return await handler(request)
        if request.method in MUTATING and not peer.admin:
            if peer.scope:
                raise Forbidden(f"token {peer.via.split()[-1]} of {peer.user} has scope "
                                f"{peer.scope!r}: it may only read; mint one with --scope admin")
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
    except RecursionError:
        raise BadRequest(f"request body nests deeper than the limit of {MAX_JSON_DEPTH} "
                         "levels; send a flatter JSON object") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}")
    check_json(data)
    return data


def check_json(data: Any) -> None:
    """Refuse nesting beyond MAX_JSON_DEPTH and strings that are not text (NUL, surrogates)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"request body nests deeper than the limit of {MAX_JSON_DEPTH} "
                                 f"levels (at {where or 'the top'}); send a flatter JSON object")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str) and (why := _bad_text(k)) is not None:
                    raise BadRequest(f"key {k!r} in the request body {why}")
                stack.append((v, depth + 1, f"{where}.{k}" if isinstance(k, str) else
                              f"{where}[{k}]"))
        elif isinstance(value, str) and (why := _bad_text(value)) is not None:
            raise BadRequest(f"field {where.lstrip('.') or 'body'} {value[:80]!r} {why}",
                             detail={"field": where.lstrip(".")})


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


_INT = re.compile(r"-?[0-9]+", re.ASCII)


def path_int(request: web.Request, name: str, what: str) -> int:
    """A non-negative integer path parameter, in ASCII digits only."""
    raw = request.match_info[name]
    if not _INT.fullmatch(raw) or raw.startswith("-") or len(raw) > 18:
        raise BadRequest(f"{what} {raw!r} is not a non-negative integer (ASCII digits 0-9)")
    return int(raw)


def query_int(request: web.Request, name: str, *, default: int | None = None,
              minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw) or len(raw) > 19:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer (ASCII digits)")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        rng = f"{minimum}..{maximum}" if maximum is not None else f"≥ {minimum}"
        raise BadRequest(f"query parameter {name}={value} is out of range ({rng})")
    return value


FD_HEADER = "X-Imm-Pass-Fd"
FD_TIMEOUT_S = 30.0


async def receive_fd(request: web.Request) -> int:
    """The open descriptor the client passes on this connection (SCM_RIGHTS), on request.

    The client sent ``X-Imm-Pass-Fd: 1`` and waits. We stop the transport reading (so the
    byte that carries the descriptor is not swallowed by a plain ``recv``, which would drop the
    descriptor), answer ``100 Continue``, take the byte with ``recvmsg`` and hand the socket
    back to aiohttp. The descriptor is the client's own open file: immd reads through it with
    exactly the access the client had.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or sock.family != socket.AF_UNIX:
        raise BadRequest("a descriptor can only be passed over the unix socket")
    await request.read()  # the whole body first: nothing else may sit in the buffer
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.setblocking(False)  # it shares the transport's non-blocking file description anyway
    got: asyncio.Future[int] = loop.create_future()

    def readable() -> None:
        if got.done():
            return
        try:
            data, anc, flags, _ = dup.recvmsg(1, socket.CMSG_SPACE(4 * 4), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except Exception as e:  # noqa: BLE001 - a callback: hand every failure to the request
            why = e.strerror if isinstance(e, OSError) else repr(e)
            got.set_exception(BadRequest(f"could not receive the descriptor: {why}"))
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(array.array("i", payload[:n * 4]))
        if not data or len(fds) != 1 or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            got.set_exception(BadRequest(
                "the client did not pass exactly one open descriptor after '100 Continue'"))
            return
        got.set_result(fds[0])

    loop.add_reader(dup.fileno(), readable)
    try:
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async with asyncio.timeout(FD_TIMEOUT_S):
            return await got
    except TimeoutError:
        raise BadRequest(f"no descriptor arrived within {FD_TIMEOUT_S:.0f} s of "
                         "'100 Continue'") from None
    finally:
        loop.remove_reader(dup.fileno())
        dup.close()
        transport.resume_reading()
