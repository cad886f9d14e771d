"""Notifications (imm/plugins/notify.py and the built-in webhook) with a real HTTP receiver.

The receiver is an aiohttp server in the test, on 127.0.0.1; it checks the HMAC-SHA256
signature of every body. The events come from real rollouts of the in-memory engine world.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rollout_world import SERVICE, Gate, World, actions, settle

from imm.errors import ConfigError
from imm.plugins.notifiers.webhook import Webhook
from imm.plugins.notify import EVENTS, Dispatcher
from imm.plugins.notify_base import NotifierRegistry
from imm.rollout.states import COMPLETED, ROLLED_BACK

SECRET = "s3cret-for-tests"


class Receiver:
    """Records what it receives; can fail the first ``fail`` requests or hang ``hang_s``."""

    def __init__(self, fail: int = 0, hang_s: float = 0.0) -> None:
        self.got: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.bad_signatures = 0
        self.fail, self.hang_s = fail, hang_s
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Imm-Signature", ""), want):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=503)
        self.got.append(json.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _dispatcher(url: str, monkeypatch: pytest.MonkeyPatch, tmp: Path,
                **extra: Any) -> Dispatcher:
    monkeypatch.setenv("IMM_TEST_HOOK_SECRET", SECRET)
    reg = NotifierRegistry()
    reg.add(Webhook)
    cfg = {"ops": {"kind": "webhook", "url": url, "secret_env": "IMM_TEST_HOOK_SECRET",
                   "backoff_s": 0.01, **extra}}
    return Dispatcher(cfg, reg, tmp / "deliveries.jsonl")


def _rollouts(w: World, d: Dispatcher, receiver: Receiver | None,
              versions: tuple[str, ...] = ("2",)) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        if receiver is not None:
            await receiver.start()
            for r in d.routes:
                r.notifier.url = receiver.url  # type: ignore[attr-defined]
        await w.engine.startup()
        out = []
        try:
            for v in versions:
                st = await w.engine.start("alice", "web", f"app@{v}")
                out.append(await settle(w.engine, st["id"]))
            out[-1]["queued"] = sum(r.queue.qsize() for r in d.routes if r.queue)
            if receiver is not None and not receiver.hang_s:
                assert await d.drain(10)
        finally:
            await w.engine.shutdown()
            await d.close()
            if receiver is not None:
                await receiver.stop()
        return out
    try:
        return asyncio.run(main())
    finally:
        w.close()


def test_receiver_gets_every_event_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _dispatcher("http://placeholder/", monkeypatch, tmp_path)
    gate = Gate(refuse={"3-pause"})
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary"}}, plugins=[d, gate])
    w.old_fleet(w.image("1"))
    w.image("2")
    rec = Receiver()
    # first rollout rolled back by the gate at its first pause; the second (gate satisfied) ends
    gate_steps = gate.refuse

    async def finding() -> None:
        d.imm_audit_finding({"id": 1, "instance": "i-9", "provider": "mem", "region": "r1",
                             "verdict": "unknown-image", "status": "open"})

    first, second = _rollouts_with(w, d, rec, gate_steps, finding)
    assert first["state"] == ROLLED_BACK and second["state"] == COMPLETED
    assert rec.bad_signatures == 0
    kinds = [e["event"] for e in rec.got]
    assert set(kinds) == set(EVENTS) - {"rollout.paused", "analysis.failed"}
    assert kinds.count("rollout.started") == 2
    rb = next(e for e in rec.got if e["event"] == "rollout.rolled-back")
    assert rb["rollout"] == first["id"] and "error rate 7%" in rb["reason"]
    steps = [e["step"] for e in rec.got if e["event"] == "rollout.step"
             and e["rollout"] == second["id"]]
    assert steps == [s["name"] for s in second["plan"]]
    assert all(h["X-Imm-Delivery"] and h["X-Imm-Event"] for h in rec.headers)
    log = [json.loads(x) for x in (tmp_path / "deliveries.jsonl").read_text().splitlines()]
    assert len(log) == len(rec.got) and all(x["outcome"] == "delivered: HTTP 200" for x in log)


def _rollouts_with(w: World, d: Dispatcher, rec: Receiver, refuse: set[str],
                   between: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        await rec.start()
        d.routes[0].notifier.url = rec.url  # type: ignore[attr-defined]
        await w.engine.startup()
        try:
            st = await w.engine.start("alice", "web", "app@2")
            first = await settle(w.engine, st["id"])
            refuse.clear()
            await between()
            st = await w.engine.start("alice", "web", "app@2")
            second = await settle(w.engine, st["id"])
            assert await d.drain(10)
        finally:
            await w.engine.shutdown()
            await d.close()
            await rec.stop()
        return first, second
    try:
        return asyncio.run(main())
    finally:
        w.close()


def test_retries_with_backoff_and_a_slack_form(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    d = _dispatcher("http://placeholder/", monkeypatch, tmp_path, format="slack",
                    events=["rollout.completed"])
    w = World(tmp_path, plugins=[d])
    w.old_fleet(w.image("1"))
    w.image("2")
    rec = Receiver(fail=2)
    (st,) = _rollouts(w, d, rec)
    assert st["state"] == COMPLETED
    assert rec.got == [{"text": f"[imm] rollout.completed web: rollout {st['id']} completed"}]
    outcomes = [(x["attempt"], x["outcome"]) for x in d.deliveries()]
    assert outcomes == [(1, f"failed: {rec.url} answered HTTP 503"),
                        (2, f"failed: {rec.url} answered HTTP 503"), (3, "delivered: HTTP 200")]


def test_a_down_or_hanging_receiver_changes_nothing_in_the_rollout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def one(where: Path, receiver: Receiver | None, url: str) -> tuple[dict[str, Any], Dispatcher]:
        where.mkdir()
        d = _dispatcher(url, monkeypatch, where, retries=3, timeout_s=0.5)
        w = World(where, {"web": {**SERVICE, "strategy": "canary"}}, plugins=[d])
        w.old_fleet(w.image("1"))
        w.image("2")
        (st,) = _rollouts(w, d, receiver)
        return st, d

    up, _ = one(tmp_path / "up", Receiver(), "http://placeholder/")
    down, d_down = one(tmp_path / "down", None, "http://127.0.0.1:9/hook")  # nothing listens
    hang, d_hang = one(tmp_path / "hang", Receiver(hang_s=2), "http://placeholder/")
    for st in (up, down, hang):
        assert st["state"] == COMPLETED
    strip = [(s, a) for s, a in actions(up)]
    assert [(s, a) for s, a in actions(down)] == strip, "same steps, same journal"
    assert [(s, a) for s, a in actions(hang)] == strip
    assert hang["queued"] > 0, "the rollout finished while its events were still queued"
    assert any(x["outcome"].startswith("failed: http://127.0.0.1:9/hook unreachable")
               for x in d_down.deliveries())


def test_bad_notifier_config_names_the_value(tmp_path: Path) -> None:
    reg = NotifierRegistry()
    reg.add(Webhook)
    for cfg, msg in [
        ({"kind": "pager"}, "unknown notifier kind 'pager' (known: webhook)"),
        ({"kind": "webhook", "url": "ftp://x"}, "url 'ftp://x' must be an http(s) URL"),
        ({"kind": "webhook", "url": "http://x", "events": ["rollout.exploded"]},
         "events: unknown 'rollout.exploded'"),
        ({"kind": "webhook", "url": "http://x", "secret_env": "IMM_NOPE_UNSET"},
         "environment variable 'IMM_NOPE_UNSET' is not set"),
        ({"kind": "webhook", "url": "http://x", "retry": 3}, "unknown key(s) retry"),
    ]:
        with pytest.raises(ConfigError) as e:
            Dispatcher({"ops": cfg}, reg)
        assert e.value.message.startswith("[notifications.ops]") and msg in e.value.message




def test_journal_entries_map_to_events() -> None:
    from imm.plugins.notify import rollout_events
    reasons: dict[str, str] = {}
    base = {"rollout": "web-1", "service": "web", "actor": "alice"}
    assert rollout_events({**base, "action": "pause", "step": "pause"}, reasons)[0]["event"] \
        == "rollout.paused"
    failed = rollout_events({**base, "action": "analysis", "step": "4-pause", "detail": {
        "verdict": "failed", "dry_run": False, "reason": "analysis e failed: result = 0.1",
        "name": "e", "query": "q"}}, reasons)
    assert [(e["event"], e["summary"], e["detail"]["query"]) for e in failed] == [
        ("analysis.failed", "analysis e failed: result = 0.1", "q")]
    assert rollout_events({**base, "action": "analysis", "step": "4-pause",
                           "detail": {"verdict": "successful"}}, reasons) == []
    assert rollout_events({**base, "action": "begin", "step": "0-launch"}, reasons) == []
    rollout_events({**base, "action": "fail", "step": "4-pause", "detail": {"reason": "r"}},
                   reasons)
    (rb,) = rollout_events({**base, "action": "done", "step": "rollback"}, reasons)
    assert (rb["event"], rb["reason"]) == ("rollout.rolled-back", "r")
