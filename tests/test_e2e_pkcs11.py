"""End to end with the signing key on a real SoftHSM2 token ([signer] kind = "pkcs11").

immd (a subprocess with SOFTHSM2_CONF pointing at a token made in a temp dir) signs every DSSE
record and checkpoint with CKM_EDDSA on the token; the test checks them with securesystemslib and
the exported public key only, rotates the key on the token, and looks for a private key file
under the state dir. Then bad input: a missing module, a wrong token label, a wrong PIN.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from softhsm import PIN, Token, init_token

from harness import Immd
from test_e2e_catalog import add, c2sp_verify


def config(tok: Token, *, module: str | None = None, label: str | None = None) -> str:
    return ('[signer]\nkind = "pkcs11"\n'
            f'module = "{module or tok.module}"\ntoken_label = "{label or tok.label}"\n'
            'pin_env = "IMM_TOKEN_PIN"\nkey_label = "imm-ledger"\n\n'
            '[providers.local]\nkind = "local"\n')


def sslib(pem: str) -> tuple[str, SSlibKey, Ed25519PublicKey]:
    pub = serialization.load_pem_public_key(pem.encode())
    assert isinstance(pub, Ed25519PublicKey)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(raw).hexdigest()
    return kid, SSlibKey.from_crypto(pub, keyid=kid), pub


def private_key_files(state: Path) -> list[Path]:
    return [p for p in state.rglob("*") if p.is_file()
            and (b"PRIVATE KEY" in p.read_bytes()[:4096] or p.name.startswith("signing.pem"))]


def test_immd_signs_on_a_softhsm_token(tmp_path: Path) -> None:
    tok = init_token(tmp_path / "hsm")
    env = {**tok.env, "IMM_TOKEN_PIN": PIN}
    d = Immd(_mk(tmp_path / "d"), config(tok)).start(extra_env=env)
    try:
        v1 = add(d, tmp_path, "web", "1")
        d.run("channel", "set", "web/prod", "web@1")
        old_pem = d.run("keys", "export").stdout
        old_id, old_key, old_pub = sslib(old_pem)
        assert v1["envelope"]["signatures"][0]["keyid"] == old_id
        assert d.json("status")["keyid"] == old_id
        # rotation: a new key generated on the token, announced by a record the old key signed
        rot = d.json("keys", "rotate")
        assert rot["previous"] == old_id and rot["keyid"] != old_id
        Envelope.from_dict(rot["envelope"]).verify([old_key], 1)
        new_pem = d.run("keys", "export").stdout
        new_id, new_key, new_pub = sslib(new_pem)
        assert new_id == rot["keyid"]
        v2 = add(d, tmp_path, "web", "2")
        assert v2["envelope"]["signatures"][0]["keyid"] == new_id
        assert d.run("image", "verify", "--all").returncode == 0
        assert d.run("ledger", "verify").returncode == 0
        head = d.json("ledger", "head")
        _, size, root = c2sp_verify(head["checkpoint"], "imm.local/ledger", new_pub)
        assert root.hex() == head["root"]
    finally:
        d.stop()
    # every leaf verifies under securesystemslib's DSSE with the exported public keys alone
    keys = {old_id: old_key, new_id: new_key}
    db = sqlite3.connect(d.state / "imm.db")
    leaves = [r[0] for r in db.execute("SELECT data FROM ledger_leaves ORDER BY idx")]
    db.close()
    assert len(leaves) == size >= 5
    signers = set()
    for leaf in leaves:
        env_ = Envelope.from_dict(json.loads(leaf))
        kid = env_.signatures[next(iter(env_.signatures))].keyid
        assert kid in env_.verify([keys[kid]], 1)
        signers.add(kid)
    assert signers == {old_id, new_id}
    # no private key under the state dir, and the PIN is never logged
    assert private_key_files(d.state) == []
    assert PIN not in d.log.read_text()
    # a restart finds the rotated key on the token, under its label
    d.start(extra_env=env)
    try:
        assert d.json("status")["keyid"] == new_id
        assert d.run("ledger", "verify").returncode == 0
    finally:
        d.stop()


@pytest.mark.parametrize("case", ["module", "label", "pin"])
def test_bad_signer_settings_are_named(tmp_path: Path, case: str) -> None:
    tok = init_token(tmp_path / "hsm")
    module = str(tmp_path / "no" / "libpkcs11.so") if case == "module" else None
    label = "no-such-token" if case == "label" else None
    pin = "0000-wrong" if case == "pin" else PIN
    d = Immd(_mk(tmp_path / "d"), config(tok, module=module, label=label))
    with pytest.raises(RuntimeError, match="exited with 2"):
        d.start(extra_env={**tok.env, "IMM_TOKEN_PIN": pin})
    log = d.log.read_text()
    expect = {"module": module, "label": "'no-such-token'", "pin": "$IMM_TOKEN_PIN"}[case]
    assert expect is not None and expect in log, log
    assert "Traceback" not in log
    assert PIN not in log and "0000-wrong" not in log
    assert private_key_files(d.state) == [] if d.state.exists() else True
    assert not (d.state / "imm.db").exists()


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
