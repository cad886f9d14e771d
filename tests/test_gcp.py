"""The gcp provider: libcloud's own GCE driver, unmodified, over real HTTP against a stateful fake
of the Compute Engine API (tests/fakes/gce.py, seeded from the recorded responses libcloud ships),
because no GCE emulator runs here. Ends with a real immd rolling a service out on it through
immctl.

The provider authenticates the production way (auth_type "SA", a JSON service account key with a
real RSA key); a pre-filled libcloud token cache stands in for Google's OAuth2 token endpoint.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from imm.errors import BadRequest, ConfigError, NotFound, ProviderError
from imm.plugins.base import Feature, LaunchRequest, PluginContext
from imm.plugins.providers import gcp as gcpmod
from imm.plugins.providers.gcp import GCPProvider, instance_names, label_value
from imm.plugins.registry import ProviderRegistry

from conftest import Immd


def _fakes() -> Any:
    try:
        return importlib.import_module("tests.fakes.gce")
    except ModuleNotFoundError:  # tests/ itself is on sys.path (pytest's rootdir-less mode)
        return importlib.import_module("fakes.gce")


FakeGCE = _fakes().FakeGCE
ZONE, OTHER = "us-central1-a", "europe-west1-a"
PROJECT = "imm-test"
DIGEST1, DIGEST2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
LOG = logging.getLogger("test_gcp")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def write_key(path: Path, pem: str, **over: Any) -> Path:
    data = {"type": "service_account", "project_id": PROJECT,
            "private_key_id": "0123456789abcdef0123456789abcdef01234567", "private_key": pem,
            "client_email": f"imm@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "123456789012345678901", **over}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def write_token(path: Path, token: str) -> Path:
    path.write_text(json.dumps({"access_token": token, "token_type": "Bearer",
                                "expire_time": "2099-01-01T00:00:00Z"}))
    path.chmod(0o600)
    return path


@pytest.fixture
def fake() -> Iterator[Any]:
    with FakeGCE(PROJECT, page_size=50) as f:
        f.add_image("web-v1", family="web")
        f.add_image("web-v2", family="web")
        yield f


@pytest.fixture
def make(tmp_path: Path, pem: str, fake: Any) -> Callable[..., GCPProvider]:
    key = write_key(tmp_path / "key.json", pem)
    token = write_token(tmp_path / "token.json", fake.token)

    def make(**over: Any) -> GCPProvider:
        settings: dict[str, Any] = {
            "zones": [ZONE, OTHER], "project": PROJECT, "service_account_file": str(key),
            "token_cache_file": str(token), "endpoint": fake.url, "size": "n1-standard-1",
            "poll_interval_s": 0, "retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
            "timeout_s": 5}
        settings.update(over)
        settings = {k: v for k, v in settings.items() if v is not None}
        return GCPProvider("gcp-test", settings, PluginContext(tmp_path, LOG))

    return make


def imm_tags(rollout: str = "r-1", slot: str = "b0", digest: str = DIGEST1,
             service: str = "web") -> dict[str, str]:
    return {"imm:service": service, "imm:rollout": rollout, "imm:slot": slot,
            "imm:digest": digest}


def request(count: int = 2, token: str = "r-1-b0-gcp-us-central1-a", image: str = "web-v1",
            zone: str = ZONE, **tags: str) -> LaunchRequest:
    return LaunchRequest(region=zone, image_id=image, count=count, tags=imm_tags(**tags),
                         client_token=token)


def inserts(fake: Any) -> int:
    return fake.count("POST", r"/zones/[^/]+/instances$")


# --------------------------------------------------------------------------- registration


def test_registers_through_the_hook() -> None:
    reg = ProviderRegistry()
    gcpmod.imm_register_providers(reg)
    assert reg.get("gcp") is GCPProvider


def test_names_and_labels_are_deterministic_and_valid() -> None:
    a = instance_names("Web_App", "r-1-b0-gcp-us-central1-a", 3)
    assert a == instance_names("Web_App", "r-1-b0-gcp-us-central1-a", 3)
    assert a != instance_names("Web_App", "r-1-b1-gcp-us-central1-a", 3)
    assert [n[-4:] for n in a] == ["-000", "-001", "-002"]
    assert all(re.fullmatch(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", n) for n in a)
    assert label_value("R-2024.05:X") == "r-2024-05-x"
    assert len(label_value("x" * 100)) == 63


# --------------------------------------------------------------------------- listing


def test_list_pages_through_seeded_instances_of_the_configured_zones(make: Any, fake: Any) -> None:
    fake.page_size = 2
    p = make()
    found = {i.id: i for i in p.list_instances()}
    # Seeded from libcloud's aggregated_instances.json; us-central2-a is not configured.
    assert set(found) == {"node-name", "libcloud-demo-europe-multiple-nodes-000",
                          "libcloud-demo-europe-persist-node", "libcloud-demo-europe-np-node"}
    pet = found["node-name"]
    assert pet.region == ZONE and pet.state == "running"
    assert pet.image_id == "projects/debian-cloud/global/images/debian-7-wheezy-v20131120"
    assert pet.address == "10.240.72.75" and pet.extra["public_ip"] == "23.236.58.15"
    assert pet.launched_at == 1386960323  # 2013-12-13T10:45:23.351-08:00
    assert "imm:service" not in pet.tags
    # Several zones: one aggregated list, paged by libcloud with pageToken (2 items a page).
    pages = [q for m, path, q in fake.calls if path.endswith("/aggregated/instances")]
    assert len(pages) >= 4 and all(q.get("maxResults") == "500" for q in pages)
    assert sum(1 for q in pages if q.get("pageToken")) == len(pages) - 1
    # One zone: that zone's instances.list, paged the same way.
    only = make(zones=[ZONE])
    assert [i.id for i in only.list_instances()] == ["node-name"]
    assert not list(p.list_instances({"imm:service": "web"}))


# --------------------------------------------------------------------------- launch


def test_launch_puts_full_tags_in_metadata_and_short_ones_in_labels(make: Any, fake: Any) -> None:
    p = make()
    got = p.launch(request(count=3, rollout="R-2024.05-Blue"))
    names = instance_names("web", "r-1-b0-gcp-us-central1-a", 3)
    assert [i.id for i in got] == names
    for inst in got:
        assert inst.region == ZONE and inst.image_id == "web-v1" and inst.state == "running"
        assert inst.tags["imm:digest"] == DIGEST1 and inst.tags["imm:rollout"] == "R-2024.05-Blue"
        assert inst.address and inst.address.startswith("10.128.")
    raw = fake.zone_instances(ZONE)[names[0]]
    meta = fake.metadata(raw)
    assert meta["imm-digest"] == DIGEST1  # the full 71 characters
    assert meta["imm-service"] == "web" and meta["imm-slot"] == "b0"
    assert meta["imm-token"] == "r-1-b0-gcp-us-central1-a" and meta["imm-image"] == "web-v1"
    assert raw["labels"] == {"imm-service": "web", "imm-rollout": "r-2024-05-blue",
                             "imm-slot": "b0"}
    disk = raw["disks"][0]["source"].rsplit("/", 1)[-1]
    assert fake.disks[ZONE][disk]["sourceImage"].endswith(f"/projects/{PROJECT}/global/images/"
                                                           "web-v1")
    assert raw["machineType"].endswith("/machineTypes/n1-standard-1")
    # Found again by any tag, with the full values; the other zone has none of them.
    listed = list(p.list_instances({"imm:digest": DIGEST1, "imm:rollout": "R-2024.05-Blue"}))
    assert sorted(i.id for i in listed) == names
    assert not list(p.list_instances({"imm:digest": DIGEST2}))
    # Every insert's zone operation was polled to DONE.
    assert fake.count("GET", r"/zones/us-central1-a/operations/operation-") >= 3


def test_labels_are_the_fallback_when_metadata_lost_the_tags(make: Any, fake: Any) -> None:
    p = make()
    [inst] = p.launch(request(count=1))
    with fake.lock:
        raw = fake.instances[ZONE][inst.id]
        raw["metadata"]["items"] = [i for i in raw["metadata"]["items"]
                                    if i["key"] not in ("imm-service", "imm-slot")]
    [again] = p.list_instances({"imm:service": "web"})
    assert again.tags["imm:service"] == "web" and again.tags["imm:slot"] == "b0"
    assert again.tags["imm:digest"] == DIGEST1


def test_relaunch_with_the_same_token_makes_no_duplicates(make: Any, fake: Any) -> None:
    p = make()
    first = p.launch(request(count=2))
    assert inserts(fake) == 2
    again = p.launch(request(count=2))
    assert [i.id for i in again] == [i.id for i in first] and inserts(fake) == 2
    # A launch that died half-way: only the missing instance is inserted.
    with fake.lock:
        del fake.instances[ZONE][first[1].id]
        del fake.disks[ZONE][first[1].id]
    third = p.launch(request(count=2))
    assert [i.id for i in third] == [i.id for i in first] and inserts(fake) == 3
    assert len([n for n in fake.zone_instances(ZONE) if n.startswith("imm-")]) == 2
    # Another token: other names.
    other = p.launch(request(count=1, token="r-2-b0-gcp-us-central1-a", rollout="r-2"))
    assert other[0].id not in {i.id for i in first}


def test_launch_retried_after_an_insert_whose_answer_was_lost(make: Any, fake: Any) -> None:
    p = make()
    # The first insert is carried out, but answered 503: the retry gets 409 alreadyExists.
    fake.fail("POST", r"/zones/us-central1-a/instances$", 503, "backendError", apply=True)
    got = p.launch(request(count=2))
    assert len(got) == 2 and inserts(fake) == 3
    assert len([n for n in fake.zone_instances(ZONE) if n.startswith("imm-")]) == 2


def test_throttling_is_retried_and_client_errors_are_not(make: Any, fake: Any) -> None:
    p = make()
    fake.fail("GET", r"/aggregated/instances$", 403, "rateLimitExceeded", times=2)
    assert len(list(p.list_instances())) == 4
    fake.fail("GET", r"/aggregated/instances$", 400, "invalid", times=1)
    with pytest.raises(ProviderError) as err:
        list(p.list_instances())
    assert err.value.detail["attempts"] == 1 and err.value.detail["http_status"] == 400


def test_launch_refuses_names_taken_by_another_token(make: Any, fake: Any) -> None:
    p = make()
    [inst] = p.launch(request(count=1))
    with fake.lock:
        for item in fake.instances[ZONE][inst.id]["metadata"]["items"]:
            if item["key"] == "imm-token":
                item["value"] = "someone-else"
    with pytest.raises(ProviderError, match="taken by an instance launched with another token"):
        p.launch(request(count=1))


def test_an_insert_operation_that_fails_late_is_reported_and_relaunch_recovers(
        make: Any, fake: Any) -> None:
    p = make()
    fake.fail_insert_operation("QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.  Limit: 8.0")
    with pytest.raises(ProviderError) as err:
        p.launch(request(count=2))
    e = err.value
    assert e.detail["cloud_code"] == "QUOTA_EXCEEDED" and e.detail["region"] == ZONE
    assert re.match(r"instances\.insert imm-web-\w+-000 \(operation operation-", e.detail["call"])
    assert "Quota 'CPUS' exceeded" in e.message and "HTTP" not in e.message
    assert len(p.launch(request(count=2))) == 2  # the engine's retry completes the launch


# --------------------------------------------------------------------------- terminate


def test_terminate_deletes_and_waits_and_tolerates_gone(make: Any, fake: Any) -> None:
    p = make()
    got = p.launch(request(count=2))
    disks_before = set(fake.disks[ZONE])
    p.terminate([got[0].id, got[1].id, "never-existed"])
    left = fake.zone_instances(ZONE)
    assert got[0].id not in left and got[1].id not in left and "node-name" in left
    assert not {got[0].id, got[1].id} & set(fake.disks[ZONE])  # boot disks auto-deleted
    assert disks_before - set(fake.disks[ZONE]) == {got[0].id, got[1].id}
    assert fake.count("DELETE", r"/instances/imm-") == 2
    p.terminate([got[0].id])  # already gone: no error, no call
    assert fake.count("DELETE", r"/instances/imm-") == 2
    assert not list(p.list_instances({"imm:service": "web"}))


def test_terminate_refuses_instances_imm_did_not_launch(make: Any, fake: Any) -> None:
    with pytest.raises(BadRequest, match="node-name.*imm did not launch"):
        make().terminate(["node-name"])
    assert "node-name" in fake.zone_instances(ZONE)
    make(terminate_untagged=True).terminate(["node-name"])
    assert "node-name" not in fake.zone_instances(ZONE)


# --------------------------------------------------------------------------- images


def test_describe_image_present_absent_and_global(make: Any, fake: Any) -> None:
    p = make()
    info = p.describe_image(ZONE, "web-v1")
    assert info is not None and info.name == "web-v1" and info.state == "READY"
    assert info.extra["family"] == "web" and info.extra["project"] == PROJECT
    assert p.describe_image(ZONE, "web-v9") is None
    link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/images/web-v2"
    assert p.describe_image(OTHER, link).name == "web-v2"
    debian = p.describe_image(ZONE, "projects/debian-cloud/global/images/"
                                    "debian-7-wheezy-v20131120")
    assert debian is not None and debian.extra["project"] == "debian-cloud"
    assert p.describe_image(ZONE, "family/web").name == "web-v2"
    with pytest.raises(BadRequest, match="not configured"):
        p.describe_image("asia-east1-a", "web-v1")
    # Images are global: "copying" to another zone is the same id.
    assert p.copy_image(ZONE, "web-v1", OTHER) == "web-v1"
    assert p.supports(Feature.COPY_IMAGE) and not p.supports(Feature.REHASH)
    with pytest.raises(NotFound):
        p.copy_image(ZONE, "web-v9", OTHER)


def test_launch_from_a_missing_image_or_a_family_fails_clearly(make: Any, fake: Any) -> None:
    p = make()
    with pytest.raises(NotFound, match="image web-v9 does not exist"):
        p.launch(request(image="web-v9"))
    with pytest.raises(BadRequest, match="family"):
        p.launch(request(image="family/web"))
    with pytest.raises(ProviderError) as err:
        make(size="x9-huge").launch(request())
    assert err.value.detail["call"] == "machineTypes.get x9-huge"
    assert err.value.detail["cloud_code"] == "notFound" and err.value.detail["http_status"] == 404
    assert "machineTypes/x9-huge' was not found" in err.value.message
    assert inserts(fake) == 0


# --------------------------------------------------------------------------- errors, credentials


def test_errors_name_cloud_zone_and_call_and_never_credentials(make: Any, fake: Any,
                                                              tmp_path: Path, pem: str) -> None:
    # A token the API refuses: an auth failure naming the call, without the token.
    bad = "ya29.refused-token-6d3f2a9b8c7e"
    p = make(token_cache_file=str(write_token(tmp_path / "bad.json", bad)), zones=[ZONE])
    with pytest.raises(ProviderError) as err:
        list(p.list_instances())
    e = err.value
    assert e.message.startswith(f"GCP provider gcp-test, region {ZONE}: instances.list failed "
                                "(HTTP 401)")
    assert "service account key" in e.message  # what to check
    assert e.detail["cloud"] == "GCP" and e.detail["region"] == ZONE
    assert e.detail["call"] == "instances.list" and e.detail["kind"] == "auth"
    assert bad not in e.message + json.dumps(e.detail)

    # An error body quoting the request's Authorization header: scrubbed.
    p = make()
    fake.fail("POST", r"/zones/us-central1-a/instances$", 400, "invalid", echo_auth=True)
    with pytest.raises(ProviderError) as err:
        p.launch(request(count=1))
    text = err.value.message + json.dumps(err.value.detail)
    assert "instances.insert imm-web-" in text and "region us-central1-a" in text
    assert "invalid: fault injected" in text and "<redacted>" in text
    assert fake.token not in text

    # A key that is not a key: the libcloud error carries nothing of it.
    broken = pem.replace("MII", "XXX", 1)
    key = write_key(tmp_path / "broken.json", broken)
    p = make(service_account_file=str(key), token_cache_file=str(tmp_path / "none.json"))
    with pytest.raises(ProviderError) as err:
        list(p.list_instances())
    text = err.value.message + json.dumps(err.value.detail)
    assert "authenticate" in text
    body = [line for line in broken.splitlines() if len(line) > 20]
    assert body and not any(line in text for line in body)
    assert "0123456789abcdef0123456789abcdef01234567" not in text  # private_key_id


def test_credentials_come_from_a_file_or_an_env_var(make: Any, fake: Any, tmp_path: Path,
                                                   pem: str, monkeypatch: Any) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    p = make(service_account_file=None, project=None)
    with pytest.raises(ConfigError, match=r"\$GOOGLE_APPLICATION_CREDENTIALS"):
        list(p.list_instances())
    key = write_key(tmp_path / "env-key.json", pem, project_id=PROJECT)
    monkeypatch.setenv("IMM_GCP_KEY", str(key))
    p = make(service_account_file=None, credentials_env="IMM_GCP_KEY", project=None)
    assert len(list(p.list_instances())) == 4 and p.project == PROJECT
    with pytest.raises(ConfigError, match="do not belong in the config"):
        make(private_key="x")
    with pytest.raises(ConfigError, match="zones"):
        make(zones=["us-central1"])


def test_operation_timeout_is_reported(make: Any, fake: Any) -> None:
    fake.op_delay_s = 30.0
    p = make(operation_timeout_s=1, poll_interval_s=0.2)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="not done after operation_timeout_s=1s"):
        p.launch(request(count=1))
    assert time.monotonic() - started < 5
    fake.op_delay_s = 0.0
    assert len(p.launch(request(count=1))) == 1  # the retried launch picks it up


def test_the_fake_answers_the_driver_like_gce(make: Any, fake: Any) -> None:
    """The fake's other endpoints, driven by libcloud directly: setLabels / setMetadata with
    fingerprints, and a GCE error body for what it does not serve."""
    from libcloud.common.google import ResourceNotFoundError

    p = make()
    with p._driver(ZONE) as driver:
        node = driver.ex_get_node("node-name", ZONE)
        assert driver.ex_set_node_labels(node, {"team": "web"})
        assert driver.ex_set_node_metadata(node, {"imm-service": "web", "other": "x"})
        node = driver.ex_get_node("node-name", ZONE)
        assert node.extra["labels"] == {"team": "web"}
        with pytest.raises(ResourceNotFoundError, match="was not found"):
            driver.connection.request("/global/bogus")
    [pet] = p.list_instances({"imm:service": "web"})
    assert pet.id == "node-name" and pet.tags["team"] == "web"
    stale = dict(fake.instances[ZONE]["node-name"]["metadata"], fingerprint="stale")
    status, body, _ = fake.handle("POST", f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/"
                                  "node-name/setMetadata", f"Bearer {fake.token}",
                                  json.dumps(stale).encode())
    assert status == 412 and body["error"]["errors"][0]["reason"] == "conditionNotMet"


# --------------------------------------------------------------------------- a rollout on it


def test_rollout_through_immd(tmp_path: Path, pem: str, fake: Any) -> None:
    eps = importlib.metadata.entry_points(group="imm")
    if not any(ep.name == "gcp" and ep.value == "imm.plugins.providers.gcp" for ep in eps):
        pytest.fail('immd loads providers through the "imm" entry-point group: add '
                    'gcp = "imm.plugins.providers.gcp" to pyproject.toml and pip install -e .')
    key = write_key(tmp_path / "key.json", pem)
    token = write_token(tmp_path / "token.json", fake.token)
    config = f"""
[providers.gcp]
kind = "gcp"
project = "{PROJECT}"
zones = ["{ZONE}"]
size = "n1-standard-1"
endpoint = "{fake.url}"
service_account_file = "{key}"
token_cache_file = "{token}"
poll_interval_s = 0
backoff_base_s = 0.05
backoff_max_s = 0.2

[services.web]
targets = [{{ provider = "gcp", region = "{ZONE}", count = 2 }}]
health_timeout_s = 10
drain_timeout_s = 1
"""
    (tmp_path / "d").mkdir()
    d = Immd(tmp_path / "d", config)
    d.start(extra_env={"GOOGLE_APPLICATION_CREDENTIALS": ""})
    for v in ("1", "2"):
        disk = tmp_path / f"web-{v}.img"
        disk.write_bytes(f"web disk image v{v}\n".encode() * 100)
        d.run("image", "add", str(disk), "--name", "web", "--version", v)
        d.run("image", "artifact", "add", f"web@{v}", "--provider", "gcp", "--region", ZONE,
              "--image-id", f"web-v{v}")
    digests = {v: d.json("image", "show", f"web@{v}")["digest"] for v in ("1", "2")}

    r1 = d.json("rollout", "start", "web", "--image", "web@1", "--wait")
    assert r1["state"] == "completed", r1
    r2 = d.json("rollout", "start", "web", "--image", "web@2", "--wait")
    assert r2["state"] == "completed", r2

    imm = {n: i for n, i in fake.zone_instances(ZONE).items() if n.startswith("imm-")}
    assert len(imm) == 2, sorted(imm)
    for name, inst in imm.items():
        meta = fake.metadata(inst)
        assert meta["imm-digest"] == digests["2"] and meta["imm-service"] == "web"
        assert meta["imm-rollout"] == r2["id"] and meta["imm-image"] == "web-v2"
        assert inst["status"] == "RUNNING" and inst["labels"]["imm-service"] == "web"
        disk = fake.disks[ZONE][inst["disks"][0]["source"].rsplit("/", 1)[-1]]
        assert disk["sourceImage"].endswith("/global/images/web-v2")
    # immd sees the same two, with the full digest from metadata.
    listed = [i for i in d.json("instance", "list") if i["provider"] == "gcp"
              and i["tags"].get("imm:service") == "web"]
    assert sorted(i["id"] for i in listed) == sorted(imm)
    assert {i["tags"]["imm:digest"] for i in listed} == {digests["2"]}
    assert {i["image_id"] for i in listed} == {"web-v2"}
    # The audit matches them to the catalog's artifacts (gcp/<zone>/web-v2): no findings; the
    # pet seeded from libcloud's fixtures is an unknown image.
    assert d.json("audit", "run", "--wait")["state"] == "completed"
    findings = {(f["instance_id"], f["verdict"]) for f in d.json("audit", "findings", "--open")}
    assert not {i for i, _ in findings} & set(imm), findings
    assert ("node-name", "unknown-image") in findings
    assert "Traceback" not in d.log.read_text()
