"""Rollouts against misbehaving instances and a crowded port range, through the real immd,
immctl, local provider and haproxy.

- A health check that hangs (the instance accepts the check's connection and never answers)
  times out per the route's settings, counts as a failure, and the rollout rolls back after its
  ``health_timeout_s``, with no failed request under load.
- Ports that come back: with a port range just large enough for two generations of instances,
  back-to-back rollouts reuse the ports the previous generation left in TIME_WAIT.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backends import LoadClient, free_port
from harness import Immd, have
from test_e2e_rollout import BASE, images, instances, register, service, versions  # noqa: F401

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")


def test_a_health_check_that_hangs_fails_and_the_rollout_rolls_back(
        tmp_path: Path, images: Path) -> None:  # noqa: F811
    port = free_port()
    # the route's own check timeout (500 ms) fails each hanging check long before the router's
    # default (timeouts.check, 2 s) would
    cfg = BASE + service("web", port, count=2, health_timeout_s=15).replace(
        "fall = 1 }", "fall = 1, check_timeout_ms = 500 }")
    d = Immd(tmp_path, cfg).start()
    register(d, images, "v1", "v5")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    admin = tmp_path / "state" / "haproxy" / "haproxy" / "admin.sock"
    statuses: set[str] = set()
    stop = threading.Event()

    def watch_checks() -> None:
        # the check status haproxy reports for each server (L7TOUT: the check timed out)
        while not stop.wait(0.1):
            with contextlib.suppress(OSError):
                for row in csv.DictReader(io.StringIO(ask(admin, "show stat web 4 -1")
                                                      .lstrip("# "))):
                    statuses.add(row.get("check_status") or "")

    watcher = threading.Thread(target=watch_checks)
    watcher.start()
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.005) as load:
        started = time.monotonic()
        cp = d.run("rollout", "start", "web", "--image", "web@v5", "--wait", check=False,
                   timeout=120)
        took = time.monotonic() - started
        stats = load.stop()
    stop.set()
    watcher.join()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "rolled-back" in cp.stderr, cp.stderr
    assert re.search(r"did not pass the health check of route web within 15s", cp.stderr), \
        cp.stderr
    print(f"hanging health check: rolled back after {took:.1f}s (health_timeout_s 15)")
    assert stats.failed == 0, stats
    assert versions(stats) == {"v1"}
    live = instances(d, "web")
    assert len(live) == 2
    first = d.items("rollout", "list", "--service", "web")[-1]
    assert {i["tags"]["imm:rollout"] for i in live} == {first["id"]}
    # haproxy saw the new servers' checks time out (not refused, not a 5xx)
    assert "L7TOUT" in statuses, statuses
    cfg_text = (tmp_path / "state" / "haproxy" / "haproxy" / "haproxy.cfg").read_text()
    assert "    timeout check 500ms" in cfg_text, cfg_text


def ask(admin: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(admin))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def ports_in_time_wait(ports: set[int]) -> set[int]:
    out = subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True,
                         check=True).stdout
    found = set()
    for line in out.splitlines():
        cols = line.split()
        for addr in cols[-2:]:
            p = int(addr.rsplit(":", 1)[1])
            if p in ports:
                found.add(p)
    return found


@pytest.mark.skipif(not have("ss"), reason="ss (iproute2) is not installed")
def test_back_to_back_rollouts_reuse_ports_left_in_time_wait(
        tmp_path: Path, images: Path) -> None:  # noqa: F811
    # two generations of 2 instances side by side during a blue-green: 4 ports are just enough
    lo = free_port()
    for _ in range(50):
        lo = free_port()
        if lo + 3 < 61000 and all(_free(p) for p in range(lo, lo + 4)):
            break
    port = free_port()
    cfg = BASE.replace('kind = "local"\n', f'kind = "local"\nport_range = "{lo}-{lo + 3}"\n', 1)
    cfg += service("web", port, count=2)
    d = Immd(tmp_path, cfg).start()
    register(d, images, "v1", "v2")
    ids = [d.json("rollout", "start", "web", "--image", "web@v1", "--wait")["id"]]
    seen_time_wait: set[int] = set()
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        for image in ("web@v2", "web@v1", "web@v2"):
            before = {i["extra"]["port"] for i in instances(d, "web")}
            r = d.json("rollout", "start", "web", "--image", image, "--wait", check=False)
            assert r["state"] == "completed", r.get("error")
            ids.append(r["id"])
            now = {i["extra"]["port"] for i in instances(d, "web")}
            # the range holds two generations: each rollout took the ports the one before it
            # had just given back, left in TIME_WAIT by the connections haproxy kept open
            assert len(now) == 2 and now.isdisjoint(before), (before, now)
            seen_time_wait |= ports_in_time_wait(before)
    stats = load.stop()
    assert stats.failed == 0, stats
    assert seen_time_wait, "no retired port was in TIME_WAIT: the test proved nothing"
    print(f"ports reused while in TIME_WAIT: {sorted(seen_time_wait)}")
    live = instances(d, "web")
    assert {i["tags"]["imm:rollout"] for i in live} == {ids[-1]}
    assert all(lo <= i["extra"]["port"] <= lo + 3 for i in live)


def _free(p: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
    return True


HANGING_GATE = '''
import asyncio
from imm.plugins.hookspecs import hookimpl

@hookimpl
async def imm_health_gate(rollout, step, instances):
    if rollout["image"] == open(__file__.replace("_mod.py", ".hang")).read().strip():
        await asyncio.sleep(3600)  # an analysis query that never returns
    return True
'''


def test_a_health_gate_that_hangs_fails_within_the_health_timeout(
        tmp_path: Path, images: Path) -> None:  # noqa: F811
    from test_plugins import install_plugin

    site = install_plugin(tmp_path, "hanggate", HANGING_GATE)
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=2, health_timeout_s=3))
    d.start(extra_env={"PYTHONPATH": str(site)})
    register(d, images, "v1", "v2")
    (site / "hanggate.hang").write_text(d.json("image", "show", "web@v2")["digest"])
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.005) as load:
        cp = d.run("rollout", "start", "web", "--image", "web@v2", "--wait", check=False,
                   timeout=120)
        stats = load.stop()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "rolled-back" in cp.stderr
    assert "health gate at 1-attach gave no verdict within the service's health_timeout_s " \
           "(3s)" in cp.stderr, cp.stderr
    assert stats.failed == 0, stats
    assert versions(stats) == {"v1"}
