"""Nothing blocks the event loop: immd runs in-process with blockbuster watching every blocking
call (file I/O, sleeps, sockets, SQLite through os calls) made from imm's code on the loop's
thread, while immctl drives the catalog, the ledger and a rollout through haproxy."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from backends import free_port
from harness import IMMCTL, have, reap_under, wait_for_socket

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
REPO = Path(__file__).resolve().parent.parent


class _Proc:
    """wait_for_socket wants something with poll()."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.returncode = None

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else 1


def test_no_blocking_call_on_the_event_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    from imm.daemon import main as immd_main

    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(tmp_path / "img"),
                    "--all"], check=True, capture_output=True)
    port, dash_port = free_port(), free_port()
    cfg = tmp_path / "immd.toml"
    cfg.write_text(f"""
[providers.local]
kind = "local"
[routers.haproxy]
kind = "haproxy"
[services.web]
targets = [{{ provider = "local", region = "local", count = 2 }}]
router = "haproxy"
route = "web"
route_settings = {{ bind = "127.0.0.1:{port}", check_interval_ms = 200, rise = 1, fall = 1 }}
health_timeout_s = 20
[dashboard]
listen = "127.0.0.1:{dash_port}"
""")
    sock = tmp_path / "immd.sock"
    args = immd_main.parse_args(["--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                       "--socket", str(sock), "--log-level", "info"])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        await immd_main.serve(args, stop)

    caplog.set_level(logging.INFO)
    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    wait_for_socket(sock, _Proc(thread))  # type: ignore[arg-type]
    env = {**os.environ, "IMM_SOCKET": str(sock)}

    def immctl(*a: str) -> str:
        cp = subprocess.run([IMMCTL, *a], capture_output=True, text=True, env=env, timeout=120)
        assert cp.returncode == 0, (a, cp.stdout, cp.stderr)
        return cp.stdout

    try:
        with blockbuster_ctx(["imm"]):
            disk = tmp_path / "disk.raw"
            disk.write_bytes(os.urandom(1 << 20))
            immctl("image", "add", str(disk), "--name", "disk", "--version", "1")
            for v in ("v1", "v2"):
                immctl("image", "add", str(tmp_path / "img" / v), "--name", "web", "--version", v)
            immctl("channel", "set", "web/production", "web@v2")
            immctl("image", "list")
            immctl("image", "show", "channel:web/production")
            immctl("image", "verify", "--all")
            immctl("ledger", "verify")
            immctl("ledger", "proof", "--index", "1")
            immctl("keys", "rotate")
            immctl("status")
            immctl("rollout", "start", "web", "--image", "web@v1", "--wait")
            immctl("rollout", "start", "web", "--image", "web@v2", "--wait")
            immctl("instance", "list")
            immctl("service", "show", "web")
            # the dashboard's pages, from a browser-like client holding the session cookie
            link = immctl("dashboard").strip()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with opener.open(link, timeout=60) as resp:
                assert resp.status == 200 and resp.url.endswith("/ui/fleet")
            rid = json.loads(immctl("--json", "rollout", "list"))["items"][0]["id"]
            for page in ("fleet", "fleet?verdict=ok&provider=local", "rollouts",
                         f"rollouts/{rid}", f"rollouts/{rid}/events", "catalog",
                         "catalog?status=active", "channels/web/production", "images/web@v2",
                         "proof", "proof?index=1", "compliance", "compliance?ref=web@v1",
                         "compliance/export?format=jsonl"):
                with opener.open(f"http://127.0.0.1:{dash_port}/ui/{page}", timeout=60) as resp:
                    assert resp.status == 200, page
            immctl("rollout", "status", "web")
            immctl("channel", "resolve", "web/production", "--provider", "local")
            one = json.loads(immctl("instance", "list", "--json"))["items"][0]["id"]
            immctl("instance", "terminate", one)
            immctl("service", "down", "web")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        reap_under(tmp_path)
    blocked = [r for r in caplog.records if "BlockingError" in r.getMessage()
               or (r.exc_info and "BlockingError" in repr(r.exc_info[1]))]
    assert not blocked, [r.getMessage() for r in blocked]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
