"""The web dashboard: server-rendered pages over the same daemon and domain code as the API.

It is its own aiohttp application in immd's process, served only on the loopback address of
``[dashboard] listen``: the API's middleware identifies peers by the kernel (the browser's uid
would be an admin for every page a user's browser opens), so the dashboard authenticates by a
one-time link minted over the unix socket and a session cookie instead, and the JSON API is
never reachable on the dashboard's port.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

__all__ = ["listen_address"]


def listen_address(raw: dict[str, Any], source: str) -> tuple[str, int] | None:
    """``[dashboard] listen = "127.0.0.1:PORT"`` as (host, port); None when off (the default)."""
    section = raw.get("dashboard", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: [dashboard] must be a table")
    unknown = sorted(set(section) - {"listen"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [dashboard]: {', '.join(unknown)}; "
                          "only listen is known")
    listen = section.get("listen", "")
    if not listen:
        return None
    if not isinstance(listen, str):
        raise ConfigError(f"{source}: dashboard.listen {listen!r} must be a string like "
                          '"127.0.0.1:8780"')
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost") or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: dashboard.listen {listen!r} must be a loopback host:port, "
                          'e.g. "127.0.0.1:8780" (use ssh -L to reach it from elsewhere)')
    return host, int(port)
