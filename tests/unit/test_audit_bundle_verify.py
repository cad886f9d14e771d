"""The offline audit-bundle verifier (imm.audit.bundle_verify), fed bundles built here.

The bundles are built without imm's writer: the ledger and batch trees and their inclusion paths
straight from RFC 9162 §2.1, the checkpoint as a C2SP signed note by hand, the envelopes signed
by securesystemslib's DSSE. Every bundle that should fail is otherwise correct and correctly
signed, so each test shows the one check that catches it, with the exact message.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from imm.audit import bundle_verify as bv

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bundle test key").digest())
PUB = KEY.public_key()
RAW = PUB.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
KEYID = hashlib.sha256(RAW).hexdigest()
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another key").digest())
OTHER_ID = hashlib.sha256(OTHER.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()
ORIGIN = "imm.test/ledger"
FORMAT = "imm-audit-bundle/1"
DIGEST = "sha256:" + "d" * 64

# -- RFC 9162 §2.1, written out here ----------------------------------------------------------


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(data: bytes) -> bytes:
    return H(b"\x00" + data)


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return H(b"")
    if len(hashes) == 1:
        return hashes[0]
    k = split(len(hashes))
    return H(b"\x01" + mth(hashes[:k]) + mth(hashes[k:]))


def path(m: int, hashes: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, deepest sibling first."""
    if len(hashes) <= 1:
        return []
    k = split(len(hashes))
    if m < k:
        return path(m, hashes[:k]) + [mth(hashes[k:])]
    return path(m - k, hashes[k:]) + [mth(hashes[:k])]


# -- signing, independently of imm -------------------------------------------------------------


def canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(kind: str, body: dict, key: Ed25519PrivateKey = KEY, ptype: str | None = None) -> dict:
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sslib = SSlibKey.from_crypto(key.public_key(), keyid=hashlib.sha256(pub).hexdigest())
    env = Envelope(payload=canon(body), payload_type=ptype or f"application/vnd.imm.{kind}.v1+json",
                   signatures={})
    env.sign(CryptoSigner(key, sslib))
    return env.to_dict()


def signed_note(text: str, name: str, key: Ed25519PrivateKey = KEY) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_hash = H(name.encode() + b"\n\x01" + raw)[:4]
    sig = base64.b64encode(key_hash + key.sign(text.encode())).decode()
    return f"{text}\n\u2014 {name} {sig}\n"


def checkpoint_note(size: int, root: bytes, origin: str = ORIGIN, name: str = ORIGIN,
                    key: Ed25519PrivateKey = KEY) -> str:
    return signed_note(f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n", name, key)


# -- a bundle ----------------------------------------------------------------------------------


def observation(i: int, event: str = "open") -> dict:
    return {"type": "observation", "event": event, "at": f"2026-11-0{1 + i % 9}T00:00:00Z",
            "provider": "local", "region": "local", "instance_id": f"i-{i}",
            "image_id": "img-1", "digest": DIGEST, "service": "web", "verdict": "ok",
            "detail": {}, "first_seen": "2026-11-01T00:00:00Z", "last_seen": None}


def finding(i: int, event: str = "open") -> dict:
    return {"type": "finding", "event": event, "at": "2026-11-02T00:00:00Z", "id": f"f-{i}",
            "provider": "local", "region": "local", "instance_id": f"i-{i}", "image_id": "img-9",
            "digest": None, "service": "web", "verdict": "unknown-image",
            "detail": {"reason": "a pet"}}


class Ledger:
    """A ledger of ``size`` leaves; ``batches[index]`` is a batch of audit events whose signed
    record sits at that index (other leaves are filler records)."""

    def __init__(self, batches: dict[int, list[dict]], size: int = 7,
                 record_key: Ed25519PrivateKey = KEY, record_kind: str = "audit-batch",
                 record_body: dict | None = None) -> None:
        self.batches = batches
        self.envs: dict[int, dict] = {}
        leaves = []
        for i in range(size):
            if i in batches:
                hashes = [leaf(canon(e)) for e in batches[i]]
                body = record_body if record_body is not None else {
                    "type": "audit-batch", "entries": len(hashes), "root": mth(hashes).hex(),
                    "at": "2026-11-03T00:00:00Z"}
                self.envs[i] = envelope(record_kind, body, record_key)
                leaves.append(leaf(canon(self.envs[i])))
            else:
                leaves.append(leaf(b"filler %d" % i))
        self.leaves = leaves
        self.size = size
        self.root = mth(leaves)

    def lines(self, since: str | None = "2026-11-01T00:00:00Z", until: str | None = None) -> list[dict]:
        out: list[dict] = [{
            "type": "header", "format": FORMAT, "since": since, "until": until, "origin": ORIGIN,
            "keyid": KEYID, "checkpoint": checkpoint_note(self.size, self.root),
            "created_at": "2026-12-01T00:00:00Z"}]
        for index in sorted(self.batches):
            out.append({"type": "record", "n": len(out) + 1, "ledger_index": index,
                        "leaf_hash": self.leaves[index].hex(),
                        "proof": [h.hex() for h in path(index, self.leaves)],
                        "envelope": self.envs[index]})
            hashes = [leaf(canon(e)) for e in self.batches[index]]
            for entry, event in enumerate(self.batches[index]):
                out.append({**event, "n": len(out) + 1, "ledger_index": index, "entry": entry,
                            "leaf_hash": hashes[entry].hex(),
                            "proof": [h.hex() for h in path(entry, hashes)]})
        return out


def standard() -> Ledger:
    return Ledger({1: [observation(0), observation(1), finding(2)],
                   4: [observation(3, "close"), finding(4, "resolve"), observation(5),
                       observation(6), finding(7)]}, size=7)


def signature(lines: list[bytes], *, key: Ed25519PrivateKey = KEY, kind: str = "audit-bundle",
              **override: Any) -> bytes:
    body = {"format": FORMAT, "sha256": hashlib.sha256(b"".join(lines)).hexdigest(),
            "header_sha256": hashlib.sha256(lines[0]).hexdigest() if lines else "",
            "lines": len(lines), "checkpoint_size": override.pop("checkpoint_size", 7), **override}
    return canon({"type": "signature", "envelope": envelope(kind, body, key)}) + b"\n"


def encode(lines: list[dict], **override: Any) -> list[bytes]:
    """The bundle's bytes, line by line, signed over exactly these lines."""
    raws = [canon(line) + b"\n" for line in lines]
    return raws + [signature(raws, **override)]


def verify(raws: list[bytes]) -> bv.Result:
    return bv.verify_lines(raws, PUB)


def fails(raws: list[bytes], line: int, message: str, problems: int | None = 1) -> bv.Result:
    """The bundle fails first at ``line`` with ``message``; ``problems`` in all (None: any
    number, when later lines fail as a consequence)."""
    result = verify(raws)
    n = result.problems if problems is None else problems
    more = f" ({n - 1} more problem(s) after it)" if n > 1 else ""
    assert (result.ok, result.failing_line, result.failure, result.problems) == (
        False, line, f"line {line}: {message}{more}", n)
    return result


def with_line(n: int, change: Any) -> list[bytes]:
    """The standard bundle with line ``n`` changed, then signed as it is."""
    lines = standard().lines()
    changed = copy.deepcopy(lines[n - 1])
    change(changed)
    lines[n - 1] = changed
    return encode(lines)


# -- a good bundle -----------------------------------------------------------------------------


def test_a_correct_bundle_verifies():
    raws = encode(standard().lines(until="2026-12-01T00:00:00Z"))
    result = verify(raws)
    assert result.to_dict() == {
        "ok": True, "lines": 12, "failure": None, "failing_line": None, "problems": 0,
        "checkpoint_size": 7, "counts": {"record": 2, "observation": 5, "finding": 3},
        "since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}


def test_the_last_line_may_lack_its_newline():
    raws = encode(standard().lines())
    raws[-1] = raws[-1].rstrip(b"\n")
    assert verify(raws).ok
    raws = encode(standard().lines())
    raws[3] = raws[3].rstrip(b"\n")  # a data line without it counts as if it had one
    assert verify(raws).ok


def test_a_bundle_of_a_single_entry_batch_and_the_last_ledger_leaf():
    ledger = Ledger({0: [observation(0)], 2: [finding(1)]}, size=3)
    assert verify(encode(ledger.lines(), checkpoint_size=3)).ok


def test_a_header_and_signature_alone_verify():
    ledger = Ledger({}, size=5)
    result = verify(encode(ledger.lines(since=None), checkpoint_size=5))
    assert result.ok and result.counts == {} and result.lines == 2 and result.since is None


# -- proofs: correctly signed bundles whose proofs are wrong -----------------------------------


def test_a_record_with_a_wrong_inclusion_proof_is_caught():
    ledger = standard()
    wrong = [h.hex() for h in path(2, ledger.leaves)]  # the proof of another leaf
    raws = with_line(2, lambda line: line.update(proof=wrong))
    # the record's three events cannot be checked without it
    fails(raws, 2, "inclusion proof does not match the checkpoint root", problems=4)


def test_a_record_proof_with_one_sibling_changed_or_missing_or_extra():
    def flip(line):
        line["proof"][1] = ("0" if line["proof"][1][0] != "0" else "1") + line["proof"][1][1:]
    fails(with_line(2, flip), 2, "inclusion proof does not match the checkpoint root", 4)
    fails(with_line(2, lambda line: line["proof"].pop()), 2,
          "inclusion proof does not match the checkpoint root", 4)
    fails(with_line(2, lambda line: line["proof"].append("a" * 64)), 2,
          "inclusion proof does not match the checkpoint root", 4)


@pytest.mark.parametrize("proof", [None, "ab" * 32, ["AB" * 32], ["ab" * 31], ["zz" * 32],
                                   ["ab" * 32] * 65, [1], {"0": "ab" * 32}])
def test_a_record_proof_that_is_not_a_list_of_hashes(proof):
    fails(with_line(2, lambda line: line.update(proof=proof)), 2,
          "inclusion proof does not match the checkpoint root", 4)


def test_an_event_with_a_wrong_inclusion_proof_is_caught():
    def swap(line):
        line["proof"] = line["proof"][::-1]
    fails(with_line(8, swap), 8,
          "inclusion proof does not match the root of the signed audit record at ledger index 4")
    fails(with_line(3, lambda line: line.update(proof=[])), 3,
          "inclusion proof does not match the root of the signed audit record at ledger index 1")
    fails(with_line(3, lambda line: line.update(proof="x")), 3,
          "inclusion proof does not match the root of the signed audit record at ledger index 1")


def test_an_event_claiming_another_entry_position_is_caught():
    # entry 1 moved to position 2 (its proof and hash kept): the proof no longer leads to the root
    lines = standard().lines()
    del lines[4]  # the event at entry 2 of the first record
    lines[3]["entry"] = 2
    for i, line in enumerate(lines[1:], 2):
        line["n"] = i
    fails(encode(lines), 4,
          "inclusion proof does not match the root of the signed audit record at ledger index 1")


def test_an_event_past_the_batch_size_is_caught():
    def grow(line):
        line["entry"] = 3
    lines = standard().lines()
    del lines[4]
    for i, line in enumerate(lines[1:], 2):
        line["n"] = i
    lines[3]["entry"] = 3
    fails(encode(lines), 4,
          "inclusion proof does not match the root of the signed audit record at ledger index 1")


# -- record lines ------------------------------------------------------------------------------


def test_record_line_checks():
    fails(with_line(2, lambda line: line.update(ledger_index=-1)), 2,
          "ledger_index is not a non-negative integer", 4)
    fails(with_line(2, lambda line: line.update(ledger_index="1")), 2,
          "ledger_index is not a non-negative integer", 4)
    fails(with_line(2, lambda line: line.update(ledger_index=True)), 2,
          "ledger_index is not a non-negative integer", 4)
    fails(with_line(2, lambda line: line.update(ledger_index=7)), 2,
          "ledger index 7 is beyond the checkpoint's 7 leaves", 4)
    fails(with_line(2, lambda line: line.pop("envelope")), 2, "record line lacks its envelope", 4)
    fails(with_line(2, lambda line: line.update(envelope="{}")), 2,
          "record line lacks its envelope", 4)
    fails(with_line(2, lambda line: line.update(leaf_hash="00" * 32)), 2,
          "leaf_hash does not match the record's envelope (the line was altered)", 4)
    fails(with_line(2, lambda line: line.update(leaf_hash=line["leaf_hash"].upper())), 2,
          "leaf_hash does not match the record's envelope (the line was altered)", 4)


def test_records_must_come_in_ledger_order():
    lines = standard().lines()
    first = lines[1:5]
    second = lines[5:]
    reordered = [lines[0], *second, *first]
    for i, line in enumerate(reordered[1:], 2):
        line["n"] = i
    fails(encode(reordered), 8, "record at ledger index 1 comes after ledger index 4: lines are "
          "out of order", problems=4)


def test_the_same_record_twice_is_out_of_order():
    lines = standard().lines()
    again = copy.deepcopy(lines[1])
    again["n"] = 6
    lines.insert(5, again)
    for i, line in enumerate(lines[6:], 7):
        line["n"] = i
    fails(encode(lines), 6, "record at ledger index 1 comes after ledger index 1: lines are out "
          "of order")


def test_a_record_at_ledger_index_0():
    ledger = Ledger({0: [observation(0)]}, size=1)
    assert verify(encode(ledger.lines(), checkpoint_size=1)).ok


def ledger_with_record(**kw: Any) -> list[bytes]:
    ledger = Ledger({1: [observation(0)]}, size=3, **kw)
    return encode(ledger.lines(), checkpoint_size=3)


def test_a_record_signed_by_another_key_is_caught():
    fails(ledger_with_record(record_key=OTHER), 2,
          f"audit record signature does not verify: no valid signature: {OTHER_ID[:16]} "
          "(unknown key)", problems=2)


@pytest.mark.parametrize(
    "kw",
    [
        {"record_kind": "audit-finding"},
        {"record_body": {"type": "audit-finding", "entries": 1, "root": "ab" * 32}},
        {"record_body": {"type": "audit-batch", "entries": 1, "root": "AB" * 32}},
        {"record_body": {"type": "audit-batch", "entries": 1}},
        {"record_body": {"type": "audit-batch", "entries": -1, "root": "ab" * 32}},
        {"record_body": {"type": "audit-batch", "entries": True, "root": "ab" * 32}},
        {"record_body": {"type": "audit-batch", "root": "ab" * 32}},
    ],
)
def test_a_record_that_is_not_an_audit_batch(kw):
    fails(ledger_with_record(**kw), 2,
          "the signed record is not an audit batch with 'entries' and 'root'", problems=2)


def test_a_record_whose_payload_is_not_canonical():
    ledger = Ledger({1: [observation(0)]}, size=3)
    env = ledger.envs[1]
    # re-sign the same body with spaces in it: a valid signature over non-canonical JSON
    body = json.loads(base64.b64decode(env["payload"]))
    spaced = Envelope(payload=json.dumps(body).encode(),
                      payload_type="application/vnd.imm.audit-batch.v1+json", signatures={})
    spaced.sign(CryptoSigner(KEY, SSlibKey.from_crypto(PUB, keyid=KEYID)))
    ledger.envs[1] = spaced.to_dict()
    ledger.leaves[1] = leaf(canon(ledger.envs[1]))
    ledger.root = mth(ledger.leaves)
    fails(encode(ledger.lines(), checkpoint_size=3), 2,
          "audit record signature does not verify: payload is not canonical JSON", problems=2)


# -- event lines -------------------------------------------------------------------------------


def test_event_line_checks():
    fails(with_line(3, lambda line: line.update(event="resolve")), 3,
          "unknown observation event 'resolve'")
    fails(with_line(5, lambda line: line.update(event="close")), 5,
          "unknown finding event 'close'")
    fails(with_line(3, lambda line: line.update(entry=-1)), 3,
          "ledger_index and entry must be non-negative integers")
    fails(with_line(3, lambda line: line.update(entry="0")), 3,
          "ledger_index and entry must be non-negative integers")
    fails(with_line(3, lambda line: line.update(ledger_index=None)), 3,
          "ledger_index and entry must be non-negative integers")
    fails(with_line(3, lambda line: line.update(ledger_index=4)), 3,
          "refers to the audit record at ledger index 4, but the last record line is at 1: "
          "lines are out of order or one was removed")
    fails(with_line(3, lambda line: line.update(verdict="revoked")), 3,
          "content does not match its leaf_hash (the line was altered)")
    fails(with_line(3, lambda line: line.update(leaf_hash=None)), 3,
          "content does not match its leaf_hash (the line was altered)")


def test_an_event_before_any_record():
    lines = standard().lines()
    del lines[1]
    for i, line in enumerate(lines[1:], 2):
        line["n"] = i
    fails(encode(lines), 2, "refers to the audit record at ledger index 1, but the last record "
          "line is at none: lines are out of order or one was removed", problems=3)


def test_events_of_a_record_must_come_in_entry_order():
    lines = standard().lines()
    lines[2], lines[3] = lines[3], lines[2]
    lines[2]["n"], lines[3]["n"] = 3, 4
    fails(encode(lines), 4, "entry 0 comes after entry 1 of the same record: lines are out of "
          "order")
    lines = standard().lines()
    again = copy.deepcopy(lines[2])
    again["n"] = 4
    lines.insert(3, again)
    for i, line in enumerate(lines[4:], 5):
        line["n"] = i
    fails(encode(lines), 4, "entry 0 comes after entry 0 of the same record: lines are out of "
          "order")


def test_entries_restart_at_each_record():
    # the second record's first event has entry 0 after entry 2 of the first: fine
    assert verify(encode(standard().lines())).ok


# -- line numbers, types and encoding ----------------------------------------------------------


def test_line_numbers_name_a_removed_or_moved_line():
    lines = standard().lines()
    del lines[3]
    fails(encode(lines), 4, "says it is line 5: a line before it was removed, added or moved",
          problems=7)
    fails(with_line(3, lambda line: line.pop("n")), 3,
          "says it is line None: a line before it was removed, added or moved")
    fails(with_line(3, lambda line: line.update(n=-3)), 3,
          "says it is line -3: a line before it was removed, added or moved")


def test_unknown_line_types_are_counted_and_refused():
    lines = standard().lines()
    lines.append({"type": "note", "n": 12})
    result = fails(encode(lines), 12, "unknown line type 'note'")
    assert result.counts == {"record": 2, "observation": 5, "finding": 3, "note": 1}
    lines = standard().lines()
    lines.append({"n": 12})
    fails(encode(lines), 12, "unknown line type None")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'\xff{"n":3}\n', "not UTF-8 text"),
        (b"[3]\n", "not a JSON object"),
        (b'"text"\n', "not a JSON object"),
        (b'{"n": 3}\n', "not canonical JSON (keys sorted, no spaces): the line was altered"),
        (b'{"z":1,"n":3}\n', "not canonical JSON (keys sorted, no spaces): the line was altered"),
        (b'{"n":3,"x":1.5}\n', "not canonical JSON: 1.5 (canonical JSON has no floats)"),
        (b'{"n":3,"x":1e3}\n', "not canonical JSON: 1e3 (canonical JSON has no floats)"),
        (b'{"n":3,"x":NaN}\n', "not canonical JSON: NaN (canonical JSON has no floats)"),
        (b'{"n":3,"x":-Infinity}\n', "not canonical JSON: -Infinity (canonical JSON has no floats)"),
    ],
)
def test_lines_that_are_not_canonical_json(raw, message):
    raws = [canon(line) + b"\n" for line in standard().lines()]
    raws[2] = raw
    fails(raws + [signature(raws)], 3, message)


def test_a_line_that_is_not_json():
    raws = [canon(line) + b"\n" for line in standard().lines()]
    raws[2] = b"{not json\n"
    result = verify(raws + [signature(raws)])
    assert result.failing_line == 3 and result.problems == 1
    assert result.failure == ("line 3: not JSON (Expecting property name enclosed in double "
                              "quotes: line 1 column 2 (char 1))")


# -- the header --------------------------------------------------------------------------------


def header_fails(change: Any, message: str) -> bv.Result:
    lines = standard().lines()
    change(lines[0])
    result = fails(encode(lines), 1, message, problems=12)
    assert result.checkpoint_size is None
    return result


def test_header_checks():
    header_fails(lambda h: h.update(type="record"),
                 "not a bundle header (type 'header' expected on line 1)")
    header_fails(lambda h: h.update(format="imm-audit-bundle/2"),
                 "unknown format 'imm-audit-bundle/2'; this verifier reads imm-audit-bundle/1")
    header_fails(lambda h: h.update(keyid="ab" * 32),
                 f"the bundle was made with key {'ab' * 8}…, not the given key {KEYID[:16]}…")
    header_fails(lambda h: h.pop("origin"), "header lacks 'origin' or 'checkpoint'")
    header_fails(lambda h: h.update(checkpoint=None), "header lacks 'origin' or 'checkpoint'")
    header_fails(lambda h: h.update(origin=7), "header lacks 'origin' or 'checkpoint'")


def test_a_checkpoint_that_does_not_verify():
    ledger = standard()
    other_hash = H(b"other.name\n\x01" + RAW)[:4].hex()
    own_hash = H(ORIGIN.encode() + b"\n\x01" + RAW)[:4].hex()
    header_fails(lambda h: h.update(checkpoint=checkpoint_note(7, ledger.root, name="other.name")),
                 "checkpoint does not verify with the given key: no signature line for key "
                 f"{ORIGIN}+{own_hash} (the note is signed by: other.name+{other_hash})")
    header_fails(lambda h: h.update(checkpoint=checkpoint_note(7, ledger.root)[:-1]),
                 "checkpoint does not verify with the given key: malformed note: the last "
                 "signature line does not end with a newline")


def test_a_checkpoint_for_another_origin():
    ledger = standard()
    header_fails(lambda h: h.update(checkpoint=checkpoint_note(7, ledger.root, origin="elsewhere")),
                 f"checkpoint origin 'elsewhere' is not the header's '{ORIGIN}'")


def test_a_checkpoint_of_another_tree_fails_every_record_proof():
    ledger = standard()
    lines = ledger.lines()
    lines[0]["checkpoint"] = checkpoint_note(7, H(b"another root"))
    result = fails(encode(lines), 2, "inclusion proof does not match the checkpoint root",
                   problems=10)
    assert result.checkpoint_size == 7


def test_data_lines_after_a_bad_header_cannot_be_checked():
    lines = standard().lines()
    lines[0]["format"] = "x"
    result = verify(encode(lines))
    assert result.problems == 12
    v = bv.Verifier(PUB)
    for raw in encode(lines)[:3]:
        v.feed(raw)
    assert v.fatal
    v.first = None  # the second problem on its own
    v.feed(canon(lines[3]) + b"\n")
    assert v.first == (4, "line 4: cannot be checked: the header (line 1) did not verify")


# -- the signature line and what it covers ----------------------------------------------------


def test_the_signature_must_cover_exactly_the_lines_before_it():
    raws = [canon(line) + b"\n" for line in standard().lines()]
    fails(raws + [signature(raws[:-1])], 12, "the signature covers 10 lines, the bundle has 11 "
          "before it")
    # same count, one line's bytes different from what was signed
    signed = list(raws)
    signed[3] = signed[3].replace(b'"region":"local"', b'"region":"other"')
    assert signed[3] != raws[3]
    fails(raws + [signature(signed)], 12,
          "the signed hash does not match the lines before it (a line was altered)")


def test_the_signed_header_hash_and_checkpoint_size_must_match():
    raws = [canon(line) + b"\n" for line in standard().lines()]
    fails(raws + [signature(raws, header_sha256="00" * 32)], 1,
          "the header is not the one the bundle signature covers (altered)")
    fails(raws + [signature(raws, checkpoint_size=6)], 1, "checkpoint size 7 is not the signed 6")


def test_the_signature_line_itself():
    raws = [canon(line) + b"\n" for line in standard().lines()]
    sig = json.loads(signature(raws))
    extra = canon({**sig, "n": 12}) + b"\n"
    fails(raws + [extra], 12, "signature line must hold exactly 'type' and 'envelope'")
    no_env = canon({"type": "signature", "envelope": "x"}) + b"\n"
    fails(raws + [no_env], 12, "signature line must hold exactly 'type' and 'envelope'")
    fails(raws + [signature(raws, key=OTHER)], 12,
          f"bundle signature does not verify with the given key: no valid signature: "
          f"{OTHER_ID[:16]} (unknown key)")
    fails(raws + [signature(raws, kind="audit-batch")], 12,
          "signature is a 'audit-batch' record, not an audit-bundle")


def test_data_after_the_signature_line():
    raws = encode(standard().lines())
    fails(raws + [raws[2]], 13, "data after the signature line (line 12)")
    fails(raws + [b"anything\n", b"more\n"], 13, "data after the signature line (line 12)",
          problems=2)


def test_a_truncated_or_empty_bundle():
    raws = encode(standard().lines())
    fails(raws[:-1], 12, "the bundle ends without a signature line (truncated?)")
    fails(raws[:1], 2, "the bundle ends without a signature line (truncated?)")
    fails([], 1, "the bundle is empty")
    result = verify([])
    assert (result.lines, result.checkpoint_size) == (0, None)


def test_the_first_failing_line_is_reported_with_the_count_of_the_others():
    lines = standard().lines()
    lines[6]["verdict"] = "x"
    lines[2]["verdict"] = "x"
    fails(encode(lines), 3, "content does not match its leaf_hash (the line was altered)",
          problems=2)
    v = bv.Verifier(PUB, label="row")
    v.fail(5, "five")
    v.fail(2, "two")
    v.fail(9, "nine")
    v.fail(2, "two again")
    assert v.first == (2, "row 2: two")
    v.fail(1, "one", where="CSV row 2")
    assert v.first == (1, "CSV row 2: one") and v.problems == 5


# -- keys --------------------------------------------------------------------------------------


def test_public_keys():
    pem = PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert bv.keyid_of(bv.load_public_key(pem)) == KEYID
    with pytest.raises(ValueError, match=r"^imm\.pub is not a PEM public key \(.*\); get one with "
                                         r"'immctl keys export'$"):
        bv.load_public_key(b"not a key", "imm.pub")
    with pytest.raises(ValueError, match=r"^key is not a PEM public key \("):
        bv.load_public_key(b"")
    from cryptography.hazmat.primitives.asymmetric import ec
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match=r"^k\.pem is not an Ed25519 public key$"):
        bv.load_public_key(ec_pem, "k.pem")


def test_a_bundle_for_another_key():
    result = bv.verify_lines(encode(standard().lines()), OTHER.public_key())
    other_id = bv.keyid_of(OTHER.public_key())
    assert result.failure == (f"line 1: the bundle was made with key {KEYID[:16]}…, not the given "
                              f"key {other_id[:16]}… (11 more problem(s) after it)")


# -- CSV ---------------------------------------------------------------------------------------


def test_flatten_gives_readable_columns_and_the_json():
    assert bv.CSV_COLUMNS == (
        "line", "type", "event", "at", "provider", "region", "instance_id", "image_id", "digest",
        "service", "verdict", "finding", "detail", "first_seen", "last_seen", "ledger_index",
        "entry", "leaf_hash", "proof", "json")
    obs = {**observation(0), "n": 3, "ledger_index": 1, "entry": 0, "leaf_hash": "ab" * 32,
           "proof": ["01" * 32, "02" * 32]}
    assert bv.flatten(obs, 3) == [
        "3", "observation", "open", "2026-11-01T00:00:00Z", "local", "local", "i-0", "img-1",
        DIGEST, "web", "ok", "", "{}", "2026-11-01T00:00:00Z", "", "1", "0", "ab" * 32,
        "01" * 32 + " " + "02" * 32, canon(obs).decode()]
    fnd = {**finding(2), "n": 5, "ledger_index": 1, "entry": 2, "leaf_hash": "cd" * 32,
           "proof": []}
    assert bv.flatten(fnd, 5) == [
        "5", "finding", "open", "2026-11-02T00:00:00Z", "local", "local", "i-2", "img-9", "",
        "web", "unknown-image", "f-2", '{"reason":"a pet"}', "", "", "1", "2", "cd" * 32, "",
        canon(fnd).decode()]
    header = {"type": "header", "created_at": "2026-12-01T00:00:00Z", "origin": "o", "id": "x"}
    assert bv.flatten(header, 1) == [
        "1", "header", "", "2026-12-01T00:00:00Z", "", "", "", "", "", "", "", "", "", "", "",
        "", "", "", "", canon(header).decode()]
    assert bv.flatten({"type": None, "event": "é"}, 0)[:3] == ["0", "", "é"]


def to_csv(raws: list[bytes]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(bv.CSV_COLUMNS)
    for number, raw in enumerate(raws, 1):
        w.writerow(bv.flatten(json.loads(raw), number))
    return buf.getvalue().encode("utf-8")


def test_a_csv_bundle_verifies_like_its_json_lines(tmp_path: Path):
    raws = encode(standard().lines())
    (tmp_path / "b.csv").write_bytes(to_csv(raws))
    (tmp_path / "b.jsonl").write_bytes(b"".join(raws))
    as_csv = bv.verify_file(tmp_path / "b.csv", PUB)
    assert as_csv.ok and as_csv == bv.verify_file(str(tmp_path / "b.jsonl"), PUB)
    assert as_csv.lines == 12 and as_csv.counts == {"record": 2, "observation": 5, "finding": 3}


def test_an_empty_file_is_an_empty_bundle(tmp_path: Path):
    (tmp_path / "e").write_bytes(b"")
    result = bv.verify_file(tmp_path / "e", PUB)
    assert (result.ok, result.failure, result.failing_line) == (False, "line 1: the bundle is empty", 1)


def test_a_csv_column_that_disagrees_with_its_json(tmp_path: Path):
    data = to_csv(encode(standard().lines())).replace(b",i-1,", b",i-999,")
    (tmp_path / "b.csv").write_bytes(data)
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert (result.failure, result.failing_line, result.problems) == (
        "line 4 (CSV row 5): column 'instance_id' is 'i-999' but the signed line says 'i-1'", 4, 1)


def test_only_the_first_disagreeing_column_of_a_row_is_named(tmp_path: Path):
    data = to_csv(encode(standard().lines())).replace(b"3,observation,open,", b"3,observation,x,")
    data = data.replace(b",i-0,img-1,", b",i-x,img-1,")
    (tmp_path / "b.csv").write_bytes(data)
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert (result.failure, result.problems) == (
        "line 3 (CSV row 4): column 'event' is 'x' but the signed line says 'open'", 1)


def test_a_csv_json_column_that_was_edited(tmp_path: Path):
    raws = encode(standard().lines())
    rows = list(csv.reader(io.StringIO(to_csv(raws).decode())))
    rows[3][-1] = rows[3][-1].replace('"verdict":"ok"', '"verdict":"revoked"')
    rows[3][10] = "revoked"
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    (tmp_path / "b.csv").write_bytes(buf.getvalue().encode())
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert (result.failure, result.failing_line, result.problems) == (
        "line 3 (CSV row 4): content does not match its leaf_hash (the line was altered) "
        "(1 more problem(s) after it)", 3, 2)


def test_a_csv_row_with_unparsable_json_is_checked_as_a_line(tmp_path: Path):
    raws = encode(standard().lines())
    rows = list(csv.reader(io.StringIO(to_csv(raws).decode())))
    rows[3][-1] = "[1, 2"
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    (tmp_path / "b.csv").write_bytes(buf.getvalue().encode())
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert result.failing_line == 3
    assert result.failure.startswith("line 3 (CSV row 4): not JSON (")


def test_a_csv_row_with_the_wrong_number_of_columns(tmp_path: Path):
    raws = encode(standard().lines())
    data = to_csv(raws).split(b"\r\n")
    data[4] = b"4,observation"
    (tmp_path / "b.csv").write_bytes(b"\r\n".join(data))
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert (result.failure, result.failing_line, result.problems, result.lines) == (
        "line 4 (CSV row 5): 2 columns instead of 20 (1 more problem(s) after it)", 4, 2, 12)
    assert bv.verify_file(tmp_path / "b.csv", PUB).failure.endswith("after it)")


def test_a_csv_row_that_cannot_be_read(tmp_path: Path):
    raws = encode(standard().lines())
    data = to_csv(raws).split(b"\r\n")
    data[4] = b'4,"' + b"x" * (5 << 20) + b'"'
    (tmp_path / "b.csv").write_bytes(b"\r\n".join(data))
    # past the line limit the file is refused as a whole (exit 2 naming the limit), never read
    with pytest.raises(bv.Refused, match="CSV row is longer than the limit of 4194304 bytes"):
        bv.verify_file(tmp_path / "b.csv", PUB)


@pytest.mark.parametrize("head", [b"line,type\r\n", b"x\r\n", b"\r\n"])
def test_a_csv_file_without_the_bundle_columns(tmp_path: Path, head: bytes):
    (tmp_path / "b.csv").write_bytes(head + b"1,2\r\n")
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert result.to_dict() == {
        "ok": False, "lines": 0, "problems": 1, "failing_line": 0, "checkpoint_size": None,
        "counts": {}, "since": None, "until": None,
        "failure": "CSV row 1: the header row is not the bundle's columns: "
                   + ",".join(bv.CSV_COLUMNS)}


def test_a_csv_file_that_is_not_text(tmp_path: Path):
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00line\r\n")
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert (result.ok, result.lines, result.failing_line, result.problems) == (False, 0, 0, 1)
    assert result.failure.startswith("CSV row 1: not a CSV bundle ('utf-8' codec can't decode")


def test_dumps_is_canonical_json():
    assert bv.dumps({"b": [1, "é"], "a": None}) == b'{"a":null,"b":[1,"\xc3\xa9"]}'
    assert bv.event_of({"type": "finding", "n": 1, "ledger_index": 2, "entry": 3, "leaf_hash": "x",
                        "proof": [], "id": "f"}) == {"type": "finding", "id": "f"}


def test_flatten_copies_last_seen():
    line = {**observation(0), "last_seen": "2026-11-05T00:00:00Z"}
    assert bv.flatten(line, 2)[bv.CSV_COLUMNS.index("last_seen")] == "2026-11-05T00:00:00Z"


def deep_batch(depth: int) -> list[bytes]:
    """A record of 2**depth - 1 entries (signed as such) and its first event, whose proof has
    ``depth`` siblings: the longest path such a batch has."""
    event = observation(0)
    lh = leaf(canon(event))
    siblings = [H(b"sibling %d" % i) for i in range(depth)]
    root = lh
    for s in siblings:
        root = H(b"\x01" + root + s)
    ledger = Ledger({1: [event]}, size=3, record_body={
        "type": "audit-batch", "entries": (1 << depth) - 1, "root": root.hex()})
    lines = ledger.lines()
    lines[2]["proof"] = [s.hex() for s in siblings]
    return encode(lines, checkpoint_size=3)


def test_a_proof_of_64_hashes_is_the_longest_accepted():
    assert verify(deep_batch(64)).ok
    fails(deep_batch(65), 3, "inclusion proof does not match the root of the signed audit record "
          "at ledger index 1")


def test_a_csv_cell_may_hold_a_line_break(tmp_path: Path):
    event = {**observation(0), "instance_id": "i-\r\n0", "service": "line\nbreak"}
    ledger = Ledger({1: [event]}, size=3)
    raws = encode(ledger.lines(), checkpoint_size=3)
    (tmp_path / "b.csv").write_bytes(to_csv(raws))
    assert bv.verify_file(tmp_path / "b.csv", PUB).ok


def test_a_long_disagreeing_column_is_cut_at_60_characters(tmp_path: Path):
    raws = encode(standard().lines())
    rows = list(csv.reader(io.StringIO(to_csv(raws).decode())))
    column = bv.CSV_COLUMNS.index("leaf_hash")
    signed = rows[3][column]
    rows[3][column] = "f" * 64
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    (tmp_path / "b.csv").write_bytes(buf.getvalue().encode())
    result = bv.verify_file(tmp_path / "b.csv", PUB)
    assert result.failure == (f"line 3 (CSV row 4): column 'leaf_hash' is {'f' * 60!r} but the "
                              f"signed line says {signed[:60]!r}")
