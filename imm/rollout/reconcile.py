"""A fleet that keeps itself: outside rollouts, each service is held at its desired state.

The desired state of a service is the image of its last completed rollout and the count of each
of its targets. Every ``timings.heal_interval_s`` the :class:`Reconciler` compares it with what
the providers and the router report, service by service, and for a service with no rollout under
way (a rollout owns its service; the reconciler never touches one):

- an instance that **exited** (its provider reports it, but not running), or that **failed its
  health check** for longer than the service's ``heal_grace_s``, is taken out of traffic (drained
  and removed from the route) and **quarantined**: left as it is for inspection (an exited
  instance is already stopped; a running one is stopped when its provider supports
  ``Feature.STOP``, otherwise it only stays out of traffic), recorded in the ``quarantine`` table.
  ``quarantine_keep`` of them are kept per service; the oldest beyond that are terminated;
- a backend whose instance **vanished** from its provider is removed from the route;
- each target short of its count gets replacements launched from the same image artifact with
  the same tags, attached like a rollout attaches (weight 0, health, then the weight of the
  serving backends);
- an image that keeps dying is not relaunched forever: at most ``heal_max_per_min`` launches a
  minute per service, and when that budget is spent a ``crash-loop`` finding is recorded instead.

Every decision (quarantine, vanished, replace, launch-failed, crash-loop, quarantine-expired) is a
DSSE-signed ledger record of type ``heal`` with its reason, written *before* it is acted on, and a
row of ``heal_events``. A replacement's client token is derived from its record, so a crash
between the record and the launch does not launch twice.

A service taken down on purpose is never healed back: a service whose latest ``down`` journal
entry is at least as recent as its last completed rollout is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..context import Context, RouterHandle
from ..errors import HealthTimeout, ImmError, NotLeader
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, TAG_SLOT, Instance, LaunchRequest
from ..store import Connection, fence, now, query, query_one
from .fleet import LIVE_STATES, Fleet
from .journal import active_rollout
from .services import Service
from .states import COMPLETED, DOWN, OPERATOR_TERMINATE

log = logging.getLogger("imm.rollout.reconcile")

WINDOW_S = 60.0  # the crash-loop budget is counted over this many seconds
QUARANTINED = "quarantined"
TERMINATED = "terminated"


def desired(conn: Connection, service: str) -> dict[str, Any] | None:
    """The service's last completed rollout (``id``, ``digest``, ``artifacts``), or None when it
    has none, has one under way, or was taken down after it."""
    if active_rollout(conn, service):
        return None
    last = query_one(conn, "SELECT id, digest, params, finished_at FROM rollouts "
                           "WHERE service=? AND state=? ORDER BY created_at DESC, rowid DESC "
                           "LIMIT 1", (service, COMPLETED))
    if last is None:
        return None
    down = conn.execute("SELECT max(j.at) FROM rollout_journal j JOIN rollouts r "
                        "ON r.id = j.rollout WHERE r.service=? AND j.action=?",
                        (service, DOWN)).fetchone()[0]
    if down is not None and down >= (last["finished_at"] or ""):
        return None
    # instances an operator terminated since: the service runs that many fewer there
    fewer: dict[str, int] = {}
    for row in query(conn, "SELECT j.detail FROM rollout_journal j JOIN rollouts r "
                           "ON r.id = j.rollout WHERE r.service=? AND j.action=? AND j.at >= ?",
                     (service, OPERATOR_TERMINATE, last["finished_at"] or "")):
        d = json.loads(row["detail"])
        where = f"{d.get('provider')}/{d.get('region')}"
        fewer[where] = fewer.get(where, 0) + 1
    return {"id": last["id"], "digest": last["digest"], "fewer": fewer,
            "artifacts": json.loads(last["params"]).get("artifacts", {})}


def quarantined(conn: Connection, service: str | None = None,
                state: str | None = QUARANTINED) -> list[dict[str, Any]]:
    """Quarantined instances (of ``service``), oldest first."""
    where, args = [], []
    if service:
        where.append("service=?")
        args.append(service)
    if state:
        where.append("state=?")
        args.append(state)
    sql = ("SELECT instance, provider, service, region, digest, reason, at, state, ledger_index "
           "FROM quarantine" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY at, ledger_index")
    return query(conn, sql, args)


def events(conn: Connection, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The reconciler's records (newest first)."""
    sql = ("SELECT seq, service, action, instance, provider, reason, detail, at, ledger_index "
           "FROM heal_events" + (" WHERE service=?" if service else "")
           + " ORDER BY seq DESC LIMIT ?")
    rows = query(conn, sql, (service, limit) if service else (limit,))
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows


@dataclass
class _State:
    """What the reconciler remembers of one service between passes (in memory)."""

    sick_since: dict[str, float] = field(default_factory=dict)  # instance id -> first seen sick
    launches: deque[float] = field(default_factory=deque)  # monotonic times of launches
    flagged_at: float | None = None  # when the last crash-loop finding was recorded


class Reconciler:
    """Holds every service at its desired state outside rollouts (see the module docstring)."""

    def __init__(self, ctx: Context, fleet: Fleet) -> None:
        self.ctx = ctx
        self.fleet = fleet
        self.state: dict[str, _State] = {}
        self._task: asyncio.Task[None] | None = None
        self.clock = time.monotonic

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.ctx.timings.heal_interval_s <= 0:
            log.info("reconciler off (heal_interval_s = 0)")
            return
        self._task = asyncio.create_task(self._loop(), name="imm-reconcile")

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(self) -> None:
        fence(self.ctx.cluster.fence)  # its writes are the leader's (imm/store/lease.py)
        while True:
            await asyncio.sleep(self.ctx.timings.heal_interval_s)
            await self.tick()

    async def tick(self) -> dict[str, list[dict[str, Any]]]:
        """One pass over every service; what was done, by service. Errors are logged."""
        out: dict[str, list[dict[str, Any]]] = {}
        for svc in list(self.fleet.services.values()):
            try:
                done = await self.reconcile(svc)
            except NotLeader as e:
                log.warning("reconcile stopped: %s", e.message)
                self.ctx.cluster.refused(e.message)
                return out
            except ImmError as e:
                log.warning("service %s: reconcile failed: %s", svc.name, e.message)
                continue
            if done:
                out[svc.name] = done
        return out

    # -- one service ----------------------------------------------------------------------------

    async def reconcile(self, svc: Service) -> list[dict[str, Any]]:
        """Compare ``svc`` with its desired state and repair it; the records written."""
        want = await self.ctx.store.read(desired, svc.name)
        st = self.state.setdefault(svc.name, _State())
        if want is None:
            st.sick_since.clear()
            return []
        held = {(q["provider"], q["instance"])
                for q in await self.ctx.store.read(quarantined, svc.name)}
        listing: list[Instance] = []
        for p in sorted({t.provider for t in svc.targets}):
            listing += await self.ctx.provider(p).list_instances({TAG_SERVICE: svc.name})
        members = [i for i in listing if (i.provider, i.id) not in held
                   and i.tags.get(TAG_DIGEST) == want["digest"]]
        await self.fleet.ready(svc)
        routed = self.fleet.router(svc)
        health: Mapping[str, bool | None] = {}
        backends: set[str] = set()
        if routed is not None:
            router, route = routed
            listed_backends = await router.backends(route)  # one call: names and health both
            backends = {b.name for b in listed_backends}
            if router.checks_health:
                health = {b.name: b.healthy for b in listed_backends}
        records: list[dict[str, Any]] = []
        t = self.clock()
        bad: list[tuple[Instance, str]] = []
        for i in members:
            if i.state not in LIVE_STATES:
                bad.append((i, f"instance {i.id} exited (provider reports {i.state!r})"))
                st.sick_since.pop(i.id, None)
            elif health.get(i.id) is False:
                since = st.sick_since.setdefault(i.id, t)
                if t - since >= svc.heal_grace_s:
                    bad.append((i, f"instance {i.id} failed its health check for "
                                   f"{t - since:.1f}s (heal_grace_s {svc.heal_grace_s:g})"))
                    st.sick_since.pop(i.id, None)
            else:
                st.sick_since.pop(i.id, None)
        listed = {i.id for i in listing}
        if routed is not None:
            for name in sorted(backends - listed):
                records.append(await self._vanished(svc, routed, name))
        for i, reason in bad:
            records.append(await self._quarantine(svc, routed, i, want, reason))
        if bad:
            records += await self._expire(svc)
        gone = {i.id for i, _ in bad}
        alive = [i for i in members if i.id not in gone and i.state in LIVE_STATES]
        reasons = [r["reason"] for r in records if r["action"] in ("quarantine", "vanished")]
        for target in svc.targets:
            have = [i for i in alive if i.provider == target.provider
                    and i.region == target.region]
            missing = (target.count - len(have)
                       - want.get("fewer", {}).get(f"{target.provider}/{target.region}", 0))
            if missing > 0:
                records += await self._replace(svc, routed, want, target.provider, target.region,
                                               missing, have or members, reasons)
        return records

    # -- actions ----------------------------------------------------------------------------------

    async def record(self, service: str, action: str, reason: str, instance: str | None = None,
                     provider: str | None = None, **detail: Any) -> dict[str, Any]:
        """One signed ``heal`` ledger record and its ``heal_events`` row, in one transaction."""
        def write(conn: Connection) -> dict[str, Any]:
            body = {"type": "heal", "service": service, "action": action, "instance": instance,
                    "provider": provider, "reason": reason, "detail": detail, "actor": "immd",
                    "time": now()}
            _env, idx, text = self.ctx.catalog.append(conn, "heal", body)
            cur = conn.execute(
                "INSERT INTO heal_events (service, action, instance, provider, reason, detail, "
                "at, ledger_index, envelope) VALUES (?,?,?,?,?,?,?,?,?) RETURNING seq",
                (service, action, instance, provider, reason,
                 json.dumps(detail, sort_keys=True), body["time"], idx, text))
            seq = cur.fetchone()[0]
            if action == "quarantine":
                conn.execute("INSERT INTO quarantine VALUES (?,?,?,?,?,?,?,?,?) "
                             "ON CONFLICT (provider, instance) DO UPDATE SET "
                             "service = excluded.service, region = excluded.region, "
                             "digest = excluded.digest, reason = excluded.reason, "
                             "at = excluded.at, state = excluded.state, "
                             "ledger_index = excluded.ledger_index",
                             (instance, provider, service, detail.get("region", ""),
                              detail.get("digest"), reason, body["time"], QUARANTINED, idx))
            elif action == "quarantine-expired":
                conn.execute("UPDATE quarantine SET state=? WHERE provider=? AND instance=?",
                             (TERMINATED, provider, instance))
            self.ctx.catalog.checkpoint(conn)
            return {**body, "seq": seq, "ledger_index": idx}

        rec = await self.ctx.store.write(write)
        log.warning("service %s: %s %s: %s", service, action, instance or "", reason)
        return rec

    async def _out_of_traffic(self, routed: tuple[RouterHandle, str] | None, name: str) -> None:
        if routed is None:
            return
        router, route = routed
        if name not in {b.name for b in await router.backends(route)}:
            return
        await router.drain(route, name)
        await router.remove(route, name)

    async def _vanished(self, svc: Service, routed: tuple[RouterHandle, str],
                        name: str) -> dict[str, Any]:
        rec = await self.record(svc.name, "vanished",
                                f"instance {name} vanished from its provider; removed from route "
                                f"{routed[1]}", instance=name)
        await self._out_of_traffic(routed, name)
        return rec

    async def _quarantine(self, svc: Service, routed: tuple[RouterHandle, str] | None,
                          i: Instance, want: dict[str, Any], reason: str) -> dict[str, Any]:
        rec = await self.record(svc.name, "quarantine", reason, instance=i.id,
                                provider=i.provider, region=i.region, digest=want["digest"],
                                state=i.state)
        await self._out_of_traffic(routed, i.id)
        return rec

    async def _expire(self, svc: Service) -> list[dict[str, Any]]:
        """Terminate the oldest quarantined instances beyond ``quarantine_keep``."""
        held = await self.ctx.store.read(quarantined, svc.name)
        out = []
        for q in held[:max(0, len(held) - svc.quarantine_keep)]:
            rec = await self.record(svc.name, "quarantine-expired",
                                    f"more than quarantine_keep={svc.quarantine_keep} instances "
                                    f"quarantined; terminating the oldest, {q['instance']}",
                                    instance=q["instance"], provider=q["provider"])
            await self.ctx.provider(q["provider"]).terminate([q["instance"]])
            out.append(rec)
        return out

    def _budget(self, svc: Service, st: _State) -> int:
        t = self.clock()
        while st.launches and t - st.launches[0] >= WINDOW_S:
            st.launches.popleft()
        return max(0, svc.heal_max_per_min - len(st.launches))

    async def _replace(self, svc: Service, routed: tuple[RouterHandle, str] | None,
                       want: dict[str, Any], provider: str, region: str, missing: int,
                       like: list[Instance], reasons: list[str]) -> list[dict[str, Any]]:
        st = self.state[svc.name]
        budget = self._budget(svc, st)
        out: list[dict[str, Any]] = []
        n = min(missing, budget)
        if n < missing:
            t = self.clock()
            if st.flagged_at is None or t - st.flagged_at >= WINDOW_S:
                st.flagged_at = t
                out.append(await self.record(
                    svc.name, "crash-loop",
                    f"image {want['digest']} of service {svc.name} needed more than "
                    f"heal_max_per_min={svc.heal_max_per_min} replacements within "
                    f"{WINDOW_S:g}s on {provider}/{region}; not launching more until the "
                    "window passes: look at the quarantined instances "
                    "('immctl instance list --quarantined')",
                    provider=provider, region=region, digest=want["digest"], missing=missing))
        if n <= 0:
            return out
        image_id = want["artifacts"].get(f"{provider}/{region}")
        if not image_id:
            out.append(await self.record(
                svc.name, "launch-failed", f"no artifact of {want['digest']} in "
                f"{provider}/{region} in the last completed rollout {want['id']}",
                provider=provider, region=region))
            return out
        tags = {TAG_SERVICE: svc.name, TAG_ROLLOUT: want["id"], TAG_DIGEST: want["digest"],
                TAG_SLOT: next((i.tags[TAG_SLOT] for i in like if TAG_SLOT in i.tags), "heal")}
        why = "; ".join(reasons) or f"{provider}/{region} has {missing} fewer instance(s) than " \
                                    "its count"
        rec = await self.record(svc.name, "replace", why, provider=provider, region=region,
                                digest=want["digest"], image_id=image_id, count=n,
                                rollout=want["id"])
        out.append(rec)
        for _ in range(n):
            st.launches.append(self.clock())
        req = LaunchRequest(region=region, image_id=image_id, count=n, tags=tags,
                            client_token=f"heal-{svc.name}-{rec['seq']}", size=svc.size,
                            settings=dict(svc.settings.get("launch", {})))
        try:
            got = await self.ctx.provider(provider).launch(req)
        except NotLeader:
            raise
        except ImmError as e:
            out.append(await self.record(svc.name, "launch-failed",
                                         f"replacement launch on {provider}/{region} failed: "
                                         f"{e.message}", provider=provider, region=region))
            return out
        rec["detail"]["instances"] = [i.id for i in got]
        await self._attach(svc, routed, got)
        return out

    async def _attach(self, svc: Service, routed: tuple[RouterHandle, str] | None,
                      new: list[Instance]) -> None:
        """Add at weight 0, wait for health (health_timeout_s), then give the serving weight."""
        if routed is None or not new:
            return
        router, route = routed
        backends = await router.backends(route)
        weight = max((b.weight for b in backends if b.weight > 0), default=100)
        present = {b.name for b in backends}
        for i in new:
            if i.id not in present and i.address:
                await router.add(route, i.id, i.address)
        ids = {i.id for i in new if i.address}
        if router.checks_health:
            try:
                await router.wait_health(route, sorted(ids), svc.health_timeout_s)
            except HealthTimeout as e:
                log.warning("service %s: replacement(s) %s not healthy within %gs; left out of "
                            "traffic (%s)", svc.name, ", ".join(sorted(ids)),
                            svc.health_timeout_s, e.message)
                return
        await router.set_weights(route, {n: weight for n in ids})
