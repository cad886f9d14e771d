"""The ledger in the C2SP tlog-tiles layout (https://c2sp.org/tlog-tiles), read-only.

``/checkpoint`` is the signed checkpoint; ``/tile/<L>/<N>[.p/<W>]`` is the concatenation of the
Merkle Tree Hashes ``MTH(D[(N*256+i) * 256**L : (N*256+i+1) * 256**L])`` for i < 256 (or W for
a partial tile); ``/tile/entries/<N>[.p/<W>]`` is the entry bundle (uint16 big-endian length
prefixed leaves). N is written as zero-padded 3-digit path elements, all but the last prefixed
with ``x`` (1234067 → ``x001/x234/067``).

The ledger keeps every complete-subtree hash from level ``merkle.MIN_STORED_LEVEL`` (5) on
(``ledger_nodes(level, idx)`` is the hash of the 2**level leaves from idx * 2**level), so a tile
at level L >= 1 is one range read of level 8L, and a tile at level 0 one of leaf hashes: the
same layout as Go's checksum database, Rekor v2 and Sigsum, so standard tile clients can mirror
the ledger and prove inclusion without imm's tools. A partial tile is a prefix of the full tile
it becomes, so any width the tree already covers is served.
"""

from __future__ import annotations

import re
import struct

from ..errors import BadRequest, NotFound
from ..store import Connection
from .merkle import MerkleLog

WIDTH = 256
HEIGHT = 8
MAX_LEVEL = 63
_ELEM = re.compile(r"^x\d{3}$")


def parse_path(path: str) -> tuple[int | None, int, int | None]:
    """``"<L>/<N>[.p/<W>]"`` or ``"entries/<N>[.p/<W>]"`` → (level or None for entries, N, W)."""
    if not isinstance(path, str) or not path or len(path) > 200:
        raise BadRequest(f"bad tile path {str(path)[:80]!r}")
    parts = path.split("/")
    width: int | None = None
    if len(parts) >= 2 and parts[-2].endswith(".p"):
        w = parts[-1]
        if not w.isdigit() or w != str(int(w)) or not 1 <= int(w) <= WIDTH - 1:
            raise BadRequest(f"bad tile path {path!r}: partial width {w!r} must be 1..255 "
                             "without leading zeroes")
        width = int(w)
        parts = [*parts[:-2], parts[-2][:-2]]
    if len(parts) < 2:
        raise BadRequest(f"bad tile path {path!r}: expected <L>/<N>[.p/<W>] or "
                         "entries/<N>[.p/<W>]")
    head, elems = parts[0], parts[1:]
    if head == "entries":
        level = None
    elif head.isdigit() and head == str(int(head)) and int(head) <= MAX_LEVEL:
        level = int(head)
    else:
        raise BadRequest(f"bad tile path {path!r}: level {head!r} must be 0..63 or 'entries'")
    if not re.fullmatch(r"\d{3}", elems[-1]) or not all(_ELEM.match(e) for e in elems[:-1]):
        raise BadRequest(f"bad tile path {path!r}: the index must be 3-digit elements, all but "
                         "the last starting with x (e.g. x001/x234/067)")
    index = 0
    for e in elems:
        index = index * 1000 + int(e.lstrip("x"))
    if encode_index(index) != "/".join(elems):
        raise BadRequest(f"bad tile path {path!r}: non-canonical index encoding")
    return level, index, width


def encode_index(n: int) -> str:
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int | None, index: int, width: int | None = None) -> str:
    head = "entries" if level is None else str(level)
    return f"{head}/{encode_index(index)}" + (f".p/{width}" if width else "")


def tile(conn: Connection, level: int, index: int, width: int | None) -> bytes:
    """The hashes of tile (level, index), full (width None) or partial."""
    size = MerkleLog(conn).size()
    want = width or WIDTH
    span = WIDTH ** level  # leaves under one hash of this tile
    if (index * WIDTH + want) * span > size:
        raise NotFound(f"tile {tile_path(level, index, width)} is beyond the ledger's {size} "
                       "leaves")
    lo, hi = index * WIDTH, index * WIDTH + want - 1
    if level == 0:
        rows = conn.execute("SELECT leaf_hash FROM ledger_leaves WHERE idx BETWEEN ? AND ? "
                            "ORDER BY idx", (lo, hi)).fetchall()
    else:
        rows = conn.execute("SELECT hash FROM ledger_nodes WHERE level = ? AND idx BETWEEN ? "
                            "AND ? ORDER BY idx", (HEIGHT * level, lo, hi)).fetchall()
    if len(rows) != want:
        raise NotFound(f"tile {tile_path(level, index, width)}: {len(rows)} of {want} hashes "
                       "are stored; run 'immctl ledger verify'")
    return b"".join(bytes(r[0]) for r in rows)


def entries(conn: Connection, index: int, width: int | None) -> bytes:
    """The entry bundle: each leaf's data with a big-endian uint16 length prefix."""
    size = MerkleLog(conn).size()
    want = width or WIDTH
    if index * WIDTH + want > size:
        raise NotFound(f"entry bundle {tile_path(None, index, width)} is beyond the ledger's "
                       f"{size} leaves")
    rows = conn.execute("SELECT idx, data FROM ledger_leaves WHERE idx BETWEEN ? AND ? "
                        "ORDER BY idx", (index * WIDTH, index * WIDTH + want - 1)).fetchall()
    out = []
    for idx, data in rows:
        data = bytes(data)
        if len(data) > 0xFFFF:
            raise NotFound(f"entry bundle {tile_path(None, index, width)}: leaf {idx} is "
                           f"{len(data)} bytes, more than a tlog-tiles entry holds (65535); "
                           f"read it with 'immctl ledger leaf {idx}'")
        out.append(struct.pack(">H", len(data)) + data)
    return b"".join(out)
