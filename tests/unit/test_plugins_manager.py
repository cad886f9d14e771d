"""The plugin manager's typed hook methods, with real pluggy plugins registered in-process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from imm.errors import PluginError
from imm.plugins.hookspecs import hookimpl
from imm.plugins.manager import Plugins, Refusal

ROLLOUT = {"id": "web-1", "service": "web", "image": "sha256:ab", "strategy": "canary"}
STEP = {"name": "3-pause", "op": "pause"}


class Gate:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[tuple[Any, ...]] = []

    @hookimpl
    def imm_health_gate(self, rollout: dict[str, Any], step: dict[str, Any],
                        instances: list[dict[str, Any]]) -> Any:
        self.seen.append((rollout, step, instances))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class AsyncPolicy:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl
    async def imm_policy_check(self, image: dict[str, Any]) -> Any:  # a subset of the arguments
        await asyncio.sleep(0)
        return self.answer if image["name"] == "web" else None


class Observer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []

    @hookimpl
    def imm_rollout_event(self, event: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("chat is down")
        self.events.append(event)

    @hookimpl
    async def imm_audit_finding(self, finding: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("pager is down")
        self.findings.append(finding)


def plugins(**named: Any) -> Plugins:
    p = Plugins(block=())
    for name, plugin in named.items():
        p.register(plugin, name=name)
    return p


def test_health_gate_collects_each_refusal_by_plugin_name() -> None:
    ok, no, silent = Gate(True), Gate("p99 latency 900 ms > 300 ms"), Gate(None)
    pm = plugins(ok=ok, no=no, silent=silent)
    got = asyncio.run(pm.health_gate(ROLLOUT, STEP, [{"id": "i-1"}]))
    assert got == [Refusal("no", "p99 latency 900 ms > 300 ms")]
    assert str(got[0]) == "no: p99 latency 900 ms > 300 ms"
    assert ok.seen == [(ROLLOUT, STEP, [{"id": "i-1"}])] == silent.seen


def test_health_gate_passes_when_every_plugin_passes_or_abstains() -> None:
    pm = plugins(a=Gate(True), b=Gate(None))
    assert asyncio.run(pm.health_gate(ROLLOUT, STEP, [])) == []


def test_a_gate_that_raises_or_answers_nonsense_refuses_and_the_others_still_answer() -> None:
    later = Gate("error rate 4 %")
    pm = plugins(broken=Gate(ValueError("no metrics")), odd=Gate(False), later=later)
    got = {r.plugin: r.reason for r in asyncio.run(pm.health_gate(ROLLOUT, STEP, []))}
    assert got["broken"] == "imm_health_gate raised ValueError: no metrics"
    assert "answered False" in got["odd"]
    assert got["later"] == "error rate 4 %"
    assert later.seen


def test_policy_check_awaits_async_plugins_and_passes_only_the_arguments_they_name() -> None:
    pm = plugins(pol=AsyncPolicy("images must be signed by release"))
    assert asyncio.run(pm.policy_check({"name": "web"}, {}, {"id": "r"})) == [
        Refusal("pol", "images must be signed by release")]
    assert asyncio.run(pm.policy_check({"name": "db"}, {}, {"id": "r"})) == []


def test_observers_get_events_and_a_failing_one_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    good, bad = Observer(), Observer(fail=True)
    pm = plugins(good=good, bad=bad)
    with caplog.at_level(logging.ERROR, logger="imm.plugins"):
        asyncio.run(pm.rollout_event({"rollout": "web-1", "action": "start"}))
        asyncio.run(pm.audit_finding({"id": 7, "verdict": "drift"}))
    assert good.events == [{"rollout": "web-1", "action": "start"}]
    assert good.findings == [{"id": 7, "verdict": "drift"}]
    messages = [r.getMessage() for r in caplog.records]
    assert any("'bad'" in m and "imm_rollout_event" in m and "chat is down" in m for m in messages)
    assert any("'bad'" in m and "imm_audit_finding" in m and "pager is down" in m for m in messages)


def test_no_plugins_means_no_refusals() -> None:
    pm = plugins()
    assert asyncio.run(pm.health_gate(ROLLOUT, STEP, [])) == []
    assert asyncio.run(pm.policy_check({"name": "web"}, {}, {})) == []
    asyncio.run(pm.rollout_event({}))


def test_an_unknown_hook_is_refused_naming_the_plugin() -> None:
    class Typo:
        @hookimpl
        def imm_helth_gate(self) -> None: ...

    with pytest.raises(PluginError, match="imm_helth_gate"):
        plugins(typo=Typo())
