"""AWS end to end: a real immd (``aws`` provider, ``cloudlb`` and ``dns`` routers, libcloud's own
drivers) against one ``moto_server``, driven only through immctl and checked with boto3.

The moto adapters of tests/adapters/ get into the immd process the way any third-party code
does: a tiny distribution on PYTHONPATH whose entry point (group ``imm``) imports them and
registers them with libcloud's ``set_driver``; the config then names them in ``libcloud_driver``.

Failures are injected by an HTTP proxy between immd and moto that sees every EC2 / ELB call
(action, region from the SigV4 scope, parameters) and answers it itself (an error), forwards it,
or forwards it and holds moto's reply past the provider's timeout.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import random
import re
import socket
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from harness import Immd

REGION, OTHER = "us-east-1", "eu-west-1"
KEY_ID = "AKIAIMME2ETESTKEY7EX"
SECRET = "imm/E2E+Secret/wJalrXUtnFEMI/K7MDENG/bPxRfiCY"
REPO = Path(__file__).resolve().parent.parent
ZONE = "example.test."
BOGUS_AMI = "ami-0badc0de0badc0de"  # EC2 would answer InvalidAMIID.NotFound; moto launches it

# Small retry settings so failures resolve in well under a second.
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}

# Gets the test-side libcloud adapters into immd: imported at plugin load, before the providers
# and routers are built (the aws provider resolves its driver class in its constructor).
ADAPTER_PLUGIN = f'''
"""Registers the moto adapters with libcloud inside immd (test only)."""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from adapters import ec2, elb, route53
ec2.register()
elb.register()
route53.register()
'''
EC2_DRIVER, ELB_DRIVER, ALB_DRIVER, R53_DRIVER = "ec2_moto", "elb_moto", "alb_moto", "route53_moto"


# --------------------------------------------------------------------------- moto


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution whose ``imm`` entry point registers the moto adapters (see test_plugins)."""
    site = tmp_path_factory.mktemp("site")
    info = site / "immmoto-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: immmoto\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[imm]\nimmmoto = immmoto_mod\n")
    (site / "immmoto_mod.py").write_text(textwrap.dedent(ADAPTER_PLUGIN))
    return site


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A wiped moto; credentials only in immd's environment (never in the config)."""
    urllib.request.urlopen(urllib.request.Request(moto + "/moto-api/reset", method="POST"),
                           timeout=10).close()
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", raising=False)
    return moto


@functools.cache
def client(url: str, service: str, region: str = REGION) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=region,
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


def register_ami(url: str, name: str, region: str = REGION) -> str:
    ami = client(url, "ec2", region).register_image(
        Name=name, Architecture="x86_64", RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    return str(ami)


def described(url: str, region: str = REGION, live: bool = True,
              **tags: str) -> list[dict[str, Any]]:
    """Instances as boto3 sees them; ``live`` leaves out terminated and shutting-down ones."""
    flt = [{"Name": f"tag:{k.replace('__', ':')}", "Values": [v]} for k, v in tags.items()]
    out: list[dict[str, Any]] = []
    for page in client(url, "ec2", region).get_paginator("describe_instances").paginate(
            Filters=flt):
        for r in page["Reservations"]:
            out += r["Instances"]
    if live:
        out = [i for i in out if i["State"]["Name"] in ("pending", "running")]
    return out


def tags_of(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


# --------------------------------------------------------------------------- fault proxy


@dataclass
class Call:
    action: str  # EC2/ELB Action ("?" for anything else)
    region: str  # from the SigV4 credential scope
    service: str  # ditto: "ec2", "elasticloadbalancing"
    params: dict[str, str]


Decision = tuple[str, Any] | None  # ("status", (code, body, headers)) | ("hold", s) | None
Script = Callable[[Call], Decision]


class FaultProxy:
    """An HTTP proxy in front of moto. For each request ``script(call)`` decides: None forwards
    it, ``("status", (code, body, headers))`` answers it without moto seeing it, ``("hold", s)``
    forwards it and holds moto's reply ``s`` seconds (past the client's timeout: moto acted,
    the client never hears). ``calls`` counts requests per action, ``forwarded`` those moto saw,
    ``faults`` what was injected, ``requests`` keeps every request.

    A request that arrives while moto is still running a RunInstances waits for it to finish.
    EC2 returns the first launch's instances to a retried RunInstances with the same
    ClientToken; moto ignores ClientToken, so a launch retried after a timeout is only safe if
    the provider's look-up by its ``imm:token`` tag sees the first launch, which a slow moto
    (on a loaded machine) could still be processing."""

    def __init__(self, upstream: str, script: Script | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.script: Script = script or (lambda call: None)
        self.calls: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body), in order
        self.lock = threading.Lock()
        self.launching = threading.Lock()  # held while moto runs a RunInstances
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                if body and "Action" not in params:
                    params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
                scope = re.search(r"Credential=[^/]+/\d+/([a-z0-9-]+)/([a-z0-9-]+)/",
                                  self.headers.get("Authorization", ""))
                region, service = scope.groups() if scope else ("?", "?")
                call = Call(params.get("Action", "?"), region, service, params)
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, body))
                    proxy.calls[call.action] += 1
                    what = proxy.script(call)
                    if what is None or what[0] == "hold":
                        proxy.forwarded[call.action] += 1
                    if what is not None:
                        kind = what[0] if what[0] == "hold" else str(what[1][0])
                        proxy.faults[kind] += 1
                if what is not None and what[0] == "status":
                    code, text, headers = what[1]
                    self._reply(code, text.encode(), {"Content-Type": "text/xml", **headers})
                    return
                if call.action == "RunInstances":
                    with proxy.launching:
                        status, rheaders, rbody = proxy.forward(self.command, self.path,
                                                                self.headers, body)
                else:
                    with proxy.launching:  # wait for a launch moto has not finished yet
                        pass
                    status, rheaders, rbody = proxy.forward(self.command, self.path,
                                                            self.headers, body)
                if what is not None and what[0] == "hold":
                    time.sleep(what[1])
                try:
                    self._reply(status, rbody, rheaders)
                except OSError:
                    pass  # the client gave up waiting: that is the point

            do_GET = do_POST = _handle

            def _reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def forward(self, method: str, path: str, headers: Any, body: bytes
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1",
                                          self.upstream.port, timeout=30)
        try:
            conn.request(method, path, body=body or None,
                         headers={k: v for k, v in headers.items() if k.lower() != "host"})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies(aws: str) -> Iterator[Callable[[Script | None], FaultProxy]]:
    made: list[FaultProxy] = []

    def make(script: Script | None = None) -> FaultProxy:
        made.append(FaultProxy(aws, script))
        return made[-1]

    yield make
    for p in made:
        p.close()


def ec2_error(code: str, message: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors><RequestID>r-1</RequestID>"
            f"</Response>")


def elb_error(code: str, message: str) -> str:
    return ('<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/">'
            f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>r-1</RequestId></ErrorResponse>")


def cloud_error(call: Call, status: int, code: str, message: str) -> Decision:
    body = (elb_error if call.service == "elasticloadbalancing" else ec2_error)(code, message)
    return ("status", (status, body, {}))


# --------------------------------------------------------------------------- immd


def toml_table(name: str, settings: dict[str, Any]) -> str:
    lines = [f"[{name}]"]
    for k, v in settings.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            items = ", ".join("{ " + ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in i.items())
                              + " }" for i in v)
            lines.append(f"{k} = [{items}]")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n\n"


def provider(endpoint: str, regions: list[str] | None = None, **extra: Any) -> str:
    return toml_table("providers.aws", {
        "kind": "aws", "regions": regions or [REGION], "endpoint": endpoint,
        "libcloud_driver": EC2_DRIVER, "timeout_s": 5, "retries": 3, **FAST, **extra})


def web_service(count: int = 2, targets: list[dict[str, Any]] | None = None,
                **extra: Any) -> str:
    return toml_table("services.web", {
        "targets": targets or [{"provider": "aws", "region": REGION, "count": count}],
        "strategy": "blue-green", "health_timeout_s": 20, "drain_timeout_s": 2, **extra})


def start_immd(root: Path, config: str, site: Path) -> Immd:
    return Immd(root, config).start(extra_env={
        "PYTHONPATH": str(site), "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})


@dataclass
class Images:
    digests: dict[str, str]  # "1" -> full digest of web@1
    amis: dict[str, str]  # "1" -> AMI id in us-east-1


def add_images(d: Immd, url: str, tmp: Path, regions: tuple[str, ...] = (REGION,),
               artifacts: dict[tuple[str, str], str] | None = None) -> Images:
    """web@1 and web@2 as disk-file images, each with an AMI registered in moto (boto3) per
    region and recorded as its artifact; ``artifacts`` overrides (version, region) -> AMI id."""
    digests, amis = {}, {}
    for v in ("1", "2"):
        disk = tmp / f"web-{v}.img"
        disk.write_bytes(f"web disk image, version {v}\n".encode() * 64)
        digests[v] = d.json("image", "add", str(disk), "--name", "web", "--version", v)["digest"]
        for region in regions:
            ami = (artifacts or {}).get((v, region)) or register_ami(url, f"imm-web-{v}", region)
            if region == REGION:
                amis[v] = ami
            d.run("image", "artifact", "add", f"web@{v}", "--provider", "aws", "--region",
                  region, "--image-id", ami)
    return Images(digests, amis)


def rollout(d: Immd, ref: str) -> tuple[int, dict[str, Any]]:
    """``rollout start --wait --json``: exit code and the rollout's final status."""
    cp = d.run("rollout", "start", "web", "--image", ref, "--wait", "--json", check=False)
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp.returncode, json.loads(cp.stdout)


def assert_clean_log(d: Immd) -> None:
    text = d.log.read_text()
    assert "Traceback" not in text, text[-4000:]
    assert SECRET not in text and KEY_ID not in text


def assert_fleet(url: str, images: Images, version: str, rid: str, count: int = 2,
                 region: str = REGION) -> list[dict[str, Any]]:
    """Exactly ``count`` live instances of service web, all of rollout ``rid`` and web@version."""
    live = described(url, region, imm__service="web")
    assert len(live) == count, [(i["InstanceId"], tags_of(i)) for i in live]
    for inst in live:
        tags = tags_of(inst)
        if region == REGION:
            assert inst["ImageId"] == images.amis[version]
        assert inst["State"]["Name"] == "running"
        assert tags["imm:service"] == "web"
        assert tags["imm:rollout"] == rid
        assert tags["imm:digest"] == images.digests[version]  # the full digest, not a prefix
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", tags["imm:digest"])
    return live


# --------------------------------------------------------------------------- 1. ALB


def alb(url: str) -> tuple[Any, str, str]:
    """An ALB with a live target group (the route) and a standby one (health checks only)."""
    ec2, elbv2 = client(url, "ec2"), client(url, "elbv2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    lb = elbv2.create_load_balancer(Name="web-alb", Subnets=subnets)["LoadBalancers"][0]
    live, standby = (elbv2.create_target_group(Name=n, Protocol="HTTP", Port=8080, VpcId=vpc
                                               )["TargetGroups"][0]["TargetGroupArn"]
                     for n in ("web-live", "web-standby"))
    elbv2.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": live}])
    return elbv2, live, standby


def targets(elbv2: Any, arn: str) -> dict[str, str]:
    """Target id -> its health state, every target the group holds (draining ones too)."""
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in elbv2.describe_target_health(
        TargetGroupArn=arn)["TargetHealthDescriptions"]}


class Watch:
    """Samples what a route serves while a rollout runs (boto3, every ~50 ms); ``seen`` holds
    each distinct answer, in order."""

    def __init__(self, sample: Callable[[], frozenset[str]]) -> None:
        self.seen: list[frozenset[str]] = []
        self.stop = threading.Event()

        def run() -> None:
            while not self.stop.is_set():
                now = sample()
                if not self.seen or self.seen[-1] != now:
                    self.seen.append(now)
                self.stop.wait(0.05)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(10)


def test_blue_green_behind_an_alb(aws: str, plugin_site: Path, tmp_path: Path) -> None:
    elbv2, live, standby = alb(aws)
    router = toml_table("routers.lb", {
        "kind": "cloudlb", "driver": "alb", "region": REGION, "endpoint": aws,
        "libcloud_driver": ALB_DRIVER, "standby_target_group": standby, "drain_timeout_s": 2,
        **FAST})
    d = start_immd(tmp_path, provider(aws) + router + web_service(router="lb", route=live),
                   plugin_site)
    images = add_images(d, aws, tmp_path)
    assert images.amis["1"] != images.amis["2"]

    code, r1 = rollout(d, "web@1")
    assert code == 0 and r1["state"] == "completed", r1["error"]
    blue = {i["InstanceId"] for i in assert_fleet(aws, images, "1", r1["id"])}
    assert targets(elbv2, live) == dict.fromkeys(blue, "healthy")
    assert targets(elbv2, standby) == {}

    with Watch(lambda: frozenset(t for t, st in targets(elbv2, live).items()
                                 if st == "healthy")) as watch:
        code, r2 = rollout(d, "web@2")
    assert code == 0 and r2["state"] == "completed", r2["error"]
    assert r2["previous"] == images.digests["1"] and r2["image"] == images.digests["2"]
    green = {i["InstanceId"] for i in assert_fleet(aws, images, "2", r2["id"])}
    assert not green & blue
    # the load balancer's members are the new instances, and only them
    assert targets(elbv2, live) == dict.fromkeys(green, "healthy")
    assert targets(elbv2, standby) == {}
    # green waited in the standby group: the live group served blue until the switch, then
    # green, and never had no healthy member in between
    assert watch.seen[0] == blue and watch.seen[-1] == green, watch.seen
    assert all(seen and seen <= blue | green for seen in watch.seen), watch.seen
    gone = {i["InstanceId"]: i["State"]["Name"] for i in described(aws, live=False)
            if i["InstanceId"] in blue}
    assert set(gone.values()) <= {"terminated", "shutting-down"} and set(gone) == blue

    # what immd reports agrees with boto3
    listed = {i["id"]: i for i in d.items("instance", "list")}
    assert set(listed) == green
    assert {i["image_id"] for i in listed.values()} == {images.amis["2"]}
    states = {x["id"]: x["state"] for x in d.items("rollout", "list")}
    assert states == {r1["id"]: "completed", r2["id"]: "completed"}
    d.stop()
    assert_clean_log(d)


# --------------------------------------------------------------------------- 2. Route53


def a_records(url: str, zone_id: str, name: str) -> set[str]:
    sets = client(url, "route53").list_resource_record_sets(HostedZoneId=zone_id)
    return {r["Value"] for rs in sets["ResourceRecordSets"] if rs["Name"] == name
            and rs["Type"] == "A" for r in rs["ResourceRecords"]}


def rrset_changes(requests: list[tuple[str, str, bytes]], name: str
                  ) -> list[list[tuple[str, set[str]]]]:
    """The Route53 change batches among ``requests`` touching ``name``'s A records: per batch,
    its changes in order as (action, values)."""
    batches = []
    for method, path, body in requests:
        if method != "POST" or not path.rstrip("/").endswith("/rrset"):
            continue
        batch = []
        for change in ET.fromstring(body).iterfind(".//{*}Change"):
            rrs = change.find("{*}ResourceRecordSet")
            assert rrs is not None
            if (rrs.findtext("{*}Name") or "").rstrip(".") == name.rstrip(".") and \
                    rrs.findtext("{*}Type") == "A":
                batch.append((change.findtext("{*}Action") or "",
                              {v.text or "" for v in rrs.iterfind(".//{*}Value")}))
        if batch:
            batches.append(batch)
    return batches


def test_blue_green_through_route53(aws: str, proxies: Any, plugin_site: Path,
                                    tmp_path: Path) -> None:
    zone_id = client(aws, "route53").create_hosted_zone(
        Name=ZONE, CallerReference=f"imm-e2e-{time.time()}")["HostedZone"]["Id"].split("/")[-1]
    name = "web." + ZONE
    proxy = proxies(None)  # only watches: what the router sends Route53, in order
    router = toml_table("routers.dns", {
        "kind": "dns", "libcloud_driver": R53_DRIVER, "endpoint": proxy.url, "zone": ZONE,
        "ttl": 30})
    d = start_immd(tmp_path, provider(aws) + router + web_service(router="dns", route=name),
                   plugin_site)
    images = add_images(d, aws, tmp_path)

    code, r1 = rollout(d, "web@1")
    assert code == 0 and r1["state"] == "completed", r1["error"]
    blue = {i["PrivateIpAddress"] for i in assert_fleet(aws, images, "1", r1["id"])}
    assert a_records(aws, zone_id, name) == blue

    before = len(proxy.requests)
    code, r2 = rollout(d, "web@2")
    assert code == 0 and r2["state"] == "completed", r2["error"]
    green = {i["PrivateIpAddress"] for i in assert_fleet(aws, images, "2", r2["id"])}
    assert len(green) == 2 and not green & blue
    assert a_records(aws, zone_id, name) == green  # the record set holds the new instances' IPs

    # the switch is a single change batch (DELETE blue's record set, CREATE green's), which
    # Route53 applies atomically: the name never resolves to nothing; nothing else touched it
    batches = rrset_changes(proxy.requests[before:], name)
    assert batches == [[("DELETE", blue), ("CREATE", green)]], batches
    d.stop()
    assert_clean_log(d)


# --------------------------------------------------------------------------- 3. launch failure


UNAVAILABLE = ("Unavailable", "The service is unavailable")


def test_failed_launch_rolls_back_and_leaves_no_instance(aws: str, proxies: Any,
                                                         plugin_site: Path,
                                                         tmp_path: Path) -> None:
    # web@2's eu-west-1 artifact is an AMI that does not exist. moto would launch it anyway; the
    # proxy answers the way EC2 does (400 InvalidAMIID.NotFound). us-east-1 launches first and
    # succeeds, so the rollback has a real instance to clean up.
    down = threading.Event()

    def script(call: Call) -> Decision:
        if down.is_set() and call.action != "?":
            return cloud_error(call, 503, *UNAVAILABLE)
        if call.action == "RunInstances" and call.params.get("ImageId") == BOGUS_AMI:
            return cloud_error(call, 400, "InvalidAMIID.NotFound",
                               f"The image id '[{BOGUS_AMI}]' does not exist")
        return None

    proxy = proxies(script)
    spread = [{"provider": "aws", "region": REGION, "count": 1},
              {"provider": "aws", "region": OTHER, "count": 1}]
    d = start_immd(tmp_path, provider(proxy.url, [REGION, OTHER], retries=2)
                   + web_service(targets=spread), plugin_site)
    images = add_images(d, aws, tmp_path, (REGION, OTHER), artifacts={("2", OTHER): BOGUS_AMI})

    # A cloud failing every call: the rollout is refused before anything is recorded or launched,
    # with what failed (cloud, provider, region, call, status) and no traceback.
    down.set()
    cp = d.fails("rollout", "start", "web", "--image", "web@1", "--wait", code=1)
    assert "AWS provider aws, region us-east-1: DescribeInstances failed after 3 attempts" \
        in cp.stderr or "AWS provider aws, region eu-west-1: DescribeInstances failed after 3 " \
        "attempts" in cp.stderr, cp.stderr
    assert "(HTTP 503): Unavailable" in cp.stderr and "Traceback" not in cp.stderr
    assert d.items("rollout", "list") == [] and proxy.forwarded["RunInstances"] == 0
    down.clear()

    code, r1 = rollout(d, "web@1")
    assert code == 0 and r1["state"] == "completed", r1["error"]
    blue = {i["InstanceId"] for region in (REGION, OTHER)
            for i in assert_fleet(aws, images, "1", r1["id"], count=1, region=region)}

    cp = d.run("rollout", "start", "web", "--image", "web@2", "--wait", check=False)
    r2 = d.json("rollout", "status", d.items("rollout", "list")[0]["id"])
    assert cp.returncode == 1 and r2["state"] == "rolled-back", (cp.stderr, r2["state"])
    for text in (cp.stderr, r2["error"]):  # names cloud, provider, region, call and EC2's code
        assert "AWS provider aws, region eu-west-1: RunInstances failed (HTTP 400)" in text, text
        assert "InvalidAMIID.NotFound" in text and BOGUS_AMI in text
    assert "Traceback" not in cp.stderr
    assert proxy.calls["RunInstances"] == 4  # 2 for web@1, 2 for web@2: a 400 is not retried
    assert proxy.forwarded["RunInstances"] == 3

    # nothing of web@2 is left running anywhere; its us-east-1 instance existed and is gone
    for region in (REGION, OTHER):
        assert described(aws, region, imm__rollout=r2["id"]) == []
    launched = described(aws, REGION, live=False, imm__rollout=r2["id"])
    assert len(launched) == 1
    assert launched[0]["State"]["Name"] in ("terminated", "shutting-down")
    assert {i["InstanceId"] for region in (REGION, OTHER)
            for i in described(aws, region, imm__service="web")} == blue  # blue untouched
    assert {i["id"] for i in d.items("instance", "list")} == blue
    d.stop()
    assert_clean_log(d)


# --------------------------------------------------------------------------- 4. fault injection


class Flaky:
    """A proxy script failing ~``rate`` of all calls: HTTP 500, 503, a throttling answer
    (EC2 ``RequestLimitExceeded`` / ELB ``Throttling``), 429, or a reply held past the client's
    timeout (after moto acted on it). Every action's first call is faulted, so every kind shows
    up; the rest is random (seeded). Each launch (ClientToken) is first refused with a 503 and
    then reaches moto with its reply lost, the case where a naive retry launches twice."""

    KINDS = ("500", "503", "throttle", "429", "hold")

    def __init__(self, rate: float, hold_s: float, seed: int = 20241) -> None:
        self.rate, self.hold_s = rate, hold_s
        self.rng = random.Random(seed)
        self.seen: Counter[str] = Counter()
        self.turn = 0
        self.by_service: Counter[str] = Counter()

    def __call__(self, call: Call) -> Decision:  # runs under the proxy's lock
        if call.action == "?":
            return None
        if call.action == "RunInstances":
            token = call.params.get("ClientToken", "")
            self.seen[token] += 1
            if self.seen[token] == 1:
                return self.fault(call, "503")
            if self.seen[token] == 2:
                return self.fault(call, "hold")
        self.seen[call.action] += 1
        if self.seen[call.action] == 1 or self.rng.random() < self.rate:
            self.turn += 1
            return self.fault(call, self.KINDS[self.turn % len(self.KINDS)])
        return None

    def fault(self, call: Call, kind: str) -> Decision:
        self.by_service[call.service] += 1
        throttle = "Throttling" if call.service == "elasticloadbalancing" else \
            "RequestLimitExceeded"
        return {
            "500": cloud_error(call, 500, "InternalError", "An internal error has occurred"),
            "503": cloud_error(call, 503, "Unavailable", "The service is unavailable"),
            "throttle": cloud_error(call, 400, throttle, "Request limit exceeded."),
            "429": ("status", (429, "", {"Retry-After": "0"})),
            "hold": ("hold", self.hold_s),
        }[kind]


def elb(url: str) -> Any:
    lb = client(url, "elb")
    lb.create_load_balancer(LoadBalancerName="web-elb", AvailabilityZones=["us-east-1a"],
                            Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80,
                                        "InstancePort": 8080}])
    return lb


def elb_members(lb: Any) -> set[str]:
    return {i["InstanceId"] for i in lb.describe_load_balancers(
        LoadBalancerNames=["web-elb"])["LoadBalancerDescriptions"][0]["Instances"]}


def test_blue_green_converges_on_a_flaky_cloud(aws: str, proxies: Any, plugin_site: Path,
                                               tmp_path: Path) -> None:
    lb = elb(aws)
    flaky = Flaky(rate=0.3, hold_s=1.0)
    proxy = proxies(flaky)
    retry: dict[str, Any] = {"timeout_s": 0.5, "retries": 10, **FAST}
    router = toml_table("routers.lb", {
        "kind": "cloudlb", "driver": "elb", "region": REGION, "endpoint": proxy.url,
        "libcloud_driver": ELB_DRIVER, **retry})
    d = start_immd(tmp_path, provider(proxy.url, **retry) + router
                   + web_service(router="lb", route="web-elb"), plugin_site)
    images = add_images(d, aws, tmp_path)

    runs = []
    for version in ("1", "2"):
        code, r = rollout(d, f"web@{version}")
        assert code == 0 and r["state"] == "completed", r["error"]
        runs.append(r)
    green = {i["InstanceId"] for i in assert_fleet(aws, images, "2", runs[1]["id"])}
    assert elb_members(lb) == green

    # no launch happened twice: one RunInstances per rollout reached moto (the first try of
    # each was refused, the second launched but its reply was lost and was found by its token)
    assert proxy.calls["RunInstances"] == 4 and proxy.forwarded["RunInstances"] == 2
    for r in runs:
        assert len(described(aws, live=False, imm__rollout=r["id"])) == 2
    # ... while about a third of everything failed, in every way, on both APIs
    assert set(proxy.faults) == {"500", "503", "400", "429", "hold"}, proxy.faults
    total = sum(proxy.calls.values())
    assert sum(proxy.faults.values()) >= 0.15 * total, (proxy.faults, total)
    assert flaky.by_service["ec2"] and flaky.by_service["elasticloadbalancing"]
    d.stop()
    log = d.log.read_text()
    assert "retry 1 of 10" in log and "throttled" in log and "timeout" in log
    assert_clean_log(d)
    print(f"\nflaky cloud: {total} calls, faults {dict(proxy.faults)}, "
          f"elapsed {[r['elapsed_s'] for r in runs]} s")


@pytest.mark.parametrize("api", ["ec2", "elb"])
def test_cloud_outage_during_a_rollout_rolls_back_cleanly(api: str, aws: str, proxies: Any,
                                                          plugin_site: Path,
                                                          tmp_path: Path) -> None:
    # One API fails EVERY call for OUTAGE_S, from web@2's first RunInstances (ec2: the launch
    # gives up after its retries) or first RegisterInstancesWithLoadBalancer (elb: attach
    # fails). The rollback needs the cloud (it cannot know what a refused launch left behind, or
    # take green off the load balancer, without it): it must wait for the API to answer again,
    # then finish: rolled-back, an error naming cloud, region and call, blue serving, nothing of
    # web@2 left running, no traceback. (A cloud that never comes back leaves the rollout
    # rolling-back, still trying: never a half-state.)
    outage_s = 4.0
    trigger = {"ec2": "RunInstances", "elb": "RegisterInstancesWithLoadBalancer"}[api]
    service = {"ec2": "ec2", "elb": "elasticloadbalancing"}[api]
    armed = threading.Event()
    since: list[float] = []

    def script(call: Call) -> Decision:
        if armed.is_set() and call.action == trigger and not since:
            since.append(time.monotonic())
        if since and time.monotonic() - since[0] < outage_s and call.service == service:
            return cloud_error(call, 503, *UNAVAILABLE)
        return None

    lb = elb(aws)
    proxy = proxies(script)
    router = toml_table("routers.lb", {
        "kind": "cloudlb", "driver": "elb", "region": REGION, "endpoint": proxy.url,
        "libcloud_driver": ELB_DRIVER, "retries": 2, **FAST})
    d = start_immd(tmp_path, provider(proxy.url, retries=2) + router
                   + web_service(router="lb", route="web-elb"), plugin_site)
    images = add_images(d, aws, tmp_path)
    code, r1 = rollout(d, "web@1")
    assert code == 0 and r1["state"] == "completed", r1["error"]
    blue = {i["InstanceId"] for i in assert_fleet(aws, images, "1", r1["id"])}

    armed.set()
    rid = d.json("rollout", "start", "web", "--image", "web@2")["id"]
    deadline = time.monotonic() + 30
    while True:
        state = {x["id"]: x for x in d.items("rollout", "list")}[rid]  # asks no provider
        if state["state"] in ("completed", "rolled-back", "failed"):
            break
        assert not (state["error"] or "").startswith("internal error"), state["error"]
        if since and time.monotonic() - since[0] < outage_s - 1:
            # while the cloud is down, the rollout's status still answers
            d.json("rollout", "status", rid)
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    r = d.json("rollout", "status", rid)
    assert r["state"] == "rolled-back", r
    where = {"ec2": "AWS provider aws, region us-east-1: RunInstances failed after 3 attempts",
             "elb": "AWS router lb, region us-east-1: RegisterInstancesWithLoadBalancer "
                    "(web-elb) failed after 3 attempts"}[api]
    assert where in r["error"] and "(HTTP 503): Unavailable" in r["error"], r["error"]
    assert {i["InstanceId"] for i in described(aws, imm__service="web")} == blue
    assert elb_members(lb) == blue
    d.stop()
    assert_clean_log(d)
