"""Rollouts end to end: a real immd with the local provider and its own haproxy, driven only by
immctl, with a keep-alive load client (8 connections) going through haproxy the whole time."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import LoadClient, LoadStats, free_port
from harness import Immd, have

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images")
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(out), "--all"],
                   check=True, capture_output=True)
    return out


def service(name: str, port: int, count: int = 2, **extra: Any) -> str:
    settings: dict[str, Any] = {
        "router": "haproxy", "route": name, "health_timeout_s": 10, "drain_timeout_s": 5,
        "canary_pause_s": 1, "canary_steps": [25, 50], "batch": "1"}
    settings.update(extra)
    lines = [f"[services.{name}]",
             f'targets = [{{ provider = "local", region = "local", count = {count} }}]',
             f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
             "check_interval_ms = 200, rise = 1, fall = 1 }"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


BASE = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
        "stop_on_close = false\n\n")


def versions(stats: LoadStats) -> set[str]:
    return {json.loads(k)["version"] for k in stats.by_backend}


def register(d: Immd, images: Path, *versions_: str) -> None:
    for v in versions_:
        d.run("image", "add", str(images / v), "--name", "web", "--version", v)


def instances(d: Immd, svc: str) -> list[dict[str, Any]]:
    return [i for i in d.items("instance", "list") if i["tags"].get("imm:service") == svc]


@pytest.fixture
def fleet(tmp_path: Path, images: Path) -> Iterator[tuple[Immd, dict[str, int]]]:
    ports = {"bg": free_port(), "roll": free_port(), "can": free_port()}
    cfg = (BASE + service("bg", ports["bg"]) + service("roll", ports["roll"], count=3)
           + service("can", ports["can"], count=2, strategy="canary")
           + service("slow", free_port(), count=1, bake_time_s=120))
    d = Immd(tmp_path, cfg).start()
    register(d, images, "v1", "v2", "v3")
    yield d, ports
    d.stop()


@pytest.mark.parametrize("svc,strategy", [("bg", "blue-green"), ("roll", "rolling"),
                                          ("can", "canary")])
def test_strategy_under_load(fleet: tuple[Immd, dict[str, int]], svc: str, strategy: str) -> None:
    d, ports = fleet
    d.run("rollout", "start", svc, "--image", "web@v1", "--strategy", strategy, "--wait")
    url = f"http://127.0.0.1:{ports[svc]}/"
    with LoadClient(url, concurrency=8, pause_s=0.002) as load:
        r = d.json("rollout", "start", svc, "--image", "web@v2", "--strategy", strategy, "--wait")
        assert r["state"] == "completed", r["error"]
        during = load.reset()
        load.reset()
        import time
        time.sleep(1.0)
        after = load.reset()
    assert during.failed == 0, during
    assert during.ok > 50 and versions(during) == {"v1", "v2"}
    assert after.failed == 0 and after.ok > 0 and versions(after) == {"v2"}, after
    live = instances(d, svc)
    assert len(live) == (3 if svc == "roll" else 2)
    assert {i["tags"]["imm:rollout"] for i in live} == {r["id"]}
    # v3 fails its health gate: rolled back by itself, with no failed request
    with LoadClient(url, concurrency=8, pause_s=0.002) as load:
        cp = d.run("rollout", "start", svc, "--image", "web@v3", "--strategy", strategy, "--wait",
                   check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        stats = load.stop()
    assert "rolled-back" in cp.stderr and "health check" in cp.stderr
    assert stats.failed == 0, stats
    assert versions(stats) == {"v2"}
    assert {i["tags"]["imm:rollout"] for i in instances(d, svc)} == {r["id"]}
    rollouts = d.items("rollout", "list", "--service", svc)
    assert [x["state"] for x in rollouts[:3]] == ["rolled-back", "completed", "completed"]
    # every decision is in the ledger with its actor
    assert d.run("ledger", "verify").returncode == 0


def test_one_rollout_per_service_and_two_services_side_by_side(fleet: tuple[Immd, dict[str, int]]
                                                               ) -> None:
    d, _ = fleet
    # 'slow' bakes for two minutes: its rollout is surely still running
    slow = d.json("rollout", "start", "slow", "--image", "web@v1")
    cp = d.fails("rollout", "start", "slow", "--image", "web@v2", code=4)
    assert slow["id"] in cp.stderr and "one rollout per service" in cp.stderr
    # two other services roll out side by side, while 'slow' is still going
    first = d.json("rollout", "start", "bg", "--image", "web@v1")
    other = d.json("rollout", "start", "can", "--image", "web@v1")
    for rid in (first["id"], other["id"]):
        assert d.json("rollout", "watch", rid)["state"] == "completed"
    assert len(instances(d, "bg")) == 2 and len(instances(d, "can")) == 2
    assert d.json("rollout", "status", slow["id"])["state"] == "running"
    d.json("rollout", "abort", slow["id"])
    assert d.json("rollout", "watch", slow["id"], check=False)["state"] == "rolled-back"
    assert instances(d, "slow") == []


def test_pause_resume_promote_abort(fleet: tuple[Immd, dict[str, int]]) -> None:
    d, _ = fleet
    d.run("rollout", "start", "can", "--image", "web@v1", "--wait")
    r = d.json("rollout", "start", "can", "--image", "web@v2")
    d.json("rollout", "pause", r["id"])
    assert d.json("rollout", "status", r["id"])["state"] == "paused"
    d.fails("rollout", "pause", r["id"], code=4)
    d.json("rollout", "resume", r["id"])
    d.json("rollout", "promote", r["id"])
    done = d.json("rollout", "watch", r["id"])
    assert done["state"] == "completed"
    assert any(s["name"].endswith("pause") for s in done["plan"])
    skipped = [j for j in done["journal"] if j["detail"].get("skipped") == "promoted"]
    assert skipped, "promote skipped the remaining canary steps"
    r3 = d.json("rollout", "start", "can", "--image", "web@v1")
    d.json("rollout", "abort", r3["id"])
    end = d.json("rollout", "watch", r3["id"], check=False)
    assert end["state"] == "rolled-back" and "aborted by" in end["error"]
    assert {i["tags"]["imm:rollout"] for i in instances(d, "can")} == {r["id"]}


def test_refusals_name_the_rule_and_launch_nothing(tmp_path: Path, images: Path) -> None:
    port = free_port()
    cfg = (BASE + service("web", port, min_ladder_step=0, channel="web/production")
           + service("strict", free_port(), min_ladder_step=3))
    d = Immd(tmp_path, cfg).start()
    try:
        register(d, images, "v1", "v2")
        # allowed channel
        cp = d.fails("rollout", "start", "web", "--image", "web@v1", code=6)
        assert "allowed-channel" in cp.stderr and "web/production" in cp.stderr
        # ladder step
        cp = d.fails("rollout", "start", "strict", "--image", "web@v1", code=6)
        assert "min-ladder-step" in cp.stderr
        d.run("channel", "set", "web/production", "web@v1")
        d.run("channel", "set", "web/production", "web@v2")
        # revoked
        d.run("image", "revoke", "web@v2", "--reason", "CVE-2026-0001")
        cp = d.fails("rollout", "start", "web", "--image", "web@v2", code=6)
        assert "not-revoked" in cp.stderr and "CVE-2026-0001" in cp.stderr
        d.run("image", "restore", "web@v2")
        # no artifact where the service runs: a disk-file image has no local copy
        disk = tmp_path / "disk.raw"
        disk.write_bytes(b"d" * 4096)
        d.run("image", "add", str(disk), "--name", "web", "--version", "disk")
        d.run("channel", "set", "web/production", "web@disk")
        cp = d.fails("rollout", "start", "web", "--image", "web@disk", code=6)
        assert "artifact-in-every-region" in cp.stderr and "local/local" in cp.stderr
        # unsigned: the image row's signature no longer verifies
        digest = d.json("image", "show", "web@v1")["digest"]
        db = sqlite3.connect(d.state / "imm.db")
        env = json.loads(db.execute("SELECT envelope FROM images WHERE digest=?",
                                    (digest,)).fetchone()[0])
        env["signatures"][0]["sig"] = "A" * 86 + "=="
        db.execute("UPDATE images SET envelope=? WHERE digest=?", (json.dumps(env), digest))
        db.commit()
        db.close()
        cp = d.fails("rollout", "start", "web", "--image", "web@v1", code=6)
        assert "signed-by-trusted-key" in cp.stderr
        assert d.items("instance", "list") == []
        assert d.items("rollout", "list") == []
    finally:
        d.stop()


def test_undo_refuses_a_revoked_previous_image(fleet: tuple[Immd, dict[str, int]]) -> None:
    d, _ = fleet
    d.run("rollout", "start", "bg", "--image", "web@v1", "--wait")
    d.run("rollout", "start", "bg", "--image", "web@v2", "--wait")
    d.run("image", "revoke", "web@v1", "--reason", "CVE-2026-4242")
    cp = d.fails("rollout", "undo", "bg", code=6)
    assert "not-revoked" in cp.stderr and "CVE-2026-4242" in cp.stderr
    d.run("image", "restore", "web@v1")
    back = d.json("rollout", "undo", "bg", "--wait")
    assert back["state"] == "completed"
    v1 = d.json("image", "show", "web@v1")["digest"]
    assert {i["tags"]["imm:digest"] for i in instances(d, "bg")} == {v1}
