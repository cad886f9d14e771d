"""RFC 6962 / RFC 9162 hashing and proof verification: pure functions over hashes, no store.

The Merkle log (merkle.py) stores and proves; this module is what any verifier needs: the leaf
and node hashes of RFC 6962 §2.1, the root of a list of leaf hashes, and the checks of an
inclusion proof (RFC 9162 §2.1.3.2) and a consistency proof (§2.1.4.2)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256
# a proof longer than a tree of 2^64 leaves could need is refused before any hashing
_MAX_INCLUSION_PATH = 64
_MAX_CONSISTENCY_PATH = 2 * 64


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes, straight from RFC 6962 §2.1 (a reference; O(n))."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(hashes[0])
    k = _split(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


# --------------------------------------------------------------------------------------------
# Proof layouts: which leaf ranges' MTHs make up a proof (pure arithmetic, no hashing).


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges of RFC 9162 PATH(index, D[0:size]), in proof order (deepest first)."""
    out: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    out.reverse()
    return out


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges of RFC 9162 PROOF(old_size, D[0:new_size]) (0 < old_size < new_size)."""
    out: list[tuple[int, int]] = []
    start, m, n = 0, old_size, new_size
    complete = True  # SUBPROOF's b: the current subtree's root is the old root itself
    while m != n:
        k = _split(n)
        if m <= k:
            out.append((start + k, start + n))
            n = k
        else:
            out.append((start, start + k))
            start += k
            m -= k
            n -= k
            complete = False
    if not complete:
        out.append((start, start + n))
    out.reverse()
    return out


def _perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Split ``[start, end)`` into maximal aligned perfect subtrees ``(level, idx)``, left first.

    For the ranges that appear in MTH recursion (``start`` aligned to a power of two at least
    ``end - start``) this is the binary decomposition of the width, largest subtree first, and
    MTH of the range is the right-to-left fold of these subtrees' hashes.
    """
    out: list[tuple[int, int]] = []
    while start < end:
        width = end - start
        level = width.bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        out.append((level, start >> level))
        start += 1 << level
    return out


# --------------------------------------------------------------------------------------------
# Pure verifiers (RFC 9162 §2.1.3.2 and §2.1.4.2); no database, for offline verification.


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes) and len(h) == HASH_SIZE


def verify_inclusion(leaf_hash: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """True iff ``path`` proves the leaf hash sits at ``index`` in the tree of ``size`` with
    ``root`` (RFC 9162 §2.1.3.2)."""
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    if len(path) > _MAX_INCLUSION_PATH or not _is_hash(leaf_hash) or not _is_hash(root):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in path:
        if not _is_hash(p) or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> bool:
    """True iff ``path`` proves the tree of ``new_size`` with ``new_root`` extends the tree of
    ``old_size`` with ``old_root`` (RFC 9162 §2.1.4.2).

    The cases RFC 9162 leaves to the caller: ``old_size == new_size`` needs an empty path and
    equal roots; ``old_size == 0`` needs an empty path and ``old_root`` = SHA-256("") (the root of
    the empty tree), since every tree extends the empty one.
    """
    if not (isinstance(old_size, int) and isinstance(new_size, int)):
        return False
    if not 0 <= old_size <= new_size or not _is_hash(old_root) or not _is_hash(new_root):
        return False
    if old_size == new_size:
        return not path and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not path and hmac.compare_digest(old_root, EMPTY_ROOT)
    # 1. An empty proof fails.
    if not path or len(path) > _MAX_CONSISTENCY_PATH or not all(_is_hash(p) for p in path):
        return False
    # 2. If first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path = [old_root, *path]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, right-shift fn and sn until it is not.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = first value of the path.
    fr = sr = path[0]
    # 6. For each subsequent value c.
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash, sn == 0.
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)


# --------------------------------------------------------------------------------------------
