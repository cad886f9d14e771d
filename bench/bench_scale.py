"""Scale in a simulation: a 100k-instance fleet over 20 account-regions behind a simulated EC2,
and a 1M-image catalog, each measured against the peer that bounds it in the same run.

    python bench/bench_scale.py [--accounts 5] [--regions 4] [--instances 100000]
                                [--images 1000000] [--small-images 10000] [--repeat 3]
                                [--port 0] [--quick] [--no-fleet] [--no-catalog]

**The fake cloud** (``--serve-fake``, run as its own process so its CPU is not imm's): a small
aiohttp server that speaks EC2's query API on the wire (``Action=DescribeInstances``, form or
query-string parameters, SigV4 ``Authorization`` header, XML answers in EC2's namespace,
``MaxResults`` 5..1000 counted in instances, opaque ``NextToken``, ``Filter.N`` on
``instance-state-name`` / ``tag:KEY`` / ``tag-key``, errors as EC2's ``<Response><Errors>``
bodies). It holds a generated fleet: ``--instances`` spread over every (access key, region)
pair, one instance per reservation, each item shaped like EC2's documented DescribeInstances
answer (~3.1 KB of XML with its network interface, block device, tags). Like EC2, it throttles
per account and region with a token bucket (``--bucket`` tokens refilling ``--refill`` per
second; EC2 documents 100 and 20/s for describe calls) and answers an empty bucket with HTTP
503 ``RequestLimitExceeded``; every answer waits ``--latency`` first (the round trip and EC2's
own time). The account is the access key id of the request's credential scope and the region
its region; the signature itself is not checked (as moto does not). It is not moto: moto pages
by reservation, has no rate limit or latency, and parses too slowly for 100k instances.

**Fleet** (each scenario: a latency and a rate limit; buckets start full unless "drained"):

- imm: a real ``Daemon`` in-process (SQLite state in a temp dir, the real writer thread and
  signing key), configured with ``--accounts`` ``aws`` providers of ``--regions`` regions each,
  the unchanged libcloud ``ec2`` driver pointed at the fake (``endpoint``), credentials from
  the environment, one key per account. Its real audit sweep lists every instance (the
  provider pages DescribeInstances with MaxResults 1000, one thread per region, retrying
  RequestLimitExceeded with backoff) and judges it; the instances carry the tags of a
  completed rollout of a catalog image, so the steady sweep (the second one on) finds nothing
  new. Figure: the median steady sweep, and also imm's listing alone (the provider's
  ``list_instances``, no judging) to split imm's time into listing and judging.
- peer, boto3: the plain paging loop, ``describe_instances`` paginator (MaxResults 1000,
  botocore's standard retry mode, 10 retries) per account-region, every account-region in
  its own thread at once (imm's concurrency: one pager per region, all regions at once), in a
  separate process.
- the cloud's floor: the same pages fetched by a loop that only reads each page's NextToken
  (keep-alive connection per account-region, all at once, backing off on 503): what the
  latency and the rate limit cost with no client work at all.

The ratio imm / floor says which side bounds: near 1 the cloud's limits do, far above 1 imm's
own work does (listing's XML parsing, judging, ledgering).

**Catalog**: two catalogs are built in-process through the real ``Catalog`` (every image its
own manifest, canonical JSON, Ed25519-signed DSSE record appended to the RFC 6962 ledger) in
batches of 5,000 per transaction (the bulk path: ``MerkleLog.append_many`` and
``executemany``, not one request per image); the build time is printed. Then what an operator
waits for is timed on both through the daemon's HTTP API (aiohttp test server over loopback,
a bearer token): a page of ``image list``, ``name@version`` resolved, an inclusion proof,
``image show`` by digest prefix; the figure is the median and the ratio 1M / 10k (flat is 1).

Every process and temp dir it starts is removed at the end (also on SIGTERM). Nothing here
asserts a time. At full size it took 17 minutes on 2 CPUs at load 7-15: a steady sweep of 100k
instances alone is ~80 s there (which is the finding: imm's listing bounds it), it runs 7 times,
and 1M signed records take ~5 minutes to build. ``--quick`` takes ~75 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
REGIONS = ["us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2", "eu-central-1",
           "us-east-2", "ap-northeast-1", "sa-east-1"]
SECRET = "imm/Bench+Scale/wJalrXUtnFEMI/K7MDENG/bPxRfiCY"
LAUNCHED = "2026-01-01T00:00:00.000Z"
_CRED = re.compile(r"Credential=([A-Z0-9]+)/\d{8}/([a-z0-9-]+)/ec2/aws4_request")


def access_key(account: int) -> str:
    return f"AKIAIMMSCALE{account:08d}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ============================================================================ the fake EC2


class Bucket:
    """EC2's token bucket for one account and region: ``size`` tokens, ``refill`` per second."""

    def __init__(self, size: float, refill: float, tokens: float) -> None:
        self.size, self.refill, self.tokens = size, refill, tokens
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


ITEM = (
    "<item><reservationId>r-{rid}</reservationId><ownerId>{owner}</ownerId><groupSet/>"
    "<instancesSet><item><instanceId>{iid}</instanceId><imageId>{ami}</imageId>"
    "<instanceState><code>16</code><name>running</name></instanceState>"
    "<privateDnsName>ip-{dash}.{region}.compute.internal</privateDnsName><dnsName/>"
    "<reason/><keyName>ops</keyName><amiLaunchIndex>0</amiLaunchIndex><productCodes/>"
    "<instanceType>t3.micro</instanceType><launchTime>{launched}</launchTime>"
    "<placement><availabilityZone>{region}a</availabilityZone><groupName/>"
    "<tenancy>default</tenancy></placement><monitoring><state>disabled</state></monitoring>"
    "<subnetId>subnet-0{owner}</subnetId><vpcId>vpc-0{owner}</vpcId>"
    "<privateIpAddress>{ip}</privateIpAddress><sourceDestCheck>true</sourceDestCheck>"
    "<groupSet><item><groupId>sg-0{owner}</groupId><groupName>web</groupName></item>"
    "</groupSet><architecture>x86_64</architecture><rootDeviceType>ebs</rootDeviceType>"
    "<rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item>"
    "<deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-{rid}</volumeId>"
    "<status>attached</status><attachTime>{launched}</attachTime>"
    "<deleteOnTermination>true</deleteOnTermination></ebs></item></blockDeviceMapping>"
    "<virtualizationType>hvm</virtualizationType><clientToken/>"
    "<tagSet>{tags}</tagSet><hypervisor>xen</hypervisor>"
    "<networkInterfaceSet><item><networkInterfaceId>eni-{rid}</networkInterfaceId>"
    "<subnetId>subnet-0{owner}</subnetId><vpcId>vpc-0{owner}</vpcId><description/>"
    "<ownerId>{owner}</ownerId><status>in-use</status><macAddress>02:00:00:00:00:01"
    "</macAddress><privateIpAddress>{ip}</privateIpAddress><privateDnsName>ip-{dash}."
    "{region}.compute.internal</privateDnsName><sourceDestCheck>true</sourceDestCheck>"
    "<groupSet><item><groupId>sg-0{owner}</groupId><groupName>web</groupName></item>"
    "</groupSet><attachment><attachmentId>eni-attach-{rid}</attachmentId>"
    "<deviceIndex>0</deviceIndex><status>attached</status><attachTime>{launched}"
    "</attachTime><deleteOnTermination>true</deleteOnTermination></attachment>"
    "<privateIpAddressesSet><item><privateIpAddress>{ip}</privateIpAddress><privateDnsName>"
    "ip-{dash}.{region}.compute.internal</privateDnsName><primary>true</primary></item>"
    "</privateIpAddressesSet><interfaceType>interface</interfaceType></item>"
    "</networkInterfaceSet><ebsOptimized>false</ebsOptimized><enaSupport>true</enaSupport>"
    "<cpuOptions><coreCount>1</coreCount><threadsPerCore>2</threadsPerCore></cpuOptions>"
    "<hibernationOptions><configured>false</configured></hibernationOptions>"
    "<metadataOptions><state>applied</state><httpTokens>required</httpTokens>"
    "<httpPutResponseHopLimit>2</httpPutResponseHopLimit><httpEndpoint>enabled"
    "</httpEndpoint></metadataOptions></item></instancesSet></item>"
)


def error_body(code: str, message: str) -> bytes:
    rid = hashlib.md5(message.encode(), usedforsecurity=False).hexdigest()
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors><RequestID>{rid}"
            f"</RequestID></Response>").encode()


class Fleet:
    """The generated instances of one account-region, rendered to XML on demand."""

    def __init__(self, account: int, region_ix: int, region: str, count: int,
                 tags: dict[str, str]) -> None:
        self.account, self.region, self.count = account, region, count
        self.owner = f"{100000000000 + account:012d}"
        self.ami = f"ami-0{account:03x}{region_ix:02x}5ca1e00000"
        self.prefix = f"{account:03x}{region_ix:02x}"
        self.tags = tags
        self._items: dict[int, bytes] = {}

    def iid(self, n: int) -> str:
        return f"i-0{self.prefix}{n:011x}"

    def item(self, n: int) -> bytes:
        got = self._items.get(n)
        if got is None:
            a, b, c = (n >> 16) & 255, (n >> 8) & 255, n & 255
            tags = "".join(f"<item><key>{k}</key><value>{v}</value></item>"
                           for k, v in {**self.tags, "Name": f"web-{n}"}.items())
            got = self._items[n] = ITEM.format(
                rid=f"0{self.prefix}{n:011x}", owner=self.owner, iid=self.iid(n), ami=self.ami,
                region=self.region, launched=LAUNCHED, ip=f"10.{a}.{b}.{c}",
                dash=f"10-{a}-{b}-{c}", tags=tags).encode()
        return got

    def matches(self, filters: dict[str, list[str]]) -> bool:
        """Every instance is alike but its Name: the filters select all of them or none."""
        for name, values in filters.items():
            if name == "instance-state-name":
                ok = "running" in values
            elif name == "tag-key":
                ok = any(v in self.tags or v == "Name" for v in values)
            elif name.startswith("tag:"):
                key = name[4:]
                ok = key == "Name" or self.tags.get(key) in values
            else:
                raise ValueError(name)
            if not ok:
                return False
        return True


def parse_filters(params: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, name in params.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", key)
        if m:
            prefix = f"Filter.{m.group(1)}.Value."
            out[name] = [v for k, v in sorted(params.items()) if k.startswith(prefix)]
    return out


def fake_app(spec: dict[str, Any]) -> Any:
    """The aiohttp application of the fake EC2 (see the module docstring)."""
    from aiohttp import web

    accounts, regions = int(spec["accounts"]), list(spec["regions"])
    per = int(spec["instances"]) // (accounts * len(regions))
    fleets = {(access_key(a), r): Fleet(a, i, r, per, spec["tags"])
              for a in range(accounts) for i, r in enumerate(regions)}
    conf: dict[str, float] = {"latency": 0.05, "bucket": 100, "refill": 20, "start": 100}
    buckets: dict[tuple[str, str], Bucket] = {}
    stats: dict[str, Any] = {}

    def reset() -> None:
        # a bucket is made at its account-region's first request after a reset, so "starts
        # empty" means empty when the client starts, not when its process was spawned
        buckets.clear()
        stats.update(requests=0, pages=0, throttled=0, instances=0, inflight=0, max_inflight=0,
                     bytes=0)

    reset()

    def answer(status: int, body: bytes) -> web.Response:
        stats["bytes"] += len(body)
        return web.Response(status=status, body=body, content_type="text/xml",
                            charset="UTF-8")

    async def ec2(request: web.Request) -> web.Response:
        stats["requests"] += 1
        stats["inflight"] += 1
        stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
        try:
            await asyncio.sleep(conf["latency"])
            params = dict(parse_qsl(request.query_string, keep_blank_values=True))
            if request.method == "POST":
                params.update(parse_qsl((await request.read()).decode(),
                                        keep_blank_values=True))
            m = _CRED.search(request.headers.get("Authorization", ""))
            if not m:
                return answer(401, error_body("AuthFailure", "AWS was not able to validate "
                                              "the provided access credentials"))
            key = (m.group(1), m.group(2))
            fleet = fleets.get(key)
            if fleet is None:
                return answer(401, error_body("AuthFailure", f"no account-region {key}"))
            if key not in buckets:
                buckets[key] = Bucket(conf["bucket"], conf["refill"], conf["start"])
            if not buckets[key].take():
                stats["throttled"] += 1
                return answer(503, error_body("RequestLimitExceeded", "Request limit "
                                              "exceeded."))
            action = params.get("Action")
            if action != "DescribeInstances":
                return answer(400, error_body("InvalidAction", f"The action {action} is not "
                                              "valid for this web service."))
            try:
                filters = parse_filters(params)
                selected = fleet.count if fleet.matches(filters) else 0
            except ValueError as e:
                return answer(400, error_body("InvalidParameterValue",
                                              f"The filter '{e}' is invalid"))
            size = selected
            if "MaxResults" in params:
                try:
                    size = int(params["MaxResults"])
                except ValueError:
                    size = -1
                if not 5 <= size <= 1000:
                    return answer(400, error_body("InvalidParameterValue", "Value ( "
                                                  f"{params['MaxResults']} ) for parameter "
                                                  "maxResults is invalid. Expecting a value "
                                                  "between 5 and 1000."))
            start = 0
            if params.get("NextToken"):
                try:
                    start = int(base64.urlsafe_b64decode(params["NextToken"]).decode())
                except ValueError:
                    return answer(400, error_body("InvalidParameterValue",
                                                  "Invalid value for nextToken"))
            end = min(selected, start + size)
            parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse '
                     f'xmlns="{NAMESPACE}"><requestId>{stats["requests"]:08x}-0000-4000-8000-'
                     f'000000000000</requestId><reservationSet>'.encode()]
            parts += [fleet.item(n) for n in range(start, end)]
            parts.append(b"</reservationSet>")
            if end < selected:
                token = base64.urlsafe_b64encode(str(end).encode()).decode()
                parts.append(f"<nextToken>{token}</nextToken>".encode())
            parts.append(b"</DescribeInstancesResponse>")
            stats["pages"] += 1
            stats["instances"] += end - start
            return answer(200, b"".join(parts))
        finally:
            stats["inflight"] -= 1

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            conf.update({k: float(v) for k, v in (await request.json()).items()})
            reset()
        return web.json_response({**stats, **conf, "per_account_region": per})

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/_bench", control)
    app.router.add_route("*", "/", ec2)
    return app


def serve_fake(port: int, spec_json: str) -> None:
    from aiohttp import web

    web.run_app(fake_app(json.loads(spec_json)), host="127.0.0.1", port=port,
                print=None, access_log=None, handle_signals=True)


@contextmanager
def fake_ec2(port: int, spec: dict[str, Any]) -> Iterator[str]:
    """The fake EC2 in its own process; yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port),
                             json.dumps(spec)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/_bench", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the fake EC2 did not start on port {port}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fake_control(url: str, **conf: float) -> dict[str, Any]:
    data = json.dumps(conf).encode() if conf else None
    req = urllib.request.Request(url + "/_bench", data=data, method="POST" if conf else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


# ============================================================================ the fleet's peers

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def pairs(accounts: int, regions: int) -> list[tuple[str, str]]:
    return [(access_key(a), r) for a in range(accounts) for r in REGIONS[:regions]]


def peer_boto3(url: str, accounts: int, regions: int) -> dict[str, Any]:
    """The plain paging loop: boto3's describe_instances paginator, one thread per
    account-region, all at once."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=4)
    clients = [boto3.client("ec2", aws_access_key_id=key, aws_secret_access_key=SECRET,
                            region_name=region, endpoint_url=url, config=cfg)
               for key, region in pairs(accounts, regions)]  # made here, used in one thread each
    counts = [0] * len(clients)
    retries = [0] * len(clients)
    pages = [0] * len(clients)

    def one(i: int) -> None:
        pager = clients[i].get_paginator("describe_instances")
        for page in pager.paginate(Filters=[{"Name": "instance-state-name",
                                             "Values": LIVE_STATES}],
                                   PaginationConfig={"PageSize": 1000}):
            counts[i] += sum(len(r["Instances"]) for r in page["Reservations"])
            retries[i] += page["ResponseMetadata"].get("RetryAttempts", 0)
            pages[i] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"seconds": time.perf_counter() - t, "instances": sum(counts),
            "retries": sum(retries), "pages": sum(pages)}


def peer_wire(url: str, accounts: int, regions: int, refill: float) -> dict[str, Any]:
    """The cloud's floor: fetch the same pages and read only each one's NextToken."""
    import http.client
    from urllib.parse import urlencode

    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port
    token_re = re.compile(rb"<nextToken>([^<]+)</nextToken>")
    out = {"instances": 0, "retries": 0, "pages": 0}
    lock = threading.Lock()

    def one(key: str, region: str) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        auth = (f"AWS4-HMAC-SHA256 Credential={key}/20260101/{region}/ec2/aws4_request, "
                "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
        token: str | None = None
        n = retries = pages = 0
        while True:
            params = {"Action": "DescribeInstances", "Version": "2016-11-15",
                      "MaxResults": "1000", "Filter.1.Name": "instance-state-name",
                      **{f"Filter.1.Value.{i + 1}": s for i, s in enumerate(LIVE_STATES)}}
            if token:
                params["NextToken"] = token
            conn.request("GET", "/?" + urlencode(params), headers={"Authorization": auth})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 503:
                retries += 1
                time.sleep(1 / refill)  # the next token is due then: the ideal client's wait
                continue
            if resp.status != 200:
                raise SystemExit(f"wire floor: HTTP {resp.status}: {body[:300]!r}")
            pages += 1
            n += body.count(b"<instanceId>")
            m = token_re.search(body)
            if not m:
                break
            token = m.group(1).decode()
        conn.close()
        with lock:
            out["instances"] += n
            out["retries"] += retries
            out["pages"] += pages

    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=p) for p in pairs(accounts, regions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"seconds": time.perf_counter() - t, **out}


def child(*args: str) -> dict[str, Any]:
    """Run a phase of this file in its own process; returns its JSON (last stdout line)."""
    cp = subprocess.run([sys.executable, __file__, "--phase", *args], stdout=subprocess.PIPE,
                        text=True)  # its progress (stderr) goes on to ours
    if cp.returncode != 0:
        raise SystemExit(f"phase {args[0]} failed (exit code {cp.returncode})")
    result: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return result


# ============================================================================ the fleet with imm


@dataclass
class Scenario:
    name: str
    latency: float  # seconds per answer
    bucket: float  # tokens
    refill: float  # tokens per second
    drained: bool  # the bucket starts empty (other tools spent it)

    def conf(self) -> dict[str, float]:
        return {"latency": self.latency, "bucket": self.bucket, "refill": self.refill,
                "start": 0.0 if self.drained else self.bucket}


def scenarios(latency: float, bucket: float, refill: float, which: list[str]) -> list[Scenario]:
    every = {
        "ec2": Scenario(f"EC2's limits ({latency * 1000:.0f} ms, bucket {bucket:g} + "
                        f"{refill:g}/s)", latency, bucket, refill, False),
        "latency10": Scenario(f"10x latency ({latency * 10000:.0f} ms)", latency * 10,
                              bucket, refill, False),
        "rate10": Scenario(f"10x lower rate limit, bucket drained (bucket {bucket / 10:g} + "
                           f"{refill / 10:g}/s, starts empty)", latency, bucket / 10,
                           refill / 10, True),
    }
    return [every[w] for w in which]


def imm_config(accounts: int, regions: int, url: str, state: Path) -> str:
    lines = []
    names = ", ".join(f'"{r}"' for r in REGIONS[:regions])
    for a in range(accounts):
        lines += [f"[providers.acct{a}]", 'kind = "aws"', f"regions = [{names}]",
                  f'endpoint = "{url}"', f'key_env = "BENCH_SCALE_KEY_{a}"',
                  'secret_env = "BENCH_SCALE_SECRET"', 'token_env = "BENCH_SCALE_NO_TOKEN"', ""]
    return "\n".join(lines)


def phase_fleet(a: argparse.Namespace) -> dict[str, Any]:
    import logging

    from imm import config
    from imm.daemon.core import Daemon

    # the provider logs every throttled retry as a warning; the fake counts them instead
    logging.getLogger("imm").setLevel(logging.ERROR)
    accounts, regions = a.accounts, a.regions
    os.environ["BENCH_SCALE_SECRET"] = SECRET
    os.environ.pop("BENCH_SCALE_NO_TOKEN", None)
    os.environ.pop("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", None)
    for acct in range(accounts):
        os.environ[f"BENCH_SCALE_KEY_{acct}"] = access_key(acct)
    tmp = Path(tempfile.mkdtemp(prefix="imm-bench-scale-fleet-"))
    port = a.port or free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        s = config.parse(imm_config(accounts, regions, url, tmp), "bench",
                         state_dir=str(tmp), socket=str(tmp / "s.sock"))
        d = Daemon(s, extra_plugins=[])
        d.open("bench")
        arts = [(f"acct{acct}", r, Fleet(acct, i, r, 0, {}).ami)
                for acct in range(accounts) for i, r in enumerate(REGIONS[:regions])]
        img = d.db.write_sync(
            d.catalog.add_image, "bench", name="web", version="1",
            content_digest="sha256:" + "0" * 64, content_kind="file", layers=[],
            boot_actions=[], parent=None, labels={}, artifacts=arts)
        d.db.write_sync(lambda c: c.execute(
            "INSERT INTO rollouts VALUES ('r-bench','web','blue-green',?,NULL,'completed',"
            "NULL,'{}','bench','t','t',NULL,NULL)", (img["digest"],)))
        spec = {"accounts": accounts, "regions": REGIONS[:regions], "instances": a.instances,
                "tags": {"imm:service": "web", "imm:rollout": "r-bench", "imm:slot": "b0",
                         "imm:digest": img["digest"]}}
        n = a.instances // (accounts * regions) * accounts * regions
        with fake_ec2(port, spec) as url:
            out = asyncio.run(fleet_runs(a, d, url, n))
        d.close()
        import resource

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def fleet_runs(a: argparse.Namespace, d: Any, url: str, n: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    accounts, regions = a.accounts, a.regions

    async def sweep() -> dict[str, Any]:
        t = time.perf_counter()
        row = await d.auditor.run_sweep("bench")
        took = time.perf_counter() - t
        if row["state"] != "completed" or row["instances"] != n:
            raise SystemExit(f"sweep did not see the fleet: {row}")
        return {"seconds": took, "records": row["records"]}

    def listing() -> dict[str, Any]:
        """imm's listing alone: every provider's list_instances at once (as a sweep does)."""
        plugins = [d.context.providers[f"acct{acct}"].plugin for acct in range(accounts)]
        t = time.perf_counter()
        with ThreadPoolExecutor(len(plugins)) as pool:
            got = sum(pool.map(lambda p: sum(1 for _ in p.list_instances()), plugins))
        if got != n:
            raise SystemExit(f"listing saw {got} instances, expected {n}")
        return {"seconds": time.perf_counter() - t}

    async def measured(fn: Callable[[], Any], conf: dict[str, float]) -> dict[str, Any]:
        await asyncio.to_thread(fake_control, url, **conf)  # buckets reset as the scenario says
        r = dict(await fn())
        st = await asyncio.to_thread(fake_control, url)
        r.update(pages=st["pages"], throttled=st["throttled"],
                 max_inflight=st["max_inflight"], mb=st["bytes"] / 1e6)
        return r

    async def in_thread(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return await asyncio.to_thread(fn)

    def peer(kind: str, sc: Scenario) -> Callable[[], Any]:
        args = [kind, url, str(accounts), str(regions), str(sc.refill)]
        return lambda: asyncio.to_thread(child, *args)

    results: dict[str, Any] = {"instances": n, "scenarios": []}
    sc0 = scenarios(a.latency, a.bucket, a.refill, ["ec2"])[0]
    first = await measured(sweep, sc0.conf())
    log(f"first sweep (every observation opened): {first['seconds']:.1f} s, "
        f"{first['records']} ledger records, {first['pages']} pages")
    results["first"] = first
    for j, sc in enumerate(scenarios(a.latency, a.bucket, a.refill, a.scenarios)):
        # the first scenario gets --repeat runs and the peers; the 10x ones --curve-repeat runs
        # of imm's sweep and the floor (what the curve needs), to keep the whole bench short
        repeat = a.repeat if j == 0 else a.curve_repeat
        runs: dict[str, list[dict[str, Any]]] = {"imm": [], "list": [], "boto3": [],
                                                 "floor": []}
        for i in range(repeat):  # interleaved: the machine's load drifts
            runs["floor"].append(await measured(peer("wire", sc), sc.conf()))
            runs["imm"].append(await measured(sweep, sc.conf()))
            if j == 0 and i < a.list_repeat:
                runs["list"].append(await measured(lambda: in_thread(listing), sc.conf()))
            if j == 0 and i < a.boto3_repeat:
                runs["boto3"].append(await measured(peer("boto3", sc), sc.conf()))
            log(f"{sc.name}: run {i + 1}: " + ", ".join(
                f"{k} {v[-1]['seconds']:.2f} s ({v[-1]['pages']} pages, "
                f"{v[-1]['throttled']} throttled)" for k, v in runs.items() if len(v) > i))
        med = {k: {"seconds": statistics.median(r["seconds"] for r in v),
                   "pages": statistics.median(r["pages"] for r in v),
                   "throttled": statistics.median(r["throttled"] for r in v),
                   "max_inflight": max(r["max_inflight"] for r in v),
                   "mb": statistics.median(r["mb"] for r in v), "runs": len(v)}
               for k, v in runs.items() if v}
        results["scenarios"].append({"name": sc.name, "conf": sc.conf(), **med})
    return results


# ============================================================================ the catalog

BATCH = 5000


def build_catalog(d: Any, n: int, check_every: int = 1000) -> float:
    """N signed image records, BATCH per transaction, each exactly what ``Catalog.add_image``
    would store (its manifest, canonical JSON, an Ed25519-signed DSSE envelope appended to the
    ledger). The canonical texts are filled into templates rather than re-encoded from dicts
    (four canonical_json calls were most of the cost); every ``check_every``-th record is also
    built the ordinary way (build_manifest, canonical_json, dsse.sign: Ed25519 signatures are
    deterministic) and must come out byte for byte the same."""
    from imm.catalog import dsse
    from imm.catalog.canonical import canonical_json, sha256_digest
    from imm.catalog.manifest import build_manifest
    from imm.catalog.merkle import MerkleLog
    from imm.store import now

    cat = d.catalog
    key, keyid = cat.keyring.private, cat.keyring.keyid
    ptype = dsse.payload_type("image")
    b64 = base64.b64encode
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        def batch(conn: Any, start: int = start) -> None:
            at, ts = now(), int(time.time())
            leaves: list[tuple[bytes, int]] = []
            rows: list[tuple[Any, ...]] = []
            log_ = MerkleLog(conn)
            first = log_.size()
            for i in range(start, min(n, start + BATCH)):
                name, version, content = f"svc{i % 100:02d}", f"1.{i // 100}.0", f"{i:064x}"
                mtext = (f'{{"boot_actions":[],"content_digest":"sha256:{content}",'
                         f'"content_kind":"file","labels":{{"team":"t{i % 7}"}},'
                         f'"ladder_step":0,"layers":[],"name":"{name}","parent":null,'
                         f'"provenance":{{}},"version":"{version}"}}')
                digest = "sha256:" + hashlib.sha256(mtext.encode()).hexdigest()
                payload = (f'{{"actor":"bench","digest":"{digest}","manifest":{mtext},'
                           f'"time":"{at}","type":"image"}}').encode()
                sig = key.sign(dsse.pae(ptype, payload))
                env = (f'{{"payload":"{b64(payload).decode()}","payloadType":"{ptype}",'
                       f'"signatures":[{{"keyid":"{keyid}","sig":"{b64(sig).decode()}"}}]}}')
                if i % check_every == 0:
                    m = build_manifest(
                        name=name, version=version, content_digest="sha256:" + content,
                        content_kind="file", layers=[], boot_actions=[], parent=None,
                        labels={"team": f"t{i % 7}"}, provenance={})
                    real = canonical_json(dsse.sign("image", {
                        "type": "image", "digest": sha256_digest(canonical_json(m)),
                        "manifest": m, "actor": "bench", "time": at}, key, keyid)).decode()
                    if real != env or canonical_json(m).decode() != mtext:
                        raise SystemExit(f"image {i}: the bulk record differs from "
                                         f"Catalog's:\n{env}\n{real}")
                leaves.append((env.encode(), ts))
                rows.append((digest, name, version, "sha256:" + content, "file", None, 0,
                             mtext, "bench", at, keyid, first + len(rows), env))
            log_.append_many(leaves)
            conn.executemany("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            cat.sign_checkpoint(conn)
        d.db.write_sync(batch)
        if start and start % 200_000 == 0:
            log(f"  {start}/{n} images, {start / (time.perf_counter() - t0):.0f}/s")
    return time.perf_counter() - t0


async def catalog_runs(a: argparse.Namespace) -> dict[str, Any]:
    import random

    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from imm import config
    from imm.daemon.app import make_app
    from imm.daemon.core import Daemon

    sizes = [a.small_images, a.images]
    tmps, daemons, servers, tokens = [], [], [], []
    built: dict[int, float] = {}
    try:
        for n in sizes:
            tmp = Path(tempfile.mkdtemp(prefix=f"imm-bench-scale-cat{n}-"))
            tmps.append(tmp)
            s = config.parse("", "bench", state_dir=str(tmp), socket=str(tmp / "s.sock"))
            d = Daemon(s, extra_plugins=[])
            await asyncio.to_thread(d.open, "bench")
            daemons.append(d)
            built[n] = await asyncio.to_thread(build_catalog, d, n)
            log(f"built a catalog of {n} images in {built[n]:.1f} s "
                f"({n / built[n]:.0f} images/s)")
            srv = TestServer(make_app(d))
            await srv.start_server()
            servers.append(srv)
            assert d.tokens is not None
            tokens.append(d.tokens.create(0, "root", True, "read", 3600)[0])
        rnd = random.Random(7)

        results: dict[str, dict[int, list[float]]] = {}
        async with ClientSession() as c:
            async def get(k: int, path: str) -> Any:
                t = time.perf_counter()
                async with c.get(str(servers[k].make_url(path)), headers={
                        "Authorization": f"Bearer {tokens[k]}"}) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"{path}: HTTP {resp.status}: {body}")
                return time.perf_counter() - t, body

            deep: dict[int, str] = {}
            for k, n in enumerate(sizes):  # a cursor near the end of each catalog, untimed
                row = await daemons[k].db.read(lambda conn, n=n: conn.execute(
                    "SELECT digest FROM images WHERE ledger_index = ?", (n - 50,)).fetchone())
                deep[k] = row[0]
            for _ in range(a.runs):
                for k, n in enumerate(sizes):
                    i = rnd.randrange(n)
                    name, version = f"svc{i % 100:02d}", f"1.{i // 100}.0"
                    _, shown = await get(k, f"/v1/images/{name}@{version}")
                    prefix = shown["digest"].removeprefix("sha256:")[:12]
                    timed = {
                        "image list, first page of 100": "/v1/images?limit=100",
                        "image list, a page of 100 near the end":
                            f"/v1/images?limit=100&after={deep[k]}",
                        "resolve name@version (image show name@version)":
                            f"/v1/images/{name}@{version}",
                        "image show by digest prefix": f"/v1/images/{prefix}",
                        "inclusion proof of a random leaf":
                            f"/v1/ledger/proof?index={rnd.randrange(n)}",
                    }
                    for label, path in timed.items():
                        took, _ = await get(k, path)
                        results.setdefault(label, {}).setdefault(n, []).append(took)
        return {"built": {str(k): v for k, v in built.items()},
                "ops": {label: {str(n): statistics.median(v) for n, v in per.items()}
                        for label, per in results.items()}}
    finally:
        for srv in servers:
            await srv.close()
        for d in daemons:
            await asyncio.to_thread(d.close)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)


# ============================================================================ driver


def fleet_report(r: dict[str, Any], a: argparse.Namespace) -> list[dict[str, Any]]:
    n, pairs_n = r["instances"], a.accounts * a.regions
    print(f"\n# fleet: {n:,} instances over {pairs_n} account-regions ({a.accounts} accounts x "
          f"{a.regions} regions), EC2 page size 1000, medians of {a.repeat} runs")
    f = r["first"]
    print(f"first sweep (opens every observation, signs {f['records']} ledger records): "
          f"{f['seconds']:.2f} s; peak RSS of the process running imm "
          f"{r.get('peak_rss_mb', 0):.0f} MB")
    print(f"{'scenario':<62} {'method':<34} {'seconds':>8} {'pages':>6} {'throttled':>9} "
          f"{'in flight':>9} {'MB':>6}")
    rows = []
    label = {"floor": "cloud's floor (NextToken only)", "imm": "imm audit sweep (steady)",
             "list": "imm listing alone (no judging)", "boto3": "boto3 paginator loop"}
    for sc in r["scenarios"]:
        for k in ("floor", "imm", "list", "boto3"):
            if k in sc:
                x = sc[k]
                print(f"{sc['name']:<62} {label[k]:<34} {x['seconds']:8.2f} {x['pages']:6.0f} "
                      f"{x['throttled']:9.0f} {x['max_inflight']:9d} {x['mb']:6.0f}")
        imm, floor = sc["imm"]["seconds"], sc["floor"]["seconds"]
        ratio = imm / floor
        lst = sc.get("list") or r["scenarios"][0].get("list")
        share = lst["seconds"] / r["scenarios"][0]["imm"]["seconds"] if lst else 0.0
        bound = ("the cloud (latency, rate limit)" if ratio < 1.5 else
                 "imm (its listing was not timed alone)" if not lst else
                 "imm (listing: parsing the XML)" if share > 0.6 else
                 "imm (judging and ledgering)")
        boto = sc.get("boto3", {}).get("seconds")
        print(f"  -> imm / floor {ratio:.2f}x"
              + (f"; imm's listing alone takes {share:.0%} of its steady sweep's time"
                 if lst else "")
              + (f"; imm / boto3 {imm / boto:.2f}x" if boto else "") + f"; bound by {bound}")
        rows.append(report.row(
            f"audit sweep of {n:,} instances over {pairs_n} account-regions behind a fake EC2, "
            f"{sc['name']}", f"{imm:.2f} s ({sc['imm']['pages']:.0f} pages, "
            f"{sc['imm']['throttled']:.0f} throttled)",
            f"cloud's floor {floor:.2f} s" + (f"; boto3 loop {boto:.2f} s" if boto else ""),
            ratio, "the cloud bounds it: <= 1.5x the floor", ratio <= 1.5))
    return rows


def catalog_report(r: dict[str, Any], a: argparse.Namespace) -> list[dict[str, Any]]:
    small, big = str(a.small_images), str(a.images)
    b = r["built"]
    print(f"\n# catalog: {a.images:,} vs {a.small_images:,} images (built in "
          f"{b[big]:.0f} s and {b[small]:.1f} s: {int(big) / b[big]:.0f} signed records/s), "
          f"daemon API over loopback, medians of {a.runs}")
    print(f"{'operation':<50} {a.small_images:>10,} {a.images:>10,} {'ratio':>7}")
    worst = 0.0
    figs, peers = [], []
    for label, per in r["ops"].items():
        x, y = per[small] * 1000, per[big] * 1000
        worst = max(worst, y / x)
        print(f"{label:<50} {x:8.2f}ms {y:8.2f}ms {y / x:6.2f}x")
        figs.append(f"{y:.2f}")
        peers.append(f"{x:.2f}")
    short = "list first page / list last page / name@version / show prefix / inclusion proof"
    # one headline row: the worst ratio of the five operations
    return [report.row(f"catalog of {a.images:,} images, median ms of: {short}",
                       " / ".join(figs) + " ms", f"same at {a.small_images:,} images: "
                       + " / ".join(peers) + " ms", worst, "flat: every one <= 2x",
                       worst <= 2)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=5)
    p.add_argument("--regions", type=int, default=4, choices=range(1, len(REGIONS) + 1),
                   help="regions per account (accounts x regions account-regions)")
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    p.add_argument("--bucket", type=float, default=100, help="tokens per account-region")
    p.add_argument("--refill", type=float, default=20, help="tokens per second")
    p.add_argument("--scenarios", nargs="+", default=["ec2", "latency10", "rate10"],
                   choices=["ec2", "latency10", "rate10"])
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    p.add_argument("--curve-repeat", type=int, default=1,
                   help="runs of each 10x scenario (median)")
    p.add_argument("--list-repeat", type=int, default=1,
                   help="runs of imm's listing alone (first scenario)")
    p.add_argument("--boto3-repeat", type=int, default=1, help="boto3 runs (first scenario)")
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--small-images", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=15, help="requests per catalog operation")
    p.add_argument("--port", type=int, default=0, help="the fake EC2's port (0: a free one)")
    p.add_argument("--quick", action="store_true",
                   help="10k instances, 50k images, fewer runs")
    p.add_argument("--no-fleet", action="store_true")
    p.add_argument("--no-catalog", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--serve-fake", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_fake:
        serve_fake(int(a.serve_fake[0]), a.serve_fake[1])
        return 0
    # a SIGTERM unwinds like an error, so the fake EC2 and the temp dirs are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.quick:
        a.instances, a.images, a.small_images = 10_000, 50_000, 5_000
        a.repeat, a.runs = 2, 7
    if a.phase:
        name, *rest = a.phase
        if name == "wire":
            out = peer_wire(rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
        elif name == "boto3":
            out = peer_boto3(rest[0], int(rest[1]), int(rest[2]))
        elif name == "fleet":
            out = phase_fleet(a)
        else:
            out = asyncio.run(catalog_runs(a))
        print(json.dumps(out))
        return 0

    t0 = time.perf_counter()
    log(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
        f"{os.cpu_count()} CPUs")
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                 if k in ("accounts", "regions", "instances", "latency", "bucket", "refill",
                          "repeat", "curve_repeat", "list_repeat", "boto3_repeat", "images",
                          "small_images", "runs", "port")]
    forwarded += ["--scenarios", *a.scenarios]
    rows = []
    if not a.no_fleet:
        rows += fleet_report(child("fleet", *forwarded), a)
    if not a.no_catalog:
        rows += catalog_report(child("catalog", *forwarded), a)
    report.write(a.json, "python bench/bench_scale.py", rows)
    print(f"\n(took {time.perf_counter() - t0:.0f} s; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
