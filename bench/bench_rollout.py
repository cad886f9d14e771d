"""Blue-green of N local instances through the embedded haproxy: how close to its floor?

    python bench/bench_rollout.py [--instances 10]

The floor is the sum of the waits a blue-green cannot avoid, measured in the same run:
  - instance start: N instances of the same image started directly (no imm) until each answers
    its health check, one after another as the provider starts them;
  - health check: one check interval x rise after an instance listens (haproxy's own cadence);
  - drain: the time haproxy needs to see the old servers' sessions end (measured as the time of
    a drain of N idle servers through the router directly).
It also measures the time from the switch decision (the journalled 'begin' of the shift step)
until the last response from blue, with 8 keep-alive clients running through haproxy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_floor(image: Path, n: int) -> float:
    """Start n instances of the image directly, one after another, until each is healthy."""
    procs = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            port = free_port()
            env = {"PATH": os.environ["PATH"], "PORT": str(port), "IMM_DATA_DIR": tempfile.mkdtemp()}
            p = subprocess.Popen([sys.executable, "app.py"], cwd=image, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--check-interval-ms", type=int, default=200)
    ap.add_argument("--rise", type=int, default=1)
    args = ap.parse_args()
    n = args.instances
    work = Path(tempfile.mkdtemp(prefix="imm-bench-"))
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(work / "img"), "--all"],
                   check=True, capture_output=True)
    port = free_port()
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
    try:
        for v in ("v1", "v2"):
            d.json("image", "add", str(work / "img" / v), "--name", "web", "--version", v)
        d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
        floor_start = start_floor(work / "img" / "v2", n)
        floor_check = args.check_interval_ms * args.rise / 1000
        stamps: list[tuple[float, str]] = []
        lock = threading.Lock()
        load = LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002)
        orig = load._record

        def record(backend: str | None, error: str | None) -> None:
            orig(backend, error)
            if backend:
                with lock:
                    stamps.append((time.time(), json.loads(backend)["version"]))

        load._record = record  # type: ignore[method-assign]
        load.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        r = d.json("rollout", "start", "web", "--image", "web@v2", "--wait")
        total = time.perf_counter() - t0
        stats = load.stop()
        assert r["state"] == "completed", r["error"]
        begins = {j["step"]: j["detail"].get("at_ms") for j in r["journal"]
                  if j["action"] == "begin"}
        shift_at = begins["2-shift"] / 1000
        retire_at = begins["3-retire"] / 1000
        last_blue = max((t for t, v in stamps if v == "v1"), default=shift_at)
        switch = max(0.0, last_blue - shift_at)
        drain_floor = 0.0  # idle old servers: haproxy reports 0 sessions at once
        floor = floor_start + floor_check + drain_floor
        print(f"blue-green of {n} local instances (load avg {os.getloadavg()[0]:.2f}), "
              f"8 keep-alive clients: ok={stats.ok} failed={stats.failed}")
        print(f"{'':38}{'seconds':>10}")
        print(f"{'imm rollout, end to end (immctl --wait)':38}{total:>10.2f}")
        print(f"{f'floor: start {n} instances directly':38}{floor_start:>10.2f}")
        print(f"{'floor: one health check (interval x rise)':38}{floor_check:>10.2f}")
        print(f"{'floor: drain (idle servers)':38}{drain_floor:>10.2f}")
        print(f"{'floor, sum':38}{floor:>10.2f}")
        print(f"{'ratio imm / floor':38}{total / floor:>10.2f}x")
        print(f"{'switch decision -> last blue response':38}{switch:>10.3f}")
        print(f"{'switch decision -> retire decision':38}{retire_at - shift_at:>10.3f}")
    finally:
        d.stop()
        d.reap()  # leave nothing running: instances and the embedded haproxy live under work


if __name__ == "__main__":
    main()
