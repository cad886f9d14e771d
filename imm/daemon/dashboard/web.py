"""The dashboard's aiohttp application: login by one-time link, the pages, the admin actions
(actions.py) and the live rollout page (live.py).

Every response carries a strict Content-Security-Policy (scripts only from the dashboard's own
static files, nothing from another origin, no inline script or style), is never cached, and
never sends a Referer (the login link carries its token). Every page reads without
JavaScript; the two small scripts (live updates, proof verification) only add to it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import importlib.resources
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ...audit.verdicts import VERDICTS
from ...catalog import approvals
from ...catalog.checkpoint import checkpoint_size, vkey
from ...catalog.merkle import MerkleLog
from ...errors import BadRequest, ImmError, NotFound
from ...plugins.base import TAG_DIGEST
from ...store import Connection
from ..core import Daemon
from ..routes import DAEMON as API_DAEMON
from ..routes_audit import audit_export
from ..trust import Trust
from . import actions, live, pages
from .common import COOKIE, DAEMON, HEADERS, LOGINS, MAX_QUERY, SESSION, TRUST, error, page
from .sessions import Identity, Logins, Session

__all__ = ["COOKIE", "make_dashboard", "mint_link"]

log = logging.getLogger("imm.daemon.dashboard")

STATIC = {"dash.css": "text/css", "live.js": "text/javascript",
          "proof.js": "text/javascript"}
PUBLIC = {"/ui/login"} | {f"/ui/static/{n}" for n in STATIC}
NO_LOGIN = ("you are not logged in (or your session expired): run `immctl dashboard` and open "
            "the link it prints")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers, size limits, the session, and HTML error pages (never a traceback)."""
    session: Session | None = None
    try:
        if len(request.query_string) > MAX_QUERY:
            resp: web.StreamResponse = error(
                request, 400, f"the query string is {len(request.query_string)} bytes; the "
                f"dashboard accepts at most {MAX_QUERY}")
        elif request.path not in PUBLIC and (
                session := request.app[LOGINS].session(request.cookies.get(COOKIE))) is None:
            resp = error(request, 401, NO_LOGIN)
        else:
            if request.path not in PUBLIC and session is not None:
                request[SESSION] = session
            resp = await handler(request)
            if resp.prepared:  # a stream (server-sent events) set its headers when it began
                return resp
    except ImmError as e:
        resp = error(request, e.status if e.status < 500 else 500, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            e.headers.update(HEADERS)
            raise
        msg = (f"there is no page at {request.path}" if e.status == 404 else
               f"{request.method} is not allowed on {request.path}" if e.status == 405
               else e.reason)
        resp = error(request, e.status, msg)
    except Exception:
        log.exception("internal error in dashboard %s %s", request.method, request.path)
        resp = error(request, 500, "internal error; see the immd log")
    resp.headers.update(HEADERS)
    return resp


# -- login ----------------------------------------------------------------------------------

async def login(request: web.Request) -> web.StreamResponse:
    token = request.query.get("t", "")
    session = request.app[LOGINS].redeem(token) if token else None
    if session is None:
        return error(request, 403, "this login link is unknown, already used or expired; run "
                                   "`immctl dashboard` again for a fresh one")
    log.info("dashboard login: %s as %s", session.who.actor, session.who.role)
    resp = web.HTTPSeeOther("/ui/fleet")
    resp.set_cookie(COOKIE, session.sid, max_age=int(request.app[LOGINS].session_ttl),
                    path="/ui/", httponly=True, samesite="Strict")
    raise resp


def mint_link(logins: Logins, peer: Any, listen: tuple[str, int]) -> dict[str, Any]:
    """A one-time link for ``peer`` (an ``auth.Peer`` identified by the kernel)."""
    who = Identity(actor=str(peer.actor), user=str(peer.user), admin=bool(peer.admin))
    token = logins.mint(who)
    host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
    return {"url": f"http://{host}:{listen[1]}/ui/login?t={token}", "role": who.role,
            "actor": who.actor, "expires_in_s": int(logins.link_ttl)}


# -- pages ----------------------------------------------------------------------------------

async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/fleet")


async def fleet(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    eng = dm.engine
    pages.param(request, "verdict", VERDICTS)  # a bad filter is a 400 before any listing
    names: dict[str, str] = {}
    services = []
    for svc in sorted(eng.services.values(), key=lambda s: s.name):
        error_ = None
        try:
            running = await eng.service_instances(svc)
        except ImmError as e:
            running, error_ = [], e.message
        per_digest = Counter(i.tags.get(TAG_DIGEST, "") for i in running)
        for digest in per_digest:
            if digest and digest not in names:
                try:
                    img = await dm.db.read(dm.catalog.show, digest)
                    names[digest] = f"{img['name']}@{img['version']}"
                except ImmError:
                    names[digest] = digest[:19]
        by_image: Counter[str] = Counter()
        for digest, n in per_digest.items():
            by_image[names.get(digest, "(untagged)")] += n
        rows = [{"id": i.id, "image": names.get(i.tags.get(TAG_DIGEST, ""), "(untagged)"),
                 "region": i.region, "state": i.state}
                for i in heapq.nsmallest(pages.PAGE_ROWS, running, key=lambda i: i.id)]
        services.append({**eng.fleet.describe(svc), "instances": rows, "total": len(running),
                         "by_image": sorted(by_image.items()), "error": error_})
    s: Session = request[SESSION]
    audit = await pages.audit_view(request)
    f = audit["filters"]
    shown = [x for x in services if (not f["service"] or x["name"] == f["service"]) and (
        not (f["provider"] or f["region"]) or any(
            (not f["provider"] or t["provider"] == f["provider"])
            and (not f["region"] or t["region"] == f["region"]) for t in x["targets"]))]
    return page(request, "fleet.html", {"page": "Fleet", "services": shown,
                                        "names": [x["name"] for x in services],
                                        "can_undo": s.who.admin, **audit})


async def rollouts(request: web.Request) -> web.Response:
    rows = await request.app[DAEMON].engine.list(None, 100)
    return page(request, "rollouts.html", {"page": "Rollouts", "rollouts": rows})


async def change(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    view = await dm.db.read(approvals.show, request.match_info["id"])
    s: Session = request[SESSION]
    return page(request, "change.html", {"page": "Rollouts", "c": view,
                                         "can_approve": s.who.admin and view["pending"]})


async def catalog(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    name = pages.param(request, "name")
    status = pages.param(request, "status", ("active", "revoked"))
    after = pages.param(request, "after")

    def read(conn: Connection) -> dict[str, Any]:
        listing = dm.catalog.list_images(conn, name=name or None, status=status or None,
                                         after=after or None, limit=pages.PAGE_ROWS)
        revoked = dm.catalog.list_images(conn, status="revoked", limit=pages.PAGE_ROWS)
        revocations = []
        for r in revoked["images"]:
            rev = dm.catalog.revocation_of(conn, r["digest"]) or {}
            revocations.append({**r, **rev, "cascade": rev.get("root") not in (None, r["digest"])})
        return {"listing": listing, "channels": dm.catalog.channels(conn),
                "revocations": revocations, "more_revoked": revoked["next"] is not None}

    data = await dm.db.read(read)
    by_digest: dict[str, list[str]] = {}
    for c in data["channels"]:
        by_digest.setdefault(c["digest"], []).append(c["name"])
    return page(request, "catalog.html", {
        "page": "Catalog", "images": data["listing"]["images"], "channels": data["channels"],
        "by_digest": by_digest, "next": data["listing"]["next"], "name": name,
        "status": status, "revocations": data["revocations"],
        "more_revoked": data["more_revoked"]})


def proof_of(dm: Daemon, conn: Connection, index: int | None) -> dict[str, Any]:
    """The signed checkpoint, and one leaf with its inclusion proof in the tree that checkpoint
    signs (the latest leaf it covers unless ``index`` names another)."""
    head = dm.catalog.head(conn)
    size = checkpoint_size(head["checkpoint"] or "") or 0
    out: dict[str, Any] = {"head": head, "size": size, "proof": None,
                           "vkey": vkey(dm.catalog.origin, dm.keyring.public_key)}
    if index is None and size:
        index = size - 1
    if index is None:
        return out
    if not 0 <= index < size:
        raise NotFound(f"ledger leaf {index} is not covered by the signed checkpoint (it covers "
                       f"leaves 0 to {size - 1}); a newer checkpoint is signed with the next write")
    data, _ = MerkleLog(conn).leaf(index)
    out["proof"] = {**dm.catalog.proof(conn, index, size), "data": data.decode("utf-8"),
                    "data_b64": base64.b64encode(data).decode("ascii"),
                    "statement": _statement(data)}
    return out


def _statement(data: bytes) -> str:
    """What a leaf's DSSE envelope says, decoded for reading (the check is on the bytes)."""
    try:
        payload = base64.b64decode(json.loads(data)["payload"], validate=True)
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False, sort_keys=True)
    except (ValueError, KeyError, TypeError):
        return ""


async def proof(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    raw = request.query.get("index", "")
    if raw and not raw.isdigit():
        raise BadRequest(f"index={raw!r} is not a leaf index; use a whole number from 0")
    index = int(raw) if raw else None
    view = await dm.db.read(lambda conn: proof_of(dm, conn, index))
    return page(request, "proof.html", {"page": "Proof", **view})


_PLAIN = re.compile(r"[A-Za-z0-9._~:@-]*")


@functools.lru_cache(maxsize=8192)
def urlencode(value: object) -> str:
    """A path segment or query value, percent-encoded (``/``, ``?``, ``&``, ``#``, ``%`` …);
    most are digests and ids that need nothing, and a page has hundreds of them."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else quote(text, safe=":@")


def _read_package_files() -> tuple[dict[str, str], dict[str, bytes]]:
    """Templates and static files, read once at import: no file I/O on the event loop."""
    root = importlib.resources.files(__package__)
    templates = {f.name: f.read_text("utf-8") for f in root.joinpath("templates").iterdir()
                 if f.name.endswith(".html")}
    return templates, {n: root.joinpath("static", n).read_bytes() for n in STATIC}


TEMPLATES, FILES = _read_package_files()


def make_dashboard(daemon: Daemon, logins: Logins, trust: Trust | None = None) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[DAEMON] = daemon
    app[LOGINS] = logins
    app[TRUST] = trust if trust is not None else Trust(daemon)
    app[API_DAEMON] = daemon  # the export download is the API's own handler
    app[live.STOPPING] = asyncio.Event()
    app.on_shutdown.append(live.on_shutdown)
    env = aiohttp_jinja2.setup(app, loader=jinja2.DictLoader(TEMPLATES),
                               autoescape=jinja2.select_autoescape(default=True))
    env.filters["urlencode"] = urlencode

    def static(name: str) -> Handler:
        body, ctype = FILES[name], STATIC[name]

        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=ctype, charset="utf-8")
        return serve

    for name in STATIC:
        app.router.add_get(f"/ui/static/{name}", static(name))
    app.router.add_get("/ui/login", login)
    app.router.add_get("/ui/", root)
    app.router.add_get("/ui/fleet", fleet)
    app.router.add_get("/ui/rollouts", rollouts)
    app.router.add_get("/ui/rollouts/{id}", live.rollout)
    app.router.add_get("/ui/rollouts/{id}/events", live.events)
    app.router.add_post("/ui/rollouts/{id}/{verb}", actions.rollout_verb)
    app.router.add_post("/ui/services/{name}/undo", actions.service_undo)
    app.router.add_get("/ui/changes/{id}", change)
    app.router.add_post("/ui/changes/{id}/approve", actions.change_approve)
    app.router.add_get("/ui/catalog", catalog)
    app.router.add_get("/ui/proof", proof)
    app.router.add_get("/ui/images/{ref}", pages.image)
    app.router.add_get("/ui/channels/{name:.+}", pages.channel)
    app.router.add_get("/ui/compliance", pages.compliance)
    app.router.add_get("/ui/compliance/export", audit_export)
    return app
