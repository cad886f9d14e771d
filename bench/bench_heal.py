"""Replacement time of a killed instance, against a bare start of one instance.

    python bench/bench_heal.py [--repeat 5] [--interval 0.5] [--json PATH]

immd runs with the local provider, its embedded haproxy and ``[reconcile] interval_s =
--interval``; a service of 2 instances of the example app serves 8 keep-alive clients through
haproxy. Each round SIGKILLs one instance's process and measures, from the kill, until the
first answer through haproxy from its replacement (the reconciler noticed the exit, launched
from the same image, attached at weight 0, waited for haproxy's health check, gave it its
weight). The peer, measured in the same run, is a bare start of one instance: the same image's
app started directly (no imm, no haproxy) until its /healthz answers. The floor of a
replacement is that start plus one health check (interval x rise) plus, on average, half the
reconcile interval before the exit is noticed; all three are printed. Medians of ``--repeat``.
The work directory, every instance and haproxy are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from backends import LoadClient  # noqa: E402
from daemon import Immd  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
        return True
    except OSError:
        return False


def bare_start(image: Path, work: Path) -> float:
    """Seconds from starting the image's app directly until its /healthz answers."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "IMM_DATA_DIR": str(work)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=image, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the bare instance exited with {proc.returncode}")
            time.sleep(0.002)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def mine(d: Immd) -> list[dict[str, Any]]:
    return [i for i in d.items("instance", "list")
            if i["tags"].get("imm:service") == "web" and i["state"] == "running"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="kills and bare starts; medians count")
    ap.add_argument("--interval", type=float, default=0.5, help="[reconcile] interval_s")
    ap.add_argument("--check-interval-ms", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imm-bench-heal-"))
    d: Immd | None = None
    load: LoadClient | None = None
    try:
        subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(work / "img"),
                        "--all"], check=True, capture_output=True)
        port = free_port()
        config = f"""
[reconcile]
interval_s = {args.interval}
[providers.local]
kind = "local"
[routers.haproxy]
kind = "haproxy"
[services.web]
targets = [{{ provider = "local", region = "local", count = 2 }}]
router = "haproxy"
route = "web"
route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", \
check_interval_ms = {args.check_interval_ms}, rise = 1, fall = 1 }}
health_timeout_s = 60
drain_timeout_s = 1
heal_max_per_min = 1000
quarantine_keep = 1
"""
        d = Immd(work, config).start()
        d.json("image", "add", str(work / "img" / "v1"), "--name", "web", "--version", "v1")
        r = d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
        assert r["state"] == "completed", r["error"]
        first_seen: dict[str, float] = {}
        lock = threading.Lock()

        def record(backend: str | None, error: str | None) -> None:
            if backend:
                iid = json.loads(backend).get("instance", "")
                with lock:
                    first_seen.setdefault(iid, time.time())

        load = LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002,
                          on_answer=record)
        load.start()
        time.sleep(0.5)
        replaced: list[float] = []
        bare: list[float] = []
        for k in range(args.repeat):
            live = mine(d)
            assert len(live) == 2, live
            known = {i["id"] for i in live}
            victim = sorted(live, key=lambda i: i["id"])[0]
            t0 = time.time()
            os.kill(victim["extra"]["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                with lock:
                    new = {i: t for i, t in first_seen.items() if i and i not in known
                           and t >= t0}
                if new:
                    replaced.append(min(new.values()) - t0)
                    break
                assert time.monotonic() < deadline, "no replacement answered within 60 s"
                time.sleep(0.005)
            while len(mine(d)) != 2:  # the replacement is listed running before the next kill
                assert time.monotonic() < deadline
                time.sleep(0.05)
            bare.append(bare_start(work / "img" / "v1", work / f"bare-{k}"))
        stats = load.stop()
        load = None
        med = statistics.median
        rep, peer = med(replaced), med(bare)
        check = args.check_interval_ms / 1000
        floor = peer + check + args.interval / 2
        print(f"replacement of a SIGKILLed local instance behind haproxy (reconcile every "
              f"{args.interval:g} s; load avg {os.getloadavg()[0]:.2f}), 8 keep-alive clients: "
              f"ok={stats.ok} failed={stats.failed}; median of {args.repeat}"
              + (f"; failures: {stats.errors[:5]}" if stats.failed else ""))
        print(f"{'':50}{'seconds':>10}")
        print(f"{'imm: kill -> first answer from the replacement':50}{rep:>10.3f}   runs "
              + " ".join(f"{x:.3f}" for x in replaced))
        print(f"{'bare start of one instance to healthy':50}{peer:>10.3f}   runs "
              + " ".join(f"{x:.3f}" for x in bare))
        print(f"{'floor: bare start + one check + interval / 2':50}{floor:>10.3f}")
        print(f"{'ratio imm / bare start':50}{rep / peer:>10.2f}x")
        print(f"{'ratio imm / floor':50}{rep / floor:>10.2f}x")
        report.write(args.json, "python bench/bench_heal.py", [
            report.row(f"replacement of a killed instance, kill to first answer through "
                       f"haproxy (reconcile every {args.interval:g} s, 8 clients, "
                       f"{stats.failed} failed)", f"{rep:.2f} s",
                       f"bare start of one instance {peer:.2f} s", rep / peer),
        ])
    finally:
        if load is not None:
            load.stop()
        if d is not None:
            d.stop()
            d.reap()  # instances (the quarantined one too) and haproxy
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
