"""Manual judgment inside a canary: ``canary_steps = [20, "approve", 50]``.

At an ``approve`` step the rollout holds its traffic split and opens a pending change (action
``rollout-step``, the same k-of-n approval as any protected change, by the service's
``[protect.SERVICE]`` approvers) whose statement binds the rollout id, the step and the image.
The step waits until k distinct approvers have signed, then the rollout carries on; if the
change expires (the service's ``approve_timeout_s``) or is cancelled, the step fails and the
rollout rolls back. The change id is part of the step's journalled decision, so after a crash
(even a kill -9 mid-wait) the resumed rollout waits on the same change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ..catalog import approvals
from ..errors import ConfigError, Conflict, NotLeader
from ..store import Connection, query_one
from .states import RUNNING, StepFailed

if TYPE_CHECKING:
    from ..context import Context
    from .journal import Journal
    from .services import Service

Rollout = dict[str, Any]
Step = dict[str, Any]


def protect_for(ctx: Context, svc: Service) -> approvals.Protect:
    s = ctx.settings
    blocks = approvals.parse_protect(s.raw.get("protect"), s.source)
    p = blocks.get(svc.name)
    if p is None:
        raise ConfigError(f"service {svc.name} has an 'approve' canary step but no "
                          f"[protect.{svc.name}] block naming its approvers")
    return dataclasses.replace(p, expires_s=max(1, int(svc.approve_timeout_s)))


async def open_change(ctx: Context, svc: Service, r: Rollout, step: Step) -> dict[str, Any]:
    """The step's decision: the pending change it waits on (found again if one is open)."""
    try:
        p = protect_for(ctx, svc)
    except ConfigError as e:
        raise StepFailed(e.message) from None

    def find_or_open(conn: Connection) -> str:
        row = query_one(conn, "SELECT id FROM changes WHERE action='rollout-step' AND target=? "
                              "AND json_extract(terms, '$.rollout')=? AND "
                              "json_extract(terms, '$.step')=?", (svc.name, r["id"], step["name"]))
        if row:
            return str(row["id"])
        view = approvals.request(conn, ctx.catalog, f"rollout {r['id']}", p, "rollout-step",
                                 svc.name, {"rollout": r["id"], "step": step["name"],
                                            "image": r["digest"]})
        return str(view["id"])

    try:
        cid = await ctx.store.write(find_or_open)
    except ConfigError as e:
        raise StepFailed(e.message) from None
    except NotLeader:
        raise  # a deposed leader stops; it does not fail the rollout
    except Conflict as e:  # e.g. an approver is not a registered operator
        raise StepFailed(e.message) from None
    return {"change": cid}


async def wait(ctx: Context, journal: Journal, r: Rollout, step: Step,
               decision: dict[str, Any]) -> dict[str, Any]:
    cid = decision["change"]
    while True:
        cur = await journal.load(r["id"])
        if cur["state"] != RUNNING:
            return {"interrupted": cur["state"]}  # paused or aborted meanwhile
        view = await ctx.store.read(approvals.show, cid)
        state = view["state"]
        if state == "approved":
            await ctx.store.write(approvals.mark, ctx.catalog, cid, "applied",
                                  {"rollout": r["id"], "step": step["name"]})
            return {"change": cid, "approved_by": view["approved_by"]}
        if state == "applied":
            return {"change": cid, "approved_by": view["approved_by"]}
        if state == "expired":
            raise StepFailed(f"approval {cid} at {step['name']} was not given in time (it "
                             f"expired at {view['expires_at']} with "
                             f"{len(view['approved_by'])} of {view['approvals_needed']})")
        if state in ("cancelled", "failed"):
            raise StepFailed(f"approval {cid} at {step['name']} was {state}: "
                             f"{json.dumps(view['result'])}")
        await asyncio.sleep(ctx.timings.poll_s)


def rollout_of_change(conn: Connection, cid: str) -> dict[str, Any] | None:
    """The rollout an approved change started, found by its actor (``… via change ID …``)."""
    return query_one(conn, "SELECT id FROM rollouts WHERE actor LIKE ? ORDER BY created_at "
                           "LIMIT 1", (f"% via change {cid} approved by %",))
