"""The rollout engine: a journal-first, crash-safe state machine.

Every decision is written to the rollout's journal (and, signed, to the ledger with its actor)
*before* it is acted on; every action is idempotent and finds its instances again by their tags
(``imm:rollout``, ``imm:slot``). After a crash or restart the engine reads the journal, asks the
providers and routers what is really there, and carries on from the first step not marked done,
or finishes a rollback. A failed launch or gate, or an abort, rolls back: the old instances get
their traffic back before any new one is drained, so the route is never left without a healthy
backend.

The engine is handed a :class:`~imm.context.Context` and nothing else. Its parts, one concern
each: ``states`` (the vocabulary), ``journal`` (the store), ``fleet`` (the live view),
``steps`` (the step actions), ``rollback``, ``verbs`` (what operators ask); this module runs
each rollout as a task and owns their lifecycle:

    engine = Engine(ctx)
    await engine.startup()      # routes up, interrupted rollouts resumed
    await engine.start("alice", "web", "web@1.2")
    await engine.shutdown()     # rollouts parked, resumed at the next startup
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from ..context import Context
from ..errors import ImmError, NotLeader
from ..plugins.base import Instance
from ..store import fence
from .fleet import Fleet
from .journal import Journal
from .rollback import Rollback
from .services import Service
from .states import (
    BEGIN,
    COMPLETED,
    DONE,
    FAIL,
    OP_LAUNCH,
    OP_RETIRE,
    OP_SHIFT,
    PAUSED,
    ROLLING_BACK,
    RUNNING,
    TERMINAL,
    WAITS,
    StepFailed,
)
from .steps import Rollout, Steps
from .verbs import Verbs

log = logging.getLogger("imm.rollout")

__all__ = ["Engine", "StepFailed"]


def _test_kill(step: str, when: str) -> None:
    """Test-only: IMM_TEST_KILL_AT=<step name>:<before|after> SIGKILLs immd right there."""
    if os.environ.get("IMM_TEST_KILL_AT") == f"{step}:{when}":
        log.warning("IMM_TEST_KILL_AT=%s:%s: killing immd", step, when)
        os.kill(os.getpid(), signal.SIGKILL)


class Engine:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.journal = Journal(ctx)
        self.fleet = Fleet(ctx)
        self.wake: dict[str, asyncio.Event] = {}
        self.steps = Steps(ctx, self.journal, self.fleet, self.wake)
        self.rollback = Rollback(ctx, self.journal, self.fleet, self.steps, _test_kill)
        self.verbs = Verbs(ctx, self.journal, self.fleet, self.kick)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._retries: set[asyncio.TimerHandle] = set()
        self._forwards: set[asyncio.Task[None]] = set()

    # -- services -----------------------------------------------------------------------------

    @property
    def services(self) -> dict[str, Service]:
        return self.fleet.services

    @services.setter
    def services(self, services: dict[str, Service]) -> None:
        self.fleet.services = services

    def service(self, name: str) -> Service:
        return self.fleet.service(name)

    async def service_instances(self, svc: Service) -> list[Instance]:
        return await self.fleet.instances(svc)

    # -- operator verbs (verbs.py) --------------------------------------------------------------

    async def start(self, actor: str, service: str, ref: str,
                    strategy: str | None = None) -> dict[str, Any]:
        return await self.verbs.start(actor, service, ref, strategy)

    async def set_state(self, actor: str, rid: str, verb: str) -> dict[str, Any]:
        return await self.verbs.set_state(actor, rid, verb)

    async def undo(self, actor: str, service: str) -> dict[str, Any]:
        return await self.verbs.undo(actor, service)

    async def status(self, rid: str) -> dict[str, Any]:
        return await self.verbs.status(rid)

    async def analyses(self, rid: str) -> list[dict[str, Any]]:
        return await self.verbs.analyses(rid)

    async def changed(self, rid: str, timeout_s: float) -> bool:
        """Wait for the rollout's next journal entry (True) or ``timeout_s`` (False)."""
        return await self.journal.changed(rid, timeout_s)

    async def list(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.verbs.list(service, limit)

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Bring up every service's route, then resume the rollouts a crash interrupted."""
        for svc in self.services.values():
            try:
                await self.fleet.bring_up(svc)
            except ImmError as e:
                # tried again before the service's next step, rollback or repair
                log.error("service %s: route %s not ready: %s", svc.name, svc.route, e.message)
        await self.steps.analysis.write_targets()
        for r in await self.journal.active():
            log.info("resuming rollout %s of %s after a restart", r["id"], r["service"])
            self.spawn(r["id"])

    async def shutdown(self) -> None:
        """Park every rollout (its journal says where it stopped; startup resumes it)."""
        for h in self._retries:
            h.cancel()
        self._retries.clear()
        # an adoption still looking at the journal would start rollouts after this returns
        for f in list(self._forwards):
            f.cancel()
        for t in self.tasks.values():
            t.cancel()
        await self.steps.analysis.stop_all_background()
        for t in [*self._forwards, *self.tasks.values()]:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - parked
                pass

    def spawn(self, rid: str) -> None:
        self.wake[rid] = asyncio.Event()
        task = asyncio.create_task(self.run(rid), name=f"rollout {rid}")
        self.tasks[rid] = task

        def done(t: asyncio.Task[None]) -> None:
            if self.tasks.get(rid) is t:
                del self.tasks[rid]
        task.add_done_callback(done)

    def kick(self, rid: str) -> None:
        """A verb changed the rollout: wake its task, or start one if it has none. On a
        follower (several immd on one database) the leader is asked to instead: the verb is in
        the journal already, and only the leader runs rollouts."""
        if not self.ctx.cluster.is_leader():
            task = asyncio.get_running_loop().create_task(self.ctx.cluster.wake(rid))
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)
            return
        self.wake_local(rid)

    def wake_local(self, rid: str) -> None:
        """Wake the rollout's task or start one (the leader, asked by a follower: ``"*"`` is
        every active rollout, after the leader could not listen for a while)."""
        if rid == "*":
            task = asyncio.get_running_loop().create_task(self.adopt())
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)
            return
        if rid in self.wake:
            self.wake[rid].set()
        if rid not in self.tasks:
            self.spawn(rid)

    async def adopt(self) -> None:
        """Look at every active rollout: wake the ones running here, start the others."""
        for r in await self.journal.active():
            if self.ctx.cluster.is_leader():
                self.wake_local(r["id"])

    # -- running --------------------------------------------------------------------------------

    async def run(self, rid: str) -> None:
        timings = self.ctx.timings
        backoff = timings.retry_min_s
        if not self.ctx.cluster.is_leader():
            return  # a follower never runs a rollout (it was parked as this immd stepped down)
        # every write of this task is the leader's of this epoch: the store refuses it once
        # another immd leads (fencing, imm/store/lease.py)
        fence(self.ctx.cluster.fence)
        try:
            while True:
                # cleared before the state is read, so a verb that lands while it is being read
                # (resume, promote) is not lost: its wake-up stays set for the wait below
                self.wake[rid].clear()
                r = await self.journal.load(rid)
                state = r["state"]
                if state in TERMINAL:
                    return
                if state == PAUSED:
                    await self.wake[rid].wait()
                    continue
                if state == ROLLING_BACK:
                    try:
                        await self.steps.analysis.stop_background(rid)
                        await self.rollback.run(r)
                        await self.steps.analysis.write_targets()
                        backoff = timings.retry_min_s
                    except NotLeader:
                        raise
                    except ImmError as e:
                        # a cloud or router outage: the rollback is idempotent, so try again
                        log.warning("rollout %s: rollback not finished (%s); retrying in %.1fs",
                                    rid, e.message, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, timings.retry_max_s)
                    continue
                try:
                    finished = await self.advance(r)
                except NotLeader:
                    raise
                except (StepFailed, ImmError) as e:
                    reason = e.message if isinstance(e, ImmError) else str(e)
                    log.warning("rollout %s failed: %s; rolling back", rid, reason)
                    await self.steps.analysis.stop_background(rid)
                    at = (await self.journal.load(rid))["step"]  # the step begun last
                    await self.journal.record(rid, at or "start", FAIL,
                                              {"reason": reason}, state=ROLLING_BACK,
                                              error=reason)
                    continue
                if finished:
                    await self.steps.analysis.stop_background(rid)
                    await self.journal.record(rid, "complete", "complete", {}, state=COMPLETED)
                    log.info("rollout %s of %s completed: it runs %s", rid, r["service"],
                             r["params"].get("image"))
                    await self.steps.analysis.write_targets()
                    return
        except asyncio.CancelledError:
            log.info("rollout %s parked at shutdown; it resumes when immd starts", rid)
            raise
        except NotLeader as e:
            # another immd leads now and carries the rollout on from the journal
            log.warning("rollout %s: stopped here: %s", rid, e.message)
            self.ctx.cluster.refused(e.message)
            return
        except Exception as e:
            log.exception("rollout %s: internal error", rid)
            try:
                await self.journal.record(rid, "error", FAIL,
                                          {"reason": f"internal error: {e}"},
                                          state=ROLLING_BACK, error=f"internal error: {e}")
            except Exception:  # noqa: BLE001
                log.exception("rollout %s: could not record the failure", rid)
                return
            self._retry_later(rid)

    def _retry_later(self, rid: str) -> None:
        """Start the rollout again after ``retry_max_s`` (it is now rolling back)."""
        def again() -> None:
            self._retries.discard(handle)
            if rid not in self.tasks and self.ctx.cluster.is_leader():
                self.spawn(rid)

        handle = asyncio.get_running_loop().call_later(self.ctx.timings.retry_max_s, again)
        self._retries.add(handle)

    async def advance(self, r: Rollout) -> bool:
        """Run the steps not yet done; True when all are done, False when paused/aborted."""
        rid = r["id"]
        done = {j["step"] for j in r["journal"] if j["action"] == DONE}
        decided = {j["step"]: j["detail"] for j in r["journal"] if j["action"] == BEGIN}
        svc = self.service(r["service"])
        await self.fleet.ready(svc)
        for step in r["params"]["plan"]:
            name = step["name"]
            if name in done:
                continue
            cur = await self.journal.load(rid)
            if cur["state"] != RUNNING:
                return False
            if any(s["op"] == OP_SHIFT and s["name"] in done for s in r["params"]["plan"]):
                self.steps.analysis.ensure_background(svc, r)  # traffic has reached the new set
                self.steps.analysis.check_background(rid)
            # promote skips the waits and partial shifts not yet begun; one begun before a
            # restart is under way: its wait is cut short, its gate and analyses still run
            if name not in decided and cur["params"].get("promote") and (
                    step["op"] in WAITS or (step["op"] == OP_SHIFT
                                            and step["pct"] not in (100, "even"))):
                await self.journal.record(rid, name, DONE, {"skipped": "promoted"})
                continue
            decision = decided.get(name)
            if decision is None:
                decision = {**await self.steps.decide(svc, r, step),
                            "at_ms": int(time.time() * 1000)}
                await self.journal.record(rid, name, BEGIN, decision)
            _test_kill(name, "before")
            result = await self.steps.execute(svc, r, step, decision)
            if "interrupted" in result:
                return False  # paused or aborted while waiting: not done, resume or roll back
            _test_kill(name, "after")
            await self.journal.record(rid, name, DONE, result)
            done.add(name)
            if step["op"] in (OP_LAUNCH, OP_RETIRE):
                await self.steps.analysis.write_targets()  # Prometheus sees the new fleet
        return True
