"""A seeded kill -9 harness that hits immd in the middle of rollout steps.

tests/test_e2e_crash.py kills at step boundaries, deterministically. Here the example instances
are slow on purpose (``APP_START_DELAY_S``: the port listens only after a while, so ``attach``
waits for health; ``APP_DRAIN_S``: a stopped instance keeps answering for a while, so ``retire``
waits for it). Three services, one per strategy (blue-green, rolling, canary), roll out side by
side in one immd, and immd is SIGKILLed at random moments (each rollout is given one to three
kills, then left to finish), then restarted, over and over, until at least ``KILLS`` kills
(IMM_CRASH_KILLS, default 20) have landed while a rollout of each strategy was active. Each
service:

- every rollout ends completed or rolled back (never failed, never stuck); every third one is of
  the broken image v3 and must end rolled back, so kills land in rollbacks too;
- no orphan: the service's instances are exactly the ones of its last completed rollout, and no
  other instance process is left running;
- the route is never empty: a watcher reads haproxy's server states every 50 ms and sees at
  least one server up, ready and weighted every time;
- 8 keep-alive clients going through its haproxy route the whole time see no failed request.

The seed is printed; ``IMM_CRASH_SEED=<seed>`` replays the same kill schedule. Where each kill
landed (inside a step: its journal says begun, not done; or between steps) is printed too.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imm.cli.client import Client, DaemonUnreachable
from imm.plugins.routers.haproxy import parse_servers_state

from backends import LoadClient, free_port
from harness import Immd, have, processes_under, wait_for_socket
from test_e2e_rollout import BASE, images, register, service  # noqa: F401

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")]

KILLS = int(os.environ.get("IMM_CRASH_KILLS", "20"))  # kills that land during a rollout
SEED = int(os.environ.get("IMM_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
START_DELAY_S, DRAIN_S = 0.4, 0.4
COUNT = 2  # instances per service
ACTIVE = ("running", "paused", "rolling-back")


# A spare immd: the interpreter with immd's modules already imported, waiting for a line on
# stdin to run immd's main(). The harness measures how immd recovers, not how long Python takes
# to import aiohttp on a busy machine, so the next immd is always ready before the kill.
SPARE = """
import importlib.metadata, sys
import imm.daemon.main as m
for ep in importlib.metadata.entry_points(group="imm"):
    ep.load()
sys.stdin.readline()
sys.exit(m.main(sys.argv[1:]))
"""


class WarmImmd(Immd):
    """An Immd whose next process is spawned (and has imported everything) in advance."""

    spare: subprocess.Popen[bytes] | None = None
    log_handle: Any = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-c", SPARE, "--state-dir", str(self.state), "--socket",
                str(self.sock)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        if self.log_handle is None:
            self.log_handle = open(self.log, "ab")  # noqa: SIM115 - closed in discard_spare()
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=self.log_handle,
                                stderr=subprocess.STDOUT)

    def start(self, extra_env: dict[str, str] | None = None) -> Immd:
        assert extra_env is None
        proc = self.spare or self._spawn()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        self.proc = proc
        wait_for_socket(self.sock, proc, timeout=120)  # a busy machine: be patient
        self.spare = self._spawn()
        return self

    def discard_spare(self) -> None:
        if self.spare is not None:
            self.spare.kill()
            self.spare.wait()
            self.spare = None
        if self.log_handle is not None:
            self.log_handle.close()
            self.log_handle = None


class RouteWatch:
    """Reads ``show servers state`` every 50 ms from haproxy's admin socket and counts the
    samples where no server could take a new request (none up, ready and weighted)."""

    def __init__(self, admin: Path, route: str) -> None:
        self.admin, self.route = admin, route
        self.samples = 0
        self.empty: list[str] = []
        self.unreachable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ask(self) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.admin))
            s.sendall(f"show servers state {self.route}\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                text = self._ask()
            except OSError:
                self.unreachable += 1  # a reload swaps the worker behind the socket
                continue
            _, rows = parse_servers_state(text)
            if not rows:
                continue
            self.samples += 1
            serving = [r for r in rows
                       if r.state == "ready" and r.number("srv_uweight") > 0 and r.healthy]
            if not serving:
                self.empty.append(" ".join(
                    f"{r.name}:{r.state}/w{r.number('srv_uweight')}/h{r.healthy}" for r in rows))

    def __enter__(self) -> RouteWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def where_killed(db: Path, rid: str) -> tuple[str, str]:
    """(rollout state, where) at the moment of the kill, read from the dead immd's database:
    where is 'inside <step>' when the step's last journal entry is a begin, else 'after <step>'."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        state = conn.execute("SELECT state FROM rollouts WHERE id=?", (rid,)).fetchone()[0]
        step, action = conn.execute(
            "SELECT step, action FROM rollout_journal WHERE rollout=? ORDER BY seq DESC LIMIT 1",
            (rid,)).fetchone()
    finally:
        conn.close()
    return state, (f"inside {step}" if action == "begin" else f"after {step}")


def app_processes(root: Path, svc: str) -> list[int]:
    """Pids of example-app instances of service ``svc`` started under ``root``."""
    out = []
    for pid in processes_under(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"app.py" in cmd and f"IMM_SERVICE={svc}".encode() in env:
            out.append(pid)
    return out


STRATEGIES = {"bg": "blue-green", "roll": "rolling", "can": "canary"}


@dataclass
class Track:
    """One service under the harness: its load, its route watch and its tally."""

    svc: str
    port: int
    load: LoadClient
    watch: RouteWatch | None = None
    rid: str | None = None  # the rollout running now
    target: str = "v2"
    broken: bool = False  # the rollout running now is of the broken image
    quota: int = 0  # kills this rollout is to take (1 to 3); past them it is left to finish
    hits: int = 0  # kills it took so far
    last_completed: str = ""
    kills: int = 0
    runs: int = 0
    landed: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)


def api(d: Immd, method: str, path: str, body: Any = None, **query: Any) -> Any:
    """One call to immd's API over its socket (immctl's own client, without a process start
    per call: on a busy machine those dominate the harness's time)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return Client(str(d.sock), timeout=120).request(method, path, body=body, query=query)
        except DaemonUnreachable:
            # just after a kill the next immd may not listen yet: it is up within seconds
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def check_settled(d: Immd, root: Path, t: Track) -> None:
    """After a rollout ended: the service runs exactly the instances of its last completed
    rollout, and no other instance process is left (a retired one may finish its drain)."""
    listed = [i for i in api(d, "GET", "/v1/instances")["instances"]
              if i["tags"].get("imm:service") == t.svc]
    # as a cloud does, the local provider lists an instance whose process is gone as
    # "terminated" for a while (a rollback's terminate cut short by a kill leaves one): it runs
    # nothing, and the process count below proves no process of it is left
    live = [i for i in listed if i["state"] != "terminated"]
    assert len(live) == COUNT, (t.svc, live)
    # all run the last completed rollout's image: its own instances, or ones a later rollout's
    # rollback relaunched from that image after it had retired old ones (slot "rollback")
    image = api(d, "GET", f"/v1/rollouts/{t.last_completed}")["image"]
    assert {i["tags"].get("imm:digest") for i in live} == {image}, (t.svc, live)
    assert all(i["tags"]["imm:rollout"] == t.last_completed
               or i["tags"].get("imm:slot") == "rollback" for i in live), (t.svc, live)
    deadline = time.monotonic() + 15
    while len(app_processes(root, t.svc)) != COUNT:
        assert time.monotonic() < deadline, (t.svc, app_processes(root, t.svc), live)
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_kill9_at_random_moments_inside_steps(tmp_path: Path, images: Path  # noqa: F811
                                              ) -> None:
    """The three strategies run side by side in one immd (three services, three routes), so
    every kill lands in up to three rollouts at once."""
    rng = random.Random(SEED)
    print(f"\ncrash harness: seed {SEED} (IMM_CRASH_SEED={SEED} replays the kill schedule)")
    ports = {svc: free_port() for svc in STRATEGIES}
    cfg = BASE
    for svc, strategy in STRATEGIES.items():
        cfg += service(svc, ports[svc], count=COUNT, strategy=strategy, canary_steps=[50],
                       canary_pause_s=0.5, health_timeout_s=6, drain_timeout_s=3)
        cfg += (f'launch = {{ env = {{ APP_START_DELAY_S = "{START_DELAY_S}", '
                f'APP_DRAIN_S = "{DRAIN_S}" }} }}\n')
    d = WarmImmd(tmp_path, cfg).start()
    db = d.state / "imm.db"
    register(d, images, "v1", "v2", "v3")
    tracks = {}
    for svc in STRATEGIES:
        first = d.json("rollout", "start", svc, "--image", "web@v1")
        tracks[svc] = Track(svc, ports[svc], LoadClient(
            f"http://127.0.0.1:{ports[svc]}/", concurrency=8, pause_s=0.01))
        tracks[svc].last_completed = first["id"]
    for t in tracks.values():
        assert d.json("rollout", "watch", t.last_completed)["state"] == "completed"
    admin = d.state / "haproxy" / "haproxy" / "admin.sock"
    idle_kills = total_kills = 0
    began = time.monotonic()
    last_progress: dict[str, Any] = {}
    restarts: list[float] = []  # seconds from the restart to immd answering on its socket
    stalled_since = began
    try:
        for t in tracks.values():
            t.load.start()
            t.watch = RouteWatch(admin, t.svc).__enter__()
        while True:
            # every service whose rollout ended gets checked and, unless it has had its kills,
            # a new rollout
            states = {r["id"]: r for r in api(d, "GET", "/v1/rollouts", limit=50)["rollouts"]}
            for t in tracks.values():
                if t.rid is not None and states[t.rid]["state"] not in ACTIVE:
                    end = api(d, "GET", f"/v1/rollouts/{t.rid}")
                    t.ends[end["state"]] += 1
                    assert end["state"] in ("completed", "rolled-back"), (t.svc, end["state"],
                                                                          end.get("error"))
                    assert not (t.broken and end["state"] == "completed"), (t.svc, end)
                    if end["state"] == "completed":
                        t.last_completed = t.rid
                        t.target = "v1" if t.target == "v2" else "v2"
                    t.rid = None
                    check_settled(d, tmp_path, t)
                if t.rid is None and t.kills < KILLS:
                    # every third rollout is of v3, whose health check fails: it must roll
                    # back, and kills land in its rollback too
                    t.broken = t.runs % 3 == 2
                    image = "web@v3" if t.broken else f"web@{t.target}"
                    t.rid = api(d, "POST", "/v1/rollouts", {"service": t.svc,
                                                            "image": image})["id"]
                    t.runs += 1
                    t.quota, t.hits = rng.randint(1, 3), 0
                    assert t.runs <= KILLS * 2, (t.svc, t.kills, t.runs)
            running = [t for t in tracks.values() if t.rid is not None]
            if not running:
                break
            if all(t.hits >= t.quota for t in running):
                # each rollout has taken its kills: let them finish (a step restarted by every
                # kill would otherwise never end), then start the next ones
                progress = {t.rid: (states[t.rid]["state"], states[t.rid].get("step"))
                            for t in running if t.rid}
                if progress != last_progress:
                    last_progress, stalled_since = progress, time.monotonic()
                assert time.monotonic() - stalled_since < 90, \
                    f"no rollout moved for 90 s after a restart: {progress}"
                time.sleep(0.2)
                continue
            time.sleep(rng.uniform(0.0, 1.2))
            assert d.proc is not None
            d.proc.kill()
            d.proc.wait()
            total_kills += 1
            hit = False
            for t in running:
                assert t.rid is not None
                state, where = where_killed(db, t.rid)
                if state in ACTIVE:
                    hit = True
                    t.kills += 1
                    t.hits += 1
                    t.landed[where + (" (rolling back)" if state == "rolling-back" else "")] += 1
            idle_kills += not hit
            d.stop()
            t0 = time.monotonic()
            d.start()
            restarts.append(time.monotonic() - t0)
            if os.environ.get("IMM_CRASH_VERBOSE"):
                print(f"kill {total_kills} at {time.monotonic() - began:.1f}s: "
                      + ", ".join(f"{t.svc} {t.kills}" for t in tracks.values()), flush=True)
        stats = {svc: t.load.stop() for svc, t in tracks.items()}
    finally:
        for t in tracks.values():
            t.load.stop()
            if t.watch is not None:
                t.watch.__exit__()
        d.stop()
        d.discard_spare()
    restarts.sort()
    print(f"crash harness: {total_kills} kills of immd ({idle_kills} hit no active rollout); "
          f"restart to listening: median {restarts[len(restarts) // 2] if restarts else 0:.2f}s, "
          f"max {max(restarts, default=0):.2f}s")
    for t in tracks.values():
        assert t.watch is not None
        inside = sum(n for w, n in t.landed.items() if w.startswith("inside"))
        st = stats[t.svc]
        print(f"crash harness {STRATEGIES[t.svc]}: {t.kills} kills during its rollouts ({inside} "
              f"inside a step); {t.runs} rollouts: {dict(t.ends)}; requests ok {st.ok}, failed "
              f"{st.failed}; route samples {t.watch.samples}, empty {len(t.watch.empty)}; "
              f"landed {dict(sorted(t.landed.items()))}")
    for t in tracks.values():
        assert t.watch is not None
        assert stats[t.svc].failed == 0, (t.svc, stats[t.svc])
        assert not t.watch.empty, (t.svc, t.watch.empty[:5])
        assert t.watch.samples > 0 and stats[t.svc].ok > 0
        assert t.kills >= KILLS and sum(t.ends.values()) == t.runs
        inside = sum(n for w, n in t.landed.items() if w.startswith("inside"))
        assert inside >= t.kills // 2, (t.svc, t.landed)  # most kills land mid-step
