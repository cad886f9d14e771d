"""The rollout page, live: its state, steps, charts, journal and actions as one fragment,
rendered the same way for the page and for each server-sent event (aiohttp-sse) that the
browser's native EventSource receives (static/live.js puts it in place: no reload).

An event is sent at once when the rollout's journal gets an entry (the engine wakes the
stream, as for ``immctl rollout watch``) and otherwise only when the fragment changed; the
stream ends after the rollout's terminal state is sent, or when immd shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from markupsafe import Markup

from ...rollout.states import BEGIN, OP_APPROVE, PAUSED, ROLLING_BACK, RUNNING, TERMINAL
from .charts import rollout_charts
from .common import DAEMON, HEADERS, SESSION, page
from .sessions import Session

EVERY_S = 2.0  # look again this often between journal entries (live counts move without them)
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("dash_stopping", asyncio.Event)


def approval_change(status: dict[str, Any]) -> str | None:
    """The pending change the rollout's current ``approve`` step waits on, if it is at one."""
    ops = {s["name"]: s["op"] for s in status["plan"]}
    if status["state"] != RUNNING or ops.get(status["step"] or "") != OP_APPROVE:
        return None
    for j in reversed(status["journal"]):
        if j["step"] == status["step"] and j["action"] == BEGIN and "change" in j["detail"]:
            return str(j["detail"]["change"])
    return None


def context(s: Session, status: dict[str, Any]) -> dict[str, Any]:
    state, admin = status["state"], s.who.admin
    return {"page": "Rollouts", "r": status, "terminal": state in TERMINAL,
            "charts": rollout_charts(status), "change": approval_change(status),
            "can": {"pause": admin and state == RUNNING, "resume": admin and state == PAUSED,
                    "promote": admin and state in (RUNNING, PAUSED),
                    "abort": admin and state not in TERMINAL and state != ROLLING_BACK}}


def fragment(request: web.Request, s: Session, ctx: dict[str, Any]) -> str:
    return aiohttp_jinja2.render_string("rollout_live.html", request,
                                        {"who": s.who, "csrf": s.csrf, **ctx})


def digest(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:32]


async def rollout(request: web.Request) -> web.Response:
    status = await request.app[DAEMON].engine.status(request.match_info["id"])
    s: Session = request[SESSION]
    ctx = context(s, status)
    html = fragment(request, s, ctx)
    # the stream is told what the page shows, so it sends only what differs from it (a
    # replaced form under the pointer or the keyboard focus is a nuisance)
    return page(request, "rollout.html", {**ctx, "live_html": Markup(html),  # noqa: S704
                                          "seen": digest(html)})


async def events(request: web.Request) -> web.StreamResponse:
    engine = request.app[DAEMON].engine
    rid = request.match_info["id"]
    status = await engine.status(rid)  # an unknown id is a 404 page before the stream starts
    s: Session = request[SESSION]
    async with sse_response(request, headers=HEADERS) as sse:
        try:
            await _send_until_done(request, sse, rid, status, s)
        except ConnectionResetError:
            pass  # the page went away (a click, a reload): nobody is left to tell
    return sse


async def _send_until_done(request: web.Request, sse: EventSourceResponse, rid: str,
                           status: dict[str, Any], s: Session) -> None:
    engine = request.app[DAEMON].engine
    stopping = request.app[STOPPING]
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    seen = request.query.get("seen", "")
    last = ""
    waiter: asyncio.Future[Any] | None = None
    try:
        while True:
            ctx = context(s, status)
            html = fragment(request, s, ctx)
            if not last and seen and digest(html) == seen:
                last = html  # the page already shows this
            elif html != last:
                last = html
                await sse.send(json.dumps({
                    "html": html, "state": status["state"], "step": status["step"],
                    "points": len(ctx["charts"]["traffic_points"])}), event="rollout")
            if status["state"] in TERMINAL or stopping.is_set():
                return
            if waiter is None:
                waiter = await _watch(engine, rid)
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                return
            # wait for the next entry from before this read on: none is missed in between
            waiter = await _watch(engine, rid)
            status = await engine.status(rid)
    finally:
        for f in (waiter, stop):
            if f is not None:
                f.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await f


async def _watch(engine: Any, rid: str) -> asyncio.Future[Any]:
    """A wait for the rollout's next journal entry, registered by the time this returns."""
    waiter = asyncio.ensure_future(engine.changed(rid, EVERY_S))
    await asyncio.sleep(0)  # let it register with the journal before anything is read
    return waiter


async def on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()  # open streams end now, not at the runner's shutdown timeout
