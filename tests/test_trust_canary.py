"""A canary with a manual judgment step, end to end: canary_steps = [20, "approve", 50] holds
the split until k operators approve with ssh-keygen-made signatures, survives a kill -9 while
waiting, and rolls back when the wait expires. Real immd, local provider, haproxy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sshkeys import make_key, needs_ssh_keygen

from backends import free_port
from harness import Immd, have

pytestmark = [needs_ssh_keygen, pytest.mark.slow,
              pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")]
REPO = Path(__file__).resolve().parent.parent


def service(name: str, port: int, timeout_s: int) -> str:
    return (f'[services.{name}]\n'
            'targets = [{ provider = "local", region = "local", count = 2 }]\n'
            f'router = "haproxy"\nroute = "{name}"\nstrategy = "canary"\n'
            'canary_steps = [20, "approve", 50]\ncanary_pause_s = 0.5\n'
            f'approve_timeout_s = {timeout_s}\nhealth_timeout_s = 10\ndrain_timeout_s = 2\n'
            f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
            'check_interval_ms = 200, rise = 1, fall = 1 }\n\n'
            f'[protect.{name}]\napprovals = 2\napprovers = ["sre-1", "sre-2"]\n\n')


def step_change(d: Immd, rid: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for c in d.items("change", "list", "--all"):  # --all: it may expire before we look
            if c["action"] == "rollout-step" and c["terms"]["rollout"] == rid:
                return c
        st = d.json("rollout", "status", rid)
        assert st["state"] in ("running", "rolling-back"), st
        assert time.monotonic() < deadline, st
        time.sleep(0.3)


def start(d: Immd, keys: dict[str, Path], svc: str, ref: str, *extra: str) -> str:
    ch = d.json("rollout", "start", svc, "--image", ref, *extra)
    assert ch["pending"]
    for k in ("sre-1", "sre-2"):
        r = d.json("approve", ch["id"], "--key", str(keys[k]))
    assert r["state"] == "applied", r
    return str(r["result"]["rollout"])


def test_approve_step_waits_resumes_and_expires(tmp_path: Path) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    keys = {n: make_key(tmp_path, n) for n in ("sre-1", "sre-2")}
    cfg = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
           'stop_on_close = false\n\n' + service("web", free_port(), 300)
           + service("api", free_port(), 4))
    d = Immd(tmp_path, cfg).start()
    for n, k in keys.items():
        d.run("operator", "add", n, "--ssh-key", f"{k}.pub")
    for v in ("v1", "v2"):
        d.run("image", "add", str(images / v), "--name", "web", "--version", v)
    for svc in ("web", "api"):
        rid = start(d, keys, svc, "web@v1", "--strategy", "blue-green")
        assert d.json("rollout", "watch", rid)["state"] == "completed"

    rid = start(d, keys, "web", "web@v2")
    change = step_change(d, rid)
    assert change["terms"]["step"].endswith("-approve") and change["approvals_needed"] == 2
    st = d.json("rollout", "status", rid)
    new = [i for i in st["instances"] if i["new"]]
    assert new and all(i["weight"] for i in new)  # holding the 20 % split while it waits

    # kill -9 while waiting: after the restart the rollout waits on the same change
    d.stop(signal.SIGKILL)
    d.start()
    time.sleep(1)
    again = step_change(d, rid)
    assert again["id"] == change["id"]
    assert len([c for c in d.items("change", "list") if c["action"] == "rollout-step"]) == 1
    d.json("approve", change["id"], "--key", str(keys["sre-1"]))
    time.sleep(1)
    assert d.json("rollout", "status", rid)["state"] == "running"  # one of two: still waiting
    d.json("approve", change["id"], "--key", str(keys["sre-2"]))
    done = d.json("rollout", "watch", rid)
    assert done["state"] == "completed" and done["image_ref"] == "web@v2"
    assert d.json("change", "show", change["id"])["state"] == "applied"

    # nobody approves in time: the canary rolls back and v1 keeps serving
    rid = start(d, keys, "api", "web@v2")
    change = step_change(d, rid)
    cp = d.run("rollout", "watch", rid, "--json", check=False)
    assert cp.returncode == 1
    done = json.loads(cp.stdout)
    assert done["state"] == "rolled-back"
    assert "not given in time" in done["error"] and change["id"] in done["error"]
    live = [i for i in d.items("instance", "list") if i["tags"].get("imm:service") == "api"]
    v1 = d.json("image", "show", "web@v1")["digest"]
    assert live and all(i["tags"].get("imm:digest") == v1 for i in live)
