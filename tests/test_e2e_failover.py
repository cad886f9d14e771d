"""Two real immd on one PostgreSQL database (the session's cluster): one leads, the other follows;
a rollout started on the follower is run by the leader; the leader is kill -9'd mid-rollout, the
follower takes over and is itself kill -9'd at a later step; an immd started again takes over
and finishes. The end state is what one immd restarted after a crash reaches: completed, two
instances of the rollout, none left over. (Retiring an old set after a takeover is covered step
by step in tests/unit/test_store_lease_failover.py; on one immd by tests/test_e2e_crash.py.)

On one machine the two immd share the local provider's ``root`` and the haproxy router's ``dir``,
standing in for one cloud and one load balancer (on two hosts these are per host: README, "More
than one immd"). Each immd dies by its test-only hook (``IMM_TEST_KILL_AT``), a real SIGKILL.
The takeover times are printed (``-s``); bench/bench_failover.py measures them.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from test_e2e_crash import wait_dead

import pgcluster
from backends import free_port
from harness import Immd, have, reap_under
from test_e2e_rollout import images, instances, register, service  # noqa: F401

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
PW_ENV = {"IMM_PG_PASSWORD": pgcluster.PASSWORD}


def config(url: str, shared: Path, port: int) -> str:
    return (f'[state]\nurl = "{url}"\npassword_env = "IMM_PG_PASSWORD"\n\n'
            "[cluster]\nlease_s = 2\n\n"
            f'[providers.local]\nkind = "local"\nroot = "{shared / "local"}"\n\n'
            f'[routers.haproxy]\nkind = "haproxy"\ndir = "{shared / "haproxy"}"\n'
            "stop_on_close = false\n\n"
            + service("web", port, count=2, strategy="blue-green"))


def cluster(d: Immd) -> dict[str, Any]:
    return dict(d.json("status")["cluster"])


def wait_epoch(pg: Any, db: str, epoch: int, limit_s: float = 30) -> tuple[float, str]:
    """Seconds until the lease reaches ``epoch`` (read in the database: the new leader may be
    killed by its own hook before immctl could ask it), and its holder."""
    t0 = time.monotonic()
    while True:
        rows = pg.sql("SELECT holder, epoch FROM leases", db)
        if rows and rows[0][1] >= epoch:
            return time.monotonic() - t0, str(rows[0][0])
        assert time.monotonic() - t0 < limit_s, f"the lease never reached epoch {epoch}: {rows}"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_leader_killed_mid_rollout_twice_another_immd_finishes_it(
        pg_cluster: Any, tmp_path: Path, images: Path) -> None:  # noqa: F811
    db = pg_cluster.new_database()
    shared = tmp_path / "shared"
    shared.mkdir()
    daemons: list[Immd] = []
    try:
        _run(pg_cluster, db, shared, tmp_path, images, daemons)
    finally:
        for d in daemons:  # first: a live immd would restart the haproxy they share
            d.stop()
        reap_under(shared)  # the instances and haproxy the two immd shared


def _run(pg: Any, db: str, shared: Path, tmp_path: Path, images: Path,  # noqa: F811
         daemons: list[Immd]) -> None:
    cfg = config(pg.tcp_url(db), shared, free_port())
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = Immd(tmp_path / "a", cfg)
    b = Immd(tmp_path / "b", cfg)
    daemons += [a, b]
    a.start(extra_env={**PW_ENV, "IMM_TEST_KILL_AT": "1-attach:after"})
    register(a, images, "v1")
    shutil.copytree(a.state / "keys", b.state / "keys")  # one catalog, one signing key
    b.start(extra_env={**PW_ENV, "IMM_TEST_KILL_AT": "2-shift:after"})
    ca, cb = cluster(a), cluster(b)
    assert (ca["role"], cb["role"]) == ("leader", "follower")
    assert cb["leader"] == ca["me"] and cb["epoch"] == ca["epoch"] == 1
    assert {m["holder"] for m in cb["members"]} >= {ca["me"], cb["me"]}
    text = b.run("status").stdout
    assert f"follower ({cb['me']})" in text and f"{ca['me']}, epoch 1, since" in text

    # started on the follower: journalled there, carried out by the leader, which dies
    b.run("rollout", "start", "web", "--image", "web@v1")
    wait_dead(a, timeout=60)
    took_b, holder = wait_epoch(pg, db, 2)
    assert holder == cb["me"]
    wait_dead(b, timeout=60)  # b resumed the rollout and died after shifting the traffic
    a.stop()
    a.start(extra_env=PW_ENV)
    took_a, holder = wait_epoch(pg, db, 3)
    assert holder == cluster(a)["me"]
    print(f"\ntakeover after kill -9 (lease_s = 2): {took_b:.2f}s by the follower; the "
          f"immd restarted after the second kill led {took_a:.2f}s after it answered")
    rid = a.items("rollout", "list", "--service", "web")[0]["id"]
    end = a.json("rollout", "watch", rid)
    assert end["state"] == "completed", end["error"]
    live = instances(a, "web")
    assert {i["tags"]["imm:rollout"] for i in live} == {rid} and len(live) == 2
    steps = [(j["step"], j["action"]) for j in end["journal"]]
    assert steps.count(("1-attach", "begin")) == 1  # decided once, run again by the next leader
    st = cluster(a)
    assert st["role"] == "leader" and st["leader"] == st["me"] and st["epoch"] == 3
    assert a.run("ledger", "verify").returncode == 0


@pytest.mark.slow
def test_a_leader_stopped_past_its_lease_steps_down_when_it_resumes(
        pg_cluster: Any, tmp_path: Path) -> None:
    """SIGSTOP the leader until the follower has taken over, then SIGCONT it: it finds its
    lease gone at its first renewal and follows; the lease stays with the new leader."""
    db = pg_cluster.new_database()
    cfg = (f'[state]\nurl = "{pg_cluster.tcp_url(db)}"\npassword_env = "IMM_PG_PASSWORD"\n\n'
           "[cluster]\nlease_s = 2\n")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = Immd(tmp_path / "a", cfg).start(extra_env=PW_ENV)
    b = Immd(tmp_path / "b", cfg)
    shutil.copytree(a.state / "keys", b.state / "keys")
    b.start(extra_env=PW_ENV)
    ca, cb = cluster(a), cluster(b)
    assert (ca["role"], cb["role"], ca["epoch"]) == ("leader", "follower", 1)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        took, holder = wait_epoch(pg_cluster, db, 2)
        assert holder == cb["me"] and cluster(b)["role"] == "leader"
    finally:
        a.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while (st := cluster(a))["role"] != "follower" or "another immd" not in st["reason"]:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert (st["leader"], st["epoch"]) == (cb["me"], 2)
    assert pg_cluster.sql("SELECT holder, epoch FROM leases", db) == [(cb["me"], 2)]
    assert b"steps down as the leader of epoch 1: another immd took the lease" in a.log.read_bytes()
    print(f"\ntakeover from a stopped leader (lease_s = 2): {took:.2f}s")
