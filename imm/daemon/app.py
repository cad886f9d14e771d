"""The aiohttp application factory.

The daemon's parts (the rollout engine, then the audit schedule) start and stop with the app
through ``cleanup_ctx`` (``Daemon.lifecycle``). The dashboard (``[dashboard] listen``) is a
second application over the same daemon, served only on its own loopback address (see
dashboard/__init__.py); its login links are minted here, on the API, for the socket's peer.
"""

from __future__ import annotations

import socket

from aiohttp import web

from ..errors import Conflict, Forbidden
from . import routes, routes_audit, routes_fleet, routes_rollout, routes_tokens, routes_trust
from .core import Daemon
from .dashboard import listen_address
from .dashboard.common import LOGINS as LOGINS_KEY
from .dashboard.sessions import Logins
from .dashboard.web import make_dashboard, mint_link
from .http import PEER, json_response, make_middlewares
from .openapi import document
from .routes import DAEMON, Route
from .routes_trust import add_tile_routes, trust_context
from .trust import TRUST, Trust

DASHBOARD: web.AppKey[web.Application] = web.AppKey("dashboard", web.Application)
DASHBOARD_LISTEN: web.AppKey[tuple[str, int]] = web.AppKey("dashboard_listen", tuple)


async def dashboard_link(request: web.Request) -> web.Response:
    """A one-time dashboard login link for the peer of this unix-socket connection.

    A GET, so that readers get a reader link (the API refuses their POSTs); it changes nothing
    but memory, and only the caller sees the link.
    """
    listen = request.app.get(DASHBOARD_LISTEN)
    if listen is None:
        raise Conflict('the dashboard is off; set [dashboard] listen = "127.0.0.1:PORT" in the '
                       "config and restart immd")
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Forbidden("dashboard login links are handed out only over the unix socket, where "
                        "the kernel names the caller; run immctl dashboard on the host")
    return json_response(mint_link(request.app[DASHBOARD][LOGINS_KEY], request[PEER], listen),
                         status=201)


# the whole API, which the OpenAPI document describes
ROUTES = [*routes.ROUTES, *routes_rollout.ROUTES, *routes_fleet.ROUTES, *routes_audit.ROUTES,
          *routes_tokens.ROUTES, *routes_trust.ROUTES,
          Route("GET", "/v1/dashboard/link", dashboard_link,
                "A one-time login link to the dashboard for the caller (unix socket only)",
                tag="dashboard")]


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(
        client_max_size=daemon.settings.max_body_bytes,
        middlewares=make_middlewares(lambda: daemon.settings.admin_rule,
                                     daemon.metrics.observe, tokens=lambda: daemon.tokens,
                                     state_dir=lambda: daemon.settings.state_dir),
    )
    app[DAEMON] = daemon
    app[TRUST] = Trust(daemon)
    app.cleanup_ctx.append(daemon.lifecycle)
    app.cleanup_ctx.append(trust_context)  # after the engine started: it may start rollouts
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    spec = document(ROUTES)
    add_tile_routes(app, spec)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/v1/openapi.json", openapi)
    app[DASHBOARD] = make_dashboard(daemon, Logins(), app[TRUST])
    listen = listen_address(daemon.settings.raw, daemon.settings.source)
    if listen is not None:
        app[DASHBOARD_LISTEN] = listen
    return app
