"""The ledger's Merkle log (imm.catalog.merkle) against independent implementations.

Independent references used here:
- pymerkle (v7, RFC 6962 hashing with security prefixes): roots, inclusion proofs, and MTHs of
  arbitrary leaf ranges (one pymerkle tree per range);
- the RFC 6962 test vectors of certificate-transparency (roots of the 8-leaf test tree, one
  consistency proof);
- verifiers and proof generators written below straight from RFC 9162 §2.1, which import
  nothing from imm.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3

import pytest
from pymerkle import InmemoryTree, InvalidProof
from pymerkle import verify_inclusion as pm_verify_inclusion
from pymerkle.proof import InclusionProof

from imm.catalog.merkle import (
    MIN_STORED_LEVEL,
    SCHEMA,
    LedgerCorrupt,
    MerkleLog,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from imm.errors import BadRequest

# --------------------------------------------------------------------------------------------
# RFC 9162 §2.1, written out independently of imm.


def H(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def rfc_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over raw leaf data."""
    if not leaves:
        return H(b"")
    if len(leaves) == 1:
        return H(b"\x00" + leaves[0])
    k = rfc_split(len(leaves))
    return H(b"\x01" + rfc_mth(leaves[:k]) + rfc_mth(leaves[k:]))


def rfc_verify_inclusion(leaf_h: bytes, index: int, size: int, path, root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    # 1. Compare leaf_index from the inclusion_proof against tree_size in the
    #    tree_head. If leaf_index is greater than or equal to tree_size, then fail.
    if index >= size:
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, size - 1
    # 3. Set r to hash.
    r = leaf_h
    # 4. For each value p in the inclusion_path array:
    for p in path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            # 1. Set r to HASH(0x01 || p || r).
            r = H(b"\x01" + p + r)
            # 2. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #    either LSB(fn) is set or fn is 0.
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        # Otherwise: Set r to HASH(0x01 || r || p).
        else:
            r = H(b"\x01" + r + p)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the
    #    root_hash are equal, then the log has proven the inclusion of hash.
    return sn == 0 and r == root


def rfc_verify_consistency(first: int, second: int, first_hash, second_hash, path) -> bool:
    """RFC 9162 §2.1.4.2, step by step (0 < first < second; the equal and empty cases are the
    caller's: their proofs are empty)."""
    path = list(path)
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            fr = H(b"\x01" + c + fr)
            sr = H(b"\x01" + c + sr)
            # If LSB(fn) is not set, then right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        # Otherwise: Set sr to HASH(0x01 || sr || c).
        else:
            sr = H(b"\x01" + sr + c)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 7. Verify that fr == first_hash, sr == second_hash and sn == 0.
    return fr == first_hash and sr == second_hash and sn == 0


def rfc_path(m: int, leaves: list[bytes], mth) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]), with ``mth`` computing the MTH of a list of leaves."""
    n = len(leaves)
    if n == 1:
        return []
    k = rfc_split(n)
    if m < k:
        return rfc_path(m, leaves[:k], mth) + [mth(leaves[k:])]
    return rfc_path(m - k, leaves[k:], mth) + [mth(leaves[:k])]


def rfc_proof(m: int, leaves: list[bytes], mth) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""

    def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = rfc_split(n)
        if m <= k:
            return subproof(m, d[:k], b) + [mth(d[k:])]
        return subproof(m - k, d[k:], False) + [mth(d[:k])]

    return subproof(m, leaves, True)


def pm_mth(leaves: list[bytes]) -> bytes:
    """MTH of any list of leaves, computed by pymerkle."""
    tree = InmemoryTree()
    for d in leaves:
        tree.append_entry(d)
    return tree.get_root()


# --------------------------------------------------------------------------------------------
# Fixtures


def data(i: int) -> bytes:
    return f"leaf-{i:05d}".encode() + bytes([i % 251]) * (i % 7)


def new_db(*, autocommit: bool = False) -> sqlite3.Connection:
    """In-memory ledger; Python's default (implicit BEGIN before DML) unless autocommit, where
    the test issues BEGIN/COMMIT/ROLLBACK itself."""
    conn = sqlite3.connect(":memory:", isolation_level=None if autocommit else "")
    conn.executescript(SCHEMA)
    return conn


def build(n: int, *, bulk: bool = True) -> tuple[sqlite3.Connection, MerkleLog, list[bytes]]:
    conn = new_db()
    log = MerkleLog(conn)
    leaves = [data(i) for i in range(n)]
    if bulk:
        assert log.append_many((d, 1_700_000_000 + i) for i, d in enumerate(leaves)) == n
    else:
        for i, d in enumerate(leaves):
            assert log.append(d, 1_700_000_000 + i) == i
    return conn, log, leaves


@pytest.fixture(scope="module")
def tree70():
    """70 leaves in imm (appended one by one, in single appends and small batches, so that every
    path of append() and append_many() is exercised) and in pymerkle."""
    conn = new_db()
    log = MerkleLog(conn)
    pm = InmemoryTree()
    leaves = [data(i) for i in range(70)]
    i = 0
    batch = 1
    while i < len(leaves):
        chunk = leaves[i : i + batch]
        if batch == 1:
            assert log.append(chunk[0], 1) == i
        else:
            assert log.append_many((d, 1) for d in chunk) == i + len(chunk)
        for d in chunk:
            pm.append_entry(d)
        i += len(chunk)
        batch = batch % 5 + 1
    assert log.size() == 70 == pm.get_size()
    return log, pm, leaves


# --------------------------------------------------------------------------------------------
# Hashing and roots

RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_hash_primitives():
    assert leaf_hash(b"abc") == H(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == H(b"\x01" + b"L" * 32 + b"R" * 32)
    assert root_from_leaf_hashes([]) == H(b"")
    assert root_from_leaf_hashes([leaf_hash(b"x")]) == leaf_hash(b"x")


def test_rfc6962_test_vectors():
    conn = new_db()
    log = MerkleLog(conn)
    assert (
        log.root()
        == H(b"")
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )
    for i, d in enumerate(RFC6962_LEAVES):
        log.append(d, 0)
        assert log.root().hex() == RFC6962_ROOTS[i]
    for n in range(1, 9):
        assert log.root(n).hex() == RFC6962_ROOTS[n - 1]
    # certificate-transparency's consistency proof from size 2 to size 5.
    assert [h.hex() for h in log.consistency_proof(2, 5)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]


def test_roots_match_pymerkle_and_rfc(tree70):
    log, pm, leaves = tree70
    for n in range(0, 71):
        expected = pm.get_root(n)
        assert log.root(n) == expected, n
        assert rfc_mth(leaves[:n]) == expected, n
        assert root_from_leaf_hashes([leaf_hash(d) for d in leaves[:n]]) == expected
    assert log.root() == pm.get_root()


@pytest.mark.parametrize("n", [127, 128, 129, 255, 256, 257, 1000, 1023, 1025])
def test_roots_match_pymerkle_larger(n):
    _, log, leaves = build(n)
    pm = InmemoryTree()
    pm.append_entries(leaves)
    assert log.root() == pm.get_root()
    for size in {1, 2, 3, n // 3, n // 2 + 1, n - 1, n}:
        assert log.root(size) == pm.get_root(size), size


def test_single_and_bulk_appends_store_the_same_tree():
    c1, log1, _ = build(300, bulk=True)
    c2, log2, _ = build(300, bulk=False)
    for table, key in (("ledger_leaves", "idx"), ("ledger_nodes", "level, idx")):
        q = f"SELECT * FROM {table} ORDER BY {key}"
        assert c1.execute(q).fetchall() == c2.execute(q).fetchall()
    # A bulk append continuing a tree of odd size.
    _, log3, leaves = build(0)
    log3.append_many((d, 1) for d in leaves)  # nothing
    for i in range(7):
        log3.append(data(i), 1)
    log3.append_many((data(i), 1) for i in range(7, 300))
    assert log3.root() == log1.root() == log2.root()
    assert log3.verify_all() == []


# --------------------------------------------------------------------------------------------
# Inclusion proofs


def test_inclusion_proofs_every_leaf_sizes_1_to_40(tree70):
    log, pm, leaves = tree70
    checked = 0
    for n in range(1, 41):
        root = pm.get_root(n)
        for m in range(n):
            path = log.inclusion_proof(m, n)
            lh = H(b"\x00" + leaves[m])
            # 1. The independent RFC 9162 verifier accepts it against pymerkle's root.
            assert rfc_verify_inclusion(lh, m, n, path, root), (m, n)
            # 2. pymerkle computes the same path (its path[0] is the leaf hash itself) ...
            theirs = pm.prove_inclusion(m + 1, n)
            assert theirs.path[1:] == path, (m, n)
            # ... and pymerkle's verifier accepts our path.
            ours = InclusionProof("sha256", True, n, m + 1, theirs.rule, [lh, *path])
            pm_verify_inclusion(lh, root, ours, index=m + 1, size=n)
            # 3. imm's own verifier agrees.
            assert verify_inclusion(lh, m, n, path, root)
            checked += 1
    assert checked == 40 * 41 // 2


def test_inclusion_proofs_match_rfc_path_over_pymerkle_ranges(tree70):
    log, _, leaves = tree70
    for n in (1, 2, 3, 5, 8, 13, 31, 32, 33):
        for m in range(n):
            assert log.inclusion_proof(m, n) == rfc_path(m, leaves[:n], pm_mth), (m, n)


def test_inclusion_proof_defaults_to_current_size(tree70):
    log, pm, leaves = tree70
    assert log.inclusion_proof(17) == log.inclusion_proof(17, 70)


def test_bad_inclusion_proofs_fail(tree70):
    log, pm, leaves = tree70
    for n, m in [(1, 0), (2, 1), (7, 3), (64, 63), (70, 17), (70, 69)]:
        root = pm.get_root(n)
        lh = leaf_hash(leaves[m])
        path = log.inclusion_proof(m, n)
        assert verify_inclusion(lh, m, n, path, root)
        for verifier in (verify_inclusion, rfc_verify_inclusion):
            # wrong leaf, wrong root
            assert not verifier(leaf_hash(b"other"), m, n, path, root)
            assert not verifier(lh, m, n, path, pm.get_root(n - 1) if n > 1 else H(b""))
            # wrong index (proofs for one position do not prove another)
            for other in {m - 1, m + 1} & set(range(n)):
                assert not verifier(lh, other, n, path, root), (m, other, n)
            # every flipped byte
            for k in range(len(path)):
                for pos in (0, 31):
                    bad = list(path)
                    bad[k] = bad[k][:pos] + bytes([bad[k][pos] ^ 1]) + bad[k][pos + 1 :]
                    assert not verifier(lh, m, n, bad, root)
            # truncated or extended path
            if path:
                assert not verifier(lh, m, n, path[:-1], root)
            assert not verifier(lh, m, n, [*path, b"\x00" * 32], root)
        # pymerkle rejects a tampered path too
        theirs = pm.prove_inclusion(m + 1, n)
        if path:
            bad = [lh, *path]
            bad[1] = bytes(32)
            with pytest.raises(InvalidProof):
                pm_verify_inclusion(lh, root, InclusionProof("sha256", True, n, m + 1, theirs.rule, bad))
    # out-of-range and malformed inputs are simply rejected
    lh = leaf_hash(leaves[0])
    assert not verify_inclusion(lh, 0, 0, [], H(b""))
    assert not verify_inclusion(lh, -1, 5, [], pm.get_root(5))
    assert not verify_inclusion(lh, 5, 5, [], pm.get_root(5))
    assert not verify_inclusion(lh[:31], 0, 1, [], lh[:31])
    assert not verify_inclusion(lh, 0, 2, ["not bytes"], pm.get_root(2))  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# Consistency proofs


def test_consistency_proofs_all_pairs_up_to_24(tree70):
    log, pm, leaves = tree70
    roots = [pm.get_root(n) for n in range(0, 25)]
    checked = 0
    for n in range(1, 25):
        for m in range(0, n + 1):
            path = log.consistency_proof(m, n)
            if m == 0 or m == n:
                assert path == []
                assert verify_consistency(m, n, roots[m], roots[n], path)
                continue
            # 1. The independent RFC 9162 verifier accepts it against pymerkle's roots.
            assert rfc_verify_consistency(m, n, roots[m], roots[n], path), (m, n)
            # 2. It is exactly RFC 9162 PROOF(m, D[n]), every hash being the MTH of a range
            #    computed by pymerkle.
            assert path == rfc_proof(m, leaves[:n], pm_mth), (m, n)
            # 3. imm's own verifier agrees.
            assert verify_consistency(m, n, roots[m], roots[n], path)
            # 4. Sanity on the reference: pymerkle proves the same roots consistent.
            pm.prove_consistency(m, n).verify(roots[m], roots[n], m, n)
            checked += 1
    assert checked == sum(n - 1 for n in range(1, 25))


def test_consistency_proof_defaults_and_edges(tree70):
    log, pm, _ = tree70
    assert log.consistency_proof(10) == log.consistency_proof(10, 70)
    assert log.consistency_proof(0) == []
    assert log.consistency_proof(70) == []
    assert log.consistency_proof(0, 0) == []


def test_bad_consistency_proofs_fail(tree70):
    log, pm, _ = tree70
    for m, n in [(1, 2), (2, 5), (3, 7), (4, 8), (6, 8), (7, 70), (32, 33), (33, 64), (69, 70)]:
        r_m, r_n = pm.get_root(m), pm.get_root(n)
        path = log.consistency_proof(m, n)
        assert verify_consistency(m, n, r_m, r_n, path)
        for verifier in (verify_consistency, rfc_verify_consistency):
            assert not verifier(m, n, r_n, r_m, path) or r_m == r_n  # roots swapped
            assert not verifier(m, n, r_m, pm.get_root(n - 1), path)  # wrong new root
            assert not verifier(m, n, pm.get_root(m - 1) or H(b""), r_n, path)  # wrong old root
            for other in (m - 1, m + 1):
                if 0 < other < n:
                    assert not verifier(other, n, r_m, r_n, path), (other, n)
            for k in range(len(path)):
                bad = list(path)
                bad[k] = bytes([bad[k][0] ^ 0x80]) + bad[k][1:]
                assert not verifier(m, n, r_m, r_n, bad), (m, n, k)
            assert not verifier(m, n, r_m, r_n, path[:-1])
            assert not verifier(m, n, r_m, r_n, [*path, r_n])
    # the cases RFC 9162 leaves to the caller
    r5 = pm.get_root(5)
    assert verify_consistency(5, 5, r5, r5, [])
    assert not verify_consistency(5, 5, r5, pm.get_root(6), [])
    assert not verify_consistency(5, 5, r5, r5, [r5])
    assert verify_consistency(0, 5, H(b""), r5, [])
    assert not verify_consistency(0, 5, H(b""), r5, [r5])
    assert not verify_consistency(0, 5, r5, r5, [])  # the old root of size 0 is SHA-256("")
    assert not verify_consistency(6, 5, r5, r5, [])
    assert not verify_consistency(2, 5, pm.get_root(2), r5, [])  # empty proof


# --------------------------------------------------------------------------------------------
# Errors


def test_out_of_range_errors_name_the_value_and_range():
    _, log, _ = build(10)
    with pytest.raises(BadRequest, match=r"leaf index 12 is out of range: .*10 leaves \(0\.\.9\)"):
        log.leaf(12)
    with pytest.raises(BadRequest, match=r"leaf index -1 is out of range"):
        log.leaf(-1)
    with pytest.raises(BadRequest, match=r"tree size 11 is out of range: the ledger has 10 leaves"):
        log.root(11)
    with pytest.raises(BadRequest, match=r"leaf index 5 is out of range: the tree of size 5"):
        log.inclusion_proof(5, 5)
    with pytest.raises(BadRequest, match=r"tree size 0 is out of range.*between 1 and 10"):
        log.inclusion_proof(0, 0)
    with pytest.raises(BadRequest, match=r"new tree size 12 is out of range"):
        log.consistency_proof(3, 12)
    with pytest.raises(BadRequest, match=r"old tree size 8 is out of range.*new tree size 6"):
        log.consistency_proof(8, 6)
    with pytest.raises(BadRequest, match=r"must be an integer"):
        log.root("3")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match=r"must be bytes"):
        log.append("text", 1)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match=r"must be bytes"):
        log.append_many([(b"ok", 1), ("text", 1)])  # type: ignore[list-item]
    _, empty, _ = build(0)
    with pytest.raises(BadRequest, match=r"leaf index 0 is out of range: the ledger is empty"):
        empty.inclusion_proof(0)
    with pytest.raises(BadRequest, match=r"the ledger is empty"):
        empty.inclusion_proof(0, 0)
    with pytest.raises(BadRequest, match=r"leaf index 0 is out of range: the ledger has no leaves"):
        empty.leaf(0)
    assert empty.root() == H(b"") and empty.size() == 0


def test_leaf_returns_data_and_stored_hash():
    _, log, leaves = build(5)
    assert log.leaf(3) == (leaves[3], leaf_hash(leaves[3]))


# --------------------------------------------------------------------------------------------
# Transactions: the caller owns them


def test_rollback_of_the_callers_transaction_undoes_appends():
    conn = new_db(autocommit=True)  # autocommit: explicit BEGIN/ROLLBACK
    log = MerkleLog(conn)
    conn.execute("BEGIN")
    log.append_many((data(i), 1) for i in range(13))
    conn.execute("COMMIT")
    size, root = log.size(), log.root()

    conn.execute("BEGIN")
    for i in range(13, 20):
        log.append(data(i), 1)
    log.append_many((data(i), 1) for i in range(20, 40))
    assert log.size() == 40
    conn.execute("ROLLBACK")
    assert (log.size(), log.root()) == (size, root) == (13, rfc_mth([data(i) for i in range(13)]))
    assert log.verify_all() == []
    # Appending again after the rollback gives the right tree (no stale state anywhere).
    conn.execute("BEGIN")
    log.append(data(13), 1)
    conn.execute("COMMIT")
    assert log.root() == rfc_mth([data(i) for i in range(14)])


def test_rollback_in_pythons_default_transaction_mode():
    conn = new_db()  # legacy mode: DML opens a transaction implicitly
    log = MerkleLog(conn)
    log.append_many((data(i), 1) for i in range(5))
    conn.commit()
    root = log.root()
    log.append(data(5), 1)
    log.append_many((data(i), 1) for i in range(6, 9))
    assert log.size() == 9
    conn.rollback()
    assert (log.size(), log.root()) == (5, root)


def test_failed_bulk_append_rolls_back_with_the_transaction():
    conn = new_db(autocommit=True)
    log = MerkleLog(conn)
    log.append(data(0), 1)

    def items():
        for i in range(1, 8_200):  # one chunk of 8192 rows is written before the failure
            yield data(i), 1
        raise RuntimeError("caller failed half-way")

    conn.execute("BEGIN")
    with pytest.raises(RuntimeError):
        log.append_many(items())
    conn.execute("ROLLBACK")
    assert log.size() == 1 and log.root() == leaf_hash(data(0))
    assert log.verify_all() == []


def test_merklelog_never_commits():
    conn = new_db(autocommit=True)
    log = MerkleLog(conn)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    conn.execute("BEGIN")
    log.append(b"x", 1)
    log.append_many([(b"y", 1), (b"z", 1)])
    log.root()
    log.inclusion_proof(1)
    log.consistency_proof(1)
    log.verify_all()
    conn.set_trace_callback(None)
    words = {s.split()[0].upper() for s in statements[1:]}
    assert not words & {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"}
    assert conn.in_transaction
    conn.execute("ROLLBACK")


# --------------------------------------------------------------------------------------------
# Cost: appends and proofs are O(log n), not O(n)


def vm_steps(conn: sqlite3.Connection, fn) -> int:
    """SQLite virtual-machine instructions executed by fn() (a measure of rows touched)."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 0)
    return count


def test_appends_and_proofs_do_not_scan_the_log():
    costs = {}
    for k in (9, 13):
        n = (1 << k) - 1  # 0b11...1: k perfect subtrees, the worst case for roots and proofs
        conn, log, _ = build(n)
        costs[k] = {
            "root": vm_steps(conn, log.root),
            "inclusion": vm_steps(conn, lambda log=log, n=n: log.inclusion_proof(n // 3)),
            "consistency": vm_steps(conn, lambda log=log, n=n: log.consistency_proof(n // 3 + 1)),
            # leaf index n = 0b11...1 closes k levels: the worst case for an append
            "append": vm_steps(conn, lambda log=log, n=n: log.append(data(n), 1)),
        }
    # 16x more leaves: O(n) would cost ~16x more, O(log n) about 1.4x (13 vs 9 levels).
    for op, small in costs[9].items():
        big = costs[13][op]
        assert big < 2.5 * small, (op, small, big)


# --------------------------------------------------------------------------------------------
# verify_all


# Nodes are stored from level L on (subtrees of W leaves or more); lower ones are hashed from leaves.
L = MIN_STORED_LEVEL
W = 1 << L


def tamper(conn: sqlite3.Connection, sql: str, *params) -> None:
    cur = conn.execute(sql, params)
    assert cur.rowcount == 1


def flip(b: bytes, pos: int = 0) -> bytes:
    return b[:pos] + bytes([b[pos] ^ 0x01]) + b[pos + 1 :]


def test_verify_all_clean_and_progress():
    _, log, _ = build(1000)
    seen = []
    assert log.verify_all(lambda done, total: seen.append((done, total))) == []
    assert seen[-1] == (1000, 1000)
    _, empty, _ = build(0)
    assert empty.verify_all() == []


def test_verify_all_names_altered_leaf_data():
    conn, log, leaves = build(37)
    (d,) = conn.execute("SELECT data FROM ledger_leaves WHERE idx = 17").fetchone()
    tamper(conn, "UPDATE ledger_leaves SET data = ? WHERE idx = 17", flip(d, 3))
    problems = log.verify_all()
    assert len(problems) == 1
    assert problems[0]["index"] == 17
    assert problems[0]["problem"] == "leaf hash does not match the stored leaf data"


def test_verify_all_names_altered_leaf_hash_and_the_stored_node_above():
    conn, log, leaves = build(37)
    tamper(conn, "UPDATE ledger_leaves SET leaf_hash = ? WHERE idx = 5", flip(leaf_hash(leaves[5])))
    problems = log.verify_all()
    assert problems[0]["index"] == 5
    assert "leaf hash does not match" in problems[0]["problem"]
    # the levels below L are hashed from the leaf hashes: the first stored subtree over leaf 5
    assert (problems[1]["level"], problems[1]["idx"], problems[1]["leaves"]) == (L, 0, [0, W - 1])
    assert f"does not match the hash of its children (level {L - 1}, idx 0 and 1)" in problems[1]["problem"]
    assert len(problems) == 2
    # ... and a proof built from the altered row no longer verifies against the true root.
    true_root = rfc_mth(leaves)
    assert log.root() == true_root  # the root reads level-5 and above nodes, untouched
    assert not verify_inclusion(leaf_hash(leaves[4]), 4, 37, log.inclusion_proof(4), true_root)


def test_verify_all_names_altered_node_and_its_parent():
    n = 2 * W + 5
    conn, log, leaves = build(n)
    (h,) = conn.execute("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = 1", (L,)).fetchone()
    tamper(conn, "UPDATE ledger_nodes SET hash = ? WHERE level = ? AND idx = 1", flip(h, 31), L)
    problems = log.verify_all()
    where = [(p["level"], p["idx"], p["leaves"]) for p in problems]
    assert where == [(L, 1, [W, 2 * W - 1]), (L + 1, 0, [0, 2 * W - 1])]
    assert f"node (level {L}, idx 1) covering leaves {W}..{2 * W - 1}" in problems[0]["problem"]
    assert problems[0]["stored"] == flip(h, 31).hex() and problems[0]["expected"] == h.hex()
    true_root = rfc_mth(leaves)
    assert log.root() == true_root  # the root is made of other subtrees: (L + 1, 0), ...
    # ... but a proof that uses the altered node no longer verifies against the true root.
    assert not verify_inclusion(leaf_hash(leaves[8]), 8, n, log.inclusion_proof(8), true_root)
    i = 2 * W + 1
    assert verify_inclusion(leaf_hash(leaves[i]), i, n, log.inclusion_proof(i), true_root)


def test_verify_all_reports_missing_and_unexpected_rows():
    conn, log, _ = build(2 * W + 5)
    tamper(conn, "DELETE FROM ledger_nodes WHERE level = ? AND idx = 1", L)
    tamper(conn, "INSERT INTO ledger_nodes VALUES (?, 2, ?)", L, bytes(32))  # incomplete
    tamper(conn, "INSERT INTO ledger_nodes VALUES (1, 9, ?)", bytes(32))  # not stored
    tamper(conn, "INSERT INTO ledger_nodes VALUES (9, 0, ?)", bytes(32))
    tamper(conn, "DELETE FROM ledger_leaves WHERE idx = ?", W + 3)  # under the missing node
    problems = log.verify_all()
    text = "\n".join(p["problem"] for p in problems)
    assert f"node (level {L}, idx 1) covering leaves {W}..{2 * W - 1} is missing" in text
    assert f"leaves {W + 3}..{W + 3} are missing" in text
    assert f"unexpected node row (level {L}, idx 2): no complete subtree" in text
    assert f"unexpected node row (level 1, idx 9): subtrees below level {L} are not stored" in text
    assert "unexpected node row (level 9, idx 0)" in text
    with pytest.raises(Exception, match=rf"node \(level {L}, idx 1\).*missing"):
        log.inclusion_proof(0)


def test_verify_all_caps_the_problem_list():
    conn, log, _ = build(64)
    conn.execute("UPDATE ledger_leaves SET leaf_hash = zeroblob(32)")
    problems = log.verify_all(max_problems=10)
    assert len(problems) == 11
    assert problems[-1]["problem"].endswith("more problems not listed")


def test_verify_all_reads_one_snapshot_while_a_writer_commits(tmp_path):
    path = tmp_path / "ledger.db"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("PRAGMA journal_mode=WAL")
    reader.executescript(SCHEMA)
    writer = sqlite3.connect(path, isolation_level=None)
    wlog = MerkleLog(writer)
    writer.execute("BEGIN")
    wlog.append_many((data(i), 1) for i in range(70_000))  # > 65536: progress is called midway
    writer.execute("COMMIT")

    def progress(done: int, total: int) -> None:
        if done < total:  # midway: another connection appends and commits
            writer.execute("BEGIN")
            wlog.append_many((data(i), 1) for i in range(70_000, 70_100))
            writer.execute("COMMIT")
        calls.append((done, total))

    calls: list[tuple[int, int]] = []
    assert MerkleLog(reader).verify_all(progress) == []
    assert calls == [(65536, 70_000), (70_000, 70_000)]
    assert MerkleLog(reader).size() == 70_100
    assert MerkleLog(reader).verify_all() == []


# --------------------------------------------------------------------------------------------
# Edges of the pure verifiers, and the exact errors of the log


def test_index_minus_one_with_a_real_path_is_refused():
    # The last leaf of a perfect tree has an all-left path; so would index -1 (its bits are all
    # ones): only the range check tells them apart.
    for n in (2, 4, 8, 16):
        leaves = [data(i) for i in range(n)]
        root, lh = rfc_mth(leaves), leaf_hash(leaves[-1])
        path = rfc_path(n - 1, leaves, rfc_mth)
        assert verify_inclusion(lh, n - 1, n, path, root)
        assert not verify_inclusion(lh, -1, n, path, root)
        assert not verify_inclusion(lh, n, n, path, root)


def test_an_empty_consistency_proof_fails_between_sizes_that_are_not_powers_of_two():
    roots = [rfc_mth([data(i) for i in range(n)]) for n in range(13)]
    for m, n in [(3, 4), (3, 5), (5, 6), (6, 7), (7, 12), (11, 12)]:
        assert not verify_consistency(m, n, roots[m], roots[n], [])
    for m, n in [(1, 3), (2, 5), (4, 12)]:  # powers of two: the old root is prepended
        assert not verify_consistency(m, n, roots[m], roots[n], [])


def fold_left(lh: bytes, path: list[bytes]) -> bytes:
    r = lh
    for p in path:
        r = node_hash(r, p)
    return r


def test_inclusion_paths_of_up_to_64_hashes():
    # leaf 0 of a tree of 2**k leaves: k siblings, each on the right
    lh = leaf_hash(b"first")
    path = [H(b"%d" % i) for i in range(65)]
    assert verify_inclusion(lh, 0, 1 << 64, path[:64], fold_left(lh, path[:64]))
    assert verify_inclusion(lh, 0, 1 << 63, path[:63], fold_left(lh, path[:63]))
    assert not verify_inclusion(lh, 0, 1 << 65, path, fold_left(lh, path))
    assert not verify_inclusion(lh, 0, 1 << 64, path[:63], fold_left(lh, path[:63]))


def test_verifiers_refuse_values_that_are_not_hashes_or_sizes():
    leaves = [data(i) for i in range(5)]
    root, lh = rfc_mth(leaves), leaf_hash(leaves[2])
    path = rfc_path(2, leaves, rfc_mth)
    assert verify_inclusion(lh, 2, 5, path, root)
    for bad in (lh + b"\0", lh[:31], bytearray(lh), lh.hex()):
        assert not verify_inclusion(bad, 2, 5, path, root)  # type: ignore[arg-type]
        assert not verify_inclusion(lh, 2, 5, path, bad)  # type: ignore[arg-type]
        assert not verify_inclusion(lh, 2, 5, [*path[:-1], bad], root)  # type: ignore[list-item]
    for index, size in ((2.0, 5), (2, 5.0), ("2", 5), (2, None)):
        assert not verify_inclusion(lh, index, size, path, root)  # type: ignore[arg-type]
    r3, r5 = rfc_mth(leaves[:3]), root
    proof = rfc_proof(3, leaves, rfc_mth)
    assert verify_consistency(3, 5, r3, r5, proof)
    for bad in (r3 + b"\0", r3[:31], bytearray(r3)):
        assert not verify_consistency(3, 5, bad, r5, proof)  # type: ignore[arg-type]
        assert not verify_consistency(3, 5, r3, bad, proof)  # type: ignore[arg-type]
        assert not verify_consistency(3, 5, r3, r5, [*proof[:-1], bad])  # type: ignore[list-item]
        assert not verify_consistency(5, 5, bad, bad, [])  # type: ignore[arg-type]
    for m, n in ((3.0, 5), (3, 5.0), ("3", 5), (None, 5)):
        assert not verify_consistency(m, n, r3, r5, proof)  # type: ignore[arg-type]
    assert not verify_consistency(-1, 5, r3, r5, proof)
    assert not verify_consistency(3, 5, r3, r5, [proof[0]] * 129)


def test_a_consistency_proof_from_a_power_of_two():
    leaves = [data(i) for i in range(13)]
    for m in (1, 2, 4, 8):
        for n in (m + 1, 13):
            proof = rfc_proof(m, leaves[:n], rfc_mth)
            old, new = rfc_mth(leaves[:m]), rfc_mth(leaves[:n])
            assert verify_consistency(m, n, old, new, proof)
            assert not verify_consistency(m, n, new, new, proof)
            assert not verify_consistency(m, n, old, new, [old, *proof])


def exactly(message: str):
    return pytest.raises(BadRequest, match="^" + re.escape(message) + "$")


def test_errors_name_the_value_and_the_range_exactly():
    _, log, _ = build(10)
    with exactly("leaf index 10 is out of range: the ledger has 10 leaves (0..9)"):
        log.leaf(10)
    with exactly("leaf index -1 is out of range: the ledger has 10 leaves (0..9)"):
        log.leaf(-1)
    with exactly("leaf index must be an integer, not True"):
        log.leaf(True)  # type: ignore[arg-type]
    with exactly("leaf index must be an integer, not '1'"):
        log.leaf("1")  # type: ignore[arg-type]
    with exactly("tree size 11 is out of range: the ledger has 10 leaves, so it must be between 0 "
                 "and 10"):
        log.root(11)
    with exactly("tree size -1 is out of range: the ledger has 10 leaves, so it must be between 0 "
                 "and 10"):
        log.root(-1)
    with exactly("tree size must be an integer, not 2.0"):
        log.root(2.0)  # type: ignore[arg-type]
    with exactly("leaf index 5 is out of range: the tree of size 5 has leaves 0..4"):
        log.inclusion_proof(5, 5)
    with exactly("leaf index 10 is out of range: the ledger has 10 leaves (0..9)"):
        log.inclusion_proof(10)
    with exactly("leaf index 10 is out of range: the ledger has 10 leaves (0..9)"):
        log.inclusion_proof(10, 10)
    with exactly("tree size 0 is out of range: the ledger has 10 leaves, so it must be between 1 "
                 "and 10"):
        log.inclusion_proof(0, 0)
    with exactly("new tree size 11 is out of range: the ledger has 10 leaves, so it must be "
                 "between 0 and 10"):
        log.consistency_proof(3, 11)
    with exactly("old tree size 8 is out of range: it must be between 0 and the new tree size 6"):
        log.consistency_proof(8, 6)
    with exactly("old tree size -1 is out of range: it must be between 0 and the new tree size 10"):
        log.consistency_proof(-1)
    with exactly("old tree size must be an integer, not None"):
        log.consistency_proof(None)  # type: ignore[arg-type]
    with exactly("created_at must be an integer, not '1'"):
        log.append(b"x", "1")  # type: ignore[arg-type]
    with exactly("created_at must be an integer, not False"):
        log.append_many([(b"x", False)])  # type: ignore[list-item]
    with exactly("ledger leaf data must be bytes, not str"):
        log.append("x", 1)  # type: ignore[arg-type]
    with exactly("ledger leaf data must be bytes, not NoneType"):
        log.append_many([(None, 1)])  # type: ignore[list-item]
    assert log.size() == 10
    _, one, _ = build(1)
    with exactly("leaf index 1 is out of range: the ledger has 1 leaf (0..0)"):
        one.leaf(1)
    with exactly("tree size 2 is out of range: the ledger has 1 leaf, so it must be between 0 "
                 "and 1"):
        one.root(2)
    _, empty, _ = build(0)
    with exactly("leaf index 0 is out of range: the ledger is empty, there is no leaf to prove "
                 "inclusion of"):
        empty.inclusion_proof(0)
    with exactly("leaf index 0 is out of range: the ledger has no leaves"):
        empty.leaf(0)
    assert empty.consistency_proof(0) == [] and empty.root(0) == H(b"")


def test_bytes_like_leaf_data_is_stored_as_bytes():
    conn, log, _ = build(0)
    assert log.append(bytearray(b"ab"), 1) == 0
    assert log.append_many([(memoryview(b"cd"), 2), (bytearray(b"ef"), 3)]) == 3
    assert [log.leaf(i)[0] for i in range(3)] == [b"ab", b"cd", b"ef"]
    assert log.root() == rfc_mth([b"ab", b"cd", b"ef"])
    rows = conn.execute("SELECT typeof(data), created_at FROM ledger_leaves ORDER BY idx").fetchall()
    assert rows == [("blob", 1), ("blob", 2), ("blob", 3)]


def test_append_many_of_nothing():
    conn, log, leaves = build(3)
    assert log.append_many([]) == 3
    assert log.root() == rfc_mth(leaves)


def corrupt(message: str):
    return pytest.raises(LedgerCorrupt, match="^" + re.escape(message) + "$")


def test_corrupt_rows_are_named():
    conn, log, leaves = build(2 * W)
    conn.execute("DELETE FROM ledger_nodes WHERE level = ? AND idx = 1", (L,))
    with corrupt(f"ledger node (level {L}, idx 1) covering leaves {W}..{2 * W - 1} is missing; "
                 "run the ledger verification"):
        log.inclusion_proof(0)
    conn, log, leaves = build(2 * W)
    conn.execute("UPDATE ledger_nodes SET hash = x'00' WHERE level = ? AND idx = 1", (L,))
    with corrupt(f"ledger node (level {L}, idx 1) holds a malformed hash (00); run the ledger "
                 "verification"):
        log.inclusion_proof(0)
    conn, log, leaves = build(7)
    conn.execute("UPDATE ledger_leaves SET leaf_hash = 'text' WHERE idx = 6")
    with corrupt("ledger leaf 6 holds a malformed hash ('text'); run the ledger verification"):
        log.inclusion_proof(0)
    with corrupt("ledger leaf 6 holds a malformed hash ('text'); run the ledger verification"):
        log.leaf(6)
    conn.execute("UPDATE ledger_leaves SET data = 'text' WHERE idx = 5")
    with corrupt("ledger leaf 5 holds str data, not a blob; run the ledger verification"):
        log.leaf(5)
    conn.execute("DELETE FROM ledger_leaves WHERE idx = 4")
    with corrupt("ledger leaf 4 is missing although the ledger has 7 leaves; run the ledger "
                 "verification"):
        log.leaf(4)
    with corrupt("ledger leaf 4 is missing; run the ledger verification"):
        log.inclusion_proof(5)
    conn, log, leaves = build(W - 1)
    conn.execute("UPDATE ledger_leaves SET leaf_hash = 'text' WHERE idx = 6")
    with corrupt("ledger leaf 6 holds a malformed hash ('text'); run the ledger verification"):
        log.append(b"x", 1)  # leaf W - 1 closes (L, 0), hashed from leaves 0..W-1


def test_a_stale_node_row_blocks_an_append_with_a_clear_error():
    conn, log, _ = build(W - 1)
    conn.execute("INSERT INTO ledger_nodes VALUES (?, 0, ?)", (L, bytes(32)))
    with corrupt(f"cannot store ledger node (level {L}, idx 0): UNIQUE constraint failed: "
                 "ledger_nodes.level, ledger_nodes.idx (a stale node row exists); run the ledger "
                 "verification"):
        log.append(b"x", 1)
    conn, log, _ = build(W - 1)
    conn.execute("INSERT INTO ledger_nodes VALUES (?, 0, ?)", (L, bytes(32)))
    with corrupt(f"cannot store ledger node (level {L}, idx 0): UNIQUE constraint failed: "
                 "ledger_nodes.level, ledger_nodes.idx (a stale node row exists); run the ledger "
                 "verification"):
        log.append_many([(b"x", 1)])


def test_a_leaf_row_past_the_end_blocks_a_bulk_append():
    conn, log, _ = build(3)
    conn.execute("INSERT INTO ledger_leaves VALUES (5, x'00', zeroblob(32), 0)")
    assert log.size() == 6  # the size is read from the highest index
    conn.execute("DELETE FROM ledger_leaves WHERE idx = 5")
    conn.execute("INSERT INTO ledger_leaves VALUES (4, x'00', zeroblob(32), 0)")
    conn.execute("DELETE FROM ledger_leaves WHERE idx = 4")
    conn.execute("INSERT INTO ledger_leaves VALUES (3, x'00', zeroblob(32), 0)")
    conn.execute("DELETE FROM ledger_leaves WHERE idx = 3")
    assert log.size() == 3


def test_verify_all_problem_entries_exactly():
    n = W + 6  # one stored node, (L, 0)
    conn, log, leaves = build(n)
    conn.execute("UPDATE ledger_leaves SET data = x'00' WHERE idx = 2")
    conn.execute("UPDATE ledger_leaves SET data = 'text' WHERE idx = 4")
    conn.execute("UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = ? AND idx = 0", (L,))
    conn.execute("INSERT INTO ledger_nodes VALUES (0, 1, zeroblob(32))")
    conn.execute("INSERT INTO ledger_nodes VALUES (1, 3, zeroblob(32))")
    conn.execute("INSERT INTO ledger_nodes VALUES (?, 1, zeroblob(32))", (L,))
    conn.execute("INSERT INTO ledger_nodes VALUES (?, 0, zeroblob(32))", (L + 1,))
    progress: list[tuple[int, int]] = []
    nowhere = f"no complete subtree of a ledger of {n} leaves has that position"
    assert log.verify_all(lambda d, t: progress.append((d, t))) == [
        {"index": 2, "problem": "leaf hash does not match the stored leaf data",
         "stored": leaf_hash(leaves[2]).hex(), "expected": leaf_hash(b"\0").hex()},
        {"index": 4, "problem": "leaf data is not a blob but str",
         "stored": leaf_hash(leaves[4]).hex(), "expected": None},
        {"level": L, "idx": 0, "leaves": [0, W - 1],
         "problem": f"node (level {L}, idx 0) covering leaves 0..{W - 1} does not match the hash "
                    f"of its children (level {L - 1}, idx 0 and 1)",
         "stored": "00" * 32, "expected": rfc_mth(leaves[:W]).hex()},
        {"level": L, "idx": 1, "problem": f"unexpected node row (level {L}, idx 1): {nowhere}"},
        {"level": 0, "idx": 1, "problem": f"unexpected node row (level 0, idx 1): {nowhere}"},
        {"level": 1, "idx": 3, "problem": "unexpected node row (level 1, idx 3): subtrees below "
                                          f"level {L} are not stored"},
        {"level": L + 1, "idx": 0, "problem": f"unexpected node row (level {L + 1}, idx 0): {nowhere}"},
    ]
    assert progress == [(n, n)]


def test_verify_all_missing_leaves_and_nodes_exactly():
    n = 2 * W + 1
    conn, log, leaves = build(n)
    conn.execute("DELETE FROM ledger_leaves WHERE idx IN (2, 3)")
    conn.execute("DELETE FROM ledger_nodes WHERE level = ? AND idx = 1", (L,))
    conn.execute("DELETE FROM ledger_nodes WHERE level = ? AND idx = 0", (L + 1,))
    assert log.verify_all() == [
        {"index": 2, "leaves": [2, 3],
         "problem": f"leaves 2..3 are missing (the ledger has {n} leaves, 0..{n - 1})"},
        {"level": L, "idx": 1, "leaves": [W, 2 * W - 1],
         "problem": f"node (level {L}, idx 1) covering leaves {W}..{2 * W - 1} is missing"},
        {"level": L + 1, "idx": 0, "leaves": [0, 2 * W - 1],
         "problem": f"node (level {L + 1}, idx 0) covering leaves 0..{2 * W - 1} is missing"},
    ]
    conn.execute("DELETE FROM ledger_leaves WHERE idx = ?", (n - 1,))
    assert log.size() == n - 1
    assert [p["problem"] for p in log.verify_all()] == [
        f"leaves 2..3 are missing (the ledger has {n - 1} leaves, 0..{n - 2})",
        f"node (level {L}, idx 1) covering leaves {W}..{2 * W - 1} is missing",
        f"node (level {L + 1}, idx 0) covering leaves 0..{2 * W - 1} is missing",
    ]


def test_verify_all_a_negative_leaf_index_and_the_cap():
    conn, log, leaves = build(W)
    conn.execute("INSERT INTO ledger_leaves VALUES (-1, x'00', zeroblob(32), 0)")
    assert log.verify_all() == [{"index": -1, "problem": "unexpected leaf index -1"}]
    conn.execute("UPDATE ledger_leaves SET leaf_hash = zeroblob(32) WHERE idx >= 0")
    # W + 2 problems: leaf -1, the W leaf hashes, and the stored node (L, 0) above them
    problems = log.verify_all(max_problems=2)
    assert [p.get("index", p.get("level")) for p in problems[:2]] == [-1, 0]
    assert problems[2:] == [{"problem": f"{W} more problems not listed"}]
    assert len(log.verify_all(max_problems=W + 2)) == W + 2
    assert len(log.verify_all(max_problems=W + 1)) == W + 2


def test_verify_all_stops_at_a_huge_gap():
    conn, log, _ = build(2)
    conn.execute("INSERT INTO ledger_leaves VALUES (?, x'00', ?, 0)", ((1 << 20) + 3, leaf_hash(b"\0")))
    problems = log.verify_all()
    assert problems[:2] == [
        {"index": 2, "leaves": [2, (1 << 20) + 2],
         "problem": f"leaves 2..{(1 << 20) + 2} are missing (the ledger has {(1 << 20) + 4} "
                    f"leaves, 0..{(1 << 20) + 3})"},
        {"index": (1 << 20) + 3, "problem": "the gap in leaf indexes is too large to check the "
                                            "tree structure any further; verification stopped here"},
    ]
