"""End to end: a real immd in a temp dir, driven only through immctl.

Independent verifiers check what imm produces: securesystemslib's DSSE for envelopes, pymerkle
and an RFC 9162 verifier written here for proofs, a C2SP signed-note verifier written here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from harness import Immd


def disk(tmp: Path, name: str, size: int = 4096, seed: bytes = b"") -> Path:
    p = tmp / name
    block = hashlib.sha256(seed + name.encode()).digest()
    p.write_bytes(block * (size // 32))
    return p


def add(immd: Immd, tmp: Path, name: str, version: str, *extra: str) -> dict:
    path = disk(tmp, f"{name}-{version}.raw", seed=version.encode())
    return immd.json("image", "add", str(path), "--name", name, "--version", version, *extra)


# -- RFC 9162 verifiers, written here from the RFC text (not imported from imm) ----------------

def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def rfc_verify_inclusion(leaf_hash: bytes, index: int, size: int, path: list[bytes],
                         root: bytes) -> bool:
    # RFC 9162 §2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes,
                           path: list[bytes]) -> bool:
    # RFC 9162 §2.1.4.2
    if first == second:
        return not path and first_hash == second_hash
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


def c2sp_verify(note: str, name: str, pub: Ed25519PublicKey) -> tuple[str, int, bytes]:
    """A C2SP signed-note + tlog-checkpoint verifier written from the spec text."""
    text, sep, sigs = note.partition("\n\n")
    assert sep, "a note has a blank line between text and signatures"
    text += "\n"
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keyhash = hashlib.sha256(name.encode() + b"\n" + b"\x01" + raw).digest()[:4]
    for line in sigs.splitlines():
        assert line.startswith("\u2014 "), line
        sig_name, _, b64 = line[2:].rpartition(" ")
        blob = base64.b64decode(b64)
        if sig_name == name and blob[:4] == keyhash:
            pub.verify(blob[4:], text.encode())
            origin, size, root = text.splitlines()[:3]
            return origin, int(size), base64.b64decode(root)
    raise AssertionError("no signature line for this key")


# -- the tests -------------------------------------------------------------------------------

def test_envelopes_verify_with_securesystemslib(immd: Immd, tmp_path: Path) -> None:
    img = add(immd, tmp_path, "web", "1.0", "--layer", "os=debian@12", "--label", "team=web")
    pem = immd.run("keys", "export").stdout
    pub = serialization.load_pem_public_key(pem.encode())
    assert isinstance(pub, Ed25519PublicKey)
    env = img["envelope"]
    keyid = env["signatures"][0]["keyid"]
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keyid == hashlib.sha256(raw).hexdigest()
    key = SSlibKey.from_crypto(pub, keyid=keyid)
    accepted = Envelope.from_dict(env).verify([key], 1)
    assert keyid in accepted
    body = json.loads(base64.b64decode(env["payload"]))
    assert body["digest"] == img["digest"] and body["manifest"]["name"] == "web"
    assert env["payloadType"] == "application/vnd.imm.image.v1+json"
    # every leaf in the ledger is an envelope that verifies the same way
    size = immd.ledger_size()
    with sqlite3.connect(immd.state / "imm.db") as db:
        for (data,) in db.execute("SELECT data FROM ledger_leaves"):
            assert keyid in Envelope.from_dict(json.loads(data)).verify([key], 1)
    assert size >= 2
    # a tampered payload does not verify
    bad = dict(env, payload=base64.b64encode(b'{"digest":"x"}').decode())
    with pytest.raises(Exception):  # noqa: B017 - securesystemslib's VerificationError
        Envelope.from_dict(bad).verify([key], 1)


def test_checkpoint_and_proofs_verify_independently(immd: Immd, tmp_path: Path) -> None:
    import pymerkle

    for i in range(9):
        add(immd, tmp_path, "svc", f"1.{i}")
    head = immd.json("ledger", "head")
    pub = serialization.load_pem_public_key(immd.run("keys", "export").stdout.encode())
    assert isinstance(pub, Ed25519PublicKey)
    origin, size, root = c2sp_verify(head["checkpoint"], "imm.local/ledger", pub)
    assert origin == "imm.local/ledger" and size == head["size"] and root.hex() == head["root"]
    n = head["size"]
    # pymerkle, fed the same leaf data, computes the same roots
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    with sqlite3.connect(immd.state / "imm.db") as db:
        leaves = [row[0] for row in db.execute("SELECT data FROM ledger_leaves ORDER BY idx")]
    for data in leaves:
        tree.append_entry(data)
    assert tree.get_root(n).hex() == head["root"]
    for index in range(n):
        p = immd.json("ledger", "proof", "--index", str(index))
        path = [bytes.fromhex(h) for h in p["path"]]
        assert p["leaf_hash"] == hashlib.sha256(b"\x00" + leaves[index]).hexdigest()
        assert rfc_verify_inclusion(bytes.fromhex(p["leaf_hash"]), index, n, path,
                                    bytes.fromhex(p["root"]))
        # pymerkle's own proof for the same leaf has the same path
        proof = tree.prove_inclusion(index + 1, n)
        pymerkle.verify_inclusion(bytes.fromhex(p["leaf_hash"]), tree.get_root(n), proof)
    for old in range(1, n + 1):
        c = immd.json("ledger", "consistency", "--from", str(old), "--to", str(n))
        assert rfc_verify_consistency(old, n, bytes.fromhex(c["old_root"]),
                                      bytes.fromhex(c["new_root"]),
                                      [bytes.fromhex(h) for h in c["path"]])
        assert c["old_root"] == tree.get_root(old).hex()
        pymerkle.verify_consistency(tree.get_root(old), tree.get_root(n),
                                    tree.prove_consistency(old, n))


def test_tampering_is_named(immd: Immd, tmp_path: Path) -> None:
    a = add(immd, tmp_path, "web", "1.0")
    b = add(immd, tmp_path, "api", "2.0")
    immd.run("channel", "set", "web/production", "web@1.0")
    assert immd.run("image", "verify", "--all").returncode == 0
    assert immd.run("ledger", "verify").returncode == 0
    db = sqlite3.connect(immd.state / "imm.db")
    # a column edited directly in SQLite
    db.execute("UPDATE images SET version='9.9' WHERE digest=?", (b["digest"],))
    db.commit()
    cp = immd.fails("image", "verify", "--all", code=7)
    assert b["digest"] in cp.stderr and "version" in cp.stderr and a["digest"] not in cp.stderr
    db.execute("UPDATE images SET version='2.0' WHERE digest=?", (b["digest"],))
    # one byte of a stored envelope
    (env,) = db.execute("SELECT envelope FROM images WHERE digest=?", (a["digest"],)).fetchone()
    i = env.index('"payload":"') + 20
    flipped = env[:i] + ("B" if env[i] != "B" else "C") + env[i + 1:]
    db.execute("UPDATE images SET envelope=? WHERE digest=?", (flipped, a["digest"]))
    db.commit()
    cp = immd.fails("image", "verify", "--all", code=7)
    assert f"images {a['digest']}" in cp.stderr
    report = immd.json("image", "verify", "--all", check=False)
    assert not report["ok"] and {p["key"] for p in report["problems"]} == {a["digest"]}
    db.execute("UPDATE images SET envelope=? WHERE digest=?", (env, a["digest"]))
    db.commit()
    assert immd.run("image", "verify", "--all").returncode == 0
    # one byte of a ledger leaf
    (data,) = db.execute("SELECT data FROM ledger_leaves WHERE idx=2").fetchone()
    changed = bytearray(data)
    changed[-3] ^= 0x01
    db.execute("UPDATE ledger_leaves SET data=? WHERE idx=2", (bytes(changed),))
    db.commit()
    cp = immd.fails("ledger", "verify", code=7)
    assert "leaf 2" in cp.stderr
    rep = immd.json("ledger", "verify", check=False)
    assert any(p.get("index") == 2 for p in rep["problems"])
    db.close()


def test_revoke_cascade_and_restore(immd: Immd, tmp_path: Path) -> None:
    base = add(immd, tmp_path, "base", "1")
    child = add(immd, tmp_path, "web", "1", "--parent", "base@1")
    grandchild = add(immd, tmp_path, "web", "2", "--parent", child["digest"][:20])
    other = add(immd, tmp_path, "other", "1")
    assert grandchild["parent"] == child["digest"] and child["parent"] == base["digest"]
    size = immd.ledger_size()
    r = immd.json("image", "revoke", "base@1", "--reason", "CVE-2026-1234", "--cascade")
    assert sorted(r["revoked"]) == sorted([base["digest"], child["digest"], grandchild["digest"]])
    assert immd.ledger_size() == size + 1
    for ref in ("base@1", "web@1", "web@2"):
        shown = immd.json("image", "show", ref)
        assert shown["status"] == "revoked" and shown["revocation"]["reason"] == "CVE-2026-1234"
    assert immd.json("image", "show", "other@1")["status"] == "active"
    listed = immd.items("image", "list", "--status", "revoked")
    assert {i["digest"] for i in listed} == set(r["revoked"])
    # a revoked image cannot be put on a channel
    cp = immd.fails("channel", "set", "web/production", "web@2", code=4)
    assert "revoked" in cp.stderr and "CVE-2026-1234" in cp.stderr
    leaf = immd.json("ledger", "proof", "--index", str(r["ledger_index"]))
    assert leaf["index"] == r["ledger_index"]
    rs = immd.json("image", "restore", "base@1")
    assert sorted(rs["restored"]) == sorted(r["revoked"])
    assert immd.ledger_size() == size + 2
    for ref in ("base@1", "web@1", "web@2"):
        assert immd.json("image", "show", ref)["status"] == "active"
    # without --cascade only the one image
    r2 = immd.json("image", "revoke", "web@1", "--reason", "bad build")
    assert r2["revoked"] == [child["digest"]]
    assert immd.json("image", "show", "web@2")["status"] == "active"
    immd.fails("image", "revoke", "web@1", "--reason", "again", code=4)
    immd.fails("image", "restore", "other@1", code=4)
    assert immd.run("image", "verify", "--all").returncode == 0
    assert immd.run("ledger", "verify").returncode == 0
    del other


def test_channels_refs_and_history(immd: Immd, tmp_path: Path) -> None:
    v1 = add(immd, tmp_path, "web", "1")
    v2 = add(immd, tmp_path, "web", "2")
    immd.run("channel", "set", "web/production", "web@1")
    immd.run("channel", "set", "web/production", v2["digest"][:19])
    assert immd.json("image", "show", "channel:web/production")["digest"] == v2["digest"]
    hist = immd.items("channel", "history", "web/production")
    assert [h["digest"] for h in hist] == [v1["digest"], v2["digest"]]
    assert immd.items("channel", "list")[0]["name"] == "web/production"
    # the same digest again is not a new move
    assert immd.json("channel", "set", "web/production", "web@2")["changed"] is False
    # refs: unique prefix, ambiguous prefix, unknown names list candidates
    assert immd.json("image", "show", v1["digest"][7:7 + 12])["digest"] == v1["digest"]
    cp = immd.fails("image", "show", "web@3", code=3)
    assert "known versions" in cp.stderr and "1" in cp.stderr
    immd.fails("image", "show", "nosuch@1", code=3)
    immd.fails("image", "show", "channel:web/staging", code=3)
    cp = immd.fails("image", "show", "sha256:zz", code=2)
    assert "sha256:zz" in cp.stderr
    # same content, same manifest: same digest, no new record
    again = add(immd, tmp_path, "web", "1")
    assert again["digest"] == v1["digest"] and again["created"] is False


def test_key_rotation(immd: Immd, tmp_path: Path) -> None:
    add(immd, tmp_path, "web", "1")
    old_pem = immd.run("keys", "export").stdout
    r = immd.json("keys", "rotate")
    new_pem = immd.run("keys", "export").stdout
    assert old_pem != new_pem and r["previous"] != r["keyid"]
    keys = immd.items("keys", "list")
    assert [k["current"] for k in keys] == [False, True]
    # the rotation record is signed by the OLD key
    old = serialization.load_pem_public_key(old_pem.encode())
    env = r["envelope"]
    assert env["signatures"][0]["keyid"] == r["previous"]
    key = SSlibKey.from_crypto(old, keyid=r["previous"])
    Envelope.from_dict(env).verify([key], 1)
    v2 = add(immd, tmp_path, "web", "2")
    assert v2["envelope"]["signatures"][0]["keyid"] == r["keyid"]
    assert immd.run("image", "verify", "--all").returncode == 0
    assert immd.run("ledger", "verify").returncode == 0
    assert immd.run("keys", "export", "--keyid", r["previous"]).stdout == old_pem


def test_key_file_mode_and_never_logged(tmp_path: Path, make_immd) -> None:  # type: ignore[no-untyped-def]
    d = make_immd()
    d.start(extra_env={})
    d.run("status")
    d.run("keys", "rotate")
    key_path = d.state / "keys" / "signing.pem"
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert (d.state.stat().st_mode & 0o077) == 0
    assert (d.sock.stat().st_mode & 0o007) == 0, "socket must not be world-accessible"
    assert (d.sock.stat().st_mode & 0o777) == 0o660
    secret = key_path.read_bytes()
    d.stop()
    log = d.log.read_bytes()
    body = b"".join(secret.splitlines()[1:-1])
    assert body not in log and secret not in log
    assert b"PRIVATE KEY" not in log


def test_restart_keeps_everything(make_immd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = make_immd().start()
    img = add(d, tmp_path, "web", "1")
    head = d.json("ledger", "head")
    d.stop()
    d.start()
    assert d.json("ledger", "head")["root"] == head["root"]
    assert d.json("image", "show", "web@1")["digest"] == img["digest"]
    assert d.run("ledger", "verify").returncode == 0


def test_key_swap_is_refused(make_immd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = make_immd().start()
    d.stop()
    os.remove(d.state / "keys" / "signing.pem")
    for p in (d.state / "keys").glob("*.pub.pem"):
        p.unlink()
    with pytest.raises(RuntimeError):
        d.start()
    assert b"not in this catalog's key history" in d.log.read_bytes()
    assert b"Traceback" not in d.log.read_bytes()
