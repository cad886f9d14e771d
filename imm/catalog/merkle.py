"""The ledger: an append-only RFC 6962 / RFC 9162 Merkle log persisted in SQLite.

Hashing is exactly RFC 6962 §2.1 (RFC 9162 §2.1.1)::

    leaf hash   = SHA-256(0x00 || data)
    node hash   = SHA-256(0x01 || left || right)
    MTH({})     = SHA-256("")
    MTH(D[n])   = node_hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n

so inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4) verify with any RFC 6962/9162
implementation.

Storage. ``ledger_leaves`` holds one row per leaf (its data and its leaf hash); ``ledger_nodes``
holds the hash of every *complete* subtree of ``2**MIN_STORED_LEVEL`` (32) leaves or more: row
``(level L, idx i)`` is the root of the perfect subtree over leaves ``[i*2^L, (i+1)*2^L)``, for
``L >= MIN_STORED_LEVEL``. The smaller subtrees (levels 1..4, at most 16 leaves) are hashed from
their leaves' stored hashes (the ``leaf_hash`` column) when a root, proof or append needs them: a
few dozen leaf hashes read beside a proof's own rows, while an append writes its leaf row alone
31 times in 32 (a node row written on every second append, on pages apart from the leaves', cost
about as much as the leaf itself). A complete subtree never changes once its last leaf is
appended, so the append that completes a subtree of 32 leaves or more writes its node(s),
reading those 32 leaf hashes and one stored sibling per higher node.

Any range that a root or proof needs (``[start, end)`` with ``start`` aligned to a power of two
at least ``end - start``) is the fold of O(log n) stored complete subtrees, and every range a
single proof needs decomposes into the proof's own siblings plus the perfect subtrees of the
tree's right edge; they are fetched in one batch, so roots and proofs cost O(log n) primary-key
lookups and a handful of statements.

Transactions. :class:`MerkleLog` never begins, commits or rolls back: the caller owns the
transaction, so a rolled-back caller transaction rolls the append back too. It keeps no state in
memory: every call reads the size from the database.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import BadRequest, ImmError
from ..store import Connection, IntegrityError
from .rfc6962 import (  # noqa: F401  (re-exported: the log's callers import them from here)
    _MAX_CONSISTENCY_PATH,
    _MAX_INCLUSION_PATH,
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    NODE_PREFIX,
    _consistency_ranges,
    _inclusion_ranges,
    _is_hash,
    _perfect_subtrees,
    _split,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_leaves (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
"""

_sha256 = hashlib.sha256

# Node levels below this are not stored (see the module's docstring). Changing it changes
# what a stored ledger holds: it needs a migration (catalog/schema.py) like 0005's.
MIN_STORED_LEVEL = 5
_LOW_ONES = (1 << MIN_STORED_LEVEL) - 1  # leaf i completes a stored subtree iff i & _LOW_ONES == _LOW_ONES

# Rows buffered per executemany() in append_many().
_BULK_CHUNK = 8192
# verify_all() reports at most this many problems by default.
_MAX_PROBLEMS = 1000
# verify_all() walks over a gap of missing leaf rows one index at a time up to this length.
_MAX_GAP_WALK = 1 << 20


class LedgerCorrupt(ImmError):
    """A stored ledger row that a computation needs is missing or malformed."""

    code = "ledger-corrupt"
    status = 500


def _hex(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return repr(value)


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{what} must be an integer, not {value!r}")
    return value


class MerkleLog:
    """The ledger's Merkle log over one SQLite connection.

    The caller owns the transaction: run appends inside one (an explicit BEGIN ... COMMIT, or
    Python's implicit transaction before DML) so that a leaf and the nodes it completes are
    written, or rolled back, together. Reads need no transaction: stored subtrees never change
    once written, so a root or proof computed while a writer commits is still that of the size
    read first.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        """Number of leaves (leaf indexes are contiguous from 0)."""
        row = self.conn.execute("SELECT MAX(idx) FROM ledger_leaves").fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def leaf(self, index: int) -> tuple[bytes, bytes]:
        """(data, stored leaf hash) of the leaf at ``index``."""
        n = self.size()
        self._check_index(index, n, "leaf index", ledger=True)
        row = self.conn.execute(
            "SELECT data, leaf_hash FROM ledger_leaves WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise LedgerCorrupt(
                f"ledger leaf {index} is missing although the ledger has {n} leaves; "
                "run the ledger verification"
            )
        data, stored = row
        if not isinstance(data, bytes):
            raise LedgerCorrupt(
                f"ledger leaf {index} holds {type(data).__name__} data, not a blob; "
                "run the ledger verification"
            )
        return data, _as_hash(stored, 0, index)

    def root(self, size: int | None = None) -> bytes:
        """Root (MTH) of the first ``size`` leaves; the current root by default."""
        n = self.size()
        size = n if size is None else self._check_size(size, n, "tree size", minimum=0)
        if size == 0:
            return EMPTY_ROOT
        return self._range_hashes([(0, size)])[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion path of leaf ``index`` in the tree of ``size`` leaves."""
        n = self.size()
        if n == 0:
            raise BadRequest(
                f"leaf index {index} is out of range: the ledger is empty, there is no leaf to "
                "prove inclusion of"
            )
        size = n if size is None else self._check_size(size, n, "tree size", minimum=1)
        self._check_index(index, size, "leaf index", ledger=size == n)
        return self._range_hashes(_inclusion_ranges(index, size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof from ``old_size`` to ``new_size`` (default: now).

        Empty when ``old_size`` is 0 or equals ``new_size``.
        """
        n = self.size()
        new_size = n if new_size is None else self._check_size(new_size, n, "new tree size", 0)
        old_size = _check_int(old_size, "old tree size")
        if not 0 <= old_size <= new_size:
            raise BadRequest(
                f"old tree size {old_size} is out of range: it must be between 0 and the new "
                f"tree size {new_size}"
            )
        if old_size == 0 or old_size == new_size:
            return []
        return self._range_hashes(_consistency_ranges(old_size, new_size))

    # -- appending -------------------------------------------------------------------------

    def append(self, data: bytes, created_at: int) -> int:
        """Append one leaf (and the stored complete subtrees it closes); returns its index."""
        if type(data) is not bytes:
            data = _check_data(data)
        if type(created_at) is not int:
            created_at = _check_int(created_at, "created_at")
        # The next index is taken inside the INSERT: one statement for the common append.
        cur = self.conn.execute(
            "INSERT INTO ledger_leaves (idx, data, leaf_hash, created_at) VALUES "
            "((SELECT COALESCE(MAX(idx), -1) + 1 FROM ledger_leaves), ?, ?, ?)",
            (data, _sha256(LEAF_PREFIX + data).digest(), created_at),
        )
        i = cur.lastrowid  # idx is SQLite's rowid
        if i is None:  # a backend without lastrowid (PostgreSQL): this transaction's last leaf
            i = self.size() - 1
        if i & _LOW_ONES == _LOW_ONES:
            self._store_nodes(i)
        return i

    def _store_nodes(self, i: int) -> None:
        """Store the subtrees of MIN_STORED_LEVEL and up that leaf ``i`` (just appended) completes."""
        # the lowest one from its 2**MIN_STORED_LEVEL leaves (leaf i included), in one range read
        lo = i - _LOW_ONES
        hashes: list[bytes] = []
        for idx, h in self.conn.execute(
            "SELECT idx, leaf_hash FROM ledger_leaves WHERE idx BETWEEN ? AND ? ORDER BY idx", (lo, i)
        ):
            if idx != lo + len(hashes):
                raise _missing(0, lo + len(hashes))
            hashes.append(_as_hash(h, 0, idx))
        if len(hashes) != _LOW_ONES + 1:
            raise _missing(0, lo + len(hashes))
        while len(hashes) > 1:
            hashes = [_sha256(NODE_PREFIX + hashes[k] + hashes[k + 1]).digest()
                      for k in range(0, len(hashes), 2)]
        h = hashes[0]
        level = MIN_STORED_LEVEL
        nodes = [(level, i >> level, h)]
        # each higher one from its stored left sibling
        top = level
        while (i >> top) & 1:
            top += 1
        if top > level:
            siblings = [(lv, (i >> lv) - 1) for lv in range(level, top)]
            known = self._fetch(siblings)
            for key in siblings:
                h = _sha256(NODE_PREFIX + known[key] + h).digest()
                nodes.append((key[0] + 1, i >> (key[0] + 1), h))
        self._insert_nodes(nodes)

    def append_many(self, items: Iterable[tuple[bytes, int]]) -> int:
        """Append ``(data, created_at)`` pairs in order (bulk path); returns the new size.

        Reads the right edge of the tree once (its O(log n) perfect subtrees), then hashes in
        memory and inserts leaves and nodes with executemany() in chunks.
        """
        n = self.size()
        # Hashes of the perfect subtrees of [0, n), largest (leftmost) first: the subtree for the
        # lowest set bit of n is on top, so appending leaf i merges with one entry per trailing
        # one bit of i.
        edge = _perfect_subtrees(0, n)
        known = self._fetch(edge)
        stack = [known[key] for key in edge]
        push, pop = stack.append, stack.pop

        leaf_rows: list[tuple[int, bytes, bytes, int]] = []
        node_rows: list[tuple[int, int, bytes]] = []
        add_leaf, add_node = leaf_rows.append, node_rows.append
        sha256, lp, np_ = _sha256, LEAF_PREFIX, NODE_PREFIX
        i = n
        for data, created_at in items:
            if type(data) is not bytes:
                data = _check_data(data)
            if type(created_at) is not int:
                created_at = _check_int(created_at, "created_at")
            h = sha256(lp + data).digest()
            add_leaf((i, data, h, created_at))
            j, level = i, 0
            while j & 1:
                h = sha256(np_ + pop() + h).digest()
                j >>= 1
                level += 1
                if level >= MIN_STORED_LEVEL:
                    add_node((level, j, h))
            push(h)
            i += 1
            if len(leaf_rows) >= _BULK_CHUNK:
                self._insert_leaves(leaf_rows)
                self._insert_nodes(node_rows)
                leaf_rows.clear()
                node_rows.clear()
        if leaf_rows:
            self._insert_leaves(leaf_rows)
        if node_rows:
            self._insert_nodes(node_rows)
        return i

    # -- verification ----------------------------------------------------------------------

    def verify_all(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        max_problems: int = _MAX_PROBLEMS,
    ) -> list[dict[str, Any]]:
        """Re-check the whole ledger from what is stored; returns the problems found.

        Every leaf hash is recomputed from the leaf's stored data, and every stored node is
        recomputed from its two stored children (a node or leaf hash), so a single altered value
        is named where it is: altered leaf data → that leaf; an altered stored leaf hash → that
        leaf and its level-1 parent; an altered node → that node and its parent. Missing leaves
        or nodes and unexpected node rows are reported too. Streams the tables (memory O(log n));
        ``progress(done, total)`` is called every 65536 leaves and at the end. At most
        ``max_problems`` problems are listed, then one entry saying how many more there were.
        """
        conn = self.conn
        # Start the leaf scan first: while it is pending, every later statement of this
        # connection reads the same snapshot (SQLite keeps one read transaction open while any
        # statement is active), so a writer committing meanwhile cannot skew size and tables.
        leaf_rows = iter(conn.execute("SELECT idx, data, leaf_hash FROM ledger_leaves ORDER BY idx"))
        first = next(leaf_rows, None)
        n = self.size()
        problems: list[dict[str, Any]] = []
        extra = 0

        def report(problem: dict[str, Any]) -> None:
            nonlocal extra
            if len(problems) < max_problems:
                problems.append(problem)
            else:
                extra += 1

        top = n.bit_length()  # node levels MIN_STORED_LEVEL .. top-1 may hold rows
        node_rows: list[Iterator[tuple[int, Any]]] = [iter(())] * max(top, MIN_STORED_LEVEL)
        heads: list[tuple[int, Any] | None] = [None] * max(top, MIN_STORED_LEVEL)
        for level in range(MIN_STORED_LEVEL, top):
            cur = conn.execute("SELECT idx, hash FROM ledger_nodes WHERE level = ? ORDER BY idx", (level,))
            node_rows[level] = iter(cur)
            heads[level] = next(node_rows[level], None)

        pending: list[Any] = [None] * max(top, 1)  # stored hash of the open left child per level
        sha256, lp, np_ = _sha256, LEAF_PREFIX, NODE_PREFIX

        def close_nodes(i: int, h: Any) -> None:
            # Leaf i (odd) has just been checked and ``h`` is its stored hash (None if the leaf
            # is missing): check every node it completes against its two stored children.
            level, j = 0, i
            while j & 1:
                left = pending[level]
                j >>= 1
                level += 1
                if level < MIN_STORED_LEVEL:  # not stored: computed from the stored leaf hashes
                    try:
                        h = sha256(np_ + left + h).digest()
                    except TypeError:  # a leaf below is missing or not a blob: reported on its own
                        h = None
                    continue
                head = heads[level]
                while head is not None and head[0] < j:
                    report(_unexpected_node(level, head[0], n))
                    head = next(node_rows[level], None)
                if head is not None and head[0] == j:
                    stored = head[1]
                    heads[level] = next(node_rows[level], None)
                else:
                    stored = None
                    heads[level] = head
                try:
                    computed = sha256(np_ + left + h).digest()
                except TypeError:  # a child is missing or not a blob: reported on its own
                    computed = None
                if stored is None:
                    report(_node_problem(level, j, "is missing"))
                    h = computed
                    continue
                if computed is not None and stored != computed:
                    report(
                        _node_problem(
                            level,
                            j,
                            "does not match the hash of its children "
                            f"(level {level - 1}, idx {2 * j} and {2 * j + 1})",
                            stored=_hex(stored),
                            expected=computed.hex(),
                        )
                    )
                h = stored
            pending[level] = h

        expected = 0
        for idx, data, stored_hash in itertools.chain((first,) if first else (), leaf_rows):
            if idx != expected or idx >= n:
                if idx >= n:  # cannot happen within one snapshot; never index past the levels
                    report({"index": idx, "problem": f"unexpected leaf index {idx}"})
                    continue
                if idx < expected:  # a negative index: never written by append
                    report({"index": idx, "problem": f"unexpected leaf index {idx}"})
                    continue
                report(
                    {
                        "index": expected,
                        "leaves": [expected, idx - 1],
                        "problem": f"leaves {expected}..{idx - 1} are missing (the ledger has "
                        f"{n} leaves, 0..{n - 1})",
                    }
                )
                if idx - expected > _MAX_GAP_WALK:
                    report(
                        {
                            "index": idx,
                            "problem": "the gap in leaf indexes is too large to check the tree "
                            "structure any further; verification stopped here",
                        }
                    )
                    break
                while expected < idx:
                    if expected & 1:
                        close_nodes(expected, None)
                    else:
                        pending[0] = None
                    expected += 1
            try:
                ok = sha256(lp + data).digest() == stored_hash
            except TypeError:
                ok = False
            if not ok:
                report(
                    {
                        "index": idx,
                        "problem": "leaf hash does not match the stored leaf data"
                        if isinstance(data, bytes)
                        else f"leaf data is not a blob but {type(data).__name__}",
                        "stored": _hex(stored_hash),
                        "expected": leaf_hash(data).hex() if isinstance(data, bytes) else None,
                    }
                )
            if idx & 1:
                close_nodes(idx, stored_hash)
            else:
                pending[0] = stored_hash
            expected = idx + 1
            if progress is not None and not expected & 0xFFFF:
                progress(expected, n)

        # Node rows nobody asked for: past the end of their level, or on levels that cannot exist.
        for level in range(MIN_STORED_LEVEL, top):
            head = heads[level]
            while head is not None:
                report(_unexpected_node(level, head[0], n))
                head = next(node_rows[level], None)
        for level, idx in conn.execute(
            "SELECT level, idx FROM ledger_nodes WHERE level < ? ORDER BY level, idx",
            (MIN_STORED_LEVEL,),
        ):
            report(_unexpected_node(level, idx, n))
        for level, idx in conn.execute(
            "SELECT level, idx FROM ledger_nodes WHERE level >= ? ORDER BY level, idx",
            (max(top, MIN_STORED_LEVEL),),
        ):
            report(_unexpected_node(level, idx, n))
        if progress is not None:
            progress(n, n)
        if extra:
            problems.append({"problem": f"{extra} more problems not listed"})
        return problems

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _check_index(index: int, size: int, what: str, *, ledger: bool) -> int:
        index = _check_int(index, what)
        if not 0 <= index < size:
            if ledger:
                where = (
                    "the ledger has no leaves"
                    if size == 0
                    else f"the ledger has {size} {'leaf' if size == 1 else 'leaves'} (0..{size - 1})"
                )
            else:
                where = f"the tree of size {size} has leaves 0..{size - 1}"
            raise BadRequest(f"{what} {index} is out of range: {where}")
        return index

    @staticmethod
    def _check_size(size: int, n: int, what: str, minimum: int) -> int:
        size = _check_int(size, what)
        if not minimum <= size <= n:
            raise BadRequest(
                f"{what} {size} is out of range: the ledger has {n} "
                f"{'leaf' if n == 1 else 'leaves'}, so it must be between {minimum} and {n}"
            )
        return size

    def _insert_leaves(self, rows: list[tuple[int, bytes, bytes, int]]) -> None:
        try:
            self.conn.executemany(
                "INSERT INTO ledger_leaves (idx, data, leaf_hash, created_at) VALUES (?, ?, ?, ?)",
                rows,
            )
        except IntegrityError as e:
            raise LedgerCorrupt(f"cannot append leaf {rows[0][0]}: {e}; run the ledger verification") from e

    def _insert_nodes(self, rows: list[tuple[int, int, bytes]]) -> None:
        try:
            self.conn.executemany("INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)", rows)
        except IntegrityError as e:
            raise LedgerCorrupt(
                f"cannot store ledger node (level {rows[0][0]}, idx {rows[0][1]}): {e} "
                "(a stale node row exists); run the ledger verification"
            ) from e

    def _fetch(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Hashes of the given complete subtrees, in (at most) two statements: stored ones
        read, those below MIN_STORED_LEVEL hashed from their leaves' stored hashes."""
        leaves: set[int] = set()
        nodes: set[tuple[int, int]] = set()
        low: list[tuple[int, int]] = []
        for level, idx in keys:
            if level == 0:
                leaves.add(idx)
            elif level < MIN_STORED_LEVEL:
                low.append((level, idx))
            else:
                nodes.add((level, idx))
        wanted = set(leaves)
        for level, idx in low:
            wanted.update(range(idx << level, (idx + 1) << level))
        out: dict[tuple[int, int], bytes] = {}
        conn = self.conn
        stored: dict[int, Any] = {}
        if wanted:
            lo, hi = min(wanted), max(wanted)
            if hi - lo < 2 * len(wanted):  # mostly one block of leaves: one range read
                cur = conn.execute(
                    "SELECT idx, leaf_hash FROM ledger_leaves WHERE idx BETWEEN ? AND ?", (lo, hi)
                )
            else:
                marks = ",".join("?" * len(wanted))
                cur = conn.execute(
                    f"SELECT idx, leaf_hash FROM ledger_leaves WHERE idx IN ({marks})",  # noqa: S608
                    tuple(wanted),
                )
            stored = dict(cur.fetchall())
        if nodes:
            params: list[int] = []
            for level, idx in nodes:
                params += (level, idx)
            marks = ",".join(["(?,?)"] * len(nodes))
            # CROSS JOIN fixes the join order: one primary-key search per wanted key. (A
            # row-value "(level, idx) IN (VALUES ...)" would scan the whole table.)
            for level, idx, h in conn.execute(
                f"SELECT n.level, n.idx, n.hash FROM (VALUES {marks}) AS k "  # noqa: S608
                "CROSS JOIN ledger_nodes AS n ON n.level = k.column1 AND n.idx = k.column2",
                params,
            ):
                out[(level, idx)] = h
        for i in leaves:
            if i not in stored:
                raise _missing(0, i)
            out[(0, i)] = _as_hash(stored[i], 0, i)
        for key in nodes:
            if key not in out:
                raise _missing(*key)
            out[key] = _as_hash(out[key], *key)
        sha256, np_ = _sha256, NODE_PREFIX
        for level, idx in low:
            first = idx << level
            hashes: list[Any] = [stored.get(j) for j in range(first, first + (1 << level))]
            for j, h in enumerate(hashes):
                if type(h) is not bytes or len(h) != HASH_SIZE:
                    if h is None:
                        raise _missing(0, first + j)
                    _as_hash(h, 0, first + j)  # raises, naming the leaf
            while len(hashes) > 1:
                hashes = [sha256(np_ + hashes[k] + hashes[k + 1]).digest()
                          for k in range(0, len(hashes), 2)]
            out[(level, idx)] = hashes[0]
        return out

    def _range_hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """MTH of each leaf range, fetching every stored subtree needed in one batch."""
        parts = [_perfect_subtrees(a, b) for a, b in ranges]
        known = self._fetch(key for part in parts for key in part)
        out = []
        for part in parts:
            h = known[part[-1]]
            for key in reversed(part[:-1]):
                h = node_hash(known[key], h)
            out.append(h)
        return out


def _check_data(data: object) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if not isinstance(data, bytes):
        raise BadRequest(f"ledger leaf data must be bytes, not {type(data).__name__}")
    return data


def _missing(level: int, idx: int) -> LedgerCorrupt:
    if level == 0:
        return LedgerCorrupt(f"ledger leaf {idx} is missing; run the ledger verification")
    first, last = idx << level, ((idx + 1) << level) - 1
    return LedgerCorrupt(
        f"ledger node (level {level}, idx {idx}) covering leaves {first}..{last} is missing; "
        "run the ledger verification"
    )


def _as_hash(value: object, level: int, idx: int) -> bytes:
    if isinstance(value, bytes) and len(value) == HASH_SIZE:
        return value
    where = f"leaf {idx}" if level == 0 else f"node (level {level}, idx {idx})"
    raise LedgerCorrupt(f"ledger {where} holds a malformed hash ({_hex(value)}); run the ledger verification")


def _node_problem(level: int, idx: int, what: str, **extra: Any) -> dict[str, Any]:
    first, last = idx << level, ((idx + 1) << level) - 1
    return {
        "level": level,
        "idx": idx,
        "leaves": [first, last],
        "problem": f"node (level {level}, idx {idx}) covering leaves {first}..{last} {what}",
        **extra,
    }


def _unexpected_node(level: int, idx: int, size: int) -> dict[str, Any]:
    why = (
        f"subtrees below level {MIN_STORED_LEVEL} are not stored"
        if 1 <= level < MIN_STORED_LEVEL
        else f"no complete subtree of a ledger of {size} leaves has that position"
    )
    return {"level": level, "idx": idx, "problem": f"unexpected node row (level {level}, idx {idx}): {why}"}
