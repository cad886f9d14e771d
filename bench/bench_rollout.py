"""Blue-green of N local instances through the embedded haproxy: how close to its floor?

    python bench/bench_rollout.py [--instances 10]

    python bench/bench_rollout.py [--instances 10] [--port P] [--floor-port P] [--repeat 3]
                                  [--json PATH]

The floor is the sum of the waits a blue-green cannot avoid, measured in the same run:
  - instance start: N instances of the same image started directly (no imm), all at once, until
    every one answers its health check;
  - health check: one check interval x rise after an instance listens (haproxy's own cadence);
  - drain: stopping the N old instances (SIGTERM to all at once, until every one has exited),
    what retiring blue costs at least once its idle servers have no sessions.
Each side runs ``--repeat`` times, interleaved (imm, floor, imm, ...); medians count.
Ports: ``--port`` is haproxy's bind (default: a free one), ``--floor-port`` the first of N
consecutive ports for the floor's instances (default: free ones). The work directory, every
instance and haproxy are removed at the end, on success or failure.
It also measures the time from the switch decision (the journalled 'begin' of the shift step)
until the last response from blue, with 8 keep-alive clients running through haproxy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))

from backends import LoadClient  # noqa: E402
from daemon import Immd  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def healthy(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
        return True
    except OSError:
        return False


def floor_run(image: Path, n: int, ports: list[int], work: Path) -> tuple[float, float]:
    """Start n instances of the image directly, all at once, until every one answers its health
    check; then stop them all at once and wait until every one has exited. (start s, drain s)"""
    procs = []
    try:
        t0 = time.perf_counter()
        for k, port in enumerate(ports[:n]):
            data = work / f"floor-{k}"
            data.mkdir(exist_ok=True)
            env = {"PATH": os.environ["PATH"], "PORT": str(port), "IMM_DATA_DIR": str(data)}
            procs.append(subprocess.Popen([sys.executable, "app.py"], cwd=image, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        waiting = set(ports[:n])
        while waiting:
            waiting = {p for p in waiting if not healthy(p)}
            if waiting:
                time.sleep(0.002)
        start = time.perf_counter() - t0
        t1 = time.perf_counter()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        return start, time.perf_counter() - t1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--check-interval-ms", type=int, default=200)
    ap.add_argument("--rise", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="rollouts and floor runs; medians count")
    ap.add_argument("--port", type=int, default=0, help="haproxy's bind port (default: free)")
    ap.add_argument("--floor-port", type=int, default=0,
                    help="first of N consecutive ports for the floor's instances (default: free)")
    ap.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    args = ap.parse_args()
    n = args.instances
    work = Path(tempfile.mkdtemp(prefix="imm-bench-rollout-"))
    d: Immd | None = None
    load: LoadClient | None = None
    try:
        subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(work / "img"),
                        "--all"], check=True, capture_output=True)
        port = args.port or free_port()
        floor_ports = ([args.floor_port + k for k in range(n)] if args.floor_port
                       else [free_port() for _ in range(n)])
        config = (f"""
[providers.local]
kind = "local"
[routers.haproxy]
kind = "haproxy"
[services.web]
targets = [{{ provider = "local", region = "local", count = {n} }}]
router = "haproxy"
route = "web"
route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", \
check_interval_ms = {args.check_interval_ms}, rise = {args.rise}, fall = 2 }}
health_timeout_s = 60
drain_timeout_s = 30
""")
        d = Immd(work, config).start()
        for v in ("v1", "v2"):
            d.json("image", "add", str(work / "img" / v), "--name", "web", "--version", v)
        d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
        stamps: list[tuple[float, str]] = []
        lock = threading.Lock()

        def record(backend: str | None, error: str | None) -> None:
            if backend:
                with lock:
                    stamps.append((time.time(), json.loads(backend)["version"]))

        load = LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002,
                          on_answer=record)
        load.start()
        time.sleep(0.5)
        totals, starts, drains, switches, retires = [], [], [], [], []
        old = "v1"
        for k in range(args.repeat):
            new = "v2" if old == "v1" else "v1"
            t0 = time.perf_counter()
            r = d.json("rollout", "start", "web", "--image", f"web@{new}", "--wait")
            totals.append(time.perf_counter() - t0)
            assert r["state"] == "completed", r["error"]
            begins = {j["step"]: j["detail"].get("at_ms") for j in r["journal"]
                      if j["action"] == "begin"}
            shift_at = begins["2-shift"] / 1000
            retire_at = begins["3-retire"] / 1000
            time.sleep(0.3)  # let the clients' last answers from the old colour land
            with lock:
                last_old = max((t for t, v in stamps if v == old and t >= shift_at),
                               default=shift_at)
                stamps.clear()
            switches.append(max(0.0, last_old - shift_at))
            retires.append(retire_at - shift_at)
            floor_dir = work / f"floor-run-{k}"
            floor_dir.mkdir()
            fs, fd = floor_run(work / "img" / new, n, floor_ports, floor_dir)
            starts.append(fs)
            drains.append(fd)
            old = new
        stats = load.stop()
        load = None
        med = statistics.median
        total = med(totals)
        floor_start, drain_floor = med(starts), med(drains)
        floor_check = args.check_interval_ms * args.rise / 1000
        floor = floor_start + floor_check + drain_floor
        print(f"blue-green of {n} local instances (load avg {os.getloadavg()[0]:.2f}), "
              f"8 keep-alive clients: ok={stats.ok} failed={stats.failed}; "
              f"median of {args.repeat}")
        print(f"{'':44}{'seconds':>10}")
        print(f"{'imm rollout, end to end (immctl --wait)':44}{total:>10.2f}   runs "
              + " ".join(f"{x:.2f}" for x in totals))
        print(f"{f'floor: start {n} instances at once':44}{floor_start:>10.2f}")
        print(f"{'floor: one health check (interval x rise)':44}{floor_check:>10.2f}")
        print(f"{f'floor: stop {n} instances at once (drain)':44}{drain_floor:>10.2f}")
        print(f"{'floor, sum':44}{floor:>10.2f}")
        print(f"{'ratio imm / floor':44}{total / floor:>10.2f}x")
        print(f"{'switch decision -> last old response':44}{med(switches):>10.3f}")
        print(f"{'switch decision -> retire decision':44}{med(retires):>10.3f}")
        ratio = total / floor
        report.write(args.json, "python bench/bench_rollout.py", [
            report.row(f"blue-green of {n} local instances, end to end (8 clients, "
                       f"{stats.failed} failed)", f"{total:.2f} s",
                       f"start {n} at once to healthy + one check + stop {n} at once "
                       f"{floor:.2f} s", ratio, "<= 1.3x the floor", ratio <= 1.3),
        ])
    finally:
        if load is not None:
            load.stop()
        if d is not None:
            d.stop()
            d.reap()  # leave nothing running: instances and the embedded haproxy live under work
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
