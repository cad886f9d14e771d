"""Cosignatures and the witness's consistency rule, on a catalog database in a temp dir."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imm.catalog import checkpoint, witness
from imm.catalog.merkle import node_hash
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from imm.errors import BadRequest, Conflict, Forbidden, VerificationFailed
from imm.store.sqlite import connect, migrate


def test_cosignature_v1_line_and_key_id() -> None:
    key = Ed25519PrivateKey.generate()
    body = "example.com/log\n3\n" + base64.b64encode(b"\1" * 32).decode() + "\ntime 5\n"
    line = witness.cosign(body, "w.example/1", key, 1679315147)
    blob = base64.b64decode(line.split(" ")[-1])
    pub = key.public_key()
    raw = witness.raw_public(pub)
    assert blob[:4] == hashlib.sha256(b"w.example/1\n\x04" + raw).digest()[:4]
    assert int.from_bytes(blob[4:12], "big") == 1679315147
    pub.verify(blob[12:], b"cosignature/v1\ntime 1679315147\n" + body.encode())
    assert witness.verify_cosignatures(body + "\n" + line, "w.example/1", pub) == [1679315147]
    vkey = witness.cosigner_vkey("w.example/1", pub)
    assert witness.parse_vkey(vkey, 0x04, "vkey")[0] == "w.example/1"
    with pytest.raises(BadRequest, match="key hash"):
        witness.parse_vkey(vkey.replace("w.example/1+", "w.example/2+", 1), 0x04, "vkey")
    with pytest.raises(BadRequest, match="algorithm 0x01"):
        witness.parse_vkey(vkey, 0x01, "vkey")


def test_witness_refuses_what_is_inconsistent(tmp_path: Path) -> None:

    conn = connect(tmp_path / "w.db")
    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    log_key, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    logs = {"log.example/a": ("log.example/a", log_key.public_key())}
    leaves = [os.urandom(32) for _ in range(3)]
    r2 = node_hash(leaves[0], leaves[1])
    r3 = node_hash(r2, leaves[2])

    def cp(size: int, root: bytes, key: Ed25519PrivateKey = log_key) -> str:
        return checkpoint.sign("log.example/a", size, root, "log.example/a", key, 1)

    ok = witness.add_checkpoint(conn, logs, cp(2, r2), 0, [], "w/1", wkey)
    assert ok["size"] == 2
    with pytest.raises(Conflict, match="not 0") as e:
        witness.add_checkpoint(conn, logs, cp(3, r3), 0, [], "w/1", wkey)
    assert e.value.detail == {"size": 2}
    assert witness.add_checkpoint(conn, logs, cp(3, r3), 2, [leaves[2]], "w/1", wkey)["size"] == 3
    with pytest.raises(Conflict, match="not consistent"):
        witness.add_checkpoint(conn, logs, cp(3, os.urandom(32)), 3, [], "w/1", wkey)
    with pytest.raises(Conflict, match="never shrinks"):
        witness.add_checkpoint(conn, logs, cp(2, r2), 3, [], "w/1", wkey)
    with pytest.raises(VerificationFailed, match="does not verify"):
        witness.add_checkpoint(conn, logs, cp(4, r3, wkey), 3, [], "w/1", wkey)
    with pytest.raises(Forbidden, match="does not witness"):
        witness.add_checkpoint(conn, logs, checkpoint.sign("x/y", 1, r2, "x/y", log_key), 0,
                               [], "w/1", wkey)
    conn.close()
