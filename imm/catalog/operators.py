"""Operators: the people who approve protected changes, each known by one SSH public key.

An operator is registered by an admin as a signed ``operator`` record holding the public key;
the private key stays on the operator's machine (a key file or ssh-agent). A key belongs to at
most one operator, so one person cannot count twice by registering their key under two names.
Removal is a signed record too; approvals made before it keep verifying from the ledger alone,
because each approval record carries the key it was made with.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import BadRequest, Conflict, NotFound
from ..store import Connection
from . import sshsig
from .service import Catalog, now, query, query_one

NAME = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise BadRequest(f"bad operator name {name!r}: lowercase letters, digits, '.', '_' and "
                         "'-', starting with a letter (e.g. sre-1)")
    return name


def parse_key(text: Any, source: str) -> sshsig.SshKey:
    if not isinstance(text, str):
        raise BadRequest(f"{source} must be the text of an SSH public key line")
    try:
        return sshsig.parse_public_key(text, source)
    except sshsig.SshError as e:
        raise BadRequest(str(e)) from None


def add(conn: Connection, catalog: Catalog, actor: str, name: str, public_key: str,
        source: str = "SSH public key") -> dict[str, Any]:
    check_name(name)
    key = parse_key(public_key, source)
    same = query_one(conn, "SELECT name, fingerprint FROM operators WHERE name=?", (name,))
    if same:
        raise Conflict(f"operator {name!r} already exists (key {same['fingerprint']}); remove it "
                       "first to change its key, or pick another name")
    owner = query_one(conn, "SELECT name FROM operators WHERE fingerprint=?", (key.fingerprint,))
    if owner:
        raise Conflict(f"key {key.fingerprint} is already registered to operator "
                       f"{owner['name']!r}; one key belongs to one operator, so no one counts "
                       "twice toward an approval")
    body = {"type": "operator", "action": "add", "name": name, "key_type": key.key_type,
            "public_key": key.line, "fingerprint": key.fingerprint, "comment": key.comment,
            "actor": actor, "time": now()}
    env, idx, text = catalog.append(conn, "operator", body)
    conn.execute("INSERT INTO operators VALUES (?,?,?,?,?,?,?,?,?)",
                 (name, key.key_type, key.line, key.fingerprint, key.comment, actor,
                  body["time"], idx, text))
    catalog.checkpoint(conn)
    return {**get(conn, name), "envelope": env}


def remove(conn: Connection, catalog: Catalog, actor: str, name: str) -> dict[str, Any]:
    check_name(name)
    row = get(conn, name)
    body = {"type": "operator", "action": "remove", "name": name,
            "fingerprint": row["fingerprint"], "actor": actor, "time": now()}
    env, idx, _ = catalog.append(conn, "operator", body)
    conn.execute("DELETE FROM operators WHERE name=?", (name,))
    catalog.checkpoint(conn)
    return {"name": name, "fingerprint": row["fingerprint"], "removed": True,
            "ledger_index": idx, "envelope": env}


def get(conn: Connection, name: str) -> dict[str, Any]:
    row = query_one(conn, "SELECT name, key_type, public_key, fingerprint, comment, actor, "
                          "added_at, ledger_index FROM operators WHERE name=?", (name,))
    if row is None:
        known = [r["name"] for r in query(conn, "SELECT name FROM operators ORDER BY name")]
        raise NotFound(f"no operator named {name!r} (operators: {', '.join(known) or 'none'}); "
                       "register one with 'immctl operator add NAME --ssh-key FILE.pub'")
    return row


def by_fingerprint(conn: Connection, fp: str) -> dict[str, Any] | None:
    return query_one(conn, "SELECT name, key_type, public_key, fingerprint FROM operators "
                           "WHERE fingerprint=?", (fp,))


def listing(conn: Connection) -> list[dict[str, Any]]:
    return query(conn, "SELECT name, key_type, fingerprint, comment, actor, added_at, "
                       "ledger_index FROM operators ORDER BY name")
