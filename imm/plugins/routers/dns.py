"""The ``dns`` router: moves traffic by rewriting a DNS name's A/AAAA records.

A route is a DNS name (``web.example.test.``) inside a zone the router may update; a backend is
one A or AAAA record of that name. Two ways to reach the zone, chosen by the settings:

- **RFC 2136 dynamic update** (``server = ...``) for BIND, PowerDNS, Knot, signed with TSIG.
  Every change is one UPDATE message that deletes the RRset and adds the new one, guarded by a
  prerequisite that the RRset still holds what was just read: the server applies it atomically,
  so a client resolving the name sees the old set or the new set, never an empty answer.
- **libcloud DNS** (``libcloud_driver = "route53"`` or another libcloud DNS provider). On Route53
  the multi-value record is replaced by one change batch (DELETE the old values, CREATE the new
  ones), which Route53 applies atomically. Other libcloud providers have no batch: records are
  created before the old ones are deleted, so the name is never empty, but for a moment it holds
  both sets.

What operators must know:

- **A DNS switch is not instant.** Resolvers and clients cache answers for the TTL (``ttl``,
  default 30 s) and some clients cache longer than they are told. After a blue→green switch keep
  the old instances serving for at least the TTL (imm's bake time) before they are retired.
- **Weights are membership.** Plain DNS has no weights: weight > 0 puts the backend's record in
  the RRset, weight 0 takes it out. Resolvers spread clients over the records roughly evenly, so
  a 10/90 canary is really 1-in-N by record count.
- ``add`` does not publish anything: the backend is remembered (in
  ``<state_dir>/dns/<router>.json``, written atomically) as pending at weight 0 until
  ``set_weights`` gives it a positive weight. ``drain`` and ``remove`` delete its record at once
  (DNS cannot let existing sessions finish: they do, because DNS does not cut connections, but
  new clients stop arriving only as caches expire); ``drain`` keeps the backend known, ``remove``
  forgets it.
- ``backends()`` reads the records from the server, which is the truth, and merges in what the
  state file knows (names, pending and drained backends). A record imm did not create shows up as
  a backend named after its address, so it can be taken over or removed.
- An address may be ``ip`` or ``ip:port``. DNS carries only the address: the port is ignored
  (and noted in the log) except for the optional TCP health check. Host names are refused: an
  A/AAAA record needs an IP address.
- DNS has no health checks of its own: ``healthy`` is None unless ``health_check`` is set, then
  it is a quick TCP connect to the backend's ip:port.

Settings (``[routers.NAME]`` in the config)::

    kind = "dns"
    zone = "example.test."            # zone to update (RFC 2136, and libcloud by name)
    ttl = 30                          # TTL of the records written
    timeout_s = 5.0                   # per DNS/API call
    health_check = false              # or true, or { port = 8080, timeout_s = 1.0 }

    # RFC 2136
    server = "127.0.0.1"              # the primary that accepts updates
    port = 53
    tsig_key_name = "imm-key"         # optional when tsig_secret_file holds exactly one key
    tsig_algorithm = "hmac-sha256"
    tsig_secret_file = "/etc/imm/dns.key"   # a tsig-keygen key file or a raw base64 secret
    tsig_secret_env = "IMM_DNS_TSIG"        # ... or the base64 secret in an environment variable

    # libcloud (Route53)
    libcloud_driver = "route53"
    zone_id = "Z0123456789ABC"        # or zone = "example.com."
    key_env = "AWS_ACCESS_KEY_ID"     # names of the environment variables holding credentials
    secret_env = "AWS_SECRET_ACCESS_KEY"
    token_env = "AWS_SESSION_TOKEN"   # used when set
    endpoint = "https://..."          # optional: an API endpoint other than the driver's own

A route is an absolute name (``web.example.test.``) or a name relative to ``zone`` (``web``).
A route's own settings (``ensure_route``) may override ``ttl``. Secrets never appear in messages
or logs: errors name the key, file or environment variable, not its value.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import random
import re
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET  # noqa: S405 - builds request bodies, parses nothing
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from ...errors import BadRequest, Conflict, NotFound, RouterError
from ..base import Backend, PluginContext, Router, RouterFeature
from ..hookspecs import hookimpl
from ..statefile import RouteState

if TYPE_CHECKING:
    from ..registry import RouterRegistry

DEFAULT_TTL = 30
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_HEALTH_TIMEOUT_S = 1.0
RDTYPES = ("A", "AAAA")
# How often a replace is retried when the records changed between our read and our write.
CAS_ATTEMPTS = 4

_KNOWN_SETTINGS = {
    "kind", "zone", "ttl", "timeout_s", "health_check",
    "server", "port", "tsig_key_name", "tsig_algorithm", "tsig_secret_file", "tsig_secret_env",
    "libcloud_driver", "zone_id", "key_env", "secret_env", "token_env", "endpoint",
}
_BIND_KEY_RE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RRsets:
    """The A and AAAA records of one name as read from the zone."""

    ips: dict[str, frozenset[str]] = field(default_factory=dict)  # "A"/"AAAA" -> addresses
    ttl: dict[str, int] = field(default_factory=dict)  # only for types that exist

    def get(self, rdtype: str) -> frozenset[str]:
        return self.ips.get(rdtype, frozenset())

    def all_ips(self) -> set[str]:
        return {ip for t in RDTYPES for ip in self.get(t)}


class Stale(Exception):
    """The records changed between read and write; read again and retry."""


def rdtype_of(ip: str) -> str:
    return "AAAA" if ipaddress.ip_address(ip).version == 6 else "A"


def parse_address(address: str) -> tuple[str, int | None]:
    """``ip``, ``ip:port``, ``[v6]:port`` or a bare v6 address -> (normalized ip, port)."""
    text = address.strip()
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadRequest(f"address {address!r} is malformed; use ip, ip:port or [ipv6]:port")
        port = _port(rest[1:], address) if rest else None
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise BadRequest(
            f"address {address!r} is not an IP address: a DNS A/AAAA record needs one "
            f"(give the instance's IP, optionally with :port)"
        ) from None
    return ip.compressed, port


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadRequest(f"address {address!r} has an invalid port {text!r}")
    return int(text)


def tcp_check(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- settings helpers


def _int(settings: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"dns router setting {key} = {value!r} must be an integer {lo}..{hi}")
    return value


def _float(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest(f"dns router setting {key} = {value!r} must be a positive number")
    return float(value)


def _str(settings: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = settings.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise BadRequest(f"dns router setting {key} = {value!r} must be a non-empty string")
    return value.strip() if isinstance(value, str) else None


def _zone_name(text: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise BadRequest(f"dns router zone {text!r} is not a valid DNS name: {exc}") from None


# --------------------------------------------------------------------------- RFC 2136


@dataclass
class Tsig:
    keyring: dict[dns.name.Name, dns.tsig.Key]
    keyname: dns.name.Name
    algorithm: dns.name.Name


class Rfc2136Zone:
    """Reads with a plain TCP query, writes with TSIG-signed UPDATE messages, to one server."""

    def __init__(self, settings: Mapping[str, Any], zone: dns.name.Name, timeout: float) -> None:
        self.server = _str(settings, "server") or ""
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            raise BadRequest(
                f"dns router setting server = {self.server!r} must be the IP address of the "
                f"primary server that accepts updates"
            ) from None
        self.port = _int(settings, "port", 53, 1, 65535)
        self.zone = zone
        self.timeout = timeout
        self.key_name = _str(settings, "tsig_key_name")
        self.algorithm = _str(settings, "tsig_algorithm")
        self.secret_file = _str(settings, "tsig_secret_file")
        self.secret_env = _str(settings, "tsig_secret_env")
        if self.secret_file and self.secret_env:
            raise BadRequest("dns router: set tsig_secret_file or tsig_secret_env, not both")
        if self.secret_env and not self.key_name:
            raise BadRequest("dns router: tsig_secret_env needs tsig_key_name")
        if self.key_name and not (self.secret_file or self.secret_env):
            raise BadRequest(
                f"dns router: tsig_key_name {self.key_name!r} is set but no secret: set "
                f"tsig_secret_file or tsig_secret_env"
            )

    @property
    def where(self) -> str:
        return f"DNS server {self.server} port {self.port}, zone {self.zone}"

    # -- TSIG material, read on every write so a rotated key file is picked up

    def tsig(self) -> Tsig | None:
        if not (self.secret_file or self.secret_env):
            return None
        name, algorithm, secret = self.key_name, self.algorithm, ""
        if self.secret_file:
            try:
                text = Path(self.secret_file).read_text()
            except OSError as exc:
                raise RouterError(
                    f"dns router cannot read tsig_secret_file {self.secret_file}: "
                    f"{exc.strerror}; check the path and that immd may read it"
                ) from None
            blocks = _BIND_KEY_RE.findall(text)
            if blocks:
                name, algorithm, secret = self._pick_key(blocks)
            else:
                secret = text.strip()
        else:
            assert self.secret_env is not None
            secret = os.environ.get(self.secret_env, "").strip()
            if not secret:
                raise RouterError(
                    f"dns router: environment variable {self.secret_env} (tsig_secret_env) is "
                    f"not set or empty; set it to the TSIG key's base64 secret"
                )
        if not name:
            raise BadRequest(
                f"dns router: tsig_secret_file {self.secret_file} holds a bare secret: set "
                f"tsig_key_name to the key's name as the server knows it"
            )
        source = self.secret_file or f"${self.secret_env}"
        try:
            base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"dns router: the TSIG secret in {source} is not valid base64"
            ) from None
        try:
            keyname = dns.name.from_text(name)
            alg = dns.name.from_text(algorithm or "hmac-sha256")
            key = dns.tsig.Key(keyname, secret, alg)
        except (dns.exception.DNSException, ValueError) as exc:
            raise BadRequest(f"dns router: TSIG key {name!r} from {source} is unusable: "
                             f"{type(exc).__name__} (check tsig_algorithm)") from None
        return Tsig({keyname: key}, keyname, alg)

    def _pick_key(self, blocks: list[tuple[str, str]]) -> tuple[str, str | None, str]:
        wanted = dns.name.from_text(self.key_name) if self.key_name else None
        chosen = None
        for name, body in blocks:
            if wanted is None or dns.name.from_text(name) == wanted:
                if chosen is not None and wanted is None:
                    raise BadRequest(
                        f"dns router: {self.secret_file} holds several keys; set tsig_key_name"
                    )
                chosen = (name, body)
                if wanted is not None:
                    break
        if chosen is None:
            raise BadRequest(
                f"dns router: no key named {self.key_name!r} in {self.secret_file} "
                f"(it holds {', '.join(n for n, _ in blocks)})"
            )
        name, body = chosen
        alg_m = re.search(r"algorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;", body)
        sec_m = re.search(r'secret\s+"([^"]+)"\s*;', body)
        if not sec_m:
            raise BadRequest(f"dns router: key {name!r} in {self.secret_file} has no secret")
        file_alg = alg_m.group(1) if alg_m else None
        if self.algorithm and file_alg and (
            dns.name.from_text(self.algorithm) != dns.name.from_text(file_alg)
        ):
            raise BadRequest(
                f"dns router: tsig_algorithm {self.algorithm!r} differs from the algorithm "
                f"{file_alg!r} of key {name!r} in {self.secret_file}; drop one of them"
            )
        return name, self.algorithm or file_alg, sec_m.group(1)

    # -- reads

    def _exchange(self, msg: dns.message.Message, what: str) -> dns.message.Message:
        try:
            return dns.query.tcp(msg, self.server, timeout=self.timeout, port=self.port)
        except dns.exception.Timeout:
            raise RouterError(
                f"{self.where}: no answer to {what} within {self.timeout:g}s; check that the "
                f"server runs and listens on TCP port {self.port}"
            ) from None
        except OSError as exc:
            raise RouterError(
                f"{self.where}: cannot reach the server for {what}: {exc.strerror or exc}; "
                f"check server/port and that it listens on TCP"
            ) from None

    def check(self) -> None:
        what = f"the SOA query of {self.zone}"
        resp = self._exchange(dns.message.make_query(self.zone, "SOA"), what)
        aa = bool(resp.flags & dns.flags.AA)
        if resp.rcode() != dns.rcode.NOERROR or not aa or not resp.answer:
            raise RouterError(
                f"{self.where}: the server is not authoritative for the zone (SOA answer "
                f"{dns.rcode.to_text(resp.rcode())}, aa={aa}); point server at the zone's "
                f"primary and check zone"
            )

    def read(self, fqdn: dns.name.Name) -> RRsets:
        ips: dict[str, frozenset[str]] = {}
        ttl: dict[str, int] = {}
        for rdtype in RDTYPES:
            what = f"the {rdtype} query for {fqdn}"
            resp = self._exchange(dns.message.make_query(fqdn, rdtype), what)
            rcode = resp.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                continue
            if rcode == dns.rcode.REFUSED:
                raise RouterError(f"{self.where}: {what} was REFUSED; the zone's allow-query "
                                  f"must permit this host (imm reads records unsigned)")
            if rcode != dns.rcode.NOERROR:
                raise RouterError(f"{self.where}: {what} was answered "
                                  f"{dns.rcode.to_text(rcode)}; check the server's log")
            if not resp.flags & dns.flags.AA:
                raise RouterError(f"{self.where}: the answer to {what} is not authoritative; "
                                  f"point server at the zone's primary")
            for rrset in resp.answer:
                if rrset.name == fqdn and rrset.rdtype == dns.rdatatype.CNAME:
                    raise RouterError(f"{self.where}: {fqdn} is a CNAME; the dns router needs "
                                      f"a name that holds A/AAAA records (delete the CNAME)")
            found = resp.get_rrset(resp.answer, fqdn, dns.rdataclass.IN,
                                   dns.rdatatype.RdataType.make(rdtype))
            if found:
                ips[rdtype] = frozenset(ipaddress.ip_address(rd.address).compressed
                                        for rd in found)
                ttl[rdtype] = found.ttl
        return RRsets(ips, ttl)

    # -- writes

    def replace(self, fqdn: dns.name.Name, current: RRsets, desired: Mapping[str, set[str]],
                ttl: int) -> None:
        tsig = self.tsig()
        upd = dns.update.UpdateMessage(
            self.zone,
            keyring=tsig.keyring if tsig else None,
            keyname=tsig.keyname if tsig else None,
            keyalgorithm=tsig.algorithm if tsig else dns.tsig.default_algorithm,
        )
        for rdtype in RDTYPES:
            old, new = current.get(rdtype), desired.get(rdtype, set())
            if old == new:
                continue
            # Compare-and-swap: applied only if the RRset still is what we read.
            if old:
                upd.present(fqdn, *[dns.rdata.from_text("IN", rdtype, ip) for ip in sorted(old)])
            else:
                upd.absent(fqdn, rdtype)
            upd.delete(fqdn, rdtype)
            for ip in sorted(new):
                upd.add(fqdn, ttl, rdtype, ip)
        what = f"the update of {fqdn}"
        try:
            resp = dns.query.tcp(upd, self.server, timeout=self.timeout, port=self.port)
        except dns.tsig.PeerBadKey:
            raise self._rejected(tsig, "BADKEY: the server knows no key by that name and "
                                 "algorithm") from None
        except dns.tsig.PeerBadSignature:
            raise self._rejected(tsig, "BADSIG: the secret does not match the server's") from None
        except dns.tsig.PeerBadTime:
            raise self._rejected(tsig, "BADTIME: the clocks of this host and the server differ "
                                 "by more than the fudge; fix the time (NTP)") from None
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadTime,
                dns.message.UnknownTSIGKey) as exc:
            raise self._rejected(tsig, type(exc).__name__) from None
        except dns.exception.Timeout:
            raise RouterError(
                f"{self.where}: no answer to {what} within {self.timeout:g}s; it may or may not "
                f"have been applied (backends() shows the records); check the server"
            ) from None
        except OSError as exc:
            raise RouterError(f"{self.where}: cannot reach the server for {what}: "
                              f"{exc.strerror or exc}; check server/port") from None
        rcode = resp.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN,
                     dns.rcode.YXDOMAIN):
            raise Stale(dns.rcode.to_text(rcode))
        key = f"TSIG key {tsig.keyname}" if tsig else "unsigned updates"
        hints = {
            dns.rcode.REFUSED: (
                f"the server refused it: the zone's allow-update (or update-policy) must "
                f"permit {key}"
                + ("" if tsig else "; configure tsig_key_name and a secret")
            ),
            dns.rcode.NOTAUTH: (
                f"the server is not authoritative for zone {self.zone} or rejected {key} "
                f"(NOTAUTH); check zone and the key"
            ),
            dns.rcode.NOTZONE: f"{fqdn} is not inside zone {self.zone} (NOTZONE)",
            dns.rcode.SERVFAIL: (
                "the server failed to apply it (SERVFAIL); check its log, e.g. that it may "
                "write the zone's journal file"
            ),
        }
        hint = hints.get(rcode, f"the server answered {dns.rcode.to_text(rcode)}")
        raise RouterError(f"{self.where}: {what} was not applied: {hint}")

    def _rejected(self, tsig: Tsig | None, why: str) -> RouterError:
        name = tsig.keyname if tsig else "(none)"
        alg = tsig.algorithm if tsig else "-"
        return RouterError(
            f"{self.where}: the server rejected the TSIG key {name} ({alg}): {why}. Nothing was "
            f"changed. Check tsig_key_name, tsig_algorithm and the secret against the key in "
            f"the server's configuration"
        )

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- libcloud


class LibcloudZone:
    """A zone behind a libcloud DNS driver; Route53 gets atomic change batches."""

    def __init__(self, settings: Mapping[str, Any], zone: dns.name.Name | None,
                 timeout: float) -> None:
        self.driver_name = _str(settings, "libcloud_driver") or ""
        self.zone_id = _str(settings, "zone_id")
        self.zone_name = zone
        if not self.zone_id and zone is None:
            raise BadRequest("dns router with libcloud_driver needs zone_id or zone")
        default_key = "AWS_ACCESS_KEY_ID" if "route53" in self.driver_name.lower() else None
        default_secret = "AWS_SECRET_ACCESS_KEY" if default_key else None
        self.key_env = _str(settings, "key_env", default_key)
        self.secret_env = _str(settings, "secret_env", default_secret)
        self.token_env = _str(settings, "token_env",
                              "AWS_SESSION_TOKEN" if default_key else None)
        if not self.key_env:
            raise BadRequest(f"dns router libcloud_driver {self.driver_name!r} needs key_env "
                             f"(the environment variable that holds the API key)")
        self.endpoint = _str(settings, "endpoint")
        self.timeout = timeout
        self._driver: Any = None
        self._zone: Any = None
        self._secrets: list[str] = []
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        zone = self.zone_id or self.zone_name
        return f"libcloud DNS {self.driver_name}, zone {zone}"

    # -- driver and zone, built on first use

    def driver(self) -> Any:
        with self._lock:
            if self._driver is None:
                self._driver = self._make_driver()
            return self._driver

    def _make_driver(self) -> Any:
        from libcloud.dns.providers import get_driver

        try:
            cls = get_driver(self.driver_name)
        except AttributeError:
            raise BadRequest(f"dns router: libcloud has no DNS driver {self.driver_name!r} "
                             f"(e.g. route53, google, cloudflare)") from None
        key = os.environ.get(self.key_env or "", "")
        secret = os.environ.get(self.secret_env, "") if self.secret_env else None
        if not key or (self.secret_env and not secret):
            missing = [n for n, v in ((self.key_env, key), (self.secret_env, secret))
                       if n and not v]
            raise RouterError(f"{self.where}: credentials missing: environment variable(s) "
                              f"{', '.join(str(m) for m in missing)} not set")
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        token = os.environ.get(self.token_env) if self.token_env else None
        if token:
            kwargs["token"] = token
        if self.endpoint:
            url = urllib.parse.urlsplit(self.endpoint)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise BadRequest(f"dns router endpoint {self.endpoint!r} must be an http(s) URL")
            kwargs.update(host=url.hostname, secure=url.scheme == "https",
                          port=url.port or (443 if url.scheme == "https" else 80))
        self._secrets = [v for v in (key, secret, token) if v]
        try:
            return cls(key, secret, **kwargs) if secret is not None else cls(key, **kwargs)
        except Exception as exc:  # a driver's constructor can raise anything
            raise RouterError(f"{self.where}: cannot set up the driver: "
                              f"{type(exc).__name__}: {self._redact(str(exc))}") from None

    def _redact(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def zone(self) -> Any:
        if self._zone is None:
            driver = self.driver()
            if self.zone_id:
                self._zone = self._call("get_zone", driver.get_zone, self.zone_id)
            else:
                want = str(self.zone_name).lower()
                found = [z for z in self._call("list_zones", lambda: list(driver.iterate_zones()))
                         if (z.domain.lower().rstrip(".") + ".") == want]
                if len(found) != 1:
                    raise RouterError(
                        f"{self.where}: {len(found)} zones are named {self.zone_name}; "
                        + ("set zone_id" if found else "check zone and the account")
                    )
                self._zone = found[0]
        return self._zone

    @property
    def is_route53(self) -> bool:
        from libcloud.dns.drivers.route53 import Route53DNSDriver

        return isinstance(self.driver(), Route53DNSDriver)

    def _call(self, call: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one driver call with retries on throttling; map libcloud errors to RouterError."""
        from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
        from libcloud.common.types import InvalidCredsError, LibcloudError
        from libcloud.dns.types import ZoneDoesNotExistError

        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except InvalidCredsError:
                raise RouterError(
                    f"{self.where}: {call} was refused: the credentials in ${self.key_env}/"
                    f"${self.secret_env} are invalid or lack DNS permissions (Route53: "
                    f"route53:ListResourceRecordSets, route53:ChangeResourceRecordSets)"
                ) from None
            except ZoneDoesNotExistError:
                raise RouterError(f"{self.where}: {call}: the zone does not exist; check "
                                  f"zone_id/zone and the account") from None
            except (RateLimitReachedError, BaseHTTPError, LibcloudError) as exc:
                text = self._redact(str(getattr(exc, "message", None) or exc)
                                    or type(exc).__name__)
                throttled = isinstance(exc, RateLimitReachedError) or any(
                    s in text for s in ("Throttling", "PriorRequestNotComplete", "Rate exceeded"))
                if throttled and attempt < 3:
                    time.sleep(0.2 * 2**attempt * (0.5 + random.random()))  # noqa: S311
                    continue
                raise RouterError(f"{self.where}: {call} failed: {text}") from None
            except OSError as exc:
                raise RouterError(f"{self.where}: {call}: cannot reach the API: "
                                  f"{exc.strerror or exc}; check the network/endpoint") from None
        raise AssertionError("unreachable")

    def check(self) -> None:
        self.zone()

    def _fqdn_rel(self, fqdn: dns.name.Name) -> tuple[str, str]:
        zone = self.zone()
        origin = dns.name.from_text(zone.domain)
        if not fqdn.is_subdomain(origin):
            raise BadRequest(f"route {fqdn} is not inside zone {zone.domain}")
        rel = fqdn.relativize(origin)
        return fqdn.to_text().lower(), "" if rel == dns.name.empty else rel.to_text()

    # -- reads

    def read(self, fqdn: dns.name.Name) -> RRsets:
        if self.is_route53:
            return self._r53_read(fqdn)
        full, rel = self._fqdn_rel(fqdn)
        ips: dict[str, set[str]] = {}
        ttl: dict[str, int] = {}
        for rec in self._records(rel):
            ips.setdefault(rec.type, set()).add(ipaddress.ip_address(rec.data).compressed)
            if rec.ttl is not None:
                ttl[rec.type] = int(rec.ttl)
        return RRsets({t: frozenset(v) for t, v in ips.items()}, ttl)

    def _records(self, rel: str) -> list[Any]:
        zone = self.zone()
        recs = self._call("list_records", lambda: list(self.driver().iterate_records(zone)))
        return [r for r in recs if r.type in RDTYPES
                and ((r.name or "") == rel or (not rel and r.name == "@"))]

    def _r53_read(self, fqdn: dns.name.Name) -> RRsets:
        from libcloud.dns.drivers import route53 as r53
        from libcloud.utils.xml import findall, findtext

        zone = self.zone()
        full, _ = self._fqdn_rel(fqdn)
        ips: dict[str, frozenset[str]] = {}
        ttl: dict[str, int] = {}
        conn = self.driver().connection
        for rdtype in RDTYPES:
            params = urllib.parse.urlencode({"name": full, "type": rdtype, "maxitems": "1"})
            path = f"{r53.API_ROOT}hostedzone/{zone.id}/rrset?{params}"

            def get(path: str = path) -> Any:
                conn.set_context({"zone_id": zone.id})
                return conn.request(path).object

            data = self._call("ListResourceRecordSets", get)
            for rrs in findall(data, "ResourceRecordSets/ResourceRecordSet", r53.NAMESPACE):
                name = (findtext(rrs, "Name", r53.NAMESPACE) or "").lower()
                if name.rstrip(".") + "." != full or findtext(rrs, "Type", r53.NAMESPACE) != rdtype:
                    continue
                if findtext(rrs, "SetIdentifier", r53.NAMESPACE) or findall(
                        rrs, "AliasTarget", r53.NAMESPACE):
                    raise RouterError(
                        f"{self.where}: {full} {rdtype} is an alias or has a routing policy "
                        f"(SetIdentifier); the dns router manages simple multi-value records only"
                    )
                values = [findtext(v, "Value", r53.NAMESPACE) or "" for v in
                          findall(rrs, "ResourceRecords/ResourceRecord", r53.NAMESPACE)]
                ips[rdtype] = frozenset(ipaddress.ip_address(v).compressed for v in values)
                ttl[rdtype] = int(findtext(rrs, "TTL", r53.NAMESPACE) or 0)
        return RRsets(ips, ttl)

    # -- writes

    def replace(self, fqdn: dns.name.Name, current: RRsets, desired: Mapping[str, set[str]],
                ttl: int) -> None:
        if self.is_route53:
            self._r53_replace(fqdn, current, desired, ttl)
        else:
            self._generic_replace(fqdn, current, desired, ttl)

    def _r53_replace(self, fqdn: dns.name.Name, current: RRsets,
                     desired: Mapping[str, set[str]], ttl: int) -> None:
        from libcloud.dns.drivers import route53 as r53

        zone = self.zone()
        full, _ = self._fqdn_rel(fqdn)
        req = ET.Element("ChangeResourceRecordSetsRequest", {"xmlns": r53.NAMESPACE})
        changes = ET.SubElement(ET.SubElement(req, "ChangeBatch"), "Changes")

        def change(action: str, rdtype: str, rttl: int, values: Iterable[str]) -> None:
            ch = ET.SubElement(changes, "Change")
            ET.SubElement(ch, "Action").text = action
            rrs = ET.SubElement(ch, "ResourceRecordSet")
            ET.SubElement(rrs, "Name").text = full
            ET.SubElement(rrs, "Type").text = rdtype
            ET.SubElement(rrs, "TTL").text = str(rttl)
            recs = ET.SubElement(rrs, "ResourceRecords")
            for v in sorted(values):
                ET.SubElement(ET.SubElement(recs, "ResourceRecord"), "Value").text = v

        for rdtype in RDTYPES:
            old, new = current.get(rdtype), desired.get(rdtype, set())
            if old == new:
                continue
            if old:  # DELETE must name the exact values: it doubles as compare-and-swap
                change("DELETE", rdtype, current.ttl.get(rdtype, ttl), old)
            if new:
                change("CREATE", rdtype, ttl, new)
        body = ET.tostring(req)
        conn = self.driver().connection

        def post() -> Any:
            conn.set_context({"zone_id": zone.id})
            return conn.request(f"{r53.API_ROOT}hostedzone/{zone.id}/rrset", method="POST",
                                data=body)

        try:
            self._call("ChangeResourceRecordSets", post)
        except RouterError:
            # A DELETE that no longer matches fails the whole batch (nothing is applied).
            # Route53 words that in several ways; what matters is whether the set moved.
            if self._r53_read(fqdn) != current:
                raise Stale("the record set changed since it was read") from None
            raise

    def _generic_replace(self, fqdn: dns.name.Name, current: RRsets,
                         desired: Mapping[str, set[str]], ttl: int) -> None:
        from libcloud.dns.types import RecordType

        _, rel = self._fqdn_rel(fqdn)
        zone = self.zone()
        driver = self.driver()
        for rdtype in RDTYPES:  # create first: the name never goes empty
            for ip in sorted(desired.get(rdtype, set()) - current.get(rdtype)):
                self._call("create_record", driver.create_record, rel, zone,
                           getattr(RecordType, rdtype), ip, extra={"ttl": ttl})
        gone = {ip for t in RDTYPES for ip in current.get(t) - desired.get(t, set())}
        for rec in self._records(rel):
            if ipaddress.ip_address(rec.data).compressed in gone:
                self._call("delete_record", driver.delete_record, rec)

    def close(self) -> None:
        self._driver = None
        self._zone = None


# --------------------------------------------------------------------------- the router


class DNSRouter(Router):
    kind = "dns"
    features = frozenset({RouterFeature.HEALTH_CHECK})  # when health_check is set

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        unknown = sorted(set(s) - _KNOWN_SETTINGS)
        if unknown:
            context.log.warning("dns router %s: ignoring unknown settings %s", name,
                                ", ".join(unknown))
        self.ttl = _int(s, "ttl", DEFAULT_TTL, 1, 2**31 - 1)
        timeout = _float(s, "timeout_s", DEFAULT_TIMEOUT_S)
        zone_text = _str(s, "zone")
        zone = _zone_name(zone_text) if zone_text else None
        self.health_port, self.health_timeout, self.health_on = self._health_settings(s)
        self.zone_api: Rfc2136Zone | LibcloudZone
        if s.get("libcloud_driver"):
            if s.get("server"):
                raise BadRequest(f"dns router {name}: set server (RFC 2136) or libcloud_driver, "
                                 f"not both")
            self.zone_api = LibcloudZone(s, zone, timeout)
        elif s.get("server"):
            if zone is None:
                raise BadRequest(f"dns router {name}: RFC 2136 needs zone (e.g. "
                                 f"zone = \"example.test.\")")
            self.zone_api = Rfc2136Zone(s, zone, timeout)
        else:
            raise BadRequest(f"dns router {name}: set server (RFC 2136 dynamic update) or "
                             f"libcloud_driver (e.g. \"route53\")")
        self.zone = zone
        safe = name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".") else \
            urllib.parse.quote(name, safe="")
        self.state = RouteState(context.state_dir / "dns" / f"{safe}.json", f"dns router {name}",
                                "what DNS holds")
        self._route_ttl: dict[str, int] = {}
        self._lock = threading.RLock()

    def supports(self, feature: RouterFeature | str) -> bool:
        if feature == RouterFeature.HEALTH_CHECK:
            return self.health_on
        return super().supports(feature)

    @staticmethod
    def _health_settings(s: Mapping[str, Any]) -> tuple[int | None, float, bool]:
        hc = s.get("health_check", False)
        if hc is False or hc is None:
            return None, DEFAULT_HEALTH_TIMEOUT_S, False
        if hc is True:
            return None, DEFAULT_HEALTH_TIMEOUT_S, True
        if isinstance(hc, Mapping):
            port = _int(hc, "port", 0, 0, 65535) or None
            return port, _float(hc, "timeout_s", DEFAULT_HEALTH_TIMEOUT_S), True
        raise BadRequest(f"dns router setting health_check = {hc!r} must be true/false or a "
                         f"table {{ port = N, timeout_s = S }}")

    # -- names

    def fqdn(self, route: str) -> dns.name.Name:
        try:
            name = dns.name.from_text(route, origin=self.zone or dns.name.root)
        except dns.exception.DNSException as exc:
            raise BadRequest(f"route {route!r} is not a valid DNS name: {exc}") from None
        if self.zone is not None and not name.is_subdomain(self.zone):
            raise BadRequest(f"route {route!r} is not inside zone {self.zone} of dns router "
                             f"{self.name}")
        return name

    def _key(self, route: str) -> tuple[dns.name.Name, str]:
        name = self.fqdn(route)
        return name, name.to_text().lower()

    # -- lifecycle

    def start(self) -> None:
        if isinstance(self.zone_api, Rfc2136Zone):
            self.zone_api.tsig()  # fail at start-up on an unreadable or malformed key

    def close(self) -> None:
        self.zone_api.close()

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        _, key = self._key(route)
        if "ttl" in settings:
            self._route_ttl[key] = _int(settings, "ttl", DEFAULT_TTL, 1, 2**31 - 1)
        with self._lock:
            self.zone_api.check()

    # -- reads

    def backends(self, route: str) -> list[Backend]:
        fqdn, key = self._key(route)
        with self._lock:
            members = self.state.load().get(key, {})
            live = self.zone_api.read(fqdn).all_ips()
        out: list[Backend] = []
        known_ips: set[str] = set()
        for name in sorted(members):
            m = members[name]
            known_ips.add(m["ip"])
            in_dns = m["ip"] in live
            weight = int(m.get("weight", 0)) if in_dns else 0
            state = m.get("state", "ready")
            out.append(Backend(name=name, address=m["address"], weight=weight, state=state,
                               healthy=None))
        for ip in sorted(live - known_ips):
            out.append(Backend(name=ip, address=ip, weight=1, state="ready", healthy=None))
        if self.health_on:
            self._check_health(out)
        return out

    def _check_health(self, backends: list[Backend]) -> None:
        targets: list[tuple[Backend, str, int]] = []
        for b in backends:
            ip, port = parse_address(b.address)
            port = self.health_port or port
            if port:
                targets.append((b, ip, port))
        if not targets:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
            results = pool.map(lambda t: tcp_check(t[1], t[2], self.health_timeout), targets)
            for (b, _, _), ok in zip(targets, results, strict=True):
                b.healthy = ok

    # -- changes

    def add(self, route: str, name: str, address: str) -> None:
        fqdn, key = self._key(route)
        ip, port = parse_address(address)
        if port is not None:
            self.context.log.info(
                "dns router %s: %s on %s: port %d of %s is ignored by DNS (records carry the "
                "address only)%s", self.name, name, key, port, address,
                "; it is used for the health check" if self.health_on else "")
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(key, {})
            old = members.get(name)
            if old is not None:
                if old["ip"] == ip:
                    if old["address"] != address:
                        old["address"] = address
                        self.state.save(routes)
                    return
                raise Conflict(f"dns router {self.name}: backend {name} on {key} already has "
                               f"address {old['address']}; remove it before adding it with "
                               f"{address}")
            if ip in self.zone_api.read(fqdn).all_ips():
                self.context.log.warning(
                    "dns router %s: %s is already published for %s (another backend or a "
                    "record imm did not create): %s takes traffic now", self.name, ip, key, name)
            members[name] = {"address": address, "ip": ip, "weight": 0, "state": "ready"}
            self.state.save(routes)

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        fqdn, key = self._key(route)
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise BadRequest(f"weight {w!r} for backend {name} must be an integer >= 0")
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(key, {})
            foreign = {n for n in weights if n not in members}
            if foreign:
                live = self.zone_api.read(fqdn).all_ips()
                missing = sorted(n for n in foreign if _as_ip(n) not in live)
                if missing:
                    raise NotFound(f"dns router {self.name}: no backend {', '.join(missing)} on "
                                   f"{key}; add it first")
            touched: set[str] = set()
            drop: set[str] = set()
            for name, w in weights.items():
                if name in foreign:
                    if w == 0:
                        drop.add(_as_ip(name) or name)
                    continue
                m = members[name]
                m["weight"] = w
                if w > 0:
                    m["state"] = "ready"
                touched.add(m["ip"])
            self._apply(fqdn, key, members, touched, drop)
            self.state.save(routes)

    def drain(self, route: str, name: str) -> None:
        fqdn, key = self._key(route)
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(key, {})
            m = members.get(name)
            if m is None:
                ip = _as_ip(name)
                if ip and ip in self.zone_api.read(fqdn).all_ips():
                    self._apply(fqdn, key, members, set(), {ip})
                    return
                raise NotFound(f"dns router {self.name}: no backend {name} on {key}")
            m["weight"], m["state"] = 0, "drain"
            self._apply(fqdn, key, members, {m["ip"]}, set())
            self.state.save(routes)

    def remove(self, route: str, name: str) -> None:
        fqdn, key = self._key(route)
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(key, {})
            m = members.pop(name, None)
            if m is None:
                ip = _as_ip(name)
                if ip and ip in self.zone_api.read(fqdn).all_ips():
                    self._apply(fqdn, key, members, set(), {ip})
                return
            self._apply(fqdn, key, members, {m["ip"]}, set())
            if not members:
                routes.pop(key, None)
            self.state.save(routes)

    def _apply(self, fqdn: dns.name.Name, key: str, members: Mapping[str, Mapping[str, Any]],
               touched: set[str], drop: set[str]) -> None:
        """Bring the addresses in ``touched``/``drop`` to what ``members`` says, atomically.

        An address is published while any backend with it has weight > 0 and is not drained;
        addresses nobody touched are left as they are (including records imm did not create).
        """
        ttl = self._route_ttl.get(key, self.ttl)
        last = ""
        for _attempt in range(CAS_ATTEMPTS):
            current = self.zone_api.read(fqdn)
            desired = {t: set(current.get(t)) for t in RDTYPES}
            for ip in touched | drop:
                want = ip not in drop and any(
                    m["ip"] == ip and int(m.get("weight", 0)) > 0
                    and m.get("state", "ready") == "ready" for m in members.values())
                (desired[rdtype_of(ip)].add if want else desired[rdtype_of(ip)].discard)(ip)
            if all(desired[t] == current.get(t) for t in RDTYPES):
                return
            if not any(desired.values()):
                self.context.log.warning("dns router %s: %s now has no A/AAAA records",
                                         self.name, key)
            try:
                self.zone_api.replace(fqdn, current, desired, ttl)
            except Stale as exc:
                last = str(exc)
                continue
            self.context.log.info(
                "dns router %s: %s %s -> %s (ttl %d)", self.name, key,
                sorted(current.all_ips()), sorted(ip for v in desired.values() for ip in v), ttl)
            return
        raise RouterError(f"{self.zone_api.where}: the records of {key} changed under every one "
                          f"of {CAS_ATTEMPTS} attempts to update them (last: {last}); is "
                          f"another writer managing this name?")


def _as_ip(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


@hookimpl(trylast=True)
def imm_register_routers(registry: RouterRegistry) -> None:
    registry.add(DNSRouter)
