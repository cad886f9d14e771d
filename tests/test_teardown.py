"""Tearing down on purpose: `immctl service down`, `immctl instance terminate`, `immd
--stop-fleet`, each against a real immd with the local provider and its own haproxy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import free_port
from harness import Immd, have, processes_under
from test_e2e_rollout import BASE, register, service

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images")
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(out), "--all"],
                   check=True, capture_output=True)
    return out


def curl(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "--max-time", "5", f"127.0.0.1:{port}/"],
                          capture_output=True, text=True)


def leaf(d: Immd, index: int) -> dict:
    import base64

    out = subprocess.run(["curl", "-s", "--unix-socket", str(d.sock),
                          f"http://imm/v1/ledger/leaves/{index}"], capture_output=True,
                         text=True, check=True).stdout
    env = json.loads(out)["data"]  # the DSSE envelope as signed
    return json.loads(base64.b64decode(env["payload"]))


def test_terminate_one_instance_then_take_the_service_down(tmp_path: Path, images: Path) -> None:
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=3)).start()
    register(d, images, "v1", "v2")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    ids = sorted(i["id"] for i in d.items("instance", "list"))
    assert len(ids) == 3

    out = d.run("instance", "terminate", ids[0], "--reason", "suspected compromise").stdout
    assert out.startswith(f"terminated {ids[0]} (local/local, service web)")
    record = leaf(d, int(out.rsplit("leaf ", 1)[1]))
    assert record["type"] == "fleet" and record["action"] == "instance-terminate"
    assert record["instance"]["id"] == ids[0] and record["reason"] == "suspected compromise"
    assert record["actor"]
    assert sorted(i["id"] for i in d.items("instance", "list")) == ids[1:]
    assert json.loads(curl(port).stdout)["version"] == "v1"  # the others still serve
    d.fails("instance", "terminate", ids[0], code=3)  # gone now
    assert "no live instance 'i-nope'" in d.fails("instance", "terminate", "i-nope",
                                                  code=3).stderr

    # an active rollout owns the service's instances: both verbs are refused
    rid = d.json("rollout", "start", "web", "--image", "web@v2", "--strategy", "canary")["id"]
    assert d.json("rollout", "pause", "web")["state"] == "paused"  # a service name will do
    # any live instance of the service (the canary may already have retired an old one)
    live = d.items("instance", "list")[0]["id"]
    cp = d.fails("instance", "terminate", live, code=4)
    assert f"rollout {rid}" in cp.stderr and "abort" in cp.stderr
    cp = d.fails("service", "down", "web", code=4)
    assert "abort it first ('immctl rollout abort web')" in cp.stderr
    d.run("rollout", "resume", "web")
    d.run("rollout", "watch", "web")

    out = d.run("service", "down", "web").stdout
    assert "service web is down: drained and terminated 3 instance(s)" in out
    record = leaf(d, int(out.rsplit("leaf ", 1)[1]))
    assert record["action"] == "service-down" and len(record["instances"]) == 3
    assert d.items("instance", "list") == []
    assert "503 Service Unavailable" in curl(port).stdout  # haproxy is up, nothing behind it
    assert d.json("service", "show", "web")["instances"] == []
    d.run("ledger", "verify")


def test_stop_fleet_stops_haproxy_and_local_instances_with_immd(tmp_path: Path,
                                                                  images: Path) -> None:
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=2))
    d.start()
    register(d, images, "v1")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    # without --stop-fleet, instances and haproxy outlive immd (by design) ...
    assert d.stop(signal.SIGTERM) == 0
    assert processes_under(tmp_path) and json.loads(curl(port).stdout)["version"] == "v1"
    # ... the next immd adopts them; stopped with --stop-fleet it takes them along
    d.start(args=("--stop-fleet",))
    assert len(d.items("instance", "list")) == 2
    assert d.stop(signal.SIGINT) == 0  # Ctrl-C
    deadline = time.monotonic() + 10
    while processes_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(tmp_path) == []
    assert curl(port).returncode != 0
    log = d.log.read_text()
    assert "--stop-fleet: terminated 2 instance(s) of provider local" in log
    assert "--stop-fleet: stopped router haproxy" in log



def test_ctrl_c_during_wait_says_the_rollout_goes_on(tmp_path: Path, images: Path) -> None:
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=2, canary_pause_s=3)).start()
    register(d, images, "v1")
    follow = subprocess.Popen(
        ["immctl", "rollout", "start", "web", "--image", "web@v1", "--strategy", "canary",
         "--wait"], env={**d.env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    follow.send_signal(signal.SIGINT)
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 130, out + err
    rid = out.split()[1]
    assert (f"stopped following; rollout {rid} goes on in immd. 'immctl rollout watch web' "
            "follows it again, 'immctl rollout abort web' rolls it back") in err
    assert "Traceback" not in err
    done = d.run("rollout", "watch", "web")
    assert f"rollout {rid} completed" in done.stdout
    assert done.stderr.splitlines()[-1].endswith("new 2 launched, 2 healthy, traffic to new 100%")
    table = d.run("instance", "list").stdout.splitlines()
    assert table[0].split()[:6] == ["ID", "PROVIDER", "REGION", "SERVICE", "IMAGE", "DIGEST"]
    assert all(r.split()[4] == "web@v1" and r.split()[5].startswith("sha256:")
               for r in table[1:]) and len(table) == 3
