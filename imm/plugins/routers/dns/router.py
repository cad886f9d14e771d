"""The ``dns`` router (:class:`DNSRouter`): moves traffic by rewriting a DNS name's A/AAAA records.

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

import re
import threading
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

from ....errors import BadRequest, Conflict, NotFound, RouterError
from ...base import Backend, PluginContext, Router, RouterFeature
from ...statefile import RouteState
from .records import (
    CAS_ATTEMPTS,
    DEFAULT_HEALTH_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TTL,
    KNOWN_SETTINGS,
    RDTYPES,
    Stale,
    as_ip,
    float_setting,
    int_setting,
    parse_address,
    rdtype_of,
    str_setting,
    tcp_check,
    zone_name,
)
from .rfc2136 import Rfc2136Zone
from .zones import LibcloudZone


class DNSRouter(Router):
    kind = "dns"
    features = frozenset({RouterFeature.HEALTH_CHECK})  # when health_check is set

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        unknown = sorted(set(s) - KNOWN_SETTINGS)
        if unknown:
            context.log.warning("dns router %s: ignoring unknown settings %s", name,
                                ", ".join(unknown))
        self.ttl = int_setting(s, "ttl", DEFAULT_TTL, 1, 2**31 - 1)
        timeout = float_setting(s, "timeout_s", DEFAULT_TIMEOUT_S)
        zone_text = str_setting(s, "zone")
        zone = zone_name(zone_text) if zone_text else None
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
            port = int_setting(hc, "port", 0, 0, 65535) or None
            return port, float_setting(hc, "timeout_s", DEFAULT_HEALTH_TIMEOUT_S), True
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
            self._route_ttl[key] = int_setting(settings, "ttl", DEFAULT_TTL, 1, 2**31 - 1)
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
                missing = sorted(n for n in foreign if as_ip(n) not in live)
                if missing:
                    raise NotFound(f"dns router {self.name}: no backend {', '.join(missing)} on "
                                   f"{key}; add it first")
            touched: set[str] = set()
            drop: set[str] = set()
            for name, w in weights.items():
                if name in foreign:
                    if w == 0:
                        drop.add(as_ip(name) or name)
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
                ip = as_ip(name)
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
                ip = as_ip(name)
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
