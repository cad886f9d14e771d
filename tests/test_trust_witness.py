"""Two immd witness each other: each cosigns the other's checkpoints in the C2SP
tlog-cosignature v1 format after checking consistency with the last one it cosigned, and
refuses a fork, a shrunk log, a bad proof, a stranger's log and a forged signature.

The cosignatures and checkpoint signatures are checked here by a verifier written from the
C2SP signed-note and tlog-cosignature texts, not imported from imm."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imm.catalog import checkpoint as imm_checkpoint
from imm.cli.client import UnixHTTPConnection

from harness import Immd


def config(me: str, peer: dict[str, Any] | None = None) -> str:
    text = f'[ledger]\norigin = "imm.{me}/ledger"\n\n[trust]\nwitness_name = "imm.{me}/witness"\n'
    if peer:
        text += ("witnesses_required = 1\n\n"
                 f'[trust.witnesses."{peer["witness_name"]}"]\nvkey = "{peer["witness_vkey"]}"\n'
                 f'socket = "{peer["socket"]}"\n\n'
                 f'[trust.witness_logs."{peer["origin"]}"]\nvkey = "{peer["log_vkey"]}"\n')
    return text


def post(d: Immd, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    c = UnixHTTPConnection(str(d.sock), 30)
    c.request("POST", path, body=json.dumps(payload).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return r.status, data


def vkey_key(vkey: str, alg: int) -> tuple[str, bytes, Ed25519PublicKey]:
    name, keyhash, b64 = vkey.split("+", 2)
    blob = base64.b64decode(b64)
    assert blob[0] == alg
    assert hashlib.sha256(name.encode() + b"\n" + blob).digest()[:4].hex() == keyhash
    return name, bytes.fromhex(keyhash), Ed25519PublicKey.from_public_bytes(blob[1:])


def verify_witnessed(note: str, log_vkey: str, witness_vkey: str) -> int:
    """signed-note + tlog-cosignature v1, from the spec texts: returns the cosignature time."""
    text, sigs = note[: note.rfind("\n\n") + 1], note[note.rfind("\n\n") + 2:]
    lname, lhash, lpub = vkey_key(log_vkey, 0x01)
    wname, whash, wpub = vkey_key(witness_vkey, 0x04)
    log_ok, times = False, []
    for line in sigs.splitlines():
        assert line.startswith("\u2014 ")
        name, b64 = line[2:].split(" ")
        blob = base64.b64decode(b64)
        if name == lname and blob[:4] == lhash:
            lpub.verify(blob[4:], text.encode())
            log_ok = True
        elif name == wname and blob[:4] == whash:
            (ts,) = struct.unpack(">Q", blob[4:12])
            wpub.verify(blob[12:], b"cosignature/v1\n" + f"time {ts}\n".encode() + text.encode())
            times.append(ts)
    assert log_ok and len(times) == 1
    return times[0]


def wait_witnessed(d: Immd, size: int, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        head = d.json("ledger", "head")
        if head["witnessed"] and head["size"] >= size:
            return head
        assert time.monotonic() < deadline, head
        time.sleep(0.5)


def test_two_immd_cosign_each_other(make_immd: Any, tmp_path: Path) -> None:
    a, b = make_immd(config("a"), "a"), make_immd(config("b"), "b")
    info = {}
    for name, d in (("a", a), ("b", b)):
        d.start()
        info[name] = {**d.json("witness", "info"), "socket": str(d.sock)}
        d.stop()
    assert info["a"]["witness_vkey"].startswith("imm.a/witness+")
    a.config_path.write_text(config("a", info["b"]))  # type: ignore[union-attr]
    b.config_path.write_text(config("b", info["a"]))  # type: ignore[union-attr]
    a.start()
    b.start()
    img = tmp_path / "disk.raw"
    img.write_bytes(b"x" * 4096)
    a.run("image", "add", str(img), "--name", "web", "--version", "1")
    head_a = wait_witnessed(a, 2)
    head_b = wait_witnessed(b, 1)
    assert head_a["cosigned_by"] == ["imm.b/witness"] and head_b["cosigned_by"] == ["imm.a/witness"]
    ts = verify_witnessed(head_a["witnessed_checkpoint"], info["a"]["log_vkey"],
                          info["b"]["witness_vkey"])
    assert abs(ts - time.time()) < 600
    verify_witnessed(head_b["witnessed_checkpoint"], info["b"]["log_vkey"],
                     info["a"]["witness_vkey"])
    assert "witnessed" in a.run("ledger", "head").stdout

    # the log grows; the witness checks consistency from what it cosigned and cosigns again
    img.write_bytes(b"y" * 4096)
    a.run("image", "add", str(img), "--name", "web", "--version", "2")
    grown = wait_witnessed(a, head_a["size"] + 1)
    verify_witnessed(grown["witnessed_checkpoint"], info["a"]["log_vkey"],
                     info["b"]["witness_vkey"])

    # B refuses inconsistent checkpoints signed with A's real key
    key = serialization.load_pem_private_key((a.state / "keys" / "signing.pem").read_bytes(),
                                             None)
    assert isinstance(key, Ed25519PrivateKey)
    st, err = post(b, "/v1/witness/add-checkpoint", {"checkpoint": grown["checkpoint"],
                                                     "old_size": 0, "proof": []})
    assert st == 409
    have = err["error"]["detail"]["size"]
    assert have == grown["size"]
    forks = {
        "fork": imm_checkpoint.sign("imm.a/ledger", have, os.urandom(32), "imm.a/ledger", key),
        "grown-bad-proof": imm_checkpoint.sign("imm.a/ledger", have + 1, os.urandom(32),
                                               "imm.a/ledger", key),
        "shrunk": imm_checkpoint.sign("imm.a/ledger", have - 1,
                                      bytes.fromhex(head_a["root"]), "imm.a/ledger", key),
    }
    proof = a.json("ledger", "consistency", "--from", str(have - 1))["path"]
    for what, note in forks.items():
        st, err = post(b, "/v1/witness/add-checkpoint",
                       {"checkpoint": note, "old_size": have,
                        "proof": proof if what == "grown-bad-proof" else []})
        assert st == 409, (what, st, err)
        assert "refusing to cosign imm.a/ledger" in err["error"]["message"]
    # another key, another log
    other = Ed25519PrivateKey.generate()
    st, err = post(b, "/v1/witness/add-checkpoint", {
        "checkpoint": imm_checkpoint.sign("imm.a/ledger", have + 1, os.urandom(32),
                                          "imm.a/ledger", other), "old_size": have, "proof": []})
    assert st == 422 and "does not verify" in err["error"]["message"]
    st, err = post(b, "/v1/witness/add-checkpoint", {
        "checkpoint": imm_checkpoint.sign("imm.z/ledger", 1, os.urandom(32), "imm.z/ledger",
                                          other), "old_size": 0, "proof": []})
    assert st == 403 and "does not witness log 'imm.z/ledger'" in err["error"]["message"]
    # and the honest log is still cosigned afterwards
    assert b.json("ledger", "head")["witnessed"]
