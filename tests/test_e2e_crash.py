"""kill -9 of immd at every step of a blue-green and a canary rollout, then a restart.

immd is SIGKILLed by its test-only hook (IMM_TEST_KILL_AT=<step>:<before|after>) right before a
step acts or right after it acted but before the journal says so. The instances and haproxy live
on; the restarted immd reconciles the journal with what the provider and router report. Every
run must end completed or rolled back, with no orphaned instance, and the load going through
haproxy the whole time must see no failed request.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backends import LoadClient, free_port
from harness import Immd, have
from test_e2e_rollout import BASE, images, instances, register, service  # noqa: F401

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")

BLUE_GREEN = ["0-launch", "1-attach", "2-shift", "3-retire"]
# a canary of 2 at 50 % with a surge of 1: both new ones beside one old one
CANARY = ["0-launch", "1-attach", "2-retire", "3-shift", "4-pause", "5-shift", "6-retire"]


def wait_dead(d: Immd, timeout: float = 60) -> None:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while d.proc.poll() is None:
        assert time.monotonic() < deadline, "immd was not killed at its step"
        time.sleep(0.05)
    assert d.proc.returncode == -9, d.proc.returncode


def crash_and_resume(d: Immd, image: str) -> dict:
    """Start a rollout on an immd that kills itself at its step; restart; follow it to the end."""
    # The kill may come before the start call is answered: the rollout is journalled first.
    d.run("rollout", "start", "web", "--image", image, check=False)
    wait_dead(d, timeout=90)
    d.stop()
    d.start()
    rid = d.items("rollout", "list", "--service", "web")[0]["id"]
    return d.json("rollout", "watch", rid, check=False)


@pytest.mark.timeout(900)  # 2 kills at each of up to 7 steps, each followed by a restart
@pytest.mark.parametrize("strategy,steps", [("blue-green", BLUE_GREEN), ("canary", CANARY)])
def test_kill9_at_every_step(tmp_path: Path, images: Path, strategy: str,  # noqa: F811
                             steps: list[str]) -> None:
    port = free_port()
    cfg = BASE + service("web", port, count=2, strategy=strategy, canary_steps=[50])
    d = Immd(tmp_path, cfg).start()
    register(d, images, "v1", "v2", "v3")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    target = "v2"
    load = LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.005).start()
    outcomes = []
    try:
        for step in steps:
            for when in ("before", "after"):
                d.stop()
                d.start(extra_env={"IMM_TEST_KILL_AT": f"{step}:{when}"})
                end = crash_and_resume(d, f"web@{target}")
                outcomes.append((step, when, end["state"]))
                assert end["state"] in ("completed", "rolled-back"), (step, when, end["error"])
                live = instances(d, "web")
                assert len(live) == 2, (step, when, live)
                assert len({i["tags"]["imm:rollout"] for i in live}) == 1, (step, when, live)
                if end["state"] == "completed":
                    assert {i["tags"]["imm:rollout"] for i in live} == {end["id"]}
                    target = "v1" if target == "v2" else "v2"
        # a rollback interrupted by a crash is finished after the restart
        d.stop()
        d.start(extra_env={"IMM_TEST_KILL_AT": "rollback:after"})
        end = crash_and_resume(d, "web@v3")
        assert end["state"] == "rolled-back", end
        assert len(instances(d, "web")) == 2
    finally:
        stats = load.stop()
        d.stop()
    assert stats.failed == 0, stats
    assert stats.ok > 100
    assert all(o[2] == "completed" for o in outcomes), outcomes


def test_sigterm_parks_a_rollout_and_the_next_immd_finishes_it(tmp_path: Path,
                                                               images: Path) -> None:  # noqa: F811
    port = free_port()
    cfg = BASE + service("web", port, count=2, strategy="canary", canary_steps=[50],
                         canary_pause_s=4)
    d = Immd(tmp_path, cfg).start()
    register(d, images, "v1", "v2")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.005) as load:
        r = d.json("rollout", "start", "web", "--image", "web@v2")
        deadline = time.monotonic() + 30
        while d.json("rollout", "status", r["id"])["step"] != "4-pause":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert d.stop() == 0  # graceful: the pause is parked, not finished
        assert d.log.read_text().count("parked at shutdown") == 1
        d.start()
        end = d.json("rollout", "watch", r["id"])
        stats = load.stop()
    assert end["state"] == "completed"
    assert stats.failed == 0, stats
    steps = [j["step"] for j in end["journal"] if j["action"] == "done"]
    assert steps.count("4-pause") == 1
    assert {i["tags"]["imm:rollout"] for i in instances(d, "web")} == {r["id"]}
