"""Protected changes in the daemon: turn a protected verb into a pending change, and carry out
an approved one (rollouts through the engine; channel moves and restores happen in the catalog,
in the transaction of the last approval)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..catalog import approvals, freshness, lifecycle
from ..catalog.approvals import Protect
from ..catalog.service import query, query_one
from ..errors import BadRequest, ConfigError, Conflict, ImmError
from ..rollout import policy
from ..rollout.services import STRATEGIES

if TYPE_CHECKING:
    from .core import Daemon

log = logging.getLogger("imm.trust")
TRUST_KEYS = {"head_ttl"}


class Trust:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def protect(self) -> dict[str, Protect]:
        s = self.d.settings
        return approvals.parse_protect(s.raw.get("protect"), s.source)

    def section(self) -> dict[str, Any]:
        s = self.d.settings
        raw = s.raw.get("trust", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{s.source}: [trust] must be a table")
        unknown = set(raw) - TRUST_KEYS
        if unknown:
            raise ConfigError(f"{s.source}: unknown [trust] key(s) {sorted(unknown)}; known: "
                              + ", ".join(sorted(TRUST_KEYS)))
        return raw

    def head_ttl(self) -> int:
        return freshness.parse_duration(
            self.section().get("head_ttl", freshness.DEFAULT_HEAD_TTL_S),
            f"{self.d.settings.source}: [trust] head_ttl")

    async def keep_fresh(self) -> None:
        """Re-sign channel heads and the checkpoint before they grow old, for as long as immd
        runs (a restart picks up where it left: what is due is re-signed at once)."""
        while True:
            ttl = self.head_ttl()
            try:
                done = await self.d.db.write(freshness.refresh, self.d.catalog, ttl)
                if done["heads"]:
                    log.info("re-signed %d channel head(s)", done["heads"])
                revoked = await self.d.db.write(lifecycle.carry_out_revocations, self.d.catalog)
                for digest in revoked:
                    log.info("revoked %s as scheduled", digest)
            except ImmError as e:
                log.error("re-signing heads or scheduled revocations failed: %s", e.message)
            await asyncio.sleep(max(0.5, min(ttl / 4, 5.0)))

    async def channel_head(self, name: str) -> dict[str, Any]:
        return await self.d.db.write(freshness.head, self.d.catalog, name, self.head_ttl())

    async def check_config(self) -> None:
        """At start: a bad [protect] or [trust] block stops immd; unknown approvers are logged
        (operators are registered through the running daemon, so they may come later)."""
        self.head_ttl()
        for p in self.protect().values():
            missing = await self.d.db.read(approvals.unknown_approvers, p)
            if missing:
                log.warning("[protect.%s] names approver(s) %s who are not registered operators; "
                            "its changes are refused until they are", p.name, ", ".join(missing))

    # -- protected verbs ------------------------------------------------------------------------

    async def guard_channel(self, actor: str, name: str, ref: str) -> dict[str, Any] | None:
        p = self.protect().get(name)
        if p is None:
            return None
        cat = self.d.catalog

        def req(conn: Any) -> dict[str, Any] | None:
            head = cat._channel_head(conn, name)
            digest = cat.resolve(conn, ref)
            rev = cat.revocation_of(conn, digest)
            if rev:
                raise Conflict(f"image {digest} is revoked (reason: {rev['reason']}, by "
                               f"{rev['actor']} at {rev['at']}); pick another or restore it")
            if head and head["digest"] == digest:
                return None  # unchanged: nothing to approve
            return approvals.request(conn, cat, actor, p, "channel-set", name, {
                "image": digest, "previous": head["digest"] if head else None})

        return await self.d.db.write(req)

    async def guard_rollout(self, actor: str, service: str, ref: str,
                            strategy: str | None) -> dict[str, Any] | None:
        p = self.protect().get(service)
        if p is None:
            return None
        svc = self.d.engine.service(service)
        strategy = strategy or svc.strategy
        if strategy not in STRATEGIES:
            raise BadRequest(f"strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        cat = self.d.catalog
        digest = await self.d.db.read(cat.resolve, ref)
        # refuse now what the rollout would refuse, before anyone is asked to sign it
        await self.d.db.read(policy.check, cat, self.d.keyring, svc, digest)
        return await self.d.db.write(approvals.request, cat, actor, p, "rollout-start",
                                     service, {"image": digest, "strategy": strategy})

    async def guard_undo(self, actor: str, service: str) -> dict[str, Any] | None:
        p = self.protect().get(service)
        if p is None:
            return None
        svc = self.d.engine.service(service)
        last = await self.d.db.read(lambda c: query_one(
            c, "SELECT id, previous_digest FROM rollouts WHERE service=? AND state='completed' "
               "ORDER BY created_at DESC, rowid DESC LIMIT 1", (svc.name,)))
        if last is None or not last["previous_digest"]:
            raise Conflict(f"service {svc.name} has no completed rollout with a previous image "
                           "to go back to")
        await self.d.db.read(policy.check, self.d.catalog, self.d.keyring, svc,
                             last["previous_digest"])
        return await self.d.db.write(approvals.request, self.d.catalog, actor, p,
                                     "rollout-undo", service,
                                     {"image": last["previous_digest"], "undo_of": last["id"]})

    async def guard_restore(self, actor: str, ref: str) -> dict[str, Any] | None:
        blocks = {n: p for n, p in self.protect().items() if p.kind == "channel"}
        if not blocks:
            return None
        cat = self.d.catalog

        def req(conn: Any) -> dict[str, Any] | None:
            digest = cat.resolve(conn, ref)
            heads = [r["name"] for r in query(
                conn, "SELECT h.name FROM channel_history h JOIN (SELECT name, max(seq) s FROM "
                      "channel_history GROUP BY name) m ON h.name=m.name AND h.seq=m.s "
                      "WHERE h.digest=? ORDER BY h.name", (digest,))]
            hit = [blocks[h] for h in heads if h in blocks]
            if not hit:
                return None
            if not query_one(conn, "SELECT 1 FROM revocations WHERE digest=? OR root=?",
                             (digest, digest)):
                raise Conflict(f"image {digest} is not revoked; nothing to restore")
            p = max(hit, key=lambda b: (b.approvals, b.name))
            return approvals.request(conn, cat, actor, p, "image-restore", digest,
                                     {"image": digest, "channels": heads})

        return await self.d.db.write(req)

    # -- image lifecycle ------------------------------------------------------------------------

    async def lifecycle(self, actor: str, ref: str, action: str, at: str | None, reason: str,
                        force: bool) -> dict[str, Any]:
        when = lifecycle.parse_at(at) if action != "deprecate" else None
        cat = self.d.catalog

        def write(conn: Any) -> dict[str, Any]:
            digest = cat.resolve(conn, ref)
            running = query(conn, "SELECT provider, region, instance_id, service FROM "
                                  "observations WHERE digest=? AND closed_at IS NULL "
                                  "ORDER BY provider, region, instance_id", (digest,))
            return lifecycle.record(conn, cat, actor, digest, action, at=when, reason=reason,
                                    running=running, force=force)

        return await self.d.db.write(write)

    # -- approvals ------------------------------------------------------------------------------

    async def approve(self, actor: str, cid: str, signature: str) -> dict[str, Any]:
        view = await self.d.db.write(approvals.approve, self.d.catalog, actor, cid, signature)
        if view["state"] == "approved" and view["action"] in ("rollout-start", "rollout-undo"):
            view = await self.carry_out_rollout(cid)
        return view

    async def carry_out_rollout(self, cid: str) -> dict[str, Any]:
        view = await self.d.db.read(approvals.show, cid)
        terms = view["terms"]
        who = (f"{view['requested_by']} via change {cid} approved by "
               f"{', '.join(view['approved_by'])}")
        try:
            r = await self.d.engine.start(who, view["target"], terms["image"],
                                          terms.get("strategy"), undo_of=terms.get("undo_of"))
        except ImmError as e:
            log.warning("approved change %s could not be carried out: %s", cid, e.message)
            return await self.d.db.write(approvals.mark, self.d.catalog, cid, "failed",
                                         {"error": e.message})
        return await self.d.db.write(approvals.mark, self.d.catalog, cid, "applied",
                                     {"rollout": r["id"]})


TRUST: web.AppKey[Trust] = web.AppKey("trust", Trust)
