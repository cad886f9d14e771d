"""A fleet that keeps itself, end to end: a real immd with the local provider and its own
haproxy, driven only by immctl. SIGKILL of one instance of a steady service: it is taken out of
traffic, replaced from the same image, kept stopped for inspection, and the replacement is a
signed ledger record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backends import LoadClient, free_port
from harness import Immd, have

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")]
REPO = Path(__file__).resolve().parent.parent


def mine(d: Immd) -> list[dict[str, Any]]:
    return [i for i in d.items("instance", "list") if i["tags"].get("imm:service") == "web"]


def test_a_killed_instance_is_replaced_and_quarantined(tmp_path: Path) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
           "stop_on_close = false\n\n[services.web]\n"
           'targets = [{ provider = "local", region = "local", count = 2 }]\n'
           'router = "haproxy"\nroute = "web"\n'
           f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
           "check_interval_ms = 200, rise = 1, fall = 1 }\n"
           "health_timeout_s = 10\ndrain_timeout_s = 1\nheal_grace_s = 2\n")
    d = Immd(tmp_path, cfg).start()
    try:
        d.run("image", "add", str(images / "v1"), "--name", "web", "--version", "v1")
        r = d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
        assert r["state"] == "completed", r["error"]
        before = {i["id"]: i for i in mine(d)}
        assert len(before) == 2
        victim = sorted(before)[0]
        survivor = next(i for i in before if i != victim)
        size = d.ledger_size()
        os.kill(before[victim]["extra"]["pid"], signal.SIGKILL)

        deadline = time.monotonic() + 30
        while True:
            live = [i for i in mine(d) if i["state"] == "running"]
            held = d.items("instance", "list", "--quarantined")
            if len(live) == 2 and held and victim not in {i["id"] for i in live}:
                break
            assert time.monotonic() < deadline, (live, held)
            time.sleep(0.3)
        new = next(i for i in live if i["id"] != survivor)
        # replaced from the same image, with the rollout's tags
        assert new["image_id"] == before[victim]["image_id"]
        assert new["tags"] == before[victim]["tags"]
        # the dead one is kept (stopped, not terminated) and listed as quarantined
        assert [h["instance"] for h in held] == [victim]
        assert "exited" in held[0]["reason"]
        dead = [i for i in mine(d) if i["id"] == victim]
        assert dead and dead[0]["state"] != "running"
        text = d.run("instance", "list", "--quarantined").stdout
        assert victim in text and "exited" in text
        # a signed ledger record of the replacement, with its reason
        assert d.ledger_size() > size
        heal = d.json("service", "show", "web")["heal"]
        actions = [e["action"] for e in heal]
        assert "replace" in actions and "quarantine" in actions
        replace = next(e for e in heal if e["action"] == "replace")
        assert victim in replace["reason"]
        assert d.run("ledger", "verify").returncode == 0
        # out of traffic: haproxy serves only live instances, and every request succeeds
        with LoadClient(f"http://127.0.0.1:{port}/", concurrency=4, pause_s=0.005) as load:
            time.sleep(1.0)
            stats = load.stop()
        assert stats.failed == 0 and stats.ok > 0, stats
    finally:
        d.stop()
