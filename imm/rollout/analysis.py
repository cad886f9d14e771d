"""Running and judging a service's analyses (``[[services.NAME.analysis]]``) during a rollout.

The kinds (``imm/plugins/analysis``) only measure; this module decides. An analysis takes
``count`` measurements ``interval_s`` apart (after ``initial_delay_s``); each is judged:

- **failed** — the failure condition holds, or the success condition does not (when there is
  no failure condition);
- **successful** — the success condition holds, or the failure condition does not (when there
  is no success condition);
- **inconclusive** — no data (an empty answer, NaN), or neither condition holds;
- **error** — the measurement could not be taken (peer unreachable, rejected query).

The run is *failed* as soon as failures exceed ``failure_limit``, *error* when consecutive
errors exceed ``consecutive_error_limit``, *inconclusive* when inconclusive measurements exceed
``inconclusive_limit`` or no measurement succeeded; otherwise *successful*. Anything but
successful fails the step (the rollout rolls back, the measured value, the condition and the
query in the reason) unless the analysis is ``dry_run``. Each run is one journal entry
(action ``analysis``), so one signed ledger record with its measurements.

``when``: ``before-traffic`` runs after the first batch passes its health check, before any
traffic reaches it (with waves, each wave's first batch); ``each-step`` after every canary
pause and blue-green bake; ``each-wave`` after each wave's bake (plan.py), before the next wave
starts; ``background``
runs again and again from the first traffic shift until the rollout ends (each run a record;
a failing run fails the rollout at its next step or while it pauses).

With ``[analysis] prometheus_sd_file`` set, imm writes the fleet as a Prometheus file-based
service discovery file (one target per instance address, labels ``imm_service``,
``imm_rollout``, ``imm_digest``, ``imm_role`` = canary | stable, ``imm_instance``,
``imm_target`` = provider/region) whenever a step changes the fleet, so queries can select the
canary by ``imm_digest="${digest}"`` or ``imm_role="${role}"``, and a wave's instances by
``imm_target=~"${targets}"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..context import Context
from ..plugins.analysis import AnalysisTarget, MeasureError
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT
from ..plugins.statefile import atomic_write
from .fleet import Fleet
from .journal import Journal
from .services import AnalysisSpec, Service, target_key
from .states import ANALYSIS, RUNNING, StepFailed

log = logging.getLogger("imm.rollout")

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "successful", "failed", "inconclusive", "error"


def _fmt(values: dict[str, float | None]) -> str:
    return ", ".join(f"{k} = {'no data' if v is None else f'{v:.6g}'}" for k, v in values.items())


def judge(spec: AnalysisSpec, values: dict[str, float | None]) -> tuple[str, str]:
    """The phase of one measurement and why."""
    if any(v is None for v in values.values()):
        return INCONCLUSIVE, f"{_fmt(values)}: no data"
    nums = {k: float(v) for k, v in values.items() if v is not None}
    try:
        if spec.failure is not None and spec.failure(nums):
            return FAILED, f'{_fmt(values)} meets failure_condition "{spec.failure.text}"'
        if spec.success is not None:
            if spec.success(nums):
                return SUCCESSFUL, f'{_fmt(values)} meets success_condition "{spec.success.text}"'
            if spec.failure is None:
                return FAILED, (f'{_fmt(values)} does not meet success_condition '
                                f'"{spec.success.text}"')
            return INCONCLUSIVE, f"{_fmt(values)} meets neither condition"
    except MeasureError as e:
        return ERROR, str(e)
    assert spec.failure is not None
    return SUCCESSFUL, f'{_fmt(values)} does not meet failure_condition "{spec.failure.text}"'


class Analysis:
    def __init__(self, ctx: Context, journal: Journal, fleet: Fleet) -> None:
        self.ctx = ctx
        self.journal = journal
        self.fleet = fleet
        self._background: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, str] = {}

    # -- background analyses -------------------------------------------------------------------

    def ensure_background(self, svc: Service, r: dict[str, Any]) -> None:
        """Start the rollout's background analyses unless they run (or already failed)."""
        specs = [a for a in svc.analysis if a.when == "background"]
        rid = r["id"]
        if not specs or rid in self._failed:
            return
        task = self._background.get(rid)
        if task is None or task.done():
            self._background[rid] = asyncio.create_task(self._loop(svc, r, specs),
                                                        name=f"background analysis {rid}")

    def check_background(self, rid: str) -> None:
        """Raise StepFailed if a background analysis of the rollout failed."""
        if rid in self._failed:
            raise StepFailed(self._failed[rid])

    async def stop_background(self, rid: str) -> None:
        task = self._background.pop(rid, None)
        self._failed.pop(rid, None)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping
                pass

    async def stop_all_background(self) -> None:
        for rid in list(self._background):
            await self.stop_background(rid)

    async def _loop(self, svc: Service, r: dict[str, Any], specs: list[AnalysisSpec]) -> None:
        try:
            while True:
                for spec in specs:
                    outcome = await self.measure(spec, svc, r)
                    if "interrupted" in outcome:
                        return  # paused or aborted: the engine starts it again on resume
                    await self.journal.record(r["id"], "background", ANALYSIS, outcome)
                    if outcome["verdict"] != SUCCESSFUL and not spec.dry_run:
                        self._failed[r["id"]] = outcome["reason"]
                        return
                await asyncio.sleep(max(self.ctx.timings.poll_s, 0.05))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a background failure fails the rollout, named
            self._failed[r["id"]] = f"background analysis: {type(e).__name__}: {e}"

    async def run(self, svc: Service, r: dict[str, Any], step: str, when: str,
                  wave: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Run the analyses attached at ``when``; raise StepFailed on a failing one. ``wave``:
        the step's wave (as the rollout stored it), templated as ``${wave}``/``${targets}``.

        ``{"interrupted": state}`` when an operator paused or aborted meanwhile (the step is
        then not done, and runs its analyses again when resumed)."""
        for spec in svc.analysis:
            if spec.when != when:
                continue
            await self.write_targets()
            outcome = await self.measure(spec, svc, r, wave)
            if "interrupted" in outcome:
                return outcome
            await self.journal.record(r["id"], step, ANALYSIS, outcome)
            if outcome["verdict"] != SUCCESSFUL:
                log.warning("rollout %s: %s%s", r["id"], outcome["reason"],
                            " (dry run: not acted on)" if spec.dry_run else "")
                if not spec.dry_run:
                    raise StepFailed(outcome["reason"])
        return None

    async def _sleep(self, rid: str, seconds: float) -> str | None:
        """Sleep, watching for a pause or abort; the state that interrupted, or None."""
        deadline = time.monotonic() + seconds
        while True:
            cur = await self.journal.load(rid)
            if cur["state"] != RUNNING:
                return str(cur["state"])
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(left, max(self.ctx.timings.poll_s, 0.05)))

    async def measure(self, spec: AnalysisSpec, svc: Service, r: dict[str, Any],
                      wave: dict[str, Any] | None = None) -> dict[str, Any]:
        targets = wave["targets"] if wave else [
            {"provider": t.provider, "region": t.region} for t in svc.targets]
        target = AnalysisTarget(svc.name, r["id"], "canary", r["digest"],
                                r.get("previous_digest") or "",
                                wave=str(wave["wave"]) if wave else "",
                                targets="|".join(dict.fromkeys(
                                    target_key(t["provider"], t["region"]) for t in targets)))
        started = time.monotonic()
        if spec.initial_delay_s and (stop := await self._sleep(r["id"], spec.initial_delay_s)):
            return {"interrupted": stop}
        measurements: list[dict[str, Any]] = []
        counts = {SUCCESSFUL: 0, FAILED: 0, INCONCLUSIVE: 0, ERROR: 0}
        consecutive_errors = 0
        verdict = ""
        decisive = ""
        query = ""
        for n in range(spec.count):
            if n and (stop := await self._sleep(r["id"], spec.interval_s)):
                return {"interrupted": stop}
            at = int(time.time() * 1000)
            values: dict[str, float | None] = {}
            try:
                m = await asyncio.to_thread(spec.measure.measure, target)
            except MeasureError as e:
                phase, why = ERROR, str(e)
            except Exception as e:  # noqa: BLE001 - a plugin's bug is an error, not a crash
                phase, why = ERROR, f"{type(e).__name__}: {e}"
            else:
                query, values = m.query, m.values
                phase, why = judge(spec, values)
            counts[phase] += 1
            consecutive_errors = consecutive_errors + 1 if phase == ERROR else 0
            # the ledger's canonical JSON has no floats: values are recorded as decimal strings
            measurements.append({"at_ms": at, "phase": phase, "why": why,
                                 "values": {k: None if v is None else repr(v)
                                            for k, v in values.items()}})
            if phase == FAILED:
                decisive = why
            if consecutive_errors > spec.consecutive_error_limit:
                verdict = ERROR
                decisive = (f"{consecutive_errors} consecutive measurement errors (limit "
                            f"{spec.consecutive_error_limit}): {why}")
                break
            if counts[FAILED] > spec.failure_limit:
                verdict = FAILED
                break
            if counts[INCONCLUSIVE] > spec.inconclusive_limit:
                verdict = INCONCLUSIVE
                decisive = (f"{counts[INCONCLUSIVE]} inconclusive measurement(s) (limit "
                            f"{spec.inconclusive_limit}), last: {why}")
                break
        if not verdict:
            if counts[SUCCESSFUL]:
                verdict = SUCCESSFUL
            else:
                verdict = INCONCLUSIVE
                last = measurements[-1]["why"] if measurements else "no measurement"
                decisive = f"no successful measurement of {len(measurements)}, last: {last}"
        reason = f"analysis {spec.name} ({spec.kind}) {verdict}"
        if verdict != SUCCESSFUL:
            reason += f": {decisive}" + (f" (query: {query})" if query else "")
        return {"name": spec.name, "kind": spec.kind, "when": spec.when,
                "dry_run": spec.dry_run, "verdict": verdict, "reason": reason, "query": query,
                "success_condition": spec.success.text if spec.success else None,
                "failure_condition": spec.failure.text if spec.failure else None,
                "counts": counts, "measurements": measurements,
                "elapsed_ms": int((time.monotonic() - started) * 1000)}

    # -- Prometheus file-based service discovery -----------------------------------------------

    async def write_targets(self) -> None:
        """Write ``[analysis] prometheus_sd_file`` from the fleet; a failure is logged only."""
        path = self.ctx.settings.analysis.get("prometheus_sd_file")
        if not path:
            return
        try:
            active = {a["service"]: a["id"] for a in await self.journal.active()}
            groups = []
            for svc in self.fleet.services.values():
                for i in await self.fleet.instances(svc):
                    if not i.address:
                        continue
                    rid = i.tags.get(TAG_ROLLOUT, "")
                    role = "canary" if active.get(svc.name) == rid else "stable"
                    groups.append({"targets": [i.address], "labels": {
                        "imm_service": svc.name, "imm_rollout": rid,
                        "imm_digest": i.tags.get(TAG_DIGEST, ""), "imm_role": role,
                        "imm_instance": i.id, "imm_target": target_key(i.provider, i.region)}})
            # Prometheus (another user) reads it: world-readable, written the plugins' one way
            await asyncio.to_thread(atomic_write, Path(str(path)),
                                    json.dumps(groups, sort_keys=True, indent=1), mode=0o644)
        except Exception as e:  # noqa: BLE001 - discovery is best effort; analysis reports gaps
            log.warning("could not write the Prometheus targets to %s: %s", path, e)

