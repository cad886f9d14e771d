"""The analysis runner (imm/rollout/analysis.py) in the engine, with the in-memory world.

The measurements come from a scripted analysis kind registered here the way a plugin registers
one: what is tested is the judging (conditions, limits, dry run), the rollback with its reason,
the journal/ledger records and the Prometheus discovery file. The built-in ``prometheus`` kind
is tested against a real Prometheus in tests/test_e2e_analysis.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rollout_world import SERVICE, World, run, settle

from imm.catalog.merkle import MerkleLog
from imm.errors import ConfigError
from imm.plugins.analysis import AnalysisKind, AnalysisTarget, Measured, MeasureError
from imm.rollout.states import COMPLETED, ROLLED_BACK


class Scripted(AnalysisKind):
    """Answers from ``script``: a number, None (no data) or an exception message ("!...")."""

    kind = "scripted"
    keys = frozenset({"query"})
    script: ClassVar[list[Any]] = []
    seen: ClassVar[list[AnalysisTarget]] = []

    def __init__(self, where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        super().__init__(where, spec, defaults)
        self.query = str(spec.get("query", "q"))

    def measure(self, target: AnalysisTarget) -> Measured:
        Scripted.seen.append(target)
        v = Scripted.script.pop(0) if Scripted.script else 0.0
        if isinstance(v, str):
            raise MeasureError(v[1:])
        return Measured({"result": v}, f"{self.query}{{digest={target.digest[:14]}}}")


CANARY = {**SERVICE, "strategy": "canary", "canary_steps": [50], "canary_surge": 1}


def _world(tmp: Path, *analysis: dict[str, Any], script: list[Any],
           defaults: dict[str, Any] | None = None) -> World:
    w = World(tmp, {"web": dict(CANARY)})
    w.plugins.analysis.add(Scripted)
    w.settings.services["web"]["analysis"] = list(analysis)
    w.settings.analysis = defaults or {}
    w.engine.fleet.reload()
    Scripted.script = list(script)
    Scripted.seen = []
    return w


RATIO = {"name": "error-ratio", "kind": "scripted", "query": "errors", "when": "each-step",
         "failure_condition": "result >= 0.05", "count": 2, "interval_s": 0}


def _roll(w: World) -> dict[str, Any]:
    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        st = await settle(w.engine, st["id"])
        st["analyses"] = await w.engine.analyses(st["id"])
        return st
    return run(w, body)


def _roll_keep_open(w: World) -> dict[str, Any]:
    async def main() -> dict:
        await w.engine.startup()
        try:
            st = await w.engine.start("alice", "web", "app@2")
            st = await settle(w.engine, st["id"])
            st["analyses"] = await w.engine.analyses(st["id"])
            return st
        finally:
            await w.engine.shutdown()
    return asyncio.run(main())


def test_a_failing_analysis_rolls_back_at_the_first_step_with_value_condition_query(
        tmp_path: Path) -> None:
    w = _world(tmp_path, RATIO, script=[0.01, 0.104])
    old = w.old_fleet(w.image("1"))
    digest = w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK
    assert st["error"] == ('analysis error-ratio (scripted) failed: result = 0.104 meets '
                           'failure_condition "result >= 0.05" '
                           f'(query: errors{{digest={digest[:14]}}})')
    assert [a["step"] for a in st["analyses"]] == ["4-pause"], "the first canary pause"
    run_ = st["analyses"][0]
    assert run_["verdict"] == "failed" and run_["counts"]["failed"] == 1
    assert [m["values"]["result"] for m in run_["measurements"]] == ["0.01", "0.104"]
    assert run_["ledger_index"] is not None, "one signed ledger record"
    assert st["analysis"]["seq"] == run_["seq"], "status shows the latest"
    assert Scripted.seen[0] == AnalysisTarget("web", st["id"], "canary", digest,
                                              st["previous"], wave="", targets="mem/r1")
    assert set(w.provider.instances) >= set(old) - {old[0]}


def test_ledger_record_carries_the_measurements(tmp_path: Path) -> None:
    w = _world(tmp_path, RATIO, script=[0.2])
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll_keep_open(w)
    index = st["analyses"][0]["ledger_index"]
    data = w.db.write_sync(lambda c: MerkleLog(c).leaf(index)[0])
    w.close()
    envelope = json.loads(data)
    body = json.loads(base64.b64decode(envelope["payload"]))
    assert body["action"] == "analysis" and body["step"] == "4-pause"
    assert body["detail"]["verdict"] == "failed"
    assert body["detail"]["measurements"][0]["values"] == {"result": "0.2"}
    assert body["detail"]["failure_condition"] == "result >= 0.05"
    assert envelope["signatures"], "signed"


def test_dry_run_records_a_failing_value_and_the_rollout_completes(tmp_path: Path) -> None:
    w = _world(tmp_path, {**RATIO, "dry_run": True}, script=[0.3, 0.3])
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == COMPLETED, st["error"]
    assert [(a["verdict"], a["dry_run"]) for a in st["analyses"]] == [("failed", True)]
    assert st["analyses"][0]["measurements"][0]["values"] == {"result": "0.3"}


def test_passing_analysis_completes_and_success_condition_is_judged(tmp_path: Path) -> None:
    spec = {**RATIO, "failure_condition": "result > 0.5", "success_condition": "result < 0.05"}
    w = _world(tmp_path, spec, script=[0.01, 0.2])  # then 0.2: neither → inconclusive
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK
    assert st["error"].startswith("analysis error-ratio (scripted) inconclusive: 1 inconclusive "
                                  "measurement(s) (limit 0), last: result = 0.2 meets neither")
    w2 = _world(tmp_path / "b", {**spec, "inconclusive_limit": 1}, script=[0.01, 0.2])
    w2.old_fleet(w2.image("1"))
    w2.image("2")
    assert _roll(w2)["state"] == COMPLETED


def test_unreachable_peer_counts_as_errors_per_the_limit_never_a_crash(tmp_path: Path) -> None:
    spec = {**RATIO, "count": 4, "consecutive_error_limit": 2}
    w = _world(tmp_path, spec, script=["!prometheus down", "!prometheus down", 0.01, 0.01])
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == COMPLETED, "two errors in a row are within a limit of 2"
    assert st["analyses"][0]["counts"] == {"successful": 2, "failed": 0, "inconclusive": 0,
                                           "error": 2}
    w2 = _world(tmp_path / "b", spec, script=["!prometheus down"] * 3)
    w2.old_fleet(w2.image("1"))
    w2.image("2")
    st = _roll(w2)
    assert st["state"] == ROLLED_BACK
    assert st["error"] == ("analysis error-ratio (scripted) error: 3 consecutive measurement "
                           "errors (limit 2): prometheus down")


def test_no_data_is_inconclusive(tmp_path: Path) -> None:
    w = _world(tmp_path, {**RATIO, "count": 1}, script=[None])
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK
    assert "result = no data: no data" in st["error"]


def test_before_traffic_fails_before_the_new_set_gets_any_weight(tmp_path: Path) -> None:
    w = _world(tmp_path, {**RATIO, "when": "before-traffic", "count": 1}, script=[0.9])
    old = w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK
    assert [a["step"] for a in st["analyses"]] == ["1-attach"]
    for call, arg in w.router.history:
        if call == "set_weights":
            assert all(v == 0 for k, v in arg.items() if k not in old)


def test_discovery_file_labels_canary_and_stable(tmp_path: Path) -> None:
    sd = tmp_path / "targets.json"
    snapshots: list[list[dict[str, Any]]] = []

    class Peek(Scripted):
        kind = "peek"

        def measure(self, target: AnalysisTarget) -> Measured:
            snapshots.append(json.loads(sd.read_text()))
            return super().measure(target)

    w = _world(tmp_path, RATIO, script=[0.0, 0.0], defaults={"prometheus_sd_file": str(sd)})
    w.plugins.analysis.add(Peek)
    w.settings.services["web"]["analysis"] = [{**RATIO, "kind": "peek"}]
    w.engine.fleet.reload()
    w.old_fleet(w.image("1"))
    new_digest = w.image("2")
    st = _roll(w)
    assert st["state"] == COMPLETED
    roles = sorted((g["labels"]["imm_role"], g["labels"]["imm_digest"] == new_digest)
                   for g in snapshots[0])
    assert roles == [("canary", True), ("canary", True), ("stable", False)]
    assert all(g["targets"][0].startswith("10.0.0.") for g in snapshots[0])
    final = json.loads(sd.read_text())
    assert {g["labels"]["imm_role"] for g in final} == {"stable"}
    assert len(final) == 2
    assert sd.stat().st_mode & 0o044 == 0o044  # Prometheus, another user, must read it


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "datadog"}, "unknown analysis kind 'datadog' (known: compare, http, prometheus"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "sum(rate(x[5m])",
      "failure_condition": "result > 1"}, "'(' is never closed"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": 'x{a="${nope}"}',
      "failure_condition": "result > 1"}, "unknown variable(s) nope"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "up",
      "failure_condition": "result >"}, "failure_condition 'result >' is not an expression"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "up",
      "failure_condition": "__import__('os').system('x')"}, "only abs, min, max may be called"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "up",
      "failure_condition": "canary > 1"}, "unknown name 'canary'; use result"),
    ({"kind": "prometheus", "query": "up", "failure_condition": "result > 1"},
     "url None must be the Prometheus server's http(s) URL"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "up"},
     "give a success_condition or a failure_condition"),
    ({"kind": "prometheus", "url": "http://p:9090", "query": "up", "when": "sometimes",
      "failure_condition": "result > 1"}, "when 'sometimes'"),
    ({"kind": "http", "url": "http://x/", "json_path": "$.[[", "failure_condition": "result>1"},
     "json_path '$.[[' is not a JSON path"),
    ({"kind": "compare", "url": "http://p:9090", "query": "up", "qurey": "x",
      "failure_condition": "canary > stable"}, "unknown key(s) qurey"),
])
def test_bad_analysis_config_is_a_clear_error_naming_the_value(
        tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    w = World(tmp_path, {"web": dict(CANARY)})
    w.settings.services["web"]["analysis"] = [{"name": "a", **entry}]
    try:
        with pytest.raises(ConfigError) as e:
            w.engine.fleet.reload()
        assert message in e.value.message
        assert e.value.message.startswith("[[services.web.analysis]] a")
    finally:
        w.close()


def test_background_analysis_fails_the_rollout_while_it_pauses(tmp_path: Path) -> None:
    bg = {**RATIO, "name": "bg", "when": "background", "count": 1}
    w = _world(tmp_path, bg, script=[0.0, 0.0, 0.3])
    w.settings.services["web"]["canary_pause_s"] = 30
    w.engine.fleet.reload()
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == ROLLED_BACK, "failed during the 30 s pause, not after it"
    assert st["error"].startswith("analysis bg (scripted) failed: result = 0.3")
    assert [(a["step"], a["verdict"]) for a in st["analyses"]] == [
        ("background", "successful"), ("background", "successful"), ("background", "failed")]
    first_shift = next(j["seq"] for j in st["journal"]
                       if j["step"] == "3-shift" and j["action"] == "done")
    assert st["analyses"][0]["seq"] > first_shift, "starts once traffic reaches the new set"


def test_passing_background_analysis_stops_with_the_rollout(tmp_path: Path) -> None:
    bg = {**RATIO, "name": "bg", "when": "background", "count": 1, "interval_s": 0}
    w = _world(tmp_path, bg, script=[0.0] * 1000)
    w.old_fleet(w.image("1"))
    w.image("2")
    st = _roll(w)
    assert st["state"] == COMPLETED, st["error"]
    assert all(a["verdict"] == "successful" for a in st["analyses"])
    assert w.engine.steps.analysis._background == {}
