"""RFC 2136 dynamic updates (BIND, PowerDNS, Knot), signed with TSIG: the dns router's zone
backend for ``server = ...``."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
from .records import BIND_KEY_RE, RDTYPES, RRsets, Stale, int_setting, str_setting


@dataclass
class Tsig:
    keyring: dict[dns.name.Name, dns.tsig.Key]
    keyname: dns.name.Name
    algorithm: dns.name.Name


class Rfc2136Zone:
    """Reads with a plain TCP query, writes with TSIG-signed UPDATE messages, to one server."""

    def __init__(self, settings: Mapping[str, Any], zone: dns.name.Name, timeout: float) -> None:
        self.server = str_setting(settings, "server") or ""
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            raise BadRequest(
                f"dns router setting server = {self.server!r} must be the IP address of the "
                f"primary server that accepts updates"
            ) from None
        self.port = int_setting(settings, "port", 53, 1, 65535)
        self.zone = zone
        self.timeout = timeout
        self.key_name = str_setting(settings, "tsig_key_name")
        self.algorithm = str_setting(settings, "tsig_algorithm")
        self.secret_file = str_setting(settings, "tsig_secret_file")
        self.secret_env = str_setting(settings, "tsig_secret_env")
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
            blocks = BIND_KEY_RE.findall(text)
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
