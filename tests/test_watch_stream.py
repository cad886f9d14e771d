"""``immctl rollout watch`` / ``--wait`` read GET /v1/rollouts/{id}/watch, a chunked stream of the
rollout's status. Through a real immd, the local provider and haproxy: during a canary pause,
where nothing is journalled, the stream still sends a line at least every second, so the
pause's countdown moves and a long pause or approval never looks like a dead connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.cli.client import Client

from backends import free_port
from harness import Immd, have
from test_e2e_rollout import BASE, images, register, service  # noqa: F401

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")


def test_the_watch_stream_keeps_talking_through_a_pause(tmp_path: Path,
                                                        images: Path) -> None:  # noqa: F811
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=1, strategy="canary",
                                      canary_steps=[50], canary_pause_s=4)).start()
    register(d, images, "v1", "v2")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    r = d.json("rollout", "start", "web", "--image", "web@v2")
    seen = list(Client(str(d.sock)).stream_lines(f"/v1/rollouts/{r['id']}/watch"))
    assert seen[-1]["state"] == "completed"
    pausing = [s for s in seen if s["step"] and s["step"].endswith("-pause")
               and s["state"] == "running"]
    # a 4 s pause with no journal entry in it after its begin: several lines with one journal
    longest = max(sum(1 for s in pausing if len(s["journal"]) == n)
                  for n in {len(s["journal"]) for s in pausing})
    assert longest >= 3, [(s["step"], len(s["journal"])) for s in seen]
