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
import sqlite3

import pytest
from pymerkle import InmemoryTree, InvalidProof
from pymerkle import verify_inclusion as pm_verify_inclusion
from pymerkle.proof import InclusionProof

from imm.catalog.merkle import (
    SCHEMA,
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


@pytest.mark.parametrize("n", [127, 128, 129, 255, 256, 257, 1000, 1023, 1025, 3000])
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


def test_inclusion_proofs_every_leaf_sizes_1_to_70(tree70):
    log, pm, leaves = tree70
    checked = 0
    for n in range(1, 71):
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
    assert checked == 70 * 71 // 2


def test_inclusion_proofs_match_rfc_path_over_pymerkle_ranges(tree70):
    log, _, leaves = tree70
    for n in (1, 2, 3, 5, 8, 13, 31, 32, 33, 70):
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


def test_consistency_proofs_all_pairs_up_to_40(tree70):
    log, pm, leaves = tree70
    roots = [pm.get_root(n) for n in range(0, 41)]
    checked = 0
    for n in range(1, 41):
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
    assert checked == sum(n - 1 for n in range(1, 41))


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
        for i in range(1, 20_000):
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
    for k in (10, 15):
        n = (1 << k) - 1  # 0b11...1: k perfect subtrees, the worst case for roots and proofs
        conn, log, _ = build(n)
        costs[k] = {
            "root": vm_steps(conn, log.root),
            "inclusion": vm_steps(conn, lambda log=log, n=n: log.inclusion_proof(n // 3)),
            "consistency": vm_steps(conn, lambda log=log, n=n: log.consistency_proof(n // 3 + 1)),
            # leaf index n = 0b11...1 closes k levels: the worst case for an append
            "append": vm_steps(conn, lambda log=log, n=n: log.append(data(n), 1)),
        }
    # 32x more leaves: O(n) would cost ~32x more, O(log n) about 1.5x (15 vs 10 levels).
    for op, small in costs[10].items():
        big = costs[15][op]
        assert big < 2.5 * small, (op, small, big)


# --------------------------------------------------------------------------------------------
# verify_all


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


def test_verify_all_names_altered_leaf_hash_and_its_parent():
    conn, log, leaves = build(37)
    tamper(conn, "UPDATE ledger_leaves SET leaf_hash = ? WHERE idx = 5", flip(leaf_hash(leaves[5])))
    problems = log.verify_all()
    assert problems[0]["index"] == 5
    assert "leaf hash does not match" in problems[0]["problem"]
    assert (problems[1]["level"], problems[1]["idx"], problems[1]["leaves"]) == (1, 2, [4, 5])
    assert "does not match the hash of its children" in problems[1]["problem"]
    assert len(problems) == 2
    # ... and a proof built from the altered row no longer verifies against the true root.
    true_root = rfc_mth(leaves)
    assert log.root() == true_root  # the root reads level-5 and above nodes, untouched
    assert not verify_inclusion(leaf_hash(leaves[4]), 4, 37, log.inclusion_proof(4), true_root)


def test_verify_all_names_altered_node_and_its_parent():
    conn, log, leaves = build(37)
    (h,) = conn.execute("SELECT hash FROM ledger_nodes WHERE level = 2 AND idx = 3").fetchone()
    tamper(conn, "UPDATE ledger_nodes SET hash = ? WHERE level = 2 AND idx = 3", flip(h, 31))
    problems = log.verify_all()
    where = [(p["level"], p["idx"], p["leaves"]) for p in problems]
    assert where == [(2, 3, [12, 15]), (3, 1, [8, 15])]
    assert "node (level 2, idx 3) covering leaves 12..15" in problems[0]["problem"]
    assert problems[0]["stored"] == flip(h, 31).hex() and problems[0]["expected"] == h.hex()
    true_root = rfc_mth(leaves)
    assert log.root() == true_root  # the root is made of other stored subtrees: (5, 0), (2, 8)...
    # ... but a proof that uses the altered node no longer verifies against the true root.
    assert not verify_inclusion(leaf_hash(leaves[8]), 8, 37, log.inclusion_proof(8), true_root)
    assert verify_inclusion(leaf_hash(leaves[0]), 0, 37, log.inclusion_proof(0), true_root)


def test_verify_all_reports_missing_and_unexpected_rows():
    conn, log, _ = build(37)
    tamper(conn, "DELETE FROM ledger_nodes WHERE level = 1 AND idx = 9")
    tamper(conn, "INSERT INTO ledger_nodes VALUES (1, 18, ?)", bytes(32))  # leaves 36..37: no 37
    tamper(conn, "INSERT INTO ledger_nodes VALUES (9, 0, ?)", bytes(32))
    tamper(conn, "DELETE FROM ledger_leaves WHERE idx = 30")
    problems = log.verify_all()
    text = "\n".join(p["problem"] for p in problems)
    assert "node (level 1, idx 9) covering leaves 18..19 is missing" in text
    assert "leaves 30..30 are missing" in text
    assert "unexpected node row (level 1, idx 18)" in text
    assert "unexpected node row (level 9, idx 0)" in text
    with pytest.raises(Exception, match=r"node \(level 1, idx 9\).*missing"):
        log.inclusion_proof(16)


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
