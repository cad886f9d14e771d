"""Notifications: rollout and audit events delivered to the configured notifiers.

    [notifications.ops]             # any number; kind = a registered notifier kind
    kind = "webhook"
    url = "http://127.0.0.1:9000/hook"
    events = ["rollout.rolled-back", "analysis.failed"]   # default: all of EVENTS
    services = ["web"]              # default: every service
    retries = 5                     # attempts after the first
    backoff_s = 0.5                 # doubled after each failed attempt, at most 30 s

The dispatcher observes the journal through ``imm_rollout_event`` and the audit through
``imm_audit_finding`` like any plugin. Observing only puts the event on each matching
notifier's queue (bounded; when full, the event is dropped and the drop logged): delivery,
retries and backoff happen in a background task per notifier, so a slow or dead receiver
never blocks or slows a rollout. Every attempt is one line of the delivery log
(``STATE_DIR/notifications.jsonl``; the last ones also in memory, ``deliveries()``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .hookspecs import hookimpl
from .notify_base import Notifier, NotifierRegistry

log = logging.getLogger("imm.notify")

EVENTS = ("rollout.started", "rollout.step", "rollout.paused", "rollout.completed",
          "rollout.rolled-back", "analysis.failed", "audit.finding-opened")
_COMMON = frozenset({"kind", "events", "services", "retries", "backoff_s"})
QUEUE_SIZE = 1000


def _str_list(where: str, key: str, value: Any, allowed: tuple[str, ...] | None = None
              ) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} {key} must be a list of strings, got {value!r}")
    if allowed is not None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ConfigError(f"{where} {key}: unknown {', '.join(map(repr, bad))}; "
                              f"known: {', '.join(allowed)}")
    return list(value)


class Route:
    """One configured notifier, its filters and its queue."""

    def __init__(self, notifier: Notifier, events: list[str], services: list[str],
                 retries: int, backoff_s: float) -> None:
        self.notifier = notifier
        self.events = set(events)
        self.services = set(services)
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue[dict[str, Any]] | None = None
        self.task: asyncio.Task[None] | None = None

    def wants(self, event: Mapping[str, Any]) -> bool:
        if event["event"] not in self.events:
            return False
        return not self.services or event.get("service") in self.services


def rollout_events(body: Mapping[str, Any], reasons: dict[str, str]) -> list[dict[str, Any]]:
    """The notification events a journal entry makes (most make none or one)."""
    action, step, detail = body.get("action"), body.get("step"), body.get("detail") or {}
    base = {"service": body.get("service"), "rollout": body.get("rollout"), "step": step,
            "actor": body.get("actor")}
    rid = str(body.get("rollout"))
    if action == "fail":
        reasons[rid] = str(detail.get("reason", ""))
    if action == "start":
        return [{**base, "event": "rollout.started",
                 "summary": f"rollout {rid} started by {body.get('actor')}", "detail": detail}]
    if action == "pause":
        return [{**base, "event": "rollout.paused", "summary": f"rollout {rid} paused"}]
    if action == "complete":
        reasons.pop(rid, None)
        return [{**base, "event": "rollout.completed", "summary": f"rollout {rid} completed"}]
    if action == "done" and step == "rollback":
        reason = reasons.pop(rid, "")
        return [{**base, "event": "rollout.rolled-back", "reason": reason,
                 "summary": f"rollout {rid} rolled back: {reason}"}]
    if action == "done":
        return [{**base, "event": "rollout.step", "summary": f"rollout {rid}: {step} done"}]
    if action == "analysis" and detail.get("verdict") != "successful":
        return [{**base, "event": "analysis.failed", "dry_run": bool(detail.get("dry_run")),
                 "summary": str(detail.get("reason", "")),
                 "detail": {k: detail.get(k) for k in ("name", "kind", "verdict", "query",
                                                       "failure_condition",
                                                       "success_condition")}}]
    return []


class Dispatcher:
    """Built from ``[notifications.*]``; registered with the plugin manager as an observer."""

    def __init__(self, config: Mapping[str, Any], registry: NotifierRegistry,
                 log_path: Path | None = None) -> None:
        self.routes: list[Route] = []
        for name, spec in config.items():
            where = f"[notifications.{name}]"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where} must be a table")
            cls = registry.get(spec.get("kind"), where)
            unknown = sorted(set(spec) - _COMMON - cls.keys)
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(sorted(_COMMON | cls.keys))}")
            retries = spec.get("retries", 5)
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ConfigError(f"{where} retries must be an integer ≥ 0, got {retries!r}")
            backoff = spec.get("backoff_s", 0.5)
            if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0:
                raise ConfigError(f"{where} backoff_s must be a number ≥ 0, got {backoff!r}")
            self.routes.append(Route(
                cls(name, spec), _str_list(where, "events", spec.get("events", list(EVENTS)),
                                           EVENTS),
                _str_list(where, "services", spec.get("services", [])), retries, float(backoff)))
        self.log_path = log_path
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self._reasons: dict[str, str] = {}

    # -- observing (pluggy hooks): never waits for a receiver -----------------------------------

    @hookimpl
    def imm_rollout_event(self, event: dict[str, Any]) -> None:
        for e in rollout_events(event, self._reasons):
            self.publish(e)

    @hookimpl
    def imm_audit_finding(self, finding: dict[str, Any]) -> None:
        if finding.get("status") == "open":
            self.publish({"event": "audit.finding-opened", "service": None,
                          "instance": finding.get("instance"),
                          "summary": f"{finding.get('verdict')}: instance "
                                     f"{finding.get('instance')} on {finding.get('provider')}",
                          "detail": finding})

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every notifier that wants it (from the event loop)."""
        event = {**event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for route in self.routes:
            if not route.wants(event):
                continue
            if route.queue is None:
                route.queue = asyncio.Queue(QUEUE_SIZE)
                route.task = asyncio.create_task(self._worker(route),
                                                 name=f"notifier {route.notifier.name}")
            item = {**event, "delivery": uuid.uuid4().hex}
            try:
                route.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._logged(route, item, 0, "dropped: queue full")

    # -- delivering ---------------------------------------------------------------------------

    async def _worker(self, route: Route) -> None:
        assert route.queue is not None
        while True:
            item = await route.queue.get()
            delay = route.backoff_s
            for attempt in range(1, route.retries + 2):
                try:
                    answer = await asyncio.to_thread(route.notifier.deliver, item)
                except Exception as e:  # noqa: BLE001 - a receiver's failure is logged, retried
                    self._logged(route, item, attempt, f"failed: {e}")
                    if attempt > route.retries:
                        log.warning("notifier %s gave up on %s %s after %d attempts: %s",
                                    route.notifier.name, item["event"], item["delivery"],
                                    attempt, e)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                else:
                    self._logged(route, item, attempt, f"delivered: {answer}")
                    break
            route.queue.task_done()

    def _logged(self, route: Route, item: Mapping[str, Any], attempt: int, outcome: str) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "notifier": route.notifier.name, "event": item["event"],
                 "delivery": item["delivery"], "attempt": attempt, "outcome": outcome}
        self.recent.append(entry)
        if self.log_path is not None:
            line = json.dumps(entry, sort_keys=True) + "\n"
            asyncio.get_running_loop().run_in_executor(None, _append, self.log_path, line)

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self.recent)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event is delivered or given up; False on timeout."""
        queues = [r.queue for r in self.routes if r.queue is not None]
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(q.join() for q in queues))
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for r in self.routes:
            if r.task is not None:
                r.task.cancel()
        for r in self.routes:
            if r.task is not None:
                try:
                    await r.task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping
                    pass
                r.task, r.queue = None, None


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
