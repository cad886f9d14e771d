"""What the dns router works with: record sets, addresses, health probes and settings."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
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

from ....errors import BadRequest

DEFAULT_TTL = 30
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_HEALTH_TIMEOUT_S = 1.0
RDTYPES = ("A", "AAAA")
# How often a replace is retried when the records changed between our read and our write.
CAS_ATTEMPTS = 4

KNOWN_SETTINGS = {
    "kind", "zone", "ttl", "timeout_s", "health_check",
    "server", "port", "tsig_key_name", "tsig_algorithm", "tsig_secret_file", "tsig_secret_env",
    "libcloud_driver", "zone_id", "key_env", "secret_env", "token_env", "endpoint",
}
BIND_KEY_RE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)


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
        port = port_of(rest[1:], address) if rest else None
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = port_of(p, address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise BadRequest(
            f"address {address!r} is not an IP address: a DNS A/AAAA record needs one "
            f"(give the instance's IP, optionally with :port)"
        ) from None
    return ip.compressed, port


def port_of(text: str, address: str) -> int:
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


def int_setting(settings: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"dns router setting {key} = {value!r} must be an integer {lo}..{hi}")
    return value


def float_setting(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest(f"dns router setting {key} = {value!r} must be a positive number")
    return float(value)


def str_setting(settings: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = settings.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise BadRequest(f"dns router setting {key} = {value!r} must be a non-empty string")
    return value.strip() if isinstance(value, str) else None


def zone_name(text: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise BadRequest(f"dns router zone {text!r} is not a valid DNS name: {exc}") from None



def as_ip(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None
