"""Waves through a real immd, real haproxy and two local providers (two "regions" of a fleet):
the first rollout runs wave by wave, a kill -9 of immd inside wave 2 (its hook
IMM_TEST_KILL_AT) is resumed by the next immd, and the load through haproxy sees no failure.
The engine's wave logic itself (rollback of waves 1..N, every kill point, config errors) is
unit-tested in tests/unit/test_rollout_plan_waves.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backends import LoadClient, free_port
from harness import Immd, have
from test_e2e_rollout import images, instances, register, service  # noqa: F401

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")]

# two local providers need their own roots (both default to <state_dir>/local)
CONFIG = ('[providers.local]\nkind = "local"\n\n[providers.edge]\nkind = "local"\n'
          'root = "{edge}"\n\n[routers.haproxy]\nkind = "haproxy"\nstop_on_close = false\n\n')


def wait_dead(d: Immd, timeout: float = 60) -> None:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while d.proc.poll() is None:
        assert time.monotonic() < deadline, "immd was not killed at its step"
        time.sleep(0.05)
    assert d.proc.returncode == -9, d.proc.returncode


def test_waves_roll_out_in_order_and_a_kill_inside_wave_2_resumes(
        tmp_path: Path, images: Path) -> None:  # noqa: F811
    port = free_port()
    svc = service("web", port, count=1, strategy="blue-green").replace(
        'targets = [{ provider = "local", region = "local", count = 1 }]',
        'targets = [{ provider = "local", region = "local", count = 1 }, '
        '{ provider = "edge", region = "local", count = 1 }]\n'
        'waves = [["local/local"], ["edge/local"]]')
    d = Immd(tmp_path, CONFIG.format(edge=tmp_path / "edge") + svc).start()
    try:
        register(d, images, "v1", "v2")
        first = d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
        assert first["state"] == "completed", first["error"]
        assert [(w["targets"], w["status"]) for w in first["waves"]] == [
            (["local/local"], "done"), (["edge/local"], "done")]
        done = [j["step"] for j in first["journal"] if j["action"] == "done"]
        assert done.index("w1-4-wave") < done.index("w2-5-launch")
        with LoadClient(f"http://127.0.0.1:{port}/", concurrency=4, pause_s=0.005) as load:
            d.stop()
            d.start(extra_env={"IMM_TEST_KILL_AT": "w2-7-shift:after"})
            d.run("rollout", "start", "web", "--image", "web@v2", check=False)
            wait_dead(d)
            d.stop()
            d.start()
            rid = d.items("rollout", "list", "--service", "web")[0]["id"]
            mid = d.json("rollout", "status", rid)
            end = d.json("rollout", "watch", rid, check=False)
            stats = load.stop()
        assert mid["waves"][0]["status"] == "done", mid["waves"]
        assert end["state"] == "completed", end["error"]
        assert [w["status"] for w in end["waves"]] == ["done", "done"]
        live = instances(d, "web")
        assert sorted(i["provider"] for i in live) == ["edge", "local"]
        assert {i["tags"]["imm:rollout"] for i in live} == {rid}
        assert stats.failed == 0, stats
        assert stats.ok > 50
        out = d.run("rollout", "status", rid).stdout
        assert "waves:" in out and "edge/local" in out
    finally:
        d.stop()
