"""Re-verify stored state from signatures and the ledger, never from columns alone.

``verify_rows`` re-checks every row that holds signed state: its envelope's signature, that the
columns say what the signed payload says, and that the envelope is the ledger leaf at the row's
index. ``verify_ledger`` recomputes the Merkle tree from the stored leaves, checks every leaf's
envelope signature and the latest signed checkpoint. Problems name the table and row, or the leaf.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from ..store import Connection, query_one
from . import checkpoint, dsse
from .canonical import canonical_json
from .keys import KeyRing
from .manifest import image_digest
from .merkle import MerkleLog

Problem = dict[str, Any]

# table -> (primary key columns, expected record kind, {column: payload field or callable})
_Extract = Callable[[dict[str, Any], dict[str, Any]], Any]
CHECKS: dict[str, tuple[tuple[str, ...], str, dict[str, str | _Extract]]] = {
    "images": (("digest",), "image", {
        "digest": "digest", "actor": "actor", "created_at": "time",
        "name": lambda b, r: b["manifest"]["name"],
        "version": lambda b, r: b["manifest"]["version"],
        "content_digest": lambda b, r: b["manifest"]["content_digest"],
        "content_kind": lambda b, r: b["manifest"]["content_kind"],
        "parent": lambda b, r: b["manifest"]["parent"],
        "ladder_step": lambda b, r: b["manifest"]["ladder_step"],
        "manifest": lambda b, r: canonical_json(b["manifest"]).decode(),
    }),
    "artifacts": (("provider", "region", "image_id"), "artifact", {
        "provider": "provider", "region": "region", "image_id": "image_id", "digest": "digest",
        "actor": "actor", "created_at": "time"}),
    "channel_history": (("name", "seq"), "channel", {
        "name": "channel", "seq": "seq", "digest": "digest", "previous": "previous",
        "actor": "actor", "at": "time"}),
    "revocations": (("digest",), "revocation", {
        "root": "root", "reason": "reason", "actor": "actor", "at": "time",
        "digest": lambda b, r: r["digest"] if r["digest"] in b.get("digests", ()) else "(absent)"}),
    "keys": (("keyid",), "key", {
        "keyid": "keyid", "public_pem": "public_key", "action": "action", "previous": "previous",
        "actor": "actor", "created_at": "time"}),
}


def _rows(conn: Connection, table: str, where: str = "",
          params: tuple[Any, ...] = ()) -> Iterator[dict[str, Any]]:
    cur = conn.execute(f"SELECT * FROM {table} {where}", params)  # noqa: S608 - fixed names
    cols = [d[0] for d in cur.description]
    for row in cur:
        yield dict(zip(cols, row, strict=True))


def check_row(conn: Connection, keyring: KeyRing, table: str,
              row: dict[str, Any]) -> list[Problem]:
    pk_cols, kind, fields = CHECKS[table]
    key = "/".join(str(row[c]) for c in pk_cols)
    where = {"table": table, "key": key, "ledger_index": row.get("ledger_index")}

    def problem(text: str) -> list[Problem]:
        return [{**where, "problem": text}]

    try:
        env = json.loads(row["envelope"])
        got_kind, body, _ = dsse.verify(env, keyring.lookup)
    except (ValueError, TypeError) as e:
        return problem(f"envelope does not verify: {e}")
    if got_kind != kind:
        return problem(f"envelope is a {got_kind!r} record, expected {kind!r}")
    out = []
    for column, source in fields.items():
        try:
            expected = source(body, row) if callable(source) else body.get(source)
        except (KeyError, TypeError):
            return problem("signed payload lacks the fields of this table")
        if row.get(column) != expected:
            out.append({**where, "problem": f"column {column} is {row.get(column)!r} but the "
                                            f"signed record says {expected!r}"})
    if table == "images" and image_digest(body["manifest"]) != row["digest"]:
        out.append({**where, "problem": "the signed manifest does not hash to this digest"})
    leaf = conn.execute("SELECT data FROM ledger_leaves WHERE idx = ?",
                        (row["ledger_index"],)).fetchone()
    if leaf is None:
        return [*out, {**where, "problem": f"ledger has no leaf {row['ledger_index']}"}]
    # rows store the envelope exactly as its leaf holds it (canonical JSON): compare bytes
    if leaf[0] != row["envelope"].encode("utf-8") and leaf[0] != canonical_json(env):
        out.append({**where, "problem": f"envelope differs from ledger leaf {row['ledger_index']}"})
    return out


def verify_rows(conn: Connection, keyring: KeyRing, digest: str | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    problems: list[Problem] = []
    checked = 0
    for table in CHECKS:
        if digest is None:
            rows = _rows(conn, table)
        elif table in ("images", "artifacts", "revocations", "channel_history"):
            rows = _rows(conn, table, "WHERE digest = ?", (digest,))
        else:
            continue
        for row in rows:
            problems.extend(check_row(conn, keyring, table, row))
            checked += 1
            if progress and checked % 10000 == 0:
                progress(checked)
    return {"ok": not problems, "checked": checked, "problems": problems}


def verify_ledger(conn: Connection, keyring: KeyRing, origin: str) -> dict[str, Any]:
    log = MerkleLog(conn)
    size = log.size()
    problems: list[Problem] = list(log.verify_all())
    for idx, data in conn.execute("SELECT idx, data FROM ledger_leaves ORDER BY idx"):
        try:
            env = json.loads(data)
            dsse.verify(env, keyring.lookup)
        except (ValueError, TypeError) as e:
            problems.append({"index": idx, "problem": f"leaf envelope does not verify: {e}"})
    note = query_one(conn, "SELECT value FROM meta WHERE key='checkpoint'")
    cp: dict[str, Any] = {"present": note is not None}
    if note:
        errors = []
        for kid in keyring.keyids():
            pub = keyring.lookup(kid)
            assert pub is not None
            try:
                _, cp_size, cp_root = checkpoint.verify(note["value"], origin, pub)
            except ValueError as e:
                errors.append(str(e))
                continue
            cp.update(size=cp_size, root=cp_root.hex(), keyid=kid)
            if cp_size > size:
                problems.append({"checkpoint": cp_size, "problem": f"checkpoint size {cp_size} "
                                 f"is beyond the ledger's {size} leaves: leaves were removed"})
            elif log.root(cp_size) != cp_root:
                problems.append({"checkpoint": cp_size, "problem": "checkpoint root does not "
                                 f"match the ledger's root at size {cp_size}"})
            break
        else:
            problems.append({"checkpoint": None,
                             "problem": "latest checkpoint signature does not verify: "
                                        + "; ".join(errors)})
    return {"ok": not problems, "size": size, "root": log.root().hex(), "checkpoint": cp,
            "problems": problems}
