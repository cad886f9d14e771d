"""Listing a large EC2 fleet: the ``aws`` provider against a plain libcloud loop, on moto.

    python bench/bench_cloud_list.py [--instances 10000] [--regions 4] [--batch 1000]
                                     [--page-size 1000] [--repeat 2] [--one-moto]

Backend: real ``moto_server`` processes (not a fake), seeded with boto3
``run_instances(MinCount=MaxCount=--batch)`` calls; the time that takes is measured and reported.
By default every region gets its own moto_server, the way AWS regions are separate endpoints
(``endpoint`` is a per-region table in the provider settings); ``--one-moto`` serves every
region from one process.

Measured, in the same run, against the same servers, each ``--repeat`` times (best kept):

- ``libcloud loop``: the plain way, ``driver.list_nodes()`` for each region, one region after
  another (libcloud's EC2 driver does not page; it adds a DescribeAddresses per call).
- ``aws provider``: ``AWSProvider.list_instances()`` over all regions: DescribeInstances paged
  with MaxResults/NextToken (``--page-size``), one thread per region (at most 8).
- ``aws provider, 1 region at a time``: the same provider code, one region after another, to
  separate what concurrency buys from what paging and parsing cost.

Both talk to moto through the test-side libcloud adapter (tests/adapters/ec2.py), the one the
tests use; production code uses libcloud's EC2 driver unchanged. The HTTP requests each method
makes are counted at the libcloud connection.

moto pages DescribeInstances by reservation, not by instance: MaxResults=1000 over reservations
of --batch instances gives one page per region unless --page-size is below the number of
reservations (real EC2 counts instances).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from imm.plugins.base import PluginContext  # noqa: E402
from imm.plugins.providers.aws import AWSProvider  # noqa: E402

from adapters import ec2 as ec2_adapter  # noqa: E402

KEY_ID = "AKIAIMMBENCHKEY7EXAM"
SECRET = "imm/Bench+Secret/wJalrXUtnFEMI/K7MDENG/bPxRfiCY"
ALL_REGIONS = ["us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2", "eu-central-1",
               "us-east-2", "ap-northeast-1", "sa-east-1"]
TAGS = {"imm:service": "web", "imm:rollout": "bench-1", "imm:slot": "b0",
        "imm:digest": "sha256:" + "ab" * 32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_servers(n: int) -> Iterator[list[str]]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        raise SystemExit("moto_server is not installed (pip install 'moto[server]')")
    procs, urls = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"moto_server at {url} did not start") from None
                    time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_mb(url: str) -> float:
    """Resident memory of the moto_server listening on ``url`` (from /proc)."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["ps", "-eo", "pid,rss,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "moto_server" in line and f"-p {port}" in line:
            return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- seeding


def seed(endpoints: dict[str, str], total: int, batch: int) -> tuple[float, int]:
    """``total`` instances split evenly over the regions, ``batch`` per RunInstances, regions
    seeded concurrently. Returns (seconds, RunInstances calls)."""
    import boto3

    regions = list(endpoints)
    share = {r: total // len(regions) + (1 if i < total % len(regions) else 0)
             for i, r in enumerate(regions)}
    spec = [{"ResourceType": "instance",
             "Tags": [{"Key": k, "Value": v} for k, v in TAGS.items()]}]
    calls = Counter[str]()

    def one(region: str) -> None:
        ec2 = boto3.client("ec2", endpoint_url=endpoints[region], region_name=region,
                           aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        ami = ec2.register_image(Name=f"bench-{region}", Architecture="x86_64",
                                 RootDeviceName="/dev/sda1", BlockDeviceMappings=[
                                     {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}]
                                 )["ImageId"]
        left = share[region]
        while left:
            n = min(batch, left)
            ec2.run_instances(ImageId=ami, MinCount=n, MaxCount=n, InstanceType="t3.micro",
                              TagSpecifications=spec)
            calls[region] += 1
            left -= n
            print(f"  {region}: {share[region] - left}/{share[region]}", flush=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(regions)) as pool:
        for f in [pool.submit(one, r) for r in regions]:
            f.result()
    return time.perf_counter() - started, sum(calls.values())


# --------------------------------------------------------------------------- measuring


class RequestCounter:
    """Counts the HTTP requests libcloud's (adapted) EC2 connection makes, by Action."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        cls = ec2_adapter.MotoEC2Connection
        original = cls.request
        counter = self

        def request(conn: Any, action: str, params: Any = None, *a: Any, **kw: Any) -> Any:
            with counter.lock:
                counter.counts[(params or {}).get("Action", "?")] += 1
            return original(conn, action, params, *a, **kw)

        setattr(cls, "request", request)  # counts, then sends as before

    def take(self) -> Counter[str]:
        with self.lock:
            out, self.counts = self.counts, Counter()
        return out


def make_provider(endpoints: dict[str, str], page_size: int, tmp: Path,
                  regions: list[str] | None = None) -> AWSProvider:
    regions = regions or list(endpoints)
    return AWSProvider("bench", {
        "kind": "aws", "regions": regions, "endpoint": {r: endpoints[r] for r in regions},
        "libcloud_driver": ec2_adapter.DRIVER_NAME, "page_size": page_size, "timeout_s": 600,
        "retries": 0}, PluginContext(tmp, logging.getLogger("bench")))


def libcloud_loop(endpoints: dict[str, str]) -> int:
    from libcloud.compute.providers import get_driver

    cls = get_driver(ec2_adapter.DRIVER_NAME)
    n = 0
    for region, url in endpoints.items():
        port = int(url.rsplit(":", 1)[1])
        driver = cls(KEY_ID, SECRET, region=region, host="127.0.0.1", port=port, secure=False,
                     signature_version="4", timeout=600)
        n += len(driver.list_nodes())
    return n


def provider_concurrent(endpoints: dict[str, str], page_size: int, tmp: Path) -> int:
    return sum(1 for _ in make_provider(endpoints, page_size, tmp).list_instances())


def provider_sequential(endpoints: dict[str, str], page_size: int, tmp: Path) -> int:
    return sum(sum(1 for _ in make_provider(endpoints, page_size, tmp, [r]).list_instances())
               for r in endpoints)


def cpu_s() -> float:
    """CPU time of this process (all threads): what parsing and signing cost the client."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(methods: list[tuple[str, int, Callable[[], int]]], expected: int, repeat: int,
            counter: RequestCounter) -> list[tuple[str, int, int, float, float]]:
    """Run every method ``repeat`` times, interleaved (the load of a shared machine drifts);
    per method: (name, threads, requests, best wall seconds, client CPU of that run)."""
    best: dict[str, tuple[float, float, int]] = {}
    for i in range(repeat):
        for name, _, fn in methods:
            counter.take()
            started, cpu0 = time.perf_counter(), cpu_s()
            n = fn()
            took, cpu = time.perf_counter() - started, cpu_s() - cpu0
            calls = counter.take()
            if n != expected:
                raise SystemExit(f"{name}: listed {n} instances, expected {expected}")
            print(f"  {name}: run {i + 1}: {n} instances in {took:.2f}s, client CPU {cpu:.2f}s "
                  f"({', '.join(f'{k} x{v}' for k, v in sorted(calls.items()))})", flush=True)
            if name not in best or took < best[name][0]:
                best[name] = (took, cpu, sum(calls.values()))
    return [(name, threads, best[name][2], best[name][0], best[name][1])
            for name, threads, _ in methods]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--regions", type=int, default=4, choices=range(1, len(ALL_REGIONS) + 1))
    ap.add_argument("--batch", type=int, default=1000, help="instances per RunInstances")
    ap.add_argument("--page-size", type=int, default=1000, help="the provider's page_size")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--one-moto", action="store_true",
                    help="one moto_server for every region (default: one per region)")
    args = ap.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", None)
    ec2_adapter.register()
    regions = ALL_REGIONS[:args.regions]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cloud-list-"))
    print(f"{args.instances} instances over {len(regions)} regions ({', '.join(regions)}), "
          f"{os.cpu_count()} CPUs, "
          f"{'one moto_server' if args.one_moto else 'one moto_server per region'}")
    with moto_servers(1 if args.one_moto else len(regions)) as urls:
        endpoints = {r: urls[0 if args.one_moto else i] for i, r in enumerate(regions)}
        print("seeding with boto3 run_instances ...", flush=True)
        seed_s, run_calls = seed(endpoints, args.instances, args.batch)
        print(f"seeded {args.instances} instances with {run_calls} RunInstances calls of up to "
              f"{args.batch} in {seed_s:.1f}s ({args.instances / seed_s:.0f} instances/s, "
              f"regions seeded concurrently); moto RSS "
              f"{sum(rss_mb(u) for u in set(urls)):.0f} MB", flush=True)

        counter = RequestCounter()
        provider_concurrent(endpoints, args.page_size, tmp)  # warm-up (imports, first calls)
        counter.take()
        rows = measure([
            ("libcloud loop (list_nodes per region)", 1, lambda: libcloud_loop(endpoints)),
            ("aws provider, 1 region at a time", 1,
             lambda: provider_sequential(endpoints, args.page_size, tmp)),
            ("aws provider (paged, concurrent regions)", min(8, len(regions)),
             lambda: provider_concurrent(endpoints, args.page_size, tmp)),
        ], args.instances, args.repeat, counter)
    shutil.rmtree(tmp, ignore_errors=True)

    base, n = rows[0][3], args.instances
    print()
    print(f"{'method':<42} {'threads':>7} {'requests':>8} {'instances':>9} {'seconds':>8} "
          f"{'client CPU s':>12} {'inst/s':>8} {'vs loop':>7}")
    for name, threads, reqs, took, cpu in rows:
        print(f"{name:<42} {threads:>7} {reqs:>8} {n:>9} {took:>8.2f} {cpu:>12.2f} "
              f"{n / took:>8.0f} {base / took:>6.2f}x")
    print(f"\n(best of {args.repeat}; page_size {args.page_size}; seeding took {seed_s:.1f}s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
