"""The cloudlb router with ``driver = "gce"``: libcloud's own GCE load balancer driver (on its GCE
compute driver), unmodified, over real HTTP against the stateful fake of the Compute Engine API
(tests/fakes/gce.py, seeded from the recorded responses libcloud ships), because no GCE emulator
runs here. A route is a target pool. Ends with a real immd rolling a service out through a target
pool.

The router authenticates the production way (auth_type "SA", a JSON service account key with a
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

from imm.errors import BadRequest, ConfigError, NotFound, RouterError
from imm.plugins.base import Instance, LaunchRequest, PluginContext
from imm.plugins.providers.gcp import GCPProvider
from imm.plugins.routers.cloudlb import CloudLBRouter

from harness import Immd


def _fakes() -> Any:
    try:
        return importlib.import_module("tests.fakes.gce")
    except ModuleNotFoundError:  # tests/ itself is on sys.path (pytest's rootdir-less mode)
        return importlib.import_module("fakes.gce")


FakeGCE = _fakes().FakeGCE
PROJECT = "imm-test"
ZONE, ZONE_B, REGION = "us-central1-a", "us-central1-b", "us-central1"
POOL = "web-pool"
LOG = logging.getLogger("test_cloudlb_gce")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def write_key(path: Path, pem: str) -> Path:
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567", "private_key": pem,
        "client_email": f"imm@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "123456789012345678901"}))
    path.chmod(0o600)
    return path


def write_token(path: Path, token: str) -> Path:
    path.write_text(json.dumps({"access_token": token, "token_type": "Bearer",
                                "expire_time": "2099-01-01T00:00:00Z"}))
    path.chmod(0o600)
    return path


@pytest.fixture
def fake() -> Iterator[Any]:
    with FakeGCE(PROJECT) as f:
        f.add_image("web-v1")
        f.add_image("web-v2")
        f.add_target_pool(POOL)
        yield f


@pytest.fixture
def files(tmp_path: Path, pem: str, fake: Any) -> dict[str, str]:
    return {"service_account_file": str(write_key(tmp_path / "key.json", pem)),
            "token_cache_file": str(write_token(tmp_path / "token.json", fake.token))}


@pytest.fixture
def make(tmp_path: Path, files: dict[str, str], fake: Any) -> Callable[..., CloudLBRouter]:
    def make(name: str = "lb-test", **over: Any) -> CloudLBRouter:
        settings: dict[str, Any] = {
            "kind": "cloudlb", "driver": "gce", "project": PROJECT, "zones": [ZONE],
            "endpoint": fake.url, **files, "poll_interval_s": 0, "retries": 2,
            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5}
        settings.update(over)
        settings = {k: v for k, v in settings.items() if v is not None}
        return CloudLBRouter(name, settings, PluginContext(tmp_path / "state", LOG))

    return make


@pytest.fixture
def launch(tmp_path: Path, files: dict[str, str], fake: Any) -> Callable[..., list[Instance]]:
    """Instances launched the way imm launches them: through the gcp provider."""
    provider = GCPProvider("gcp", {"zones": [ZONE, ZONE_B], "project": PROJECT, **files,
                                   "endpoint": fake.url, "size": "n1-standard-1",
                                   "poll_interval_s": 0}, PluginContext(tmp_path, LOG))
    n = iter(range(100))

    def launch(count: int = 1, zone: str = ZONE) -> list[Instance]:
        return provider.launch(LaunchRequest(
            region=zone, image_id="web-v1", count=count, client_token=f"t-{next(n)}",
            tags={"imm:service": "web", "imm:rollout": "r-1", "imm:slot": "b0"}))

    return launch


def path(zone: str, name: str) -> str:
    return f"zones/{zone}/instances/{name}"


# --------------------------------------------------------------------------- settings


def test_construction_does_no_io_and_checks_settings(tmp_path: Path) -> None:
    ctx = PluginContext(tmp_path / "state", LOG)
    # Nothing listens on port 9 and the key does not exist: construction must not notice.
    r = CloudLBRouter("lb", {"driver": "gce", "zones": ["us-central1-a", "us-central1-b"],
                             "project": PROJECT, "endpoint": "http://127.0.0.1:9",
                             "service_account_file": str(tmp_path / "missing.json")}, ctx)
    assert r.region == REGION and r.drain_timeout_s == 0
    assert not (tmp_path / "state").exists()
    with pytest.raises(ConfigError, match="cannot read the service account key"):
        r.backends(POOL)  # ... the first call does, and says it as the router
    with pytest.raises(ConfigError, match="set zones"):
        CloudLBRouter("lb", {"driver": "gce", "project": PROJECT}, ctx)
    with pytest.raises(ConfigError, match="span regions"):
        CloudLBRouter("lb", {"driver": "gce", "zones": [ZONE, "europe-west1-b"]}, ctx)
    with pytest.raises(ConfigError, match="region = 'europe-west1'"):
        CloudLBRouter("lb", {"driver": "gce", "zone": ZONE, "region": "europe-west1"}, ctx)
    with pytest.raises(ConfigError, match="standby_target_pool"):
        CloudLBRouter("lb", {"driver": "gce", "zone": ZONE, "standby_target_group": "x"}, ctx)
    with pytest.raises(ConfigError, match="cloudlb router lb: credentials do not belong"):
        CloudLBRouter("lb", {"driver": "gce", "zone": ZONE, "private_key": "x"}, ctx)
    with pytest.raises(ConfigError, match='"gce"'):
        CloudLBRouter("lb", {"driver": "gcp", "zone": ZONE}, ctx)


# --------------------------------------------------------------------------- membership


def test_membership_weights_and_health(make: Any, fake: Any, launch: Any,
                                       tmp_path: Path) -> None:
    a, b = launch(2)
    r = make()
    r.ensure_route(POOL, {})
    assert r.backends(POOL) == []

    r.add(POOL, a.id, a.address)
    r.add(POOL, a.id, a.address)  # idempotent: no second addInstance
    assert fake.pool_members(POOL) == [path(ZONE, a.id)]
    assert fake.count("POST", r"/targetPools/web-pool/addInstance$") == 1
    assert fake.count("GET", r"/regions/us-central1/operations/operation-") >= 1
    (ba,) = r.backends(POOL)
    assert (ba.name, ba.address, ba.weight, ba.state, ba.healthy) == (
        a.id, a.address, 1, "ready", True)

    # Health is the pool's getHealth, read back after GCE's view changes.
    r.add(POOL, b.id, b.address)
    fake.set_unhealthy(ZONE, b.id)
    assert r.health(POOL) == {a.id: True, b.id: False}
    fake.set_unhealthy(ZONE, b.id, False)
    assert r.health(POOL) == {a.id: True, b.id: True}

    # Weights are membership.
    r.set_weights(POOL, {a.id: 0, b.id: 5})
    assert fake.pool_members(POOL) == [path(ZONE, b.id)]
    assert {x.name: x.weight for x in r.backends(POOL)} == {a.id: 0, b.id: 5}
    r.set_weights(POOL, {a.id: 1})
    assert sorted(fake.pool_members(POOL)) == sorted([path(ZONE, a.id), path(ZONE, b.id)])

    r.drain(POOL, a.id)
    assert fake.pool_members(POOL) == [path(ZONE, b.id)]
    assert {x.name: (x.state, x.weight, x.healthy) for x in r.backends(POOL)}[a.id] == (
        "drain", 0, None)
    started = time.monotonic()
    r.remove(POOL, a.id)  # no drain_timeout_s configured: no wait (bound far above a call)
    assert time.monotonic() - started < 5
    r.remove(POOL, a.id)  # absent: fine
    assert [x.name for x in r.backends(POOL)] == [b.id]
    with pytest.raises(NotFound):
        r.drain(POOL, a.id)

    # The name <-> instance path map lives in the router's state file and survives a restart.
    state = json.loads((tmp_path / "state" / "cloudlb" / "lb-test.json").read_text())
    assert state["routes"][POOL][b.id]["target"] == path(ZONE, b.id)
    assert [(x.name, x.address) for x in make().backends(POOL)] == [(b.id, b.address)]

    # An instance that is gone while still in the pool: health unknown, not an error.
    with fake.lock:
        del fake.instances[ZONE][b.id]
    assert r.health(POOL) == {b.id: None}

    with pytest.raises(NotFound, match="target pool nope does not exist in us-central1"):
        r.backends("nope")
    with pytest.raises(BadRequest, match="GCE instance name"):
        r.add(POOL, "Web_1", "10.0.0.9")
    with pytest.raises(BadRequest, match="not a target pool name"):
        r.backends("../global/images")


def test_foreign_members_and_zone_resolution(make: Any, fake: Any, launch: Any) -> None:
    r = make(zones=[ZONE, ZONE_B])
    # A pool seeded from libcloud's recordings: members imm never added, whose instances do
    # not exist: listed under their instance names, health unknown.
    assert [(x.name, x.address, x.weight, x.healthy) for x in r.backends("www-pool")] == [
        (f"www{i}", path(ZONE_B, f"www{i}"), 1, None) for i in (1, 2, 3)]

    # A member someone else added (the seeded pet): its name, its health; imm can take it out.
    with fake.lock:
        fake.target_pools[REGION][POOL]["instances"].append(fake.instance_link(
            path(ZONE, "node-name")))
    assert {x.name: (x.weight, x.healthy) for x in r.backends(POOL)} == {"node-name": (1, True)}
    r.set_weights(POOL, {"node-name": 0})
    assert fake.pool_members(POOL) == []

    # Several zones: the zone is looked up by instance name.
    (c,) = launch(1, zone=ZONE_B)
    r.add(POOL, c.id, c.address)
    assert fake.pool_members(POOL) == [path(ZONE_B, c.id)]
    assert fake.count("GET", rf"/zones/us-central1-b/instances/{c.id}$") >= 1
    # ... or given as the address.
    (d,) = launch(1)
    r.add(POOL, d.id, f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/"
                      f"{path(ZONE, d.id)}")
    assert fake.pool_members(POOL)[-1] == path(ZONE, d.id)
    with pytest.raises(NotFound, match="no instance ghost in zones us-central1-a, us-central1-b"):
        r.add(POOL, "ghost", "10.1.1.1")
    with pytest.raises(BadRequest, match="outside region us-central1"):
        r.add(POOL, "x", path("europe-west1-a", "x"))


def test_standby_pool_gives_weight_zero(make: Any, fake: Any, launch: Any) -> None:
    fake.add_target_pool("web-standby")
    a, b = launch(2)
    r = make()
    r.ensure_route(POOL, {"standby_target_pool": "web-standby"})
    r.add(POOL, a.id, a.address)
    r.add(POOL, b.id, b.address)
    assert fake.pool_members(POOL) == []  # no traffic yet ...
    assert len(fake.pool_members("web-standby")) == 2  # ... but health-checked
    assert {x.name: (x.weight, x.healthy) for x in r.backends(POOL)} == {
        a.id: (0, True), b.id: (0, True)}
    r.set_weights(POOL, {a.id: 100})
    assert fake.pool_members(POOL) == [path(ZONE, a.id)]
    assert fake.pool_members("web-standby") == [path(ZONE, b.id)]
    r.set_weights(POOL, {a.id: 0, b.id: 100})  # switch: b in before a goes back to standby
    assert fake.pool_members(POOL) == [path(ZONE, b.id)]
    assert fake.pool_members("web-standby") == [path(ZONE, a.id)]
    r.remove(POOL, a.id)
    assert fake.pool_members("web-standby") == []


def test_remove_waits_drain_timeout_only_when_configured(make: Any, fake: Any,
                                                         launch: Any) -> None:
    a, b = launch(2)
    r = make(drain_timeout_s=0.6)
    r.add(POOL, a.id, a.address)
    r.add(POOL, b.id, b.address)
    started = time.monotonic()
    r.drain(POOL, a.id)
    assert fake.pool_members(POOL) == [path(ZONE, b.id)]  # out at once: nothing drains
    r.remove(POOL, a.id)
    assert time.monotonic() - started >= 0.55
    r.ensure_route(POOL, {"drain_timeout_s": 0})  # a route's own setting wins
    started = time.monotonic()
    r.remove(POOL, b.id)  # drain and remove in one, no wait (bound far above a call)
    assert time.monotonic() - started < 5
    assert fake.pool_members(POOL) == [] and r.backends(POOL) == []


# --------------------------------------------------------------------------- errors, retries


def test_errors_name_cloud_region_and_call_and_never_credentials(
        make: Any, fake: Any, launch: Any, tmp_path: Path, pem: str) -> None:
    (a,) = launch(1)
    r = make(retries=1)
    r.add(POOL, a.id, a.address)
    fake.fail("POST", r"/targetPools/web-pool/getHealth$", 503, "backendError", times=2,
              echo_auth=True)
    with pytest.raises(RouterError) as err:
        r.backends(POOL)
    e = err.value
    assert re.match(rf"GCP router lb-test, region us-central1: targetPools\.getHealth "
                    rf"web-pool \({a.id}\) failed after 2 attempts \([0-9.]+s\) \(HTTP 503\)",
                    e.message), e.message
    assert e.detail["cloud"] == "GCP" and e.detail["router"] == "lb-test"
    assert e.detail["region"] == REGION and e.detail["kind"] == "server"
    assert "<redacted>" in e.message and fake.token not in e.message + json.dumps(e.detail)

    # A rejected change: the call and GCE's reason code, not retried.
    (b,) = launch(1)
    fake.fail("POST", r"/addInstance$", 400, "invalid", echo_auth=True)
    with pytest.raises(RouterError) as err:
        r.add(POOL, b.id, b.address)
    e = err.value
    assert e.detail["call"] == f"targetPools.addInstance web-pool ({b.id})"
    assert e.detail["cloud_code"] == "invalid" and e.detail["attempts"] == 1
    assert fake.token not in e.message + json.dumps(e.detail)
    assert fake.pool_members(POOL) == [path(ZONE, a.id)]

    # A token the API refuses: an auth failure that says what to check.
    bad = "ya29.refused-token-6d3f2a9b8c7e"
    r2 = make(name="lb-bad", token_cache_file=str(write_token(tmp_path / "bad.json", bad)))
    with pytest.raises(RouterError) as err:
        r2.backends(POOL)
    e = err.value
    assert e.message.startswith("GCP router lb-bad, region us-central1: targetPools.get "
                                "web-pool failed (HTTP 401)")
    assert "service account key" in e.message and e.detail["kind"] == "auth"
    assert bad not in e.message + json.dumps(e.detail)
    key_lines = [line for line in pem.splitlines() if len(line) > 20]
    assert not any(line in e.message for line in key_lines)


def test_retried_changes_do_not_double_and_operations_time_out(make: Any, fake: Any,
                                                               launch: Any) -> None:
    a, b = launch(2)
    r = make()
    # addInstance carried out, its answer lost: the retry finds it done and does not resend.
    fake.fail("POST", r"/addInstance$", 503, "backendError", apply=True)
    r.add(POOL, a.id, a.address)
    assert fake.pool_members(POOL) == [path(ZONE, a.id)]
    assert fake.count("POST", r"/addInstance$") == 1
    # Someone removed it meanwhile: GCE's "not a member" is done, not an error.
    fake.fail("POST", r"/removeInstance$", 400, "memberNotFound", apply=True)
    r.set_weights(POOL, {a.id: 0})
    assert fake.pool_members(POOL) == []
    # An operation that does not finish in time.
    fake.op_delay_s = 30.0
    slow = make(operation_timeout_s=1, poll_interval_s=0.2)
    started = time.monotonic()
    with pytest.raises(RouterError, match=r"targetPools.addInstance web-pool \(.*\) not done "
                                          r"after operation_timeout_s=1s"):
        slow.add(POOL, b.id, b.address)
    assert time.monotonic() - started < 5


def test_the_fake_answers_libcloud_target_pool_methods(make: Any, fake: Any,
                                                       launch: Any) -> None:
    """The fake's target pools through libcloud's own GCE objects (the driver the router is
    built on): pool, members, health checks, health, add/remove."""
    (a,) = launch(1)
    lb = make().driver()
    assert type(lb).__name__ == "GCELBDriver" and lb.connection is lb.gce.connection
    assert lb.connection.host == "127.0.0.1"
    pool = lb.gce.ex_get_targetpool(POOL, REGION)
    assert pool.nodes == [] and [h.name for h in pool.healthchecks] == ["basic-check"]
    node = lb.gce.ex_get_node(a.id, ZONE)
    assert lb.gce.ex_targetpool_add_node(pool, node)
    pool = lb.gce.ex_get_targetpool(POOL, REGION)
    assert [n.name for n in pool.nodes] == [a.id]
    assert [h["health"] for h in lb.gce.ex_targetpool_get_health(pool)] == ["HEALTHY"]
    assert lb.gce.ex_targetpool_remove_node(pool, node)
    assert fake.pool_members(POOL) == []
    lb_pool = lb.gce.ex_get_targetpool("lb-pool", REGION)  # seeded, with a backup pool
    assert lb_pool.extra["backupPool"].name == "backup-pool"


# --------------------------------------------------------------------------- a rollout on it


def test_blue_green_rollout_through_immd(tmp_path: Path, files: dict[str, str],
                                         fake: Any) -> None:
    eps = importlib.metadata.entry_points(group="imm")
    assert any(ep.value == "imm.plugins.routers.cloudlb" for ep in eps)
    config = f"""
[providers.gcp]
kind = "gcp"
project = "{PROJECT}"
zones = ["{ZONE}"]
size = "n1-standard-1"
endpoint = "{fake.url}"
service_account_file = "{files['service_account_file']}"
token_cache_file = "{files['token_cache_file']}"
poll_interval_s = 0
backoff_base_s = 0.05
backoff_max_s = 0.2

[routers.lb]
kind = "cloudlb"
driver = "gce"
project = "{PROJECT}"
zones = ["{ZONE}"]
endpoint = "{fake.url}"
service_account_file = "{files['service_account_file']}"
token_cache_file = "{files['token_cache_file']}"
poll_interval_s = 0
backoff_base_s = 0.05
backoff_max_s = 0.2

[services.web]
targets = [{{ provider = "gcp", region = "{ZONE}", count = 2 }}]
router = "lb"
route = "{POOL}"
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
    v1 = sorted(n for n in fake.zone_instances(ZONE) if n.startswith("imm-"))
    assert sorted(fake.pool_members(POOL)) == [path(ZONE, n) for n in v1] and len(v1) == 2

    r2 = d.json("rollout", "start", "web", "--image", "web@2", "--wait")
    assert r2["state"] == "completed", r2
    imm = {n: i for n, i in fake.zone_instances(ZONE).items() if n.startswith("imm-")}
    assert len(imm) == 2 and not set(imm) & set(v1), sorted(imm)
    for inst in imm.values():
        meta = fake.metadata(inst)
        assert meta["imm-digest"] == digests["2"] and meta["imm-rollout"] == r2["id"]
    # The pool holds exactly the two v2 instances.
    assert sorted(fake.pool_members(POOL)) == sorted(path(ZONE, n) for n in imm)
    assert fake.count("POST", r"/targetPools/web-pool/addInstance$") == 4  # one per instance
    assert fake.count("POST", r"/targetPools/web-pool/removeInstance$") >= 1
    state = json.loads((d.state / "cloudlb" / "lb.json").read_text())
    assert sorted(state["routes"][POOL]) == sorted(imm)
    assert "Traceback" not in d.log.read_text()


def test_the_example_config_block_builds_without_io(tmp_path: Path) -> None:
    """config/gcp.toml shows the gce router as a commented alternative: uncommented, it is a
    valid router whose construction touches neither the network nor the key."""
    import tomllib

    text = (Path(__file__).resolve().parent.parent / "config" / "gcp.toml").read_text()
    lines = text.splitlines()
    start = lines.index("# [routers.lb]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        if not line.startswith("#  "):  # the continuation comments stay comments
            block.append(line[2:])
    settings = tomllib.loads("\n".join(block))["routers"]["lb"]
    assert settings["kind"] == "cloudlb" and settings["driver"] == "gce"
    r = CloudLBRouter("lb", settings, PluginContext(tmp_path / "state", LOG))
    assert r.region == "us-central1" and r.standby == "web-standby"
    assert not (tmp_path / "state").exists()
