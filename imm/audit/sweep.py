"""Audit sweeps: list every instance on every provider, judge each, record what changed.

Providers are listed concurrently through the context's provider handles (each chunk of a
paginated listing is fetched in a worker thread under the provider's concurrency limit, so a
100k listing never sits in memory or on the event loop). Each chunk is judged and written in
one transaction on the database's writer thread (``record.apply_chunk``); between chunks the
loop serves other requests.

After a provider's listing completes, its observations not seen in this sweep are closed and
their findings resolved (the instance is gone). A provider whose listing failed keeps its
observations open: not seen is not gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..context import Context, ProviderHandle
from ..errors import ConfigError, ImmError, NotLeader
from ..plugins.base import Feature, Instance
from ..store import fence
from .facts import CatalogFacts, Observed, RolloutLookup
from .record import (
    CHUNK,
    ChunkResult,
    SweepRun,
    abort_stale,
    apply_chunk,
    close_unseen,
    finish_sweep,
    new_sweep,
    sweep_row,
)

SCHEDULE_TICK_S = 5.0  # how often the scheduler looks at the (reloadable) interval
SCHEDULED_ACTOR = "immd (scheduled audit)"
log = logging.getLogger("imm.audit")


def _message(e: BaseException) -> str:
    return e.message if isinstance(e, ImmError) else f"{type(e).__name__}: {e}"


class Auditor:
    """The audit: one sweep at a time, on demand or every ``[audit] interval_s`` seconds.

    The composition root builds it with the context and the rollout package's lookups, calls
    :meth:`start` before serving and :meth:`stop` at shutdown.
    """

    def __init__(self, ctx: Context, rollouts: RolloutLookup, chunk: int = CHUNK) -> None:
        self.ctx = ctx
        self.rollouts = rollouts
        self.chunk = chunk
        self.task: asyncio.Task[None] | None = None
        self.sweep_id: int | None = None
        self.progress: dict[str, Any] = {}
        self._schedule: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def interval(self) -> float:
        """``[audit] interval_s``: seconds between scheduled sweeps; 0 or absent: none."""
        return audit_interval(self.ctx.settings)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the interval (a bad value fails start-up, naming it), mark sweeps a previous
        immd left running as aborted, and start the schedule."""
        self.interval()
        await self.recover()
        self._schedule = asyncio.create_task(self.schedule(), name="audit-schedule")

    async def stop(self) -> None:
        """Stop the schedule and any running sweep (its row says it was aborted)."""
        for task in (self._schedule, self.task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._schedule = None

    async def recover(self) -> None:
        """Sweeps a previous immd left running can never finish; say so."""
        n = await self.ctx.store.write(abort_stale)
        if n:
            log.warning("marked %d audit sweep(s) left running by a previous immd as aborted", n)

    # -- sweeps -------------------------------------------------------------------------------

    async def start_sweep(self, actor: str) -> tuple[int, bool]:
        """Start a sweep unless one runs; returns (sweep id, whether this call started it)."""
        if self.running:
            assert self.sweep_id is not None
            return self.sweep_id, False
        store = self.ctx.store
        sweep = await store.write(new_sweep, actor)
        if self.running:  # another caller started one while we wrote: keep theirs
            await store.write(finish_sweep, sweep, "aborted", "superseded")
            assert self.sweep_id is not None
            return self.sweep_id, False
        self.sweep_id = sweep
        self.progress = {"instances": 0, "providers": {
            name: {"instances": 0, "state": "listing", "error": None}
            for name in self.ctx.providers}}
        self.task = asyncio.create_task(self._run(sweep, actor), name=f"audit-sweep-{sweep}")
        return sweep, True

    async def wait(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    async def run_sweep(self, actor: str) -> dict[str, Any]:
        """Start (or join) a sweep and wait for it; returns its final row."""
        sweep, _ = await self.start_sweep(actor)
        await self.wait()
        row = await self.sweep(sweep)
        assert row is not None
        return row

    async def sweep(self, sweep: int | None = None) -> dict[str, Any] | None:
        """A sweep's row (the latest by default), with live progress while it runs."""
        row = await self.ctx.store.read(sweep_row, sweep)
        if row is not None and row["state"] == "running" and row["id"] == self.sweep_id:
            row["progress"] = json.loads(json.dumps(self.progress))
        return row

    async def schedule(self) -> None:
        """Sweep every ``interval_s`` seconds until cancelled. The interval is read again on
        every tick, so a SIGHUP reload that changes it (or turns sweeps on or off) takes hold."""
        interval = self.interval()  # a bad value stops start-up with a message
        fence(self.ctx.cluster.fence)  # its sweeps' writes are the leader's (imm/store/lease.py)
        announced: float | None = None
        last = time.monotonic()
        while True:
            try:
                interval = self.interval()
            except ConfigError as e:
                log.error("%s; scheduled sweeps paused", e.message)
                interval = 0.0
            if interval != announced:
                if interval > 0:
                    log.info("audit sweeps every %g s", interval)
                else:
                    log.info("scheduled audit sweeps are off")
                announced = interval
            if interval > 0 and time.monotonic() - last >= interval:
                last = time.monotonic()
                try:
                    await self.run_sweep(SCHEDULED_ACTOR)
                except asyncio.CancelledError:
                    raise
                except NotLeader as e:  # another immd leads now and sweeps on its schedule
                    log.warning("scheduled audit sweeps stop here: %s", e.message)
                    self.ctx.cluster.refused(e.message)
                    return
                except Exception:  # noqa: BLE001 - the schedule goes on
                    log.exception("scheduled audit sweep failed")
            await asyncio.sleep(min(interval, SCHEDULE_TICK_S) if interval > 0
                                else SCHEDULE_TICK_S)

    async def _run(self, sweep: int, actor: str) -> None:
        ctx = self.ctx
        services = {k: dict(v) for k, v in ctx.settings.services.items()}
        run = SweepRun(sweep, actor, ctx.catalog,
                       CatalogFacts(ctx.keyring, services, self.rollouts))
        errors: dict[str, str] = {}
        started = time.monotonic()
        try:
            await asyncio.gather(*(self._provider(run, name, handle, errors)
                                   for name, handle in ctx.providers.items()))
        except asyncio.CancelledError:
            with contextlib.suppress(NotLeader):  # a deposed leader's: the next one aborts it
                await asyncio.shield(ctx.store.write(finish_sweep, sweep, "aborted",
                                                     "immd stopped during the sweep"))
            raise
        except NotLeader as e:
            self._fenced(sweep, e)
            return
        except Exception as e:  # noqa: BLE001 - a failed sweep is recorded, not raised
            log.exception("audit sweep %d failed", sweep)
            await ctx.store.write(finish_sweep, sweep, "failed", _message(e))
            return
        if errors and len(errors) == len(ctx.providers):
            state = "failed"
        else:
            state = "partial" if errors else "completed"
        text = "; ".join(f"{n}: {m}" for n, m in sorted(errors.items())) or None
        try:
            await ctx.store.write(finish_sweep, sweep, state, text)
        except NotLeader as e:
            self._fenced(sweep, e)
            return
        log.info("audit sweep %d %s: %d instance(s) in %.1f s", sweep, state,
                 self.progress.get("instances", 0), time.monotonic() - started)

    def _fenced(self, sweep: int, e: NotLeader) -> None:
        """A scheduled sweep of a leader another immd replaced: stop; the new leader marks the
        sweep aborted when it starts its schedule."""
        log.warning("audit sweep %d stopped: %s", sweep, e.message)
        self.ctx.cluster.refused(e.message)

    async def _provider(self, run: SweepRun, name: str, handle: ProviderHandle,
                        errors: dict[str, str]) -> None:
        store = self.ctx.store
        mine = self.progress["providers"].setdefault(
            name, {"instances": 0, "state": "listing", "error": None})
        manifests: dict[str, Mapping[str, Any] | None] = {}
        chunks = handle.instance_chunks(None, self.chunk)

        async def listing() -> list[Instance] | None:
            return await anext(chunks, None)

        ahead: asyncio.Task[list[Instance] | None] | None = None
        try:
            ahead = asyncio.create_task(listing())
            while (listed := await ahead) is not None:
                # the next chunk is listed (in its worker thread) while this one is written
                ahead = asyncio.create_task(listing())
                chunk = [i for i in listed if i.state != "terminated"]
                if not chunk:
                    continue
                items = await self._observe(handle, chunk, manifests)
                result = await store.write(apply_chunk, run, name, items)
                mine["instances"] += len(chunk)
                self.progress["instances"] += len(chunk)
                await self._notify(result)
            ahead = None
            mine["state"] = "closing"
            while True:
                result = await store.write(close_unseen, run, name, self.chunk)
                await self._notify(result)
                if not result.more:
                    break
            mine["state"] = "done"
        except (asyncio.CancelledError, NotLeader):
            raise  # stopped, or a deposed leader's scheduled sweep: nothing more is written
        except Exception as e:  # noqa: BLE001 - one provider failing does not stop the others
            mine.update(state="failed", error=_message(e))
            errors[name] = _message(e)
            log.warning("audit sweep %d: provider %s failed: %s", run.id, name, _message(e))
        finally:
            if ahead is not None:  # stopped or failed while the next chunk was being listed
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead
            await chunks.aclose()

    async def _observe(self, handle: ProviderHandle, chunk: list[Instance],
                       manifests: dict[str, Mapping[str, Any] | None],
                       ) -> list[Observed] | list[Instance]:
        """Re-hash each instance's content where the provider can (tampering shows there)."""
        if not handle.supports(Feature.REHASH):
            return chunk  # nothing to add to what was listed

        async def manifest(image_id: str) -> None:
            try:
                manifests[image_id] = await handle.image_manifest(image_id)
            except Exception:  # noqa: BLE001 - without it the verdict just names no files
                manifests[image_id] = None

        if handle.supports(Feature.IMAGE_MANIFEST):
            await asyncio.gather(*(manifest(i) for i in {i.image_id for i in chunk}
                                   if i not in manifests))

        async def one(inst: Instance) -> Observed:
            try:
                digest, tree = await handle.rehash(inst.id)
            except Exception as e:  # noqa: BLE001 - gone meanwhile, or unreadable: no verdict
                log.debug("rehash of %s/%s failed: %s", handle.name, inst.id, _message(e))
                return Observed(inst)
            return Observed(inst, (digest, tree), manifests.get(inst.image_id))

        return list(await asyncio.gather(*(one(i) for i in chunk)))

    async def _notify(self, result: ChunkResult) -> None:
        """Tell the ``imm_audit_finding`` observers (a failing one is logged, not raised)."""
        for finding in (*result.opened, *result.resolved):
            await self.ctx.plugins.audit_finding(finding)


def audit_interval(settings: Settings) -> float:
    """``[audit] interval_s``: seconds between scheduled sweeps; 0 or absent: none (raises
    ConfigError naming a bad value; the daemon checks it before it creates any state)."""
    value = settings.audit.get("interval_s", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{settings.source}: [audit] interval_s {value!r} must "
                          "be a number of seconds ≥ 0 (0 turns scheduled sweeps off)")
    return float(value)
