"""The admin actions of the dashboard: a rollout's pause, resume, promote and abort, a
service's undo and the approval of a pending change.

Each calls exactly what immctl's route calls (``engine.set_state``, ``Trust.guard_undo`` then
``engine.undo``, ``Trust.approve``) with the session's actor, the string immctl's peer gets
(``user (uid N)``), so the journal and the ledger cannot tell the two apart. Each is a POST
form checked by :func:`common.admin_form` (CSRF token, then role) before anything happens.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from ...errors import BadRequest
from ...rollout.states import VERBS
from .common import DAEMON, TRUST, admin_form

log = logging.getLogger("imm.daemon.dashboard")


async def rollout_verb(request: web.Request) -> web.StreamResponse:
    rid, verb = request.match_info["id"], request.match_info["verb"]
    if verb not in VERBS:
        raise web.HTTPNotFound()
    s, _ = await admin_form(request, f"to {verb} a rollout")
    await request.app[DAEMON].engine.set_state(s.who.actor, rid, verb)
    log.info("dashboard: %s: %s rollout %s", s.who.actor, verb, rid)
    raise web.HTTPSeeOther(f"/ui/rollouts/{quote(rid, safe='')}")


async def service_undo(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    s, _ = await admin_form(request, "to undo a service's last rollout")
    trust = request.app[TRUST]
    pending = await trust.guard_undo(s.who.actor, name)
    if pending is not None:  # protected: the undo waits for its approvers
        log.info("dashboard: %s asked to undo %s: change %s", s.who.actor, name, pending["id"])
        raise web.HTTPSeeOther(f"/ui/changes/{quote(str(pending['id']), safe='')}")
    r = await request.app[DAEMON].engine.undo(s.who.actor, name)
    log.info("dashboard: %s: undo of %s started rollout %s", s.who.actor, name, r["id"])
    raise web.HTTPSeeOther(f"/ui/rollouts/{quote(str(r['id']), safe='')}")


MAX_SIGNATURE = 16384


async def change_approve(request: web.Request) -> web.StreamResponse:
    """An operator's SSH signature of the change's statement, pasted into the page (the browser
    never holds the key: ``ssh-keygen -Y sign -n imm`` makes it, as for ``immctl approve``)."""
    cid = request.match_info["id"]
    s, form = await admin_form(request, "to approve a change")
    signature = str(form.get("signature", "")).replace("\r\n", "\n").strip()
    if not signature:
        raise BadRequest("paste the SSH signature of the statement (ssh-keygen -Y sign -n imm)")
    if len(signature) > MAX_SIGNATURE:
        raise BadRequest(f"the signature is {len(signature)} characters; at most "
                         f"{MAX_SIGNATURE} are accepted")
    view = await request.app[TRUST].approve(s.who.actor, cid, signature + "\n")
    log.info("dashboard: %s approved change %s (%s)", s.who.actor, cid, view["state"])
    raise web.HTTPSeeOther(f"/ui/changes/{quote(cid, safe='')}")
