"""Witnessing: cosign another log's checkpoints, and count the cosignatures on our own.

An immd can be a *witness* for other imm logs: given a checkpoint signed by a log it is
configured to witness, and a consistency proof from the last checkpoint it cosigned for that
origin, it checks the proof and answers with a C2SP tlog-cosignature (https://c2sp.org/
tlog-cosignature) Ed25519 ``cosignature/v1`` line::

    — <witness name> base64(key ID || u64 big-endian timestamp || Ed25519 signature)
    key ID  = SHA-256(<name> || "\\n" || 0x04 || 32-byte public key)[:4]
    message = "cosignature/v1\\n" "time <timestamp>\\n" <checkpoint body, extension lines too>

It never cosigns a checkpoint inconsistent with one it cosigned before (smaller, a fork at the
same size, or a bad proof): that is the split view witnesses exist to catch. A log that requires
N witnesses reports its checkpoint as witnessed only once N configured witnesses cosigned it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BadRequest, Conflict, Forbidden, VerificationFailed
from ..store import Connection
from . import checkpoint
from .freshness import unix_now
from .keys import raw_public
from .merkle import EMPTY_ROOT, verify_consistency
from .service import query_one

ALG_COSIGNATURE_V1 = 0x04
HEADER = "cosignature/v1\n"


def cosigner_key_id(name: str, pub: Ed25519PublicKey) -> bytes:
    data = name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + raw_public(pub)
    return hashlib.sha256(data).digest()[:4]


def cosigner_vkey(name: str, pub: Ed25519PublicKey) -> str:
    """The witness's verifier key: ``<name>+<key ID hex>+base64(0x04 || public key)``."""
    checkpoint._check_name(name)
    blob = bytes([ALG_COSIGNATURE_V1]) + raw_public(pub)
    return f"{name}+{cosigner_key_id(name, pub).hex()}+{base64.b64encode(blob).decode()}"


def parse_vkey(vkey: str, alg: int, what: str) -> tuple[str, Ed25519PublicKey]:
    """Read ``name+hash+base64(alg || key)``; check the hash. Raises BadRequest naming it."""
    # the base64 may itself hold '+': split at the first two only, as signed-note readers do
    parts = vkey.split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3 or not parts[0] or len(parts[1]) != 8:
        raise BadRequest(f"{what} {str(vkey)[:80]!r} is not a verifier key NAME+HASH+BASE64")
    name, hash_hex, b64 = parts
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} {vkey[:80]!r}: the key is not base64") from None
    if len(blob) != 33 or blob[0] != alg:
        raise BadRequest(f"{what} {vkey[:80]!r}: expected algorithm 0x{alg:02x} and a 32-byte "
                         "Ed25519 key")
    pub = Ed25519PublicKey.from_public_bytes(blob[1:])
    want = (cosigner_key_id(name, pub) if alg == ALG_COSIGNATURE_V1
            else checkpoint.key_hash(name, pub))
    if want.hex() != hash_hex:
        raise BadRequest(f"{what} {vkey[:80]!r}: key hash {hash_hex} does not match the key")
    return name, pub


def message(body: str, timestamp: int) -> bytes:
    return f"{HEADER}time {timestamp}\n{body}".encode()


def cosign(body: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """One cosignature/v1 signature line over checkpoint ``body``."""
    if not 0 <= timestamp < 1 << 63:
        raise ValueError("cosignature timestamp out of range")
    sig = key.sign(message(body, timestamp))
    blob = cosigner_key_id(name, key.public_key()) + struct.pack(">Q", timestamp) + sig
    return f"{checkpoint.SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def verify_cosignatures(note: str, name: str, pub: Ed25519PublicKey) -> list[int]:
    """Timestamps of the valid cosignature lines by (name, pub) on ``note``; raises on a line
    with this key ID that does not verify."""
    split = note.rfind("\n\n")
    body, sigs = note[: split + 1], note[split + 2:]
    want = cosigner_key_id(name, pub)
    out = []
    for line in sigs.splitlines():
        if not line.startswith(checkpoint.SIG_PREFIX + name + " "):
            continue
        try:
            blob = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(blob) != 4 + 8 + 64 or blob[:4] != want:
            continue
        (ts,) = struct.unpack(">Q", blob[4:12])
        try:
            pub.verify(blob[12:], message(body, ts))
        except InvalidSignature:
            raise VerificationFailed(f"cosignature by {name} does not verify") from None
        out.append(ts)
    return out


# -- the witness side -----------------------------------------------------------------------------

def add_checkpoint(conn: Connection, logs: dict[str, tuple[str, Ed25519PublicKey]],
                   note: str, old_size: int, proof: list[bytes], name: str,
                   key: Ed25519PrivateKey, now: int | None = None) -> dict[str, Any]:
    """Check a log's checkpoint against the last one cosigned for its origin; cosign it.

    ``logs`` maps an origin to (the log's key name, its public key). Raises Forbidden for a log
    this witness does not know, VerificationFailed for a bad signature, Conflict when
    ``old_size`` is not what the witness has (detail: its size) or the checkpoint is
    inconsistent with what it cosigned."""
    origin = note.split("\n", 1)[0] if isinstance(note, str) else ""
    if origin not in logs:
        raise Forbidden(f"this witness does not witness log {origin[:80]!r}; configure it under "
                        "[trust.witness.logs]", detail={"origin": origin})
    key_name, log_pub = logs[origin]
    try:
        text = checkpoint.verify_note(note, key_name, log_pub)
        _, size, root = checkpoint.parse_body(text)
    except ValueError as e:
        raise VerificationFailed(f"checkpoint of {origin} does not verify: {e}") from None
    last = query_one(conn, "SELECT size, root FROM witness_state WHERE origin=?", (origin,))
    have_size = last["size"] if last else 0
    have_root = bytes(last["root"]) if last else EMPTY_ROOT
    if old_size != have_size:
        raise Conflict(f"witness has {origin} at size {have_size}, not {old_size}; send a "
                       f"consistency proof from {have_size}", detail={"size": have_size})
    if size < have_size:
        raise Conflict(f"refusing to cosign {origin} at size {size}: it already cosigned size "
                       f"{have_size}, and a log never shrinks", detail={"size": have_size})
    if not verify_consistency(have_size, size, have_root, root, proof):
        raise Conflict(f"refusing to cosign {origin} at size {size}: it is not consistent with "
                       f"the checkpoint at size {have_size} this witness cosigned (a fork or a "
                       "bad proof)", detail={"size": have_size})
    now = unix_now() if now is None else now
    line = cosign(text, name, key, now)
    conn.execute("INSERT INTO witness_state VALUES (?,?,?,?) ON CONFLICT (origin) DO UPDATE "
                 "SET size = excluded.size, root = excluded.root, at = excluded.at",
                 (origin, size, root, now))
    return {"origin": origin, "size": size, "cosignature": line, "timestamp": now}


# -- the log side ---------------------------------------------------------------------------------

def record_cosignature(conn: Connection, body: str, witness: str, line: str,
                       size: int, timestamp: int) -> None:
    conn.execute("INSERT INTO witness_cosignatures VALUES (?,?,?,?,?) ON CONFLICT (body, witness) "
                 "DO UPDATE SET line = excluded.line, size = excluded.size, at = excluded.at",
                 (body, witness, line, size, timestamp))


def witnessed(conn: Connection, note: str, required: int) -> dict[str, Any]:
    """The current checkpoint with every cosignature gathered for its text."""
    body = note[: note.rfind("\n\n") + 1]
    rows = conn.execute("SELECT witness, line FROM witness_cosignatures WHERE body=? "
                        "ORDER BY witness", (body,)).fetchall()
    full = note + "".join(r[1] for r in rows)
    return {"witnessed": required > 0 and len(rows) >= required, "required": required,
            "cosigned_by": [r[0] for r in rows], "witnessed_checkpoint": full}


def last_cosigned_size(conn: Connection, witness: str) -> int:
    row = query_one(conn, "SELECT max(size) AS s FROM witness_cosignatures WHERE witness=?",
                    (witness,))
    return int(row["s"]) if row and row["s"] is not None else 0
