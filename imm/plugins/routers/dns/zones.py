"""libcloud DNS zones (Route53 in one atomic change batch, other providers create-then-delete):
the dns router's zone backend for ``libcloud_driver = ...``."""

from __future__ import annotations

import ipaddress
import os
import random
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET  # noqa: S405 - builds request bodies, parses nothing
from collections.abc import Iterable, Mapping
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

from ....errors import BadRequest, RouterError
from .records import RDTYPES, RRsets, Stale, str_setting


class LibcloudZone:
    """A zone behind a libcloud DNS driver; Route53 gets atomic change batches."""

    def __init__(self, settings: Mapping[str, Any], zone: dns.name.Name | None,
                 timeout: float) -> None:
        self.driver_name = str_setting(settings, "libcloud_driver") or ""
        self.zone_id = str_setting(settings, "zone_id")
        self.zone_name = zone
        if not self.zone_id and zone is None:
            raise BadRequest("dns router with libcloud_driver needs zone_id or zone")
        default_key = "AWS_ACCESS_KEY_ID" if "route53" in self.driver_name.lower() else None
        default_secret = "AWS_SECRET_ACCESS_KEY" if default_key else None
        self.key_env = str_setting(settings, "key_env", default_key)
        self.secret_env = str_setting(settings, "secret_env", default_secret)
        self.token_env = str_setting(settings, "token_env",
                              "AWS_SESSION_TOKEN" if default_key else None)
        if not self.key_env:
            raise BadRequest(f"dns router libcloud_driver {self.driver_name!r} needs key_env "
                             f"(the environment variable that holds the API key)")
        self.endpoint = str_setting(settings, "endpoint")
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
