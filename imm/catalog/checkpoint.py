"""Ledger heads as C2SP checkpoints: signed notes (https://c2sp.org/signed-note) whose text is a
tlog checkpoint (https://c2sp.org/tlog-checkpoint)::

    <origin>
    <tree size, decimal>
    <base64 root hash>

    — <key name> base64(key hash (4 bytes) || Ed25519 signature over the text above the blank line)

Ed25519 key hash = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]. Any signed-note
verifier (Go's golang.org/x/mod/sumdb/note, transparency-dev, sigstore) given :func:`vkey`
accepts what :func:`sign` produces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .keys import SigningKey, raw_public

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
HASH_SIZE = 32
MAX_SIZE = (1 << 64) - 1
# Verifiers must accept at least 16 signatures (signed-note); we stop parsing beyond this many.
MAX_SIGNATURES = 100

_SIZE_RE = re.compile(r"0|[1-9][0-9]*")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("key name must be a non-empty string")
    if "+" in name or any(c.isspace() for c in name) or _has_control(name):
        raise ValueError(
            f"key name {name!r} must not contain spaces, '+' or control characters (signed-note)"
        )
    return name


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 and c != "\n" for c in text) or "\x7f" in text


def body(origin: str, size: int, root: bytes) -> str:
    """The checkpoint text: ``"<origin>\\n<size>\\n<base64 root>\\n"``."""
    if not isinstance(origin, str) or not origin:
        raise ValueError("checkpoint origin must be a non-empty string")
    if "\n" in origin or _has_control(origin):
        raise ValueError(f"checkpoint origin {origin!r} must be one line without control characters")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise ValueError(f"checkpoint tree size must be an integer in 0..2^64-1, not {size!r}")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise ValueError(f"checkpoint root must be {HASH_SIZE} bytes, not {root!r}")
    return f"{origin}\n{size}\n{_b64(root)}\n"


def key_hash(name: str, pub: Ed25519PublicKey) -> bytes:
    """Signed-note Ed25519 key hash: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + raw_public(pub)
    return hashlib.sha256(data).digest()[:4]


def vkey(name: str, pub: Ed25519PublicKey) -> str:
    """Signed-note verifier key: ``<name>+<8 hex key hash>+base64(0x01 || public key)``."""
    _check_name(name)
    return f"{name}+{key_hash(name, pub).hex()}+{_b64(bytes([ALG_ED25519]) + raw_public(pub))}"


def sign_note(text: str, name: str, key: SigningKey) -> str:
    """Sign note text (ending in a newline) with one Ed25519 key: text, blank line, signature."""
    _check_name(name)
    if not text.endswith("\n") or _has_control(text):
        raise ValueError("note text must end with a newline and contain no control characters")
    msg = text.encode("utf-8")
    sig = key.sign(msg)
    return f"{text}\n{SIG_PREFIX}{name} {_b64(key_hash(name, key.public_key()) + sig)}\n"


def sign(origin: str, size: int, root: bytes, name: str, key: SigningKey,
         when: int | None = None) -> str:
    """A signed checkpoint: :func:`body` + blank line + ``— <name> base64(keyhash || sig)``.

    With ``when``, the text carries one extension line ``time <POSIX seconds>`` (see
    freshness.py) so verifiers can refuse a stale view."""
    text = body(origin, size, root)
    if when is not None:
        if isinstance(when, bool) or not isinstance(when, int) or not 0 <= when < 1 << 63:
            raise ValueError(f"checkpoint time must be POSIX seconds, not {when!r}")
        text += f"time {when}\n"
    return sign_note(text, name, key)


def verify_note(note: str | bytes, name: str, pub: Ed25519PublicKey) -> str:
    """Check a signed note against one trusted key; return its text (the part that is signed).

    Per signed-note: signatures from other keys (another name or key hash) are ignored; every
    signature line for this key must verify; at least one must exist. Raises ValueError saying
    what is wrong.
    """
    _check_name(name)
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"malformed note: not valid UTF-8 ({e})") from None
    if not isinstance(note, str):
        raise ValueError(f"malformed note: expected text, got {type(note).__name__}")
    if _has_control(note):
        raise ValueError("malformed note: contains control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise ValueError("malformed note: no blank line separating the text from the signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs:
        raise ValueError("malformed note: no signature lines after the last blank line")
    if not sigs.endswith("\n"):
        raise ValueError("malformed note: the last signature line does not end with a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ValueError(f"malformed note: more than {MAX_SIGNATURES} signature lines")

    want = key_hash(name, pub)
    verified = False
    signers = []  # "<name>+<key hash>" of every line, for the error when none is ours
    for number, line in enumerate(lines, 1):
        if not line.startswith(SIG_PREFIX):
            raise ValueError(
                f"malformed note: signature line {number} does not start with an em dash and a "
                f"space: {line[:80]!r}"
            )
        parts = line[len(SIG_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(
                f"malformed note: signature line {number} is not '— <key name> <base64>': {line[:80]!r}"
            )
        sig_name, sig_b64 = parts
        if "+" in sig_name or any(c.isspace() for c in sig_name):
            raise ValueError(f"malformed note: bad key name {sig_name!r} on signature line {number}")
        try:
            blob = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"malformed note: signature line {number} ({sig_name}) is not valid base64"
            ) from None
        if len(blob) < 5:
            raise ValueError(
                f"malformed note: signature line {number} ({sig_name}) is too short to hold a key "
                "hash and a signature"
            )
        signers.append(f"{sig_name}+{blob[:4].hex()}")
        if sig_name != name or blob[:4] != want:
            continue  # another key: ignored, as the spec requires
        try:
            pub.verify(blob[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise ValueError(
                f"bad signature: signature line {number} from key {name}+{want.hex()} does not "
                "verify over the note text (the note was altered or signed by another key)"
            ) from None
        verified = True
    if not verified:
        raise ValueError(f"no signature line for key {name}+{want.hex()} (the note is signed by: "
                         f"{', '.join(signers)})")
    return text


def parse_body(text: str) -> tuple[str, int, bytes]:
    """Split checkpoint text into (origin, size, root); extension lines are allowed and ignored."""
    if not text.endswith("\n"):
        raise ValueError("malformed checkpoint: the text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValueError(
            f"malformed checkpoint: expected at least 3 lines (origin, size, root), got {len(lines)}"
        )
    origin, size_s, root_s, *extensions = lines
    if not origin:
        raise ValueError("malformed checkpoint: the origin line is empty")
    if not _SIZE_RE.fullmatch(size_s):
        raise ValueError(f"bad tree size {size_s[:40]!r}: expected a decimal number without leading zeros")
    size = int(size_s)
    if size > MAX_SIZE:
        raise ValueError(f"bad tree size {size_s[:40]}: larger than 2^64-1")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"bad root hash {root_s[:60]!r}: not standard base64") from None
    if len(root) != HASH_SIZE or _b64(root) != root_s:
        raise ValueError(
            f"bad root hash {root_s[:60]!r}: expected the base64 of {HASH_SIZE} bytes, "
            f"got {len(root)} bytes" + ("" if len(root) != HASH_SIZE else " in a non-canonical encoding")
        )
    if any(not line for line in extensions):
        raise ValueError("malformed checkpoint: empty extension line")
    return origin, size, root


def verify(note: str | bytes, name: str, pub: Ed25519PublicKey) -> tuple[str, int, bytes]:
    """Verify a signed checkpoint with one trusted key; return (origin, size, root).

    The text is only parsed once a signature from ``name``/``pub`` has verified over it.
    Raises ValueError naming the problem: malformed note, no signature line for this key,
    bad signature, bad size or root encoding.
    """
    return parse_body(verify_note(note, name, pub))


def checkpoint_size(note: str) -> int | None:
    """The tree size a signed note claims (its second line), unverified; None if unreadable."""
    lines = note.split("\n", 2)
    try:
        return int(lines[1]) if len(lines) > 1 else None
    except ValueError:
        return None
