"""Audit events and the signed ledger records that commit to them.

Signing and appending one ledger leaf per event would cost a signature and an O(log n) append
per instance on a fleet's first sweep, and an O(log n) ledger proof per exported line. Instead
the events of one sweep chunk are committed together: their canonical JSON bytes are the leaves
of a small RFC 6962 tree, and one signed ledger record (kind ``audit-finding``, body type
``audit-batch``) holds that tree's root. An event is proven by its path to the batch root plus
the batch record's path to a ledger checkpoint (see ``bundle_verify``).

Functions that take a connection run inside the caller's write transaction.
"""

from __future__ import annotations

from typing import Any

from ..catalog.merkle import EMPTY_ROOT, MerkleLog, leaf_hash, node_hash
from ..catalog.service import Catalog
from ..store import Connection, now
from .bundle_verify import dumps

RECORD_KIND = "audit-batch"
BATCH_TYPE = "audit-batch"


def tree_levels(hashes: list[bytes]) -> list[list[bytes]]:
    """Every level of the RFC 6962 tree over ``hashes``, leaves first.

    Built bottom-up, pairing left to right and carrying an odd last node up unchanged: the same
    tree as RFC 6962's split at the largest power of two below n.
    """
    levels = [list(hashes)]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        nxt = [node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)]
        if len(prev) % 2:
            nxt.append(prev[-1])
        levels.append(nxt)
    return levels


def tree_root(levels: list[list[bytes]]) -> bytes:
    return levels[-1][0] if levels[-1] else EMPTY_ROOT


def tree_path(levels: list[list[bytes]], index: int) -> list[bytes]:
    """RFC 9162 inclusion path of leaf ``index``, from the leaf up."""
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path


def next_index(conn: Connection) -> int:
    """The ledger index the next appended record gets (the caller holds the write lock)."""
    return MerkleLog(conn).size()


def record_events(conn: Connection, catalog: Catalog, sweep: int, actor: str,
                  bodies: list[dict[str, Any]], expect: int | None = None) -> int:
    """Commit ``bodies`` (in order) with one signed ledger record; returns its ledger index.

    ``expect`` is the index the caller already wrote into its own rows (from
    :func:`next_index`); a mismatch means something else appended meanwhile, and raises so the
    transaction rolls back rather than storing wrong references.
    """
    texts = [dumps(b) for b in bodies]  # canonical: callers build bodies of ints and strings
    hashes = [leaf_hash(t) for t in texts]
    root = tree_root(tree_levels(hashes))
    at = now()
    body = {"type": BATCH_TYPE, "sweep": sweep, "entries": len(texts), "root": root.hex(),
            "time": at, "actor": actor}
    _, index, _ = catalog.append(conn, RECORD_KIND, body)
    if expect is not None and index != expect:
        raise RuntimeError(f"audit record landed at ledger index {index}, not {expect}")
    conn.execute("INSERT INTO audit_records VALUES (?,?,?,?,?,?)",
                 (index, sweep, at, len(texts), root, b"".join(hashes)))
    conn.executemany(
        "INSERT INTO audit_events (ledger_index, entry, type, event, at, body) "
        "VALUES (?,?,?,?,?,?)",
        [(index, j, b["type"], b["event"], b["at"], t.decode("utf-8"))
         for j, (b, t) in enumerate(zip(bodies, texts, strict=True))])
    return index


def end_events(conn: Connection, ends: list[tuple[str, int, int]]) -> None:
    """Mark open events as ended at a time: ``(at, ledger_index, entry)`` each."""
    if ends:
        conn.executemany("UPDATE audit_events SET ends_at = ? WHERE ledger_index = ? AND "
                         "entry = ?", ends)
