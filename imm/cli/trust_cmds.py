"""immctl operator / change / approve commands: people who sign for themselves.

``approve`` signs on this machine with ``ssh-keygen -Y sign -n imm`` (a key file, or a public
key file whose private half is in ssh-agent), so immd never sees a private key.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import EXIT_USAGE
from .client import Client, seg
from .render import emit_json, table


class Usage(Exception):
    """Bad local input (a file that cannot be read); immctl exits 2 with the message."""


def read_text(path: str, what: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise Usage(f"{what} {path} does not exist") from None
    except OSError as e:
        raise Usage(f"cannot read {what} {path}: {e.strerror}") from None
    if len(raw) > limit:
        raise Usage(f"{what} {path} is larger than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Usage(f"{what} {path} is not UTF-8 text") from None


def _guard(fn: Any) -> Any:
    def run(c: Client, a: argparse.Namespace) -> int:
        try:
            return int(fn(c, a))
        except Usage as e:
            if a.json:
                emit_json({"error": {"code": "usage", "message": str(e), "detail": None}})
            print(f"immctl: {e}", file=sys.stderr)
            return EXIT_USAGE
    return run


# -- operators ------------------------------------------------------------------------------

def cmd_operator_add(c: Client, a: argparse.Namespace) -> int:
    text = read_text(a.ssh_key, "SSH public key file", 16384)
    r = c.request("POST", "/v1/operators", {"name": a.name, "public_key": text,
                                            "source": f"SSH public key file {a.ssh_key}"})
    if a.json:
        emit_json(r)
    else:
        print(f"operator {r['name']}: {r['key_type']} {r['fingerprint']} "
              f"(ledger leaf {r['ledger_index']})")
    return 0


def cmd_operator_list(c: Client, a: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/operators")["operators"]
    if a.json:
        emit_json(rows)
    else:
        table(rows, [("name", "NAME"), ("key_type", "TYPE"), ("fingerprint", "FINGERPRINT"),
                     ("added_at", "ADDED"), ("actor", "BY"), ("ledger_index", "LEAF")],
              empty="no operators; 'immctl operator add NAME --ssh-key FILE.pub' adds one")
    return 0


def cmd_operator_remove(c: Client, a: argparse.Namespace) -> int:
    r = c.request("DELETE", f"/v1/operators/{seg(a.name)}")
    if a.json:
        emit_json(r)
    else:
        print(f"removed operator {r['name']} ({r['fingerprint']}; ledger leaf "
              f"{r['ledger_index']})")
    return 0


def register(sub: Any, add: Any, group: Any) -> None:
    op = group("operator", "people who approve protected changes with their SSH keys")
    sp = add(op, "add", _guard(cmd_operator_add), "register an operator's SSH public key")
    sp.add_argument("name")
    sp.add_argument("--ssh-key", required=True, metavar="PUBKEY_FILE",
                    help="the operator's public key (e.g. ~/.ssh/id_ed25519.pub)")
    add(op, "list", cmd_operator_list, "registered operators")
    sp = add(op, "remove", cmd_operator_remove, "remove an operator")
    sp.add_argument("name")
