"""The azure provider: libcloud's real Azure ARM driver over real HTTP against a stateful fake of
the ARM compute API (tests/fakes/azure.py, seeded from libcloud's recorded responses), directly
and through a real immd driven by immctl.

The fake is also inspected directly (its state, the calls it got) to check what the provider did
on the wire; failures are injected with ``FakeAzure.fail``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imm.errors import BadRequest, ConfigError, ProviderError, Unsupported
from imm.plugins.base import Feature, LaunchRequest, PluginContext
from imm.plugins.cloud import REDACTED
from imm.plugins.providers import azure as azmod
from imm.plugins.providers.azure import TAG_TOKEN, AzureProvider
from imm.plugins.registry import ProviderRegistry

from conftest import Immd


def _fakes() -> Any:
    try:
        return importlib.import_module("tests.fakes.azure")
    except ModuleNotFoundError:  # tests/ itself is on sys.path (pytest's rootdir-less mode)
        return importlib.import_module("fakes.azure")


fakes = _fakes()
DRIVER = fakes.register()
SUB, TENANT = fakes.SUBSCRIPTION, fakes.TENANT
RG = "imm-web"
LOC = "eastus"
URN = "OpenLogic:CentOS:7.3:latest"
DIGEST = "sha256:" + "5e" * 32
LOG = logging.getLogger("test_azure")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    f = fakes.FakeAzure(provision_s=0.05, delete_s=0.05).start()
    f.add_network(RG, "imm-vnet", LOC)
    monkeypatch.setenv("AZURE_CLIENT_ID", fakes.CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", fakes.CLIENT_SECRET)
    monkeypatch.delenv("LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS", raising=False)
    yield f
    f.stop()


def settings(fake: Any, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subscription_id": SUB, "tenant_id": TENANT, "resource_group": RG, "locations": [LOC],
        "size": "Standard_A1", "network": "imm-vnet", "libcloud_driver": DRIVER,
        "cloud_environment": fake.environment(), "delete_poll_s": 0.02, "timeout_s": 5,
        "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    base.update(extra)
    return base


def make(fake: Any, tmp_path: Path, **extra: Any) -> AzureProvider:
    return AzureProvider("az-test", settings(fake, **extra), PluginContext(tmp_path, LOG))


def imm_tags(rollout: str = "r-1", slot: str = "b1") -> dict[str, str]:
    return {"imm:service": "web", "imm:rollout": rollout, "imm:slot": slot, "imm:digest": DIGEST}


def request(image: str = URN, count: int = 2, token: str = "r-1-b1-az-test-eastus",
            **kw: Any) -> LaunchRequest:
    return LaunchRequest(region=LOC, image_id=image, count=count, tags=imm_tags(),
                         client_token=token, **kw)


# --------------------------------------------------------------------------- listing


def test_lists_the_recorded_vms_page_by_page(fake: Any, tmp_path: Path) -> None:
    fake.page_size = 1
    p = make(fake, tmp_path, list_scope="subscription")
    found = {i.extra["name"]: i for i in p.list_instances()}
    assert set(found) == {"test-node-1", "test-node-2"}  # from the recorded VM lists
    one = found["test-node-1"]
    assert one.region == LOC and one.image_id == URN and one.state == "running"
    assert one.address == "10.0.0.1"  # from the recorded NIC
    assert one.extra["resource_group"] == "000000" and one.tags == {}
    assert one.id.endswith("/resourceGroups/000000/providers/Microsoft.Compute/virtualMachines/"
                           "test-node-1")
    # the second page was fetched through the first one's nextLink
    assert any("virtualMachines" in path for m, path in fake.calls if m == "GET")
    assert fake.count("GET", r"/providers/Microsoft\.Compute/virtualMachines$") == 2
    # resource-group scope (the default) sees only the provider's resource group
    assert list(make(fake, tmp_path).list_instances()) == []
    # a location that is not configured is left out
    assert list(make(fake, tmp_path, list_scope="subscription",
                     locations=["westus"]).list_instances()) == []


def test_list_survives_throttling_and_a_slow_answer(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path, list_scope="subscription", timeout_s=0.3)
    fake.fail("GET", r"Compute/virtualMachines$", status=429, code="TooManyRequests",
              message="Too many requests", headers={"Retry-After": "0"})
    fake.fail("GET", r"Network/networkInterfaces$", status=200, apply=True, delay_s=0.6)
    assert len(list(p.list_instances())) == 2
    assert fake.count("GET", r"Compute/virtualMachines$") == 2
    # three recorded NICs on two pages; the first page timed out once
    assert fake.count("GET", r"Network/networkInterfaces$") == 3


# --------------------------------------------------------------------------- launch


def test_launch_tags_and_idempotent_relaunch(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    first = p.launch(request())
    assert len(first) == 2 and all(i.state == "pending" for i in first)
    assert {i.image_id for i in first} == {URN}
    assert [i.address for i in first] == ["10.0.0.4", "10.0.0.5"]
    vms = fake.vms(RG)
    assert sorted(v["id"] for v in vms) == sorted(i.id for i in first)
    for vm in vms:  # tags map 1:1 to ARM tags, the full digest included
        assert vm["tags"] == {**imm_tags(), TAG_TOKEN: "r-1-b1-az-test-eastus"}
        assert vm["tags"]["imm:digest"] == DIGEST and len(DIGEST) == 71
        ref = vm["properties"]["storageProfile"]["imageReference"]
        assert (ref["publisher"], ref["offer"], ref["sku"]) == ("OpenLogic", "CentOS", "7.3")
        assert vm["properties"]["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
        assert "adminPassword" not in vm["properties"]["osProfile"]
    assert fake.count("PUT", r"/virtualMachines/") == 2
    # the same client token again: the same VMs, nothing created
    again = p.launch(request())
    assert [i.id for i in again] == [i.id for i in first]
    assert fake.count("PUT", r"/virtualMachines/") == 2
    assert len(fake.vms(RG)) == 2
    time.sleep(0.1)  # provisioning ends
    listed = list(p.list_instances({"imm:service": "web", "imm:rollout": "r-1"}))
    assert sorted(i.id for i in listed) == sorted(i.id for i in first)
    assert {i.state for i in listed} == {"running"}
    assert {i.tags["imm:digest"] for i in listed} == {DIGEST}
    assert list(p.list_instances({"imm:rollout": "other"})) == []
    # a fresh provider (an immd restart) finds them again by name
    assert [i.id for i in make(fake, tmp_path).launch(request())] == [i.id for i in first]
    assert fake.count("PUT", r"/virtualMachines/") == 2


def test_launch_after_a_lost_answer_does_not_double_up(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path, public_ip=True)
    # the first VM PUT is carried out but its answer is lost; the NIC PUT fails once (retried)
    fake.fail("PUT", r"/virtualMachines/", status=500, apply=True)
    fake.fail("PUT", r"/networkInterfaces/", status=503, code="ServiceUnavailable")
    got = p.launch(request(count=1, token="lost"))
    assert len(got) == 1 and len(fake.vms(RG)) == 1
    assert fake.count("PUT", r"/virtualMachines/") == 1
    assert got[0].extra["public_ip"].startswith("20.42.")
    pips = fake.of_type(fakes.PIP, RG)
    assert len(pips) == 1 and pips[0]["sku"]["name"] == "Standard"
    assert pips[0]["properties"]["publicIPAllocationMethod"] == "Static"
    assert pips[0]["tags"]["imm:service"] == "web"


def test_relaunch_with_another_image_is_refused(fake: Any, tmp_path: Path) -> None:
    image = fake.add_managed_image("imm-images", "web-2", LOC)
    p = make(fake, tmp_path)
    p.launch(request(count=1))
    with pytest.raises(ProviderError) as e:
        p.launch(request(image=image.lstrip("/"), count=1))
    assert e.value.code == "idempotent-mismatch" and "web-2" in e.value.message


def test_launch_from_a_managed_image(fake: Any, tmp_path: Path) -> None:
    image = fake.add_managed_image("imm-images", "web-1", LOC).lstrip("/")
    p = make(fake, tmp_path)
    got = p.launch(request(image=image, count=1, token="managed", size="Standard_A2"))
    assert got[0].image_id == image  # reported the way the catalog stores it
    vm = fake.vms(RG)[0]
    assert vm["properties"]["storageProfile"]["imageReference"] == {"id": "/" + image}
    assert vm["properties"]["hardwareProfile"]["vmSize"] == "Standard_A2"
    # the leading slash is accepted too
    assert p.launch(request(image="/" + image, count=1, token="managed"))[0].id == got[0].id


# --------------------------------------------------------------------------- terminate


def test_terminate(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path, public_ip=True)
    got = p.launch(request())
    time.sleep(0.06)
    p.terminate([got[0].id, got[1].extra["name"]])  # a resource id, or a name in the group
    assert fake.vms(RG) == []
    # NICs, public IPs and OS disks went with them; the network stays
    assert fake.of_type(fakes.NIC, RG) == [] and fake.of_type(fakes.PIP, RG) == []
    assert fake.of_type(fakes.DISK, RG) == []
    assert len(fake.of_type(fakes.VNET, RG)) == 1
    # every VM DELETE was sent before the first VM was waited for and cleaned up after
    vm_deletes = [n for n, (m, path) in enumerate(fake.calls)
                  if m == "DELETE" and "/virtualMachines/" in path]
    nic_deletes = [n for n, (m, path) in enumerate(fake.calls)
                   if m == "DELETE" and "/networkInterfaces/" in path]
    assert len(nic_deletes) == 2 and vm_deletes[1] < nic_deletes[0]
    p.terminate([i.id for i in got])  # gone already: not an error
    # a VM imm did not launch is refused by default
    pet = fake.vms("000000")[0]["id"]
    with pytest.raises(BadRequest, match="imm:service"):
        p.terminate([pet])
    assert fake.exists(pet)


def test_terminate_404_when_the_group_is_gone_is_gone(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path)
    p.terminate([f"/subscriptions/{SUB}/resourceGroups/nowhere/providers/Microsoft.Compute/"
                 f"virtualMachines/x"])


# --------------------------------------------------------------------------- images


def test_describe_image(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path, locations=["eastus", "westus"])
    latest = p.describe_image(LOC, URN)
    assert latest is not None and latest.extra["version"] == "7.3.20180215"
    assert latest.extra["os_type"] == "Linux"
    pinned = p.describe_image(LOC, "OpenLogic:CentOS:7.3:7.3.20170925")
    assert pinned is not None and pinned.extra["version"] == "7.3.20170925"
    assert p.describe_image(LOC, "OpenLogic:CentOS:7.3:1.0.0") is None
    assert p.describe_image(LOC, "Canonical:UbuntuServer:18.04-LTS:latest") is None
    assert p.describe_image("westus", URN) is None  # published only in eastus here
    image = fake.add_managed_image("imm-images", "web-1", LOC, tags={"imm:digest": DIGEST})
    info = p.describe_image(LOC, image.lstrip("/"))
    assert info is not None and info.name == "web-1" and info.state == "available"
    assert info.extra["tags"] == {"imm:digest": DIGEST} and info.extra["os_type"] == "Linux"
    assert p.describe_image("westus", image) is None  # managed images belong to one location
    assert p.describe_image(LOC, image[:-1] + "9") is None
    with pytest.raises(BadRequest, match="publisher:offer:sku:version"):
        p.describe_image(LOC, "ami-0abc")
    with pytest.raises(Unsupported, match="Compute Gallery"):
        p.copy_image(LOC, image, "westus")
    assert not p.supports(Feature.COPY_IMAGE) and p.supports(Feature.CLIENT_TOKEN)


# --------------------------------------------------------------------------- errors


def test_credentials_never_in_errors(fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng~Secret.Value-9zQx"
    monkeypatch.setenv("AZURE_CLIENT_SECRET", wrong)
    with pytest.raises(ProviderError) as e:
        list(make(fake, tmp_path).list_instances())
    text = e.value.message + json.dumps(e.value.detail)
    assert "AADSTS7000215" in text and "Azure AD token" in text
    assert e.value.detail["kind"] == "auth" and "$AZURE_CLIENT_SECRET" in text
    assert wrong not in text and fakes.CLIENT_ID not in text and REDACTED in text
    # an answer echoing the secret and the bearer token is scrubbed too
    monkeypatch.setenv("AZURE_CLIENT_SECRET", fakes.CLIENT_SECRET)
    p = make(fake, tmp_path, retries=1)
    fake.fail("GET", r"virtualMachines$", status=400, code="BadRequest", times=1,
              message=f"bad request from {fakes.CLIENT_ID} with secret {fakes.CLIENT_SECRET} "
                      f"and header Authorization: Bearer {'x' * 40}")
    with pytest.raises(ProviderError) as e:
        list(p.list_instances())
    text = e.value.message + json.dumps(e.value.detail)
    assert fakes.CLIENT_SECRET not in text and fakes.CLIENT_ID not in text
    assert "x" * 40 not in text and text.count(REDACTED) >= 3
    assert wrong not in caplog.text and fakes.CLIENT_SECRET not in caplog.text
    assert fakes.CLIENT_SECRET not in repr(p._load_credentials())


def test_errors_name_cloud_location_and_call(fake: Any, tmp_path: Path) -> None:
    p = make(fake, tmp_path, network="no-such-vnet", retries=2)
    with pytest.raises(ProviderError) as e:
        p.launch(request(count=1))
    msg = e.value.message
    assert msg.startswith("Azure provider az-test, region eastus: "
                          "NetworkInterfaces_CreateOrUpdate failed (HTTP 400)")
    assert "InvalidResourceReference" in msg and "no-such-vnet" in msg
    assert e.value.detail["cloud_code"] == "InvalidResourceReference"
    assert e.value.detail["call"] == "NetworkInterfaces_CreateOrUpdate"
    assert fake.count("PUT", r"/networkInterfaces/") == 1  # a 4xx is not retried
    # a size Azure does not know, and a server that keeps failing
    p = make(fake, tmp_path, retries=2)
    with pytest.raises(ProviderError, match=r"VirtualMachines_CreateOrUpdate failed .*"
                                            r"InvalidParameter: The value Standard_Z9"):
        p.launch(request(count=1, size="Standard_Z9"))
    fake.fail("GET", r"virtualMachines$", times=5)
    with pytest.raises(ProviderError) as e:
        list(p.list_instances())
    assert "VirtualMachines_List failed after 3 attempts" in e.value.message
    assert e.value.detail["kind"] == "server" and e.value.detail["region"] == "eastus"
    with pytest.raises(BadRequest, match="westus is not configured|'westus' is not configured"):
        p.launch(LaunchRequest("westus", URN, 1, imm_tags(), "t"))


def test_unknown_paths_answer_arm_errors(fake: Any, tmp_path: Path) -> None:
    from libcloud.common.exceptions import BaseHTTPError

    driver = make(fake, tmp_path)._driver(LOC)[0]
    for path, code in ((f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/"
                        f"nosuchThings/x", "InvalidResourceType"),
                       (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/"
                        f"virtualMachines/absent", "ResourceNotFound"),
                       ("/subscriptions/00000000-0000-0000-0000-000000000000/providers/"
                        "Microsoft.Compute/virtualMachines", "SubscriptionNotFound"),
                       ("/nowhere", "NotFound")):
        with pytest.raises(BaseHTTPError) as e:
            driver.connection.request(path, params={"api-version": "2021-11-01"})
        assert e.value.code == 404 and e.value.message.startswith(f"[{code}]"), path


def test_settings_are_checked(fake: Any, tmp_path: Path) -> None:
    ctx = PluginContext(tmp_path, LOG)
    with pytest.raises(ConfigError, match="set subscription_id"):
        AzureProvider("a", {k: v for k, v in settings(fake).items() if k != "subscription_id"},
                      ctx)
    with pytest.raises(ConfigError, match="not an Azure location"):
        AzureProvider("a", settings(fake, locations=["us-east-1"]), ctx)
    assert AzureProvider("a", settings(fake, locations=["East US"]), ctx).locations == ["eastus"]
    with pytest.raises(ConfigError, match="always speaks https on port 443"):
        AzureProvider("a", settings(fake, libcloud_driver="azure_arm"), ctx)
    with pytest.raises(ConfigError, match="credentials do not belong"):
        AzureProvider("a", settings(fake, client_secret="x"), ctx)
    with pytest.raises(ConfigError, match="cloud_environment 'Mars'"):
        AzureProvider("a", settings(fake, cloud_environment="Mars"), ctx)
    with pytest.raises(ConfigError, match="names regions westus"):
        AzureProvider("a", settings(fake, network={"westus": "v"}), ctx)
    sovereign = AzureProvider("a", settings(fake, libcloud_driver="azure_arm",
                                            cloud_environment="AzureChinaCloud"), ctx)
    assert "chinacloudapi.cn" in sovereign.arm_url
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3Nz imm@test\n")
    keyed = AzureProvider("a", settings(fake, ssh_public_key_file=str(tmp_path /
                                                                      "id_ed25519.pub")), ctx)
    keyed.launch(request(count=1, token="keyed"))
    profile = fake.vms(RG)[0]["properties"]["osProfile"]
    assert profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"].startswith(
        "ssh-ed25519 AAAAC3Nz")


def test_registers_as_plugin() -> None:
    providers = ProviderRegistry()
    azmod.imm_register_providers(providers)
    assert providers.get("azure") is AzureProvider


def test_pyproject_declares_the_entry_point() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["entry-points"]["imm"].get("azure") == "imm.plugins.providers.azure"


# --------------------------------------------------------------------------- through immd


def _plugin_env(tmp_path: Path) -> dict[str, str]:
    """immd loads the fake's driver as a plugin; and the azure provider itself from the
    installed entry point (or, before it is declared, from a stand-in one)."""
    where = tmp_path / "plugins"
    env = fakes.install(where)
    if not any(ep.name == "azure" for ep in importlib.metadata.entry_points(group="imm")):
        dist = where / "imm_azure_standin-0.0.dist-info"
        dist.mkdir(parents=True, exist_ok=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imm-azure-standin\n"
                                       "Version: 0.0\n")
        (dist / "entry_points.txt").write_text("[imm]\nazure = imm.plugins.providers.azure\n")
    return {**env, "AZURE_CLIENT_ID": fakes.CLIENT_ID,
            "AZURE_CLIENT_SECRET": fakes.CLIENT_SECRET}


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_rollout_through_immd(fake: Any, tmp_path: Path) -> None:
    images = {v: fake.add_managed_image("imm-images", f"web-{v}", LOC).lstrip("/")
              for v in ("1", "2")}
    config = "[providers.azure]\nkind = \"azure\"\n" + "".join(
        f"{k} = {_toml(v)}\n" for k, v in settings(fake).items()) + (
        "\n[services.web]\n"
        'targets = [{ provider = "azure", region = "eastus", count = 2 }]\n')
    (tmp_path / "immd").mkdir()
    d = Immd(tmp_path / "immd", config)
    d.start(extra_env=_plugin_env(tmp_path))
    digests = {}
    for v, image in images.items():
        f = tmp_path / f"web-{v}.img"
        f.write_bytes(f"baked web {v}\n".encode() * 100)
        d.run("image", "add", str(f), "--name", "web", "--version", v)
        d.run("image", "artifact", "add", f"web@{v}", "--provider", "azure", "--region", LOC,
              "--image-id", image)
        digests[v] = d.json("image", "show", f"web@{v}")["digest"]

    def live() -> list[dict[str, Any]]:
        return [vm for vm in fake.vms(RG) if vm["properties"]["provisioningState"] != "Deleting"]

    def image_of(vm: dict[str, Any]) -> str:
        return str(vm["properties"]["storageProfile"]["imageReference"]["id"]).lstrip("/")

    for v in ("1", "2"):
        d.run("rollout", "start", "web", "--image", f"web@{v}", "--wait", timeout=60)
        latest = d.json("rollout", "list", "--service", "web")[0]
        assert latest["state"] == "completed", latest
        vms = live()
        assert len(vms) == 2, [vm["name"] for vm in vms]
        assert {image_of(vm) for vm in vms} == {images[v]}
        for vm in vms:
            tags = vm["tags"]
            assert tags["imm:service"] == "web" and tags["imm:digest"] == digests[v]
            assert tags["imm:rollout"] == latest["id"] and re.fullmatch(r"b\d+", tags["imm:slot"])
    assert len(fake.vms(RG)) == 2  # the v1 VMs are gone, not just deleting
    listed = [i for i in d.json("instance", "list") if i["provider"] == "azure"]
    assert sorted(i["image_id"] for i in listed) == [images["2"]] * 2
    assert {i["tags"]["imm:digest"] for i in listed} == {digests["2"]}
    assert fake.of_type(fakes.NIC, RG) and len(fake.of_type(fakes.NIC, RG)) == 2
