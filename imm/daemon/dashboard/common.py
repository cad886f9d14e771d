"""What every part of the dashboard shares: the app and request keys, the headers every
response carries, rendering a page or an error page, and the admin check of an action."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from ...errors import Forbidden
from ..core import Daemon
from ..trust import Trust
from .sessions import Logins, Session

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
TRUST: web.AppKey[Trust] = web.AppKey("dash_trust", Trust)
SESSION: web.RequestKey[Session] = web.RequestKey("dash_session", Session)


def page(request: web.Request, name: str, ctx: dict[str, Any],
         status: int = 200) -> web.Response:
    s: Session | None = request.get(SESSION)
    base = {"who": s.who if s else None, "csrf": s.csrf if s else ""}
    return aiohttp_jinja2.render_template(name, request, {**base, **ctx}, status=status)


def error(request: web.Request, status: int, message: str) -> web.Response:
    reason = {400: "Bad request", 401: "Not logged in", 403: "Forbidden", 404: "Not found",
              405: "Method not allowed", 409: "Conflict"}.get(status, "Error")
    return page(request, "error.html", {"status": status, "reason": reason,
                                        "message": message, "page": None}, status=status)


async def admin_form(request: web.Request, what: str) -> tuple[Session, Any]:
    """The session and form of an action: the form's CSRF token first (constant-time), then
    the role; a reader is refused even with a valid token (the disabled button is a hint)."""
    s: Session = request[SESSION]
    form = await request.post()
    if not s.csrf_ok(str(form.get("csrf", ""))):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and try again")
    if not s.who.admin:
        raise Forbidden(f"{s.who.actor} may only read; {what} needs an admin")
    return s, form
