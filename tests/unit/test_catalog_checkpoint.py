"""C2SP checkpoints as signed notes (imm.catalog.checkpoint).

Checked against: the golang.org/x/mod/sumdb/note reference vector (PeterNeumann key and note,
reproduced byte for byte), and a verifier written below from the text of c2sp.org/signed-note and
c2sp.org/tlog-checkpoint that imports nothing from imm.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imm.catalog import checkpoint
from imm.catalog.merkle import SCHEMA, MerkleLog, verify_consistency

# --------------------------------------------------------------------------------------------
# A verifier straight from the C2SP texts.


def raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def c2sp_open(note: str, name: str, pub: Ed25519PublicKey) -> tuple[str, int, bytes]:
    """signed-note: "a text ending in newline, followed by a blank line, followed by one or more
    signature lines: em dash, space, key name, space, base64-encoded signature, newline"; "the
    text is separated from the signatures by the last empty line"; signature = base64(uint32
    key ID big-endian || Ed25519 signature of the note text); key ID = SHA-256(key name || 0x0A ||
    0x01 || 32-byte public key)[:4]; unknown keys are ignored. tlog-checkpoint: origin, decimal
    size without leading zeros, base64 root hash, then optional extension lines."""
    assert all(ord(c) >= 0x20 or c == "\n" for c in note)
    cut = note.rindex("\n\n")
    text, signatures = note[: cut + 1], note[cut + 2 :]
    assert signatures.endswith("\n")
    want_id = int.from_bytes(hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + raw(pub)).digest()[:4], "big")
    ok = False
    for line in signatures[:-1].split("\n"):
        assert line.startswith("\u2014 ")
        key_name, b64 = line[2:].split(" ")
        sig = base64.b64decode(b64, validate=True)
        key_id = int.from_bytes(sig[:4], "big")
        if key_name != name or key_id != want_id:
            continue
        pub.verify(sig[4:], text.encode("utf-8"))  # raises InvalidSignature
        ok = True
    if not ok:
        raise InvalidSignature("no signature from the trusted key")
    lines = text.split("\n")[:-1]
    origin, size, root_b64 = lines[0], lines[1], lines[2]
    assert origin and size.isdigit() and (size == "0" or not size.startswith("0"))
    root = base64.b64decode(root_b64, validate=True)
    assert len(root) == 32
    return origin, int(size), root


# --------------------------------------------------------------------------------------------

ROOT = hashlib.sha256(b"some root").digest()
ORIGIN = "imm.example/ledger"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_body_format():
    assert checkpoint.body(ORIGIN, 17, ROOT) == (f"{ORIGIN}\n17\n{base64.b64encode(ROOT).decode()}\n")
    assert checkpoint.body(ORIGIN, 0, ROOT).split("\n")[1] == "0"
    for bad in ("", "two\nlines", "tab\there"):
        with pytest.raises(ValueError, match="origin"):
            checkpoint.body(bad, 1, ROOT)
    with pytest.raises(ValueError, match="32 bytes"):
        checkpoint.body(ORIGIN, 1, ROOT[:31])
    with pytest.raises(ValueError, match="tree size"):
        checkpoint.body(ORIGIN, -1, ROOT)


def test_key_hash_and_vkey(key):
    pub = key.public_key()
    h = hashlib.sha256(b"imm.example/ledger\n\x01" + raw(pub)).digest()[:4]
    assert checkpoint.key_hash(ORIGIN, pub) == h
    material = base64.b64encode(b"\x01" + raw(pub)).decode()
    assert checkpoint.vkey(ORIGIN, pub) == f"{ORIGIN}+{h.hex()}+{material}"
    with pytest.raises(ValueError, match="must not contain"):
        checkpoint.vkey("has space", pub)
    with pytest.raises(ValueError, match="must not contain"):
        checkpoint.vkey("has+plus", pub)


def test_go_sumdb_note_reference_vector():
    # golang.org/x/mod/sumdb/note: the documented example key and signed note.
    skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
    vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    text = (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    note = (
        text + "\n\u2014 PeterNeumann "
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    )
    seed = base64.b64decode(skey.split("+", 4)[4])
    assert seed[0] == 0x01
    private = Ed25519PrivateKey.from_private_bytes(seed[1:])
    pub = private.public_key()
    assert checkpoint.vkey("PeterNeumann", pub) == vkey
    assert checkpoint.key_hash("PeterNeumann", pub).hex() == "c74f20a3"
    assert checkpoint.sign_note(text, "PeterNeumann", private) == note  # Ed25519 is deterministic
    assert checkpoint.verify_note(note, "PeterNeumann", pub) == text
    with pytest.raises(ValueError, match="bad signature"):
        checkpoint.verify_note(note.replace("cryptography", "cryptographY"), "PeterNeumann", pub)


def test_sign_verify_round_trip(key):
    note = checkpoint.sign(ORIGIN, 12345, ROOT, ORIGIN, key)
    assert note.startswith(checkpoint.body(ORIGIN, 12345, ROOT) + "\n\u2014 " + ORIGIN + " ")
    assert note.endswith("\n") and note.count("\n") == 5
    sig = base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])
    assert len(sig) == 4 + 64 and sig[:4] == checkpoint.key_hash(ORIGIN, key.public_key())
    assert checkpoint.verify(note, ORIGIN, key.public_key()) == (ORIGIN, 12345, ROOT)
    assert checkpoint.verify(note.encode(), ORIGIN, key.public_key()) == (ORIGIN, 12345, ROOT)
    # The independent C2SP verifier accepts it.
    assert c2sp_open(note, ORIGIN, key.public_key()) == (ORIGIN, 12345, ROOT)


def test_checkpoints_of_a_real_ledger_and_a_consistency_proof(key):
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    log = MerkleLog(conn)
    log.append_many((f"record {i}".encode(), 0) for i in range(21))
    old = checkpoint.sign(ORIGIN, log.size(), log.root(), ORIGIN, key)
    log.append_many((f"record {i}".encode(), 0) for i in range(21, 50))
    new = checkpoint.sign(ORIGIN, log.size(), log.root(), ORIGIN, key)
    _, m, r_m = checkpoint.verify(old, ORIGIN, key.public_key())
    _, n, r_n = c2sp_open(new, ORIGIN, key.public_key())
    assert (m, n) == (21, 50)
    assert verify_consistency(m, n, r_m, r_n, log.consistency_proof(m, n))


def test_tampered_size_root_or_signature_is_rejected(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 12345, ROOT, ORIGIN, key)
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    tampered = {
        "size": note.replace("\n12345\n", "\n12346\n"),
        "root": note.replace(base64.b64encode(ROOT).decode(), other_root),
        "origin": note.replace(ORIGIN + "\n", "imm.example/other\n", 1),
    }
    sig_b64 = note.rstrip("\n").rsplit(" ", 1)[1]
    sig = bytearray(base64.b64decode(sig_b64))
    sig[10] ^= 0x01
    tampered["signature"] = note.replace(sig_b64, base64.b64encode(bytes(sig)).decode())
    for what, bad in tampered.items():
        assert bad != note, what
        with pytest.raises(ValueError, match=r"bad signature: signature line 1 from key "):
            checkpoint.verify(bad, ORIGIN, pub)
        with pytest.raises(InvalidSignature):
            c2sp_open(bad, ORIGIN, pub)


def test_other_key_or_name_is_rejected(key):
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError, match=r"no signature line for key imm\.example/ledger\+[0-9a-f]{8}"):
        checkpoint.verify(note, ORIGIN, other)
    with pytest.raises(ValueError, match=r"the note is signed by: imm\.example/ledger\+"):
        checkpoint.verify(note, ORIGIN, other)
    with pytest.raises(ValueError, match=r"no signature line for key another\.name\+"):
        checkpoint.verify(note, "another.name", key.public_key())


def test_unknown_signatures_are_ignored(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    witness = Ed25519PrivateKey.generate()
    cosig = checkpoint.sign(ORIGIN, 7, ROOT, "witness.example", witness).split("\n\n")[1]
    # same name as ours but a different key (so another key hash): ignored too
    impostor = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, Ed25519PrivateKey.generate())
    impostor_line = impostor.split("\n\n")[1]
    # an unknown signature type of any length: ignored
    unknown = "\u2014 someone.else " + base64.b64encode(b"\xff" * 100).decode() + "\n"
    for extra_first in (cosig + impostor_line + unknown,):
        multi = note.replace("\n\n", "\n\n" + extra_first)
        assert checkpoint.verify(multi, ORIGIN, pub) == (ORIGIN, 7, ROOT)
        assert c2sp_open(multi, ORIGIN, pub) == (ORIGIN, 7, ROOT)
        assert checkpoint.verify(multi, "witness.example", witness.public_key())[1] == 7
    multi = note + cosig
    assert checkpoint.verify(multi, ORIGIN, pub) == (ORIGIN, 7, ROOT)
    # a second, bad signature line from the trusted key rejects the whole note
    first_line = note.split("\n\n")[1]
    blob = bytearray(base64.b64decode(first_line.rstrip("\n").rsplit(" ", 1)[1]))
    blob[-1] ^= 0x01
    bad_line = f"\u2014 {ORIGIN} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(ValueError, match=r"bad signature: signature line 2"):
        checkpoint.verify(note + bad_line, ORIGIN, pub)


def test_malformed_notes_are_rejected(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    text, sig_line = note.split("\n\n")
    cases = {
        "no blank line separating": note.replace("\n\n", "\n"),
        "does not end with a newline": note.rstrip("\n"),
        "no signature lines": note + "\n",
        "control characters": note.replace(ORIGIN, ORIGIN + "\r", 1),
        "does not start with an em dash": note.replace("\u2014", "-"),
        "is not '— <key name> <base64>'": note.replace(f"{ORIGIN} ", f"{ORIGIN}  "),
        "not valid base64": note.replace(sig_line, sig_line.rstrip("\n") + "!\n"),
        "too short": note.replace(sig_line, f"\u2014 {ORIGIN} AAAA\n"),
        "not valid UTF-8": note.encode() + b"\xff",
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            checkpoint.verify(bad, ORIGIN, pub)  # type: ignore[arg-type]


def test_bad_size_or_root_encoding_in_a_signed_note(key):
    pub = key.public_key()
    b64 = base64.b64encode(ROOT).decode()
    urlsafe = base64.urlsafe_b64encode(b"\xff" * 32).decode()
    cases = {
        f"{ORIGIN}\n007\n{b64}\n": r"bad tree size '007': expected a decimal number",
        f"{ORIGIN}\n-1\n{b64}\n": r"bad tree size '-1'",
        f"{ORIGIN}\n 7\n{b64}\n": r"bad tree size ' 7'",
        f"{ORIGIN}\n{1 << 64}\n{b64}\n": r"larger than 2\^64-1",
        f"{ORIGIN}\n7\n{b64[:-4]}\n": r"bad root hash .*expected the base64 of 32 bytes, got 30",
        f"{ORIGIN}\n7\n{b64}x\n": r"bad root hash .*not standard base64",
        f"{ORIGIN}\n7\n{urlsafe}\n": r"bad root hash .*not standard base64",
        f"{ORIGIN}\n7\n": r"expected at least 3 lines",
        f"\n7\n{b64}\n": r"origin line is empty",
    }
    for text, message in cases.items():
        note = checkpoint.sign_note(text, ORIGIN, key)
        with pytest.raises(ValueError, match=message):
            checkpoint.verify(note, ORIGIN, pub)
    # non-canonical base64 (non-zero padding bits) of 32 bytes
    noncanon = b64[:-2] + chr(ord(b64[-2]) + 1) + "="
    assert base64.b64decode(noncanon) == ROOT
    note = checkpoint.sign_note(f"{ORIGIN}\n7\n{noncanon}\n", ORIGIN, key)
    with pytest.raises(ValueError, match="non-canonical"):
        checkpoint.verify(note, ORIGIN, pub)
    # extension lines are allowed (and not returned)
    note = checkpoint.sign_note(f"{ORIGIN}\n7\n{b64}\nextension line\n", ORIGIN, key)
    assert checkpoint.verify(note, ORIGIN, pub) == (ORIGIN, 7, ROOT)


def test_a_text_with_blank_lines_is_split_at_the_last_one(key):
    # Not a checkpoint, but a valid signed note: the text may hold empty lines.
    text = "first\n\nthird\n"
    note = checkpoint.sign_note(text, "k", key)
    assert checkpoint.verify_note(note, "k", key.public_key()) == text


# --------------------------------------------------------------------------------------------
# Exact refusals: the messages are part of the contract (operators read them), so each is
# pinned whole.


def exactly(message: str):
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


def test_key_names_must_be_plain_non_empty_strings(key):
    pub = key.public_key()
    for bad in ("", None, 7):
        with exactly("key name must be a non-empty string"):
            checkpoint.vkey(bad, pub)  # type: ignore[arg-type]
    for bad in ("a b", "a+b", "tab\tname", "nbsp\u00a0name", "del\x7f"):
        with exactly(f"key name {bad!r} must not contain spaces, '+' or control characters "
                     "(signed-note)"):
            checkpoint.sign_note("text\n", bad, key)


def test_body_refuses_each_bad_field_by_name():
    with exactly("checkpoint origin must be a non-empty string"):
        checkpoint.body("", 1, ROOT)
    with exactly("checkpoint origin must be a non-empty string"):
        checkpoint.body(None, 1, ROOT)  # type: ignore[arg-type]
    for origin in ("a\nb", "del\x7f", "bell\x07"):
        with exactly(f"checkpoint origin {origin!r} must be one line without control characters"):
            checkpoint.body(origin, 1, ROOT)
    for size in (True, -1, 1 << 64, "7", 7.0):
        with exactly(f"checkpoint tree size must be an integer in 0..2^64-1, not {size!r}"):
            checkpoint.body(ORIGIN, size, ROOT)  # type: ignore[arg-type]
    assert checkpoint.body(ORIGIN, (1 << 64) - 1, ROOT).split("\n")[1] == str((1 << 64) - 1)
    for root in (ROOT[:31], ROOT + b"\0", ROOT.hex()):
        with exactly(f"checkpoint root must be 32 bytes, not {root!r}"):
            checkpoint.body(ORIGIN, 1, root)  # type: ignore[arg-type]


def test_sign_note_needs_a_newline_terminated_text_without_control_characters(key):
    for text in ("no newline", "tab\there\n", "del\x7f\n"):
        with exactly("note text must end with a newline and contain no control characters"):
            checkpoint.sign_note(text, "k", key)


def test_a_note_whose_text_is_one_empty_line(key):
    note = checkpoint.sign_note("\n", "k", key)
    assert note.startswith("\n\n\u2014 k ")
    assert checkpoint.verify_note(note, "k", key.public_key()) == "\n"


def test_verify_note_refuses_what_is_not_text(key):
    with exactly("malformed note: expected text, got int"):
        checkpoint.verify_note(5, "k", key.public_key())  # type: ignore[arg-type]
    with exactly("malformed note: contains control characters other than newline"):
        checkpoint.verify_note("a\x7f\n\n\u2014 k AAAAAAAA\n", "k", key.public_key())


def signature_line(name: str, blob: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def test_malformed_signature_lines_are_named_exactly(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    text, good = note.split("\n\n")
    long_name = "n" * 100
    cases = {
        text + "\n": "malformed note: no blank line separating the text from the signatures",
        note + "\n": "malformed note: no signature lines after the last blank line",
        note.rstrip("\n"): "malformed note: the last signature line does not end with a newline",
        f"{text}\n\n- {long_name} AAAA\n":
            f"malformed note: signature line 1 does not start with an em dash and a space: "
            f"{('- ' + long_name + ' AAAA')[:80]!r}",
        f"{text}\n\n{good}\u2014 {ORIGIN} \n":
            f"malformed note: signature line 2 is not '— <key name> <base64>': "
            f"{chr(0x2014) + ' ' + ORIGIN + ' '!r}",
        f"{text}\n\n\u2014  {good[2 + len(ORIGIN) + 1:]}":
            f"malformed note: signature line 1 is not '— <key name> <base64>': "
            f"{(good[:2] + ' ' + good[2 + len(ORIGIN) + 1:-1])[:80]!r}",
        f"{text}\n\n\u2014 {long_name} \n":
            f"malformed note: signature line 1 is not '— <key name> <base64>': "
            f"{(chr(0x2014) + ' ' + long_name + ' ')[:80]!r}",
        f"{text}\n\n\u2014 a+b AAAAAAAA\n":
            "malformed note: bad key name 'a+b' on signature line 1",
        f"{text}\n\n\u2014 a\u00a0b AAAAAAAA\n":
            "malformed note: bad key name 'a\\xa0b' on signature line 1",
        f"{text}\n\n\u2014 k AAAA!\n":
            "malformed note: signature line 1 (k) is not valid base64",
        f"{text}\n\n\u2014 k -_-_\n":
            "malformed note: signature line 1 (k) is not valid base64",
        f"{text}\n\n{signature_line('k', b'1234')}":
            "malformed note: signature line 1 (k) is too short to hold a key hash and a signature",
    }
    for bad, message in cases.items():
        with exactly(message):
            checkpoint.verify(bad, ORIGIN, pub)


def test_an_unknown_five_byte_signature_is_ignored(key):
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    assert checkpoint.verify(note + signature_line("w", b"12345"), ORIGIN, key.public_key()) \
        == (ORIGIN, 7, ROOT)


def test_a_five_byte_signature_from_the_trusted_key_is_a_bad_signature(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    want = checkpoint.key_hash(ORIGIN, pub)
    with exactly(f"bad signature: signature line 2 from key {ORIGIN}+{want.hex()} does not verify "
                 "over the note text (the note was altered or signed by another key)"):
        checkpoint.verify(note + signature_line(ORIGIN, want + b"x"), ORIGIN, pub)


def test_at_most_100_signature_lines(key):
    pub = key.public_key()
    note = checkpoint.sign(ORIGIN, 7, ROOT, ORIGIN, key)
    others = "".join(signature_line(f"w{i}", bytes([i]) * 68) for i in range(99))
    assert checkpoint.verify(note + others, ORIGIN, pub) == (ORIGIN, 7, ROOT)
    with exactly("malformed note: more than 100 signature lines"):
        checkpoint.verify(note + others + signature_line("w", b"\0" * 68), ORIGIN, pub)


def test_no_signature_from_the_key_lists_the_signers(key):
    pub = key.public_key()
    text = checkpoint.body(ORIGIN, 7, ROOT)
    witness = Ed25519PrivateKey.generate()
    wline = checkpoint.sign_note(text, "witness.example", witness).split("\n\n")[1]
    note = text + "\n" + wline + signature_line("x", b"\xab\xcd\xef\x01\x02")
    whash = checkpoint.key_hash("witness.example", witness.public_key()).hex()
    want = checkpoint.key_hash(ORIGIN, pub).hex()
    with exactly(f"no signature line for key {ORIGIN}+{want} (the note is signed by: "
                 f"witness.example+{whash}, x+abcdef01)"):
        checkpoint.verify(note, ORIGIN, pub)


def test_parse_body_refusals_are_exact():
    b64 = base64.b64encode(ROOT).decode()
    long_size = "0" + "1" * 50
    long_root = "A" * 72
    cases = {
        f"{ORIGIN}\n7\n{b64}": "malformed checkpoint: the text does not end with a newline",
        f"{ORIGIN}\n7\n": "malformed checkpoint: expected at least 3 lines (origin, size, root), "
                          "got 2",
        f"\n7\n{b64}\n": "malformed checkpoint: the origin line is empty",
        f"{ORIGIN}\n{long_size}\n{b64}\n": f"bad tree size {long_size[:40]!r}: expected a decimal "
                                           "number without leading zeros",
        f"{ORIGIN}\n{'9' * 50}\n{b64}\n": f"bad tree size {'9' * 40}: larger than 2^64-1",
        f"{ORIGIN}\n{1 << 64}\n{b64}\n": f"bad tree size {1 << 64}: larger than 2^64-1",
        f"{ORIGIN}\n7\n{long_root[:-2]}!\n": f"bad root hash {long_root[:60]!r}: not standard base64",
        f"{ORIGIN}\n7\n{long_root[:-2]}\n": f"bad root hash {long_root[:60]!r}: not standard base64",
        f"{ORIGIN}\n7\n{long_root}\n": f"bad root hash {long_root[:60]!r}: expected the base64 of "
                                       "32 bytes, got 54 bytes",
        f"{ORIGIN}\n7\n{b64}\n\n": "malformed checkpoint: empty extension line",
        f"{ORIGIN}\n7\n{b64}\next\n\nmore\n": "malformed checkpoint: empty extension line",
    }
    for text, message in cases.items():
        with exactly(message):
            checkpoint.parse_body(text)
    noncanon = b64[:-2] + chr(ord(b64[-2]) + 1) + "="
    with exactly(f"bad root hash {noncanon!r}: expected the base64 of 32 bytes, got 32 bytes in a "
                 "non-canonical encoding"):
        checkpoint.parse_body(f"{ORIGIN}\n7\n{noncanon}\n")
    assert checkpoint.parse_body(f"{ORIGIN}\n{(1 << 64) - 1}\n{b64}\n") == (ORIGIN, (1 << 64) - 1,
                                                                           ROOT)
    assert checkpoint.parse_body(f"{ORIGIN}\n0\n{b64}\n") == (ORIGIN, 0, ROOT)
