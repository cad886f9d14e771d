"""``immctl token``: bearer tokens for immd's loopback TCP listener, minted over the socket."""

from __future__ import annotations

import argparse
import sys
import time

from .client import Client, seg
from .render import emit_json, emit_list, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any


def cmd_create(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", "/v1/tokens", {"ttl": a.ttl, "scope": a.scope})
    if a.json:
        emit_json(r)
        return 0
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["expires_at"]))
    print(f"token {r['id']} for {r['user']}, scope {r['scope']}, expires {expires}; it is shown "
          "once, keep it secret (revoke: immctl token revoke ID):", file=sys.stderr)
    print(r["token"])
    return 0


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = c.request("GET", "/v1/tokens")["tokens"]
    if a.json:
        emit_list(rows)
        return 0
    for r in rows:
        r["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["expires_at"]))
    table(rows, [("id", "ID"), ("user", "USER"), ("scope", "SCOPE"), ("state", "STATE"),
                 ("expires", "EXPIRES")],
          empty="no tokens; 'immctl token create --ttl 1h' mints one")
    return 0


def cmd_revoke(c: Client, a: argparse.Namespace) -> int:
    r = c.request("DELETE", f"/v1/tokens/{seg(a.id)}")
    if a.json:
        emit_json(r)
    else:
        print(f"revoked token {r['id']} of {r['user']}")
    return 0


def register(sub: Any, add: Any, group: Any) -> None:
    g = group("token", "bearer tokens for the loopback TCP listener ([daemon] tcp)")
    sp = add(g, "create", cmd_create,
             "mint a token for yourself; it prints once (send 'Authorization: Bearer TOKEN')",
             "immctl token create --ttl 12h --scope read")
    sp.add_argument("--ttl", required=True, metavar="DURATION",
                    help="how long it lives: 90s, 30m, 12h, 7d (at most 30d)")
    sp.add_argument("--scope", choices=["read", "admin"], default="read",
                    help="read (default) or admin (admins only)")
    add(g, "list", cmd_list, "your tokens (every token, for an admin)", "immctl token list")
    sp = add(g, "revoke", cmd_revoke, "revoke a token by its id", "immctl token revoke 3f2a9c")
    sp.add_argument("id", help="the token's id, as 'immctl token list' shows it")
