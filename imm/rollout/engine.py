"""The rollout engine: a journal-first, crash-safe state machine.

Every decision is written to the rollout's journal (and, signed, to the ledger with its actor)
*before* it is acted on; every action is idempotent and finds its instances again by their tags
(``imm:rollout``, ``imm:slot``). After a crash or restart the engine reads the journal, asks the
providers and routers what is really there, and carries on from the first step not marked done,
or finishes a rollback. A failed launch or gate, or an abort, rolls back: the old instances get
their traffic back before any new one is drained, so the route is never left without a healthy
backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..catalog.service import now, query, query_one
from ..errors import BadRequest, Conflict, ImmError, NotFound, PolicyRefused
from ..plugins.base import (
    TAG_DIGEST,
    TAG_ROLLOUT,
    TAG_SERVICE,
    TAG_SLOT,
    Instance,
    LaunchRequest,
    Router,
)
from . import policy
from .plan import make_plan, weights
from .services import STRATEGIES, Service, load_services

if TYPE_CHECKING:
    from ..daemon.core import Daemon

log = logging.getLogger("imm.rollout")
ACTIVE = ("running", "paused", "rolling-back")
TERMINAL = ("completed", "rolled-back", "failed")
POLL_S = 0.2
VIEW_TTL_S = 1.0  # how long status shares one listing of a service's instances and route
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0  # backoff between attempts to finish a rollback


class StepFailed(Exception):
    """A step could not be carried out; the rollout rolls back with this reason."""


class Engine:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wake: dict[str, asyncio.Event] = {}
        self._views: dict[str, tuple[float, tuple[list[Instance], dict[str, Any], str | None]]] = {}
        self.reload_services()

    def reload_services(self) -> None:
        self.services = load_services(self.d.settings.services, set(self.d.providers),
                                      set(self.d.routers))

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none configured"
            raise NotFound(f"no service named {name!r} (services: {known}); declare it under "
                           f"[services.{name}] in the config") from None

    def router(self, svc: Service) -> Router | None:
        return self.d.routers[svc.router] if svc.router else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Bring up every service's route, then resume the rollouts a crash interrupted."""
        for svc in self.services.values():
            router = self.router(svc)
            if router is not None and svc.route:
                try:
                    await asyncio.to_thread(router.start)
                    await asyncio.to_thread(router.ensure_route, svc.route, svc.route_settings)
                except ImmError as e:
                    log.error("service %s: route %s not ready: %s", svc.name, svc.route, e.message)
        rows = await self.d.db.read(
            lambda c: query(c, "SELECT id, service FROM rollouts WHERE state IN (?,?,?)", ACTIVE))
        for r in rows:
            log.info("resuming rollout %s of %s after a restart", r["id"], r["service"])
            self.spawn(r["id"])

    async def shutdown(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        for t in list(self.tasks.values()):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - parked
                pass

    def spawn(self, rid: str) -> None:
        self.wake[rid] = asyncio.Event()
        self.tasks[rid] = asyncio.create_task(self.run(rid), name=f"rollout {rid}")
        self.tasks[rid].add_done_callback(lambda _t: self.tasks.pop(rid, None))

    # -- the store ------------------------------------------------------------------------------

    async def load(self, rid: str) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = query_one(conn, "SELECT * FROM rollouts WHERE id=?", (rid,))
            if row is None:
                raise NotFound(f"no rollout {rid!r}; 'immctl rollout list' shows them")
            row["params"] = json.loads(row["params"])
            row["journal"] = query(conn, "SELECT seq, step, action, detail, actor, at, "
                                         "ledger_index FROM rollout_journal WHERE rollout=? "
                                         "ORDER BY seq", (rid,))
            for j in row["journal"]:
                j["detail"] = json.loads(j["detail"])
            return row
        return await self.d.db.read(read)

    def _journal(self, conn: sqlite3.Connection, rid: str, step: str, action: str,
                 detail: Mapping[str, Any], actor: str,
                 state: str | None = None, error: str | None = None) -> dict[str, Any]:
        r = query_one(conn, "SELECT service FROM rollouts WHERE id=?", (rid,))
        assert r is not None
        seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM rollout_journal WHERE rollout=?",
                           (rid,)).fetchone()[0]
        body = {"type": "rollout", "rollout": rid, "service": r["service"], "seq": seq,
                "step": step, "action": action, "detail": dict(detail), "actor": actor,
                "time": now()}
        env, idx, text = self.d.catalog.append(conn, "rollout", body)
        conn.execute("INSERT INTO rollout_journal VALUES (?,?,?,?,?,?,?,?,?)",
                     (rid, seq, step, action, json.dumps(body["detail"], sort_keys=True), actor,
                      body["time"], idx, text))
        sets, args = ["updated_at=?", "step=?"], [body["time"], step]
        if state:
            sets.append("state=?")
            args.append(state)
            if state in TERMINAL:
                sets.append("finished_at=?")
                args.append(body["time"])
        if error is not None:
            sets.append("error=?")
            args.append(error)
        conn.execute(f"UPDATE rollouts SET {', '.join(sets)} WHERE id=?", (*args, rid))  # noqa: S608
        self.d.catalog.checkpoint(conn)
        return body

    async def journal(self, rid: str, step: str, action: str, detail: Mapping[str, Any],
                      actor: str = "immd", state: str | None = None,
                      error: str | None = None) -> None:
        body = await self.d.db.write(self._journal, rid, step, action, detail, actor, state, error)
        try:
            await self.d.plugins.call_all("imm_rollout_event", event=body)
        except Exception:  # noqa: BLE001 - an observer must not break a rollout
            log.exception("imm_rollout_event hook failed")

    # -- operator verbs -------------------------------------------------------------------------

    async def start(self, actor: str, service_name: str, ref: str, strategy: str | None = None,
                    undo_of: str | None = None) -> dict[str, Any]:
        svc = self.service(service_name)
        strategy = strategy or svc.strategy
        if strategy not in STRATEGIES:
            raise BadRequest(f"strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        cat = self.d.catalog
        digest = await self.d.db.read(cat.resolve, ref)
        checked = await self.d.db.read(policy.check, cat, self.d.keyring, svc, digest)
        image = await self.d.db.read(cat.show, digest)
        rid = f"{svc.name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
        for verdict in await self.d.plugins.call_all(
                "imm_policy_check", image=image, service=svc.to_dict(),
                rollout={"id": rid, "strategy": strategy, "actor": actor}):
            if isinstance(verdict, str):
                raise policy.refuse("plugin", verdict, image=digest)
        live = await self.service_instances(svc)
        counts: dict[str, int] = {}
        for i in live:
            if i.tags.get(TAG_DIGEST):
                counts[i.tags[TAG_DIGEST]] = counts.get(i.tags[TAG_DIGEST], 0) + 1
        previous = max(counts, key=lambda k: counts[k]) if counts else None
        plan = make_plan(svc, strategy)
        params = {"plan": plan, "artifacts": checked["artifacts"], "image": image["name"] + "@"
                  + image["version"], "undo_of": undo_of, "promote": False}

        def create(conn: sqlite3.Connection) -> None:
            active = query_one(conn, "SELECT id, state FROM rollouts WHERE service=? AND state IN "
                                     "(?,?,?)", (svc.name, *ACTIVE))
            if active:
                raise Conflict(f"rollout {active['id']} of service {svc.name} is {active['state']};"
                               " one rollout per service at a time: wait for it, or abort it",
                               detail={"active": active["id"]})
            t = now()
            conn.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (rid, svc.name, strategy, digest, previous, "running", None,
                          json.dumps(params, sort_keys=True), actor, t, t, None, None))
            self._journal(conn, rid, "start", "start", {
                "image": digest, "previous": previous, "strategy": strategy,
                "plan": [s["name"] for s in plan], "undo_of": undo_of}, actor)

        await self.d.db.write(create)
        log.info("rollout %s of %s started by %s: %s (%s), %s, %d steps", rid, svc.name, actor,
                 params["image"], digest[:19], strategy, len(plan))
        self.spawn(rid)
        return await self.status(rid)

    async def set_state(self, actor: str, rid: str, verb: str) -> dict[str, Any]:
        r = await self.load(rid)
        state = r["state"]
        if state in TERMINAL:
            raise Conflict(f"rollout {rid} is already {state}; nothing to {verb}")
        moves = {"pause": ("running", "paused"), "resume": ("paused", "running")}
        if verb in moves:
            want, to = moves[verb]
            if state != want:
                raise Conflict(f"rollout {rid} is {state}; only a {want} rollout can be {verb}d")
            await self.journal(rid, verb, verb, {}, actor, state=to)
        elif verb == "promote":
            if state not in ("running", "paused"):
                raise Conflict(f"rollout {rid} is {state}; only a running rollout can be promoted")

            def promote(conn: sqlite3.Connection) -> None:
                p = json.loads(conn.execute("SELECT params FROM rollouts WHERE id=?",
                                            (rid,)).fetchone()[0])
                p["promote"] = True
                conn.execute("UPDATE rollouts SET params=? WHERE id=?", (json.dumps(p), rid))
                self._journal(conn, rid, "promote", "promote", {}, actor, state="running")
            await self.d.db.write(promote)
        elif verb == "abort":
            if state == "rolling-back":
                raise Conflict(f"rollout {rid} is already rolling back")
            await self.journal(rid, "abort", "abort", {}, actor, state="rolling-back",
                               error=f"aborted by {actor}")
        else:
            raise BadRequest(f"unknown verb {verb!r}")
        if rid in self.wake:
            self.wake[rid].set()
        if rid not in self.tasks:
            self.spawn(rid)
        return await self.status(rid)

    async def undo(self, actor: str, service_name: str) -> dict[str, Any]:
        svc = self.service(service_name)
        last = await self.d.db.read(lambda c: query_one(
            c, "SELECT id, previous_digest FROM rollouts WHERE service=? AND state='completed' "
               "ORDER BY created_at DESC, rowid DESC LIMIT 1", (svc.name,)))
        if last is None or not last["previous_digest"]:
            raise Conflict(f"service {svc.name} has no completed rollout with a previous image "
                           "to go back to")
        try:
            return await self.start(actor, svc.name, last["previous_digest"], undo_of=last["id"])
        except PolicyRefused as e:
            raise PolicyRefused(f"undo of {last['id']} to {last['previous_digest'][:19]}: "
                                f"{e.message}", detail=e.detail) from None

    # -- reading state --------------------------------------------------------------------------

    async def service_instances(self, svc: Service, rollout: str | None = None) -> list[Instance]:
        tags = {TAG_SERVICE: svc.name}
        if rollout:
            tags[TAG_ROLLOUT] = rollout
        out: list[Instance] = []
        for p in sorted({t.provider for t in svc.targets}):
            got = await self.d.provider_call(p, "list_instances", tags)
            out.extend(i for i in got if i.state in ("pending", "running"))
        return out

    async def live_view(self, svc: Service) -> tuple[list[Instance], dict[str, Any], str | None]:
        """The service's instances and route backends, as status shows them.

        Watchers poll status several times a second; the view is shared and kept for
        VIEW_TTL_S so they do not turn into a stream of cloud API calls competing with the
        rollout for the provider's concurrency limit. The engine's own steps never use it.
        """
        cached = self._views.get(svc.name)
        if cached is not None and time.monotonic() - cached[0] < VIEW_TTL_S:
            return cached[1]
        backends: dict[str, Any] = {}
        router = self.router(svc)
        if router is not None and svc.route:
            try:
                backends = {b.name: b for b in await asyncio.to_thread(router.backends,
                                                                        svc.route)}
            except ImmError:
                backends = {}
        error: str | None = None
        try:
            live = await self.service_instances(svc)
        except ImmError as e:
            live, error = [], e.message
        view = (live, backends, error)
        self._views[svc.name] = (time.monotonic(), view)
        return view

    async def status(self, rid: str) -> dict[str, Any]:
        r = await self.load(rid)
        done = {j["step"] for j in r["journal"] if j["action"] == "done"}
        begun = {j["step"] for j in r["journal"] if j["action"] == "begin"}
        plan = [{**s, "status": "done" if s["name"] in done else
                 "running" if s["name"] in begun else "pending"} for s in r["params"]["plan"]]
        svc = self.services.get(r["service"])
        instances: list[dict[str, Any]] = []
        instances_error: str | None = None
        if svc is not None and r["state"] not in TERMINAL:
            live, backends, instances_error = await self.live_view(svc)
            for i in live:
                b = backends.get(i.id)
                instances.append({"id": i.id, "digest": i.tags.get(TAG_DIGEST),
                                  "new": i.tags.get(TAG_ROLLOUT) == rid,
                                  "weight": b.weight if b else None,
                                  "healthy": b.healthy if b else None,
                                  "state": b.state if b else None})
        created = datetime.strptime(r["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        end = (datetime.strptime(r["finished_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
               if r["finished_at"] else datetime.now(UTC))
        return {
            "id": rid, "service": r["service"], "strategy": r["strategy"], "state": r["state"],
            "image": r["digest"], "image_ref": r["params"].get("image"),
            "previous": r["previous_digest"], "step": r["step"], "error": r["error"],
            "actor": r["actor"], "created_at": r["created_at"], "finished_at": r["finished_at"],
            "elapsed_s": int((end - created).total_seconds()), "plan": plan,
            "instances": instances, "instances_error": instances_error, "journal": r["journal"],
        }

    # -- running --------------------------------------------------------------------------------

    async def run(self, rid: str) -> None:
        backoff = RETRY_MIN_S
        try:
            while True:
                r = await self.load(rid)
                state = r["state"]
                if state in TERMINAL:
                    return
                if state == "paused":
                    self.wake[rid].clear()
                    await self.wake[rid].wait()
                    continue
                if state == "rolling-back":
                    try:
                        await self.rollback(r)
                        backoff = RETRY_MIN_S
                    except ImmError as e:
                        # a cloud or router outage: the rollback is idempotent, so try again
                        log.warning("rollout %s: rollback not finished (%s); retrying in %.1fs",
                                    rid, e.message, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RETRY_MAX_S)
                    continue
                try:
                    finished = await self.advance(r)
                except (StepFailed, ImmError) as e:
                    reason = e.message if isinstance(e, ImmError) else str(e)
                    log.warning("rollout %s failed: %s; rolling back", rid, reason)
                    await self.journal(rid, r["step"] or "start", "fail", {"reason": reason},
                                       state="rolling-back", error=reason)
                    continue
                if finished:
                    await self.journal(rid, "complete", "complete", {}, state="completed")
                    log.info("rollout %s of %s completed: it runs %s", rid, r["service"],
                             r["params"].get("image"))
                    return
        except asyncio.CancelledError:
            log.info("rollout %s parked at shutdown; it resumes when immd starts", rid)
            raise
        except Exception as e:
            log.exception("rollout %s: internal error", rid)
            try:
                await self.journal(rid, "error", "fail", {"reason": f"internal error: {e}"},
                                   state="rolling-back", error=f"internal error: {e}")
            except Exception:  # noqa: BLE001
                log.exception("rollout %s: could not record the failure", rid)
                return
            asyncio.get_running_loop().call_later(RETRY_MAX_S, self.spawn, rid)

    def _test_kill(self, step: str, when: str) -> None:
        """Test-only: IMM_TEST_KILL_AT=<step name>:<before|after> SIGKILLs immd right there."""
        if os.environ.get("IMM_TEST_KILL_AT") == f"{step}:{when}":
            log.warning("IMM_TEST_KILL_AT=%s:%s: killing immd", step, when)
            os.kill(os.getpid(), signal.SIGKILL)

    async def advance(self, r: dict[str, Any]) -> bool:
        """Run the steps not yet done; True when all are done, False when paused/aborted."""
        rid = r["id"]
        done = {j["step"] for j in r["journal"] if j["action"] == "done"}
        decided = {j["step"]: j["detail"] for j in r["journal"] if j["action"] == "begin"}
        svc = self.service(r["service"])
        for step in r["params"]["plan"]:
            name = step["name"]
            if name in done:
                continue
            cur = await self.load(rid)
            if cur["state"] != "running":
                return False
            promote = cur["params"].get("promote")
            if promote and (step["op"] in ("pause", "bake") or
                            (step["op"] == "shift" and step["pct"] not in (100, "even"))):
                await self.journal(rid, name, "done", {"skipped": "promoted"})
                continue
            decision = decided.get(name)
            if decision is None:
                decision = {**await self.decide(svc, r, step), "at_ms": int(time.time() * 1000)}
                await self.journal(rid, name, "begin", decision)
            self._test_kill(name, "before")
            result = await self.execute(svc, r, step, decision)
            if "interrupted" in result:
                return False  # paused or aborted while waiting: not done, resume or roll back
            self._test_kill(name, "after")
            await self.journal(rid, name, "done", result)
        return True

    async def decide(self, svc: Service, r: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        """The concrete decision of a step, journalled before it is acted on."""
        if step["op"] == "retire":
            old = [i for i in await self.service_instances(svc)
                   if i.tags.get(TAG_ROLLOUT) != r["id"]]
            old.sort(key=lambda i: (i.launched_at, i.id))
            n = len(old) if step["count"] == "all" else min(int(step["count"]), len(old))
            return {"retire": [{"id": i.id, "provider": i.provider} for i in old[:n]]}
        if step["op"] == "launch":
            return {"tokens": [f"{r['id']}-b{step['batch']}-{t.provider}-{t.region}"
                               for t in svc.targets]}
        return {}

    async def execute(self, svc: Service, r: dict[str, Any], step: dict[str, Any],
                      decision: dict[str, Any]) -> dict[str, Any]:
        op = step["op"]
        if op == "launch":
            return await self.launch(svc, r, step)
        if op == "attach":
            return await self.attach(svc, r, f"b{step['batch']}", step)
        if op == "shift":
            return await self.shift(svc, r, step["pct"])
        if op in ("pause", "bake"):
            return await self.pause(svc, r, step)
        if op == "retire":
            return await self.retire(svc, r, decision["retire"])
        raise StepFailed(f"unknown step {op!r}")

    async def launch(self, svc: Service, r: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        slots = [(t.provider, t.region) for t in svc.targets for _ in range(t.count)]
        want: dict[tuple[str, str], int] = {}
        for s in step["slots"]:
            want[slots[s]] = want.get(slots[s], 0) + 1
        launched = []
        for (provider, region), count in want.items():
            image_id = r["params"]["artifacts"][f"{provider}/{region}"]
            req = LaunchRequest(
                region=region, image_id=image_id, count=count,
                tags={TAG_SERVICE: svc.name, TAG_ROLLOUT: r["id"], TAG_SLOT: f"b{step['batch']}",
                      TAG_DIGEST: r["digest"]},
                client_token=f"{r['id']}-b{step['batch']}-{provider}-{region}", size=svc.size,
                settings=dict(svc.settings.get("launch", {})))
            try:
                got = await self.d.provider_call(provider, "launch", req)
            except ImmError as e:
                raise StepFailed(f"launch on {provider}/{region} failed: {e.message}") from None
            launched += [i.id for i in got]
        return {"instances": launched}

    async def attach(self, svc: Service, r: dict[str, Any], slot: str,
                     step: dict[str, Any]) -> dict[str, Any]:
        new = [i for i in await self.service_instances(svc, r["id"])
               if i.tags.get(TAG_SLOT) == slot]
        router = self.router(svc)
        if router is None or not svc.route:
            return {"instances": [i.id for i in new]}
        route = svc.route
        present = {b.name for b in await asyncio.to_thread(router.backends, route)}
        for i in new:
            if i.id not in present:
                if not i.address:
                    raise StepFailed(f"instance {i.id} has no address the router can reach")
                await asyncio.to_thread(router.add, route, i.id, i.address)
        deadline = time.monotonic() + svc.health_timeout_s
        ids = {i.id for i in new}
        while router.checks_health:
            health = await asyncio.to_thread(router.health, route)
            bad = [n for n in ids if health.get(n) is not True]
            if not bad:
                break
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{len(bad)} of {len(ids)} new instance(s) did not pass the health check of "
                    f"route {route} within {svc.health_timeout_s:g}s: {', '.join(sorted(bad))}")
            cur = await self.load(r["id"])
            if cur["state"] != "running":
                return {"interrupted": cur["state"]}
            await asyncio.sleep(POLL_S)
        await self.gate(svc, r, step, new)
        return {"instances": sorted(ids), "healthy": True}

    async def gate(self, svc: Service, r: dict[str, Any], step: dict[str, Any],
                   instances: list[Instance]) -> None:
        view = {"id": r["id"], "service": svc.name, "image": r["digest"], "strategy": r["strategy"]}
        verdicts = await self.d.plugins.call_all(
            "imm_health_gate", rollout=view, step={"name": step["name"], "op": step["op"]},
            instances=[i.to_dict() for i in instances])
        for v in verdicts:
            if isinstance(v, str):
                raise StepFailed(f"health gate at {step['name']} failed: {v}")

    async def shift(self, svc: Service, r: dict[str, Any], pct: int | str) -> dict[str, Any]:
        router = self.router(svc)
        if router is None or not svc.route:
            return {}
        backends = await asyncio.to_thread(router.backends, svc.route)
        mine = {i.id for i in await self.service_instances(svc, r["id"])}
        new = [b.name for b in backends if b.name in mine]
        old = [b.name for b in backends if b.name not in mine and b.state != "maint"]
        if pct == "even":
            w = {n: 100 for n in new}
        else:
            w = weights(int(pct), new, old)
        try:
            await asyncio.to_thread(router.set_weights, svc.route, w)
        except ImmError as e:
            raise StepFailed(f"setting weights on route {svc.route} failed: {e.message}") from None
        return {"weights": w}

    async def pause(self, svc: Service, r: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(step.get("seconds", 0))
        while time.monotonic() < deadline:
            cur = await self.load(r["id"])
            if cur["state"] != "running":
                return {"interrupted": cur["state"]}  # paused or aborted: the wait is not done
            if cur["params"].get("promote"):
                break
            await asyncio.sleep(POLL_S)
        if step["op"] == "pause":
            mine = await self.service_instances(svc, r["id"])
            router = self.router(svc)
            if router is not None and svc.route and router.checks_health:
                health = await asyncio.to_thread(router.health, svc.route)
                sick = [i.id for i in mine if health.get(i.id) is not True]
                if sick:
                    raise StepFailed(f"new instance(s) unhealthy after {step['name']}: "
                                     + ", ".join(sick))
            await self.gate(svc, r, step, mine)
        return {}

    async def _terminate(self, items: list[dict[str, str]]) -> None:
        by_provider: dict[str, list[str]] = {}
        for it in items:
            by_provider.setdefault(it["provider"], []).append(it["id"])
        for provider, ids in by_provider.items():
            await self.d.provider_call(provider, "terminate", ids)

    async def retire(self, svc: Service, r: dict[str, Any],
                     items: list[dict[str, str]]) -> dict[str, Any]:
        router = self.router(svc)
        ids = {it["id"] for it in items}
        if router is not None and svc.route and ids:
            route = svc.route
            backends = await asyncio.to_thread(router.backends, route)
            serving = [b for b in backends if b.name not in ids and b.weight > 0
                       and (b.healthy or (b.healthy is None and not router.checks_health))]
            if not serving:
                raise StepFailed(f"refusing to retire {len(ids)} instance(s): route {route} would "
                                 "be left without a healthy backend")
            present = {b.name for b in backends}
            for name in sorted(ids & present):
                await asyncio.to_thread(router.drain, route, name)
            await self._remove(router, route, sorted(ids & present), items)
        else:
            await self._terminate(items)
        return {"retired": sorted(ids)}

    async def _remove(self, router: Router, route: str, names: list[str],
                      items: list[dict[str, str]]) -> None:
        """Remove drained backends, then terminate the instances.

        A router may refuse to delete a backend whose sessions outlived the drain timeout (it
        stays in maintenance, taking no traffic); terminating the instance ends those sessions,
        so the removal is tried again afterwards.
        """
        stuck = []
        for name in names:
            try:
                await asyncio.to_thread(router.remove, route, name)
            except ImmError as e:
                log.warning("route %s: %s; retrying after terminating it", route, e.message)
                stuck.append(name)
        await self._terminate(items)
        for name in stuck:
            await asyncio.to_thread(router.remove, route, name)

    async def rollback(self, r: dict[str, Any]) -> None:
        """Give the old instances their traffic back, then remove every new one. Idempotent."""
        rid = r["id"]
        svc = self.service(r["service"])
        await self.journal(rid, "rollback", "begin", {"reason": r["error"]})
        router = self.router(svc)
        everything = await self.service_instances(svc)
        new = [i for i in everything if i.tags.get(TAG_ROLLOUT) == rid
               and i.tags.get(TAG_SLOT) != "rollback"]
        old = [i for i in everything if i not in new]
        missing = svc.count - len(old)
        if missing > 0 and r["previous_digest"] and any(
                j["action"] == "done" and j["step"].endswith("-retire") for j in r["journal"]):
            old += await self._relaunch_previous(svc, r, missing)
        if router is not None and svc.route:
            route = svc.route
            present = {b.name: b for b in await asyncio.to_thread(router.backends, route)}
            for i in old:
                if i.id not in present and i.address:
                    await asyncio.to_thread(router.add, route, i.id, i.address)
            if old:
                deadline = time.monotonic() + svc.health_timeout_s
                while router.checks_health and time.monotonic() < deadline:
                    health = await asyncio.to_thread(router.health, route)
                    if any(health.get(i.id) for i in old):
                        break
                    await asyncio.sleep(POLL_S)
                health = await asyncio.to_thread(router.health, route)
                healthy_old = [i.id for i in old
                               if health.get(i.id) or not router.checks_health]
                w = {i: 100 for i in healthy_old}
                w.update({i.id: 0 for i in new if i.id in present})
                if healthy_old:
                    await asyncio.to_thread(router.set_weights, route, w)
            for i in new:
                if i.id in present:
                    await asyncio.to_thread(router.drain, route, i.id)
            await self._remove(router, route, [i.id for i in new],
                               [{"id": i.id, "provider": i.provider} for i in new])
        else:
            await self._terminate([{"id": i.id, "provider": i.provider} for i in new])
        self._test_kill("rollback", "after")
        await self.journal(rid, "rollback", "done", {"removed": sorted(i.id for i in new)},
                           state="rolled-back")
        log.info("rollout %s of %s rolled back: %d new instance(s) removed", rid, svc.name,
                 len(new))

    async def _relaunch_previous(self, svc: Service, r: dict[str, Any],
                                 missing: int) -> list[Instance]:
        prev = r["previous_digest"]
        arts = await self.d.db.read(lambda c: {
            f"{a['provider']}/{a['region']}": a["image_id"] for a in query(
                c, "SELECT provider, region, image_id FROM artifacts WHERE digest=?", (prev,))})
        t = svc.targets[0]
        image_id = arts.get(f"{t.provider}/{t.region}")
        if image_id is None:
            return []
        req = LaunchRequest(region=t.region, image_id=image_id, count=missing,
                            tags={TAG_SERVICE: svc.name, TAG_ROLLOUT: r["id"],
                                  TAG_SLOT: "rollback", TAG_DIGEST: prev},
                            client_token=f"{r['id']}-rollback", size=svc.size)
        return list(await self.d.provider_call(t.provider, "launch", req))

    async def list(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        sql = ("SELECT id, service, strategy, state, digest, previous_digest, step, actor, "  # noqa: S608
               "created_at, finished_at, error FROM rollouts "
               + ("WHERE service=? " if service else "") + "ORDER BY created_at DESC, rowid DESC "
               "LIMIT ?")
        args = (service, limit) if service else (limit,)
        return await self.d.db.read(lambda c: query(c, sql, args))
