"""Audit bundles: observations and findings of a time range, each line proven, all signed.

The format is described in ``bundle_verify`` (which checks it). :class:`BundleWriter` produces
it in pieces so a caller can stream it: ``begin`` (fixes the ledger size and signs a checkpoint
for it), ``next`` until it returns None (a chunk of lines at a time, read in ledger order from a
cursor), and ``end`` (the signature over every line). Each call takes a connection and is
independent of the others, so the daemon runs each on a reader thread in its own snapshot:
audit events below the fixed ledger size never change, so the chunks fit together. Memory stays
constant in the number of lines: one chunk and one batch's small tree at a time.

Which events a range ``[since, until)`` holds: every event whose time is in it, plus the opening
events of observations and findings still open at ``since`` (what ran before the range and was
still running in it), so every line of a range stands on its own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

from ..catalog import checkpoint, dsse
from ..catalog.merkle import MerkleLog
from ..catalog.service import Catalog
from ..errors import BadRequest
from ..store import Connection, now
from .bundle_verify import CSV_COLUMNS, FORMAT, dumps, flatten
from .events import tree_levels, tree_path

FORMATS = ("jsonl", "csv")
CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
CHUNK = 2000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(value: str | None, what: str) -> str | None:
    """An RFC 3339 time, a date (midnight UTC) or Unix seconds, as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if text.isdigit():
            when = datetime.fromtimestamp(int(text), UTC)
        else:
            when = datetime.fromisoformat(text + ("T00:00:00" if _DATE.match(text) else ""))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        raise BadRequest(f"{what} {value!r} is not a time: use RFC 3339 "
                         "(2026-03-01T00:00:00Z), a date (2026-03-01) or Unix seconds") from None


class BundleWriter:
    """One bundle, written in pieces (see the module docstring)."""

    def __init__(self, catalog: Catalog, *, since: str | None = None, until: str | None = None,
                 fmt: str = "jsonl", chunk: int = CHUNK) -> None:
        if fmt not in FORMATS:
            raise BadRequest(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        if since and until and since >= until:
            raise BadRequest(f"since {since} is not before until {until}")
        self.origin = catalog.origin
        self.key = catalog.keyring.private  # the key at the start signs the whole bundle
        self.keyid = catalog.keyring.keyid
        self.since, self.until, self.fmt, self.chunk = since, until, fmt, chunk
        self.size = 0
        self.lines = 0
        self.sha = hashlib.sha256()
        self.header_sha = ""
        self.cursor: tuple[int, int] | None = None  # last (ledger_index, entry) written
        self.done = False
        self._record: tuple[int, list[list[bytes]]] | None = None
        self.counts = {"record": 0, "observation": 0, "finding": 0}

    # -- lines ---------------------------------------------------------------------------------

    def _emit(self, line: dict[str, Any], out: list[bytes]) -> None:
        raw = dumps(line) + b"\n"
        self.lines += 1
        self.sha.update(raw)
        if self.lines == 1:
            self.header_sha = hashlib.sha256(raw).hexdigest()
        out.append(self._encode(line, raw, self.lines))

    def _encode(self, line: dict[str, Any], raw: bytes, number: int) -> bytes:
        if self.fmt == "jsonl":
            return raw
        buf = io.StringIO()
        csv.writer(buf).writerow(flatten(line, number))
        return buf.getvalue().encode("utf-8")

    # -- pieces --------------------------------------------------------------------------------

    def begin(self, conn: Connection) -> bytes:
        """The header: fixes the ledger size every line is proven against."""
        log = MerkleLog(conn)
        self.size = log.size()
        note = checkpoint.sign(self.origin, self.size, log.root(self.size), self.origin,
                               self.key)
        out: list[bytes] = []
        if self.fmt == "csv":
            buf = io.StringIO()
            csv.writer(buf).writerow(CSV_COLUMNS)
            out.append(buf.getvalue().encode("utf-8"))
        self._emit({"type": "header", "format": FORMAT, "since": self.since,
                    "until": self.until, "origin": self.origin, "keyid": self.keyid,
                    "checkpoint": note, "created_at": now()}, out)
        self.cursor = (self._start(conn), -1)
        return b"".join(out)

    def _start(self, conn: Connection) -> int:
        """Where in the ledger the range's first event can be (a starting point, not exact)."""
        if not self.since:
            return -1
        firsts = [
            conn.execute("SELECT min(ledger_index) FROM audit_events WHERE at >= ?",
                         (self.since,)).fetchone()[0],
            conn.execute("SELECT min(ledger_index) FROM audit_events WHERE event='open' AND "
                         "at < ? AND (ends_at IS NULL OR ends_at >= ?)",
                         (self.since, self.since)).fetchone()[0],
        ]
        known = [f for f in firsts if f is not None]
        return min(known) if known else self.size

    def _where(self) -> tuple[str, list[Any]]:
        where: list[str] = ["ledger_index < ?"]
        params: list[Any] = [self.size]
        if self.since:
            where.append("((at >= ?" + (" AND at < ?" if self.until else "") + ") OR "
                         "(event = 'open' AND at < ? AND (ends_at IS NULL OR ends_at >= ?)))")
            params += [self.since] + ([self.until] if self.until else []) + [self.since] * 2
        elif self.until:
            where.append("at < ?")
            params.append(self.until)
        return " AND ".join(where), params

    def next(self, conn: Connection) -> bytes | None:
        """The next chunk of lines, or None when every event of the range is out."""
        if self.done or self.cursor is None:
            return None
        where, params = self._where()
        rows = conn.execute(
            f"SELECT ledger_index, entry, body FROM audit_events "  # noqa: S608 - fixed text
            f"WHERE (ledger_index, entry) > (?, ?) AND {where} "
            "ORDER BY ledger_index, entry LIMIT ?",
            (*self.cursor, *params, self.chunk)).fetchall()
        if not rows:
            self.done = True
            return None
        out: list[bytes] = []
        for index, entry, body in rows:
            levels = self._levels(conn, index, out)
            event = json.loads(body)
            self._emit({**event, "n": self.lines + 1, "ledger_index": index, "entry": entry,
                        "leaf_hash": levels[0][entry].hex(),
                        "proof": [h.hex() for h in tree_path(levels, entry)]}, out)
            self.counts[event["type"]] += 1
        self.cursor = (rows[-1][0], rows[-1][1])
        return b"".join(out)

    def _levels(self, conn: Connection, index: int, out: list[bytes]) -> list[list[bytes]]:
        """The batch tree of the record at ``index``, writing its record line on first use."""
        if self._record is not None and self._record[0] == index:
            return self._record[1]
        row = conn.execute("SELECT entries, hashes FROM audit_records WHERE ledger_index=?",
                           (index,)).fetchone()
        if row is None:
            raise RuntimeError(f"audit events refer to ledger index {index}, which holds no "
                               "audit record")
        entries, blob = row
        levels = tree_levels([bytes(blob[i * 32:(i + 1) * 32]) for i in range(entries)])
        log = MerkleLog(conn)
        data, leaf = log.leaf(index)
        self._emit({"type": "record", "n": self.lines + 1, "ledger_index": index,
                    "leaf_hash": leaf.hex(),
                    "proof": [h.hex() for h in log.inclusion_proof(index, self.size)],
                    "envelope": json.loads(data)}, out)
        self.counts["record"] += 1
        self._record = (index, levels)
        return levels

    def end(self) -> bytes:
        """The signature line over every line so far."""
        body = {"format": FORMAT, "sha256": self.sha.hexdigest(),
                "header_sha256": self.header_sha, "lines": self.lines,
                "checkpoint_size": self.size}
        env = dsse.sign("audit-bundle", body, self.key, self.keyid)
        line = {"type": "signature", "envelope": env}
        return self._encode(line, dumps(line) + b"\n", self.lines + 1)


def write_bundle(conn: Connection, catalog: Catalog, out: Any, **kw: Any) -> BundleWriter:
    """Write a whole bundle to the binary file ``out`` from one connection (tools, benches)."""
    w = BundleWriter(catalog, **kw)
    out.write(w.begin(conn))
    while (chunk := w.next(conn)) is not None:
        out.write(chunk)
    out.write(w.end())
    return w
