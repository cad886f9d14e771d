"""The dns router plugin (entry point ``imm.plugins.routers.dns``).

- :mod:`.records`: record sets, addresses, health probes, settings;
- :mod:`.rfc2136`: zones updated by RFC 2136 dynamic update with TSIG (BIND, PowerDNS, Knot);
- :mod:`.zones`: zones behind libcloud DNS (Route53 and others);
- :mod:`.router`: :class:`DNSRouter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .records import RRsets, Stale, parse_address, rdtype_of, tcp_check
from .rfc2136 import Rfc2136Zone, Tsig
from .router import DNSRouter
from .zones import LibcloudZone

if TYPE_CHECKING:
    from ...registry import RouterRegistry

__all__ = ["DNSRouter", "LibcloudZone", "RRsets", "Rfc2136Zone", "Stale", "Tsig",
           "imm_register_routers", "parse_address", "rdtype_of", "tcp_check"]


@hookimpl(trylast=True)
def imm_register_routers(registry: RouterRegistry) -> None:
    registry.add(DNSRouter)
