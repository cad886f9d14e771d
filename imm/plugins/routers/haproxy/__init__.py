"""The haproxy router plugin (entry point ``imm.plugins.routers.haproxy``).

- :mod:`.runtime`: the runtime API client (admin socket) and the parsing of its answers;
- :mod:`.supervisor`: the embedded haproxy process (config, start, adopt, reload, restart);
- :mod:`.router`: :class:`HAProxyRouter`, the routing itself.
"""

from __future__ import annotations

from typing import Any

from ...hookspecs import hookimpl
from .router import HAProxyRouter
from .runtime import AdminSocket, RuntimeAPI, ServerState, parse_servers_state, server_name
from .supervisor import ProcessSettings, Supervisor

__all__ = ["AdminSocket", "HAProxyRouter", "ProcessSettings", "RuntimeAPI", "ServerState",
           "Supervisor", "imm_register_routers", "parse_servers_state", "server_name"]


@hookimpl(trylast=True)
def imm_register_routers(registry: Any) -> None:
    registry.add(HAProxyRouter)
