"""The aiohttp application factory.

The daemon's parts (the rollout engine, then the audit schedule) start and stop with the app
through ``cleanup_ctx`` (``Daemon.lifecycle``).
"""

from __future__ import annotations

from aiohttp import web

from . import routes, routes_audit, routes_rollout
from .core import Daemon
from .http import json_response, make_middlewares
from .openapi import document
from .routes import DAEMON

# the whole API, which the OpenAPI document describes
ROUTES = [*routes.ROUTES, *routes_rollout.ROUTES, *routes_audit.ROUTES]


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(
        client_max_size=daemon.settings.max_body_bytes,
        middlewares=make_middlewares(lambda: daemon.settings.admin_rule,
                                     daemon.metrics.observe),
    )
    app[DAEMON] = daemon
    app.cleanup_ctx.append(daemon.lifecycle)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    spec = document(ROUTES)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/v1/openapi.json", openapi)
    return app
