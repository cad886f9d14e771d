"""The aws provider and the cloudlb router against a real ``moto_server``, through libcloud's own
EC2 / ELB / ALB drivers (adapted to moto only on the test side: tests/adapters/ec2.py, elb.py).

moto is seeded and checked with boto3, code the provider does not use. Failures are injected by
a small HTTP proxy in front of moto that answers chosen calls with 5xx, throttling errors or a
reply held past the client's timeout (after moto has acted on the request).
"""

from __future__ import annotations

import http.client
import http.server
import importlib
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from imm.errors import BadRequest, ConfigError, NotFound, ProviderError, RouterError
from imm.plugins import cloud
from imm.plugins.base import Feature, LaunchRequest, PluginContext
from imm.plugins.providers import aws as awsmod
from imm.plugins.providers.aws import TAG_COPIED_FROM, TAG_TOKEN, AWSProvider
from imm.plugins.registry import ProviderRegistry, RouterRegistry
from imm.plugins.routers import cloudlb as cloudlbmod
from imm.plugins.routers.cloudlb import CloudLBRouter

REGION, OTHER = "us-east-1", "eu-west-1"
KEY_ID = "AKIAIMMTESTKEY7EXAMPLE"
SECRET = "imm/Test+Secret/wJalrXUtnFEMI/K7MDENG/bPxRfiCY"
LOG = logging.getLogger("test_aws")


def _adapter(name: str) -> Any:
    try:
        return importlib.import_module(f"tests.adapters.{name}")
    except ModuleNotFoundError:  # tests/ itself is on sys.path (pytest's rootdir-less mode)
        return importlib.import_module(f"adapters.{name}")


EC2_DRIVER = _adapter("ec2").register()
ELB_DRIVER, ALB_DRIVER = _adapter("elb").register()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- moto


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A wiped moto and fake credentials in the environment."""
    urllib.request.urlopen(urllib.request.Request(moto + "/moto-api/reset", method="POST"),
                           timeout=10).close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", raising=False)
    return moto


def client(url: str, service: str, region: str = REGION) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=region,
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


def make_provider(url: str, tmp_path: Path, **settings: Any) -> AWSProvider:
    base: dict[str, Any] = {"kind": "aws", "regions": [REGION, OTHER], "endpoint": url,
                            "libcloud_driver": EC2_DRIVER, "backoff_base_s": 0.01,
                            "backoff_max_s": 0.05, "timeout_s": 5}
    base.update(settings)
    return AWSProvider("aws-test", base, PluginContext(tmp_path, LOG))


def register_ami(url: str, region: str = REGION, name: str = "imm-web-1.0",
                 tags: dict[str, str] | None = None) -> str:
    ec2 = client(url, "ec2", region)
    ami = ec2.register_image(Name=name, Description="baked by packer", Architecture="x86_64",
                             RootDeviceName="/dev/sda1",
                             BlockDeviceMappings=[{"DeviceName": "/dev/sda1",
                                                   "Ebs": {"VolumeSize": 8}}])["ImageId"]
    if tags:
        ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return str(ami)


def imm_tags(service: str = "web", rollout: str = "r-1", slot: str = "0") -> dict[str, str]:
    return {"imm:service": service, "imm:rollout": rollout, "imm:slot": slot,
            "imm:digest": "sha256:" + "ab" * 32}


def described(url: str, region: str = REGION, **filters: Any) -> list[dict[str, Any]]:
    ec2 = client(url, "ec2", region)
    flt = [{"Name": k.replace("_", "-"), "Values": v if isinstance(v, list) else [v]}
           for k, v in filters.items()]
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=flt):
        for r in page["Reservations"]:
            out += r["Instances"]
    return out


# --------------------------------------------------------------------------- fault proxy


Script = Callable[[str, int], tuple[str, Any] | None]  # (action, nth call of it) -> what to do


class FaultProxy:
    """HTTP proxy in front of moto. Per request the script may answer
    ``("status", (code, body, headers))``, ``("hold", seconds)`` (forward to moto, then hold the
    reply past the client's timeout) or None (forward)."""

    def __init__(self, upstream: str, script: Script | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.script = script or (lambda action, n: None)
        self.calls: Counter[str] = Counter()
        self.seen: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = urllib.parse.urlsplit(self.path).query
                params = urllib.parse.parse_qs(query)
                if body and not params.get("Action"):
                    params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                action = (params.get("Action") or ["?"])[0]
                with proxy.lock:
                    proxy.calls[action] += 1
                    n = proxy.calls[action]
                    proxy.seen.append(self.path + " " + json.dumps(dict(self.headers)))
                what = proxy.script(action, n)
                if what is not None and what[0] == "status":
                    code, text, headers = what[1]
                    self._reply(code, text.encode(), {"Content-Type": "text/xml", **headers})
                    return
                status, rheaders, rbody = proxy.forward(self.command, self.path, self.headers,
                                                        body)
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
def proxy_factory(aws: str) -> Iterator[Callable[[Script | None], FaultProxy]]:
    made: list[FaultProxy] = []

    def make(script: Script | None = None) -> FaultProxy:
        p = FaultProxy(aws, script)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def ec2_error(code: str, message: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors><RequestID>r-1</RequestID>"
            f"</Response>")


# --------------------------------------------------------------------------- provider: basics


def test_registers_as_plugins() -> None:
    providers, routers = ProviderRegistry(), RouterRegistry()
    awsmod.imm_register_providers(providers)
    cloudlbmod.imm_register_routers(routers)
    assert providers.get("aws") is AWSProvider
    assert routers.get("cloudlb") is CloudLBRouter
    assert AWSProvider("x", {"regions": [REGION]}, PluginContext(Path("/tmp"), LOG)
                       ).features == {Feature.CLIENT_TOKEN, Feature.COPY_IMAGE}


def test_example_config_builds_both_plugins(tmp_path: Path) -> None:
    import tomllib

    conf = tomllib.loads((Path(__file__).parent.parent / "config" / "aws.toml").read_text())
    (pname, psettings), = conf["providers"].items()
    p = AWSProvider(pname, psettings, PluginContext(tmp_path, LOG))
    assert p.regions == [REGION, OTHER] and p.security_groups[OTHER]
    (rname, rsettings), = conf["routers"].items()
    r = CloudLBRouter(rname, rsettings, PluginContext(tmp_path, LOG))
    assert r.flavour == "alb" and r.standby


def test_settings_are_checked(tmp_path: Path) -> None:
    ctx = PluginContext(tmp_path, LOG)
    with pytest.raises(ConfigError, match="regions"):
        AWSProvider("x", {}, ctx)
    with pytest.raises(ConfigError, match="unknown region"):
        AWSProvider("x", {"regions": ["mars-north-1"]}, ctx)
    with pytest.raises(ConfigError, match="subnet_id"):
        AWSProvider("x", {"regions": [REGION], "security_group_ids": ["sg-1"]}, ctx)
    with pytest.raises(ConfigError, match="retries"):
        AWSProvider("x", {"regions": [REGION], "retries": -1}, ctx)
    with pytest.raises(ConfigError, match="secret_env or secret_file"):
        AWSProvider("x", {"regions": [REGION], "secret_env": "A", "secret_file": "/x"}, ctx)
    with pytest.raises(ConfigError, match="do not belong in the config"):
        AWSProvider("x", {"regions": [REGION], "secret": SECRET}, ctx)
    with pytest.raises(ConfigError, match="endpoint"):
        AWSProvider("x", {"regions": [REGION], "endpoint": "ftp://x"}, ctx)
    p = AWSProvider("x", {"regions": [REGION, OTHER],
                          "subnet_id": {REGION: "subnet-1"}, "security_group_ids": {
                              REGION: ["sg-1"]}}, ctx)
    assert p.subnets == {REGION: "subnet-1"} and p.security_groups == {REGION: ["sg-1"]}


def test_list_reads_image_ids_tags_and_addresses(aws: str, tmp_path: Path) -> None:
    ami = register_ami(aws)
    ami2 = register_ami(aws, OTHER, name="imm-web-1.0-eu")
    ec2, ec2_eu = client(aws, "ec2"), client(aws, "ec2", OTHER)
    spec = [{"ResourceType": "instance",
             "Tags": [{"Key": k, "Value": v} for k, v in imm_tags().items()]}]
    web = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, InstanceType="t3.micro",
                            TagSpecifications=spec)["Instances"]
    eu = ec2_eu.run_instances(ImageId=ami2, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              TagSpecifications=spec)["Instances"]
    pet = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]
    gone = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=spec
                             )["Instances"][0]
    ec2.terminate_instances(InstanceIds=[gone["InstanceId"]])

    p = make_provider(aws, tmp_path)
    everything = {i.id: i for i in p.list_instances()}
    assert set(everything) == {i["InstanceId"] for i in web + eu} | {pet["InstanceId"]}
    for inst in web:
        got = everything[inst["InstanceId"]]
        assert got.region == REGION and got.provider == "aws-test"
        assert got.image_id == ami
        assert got.state in ("pending", "running")
        assert got.tags == imm_tags()
        assert got.address == inst["PrivateIpAddress"]
        assert abs(got.launched_at - int(inst["LaunchTime"].timestamp())) <= 1
        assert got.extra["instance_type"] == "t3.micro"
    assert everything[eu[0]["InstanceId"]].region == OTHER
    assert everything[eu[0]["InstanceId"]].image_id == ami2
    assert everything[pet["InstanceId"]].tags == {}

    tagged = {i.id for i in p.list_instances({"imm:service": "web"})}
    assert tagged == {i["InstanceId"] for i in web + eu}
    assert not list(p.list_instances({"imm:service": "web", "imm:rollout": "other"}))

    ec2.stop_instances(InstanceIds=[web[0]["InstanceId"]])
    states = {i.id: i.state for i in p.list_instances({"imm:service": "web"})}
    assert states[web[0]["InstanceId"]] == "stopped"


def test_list_paginates_250_instances(aws: str, proxy_factory: Any, tmp_path: Path) -> None:
    ami = register_ami(aws)
    ec2 = client(aws, "ec2")
    spec = [{"ResourceType": "instance", "Tags": [{"Key": "imm:service", "Value": "web"}]}]
    for _ in range(25):  # moto pages by reservation: 25 reservations of 10
        ec2.run_instances(ImageId=ami, MinCount=10, MaxCount=10, TagSpecifications=spec)
    proxy = proxy_factory()
    p = make_provider(proxy.url, tmp_path, regions=[REGION], page_size=10)
    started = time.monotonic()
    listed = list(p.list_instances({"imm:service": "web"}))
    took = time.monotonic() - started
    assert len(listed) == 250 and len({i.id for i in listed}) == 250
    assert proxy.calls["DescribeInstances"] == 3  # 25 reservations, 10 per page
    assert proxy.calls["DescribeAddresses"] == 0  # libcloud's list_nodes would add these
    started = time.monotonic()
    assert len(described(aws)) == 250
    print(f"\nlisted 250 instances in 3 pages: imm {took:.2f}s, boto3 on the same moto "
          f"{time.monotonic() - started:.2f}s")


def test_list_reads_pages_as_libcloud_nodes_did(aws: str, tmp_path: Path) -> None:
    """The page reader gives, field by field, what libcloud's _to_node + _to_instance gave on
    moto's answers (several reservations over pages, Name and empty tags, none, a subnet
    without public addresses, stopped, terminated), and what boto3 sees."""
    from libcloud.compute.drivers.ec2 import NAMESPACE
    from libcloud.utils.xml import findall, findtext

    from imm.plugins.providers.aws.pages import page_instances

    ami = register_ami(aws)
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]

    def spec(**tags: str) -> list[dict[str, Any]]:
        return [{"ResourceType": "instance",
                 "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]

    ec2.run_instances(ImageId=ami, MinCount=3, MaxCount=3, InstanceType="t3.small",
                      TagSpecifications=spec(Name="web-0", **imm_tags()))
    ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, SubnetId=subnet,
                      TagSpecifications=spec(**{"imm:service": "api", "empty": ""}))
    for _ in range(3):  # no tags; moto pages by reservation: 7 here, 2 pages of 5
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
    stopped = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, InstanceType="m5.large",
                                TagSpecifications=spec(**imm_tags(slot="1")))["Instances"]
    gone = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                             TagSpecifications=spec(**imm_tags()))["Instances"][0]
    ec2.stop_instances(InstanceIds=[stopped[0]["InstanceId"]])
    ec2.terminate_instances(InstanceIds=[gone["InstanceId"]])
    client(aws, "ec2", OTHER).run_instances(ImageId=register_ami(aws, OTHER), MinCount=2,
                                            MaxCount=2, TagSpecifications=spec(a="b"))

    p = make_provider(aws, tmp_path, page_size=5)
    new: dict[str, Any] = {}
    for region in (REGION, OTHER):
        driver, _ = p.drivers.get(region)
        token, pages = None, 0
        while True:
            params = {"Action": "DescribeInstances", "MaxResults": "5"}
            if token:
                params["NextToken"] = token
            elem = driver.connection.request(driver.path, params=params).object
            old = [p._to_instance(region, n)
                   for rs in findall(element=elem, xpath="reservationSet/item", namespace=NAMESPACE)
                   for n in driver._to_nodes(rs, "instancesSet/item")]
            got, token = page_instances(elem, NAMESPACE, p.name, region)
            assert token == findtext(element=elem, xpath="nextToken", namespace=NAMESPACE)
            assert len(got) == len(old) and [g.to_dict() for g in got] == [o.to_dict() for o in old]
            new.update((g.id, g) for g in got)
            pages += 1
            if not token:
                break
        assert pages == (2 if region == REGION else 1)
    assert len(new) == 13
    truth = {i["InstanceId"]: i for r in (REGION, OTHER) for i in described(aws, r)}
    assert set(new) == set(truth)
    for iid, inst in new.items():
        b = truth[iid]
        assert inst.extra["aws_state"] == b["State"]["Name"] and inst.image_id == b["ImageId"]
        assert inst.tags == {t["Key"]: t["Value"] for t in b.get("Tags", [])}
        assert inst.extra.get("public_ip") == b.get("PublicIpAddress")
        assert inst.address == (b.get("PrivateIpAddress") or b.get("PublicIpAddress"))
        assert inst.extra["instance_type"] == b["InstanceType"]
        assert inst.extra["availability_zone"] == b["Placement"]["AvailabilityZone"]
        assert inst.extra.get("subnet_id") == b.get("SubnetId")
        assert abs(inst.launched_at - int(b["LaunchTime"].timestamp())) <= 1
    states = Counter(i.state for i in new.values())
    assert states["stopped"] == 1 and states["terminated"] == 1
    assert any(i.extra.get("public_ip") for i in new.values())
    assert any("public_ip" not in i.extra for i in new.values())
    assert new[stopped[1]["InstanceId"]].extra["name"] == stopped[1]["InstanceId"]
    listed = {i.id for i in p.list_instances()}
    assert listed == set(new) - {gone["InstanceId"]}


# --------------------------------------------------------------------------- launch / terminate


def test_launch_tags_and_client_token(aws: str, tmp_path: Path) -> None:
    ami = register_ami(aws)
    p = make_provider(aws, tmp_path, size="t3.small")
    req = LaunchRequest(region=REGION, image_id=ami, count=3, tags=imm_tags(),
                        client_token="r-1/batch-0")
    first = p.launch(req)
    assert len(first) == 3
    assert {i.image_id for i in first} == {ami}
    assert all(i.tags["imm:digest"] == imm_tags()["imm:digest"] for i in first)
    second = p.launch(req)  # a retried launch: same instances, nothing new
    assert sorted(i.id for i in second) == sorted(i.id for i in first)

    seen = described(aws)
    assert sorted(i["InstanceId"] for i in seen) == sorted(i.id for i in first)
    for inst in seen:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert {k: tags[k] for k in imm_tags()} == imm_tags()
        assert tags[TAG_TOKEN] == "r-1/batch-0"
        assert tags["Name"] == "web-0"
        assert inst["InstanceType"] == "t3.small"
        assert inst["ImageId"] == ami
        assert inst.get("ClientToken") in (None, "r-1/batch-0")

    # another batch, another token: new instances; a long token is hashed to EC2's 64 chars
    long_token = "rollout-" + "x" * 100
    third = p.launch(LaunchRequest(region=OTHER, image_id=register_ami(aws, OTHER), count=1,
                                   tags=imm_tags(slot="1"), client_token=long_token))
    assert third[0].region == OTHER
    eu_tags = {t["Key"]: t["Value"] for t in described(aws, OTHER)[0]["Tags"]}
    assert len(eu_tags[TAG_TOKEN]) <= 64 and eu_tags[TAG_TOKEN] == awsmod.effective_token(
        long_token)

    with pytest.raises(BadRequest, match="not configured"):
        p.launch(LaunchRequest(region="ap-south-1", image_id=ami, count=1, tags=imm_tags(),
                               client_token="t"))


def test_terminate_spans_regions_and_is_idempotent(aws: str, tmp_path: Path) -> None:
    ami, ami_eu = register_ami(aws), register_ami(aws, OTHER)
    p = make_provider(aws, tmp_path)
    us = p.launch(LaunchRequest(REGION, ami, 2, imm_tags(), "t-us"))
    eu = p.launch(LaunchRequest(OTHER, ami_eu, 1, imm_tags(), "t-eu"))
    fresh = make_provider(aws, tmp_path)  # knows nothing about where the ids live
    fresh.terminate([us[0].id, eu[0].id, "i-0123456789abcdef0"])
    state = {i["InstanceId"]: i["State"]["Name"] for i in described(aws) + described(aws, OTHER)}
    assert state[us[0].id] == "terminated" and state[eu[0].id] == "terminated"
    assert state[us[1].id] == "running"
    fresh.terminate([us[0].id, eu[0].id])  # already gone: fine
    assert {i.id for i in fresh.list_instances()} == {us[1].id}

    pet = client(aws, "ec2").run_instances(ImageId=ami, MinCount=1, MaxCount=1
                                           )["Instances"][0]["InstanceId"]
    with pytest.raises(BadRequest, match=f"refusing to terminate {pet}"):
        fresh.terminate([pet, us[1].id])
    assert {i.id for i in fresh.list_instances()} == {us[1].id, pet}  # nothing was terminated
    make_provider(aws, tmp_path, terminate_untagged=True).terminate([pet])
    assert {i.id for i in fresh.list_instances()} == {us[1].id}


# --------------------------------------------------------------------------- images


def test_describe_and_copy_image(aws: str, tmp_path: Path) -> None:
    digest = "sha256:" + "cd" * 32
    ami = register_ami(aws, tags={"imm:digest": digest, "team": "web"})
    p = make_provider(aws, tmp_path)
    info = p.describe_image(REGION, ami)
    assert info is not None
    assert (info.image_id, info.name, info.state, info.region) == (ami, "imm-web-1.0",
                                                                   "available", REGION)
    assert info.extra["tags"]["imm:digest"] == digest
    assert p.describe_image(REGION, "ami-0123456789abcdef0") is None
    assert p.describe_image(OTHER, ami) is None

    copy = p.copy_image(REGION, ami, OTHER)
    assert copy != ami
    eu = client(aws, "ec2", OTHER).describe_images(ImageIds=[copy])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in eu["Tags"]}
    assert tags[TAG_COPIED_FROM] == f"{REGION}/{ami}" and tags["imm:digest"] == digest
    assert "team" not in tags and eu["Name"] == "imm-web-1.0"
    assert p.copy_image(REGION, ami, OTHER) == copy  # repeated: the same copy
    assert len(client(aws, "ec2", OTHER).describe_images(Owners=["self"])["Images"]) == 1
    copied = p.describe_image(OTHER, copy)
    assert copied is not None and copied.extra["tags"]["imm:digest"] == digest
    with pytest.raises(NotFound, match="no image"):
        p.copy_image(REGION, "ami-0123456789abcdef0", OTHER)


# --------------------------------------------------------------------------- retries


def test_launch_survives_5xx_throttling_and_a_lost_reply(aws: str, proxy_factory: Any,
                                                         tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ami = register_ami(aws)

    def script(action: str, n: int) -> tuple[str, Any] | None:
        if action != "RunInstances":
            return None
        return {
            1: ("status", (503, ec2_error("Unavailable", "Service unavailable"), {})),
            2: ("status", (503, "<html>bad gateway</html>", {"Content-Type": "text/html"})),
            3: ("status", (400, ec2_error("RequestLimitExceeded", "Request limit exceeded."),
                           {})),
            4: ("status", (429, "", {"Retry-After": "0"})),
            5: ("hold", 1.5),  # moto launches, the reply comes too late
        }.get(n)

    proxy = proxy_factory(script)
    p = make_provider(proxy.url, tmp_path, timeout_s=0.5, retries=5)
    caplog.set_level(logging.WARNING)
    got = p.launch(LaunchRequest(REGION, ami, 2, imm_tags(), "r-retry/0"))
    assert proxy.calls["RunInstances"] == 5  # the 5th reached moto; its result was found
    live = described(aws)
    assert len(live) == 2  # nothing launched twice
    assert sorted(i.id for i in got) == sorted(i["InstanceId"] for i in live)
    text = caplog.text
    assert "RunInstances failed" in text and "retry 1 of 5" in text
    assert "throttled" in text and "timeout" in text and "malformed" in text
    assert KEY_ID not in text and SECRET not in text


def test_reads_retry_timeouts_and_429(aws: str, proxy_factory: Any, tmp_path: Path) -> None:
    register_ami(aws)

    def script(action: str, n: int) -> tuple[str, Any] | None:
        if action == "DescribeImages" and n == 1:
            return ("hold", 1.0)
        if action == "DescribeImages" and n == 2:
            return ("status", (429, "", {}))
        return None

    proxy = proxy_factory(script)
    p = make_provider(proxy.url, tmp_path, timeout_s=0.4)
    assert p.describe_image(REGION, "ami-0123456789abcdef0") is None
    assert proxy.calls["DescribeImages"] == 3


def test_failing_endpoint_gives_an_error_naming_cloud_region_call(
        aws: str, proxy_factory: Any, tmp_path: Path) -> None:
    proxy = proxy_factory(lambda action, n: ("status", (503, ec2_error(
        "Unavailable", "The service is unavailable."), {})))
    p = make_provider(proxy.url, tmp_path, regions=[REGION], retries=2)
    with pytest.raises(ProviderError) as info:
        list(p.list_instances())
    msg = info.value.message
    assert "AWS provider aws-test, region us-east-1: DescribeInstances failed after 3 attempts" \
        in msg
    assert "HTTP 503" in msg and "Unavailable" in msg and "5xx" in msg
    assert info.value.detail["attempts"] == 3 and info.value.detail["kind"] == "server"
    assert proxy.calls["DescribeInstances"] == 3


def test_client_errors_are_not_retried(aws: str, proxy_factory: Any, tmp_path: Path) -> None:
    proxy = proxy_factory(lambda action, n: ("status", (400, ec2_error(
        "InvalidParameterValue", "Value (t9.huge) for parameter instanceType is invalid."), {}))
        if action == "RunInstances" else None)
    p = make_provider(proxy.url, tmp_path, regions=[REGION])
    with pytest.raises(ProviderError) as info:
        p.launch(LaunchRequest(REGION, register_ami(aws), 1, imm_tags(), "bad", size="t9.huge"))
    assert proxy.calls["RunInstances"] == 1
    assert "RunInstances failed (HTTP 400): InvalidParameterValue" in info.value.message
    assert "t9.huge" in info.value.message and "check the ids and settings" in info.value.message
    assert info.value.detail["cloud_code"] == "InvalidParameterValue"
    assert described(aws) == []


def test_unreachable_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    port = free_port()  # nothing listens there
    p = make_provider(f"http://127.0.0.1:{port}", tmp_path, regions=[REGION], retries=1)
    with pytest.raises(ProviderError) as info:
        p.describe_image(REGION, "ami-12345678")
    msg = info.value.message
    assert f"cannot talk to http://127.0.0.1:{port}" in msg and "DescribeImages" in msg
    assert info.value.detail["kind"] == "network" and info.value.detail["attempts"] == 2


# --------------------------------------------------------------------------- credentials


def test_credentials_never_appear_in_errors_or_logs(aws: str, proxy_factory: Any,
                                                    tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # A server (or proxy) that echoes what it was sent: the key id, the signature header, the
    # secret itself. None of it may reach an error message or a log line.
    def script(action: str, n: int) -> tuple[str, Any] | None:
        echo = f"key {KEY_ID} secret {SECRET} Credential={KEY_ID}/20240101/us-east-1/ec2"
        if action == "DescribeInstances" and n == 1:
            return ("status", (401, ec2_error("AuthFailure", echo), {}))
        if action == "DescribeImages":
            return ("status", (500, echo, {"Content-Type": "text/plain"}))
        if action == "RunInstances":
            return ("status", (400, ec2_error("InvalidParameterValue", echo), {}))
        return None

    proxy = proxy_factory(script)
    p = make_provider(proxy.url, tmp_path, regions=[REGION], retries=1)
    caplog.set_level(logging.DEBUG)
    errors = []
    for call in (lambda: list(p.list_instances()),
                 lambda: p.describe_image(REGION, "ami-12345678"),
                 lambda: p.launch(LaunchRequest(REGION, "ami-1", 1, imm_tags(), "x"))):
        with pytest.raises(ProviderError) as info:
            call()
        errors.append(info.value)
    auth = errors[0]
    assert auth.detail["kind"] == "auth" and auth.detail["attempts"] == 1  # not retried
    assert [e.detail["call"] for e in errors] == ["DescribeInstances", "DescribeImages",
                                                  "RunInstances"]
    assert "check $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY/$AWS_SESSION_TOKEN" in auth.message
    for err in errors:
        blob = err.message + json.dumps(err.detail) + repr(err)
        assert KEY_ID not in blob and SECRET not in blob, blob
        assert cloud.REDACTED in err.message
    assert KEY_ID not in caplog.text and SECRET not in caplog.text
    assert KEY_ID not in repr(p.__dict__) and SECRET not in repr(p.__dict__)


def test_credentials_from_files(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                ) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError) as info:
        make_provider(aws, tmp_path).describe_image(REGION, "ami-1")
    assert "$AWS_ACCESS_KEY_ID" in info.value.message and "access key id" in info.value.message

    key, secret = tmp_path / "key", tmp_path / "secret"
    key.write_text(KEY_ID + "\n")
    secret.write_text(SECRET + "\n")
    key.chmod(0o600)
    secret.chmod(0o600)
    p = make_provider(aws, tmp_path, key_file=str(key), secret_file=str(secret))
    ami = register_ami(aws)
    assert p.describe_image(REGION, ami) is not None

    shared = tmp_path / "credentials"
    shared.write_text(f"[imm]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    p2 = make_provider(aws, tmp_path, credentials_file=str(shared), profile="imm")
    assert p2.describe_image(REGION, ami) is not None
    with pytest.raises(ConfigError, match=r"no profile \[other\]"):
        make_provider(aws, tmp_path, credentials_file=str(shared),
                      profile="other").describe_image(REGION, ami)
    with pytest.raises(ConfigError) as info:
        make_provider(aws, tmp_path, key_file=str(tmp_path / "nope"),
                      secret_file=str(secret)).describe_image(REGION, ami)
    assert str(tmp_path / "nope") in info.value.message and SECRET not in info.value.message


# --------------------------------------------------------------------------- the shared machinery


def test_classify_and_backoff() -> None:
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, MalformedResponseError

    scrub = cloud.Scrubber([SECRET])
    f = cloud.classify(RateLimitReachedError(headers={"retry-after": "3"}), scrub)
    assert (f.kind, f.retryable, f.retry_after) == ("throttled", True, 3.0)
    f = cloud.classify(BaseHTTPError(400, "Throttling: Rate exceeded"), scrub)
    assert (f.kind, f.retryable, f.cloud_code) == ("throttled", True, "Throttling")
    f = cloud.classify(BaseHTTPError(503, "RequestLimitExceeded: slow down"), scrub)
    assert f.kind == "throttled"
    f = cloud.classify(BaseHTTPError(502, "Bad gateway"), scrub)
    assert (f.kind, f.retryable, f.status) == ("server", True, 502)
    f = cloud.classify(BaseHTTPError(404, "InvalidGroup.NotFound: no"), scrub)
    assert (f.kind, f.retryable, f.cloud_code) == ("client", False, "InvalidGroup.NotFound")
    f = cloud.classify(InvalidCredsError(f"AuthFailure: {SECRET}"), scrub)
    assert (f.kind, f.retryable) == ("auth", False) and SECRET not in f.message
    f = cloud.classify(MalformedResponseError("Failed to parse XML", body=f"<h1>{SECRET}"),
                       scrub)
    assert f.kind == "malformed" and f.retryable and SECRET not in f.message
    f = cloud.classify(TimeoutError("timed out"), scrub)
    assert (f.kind, f.retryable, f.applied_unknown) == ("timeout", True, True)
    f = cloud.classify(ConnectionRefusedError(111, "Connection refused"), scrub)
    assert (f.kind, f.retryable, f.applied_unknown) == ("network", True, False)
    f = cloud.classify(ValueError("bug"), scrub)
    assert (f.kind, f.retryable) == ("other", False)

    policy = cloud.CallPolicy(backoff_base_s=0.5, backoff_max_s=10)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (6, 10.0), (12, 10.0)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(1, retry_after=4) >= 4

    text = (f"id {KEY_ID} Credential=ASIAXXXXXXXXXXXXXXXX/2024/us-east-1/ec2/aws4_request, "
            f"Signature=abcdef0123 X-Amz-Security-Token=FQoGZXIvYXdzE Bearer eyJhbGciOiJIUzI1")
    out = cloud.Scrubber()(text)
    assert KEY_ID not in out and "ASIAX" not in out and "abcdef0123" not in out
    assert "FQoGZXIvYXdzE" not in out and "eyJhbGci" not in out


def test_non_idempotent_calls_retry_only_refusals() -> None:
    from libcloud.common.exceptions import BaseHTTPError

    slept: list[float] = []
    caller = cloud.CloudCaller("AWS", "p", cloud.CallPolicy(retries=3, backoff_base_s=0.01),
                               cloud.Scrubber(), LOG, sleep=slept.append)
    calls = Counter[str]()

    def flaky(kind: str) -> str:
        calls[kind] += 1
        if calls[kind] == 1:
            raise BaseHTTPError(400, "RequestLimitExceeded: x") if kind == "throttle" \
                else TimeoutError("timed out")
        return "ok"

    assert caller.call("r", "Create", flaky, "throttle", idempotent=False) == "ok"
    with pytest.raises(ProviderError, match="Create failed: timed out"):
        caller.call("r", "Create", flaky, "timeout", idempotent=False)
    assert caller.call("r", "Create", flaky, "timeout2", idempotent=False,
                       recover=lambda: "found") == "found"
    assert len(slept) == 2


# --------------------------------------------------------------------------- cloudlb


def make_router(url: str, tmp_path: Path, **settings: Any) -> CloudLBRouter:
    driver = settings.get("driver", "alb")
    base: dict[str, Any] = {"kind": "cloudlb", "driver": driver, "region": REGION,
                            "endpoint": url, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                            "libcloud_driver": ELB_DRIVER if driver == "elb" else ALB_DRIVER}
    base.update(settings)
    return CloudLBRouter("lb-test", base, PluginContext(tmp_path, LOG))


def run_instances(url: str, n: int) -> list[dict[str, Any]]:
    ami = register_ami(url)
    return list(client(url, "ec2").run_instances(ImageId=ami, MinCount=n, MaxCount=n,
                                                 InstanceType="t3.micro")["Instances"])


def test_elb_membership_and_health(aws: str, tmp_path: Path) -> None:
    elb = client(aws, "elb")
    elb.create_load_balancer(LoadBalancerName="web-elb", AvailabilityZones=["us-east-1a"],
                             Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80,
                                         "InstancePort": 8080}])
    a, b = (i["InstanceId"] for i in run_instances(aws, 2))
    r = make_router(aws, tmp_path, driver="elb")
    r.ensure_route("web-elb", {})

    def registered() -> set[str]:
        return {i["InstanceId"] for i in elb.describe_load_balancers(
            LoadBalancerNames=["web-elb"])["LoadBalancerDescriptions"][0]["Instances"]}

    r.add("web-elb", a, "10.0.0.1:8080")
    r.add("web-elb", a, "10.0.0.1:8080")  # idempotent
    assert registered() == {a}
    (ba,) = r.backends("web-elb")
    assert (ba.name, ba.address, ba.weight, ba.state, ba.healthy) == (
        a, "10.0.0.1:8080", 1, "ready", True)

    r.add("web-elb", b, "10.0.0.2")
    client(aws, "ec2").stop_instances(InstanceIds=[b])
    assert r.health("web-elb") == {a: True, b: False}

    r.set_weights("web-elb", {a: 0, b: 5})
    assert registered() == {b}
    assert {x.name: x.weight for x in r.backends("web-elb")} == {a: 0, b: 5}
    r.set_weights("web-elb", {a: 1})
    assert registered() == {a, b}

    r.drain("web-elb", a)
    assert registered() == {b}
    assert {x.name: (x.state, x.weight) for x in r.backends("web-elb")}[a] == ("drain", 0)
    r.remove("web-elb", a)
    r.remove("web-elb", a)  # absent: fine
    assert [x.name for x in r.backends("web-elb")] == [b]
    with pytest.raises(NotFound):
        r.drain("web-elb", a)
    with pytest.raises(BadRequest, match="instance id"):
        r.add("web-elb", "web-1", "10.0.0.3")
    with pytest.raises(NotFound, match="load balancer nope does not exist"):
        r.backends("nope")


def _alb(url: str) -> tuple[Any, str, str]:
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


def targets(elbv2: Any, arn: str) -> dict[str, tuple[int, str]]:
    return {d["Target"]["Id"]: (d["Target"]["Port"], d["TargetHealth"]["State"])
            for d in elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}


def test_alb_registers_on_add_without_standby(aws: str, tmp_path: Path) -> None:
    elbv2, live, _ = _alb(aws)
    a, b, c = (i["InstanceId"] for i in run_instances(aws, 3))
    r = make_router(aws, tmp_path)
    r.add(live, a, "10.0.0.1:9000")
    r.add(live, b, "10.0.0.2")
    assert targets(elbv2, live) == {a: (9000, "healthy"), b: (8080, "healthy")}
    assert {x.name: (x.weight, x.healthy) for x in r.backends(live)} == {a: (1, True),
                                                                         b: (1, True)}
    elbv2.register_targets(TargetGroupArn=live, Targets=[{"Id": c}])  # not imm's
    assert {x.name: x.weight for x in r.backends(live)}[c] == 1
    r.set_weights(live, {a: 50, b: 0, c: 0})
    assert set(targets(elbv2, live)) == {a}
    r.drain(live, a)
    assert targets(elbv2, live) == {}
    assert {x.name: x.state for x in r.backends(live)} == {a: "drain", b: "ready"}
    r.remove(live, a)
    r.remove(live, b)
    assert r.backends(live) == []
    with pytest.raises(NotFound, match="target group .* does not exist"):
        r.backends(live + "x")
    with pytest.raises(NotFound, match="add it first"):
        r.set_weights(live, {"i-00000000000000000": 1})


def test_alb_standby_target_group_gives_weight_zero(aws: str, tmp_path: Path) -> None:
    elbv2, live, standby = _alb(aws)
    a, b = (i["InstanceId"] for i in run_instances(aws, 2))
    r = make_router(aws, tmp_path)
    r.ensure_route(live, {"standby_target_group": standby})
    r.add(live, a, "10.0.0.1")
    r.add(live, b, "10.0.0.2")
    assert targets(elbv2, live) == {}  # no traffic yet
    assert set(targets(elbv2, standby)) == {a, b}  # ... but health-checked
    assert {x.name: (x.weight, x.state, x.healthy) for x in r.backends(live)} == {
        a: (0, "ready", True), b: (0, "ready", True)}

    r.set_weights(live, {a: 100})
    assert set(targets(elbv2, live)) == {a} and set(targets(elbv2, standby)) == {b}
    assert {x.name: x.weight for x in r.backends(live)} == {a: 100, b: 0}
    r.set_weights(live, {a: 0, b: 100})  # switch: b in before a goes back to standby
    assert set(targets(elbv2, live)) == {b} and set(targets(elbv2, standby)) == {a}

    r.remove(live, a)
    assert set(targets(elbv2, standby)) == set()
    r.drain(live, b)
    assert targets(elbv2, live) == {} and targets(elbv2, standby) == {}
    # the state survives a new router object (a daemon restart)
    r2 = make_router(aws, tmp_path, standby_target_group=standby)
    assert [(x.name, x.state, x.weight) for x in r2.backends(live)] == [(b, "drain", 0)]


def test_remove_waits_for_draining(aws: str, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    # ALB: moto keeps a terminated instance's target "draining"; remove() waits for it up to
    # drain_timeout_s from the drain, then forgets it with a warning.
    elbv2, live, _ = _alb(aws)
    a, b = (i["InstanceId"] for i in run_instances(aws, 2))
    r = make_router(aws, tmp_path, drain_timeout_s=0.6)
    r.add(live, a, "10.0.0.1")
    r.add(live, b, "10.0.0.2")
    caplog.set_level(logging.WARNING)
    r.drain(live, a)
    r.remove(live, a)  # deregistered and not draining (moto): no wait, no warning
    assert "still draining" not in caplog.text
    client(aws, "ec2").terminate_instances(InstanceIds=[b])
    assert targets(elbv2, live) == {}
    started = time.monotonic()
    r.remove(live, b)
    assert time.monotonic() - started >= 0.5  # waited for the draining target first
    assert "still draining" in caplog.text
    assert r.backends(live) == []

    # classic ELB with connection draining on: remove() waits out min(its timeout, ours).
    elb = client(aws, "elb")
    elb.create_load_balancer(LoadBalancerName="drainer", AvailabilityZones=["us-east-1a"],
                             Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80,
                                         "InstancePort": 8080}])
    elb.modify_load_balancer_attributes(LoadBalancerName="drainer", LoadBalancerAttributes={
        "ConnectionDraining": {"Enabled": True, "Timeout": 1}})
    (c,) = (i["InstanceId"] for i in run_instances(aws, 1))
    e = make_router(aws, tmp_path / "elb", driver="elb")
    e.ensure_route("drainer", {"drain_timeout_s": 0.4})
    e.add("drainer", c, "10.0.0.3")
    started = time.monotonic()
    e.drain("drainer", c)
    e.remove("drainer", c)
    assert time.monotonic() - started >= 0.35  # waited out the connection draining
    assert e.backends("drainer") == []


def test_router_errors_name_the_router_and_hide_credentials(
        aws: str, proxy_factory: Any, tmp_path: Path) -> None:
    elbv2, live, _ = _alb(aws)
    proxy = proxy_factory(lambda action, n: ("status", (503, f"down {SECRET}", {
        "Content-Type": "text/plain"})) if action == "DescribeTargetHealth" else None)
    r = make_router(proxy.url, tmp_path, retries=1)
    with pytest.raises(RouterError) as info:
        r.backends(live)
    msg = info.value.message
    assert "AWS router lb-test, region us-east-1: DescribeTargetHealth" in msg
    assert "after 2 attempts" in msg and SECRET not in msg
    with pytest.raises(ConfigError, match="driver"):
        make_router(aws, tmp_path, driver="nlb")
    with pytest.raises(ConfigError, match="standby_target_group needs"):
        make_router(aws, tmp_path, driver="elb", standby_target_group=live)
