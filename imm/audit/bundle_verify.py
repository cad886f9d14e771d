"""Verify an audit bundle offline, with nothing but the public key: no daemon, no database.

Imports only the standard library, ``cryptography`` and imm's pure verifiers (RFC 9162
inclusion proofs, C2SP checkpoints, DSSE), so an auditor can run it anywhere.

The bundle (``imm-audit-bundle/1``) is JSON Lines, every line canonical JSON (keys sorted, no
spaces), read top to bottom with constant memory:

1. ``{"type": "header", "format", "since", "until", "origin", "keyid", "checkpoint", "created_at"}``:
   ``checkpoint`` is a signed C2SP checkpoint (size S, root R) every later line proves against.
2. ``{"type": "record", "n", "ledger_index", "leaf_hash", "proof", "envelope"}``: a signed
   ledger record (DSSE, kind ``audit-finding``, body ``{"type": "audit-batch", "entries": E,
   "root": hex, ...}``) that commits to a batch of audit events; ``proof`` is the RFC 9162
   inclusion path of ``leaf_hash`` = SHA-256(0x00 || canonical envelope) at ``ledger_index``
   in the tree (S, R).
3. ``{"type": "observation" | "finding", "event", ...event fields, "n", "ledger_index", "entry",
   "leaf_hash", "proof"}``: one audit event. The event is the line without ``n``,
   ``ledger_index``, ``entry``, ``leaf_hash`` and ``proof``; its leaf hash is SHA-256(0x00 ||
   canonical event) and ``proof`` leads from it, at position ``entry``, to the ``root`` of the
   record line with the same ``ledger_index`` (which comes first).
4. Last: ``{"type": "signature", "envelope"}``, a DSSE envelope (kind ``audit-bundle``) over
   ``{"format", "sha256", "header_sha256", "lines", "checkpoint_size"}``: ``sha256`` of the
   bytes of every line before it (each with its newline), ``header_sha256`` of line 1.

``n`` is each line's own number (the header is line 1), so a dropped or moved line is named.
Lines are ordered by ``(ledger_index, entry)``.

CSV bundles carry the same lines: a column header row, then one row per bundle line whose
last column ``json`` is that line's canonical JSON and whose other columns flatten it (see
:func:`flatten`). The verifier checks the columns against ``json`` and then ``json`` exactly as
above; the signature row's signature covers the JSON lines, so one signature serves both forms.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..catalog import checkpoint, dsse
from ..catalog.merkle import leaf_hash, verify_inclusion

FORMAT = "imm-audit-bundle/1"
EVENT_TYPES = ("observation", "finding")
EVENTS = {"observation": ("open", "close"), "finding": ("open", "resolve")}
PROOF_KEYS = ("n", "ledger_index", "entry", "leaf_hash", "proof")
CSV_COLUMNS = ("line", "type", "event", "at", "provider", "region", "instance_id", "image_id",
               "digest", "service", "verdict", "finding", "detail", "first_seen", "last_seen",
               "ledger_index", "entry", "leaf_hash", "proof", "json")


def dumps(obj: Any) -> bytes:
    """Canonical JSON (the same bytes as ``imm.catalog.canonical``, for float-free data)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def event_of(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in PROOF_KEYS}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return dumps(value).decode("utf-8")


def flatten(line: dict[str, Any], number: int) -> list[str]:
    """The CSV row of one bundle line: readable columns, then the line's JSON itself."""
    kind = line.get("type")
    cols = {
        "line": str(number), "type": _cell(kind), "event": _cell(line.get("event")),
        "at": _cell(line.get("at") or line.get("created_at")),
        "provider": _cell(line.get("provider")), "region": _cell(line.get("region")),
        "instance_id": _cell(line.get("instance_id")), "image_id": _cell(line.get("image_id")),
        "digest": _cell(line.get("digest")), "service": _cell(line.get("service")),
        "verdict": _cell(line.get("verdict")),
        "finding": _cell(line.get("id")) if kind == "finding" else "",
        "detail": _cell(line.get("detail")), "first_seen": _cell(line.get("first_seen")),
        "last_seen": _cell(line.get("last_seen")),
        "ledger_index": _cell(line.get("ledger_index")), "entry": _cell(line.get("entry")),
        "leaf_hash": _cell(line.get("leaf_hash")),
        "proof": " ".join(str(p) for p in line.get("proof") or ()),
        "json": dumps(line).decode("utf-8"),
    }
    return [cols[c] for c in CSV_COLUMNS]


MAX_LINE_BYTES = 4 << 20  # a line holds one event or one signed record: kilobytes
MAX_JSON_DEPTH = 32  # bundle lines nest a few levels
MAX_KEY_BYTES = 64 << 10  # a PEM public key is a few hundred bytes


class Refused(ValueError):
    """The input is not something this verifier reads (not a regular file, over a limit):
    bad input rather than a failed verification."""


def open_regular(path: str | Path, what: str) -> Any:
    """Open ``path`` for reading only if it is a regular file: a device, FIFO or socket
    (``/dev/zero``, a pipe) would be read forever or block."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                    "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise Refused(f"{what} {path} is {kind}; give a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load the Ed25519 public key PEM at ``path`` (a regular file of at most 64 KiB)."""
    with open_regular(path, "key") as f:
        data = f.read(MAX_KEY_BYTES + 1)
    if len(data) > MAX_KEY_BYTES:
        raise Refused(f"key {path} is larger than {MAX_KEY_BYTES // 1024} KiB, the limit for a "
                      "PEM public key; give the file 'immctl keys export' wrote")
    if b"-----BEGIN" not in data:
        raise Refused(f"key {path} is not a PEM file (no '-----BEGIN' line); give the file "
                      "'immctl keys export' wrote")
    return load_public_key(data, str(path))


def _limited_lines(f: Any) -> Iterator[bytes]:
    """The lines of ``f``, refusing one longer than MAX_LINE_BYTES without reading it all."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise Refused(f"line {number} is longer than the limit of {MAX_LINE_BYTES} bytes; "
                          "this is not a bundle 'immctl audit export' wrote")
        yield raw


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests deeper than ``limit`` (brackets outside strings counted),
    checked before parsing, which would recurse once per level."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def load_public_key(data: bytes, source: str = "key") -> Ed25519PublicKey:
    try:
        pub = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ValueError(f"{source} is not a PEM public key ({e}); get one with "
                         "'immctl keys export'") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError(f"{source} is not an Ed25519 public key")
    return pub


def keyid_of(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass
class Result:
    ok: bool
    lines: int
    failure: str | None = None  # "line N: what is wrong", the first failing line
    failing_line: int | None = None
    problems: int = 0
    checkpoint_size: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    since: str | None = None
    until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "failure": self.failure,
                "failing_line": self.failing_line, "problems": self.problems,
                "checkpoint_size": self.checkpoint_size, "counts": self.counts,
                "since": self.since, "until": self.until}


class _Fail(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _hex32(value: Any) -> bytes | None:
    """32 bytes from exactly 64 lowercase hex digits (one spelling per hash: no edit slips by)."""
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if raw.hex() == value else None


def _path(value: Any) -> list[bytes] | None:
    if not isinstance(value, list) or len(value) > 64:
        return None
    out = []
    for h in value:
        b = _hex32(h)
        if b is None:
            return None
        out.append(b)
    return out


def _no_float(text: str) -> Any:
    raise _Fail(f"not canonical JSON: {text} (canonical JSON has no floats)")


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Verifier:
    """Feed lines in order with :meth:`feed`, then :meth:`finish`. Constant memory."""

    def __init__(self, pub: Ed25519PublicKey, *, label: str = "line") -> None:
        self.pub = pub
        self.keyid = keyid_of(pub)
        self.label = label
        self.sha = hashlib.sha256()
        self.header_sha: str | None = None
        self.lines = 0
        self.size: int | None = None
        self.root: bytes | None = None
        self.record: tuple[int, int, bytes] | None = None  # (ledger index, entries, root)
        self.last_entry = -1
        self.last_index = -1
        self.signed: dict[str, Any] | None = None
        self.signature_line: int | None = None
        self.first: tuple[int, str] | None = None
        self.problems = 0
        self.counts: dict[str, int] = {}
        self.since: str | None = None
        self.until: str | None = None
        self.fatal = False

    def _lookup(self, keyid: str) -> Ed25519PublicKey | None:
        return self.pub if keyid == self.keyid else None

    def fail(self, number: int, message: str, where: str | None = None) -> None:
        self.problems += 1
        if self.first is None or number < self.first[0]:
            self.first = (number, f"{where or f'{self.label} {number}'}: {message}")

    def feed(self, raw: bytes, where: str | None = None) -> None:
        """One line's bytes, newline included (the last line may lack it)."""
        self.lines += 1
        number = self.lines
        if self.signature_line is not None:
            self.fail(number, f"data after the signature line (line {self.signature_line})",
                      where)
            return
        body = raw[:-1] if raw.endswith(b"\n") else raw
        try:
            line = self._parse(body)
            if number == 1:
                self._header(line)
            elif line.get("type") == "signature":
                self.signature_line = number
                self.signed = self._signature(line)
            else:
                self._data(line, number)
        except _Fail as e:
            self.fail(number, e.message, where)
            if number == 1:
                self.fatal = True
        if self.signature_line != number:
            whole = raw if raw.endswith(b"\n") else raw + b"\n"
            self.sha.update(whole)
            if number == 1:
                self.header_sha = hashlib.sha256(whole).hexdigest()

    def _parse(self, body: bytes) -> dict[str, Any]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail("not UTF-8 text") from None
        if text.count("[") + text.count("{") > MAX_JSON_DEPTH and \
                json_depth_exceeds(text, MAX_JSON_DEPTH):
            raise Refused(f"{self.label} {self.lines} nests deeper than the limit of "
                          f"{MAX_JSON_DEPTH} levels; this is not a bundle 'immctl audit "
                          "export' wrote")
        try:
            line = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        except _Fail:
            raise
        except ValueError as e:
            raise _Fail(f"not JSON ({e})") from None
        if not isinstance(line, dict):
            raise _Fail("not a JSON object")
        if dumps(line) != body:
            raise _Fail("not canonical JSON (keys sorted, no spaces): the line was altered")
        return line

    def _header(self, line: dict[str, Any]) -> None:
        if line.get("type") != "header":
            raise _Fail("not a bundle header (type 'header' expected on line 1)")
        if line.get("format") != FORMAT:
            raise _Fail(f"unknown format {line.get('format')!r}; this verifier reads {FORMAT}")
        if line.get("keyid") != self.keyid:
            raise _Fail(f"the bundle was made with key {str(line.get('keyid'))[:16]}…, not the "
                        f"given key {self.keyid[:16]}…")
        origin = line.get("origin")
        note = line.get("checkpoint")
        if not isinstance(origin, str) or not isinstance(note, str):
            raise _Fail("header lacks 'origin' or 'checkpoint'")
        try:
            cp_origin, size, root = checkpoint.verify(note, origin, self.pub)
        except ValueError as e:
            raise _Fail(f"checkpoint does not verify with the given key: {e}") from None
        if cp_origin != origin:
            raise _Fail(f"checkpoint origin {cp_origin!r} is not the header's {origin!r}")
        self.size, self.root = size, root
        self.since, self.until = line.get("since"), line.get("until")

    def _data(self, line: dict[str, Any], number: int) -> None:
        if self.size is None or self.root is None:
            raise _Fail("cannot be checked: the header (line 1) did not verify")
        if not _int(line.get("n")) or line.get("n") != number:
            raise _Fail(f"says it is line {line.get('n')}: a line before it was removed, "
                        "added or moved")
        kind = line.get("type")
        self.counts[str(kind)] = self.counts.get(str(kind), 0) + 1
        if kind == "record":
            self._record(line)
        elif kind in EVENT_TYPES:
            self._event(line, str(kind))
        else:
            raise _Fail(f"unknown line type {kind!r}")

    def _record(self, line: dict[str, Any]) -> None:
        assert self.size is not None and self.root is not None
        index = line.get("ledger_index")
        if not _int(index):
            raise _Fail("ledger_index is not a non-negative integer")
        if index <= self.last_index:
            raise _Fail(f"record at ledger index {index} comes after ledger index "
                        f"{self.last_index}: lines are out of order")
        if index >= self.size:
            raise _Fail(f"ledger index {index} is beyond the checkpoint's {self.size} leaves")
        env = line.get("envelope")
        if not isinstance(env, dict):
            raise _Fail("record line lacks its envelope")
        computed = leaf_hash(dumps(env))
        if _hex32(line.get("leaf_hash")) != computed:
            raise _Fail("leaf_hash does not match the record's envelope (the line was altered)")
        path = _path(line.get("proof"))
        if path is None or not verify_inclusion(computed, index, self.size, path, self.root):
            raise _Fail("inclusion proof does not match the checkpoint root")
        try:
            kind, body, _ = dsse.verify(env, self._lookup)
        except ValueError as e:
            raise _Fail(f"audit record signature does not verify: {e}") from None
        root = _hex32(body.get("root"))
        entries = body.get("entries")
        if kind != "audit-batch" or body.get("type") != "audit-batch" or root is None \
                or not _int(entries):
            raise _Fail("the signed record is not an audit batch with 'entries' and 'root'")
        self.record = (index, entries, root)
        self.last_index = index
        self.last_entry = -1

    def _event(self, line: dict[str, Any], kind: str) -> None:
        if line.get("event") not in EVENTS[kind]:
            raise _Fail(f"unknown {kind} event {line.get('event')!r}")
        index, entry = line.get("ledger_index"), line.get("entry")
        if not _int(index) or not _int(entry):
            raise _Fail("ledger_index and entry must be non-negative integers")
        if self.record is None or self.record[0] != index:
            last = "none" if self.record is None else str(self.record[0])
            raise _Fail(f"refers to the audit record at ledger index {index}, but the last "
                        f"record line is at {last}: lines are out of order or one was removed")
        if entry <= self.last_entry:
            raise _Fail(f"entry {entry} comes after entry {self.last_entry} of the same record: "
                        "lines are out of order")
        self.last_entry = entry
        computed = leaf_hash(dumps(event_of(line)))
        if _hex32(line.get("leaf_hash")) != computed:
            raise _Fail("content does not match its leaf_hash (the line was altered)")
        path = _path(line.get("proof"))
        _, entries, root = self.record
        if path is None or not verify_inclusion(computed, entry, entries, path, root):
            raise _Fail(f"inclusion proof does not match the root of the signed audit record "
                        f"at ledger index {index}")

    def _signature(self, line: dict[str, Any]) -> dict[str, Any]:
        env = line.get("envelope")
        if set(line) != {"type", "envelope"} or not isinstance(env, dict):
            raise _Fail("signature line must hold exactly 'type' and 'envelope'")
        try:
            kind, body, _ = dsse.verify(env, self._lookup)
        except ValueError as e:
            raise _Fail(f"bundle signature does not verify with the given key: {e}") from None
        if kind != "audit-bundle":
            raise _Fail(f"signature is a {kind!r} record, not an audit-bundle")
        return body

    def finish(self) -> Result:
        if self.lines == 0:
            self.fail(1, "the bundle is empty")
        elif self.signature_line is None and not self.fatal:
            self.fail(self.lines + 1, "the bundle ends without a signature line (truncated?)")
        elif self.signed is not None:
            s = self.signed
            if s.get("header_sha256") != self.header_sha:
                self.fail(1, "the header is not the one the bundle signature covers (altered)")
            if s.get("checkpoint_size") != self.size:
                self.fail(1, f"checkpoint size {self.size} is not the signed "
                             f"{s.get('checkpoint_size')}")
            assert self.signature_line is not None
            data_lines = self.signature_line - 1
            if s.get("lines") != data_lines:
                self.fail(self.signature_line, f"the signature covers {s.get('lines')} lines, "
                                               f"the bundle has {data_lines} before it")
            elif s.get("sha256") != self.sha.hexdigest():
                self.fail(self.signature_line, "the signed hash does not match the lines "
                                               "before it (a line was altered)")
        failure = self.first[1] if self.first else None
        if failure and self.problems > 1:
            failure += f" ({self.problems - 1} more problem(s) after it)"
        return Result(ok=self.first is None, lines=self.lines, failure=failure,
                      failing_line=self.first[0] if self.first else None,
                      problems=self.problems, checkpoint_size=self.size, counts=self.counts,
                      since=self.since, until=self.until)


def _csv_rows(f: Any, v: Verifier) -> Iterator[tuple[bytes | None, str, str | None]]:
    """``(JSON line bytes, where, problem)`` per CSV row, its columns checked against its JSON."""
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")

    def lines() -> Iterator[str]:
        while True:
            line = text.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES:
                raise Refused(f"a CSV row is longer than the limit of {MAX_LINE_BYTES} bytes; "
                              "this is not a bundle 'immctl audit export' wrote")
            yield line

    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.reader(lines())
    try:
        head = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as e:
        raise _Fail(f"CSV row 1: not a CSV bundle ({e})") from None
    if head is None or tuple(head) != CSV_COLUMNS:
        raise _Fail("CSV row 1: the header row is not the bundle's columns: "
                    + ",".join(CSV_COLUMNS))
    number = 0
    while True:
        number += 1
        where = f"line {number} (CSV row {number + 1})"
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            yield None, where, f"unreadable CSV ({e})"
            continue
        if len(row) != len(CSV_COLUMNS):
            yield None, where, f"{len(row)} columns instead of {len(CSV_COLUMNS)}"
            continue
        try:
            parsed = json.loads(row[-1])
        except (ValueError, RecursionError):
            parsed = None  # the line's own check below names what is wrong
        if isinstance(parsed, dict):
            expected = flatten(parsed, number)
            for col, got, want in zip(CSV_COLUMNS, row, expected, strict=True):
                if got != want:
                    v.fail(number, f"column {col!r} is {got[:60]!r} but the signed line says "
                                   f"{want[:60]!r}", where)
                    break
        yield row[-1].encode("utf-8") + b"\n", where, None


def verify_lines(lines: Iterable[bytes], pub: Ed25519PublicKey) -> Result:
    v = Verifier(pub)
    for raw in lines:
        v.feed(raw)
    return v.finish()


def verify_file(path: str | Path, pub: Ed25519PublicKey) -> Result:
    """Verify a JSONL or CSV bundle (told apart by the first byte: ``{`` is JSON Lines).

    Raises :class:`Refused` for what is not a bundle at all: not a regular file, a line over
    MAX_LINE_BYTES or nested deeper than MAX_JSON_DEPTH."""
    with open_regular(path, "bundle") as f:
        if f.peek(1)[:1] in (b"{", b""):
            return verify_lines(_limited_lines(f), pub)
        v = Verifier(pub)
        try:
            for raw, where, problem in _csv_rows(f, v):
                if raw is None:
                    v.lines += 1
                    v.fail(v.lines, problem or "unreadable", where)
                    v.sha.update(b"\0")  # whatever it held, the signed hash cannot match now
                else:
                    v.feed(raw, where)
        except _Fail as e:
            return Result(ok=False, lines=0, failure=e.message, failing_line=0, problems=1)
        return v.finish()
