"""The openstack provider: libcloud's real ``OpenStack_2_NodeDriver`` over real HTTP against a
stateful fake of keystone v3 / nova / glance / neutron (tests/fakes/openstack.py, seeded from the
responses libcloud recorded from real OpenStack), and a rollout through a real immd.

The fake is seeded and checked with plain urllib (``Nova`` below) and by reading its state, code
the provider does not use.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imm.errors import BadRequest, ConfigError, ProviderError, Unsupported
from imm.plugins import cloud
from imm.plugins.base import Feature, LaunchRequest, PluginContext
from imm.plugins.providers import openstack as osmod
from imm.plugins.providers.openstack import TAG_TOKEN, OpenStackProvider
from imm.plugins.registry import ProviderRegistry

from conftest import Immd
from fakes.openstack import FakeOpenStack

LOG = logging.getLogger("test_openstack")
REGION, OTHER = "RegionOne", "RegionTwo"
DIGEST = "sha256:" + "5e" * 32
FAST = {"timeout_s": 5, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "poll_interval_s": 0.02}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenStack]:
    f = FakeOpenStack().start()
    monkeypatch.setenv("OS_PASSWORD", f.password)
    monkeypatch.delenv("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", raising=False)
    yield f
    f.stop()


def make_provider(fake: FakeOpenStack, tmp_path: Path, catalog: bool = False,
                  **settings: Any) -> OpenStackProvider:
    base: dict[str, Any] = {
        "kind": "openstack", "auth_url": fake.url + "/v3", "username": fake.username,
        "project": fake.project, "regions": [REGION], "flavor": "512 slice",
        "network": "net1", **FAST}
    if not catalog:
        base.update(compute_url=fake.compute_url(), image_url=fake.image_url(),
                    network_url=fake.network_url())
    base.update(settings)
    return OpenStackProvider("os-test", base, PluginContext(tmp_path, LOG))


def imm_tags(rollout: str = "r-1", slot: str = "b0") -> dict[str, str]:
    return {"imm:service": "web", "imm:rollout": rollout, "imm:slot": slot, "imm:digest": DIGEST}


class Nova:
    """Plain HTTP to the fake's nova (a token from keystone first), independent of libcloud."""

    def __init__(self, fake: FakeOpenStack, region: str | None = None) -> None:
        self.base = fake.compute_url(region)
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": fake.username, "domain": {"name": "Default"}, "password": fake.password}}},
            "scope": {"project": {"name": fake.project, "domain": {"id": "default"}}}}}
        req = urllib.request.Request(fake.url + "/v3/auth/tokens", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            self.token = resp.headers["X-Subject-Token"]

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data, {
            "X-Auth-Token": self.token, "Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def boot(self, name: str, image: str, metadata: dict[str, str] | None = None,
             network: str = "net1") -> str:
        net = {"net1": "d32019d3-bc6e-4319-9c1d-6722fc136a22",
               "net2": "db193ab3-96e3-4cb3-8fc5-05f4296d0324"}[network]
        status, body = self("POST", "/servers", {"server": {
            "name": name, "imageRef": image, "flavorRef": "2", "metadata": metadata or {},
            "networks": [{"uuid": net}]}})
        assert status == 202, body
        return str(body["server"]["id"])


def web_servers(fake: FakeOpenStack, region: str | None = None) -> list[dict[str, Any]]:
    return [s for s in fake.servers(region) if s["metadata"].get("imm:service") == "web"]


# --------------------------------------------------------------------------- basics


def test_registers_as_plugin(tmp_path: Path) -> None:
    registry = ProviderRegistry()
    osmod.imm_register_providers(registry)
    assert registry.get("openstack") is OpenStackProvider
    p = OpenStackProvider("x", {"auth_url": "https://keystone:5000/v3", "username": "u",
                                "project": "p"}, PluginContext(tmp_path, LOG))
    assert p.features == {Feature.CLIENT_TOKEN}
    assert p.auth_url == "https://keystone:5000" and p.regions == [REGION]


def test_settings_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = PluginContext(tmp_path, LOG)
    ok = {"auth_url": "http://127.0.0.1:5000", "username": "u", "project": "p"}
    with pytest.raises(ConfigError, match="auth_url"):
        OpenStackProvider("x", {"username": "u", "project": "p"}, ctx)
    with pytest.raises(ConfigError, match="set project"):
        OpenStackProvider("x", {"auth_url": "http://k:5000", "username": "u"}, ctx)
    with pytest.raises(ConfigError, match="http"):
        OpenStackProvider("x", {**ok, "auth_url": "keystone:5000"}, ctx)
    with pytest.raises(ConfigError, match="set all three or none"):
        OpenStackProvider("x", {**ok, "compute_url": "http://n:8774/v2/p"}, ctx)
    with pytest.raises(ConfigError, match="do not belong in the config"):
        OpenStackProvider("x", {**ok, "password": "hunter22"}, ctx)
    with pytest.raises(ConfigError, match="password_env or password_file"):
        OpenStackProvider("x", {**ok, "password_env": "A", "password_file": "/x"}, ctx)
    with pytest.raises(ConfigError, match="names regions"):
        OpenStackProvider("x", {**ok, "flavor": {"RegionNine": "m1.small"}}, ctx)
    with pytest.raises(ConfigError, match="page_size"):
        OpenStackProvider("x", {**ok, "page_size": 0}, ctx)
    caplog.set_level(logging.WARNING)
    p = OpenStackProvider("x", {**ok, "regions": [REGION, OTHER], "flavr": "typo",
                                "network": {OTHER: ["a", "b"]}}, ctx)
    assert "ignoring unknown settings flavr" in caplog.text
    assert p.networks == {OTHER: ["a", "b"]}


# --------------------------------------------------------------------------- listing


def test_list_pages_reads_metadata_image_and_address(fake: FakeOpenStack, tmp_path: Path) -> None:
    nova = Nova(fake)
    image = fake.add_image("web-1")
    web = [nova.boot(f"web-{i}", image, imm_tags()) for i in range(5)]
    other = nova.boot("db-0", image, {**imm_tags(), "imm:service": "db"}, network="net2")
    pet = next(s["id"] for s in fake.servers() if s["name"] == "lc-test")  # recorded server
    foreign = next(s["id"] for s in fake.servers(all_tenants=True) if s["name"] == "lc-test-2")

    p = make_provider(fake, tmp_path, page_size=3)
    fake.calls.clear()
    everything = {i.id: i for i in p.list_instances()}
    assert set(everything) == {*web, other, pet}  # not the other project's server
    assert foreign not in everything
    assert fake.calls["nova.servers.list"] == 3  # 7 servers, 3 per page
    for sid in web:
        inst = everything[sid]
        assert inst.tags == imm_tags()  # the full digest, from metadata
        assert inst.image_id == image and inst.region == REGION and inst.provider == "os-test"
        assert inst.state == "running" and inst.extra["flavor_id"] == "2"
        assert inst.address is not None and inst.address.startswith("10.1.")
        assert abs(inst.launched_at - time.time()) < 60
    assert str(everything[other].address).startswith("10.2.")  # on net2
    assert everything[pet].image_id == "7" and everything[pet].tags == {}
    assert everything[pet].launched_at == 1318293902  # 2011-10-11T00:45:02Z, as recorded

    assert {i.id for i in p.list_instances({"imm:service": "web"})} == set(web)
    assert not list(p.list_instances({"imm:service": "web", "imm:rollout": "other"}))
    nova("POST", f"/servers/{web[0]}/action", {"os-stop": None})
    states = {i.id: i.state for i in p.list_instances({"imm:service": "web"})}
    assert states[web[0]] == "stopped" and states[web[1]] == "running"

    # nova caps pages below what was asked (max_limit): the next links are followed all the same
    fake.max_limit = 2
    fake.calls.clear()
    assert len(list(p.list_instances())) == 7
    assert fake.calls["nova.servers.list"] == 4  # 2+2+2+1


# --------------------------------------------------------------------------- launch


def test_launch_carries_the_digest_and_is_idempotent(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1")
    p = make_provider(fake, tmp_path, network=["net2"], security_groups=["web"],
                      key_name="ops", availability_zone="az-1")
    req = LaunchRequest(REGION, image, 3, imm_tags(), "r-1-b0-os-test-RegionOne")
    first = p.launch(req)
    assert len(first) == 3 and {i.state for i in first} == {"running"}
    assert all(i.tags["imm:digest"] == DIGEST and i.image_id == image for i in first)
    servers = web_servers(fake)
    assert sorted(s["id"] for s in servers) == sorted(i.id for i in first)
    key = osmod.token_key(req.client_token)
    assert sorted(s["name"] for s in servers) == [f"web-b0-{key}-{n}" for n in range(3)]
    for s in servers:
        assert s["metadata"] == {**imm_tags(), TAG_TOKEN: req.client_token}
        assert s["image"]["id"] == image and s["flavor"]["id"] == "2"  # "512 slice" -> 2
        assert list(s["addresses"]) == ["net2"]
        assert s["key_name"] == "ops" and s["OS-EXT-AZ:availability_zone"] == "az-1"
        assert s["security_groups"] == [{"name": "web"}]

    creates = fake.calls["nova.servers.create"]
    again = p.launch(req)  # a retried launch: the same servers, nothing new
    assert [i.id for i in again] == [i.id for i in first]
    fresh = make_provider(fake, tmp_path, network=["net2"])  # after an immd restart too
    assert [i.id for i in fresh.launch(req)] == [i.id for i in first]
    assert fake.calls["nova.servers.create"] == creates == 3

    # one of them vanished (deleted by hand): the retried launch adds just that one back
    Nova(fake)("DELETE", f"/servers/{first[1].id}")
    third = p.launch(req)
    assert len(third) == 3 and fake.calls["nova.servers.create"] == 4
    assert {i.id for i in third} > {first[0].id, first[2].id}
    assert sorted(s["name"] for s in web_servers(fake)) == [f"web-b0-{key}-{n}" for n in range(3)]

    # another batch, another token; a token too long for a metadata value is hashed
    long_token = "rollout-" + "x" * 300
    other = p.launch(LaunchRequest(REGION, image, 1, imm_tags(slot="b1"), long_token))
    assert other[0].tags[TAG_TOKEN] == osmod.effective_token(long_token)
    assert len(other[0].tags[TAG_TOKEN]) <= 255 and len(web_servers(fake)) == 4


def test_launch_errors(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1")
    p = make_provider(fake, tmp_path)
    with pytest.raises(BadRequest, match=r"no flavor 'm1.huge'.*512 slice"):
        p.launch(LaunchRequest(REGION, image, 1, imm_tags(), "t1", size="m1.huge"))
    with pytest.raises(BadRequest, match="no network nope"):
        p.launch(LaunchRequest(REGION, image, 1, imm_tags(), "t2", network="nope"))
    with pytest.raises(BadRequest, match="not configured"):
        p.launch(LaunchRequest("RegionNine", image, 1, imm_tags(), "t3"))
    with pytest.raises(BadRequest, match="imm/bad"):
        p.launch(LaunchRequest(REGION, image, 1, {**imm_tags(), "imm/bad": "x"}, "t4"))
    # nova refuses: the error names cloud, provider, region, call and what nova said
    with pytest.raises(ProviderError) as info:
        p.launch(LaunchRequest(REGION, "0b7ef2b4-0000-4000-8000-000000000000", 1, imm_tags(),
                               "t5"))
    msg = info.value.message
    assert msg.startswith("OpenStack provider os-test, region RegionOne: POST /servers failed "
                          "(HTTP 400)")
    assert "Image 0b7ef2b4-0000-4000-8000-000000000000 could not be found" in msg
    assert info.value.detail["kind"] == "client" and info.value.detail["attempts"] == 1
    no_net = make_provider(fake, tmp_path, network=[])
    with pytest.raises(ProviderError, match="Multiple possible networks found"):
        no_net.launch(LaunchRequest(REGION, image, 1, imm_tags(), "t6"))
    assert web_servers(fake) == []


def test_launch_survives_5xx_and_a_lost_reply(fake: FakeOpenStack, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    image = fake.add_image("web-1")
    p = make_provider(fake, tmp_path, timeout_s=0.8)
    fake.fail("nova.servers.create", 503, times=2)  # refused before nova acted
    fake.fail("nova.servers.create", hold_s=1.6)  # nova creates it, the answer comes too late
    caplog.set_level(logging.INFO)
    got = p.launch(LaunchRequest(REGION, image, 2, imm_tags(), "r-lost"))
    assert fake.calls["nova.servers.create"] == 4  # 503, 503, lost (created), second server
    assert sorted(s["id"] for s in web_servers(fake)) == sorted(i.id for i in got)
    assert len(got) == 2  # nothing created twice
    assert "POST /servers failed (server: 503" in caplog.text and "retry 1 of 5" in caplog.text
    assert "POST /servers failed (timeout: timed out" in caplog.text
    assert "POST /servers had taken effect before it failed" in caplog.text


def test_servers_in_error_are_replaced(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1")
    fake.build_s = 0.1
    p = make_provider(fake, tmp_path)
    fake.error_builds = 1
    req = LaunchRequest(REGION, image, 2, imm_tags(), "r-err")
    with pytest.raises(ProviderError) as info:
        p.launch(req)
    # the fault libcloud recorded: message "test message", details "No valid host was found."
    assert "went to ERROR: test message (No valid host was found.)" in info.value.message
    assert info.value.detail["kind"] == "build-failed"
    assert len(web_servers(fake)) == 1  # the broken one was deleted, its twin kept
    got = p.launch(req)  # the retry replaces only the broken one
    assert len(got) == 2 and {i.state for i in got} == {"running"}
    assert fake.calls["nova.servers.create"] == 3
    assert sorted(s["id"] for s in web_servers(fake)) == sorted(i.id for i in got)

    quick = make_provider(fake, tmp_path, wait_active_s=0)  # don't wait: BUILD is "pending"
    fresh = quick.launch(LaunchRequest(REGION, image, 1, imm_tags(), "r-nowait"))
    assert fresh[0].state == "pending"
    slow = make_provider(fake, tmp_path, wait_active_s=0.05)
    fake.build_s = 5
    with pytest.raises(ProviderError, match="still building after 0.05s"):
        slow.launch(LaunchRequest(REGION, image, 1, imm_tags(), "r-slow"))


# --------------------------------------------------------------------------- terminate


def test_terminate_is_idempotent_and_spares_pets(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1")
    fake.delete_s = 60  # nova lists a deleted server with task state "deleting" for a while
    p = make_provider(fake, tmp_path)
    a, b = p.launch(LaunchRequest(REGION, image, 2, imm_tags(), "r-t"))
    p.terminate([a.id, "5b8d6a9e-0000-4000-8000-000000000000"])
    listed = {i.id: i.state for i in p.list_instances()}
    assert listed[a.id] == "terminated" and listed[b.id] == "running"  # still deleting
    p.terminate([a.id])  # being deleted: nothing more to do
    assert fake.calls["nova.servers.delete"] == 1
    fake.settle()
    assert {s["id"] for s in web_servers(fake)} == {b.id}
    p.terminate([a.id])  # gone: fine
    assert not any(i.id == a.id for i in p.list_instances())

    pet = next(s["id"] for s in fake.servers() if s["name"] == "lc-test")
    with pytest.raises(BadRequest, match=f"refusing to terminate {pet}"):
        p.terminate([pet, b.id])
    assert {s["id"] for s in fake.servers()} == {pet, b.id}  # nothing was deleted
    make_provider(fake, tmp_path, terminate_untagged=True).terminate([pet, b.id])
    fake.settle()
    assert fake.servers() == []


# --------------------------------------------------------------------------- images


def test_describe_image_and_no_copy(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1", imm_digest=DIGEST, os_distro="debian")
    p = make_provider(fake, tmp_path)
    info = p.describe_image(REGION, image)
    assert info is not None
    assert (info.image_id, info.name, info.state, info.region) == (image, "web-1", "active",
                                                                   REGION)
    assert info.extra["properties"]["imm_digest"] == DIGEST
    assert info.extra["disk_format"] == "qcow2" and info.extra["os_hash_algo"] == "sha512"
    recorded = "f24a3c1b-d52a-4116-91da-25b3eee8f55c"  # from libcloud's recorded glance page 2
    described = p.describe_image(REGION, recorded)
    assert described is not None and described.name == "hypernode"
    assert p.describe_image(REGION, "0c2f1b1e-0000-4000-8000-000000000000") is None
    fake.fail("glance.images.get", 500, times=2)
    assert p.describe_image(REGION, image) is not None  # 5xx retried
    assert fake.calls["glance.images.get"] == 6  # 3 before, then 500, 500, 200
    with pytest.raises(Unsupported, match="no cross-region copy") as err:
        p.copy_image(REGION, image, OTHER)
    assert err.value.code == "unsupported" and err.value.status == 501


# --------------------------------------------------------------------------- auth and errors


def test_token_is_reused_and_renewed_when_refused(fake: FakeOpenStack, tmp_path: Path) -> None:
    image = fake.add_image("web-1")
    p = make_provider(fake, tmp_path)
    for _ in range(3):
        list(p.list_instances())
        p.describe_image(REGION, image)
    # one token per libcloud connection (compute, image), reused for every call
    assert fake.calls["keystone.auth"] == 2
    fake.revoke_tokens()  # keystone restarted with rotated keys: nova answers 401
    assert len(list(p.list_instances())) == 1
    assert fake.calls["keystone.auth"] == 3
    auth_bodies = [b for m, path, h, b in fake.requests if path.endswith("/v3/auth/tokens")]
    others = [(path, h, b) for m, path, h, b in fake.requests
              if not path.endswith("/v3/auth/tokens")]
    assert all(fake.password.encode() in b for b in auth_bodies)
    assert not any(fake.password in json.dumps(h) or fake.password.encode() in b
                   for _path, h, b in others)  # the password only ever goes to keystone


def test_password_never_in_errors_or_logs(fake: FakeOpenStack, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    image = fake.add_image("web-1")
    p = make_provider(fake, tmp_path, retries=1)
    # keystone fails and echoes what it was sent, the password included
    fake.fail("keystone.auth", 500, echo=True, times=2)
    with pytest.raises(ProviderError) as info:
        list(p.list_instances())
    err = info.value
    assert err.detail["kind"] == "server" and err.detail["attempts"] == 2
    assert "keystone" in err.message and cloud.REDACTED in err.message
    # nova echoes too: the request's headers, X-Auth-Token (a bearer secret) included
    fake.fail("nova.servers.create", 400, echo=True)
    with pytest.raises(ProviderError) as info2:
        p.launch(LaunchRequest(REGION, image, 1, imm_tags(), "t-echo"))
    assert info2.value.detail["call"] == "POST /servers"
    assert "x-auth-token" in info2.value.message and cloud.REDACTED in info2.value.message
    tokens = list(fake.tokens)
    assert tokens
    # a wrong password: refused, not retried, the message says what to check
    monkeypatch.setenv("OS_PASSWORD", "wrong-" + fake.password)
    bad = make_provider(fake, tmp_path)
    with pytest.raises(ProviderError) as info3:
        bad.describe_image(REGION, image)
    msg = info3.value.message
    assert info3.value.detail["kind"] == "auth" and info3.value.detail["attempts"] == 1
    assert f"refused the password of user {fake.username}" in msg
    assert "check the password in $OS_PASSWORD and username 'imm'" in msg
    for e in (err, info2.value, info3.value):
        blob = e.message + json.dumps(e.detail) + repr(e)
        assert fake.password not in blob, blob
        assert not any(t in blob for t in tokens), blob
    assert fake.password not in caplog.text
    assert not any(t in caplog.text for t in tokens)
    assert fake.password not in repr(p.__dict__) and fake.password not in repr(bad.__dict__)

    monkeypatch.delenv("OS_PASSWORD")
    with pytest.raises(ConfigError, match=r"\$OS_PASSWORD"):
        make_provider(fake, tmp_path).describe_image(REGION, image)
    secret = tmp_path / "pw"
    secret.write_text(fake.password + "\n")
    secret.chmod(0o600)
    assert make_provider(fake, tmp_path, password_file=str(secret)).describe_image(
        REGION, image) is not None


def test_errors_name_cloud_region_and_call(fake: FakeOpenStack, tmp_path: Path) -> None:
    p = make_provider(fake, tmp_path, retries=2)
    fake.fail("nova.servers.list", 503, times=10)
    with pytest.raises(ProviderError) as info:
        list(p.list_instances())
    msg = info.value.message
    assert msg.startswith("OpenStack provider os-test, region RegionOne: GET /servers/detail "
                          "failed after 3 attempts")
    assert "HTTP 503" in msg and "5xx" in msg
    assert info.value.detail == {
        "cloud": "OpenStack", "provider": "os-test", "region": "RegionOne",
        "call": "GET /servers/detail", "attempts": 3, "kind": "server", "http_status": 503,
        "cloud_code": None}
    fake.faults.clear()
    fake.fail("nova.servers.list", 429, headers={"Retry-After": "0"})
    assert len(list(p.list_instances())) == 1  # throttling is retried
    p.terminate([])  # nothing to do, no call

    # keystone and the catalog are named when they are what failed
    lost = make_provider(fake, tmp_path, catalog=True, regions=["RegionNine"])
    with pytest.raises(ProviderError) as info3:
        list(lost.list_instances())
    assert "has no public compute (nova) endpoint for region RegionNine (the catalog's " \
           "regions: RegionOne)" in info3.value.message
    assert info3.value.detail["kind"] == "catalog"
    wrong = make_provider(fake, tmp_path, auth_url=fake.url + "/identity/v3")
    with pytest.raises(ProviderError) as info4:
        wrong.describe_image(REGION, "x")
    assert f"keystone {fake.url}/identity/v3/auth/tokens answered 404" in info4.value.message

    dead = make_provider(fake, tmp_path, retries=1, auth_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError) as info2:
        dead.describe_image(REGION, "x")
    assert info2.value.detail["kind"] == "network"
    assert "cannot talk to" in info2.value.message


# --------------------------------------------------------------------------- catalog, regions


def test_catalog_endpoints_and_two_regions(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    with FakeOpenStack(regions=(REGION, OTHER)) as fake:
        monkeypatch.setenv("OS_PASSWORD", fake.password)
        images = {r: fake.add_image(f"web-1-{r}", region=r) for r in (REGION, OTHER)}
        p = make_provider(fake, tmp_path, catalog=True, regions=[REGION, OTHER],
                          network={REGION: "net1", OTHER: "net2"})
        one = p.launch(LaunchRequest(REGION, images[REGION], 1, imm_tags(), "t-1"))
        two = p.launch(LaunchRequest(OTHER, images[OTHER], 2, imm_tags(), "t-2"))
        assert [s["id"] for s in web_servers(fake, REGION)] == [one[0].id]
        assert sorted(s["id"] for s in web_servers(fake, OTHER)) == sorted(i.id for i in two)
        assert all(list(s["addresses"]) == ["net2"] for s in web_servers(fake, OTHER))
        listed = {i.id: i.region for i in p.list_instances({"imm:service": "web"})}
        assert listed == {one[0].id: REGION, two[0].id: OTHER, two[1].id: OTHER}
        assert p.describe_image(OTHER, images[OTHER]) is not None
        assert p.describe_image(OTHER, images[REGION]) is None  # glance is per region
        p.terminate([two[0].id, one[0].id])
        assert {s["id"] for s in web_servers(fake, REGION) + web_servers(fake, OTHER)} == {
            two[1].id}


# --------------------------------------------------------------------------- through immd


def plugin_env(tmp_path: Path) -> dict[str, str]:
    """The ``openstack`` entry point comes from pyproject once the package is reinstalled;
    until then a throw-away distribution on PYTHONPATH provides it."""
    if importlib.metadata.entry_points(group="imm", name="openstack"):
        return {}
    site = tmp_path / "site"
    info = site / "immopenstack-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: immopenstack\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[imm]\nopenstack = imm.plugins.providers.openstack\n")
    return {"PYTHONPATH": str(site)}


def test_rollout_through_immd(fake: FakeOpenStack, tmp_path: Path) -> None:
    glance = {v: fake.add_image(f"web-{v}", disk_format="raw") for v in ("1", "2")}
    fake.build_s = 0.2
    settings = {
        "kind": "openstack", "auth_url": fake.url + "/v3", "username": fake.username,
        "project": fake.project, "password_env": "IMM_TEST_OS_PASSWORD",
        "regions": [REGION], "compute_url": fake.compute_url(), "image_url": fake.image_url(),
        "network_url": fake.network_url(), "flavor": "512 slice", "network": ["net1"],
        "page_size": 2, **FAST}
    config = "[providers.openstack]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in settings.items()) + (
        "\n[services.web]\n"
        'targets = [{ provider = "openstack", region = "RegionOne", count = 2 }]\n'
        'strategy = "blue-green"\n')
    d = Immd(tmp_path, config).start(extra_env={
        **plugin_env(tmp_path), "IMM_TEST_OS_PASSWORD": fake.password})
    digests = {}
    for v in ("1", "2"):
        disk = tmp_path / f"web-{v}.raw"
        disk.write_bytes(f"web disk image, version {v}\n".encode() * 64)
        digests[v] = d.json("image", "add", str(disk), "--name", "web", "--version", v)["digest"]
        d.run("image", "artifact", "add", f"web@{v}", "--provider", "openstack", "--region",
              REGION, "--image-id", glance[v])

    rollouts = {}
    for v in ("1", "2"):
        r = d.json("rollout", "start", "web", "--image", f"web@{v}", "--wait")
        assert r["state"] == "completed", r
        rollouts[v] = r["id"]
        live = web_servers(fake)
        assert len(live) == 2, [(s["name"], s["metadata"]) for s in live]
        for s in live:
            assert s["image"]["id"] == glance[v] and s["status"] == "ACTIVE"
            assert s["metadata"]["imm:digest"] == digests[v]  # the full digest
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", s["metadata"]["imm:digest"])
            assert s["metadata"]["imm:rollout"] == r["id"]
    listed = [i for i in d.json("instance", "list") if i["provider"] == "openstack"]
    assert sorted(i["id"] for i in listed if i["tags"].get("imm:service") == "web") == sorted(
        s["id"] for s in web_servers(fake))
    assert any(s["name"] == "lc-test" for s in fake.servers())  # the pet was left alone
    log = d.log.read_text()
    assert "Traceback" not in log and fake.password not in log
    d.stop()
