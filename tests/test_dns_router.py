"""The dns router against a real BIND 9 (RFC 2136 + TSIG) and Route53 served by a real moto_server.

Records are checked with code the router does not use for the check: ``dig`` and a plain
dnspython query for BIND, libcloud's own ``list_records`` for Route53.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from libcloud.dns.base import DNSDriver, Record, Zone
from libcloud.dns.providers import set_driver
from libcloud.dns.types import RecordType

from imm.errors import BadRequest, NotFound, RouterError
from imm.plugins.base import PluginContext
from imm.plugins.registry import RouterRegistry
from imm.plugins.routers import dns as dnsrouter
from imm.plugins.routers.dns import DNSRouter

ZONE = "example.test."
KEY = "imm-key"
OTHER_KEY = "other-key"



def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (named listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------- BIND


class Bind:
    def __init__(self, root: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.port, self.proc = root, port, proc
        self.key_file = root / f"{KEY}.key"
        self.other_key_file = root / f"{OTHER_KEY}.key"

    def secret(self, key_file: Path) -> str:
        text = key_file.read_text()
        return text.split('secret "', 1)[1].split('"', 1)[0]

    def dig(self, name: str, rdtype: str = "A") -> set[str]:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), name, rdtype, "+short", "+tcp",
             "+time=2", "+tries=1"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def query(self, name: str, rdtype: str = "A") -> tuple[set[str], int]:
        resp = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=2,
                             port=self.port)
        ips: set[str] = set()
        ttl = -1
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.RdataType.make(rdtype):
                ips |= {rd.address for rd in rrset}
                ttl = rrset.ttl
        return ips, ttl


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    if not (shutil.which("named") and shutil.which("tsig-keygen") and shutil.which("dig")):
        pytest.skip("BIND 9 is not installed (apt-get install -y bind9 bind9-dnsutils)")
    root = tmp_path_factory.mktemp("bind")
    port = free_port()
    for key in (KEY, OTHER_KEY):
        (root / f"{key}.key").write_text(subprocess.run(
            ["tsig-keygen", "-a", "hmac-sha256", key], capture_output=True, text=True,
            check=True).stdout)
    (root / "example.test.zone").write_text(
        "$TTL 300\n"
        "@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 30\n"
        "@ IN NS ns.example.test.\n"
        "ns IN A 127.0.0.1\n"
        "legacy IN A 127.0.0.99\n"
        "alias IN CNAME ns.example.test.\n"
    )
    (root / "named.conf").write_text(f"""
include "{root}/{KEY}.key";
include "{root}/{OTHER_KEY}.key";
options {{
    directory "{root}";
    pid-file "{root}/named.pid";
    session-keyfile "{root}/session.key";
    managed-keys-directory "{root}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "example.test" {{
    type primary;
    file "{root}/example.test.zone";
    allow-update {{ key "{KEY}"; }};
}};
""")
    log = open(root / "named.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["named", "-g", "-n", "1", "-c", str(root / "named.conf")],
                            stdout=log, stderr=subprocess.STDOUT)
    server = Bind(root, port, proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError("named exited:\n" + (root / "named.log").read_text())
            try:
                resp = dns.query.tcp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1",
                                     timeout=0.5, port=port)
                if resp.rcode() == dns.rcode.NOERROR and resp.answer:
                    break
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("named not ready:\n" + (root / "named.log").read_text())
            time.sleep(0.05)
        yield server
    finally:
        stop(proc)
        log.close()


def make_router(bind: Bind, state_dir: Path, name: str = "dns-test", **overrides: Any) -> DNSRouter:
    settings: dict[str, Any] = {
        "kind": "dns", "server": "127.0.0.1", "port": bind.port, "zone": ZONE,
        "tsig_key_name": KEY, "tsig_secret_file": str(bind.key_file), "timeout_s": 3,
    }
    settings.update(overrides)
    settings = {k: v for k, v in settings.items() if v is not None}
    router = DNSRouter(name, settings, PluginContext(state_dir, logging.getLogger("test.dns")))
    router.start()
    return router


def by_name(router: DNSRouter, route: str) -> dict[str, tuple[int, str]]:
    return {b.name: (b.weight, b.state) for b in router.backends(route)}


@pytest.fixture
def router(bind: Bind, tmp_path: Path) -> Iterator[DNSRouter]:
    r = make_router(bind, tmp_path)
    yield r
    r.close()


def test_registered_as_dns_plugin() -> None:
    registry = RouterRegistry()
    dnsrouter.imm_register_routers(registry)
    assert registry.get("dns") is DNSRouter


def test_add_is_pending_until_weighted(bind: Bind, router: DNSRouter, tmp_path: Path) -> None:
    route = "add.example.test."
    router.ensure_route(route, {})
    router.add(route, "i-blue-1", "127.0.0.11:8080")
    assert bind.dig(route) == set()
    assert by_name(router, route) == {"i-blue-1": (0, "ready")}
    state = json.loads((tmp_path / "dns" / "dns-test.json").read_text())
    assert state["routes"][route]["i-blue-1"]["ip"] == "127.0.0.11"

    router.set_weights(route, {"i-blue-1": 100})
    assert bind.dig(route) == {"127.0.0.11"}
    assert bind.query(route) == ({"127.0.0.11"}, 30)
    assert by_name(router, route) == {"i-blue-1": (100, "ready")}

    # add again is idempotent and does not take traffic away
    router.add(route, "i-blue-1", "127.0.0.11:8080")
    assert bind.dig(route) == {"127.0.0.11"}


def test_relative_route_and_ttl_override(bind: Bind, router: DNSRouter) -> None:
    router.ensure_route("rel", {"ttl": 7})
    router.add("rel", "a", "127.0.0.12")
    router.set_weights("rel", {"a": 1})
    assert bind.query("rel.example.test.") == ({"127.0.0.12"}, 7)


def test_blue_green_switch_is_never_empty(bind: Bind, router: DNSRouter) -> None:
    route = "switch.example.test."
    blue = {"b1": "127.0.1.1", "b2": "127.0.1.2"}
    green = {"g1": "127.0.2.1", "g2": "127.0.2.2"}
    for name, ip in blue.items():
        router.add(route, name, f"{ip}:80")
    router.set_weights(route, dict.fromkeys(blue, 1))
    assert bind.dig(route) == set(blue.values())
    for name, ip in green.items():
        router.add(route, name, f"{ip}:80")

    seen: list[frozenset[str]] = []
    stop_flag = threading.Event()

    def watch() -> None:
        while not stop_flag.is_set():
            seen.append(frozenset(bind.query(route)[0]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(0.05)
        # canary-like step: both sets, then the switch in one call, then back and forth
        router.set_weights(route, {"g1": 1})
        router.set_weights(route, {"g2": 1, "b1": 0, "b2": 0})
        router.set_weights(route, {"b1": 1, "b2": 1, "g1": 0, "g2": 0})
        router.set_weights(route, {"g1": 1, "g2": 1, "b1": 0, "b2": 0})
        time.sleep(0.05)
    finally:
        stop_flag.set()
        watcher.join()

    assert len(seen) > 10, len(seen)
    assert all(seen), "a query between steps saw an empty answer"
    allowed = {frozenset(blue.values()), frozenset(green.values()),
               frozenset(blue.values()) | {green["g1"]},
               frozenset(blue.values()) | frozenset(green.values())}
    assert set(seen) <= allowed
    assert {frozenset(blue.values()), frozenset(green.values())} <= set(seen)
    assert bind.dig(route) == set(green.values())
    assert by_name(router, route) == {
        "b1": (0, "ready"), "b2": (0, "ready"), "g1": (1, "ready"), "g2": (1, "ready")}


def test_drain_and_remove(bind: Bind, router: DNSRouter) -> None:
    route = "drain.example.test."
    router.add(route, "a", "127.0.3.1")
    router.add(route, "b", "127.0.3.2")
    router.set_weights(route, {"a": 1, "b": 1})
    router.drain(route, "a")
    assert bind.dig(route) == {"127.0.3.2"}
    assert by_name(router, route) == {"a": (0, "drain"), "b": (1, "ready")}
    router.remove(route, "a")
    router.remove(route, "a")  # absent is not an error
    assert by_name(router, route) == {"b": (1, "ready")}
    router.remove(route, "b")
    assert bind.dig(route) == set()
    assert router.backends(route) == []
    with pytest.raises(NotFound, match="no backend nope"):
        router.drain(route, "nope")
    with pytest.raises(NotFound, match="add it first"):
        router.set_weights(route, {"nope": 1})


def test_ipv6_and_shared_addresses(bind: Bind, router: DNSRouter) -> None:
    route = "v6.example.test."
    router.add(route, "v4", "127.0.4.1:8001")
    router.add(route, "v6", "[fd00::1]:8001")
    router.add(route, "v4-same-host", "127.0.4.1:8002")  # local instances share an IP
    router.set_weights(route, {"v4": 1, "v6": 1, "v4-same-host": 1})
    assert bind.dig(route, "A") == {"127.0.4.1"}
    assert bind.dig(route, "AAAA") == {"fd00::1"}
    router.drain(route, "v4")  # the other backend on that IP still wants it published
    assert bind.dig(route, "A") == {"127.0.4.1"}
    router.remove(route, "v4-same-host")
    assert bind.dig(route, "A") == set()
    assert bind.dig(route, "AAAA") == {"fd00::1"}


def test_records_imm_did_not_create(bind: Bind, router: DNSRouter) -> None:
    route = "legacy.example.test."
    assert by_name(router, route) == {"127.0.0.99": (1, "ready")}
    router.add(route, "new", "127.0.5.1")
    router.set_weights(route, {"new": 1})
    assert bind.dig(route) == {"127.0.0.99", "127.0.5.1"}
    router.remove(route, "127.0.0.99")
    assert bind.dig(route) == {"127.0.5.1"}
    with pytest.raises(RouterError, match="CNAME"):
        router.backends("alias.example.test.")


def test_wrong_secret_is_rejected_and_nothing_changes(bind: Bind, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    route = "wrongkey.example.test."
    good = make_router(bind, tmp_path)
    good.add(route, "a", "127.0.6.1")
    good.set_weights(route, {"a": 1})
    good.add(route, "b", "127.0.6.2")

    bad_secret = base64.b64encode(b"x" * 32).decode()
    (tmp_path / "bad.key").write_text(
        f'key "{KEY}" {{\n\talgorithm hmac-sha256;\n\tsecret "{bad_secret}";\n}};\n')
    bad = make_router(bind, tmp_path, tsig_secret_file=str(tmp_path / "bad.key"))
    with pytest.raises(RouterError) as err:
        bad.set_weights(route, {"b": 1, "a": 0})
    msg = str(err.value)
    assert "rejected the TSIG key imm-key" in msg and "BADSIG" in msg
    assert "tsig_key_name" in msg and "127.0.0.1" in msg
    assert bad_secret not in msg
    assert bind.dig(route) == {"127.0.6.1"}
    assert by_name(good, route) == {"a": (1, "ready"), "b": (0, "ready")}

    monkeypatch.setenv("IMM_TEST_TSIG", bad_secret)
    unknown = make_router(bind, tmp_path, tsig_key_name="no-such-key",
                          tsig_secret_file=None, tsig_secret_env="IMM_TEST_TSIG")
    with pytest.raises(RouterError, match="BADKEY"):
        unknown.set_weights(route, {"b": 1})
    assert bind.dig(route) == {"127.0.6.1"}


@pytest.mark.parametrize("how", ["unsigned", "other-key"])
def test_update_not_allowed_is_refused(bind: Bind, tmp_path: Path, how: str) -> None:
    route = f"refused-{how}.example.test."
    if how == "unsigned":
        router = make_router(bind, tmp_path, tsig_key_name=None, tsig_secret_file=None)
    else:
        router = make_router(bind, tmp_path, tsig_key_name=None,
                             tsig_secret_file=str(bind.other_key_file))
    router.add(route, "a", "127.0.7.1")
    with pytest.raises(RouterError) as err:
        router.set_weights(route, {"a": 1})
    assert "refused" in str(err.value) and "allow-update" in str(err.value)
    assert (OTHER_KEY in str(err.value)) == (how == "other-key")
    assert bind.dig(route) == set()
    assert by_name(router, route) == {"a": (0, "ready")}


def test_secret_sources(bind: Bind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = bind.secret(bind.key_file)
    (tmp_path / "raw").write_text(secret + "\n")
    monkeypatch.setenv("IMM_DNS_SECRET", secret)
    variants: dict[str, dict[str, Any]] = {
        "raw": {"tsig_secret_file": str(tmp_path / "raw")},
        "env": {"tsig_secret_file": None, "tsig_secret_env": "IMM_DNS_SECRET"},
        "keyfile-no-name": {"tsig_key_name": None},
    }
    for i, (label, overrides) in enumerate(variants.items()):
        router = make_router(bind, tmp_path / f"state-{label}", **overrides)
        route = f"src-{label}.example.test."
        router.add(route, "a", f"127.0.8.{i + 1}")
        router.set_weights(route, {"a": 1})
        assert bind.dig(route) == {f"127.0.8.{i + 1}"}


def test_compare_and_swap_retries_when_records_change(bind: Bind, router: DNSRouter,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    route = "cas.example.test."
    router.add(route, "a", "127.0.9.1")
    router.add(route, "b", "127.0.9.2")
    router.set_weights(route, {"a": 1})
    real_read = router.zone_api.read
    calls = []

    def stale_once(fqdn: Any) -> Any:
        calls.append(fqdn)
        if len(calls) == 1:  # what another writer's change would look like: our view is old
            return dnsrouter.RRsets({}, {})
        return real_read(fqdn)

    monkeypatch.setattr(router.zone_api, "read", stale_once)
    router.set_weights(route, {"b": 1})
    assert len(calls) == 2  # the server refused the stale write (prerequisite), we re-read
    assert bind.dig(route) == {"127.0.9.1", "127.0.9.2"}


def test_health_check(bind: Bind, tmp_path: Path) -> None:
    route = "health.example.test."
    listener = socket.create_server(("127.0.0.1", 0))
    up = listener.getsockname()[1]
    down = free_port()
    try:
        plain = make_router(bind, tmp_path)
        plain.add(route, "up", f"127.0.0.1:{up}")
        assert plain.health(route) == {"up": None}
        checked = make_router(bind, tmp_path, health_check={"timeout_s": 0.5})
        checked.add(route, "down", f"127.0.0.1:{down}")
        assert checked.health(route) == {"up": True, "down": False}
    finally:
        listener.close()


def test_bad_settings_and_addresses(bind: Bind, router: DNSRouter, tmp_path: Path) -> None:
    ctx = PluginContext(tmp_path, logging.getLogger("test.dns"))
    with pytest.raises(BadRequest, match="server .* or libcloud_driver"):
        DNSRouter("x", {"zone": ZONE}, ctx)
    with pytest.raises(BadRequest, match="needs zone"):
        DNSRouter("x", {"server": "127.0.0.1"}, ctx)
    with pytest.raises(BadRequest, match="ttl"):
        DNSRouter("x", {"server": "127.0.0.1", "zone": ZONE, "ttl": 0}, ctx)
    with pytest.raises(BadRequest, match="not inside zone"):
        router.add("web.other.test.", "a", "127.0.0.1")
    with pytest.raises(BadRequest, match="not an IP address"):
        router.add("x.example.test.", "a", "localhost:8080")
    missing = DNSRouter("x", {"server": "127.0.0.1", "zone": ZONE, "tsig_key_name": KEY,
                              "tsig_secret_file": str(tmp_path / "nope")}, ctx)
    with pytest.raises(RouterError, match="cannot read tsig_secret_file"):
        missing.start()


def test_server_down_names_server(tmp_path: Path) -> None:
    router = DNSRouter("x", {"server": "127.0.0.1", "port": free_port(), "zone": ZONE,
                             "timeout_s": 1}, PluginContext(tmp_path, logging.getLogger("t")))
    with pytest.raises(RouterError, match=r"DNS server 127\.0\.0\.1 port \d+, zone example"):
        router.backends("web.example.test.")


# --------------------------------------------------------------------------- Route53 via moto


@dataclass
class Route53:
    driver: Any  # libcloud's Route53 driver, adapted to moto: the independent check
    driver_name: str  # what the router's libcloud_driver setting names
    endpoint: str


@pytest.fixture
def r53(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Route53]:
    try:
        adapter = importlib.import_module("tests.adapters.route53")
    except ModuleNotFoundError:  # tests/ itself is on sys.path (pytest's rootdir-less mode)
        adapter = importlib.import_module("adapters.route53")

    urllib.request.urlopen(urllib.request.Request(moto + "/moto-api/reset", method="POST"),
                           timeout=5).close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDIMMTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "imm-test-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    name = adapter.register()
    from libcloud.dns.providers import get_driver

    port = int(moto.rsplit(":", 1)[1])
    driver = get_driver(name)("AKIDIMMTEST", "imm-test-secret", secure=False,
                              host="127.0.0.1", port=port)
    yield Route53(driver, name, moto)


def r53_values(driver: Any, zone: Any, rel: str) -> set[str]:
    return {r.data for r in driver.list_records(zone) if r.name == rel and r.type == "A"}


def test_route53_through_libcloud(r53: Route53, tmp_path: Path) -> None:
    zone = r53.driver.create_zone(ZONE)
    settings = {"libcloud_driver": r53.driver_name, "endpoint": r53.endpoint,
                "zone": ZONE, "ttl": 60}
    router = DNSRouter("r53", settings, PluginContext(tmp_path, logging.getLogger("t")))
    router.start()
    route = "web.example.test."
    router.ensure_route(route, {})
    router.add(route, "b1", "10.1.0.1:80")
    router.add(route, "b2", "10.1.0.2:80")
    assert r53_values(r53.driver, zone, "web") == set()
    router.set_weights(route, {"b1": 1, "b2": 1})
    assert r53_values(r53.driver, zone, "web") == {"10.1.0.1", "10.1.0.2"}
    assert {r.ttl for r in r53.driver.list_records(zone) if r.name == "web"} == {60}

    router.add(route, "g1", "10.2.0.1:80")
    router.add(route, "g2", "10.2.0.2:80")
    router.set_weights(route, {"g1": 1})
    assert r53_values(r53.driver, zone, "web") == {"10.1.0.1", "10.1.0.2", "10.2.0.1"}
    router.set_weights(route, {"g2": 1, "b1": 0, "b2": 0})  # one change batch: DELETE + CREATE
    assert r53_values(r53.driver, zone, "web") == {"10.2.0.1", "10.2.0.2"}
    assert by_name(router, route) == {
        "b1": (0, "ready"), "b2": (0, "ready"), "g1": (1, "ready"), "g2": (1, "ready")}

    router.drain(route, "g1")
    assert r53_values(r53.driver, zone, "web") == {"10.2.0.2"}
    for name in ("b1", "b2", "g1", "g2"):
        router.remove(route, name)
    assert r53_values(r53.driver, zone, "web") == set()
    assert router.backends(route) == []

    # by zone id too; a record another tool created is visible and removable
    r53.driver.ex_create_multi_value_record("api", zone, "A", "10.9.0.1\n10.9.0.2",
                                         extra={"ttl": 30})
    by_id = DNSRouter("r53-id", {**settings, "zone": None, "zone_id": zone.id},
                      PluginContext(tmp_path, logging.getLogger("t")))
    assert by_name(by_id, "api.example.test.") == {"10.9.0.1": (1, "ready"),
                                                   "10.9.0.2": (1, "ready")}
    by_id.remove("api.example.test.", "10.9.0.1")
    assert r53_values(r53.driver, zone, "api") == {"10.9.0.2"}


def test_route53_stale_view_is_retried(r53: Route53, tmp_path: Path) -> None:
    zone = r53.driver.create_zone(ZONE)
    r53.driver.ex_create_multi_value_record("cas", zone, "A", "10.3.0.1", extra={"ttl": 30})
    router = DNSRouter("r53", {"libcloud_driver": r53.driver_name,
                               "endpoint": r53.endpoint, "zone_id": zone.id},
                       PluginContext(tmp_path, logging.getLogger("t")))
    router.add("cas.example.test.", "a", "10.3.0.2")
    real_read = router.zone_api.read
    calls = []

    def stale_once(fqdn: Any) -> Any:
        calls.append(fqdn)
        if len(calls) == 1:
            return dnsrouter.RRsets({"A": frozenset({"10.3.0.9"})}, {"A": 30})
        return real_read(fqdn)

    router.zone_api.read = stale_once  # type: ignore[method-assign]
    router.set_weights("cas.example.test.", {"a": 1})
    assert len(calls) == 2
    assert r53_values(r53.driver, zone, "cas") == {"10.3.0.1", "10.3.0.2"}


def test_route53_missing_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDIMMTEST")
    router = DNSRouter("r53", {"libcloud_driver": "route53", "zone_id": "Z1"},
                       PluginContext(tmp_path, logging.getLogger("t")))
    with pytest.raises(RouterError, match="AWS_SECRET_ACCESS_KEY not set"):
        router.backends("web.example.test.")


# --------------------------------------------------------------------------- other libcloud DNS


class MemoryDNSDriver(DNSDriver):
    """A multi-record in-memory libcloud DNS driver (libcloud's dummy keeps one record per
    name), to exercise the path for providers without atomic change batches. It keeps a
    history of the name's addresses after every call."""

    name = "memory"
    zones: dict[str, Zone] = {}
    records: dict[str, Record] = {}
    history: list[set[str]] = []

    def __init__(self, key: str, secret: str | None = None, **kwargs: Any) -> None:
        self.key = key

    def iterate_zones(self) -> Iterator[Zone]:
        return iter(list(self.zones.values()))

    def get_zone(self, zone_id: str) -> Zone:
        return self.zones[zone_id]

    def iterate_records(self, zone: Zone) -> Iterator[Record]:
        return iter([r for r in self.records.values() if r.zone.id == zone.id])

    def create_record(self, name: str, zone: Zone, type: RecordType, data: str,
                      extra: dict[str, Any] | None = None) -> Record:
        rid = f"r{len(self.records)}-{data}"
        rec = Record(rid, name, type, data, zone, self, ttl=(extra or {}).get("ttl"))
        self.records[rid] = rec
        self._note()
        return rec

    def delete_record(self, record: Record) -> bool:
        for rid in [k for k, r in self.records.items() if r is record]:
            del self.records[rid]
        self._note()
        return True

    def _note(self) -> None:
        self.history.append({r.data for r in self.records.values() if r.name == "web"})


def test_libcloud_provider_without_batches(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        set_driver("imm_memory_dns", __name__, "MemoryDNSDriver")  # type: ignore[arg-type]
    except AttributeError:
        pass  # registered by an earlier run in this process
    monkeypatch.setenv("MEM_KEY", "k")
    MemoryDNSDriver.zones = {"z1": Zone("z1", "example.test", "master", 300,
                                            MemoryDNSDriver("k"))}
    MemoryDNSDriver.records = {}
    MemoryDNSDriver.history = []
    router = DNSRouter("mem", {"libcloud_driver": "imm_memory_dns", "key_env": "MEM_KEY",
                               "zone": ZONE},
                       PluginContext(tmp_path, logging.getLogger("t")))
    route = "web.example.test."
    router.ensure_route(route, {})
    for name, ip in (("b1", "10.5.0.1"), ("b2", "10.5.0.2"), ("g1", "10.6.0.1")):
        router.add(route, name, ip)
    router.set_weights(route, {"b1": 1, "b2": 1})
    MemoryDNSDriver.history = []
    router.set_weights(route, {"g1": 1, "b1": 0, "b2": 0})
    assert MemoryDNSDriver.history[-1] == {"10.6.0.1"}
    assert all(MemoryDNSDriver.history), "the name went empty during the switch"
    assert by_name(router, route) == {"b1": (0, "ready"), "b2": (0, "ready"), "g1": (1, "ready")}
    assert [(r.data, r.ttl) for r in MemoryDNSDriver.records.values()] == [("10.6.0.1", 30)]
