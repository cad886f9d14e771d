"""The catalog's migrations: 0005 drops the ledger's node rows below merkle.MIN_STORED_LEVEL,
which a ledger written before it holds, and leaves a ledger that verifies and proves the same."""

from __future__ import annotations

import sqlite3

from imm.catalog import schema
from imm.catalog.merkle import MIN_STORED_LEVEL, SCHEMA, MerkleLog, verify_inclusion
from imm.catalog.rfc6962 import root_from_leaf_hashes


def test_0005_drops_the_node_rows_below_the_stored_levels() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    log = MerkleLog(conn)
    n = 100
    log.append_many((b"leaf %d" % i, 1) for i in range(n))
    root = log.root()
    # the rows a ledger written before 0005 also holds: every complete subtree of levels 1..
    hashes = [h for (h,) in conn.execute("SELECT leaf_hash FROM ledger_leaves ORDER BY idx")]
    old = [(level, idx, root_from_leaf_hashes(hashes[idx << level:(idx + 1) << level]))
           for level in range(1, MIN_STORED_LEVEL) for idx in range(n >> level)]
    conn.executemany("INSERT INTO ledger_nodes VALUES (?, ?, ?)", old)
    assert any("are not stored" in p["problem"] for p in log.verify_all())

    migrate = next(m for m in schema.SCHEMA.migrations if m.name == "0005-ledger-sparse-nodes")
    migrate.apply(conn)

    assert conn.execute("SELECT count(*) FROM ledger_nodes WHERE level < ?",
                        (MIN_STORED_LEVEL,)).fetchone() == (0,)
    assert log.verify_all() == []
    assert log.root() == root
    proof = log.inclusion_proof(37)
    assert verify_inclusion(log.leaf(37)[1], 37, n, proof, root)
