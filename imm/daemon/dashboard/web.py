"""The dashboard's aiohttp application: login by one-time link, pages, and the abort action.

Every response carries a strict Content-Security-Policy (no script at all, nothing from another
origin), is never cached, and never sends a Referer (the login link carries its token).
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ...errors import Forbidden, ImmError
from ...plugins.base import TAG_DIGEST
from ...rollout.states import TERMINAL
from ..core import Daemon
from .sessions import Identity, Logins, Session

log = logging.getLogger("imm.daemon.dashboard")

COOKIE = "imm_dash"
MAX_QUERY = 1024  # bytes of query string; longer → 400
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY"}
DAEMON: web.AppKey[Daemon] = web.AppKey("dash_daemon", Daemon)
LOGINS: web.AppKey[Logins] = web.AppKey("dash_logins", Logins)
SESSION: web.RequestKey[Session] = web.RequestKey("dash_session", Session)
PUBLIC = {"/ui/login", "/ui/static/dash.css"}
NO_LOGIN = ("you are not logged in (or your session expired): run `immctl dashboard` and open "
            "the link it prints")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page(request: web.Request, name: str, ctx: dict[str, Any],
          status: int = 200) -> web.Response:
    s: Session | None = request.get(SESSION)
    base = {"who": s.who if s else None, "csrf": s.csrf if s else ""}
    return aiohttp_jinja2.render_template(name, request, {**base, **ctx}, status=status)


def _error(request: web.Request, status: int, message: str) -> web.Response:
    reason = {400: "Bad request", 401: "Not logged in", 403: "Forbidden", 404: "Not found",
              405: "Method not allowed", 409: "Conflict"}.get(status, "Error")
    return _page(request, "error.html", {"status": status, "reason": reason,
                                         "message": message, "page": None}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers, size limits, the session, and HTML error pages (never a traceback)."""
    session: Session | None = None
    try:
        if len(request.query_string) > MAX_QUERY:
            resp: web.StreamResponse = _error(
                request, 400, f"the query string is {len(request.query_string)} bytes; the "
                f"dashboard accepts at most {MAX_QUERY}")
        elif request.path not in PUBLIC and (
                session := request.app[LOGINS].session(request.cookies.get(COOKIE))) is None:
            resp = _error(request, 401, NO_LOGIN)
        else:
            if request.path not in PUBLIC and session is not None:
                request[SESSION] = session
            resp = await handler(request)
    except ImmError as e:
        resp = _error(request, e.status if e.status < 500 else 500, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            e.headers.update(HEADERS)
            raise
        msg = (f"there is no page at {request.path}" if e.status == 404 else
               f"{request.method} is not allowed on {request.path}" if e.status == 405
               else e.reason)
        resp = _error(request, e.status, msg)
    except Exception:
        log.exception("internal error in dashboard %s %s", request.method, request.path)
        resp = _error(request, 500, "internal error; see the immd log")
    resp.headers.update(HEADERS)
    return resp


# -- login ----------------------------------------------------------------------------------

async def login(request: web.Request) -> web.StreamResponse:
    token = request.query.get("t", "")
    session = request.app[LOGINS].redeem(token) if token else None
    if session is None:
        return _error(request, 403, "this login link is unknown, already used or expired; run "
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
    names: dict[str, str] = {}
    services = []
    for svc in sorted(eng.services.values(), key=lambda s: s.name):
        error = None
        try:
            live = await eng.service_instances(svc)
        except ImmError as e:
            live, error = [], e.message
        rows = []
        for i in sorted(live, key=lambda i: i.id):
            digest = i.tags.get(TAG_DIGEST, "")
            if digest and digest not in names:
                try:
                    img = await dm.db.read(dm.catalog.show, digest)
                    names[digest] = f"{img['name']}@{img['version']}"
                except ImmError:
                    names[digest] = digest[:19]
            rows.append({"id": i.id, "image": names.get(digest, "(untagged)"),
                         "region": i.region, "state": i.state})
        services.append({**eng.fleet.describe(svc), "instances": rows, "error": error})
    return _page(request, "fleet.html", {"page": "Fleet", "services": services})


async def rollouts(request: web.Request) -> web.Response:
    rows = await request.app[DAEMON].engine.list(None, 100)
    return _page(request, "rollouts.html", {"page": "Rollouts", "rollouts": rows})


async def rollout(request: web.Request) -> web.Response:
    s: Session = request[SESSION]
    r = await request.app[DAEMON].engine.status(request.match_info["id"])
    return _page(request, "rollout.html", {
        "page": "Rollouts", "r": r, "terminal": TERMINAL,
        "can_abort": s.who.admin and r["state"] not in TERMINAL})


async def abort(request: web.Request) -> web.StreamResponse:
    s: Session = request[SESSION]
    rid = request.match_info["id"]
    form = await request.post()
    if not s.csrf_ok(str(form.get("csrf", ""))):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and try again")
    if not s.who.admin:
        raise Forbidden(f"{s.who.actor} may only read; aborting a rollout needs an admin")
    await request.app[DAEMON].engine.set_state(s.who.actor, rid, "abort")
    log.info("dashboard: %s aborted rollout %s", s.who.actor, rid)
    raise web.HTTPSeeOther(f"/ui/rollouts/{rid}")


async def catalog(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    listing = await dm.db.read(dm.catalog.list_images, limit=200)
    channels = await dm.db.read(dm.catalog.channels)
    by_digest: dict[str, list[str]] = {}
    for c in channels:
        by_digest.setdefault(c["digest"], []).append(c["name"])
    images = listing["images"]
    return _page(request, "catalog.html", {"page": "Catalog", "images": images,
                                           "channels": channels, "by_digest": by_digest,
                                           "more": listing["next"] is not None})


async def proof(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    return _page(request, "proof.html", {"page": "Proof",
                                         "head": await dm.db.read(dm.catalog.head)})


def _read_package_files() -> tuple[dict[str, str], bytes]:
    """Templates and stylesheet, read once at import: no file I/O on the event loop."""
    root = importlib.resources.files(__package__)
    templates = {f.name: f.read_text("utf-8") for f in root.joinpath("templates").iterdir()
                 if f.name.endswith(".html")}
    return templates, root.joinpath("static/dash.css").read_bytes()


TEMPLATES, CSS = _read_package_files()


def make_dashboard(daemon: Daemon, logins: Logins) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[DAEMON] = daemon
    app[LOGINS] = logins
    aiohttp_jinja2.setup(app, loader=jinja2.DictLoader(TEMPLATES),
                         autoescape=jinja2.select_autoescape(default=True))
    css = CSS

    async def stylesheet(request: web.Request) -> web.Response:
        return web.Response(body=css, content_type="text/css")

    app.router.add_get("/ui/static/dash.css", stylesheet)
    app.router.add_get("/ui/login", login)
    app.router.add_get("/ui/", root)
    app.router.add_get("/ui/fleet", fleet)
    app.router.add_get("/ui/rollouts", rollouts)
    app.router.add_get("/ui/rollouts/{id}", rollout)
    app.router.add_post("/ui/rollouts/{id}/abort", abort)
    app.router.add_get("/ui/catalog", catalog)
    app.router.add_get("/ui/proof", proof)
    return app
