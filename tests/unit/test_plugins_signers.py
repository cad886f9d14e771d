"""The signer plugins: imm/plugins/signers/{file,pkcs11}.py and the imm_register_signers hook.

The PKCS#11 store runs in this process against a real SoftHSM2 token made in a temp dir (the
library reads SOFTHSM2_CONF once per process, so the whole module shares one token and each
test uses its own key label).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from softhsm import PIN, Token, init_token

from imm.catalog import checkpoint, dsse
from imm.catalog.keys import FileKeyStore, KeyRing, SigningKey, keyid_of
from imm.errors import ConfigError
from imm.plugins.hookspecs import hookimpl
from imm.plugins.manager import Plugins
from imm.plugins.registry import SignerRegistry
from imm.plugins.signers.pkcs11 import Pkcs11KeyStore, TokenKey


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    tok = init_token(tmp_path_factory.mktemp("hsm"))
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(tok.conf)
    os.environ["IMM_TEST_TOKEN_PIN"] = PIN
    yield tok
    os.environ.pop("IMM_TEST_TOKEN_PIN", None)
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


def store(tok: Token, label: str, **extra: Any) -> Pkcs11KeyStore:
    cfg = {"kind": "pkcs11", "module": tok.module, "token_label": tok.label,
           "pin_env": "IMM_TEST_TOKEN_PIN", "key_label": label, **extra}
    return Pkcs11KeyStore(cfg, Path("/nonexistent"))


def test_token_key_signs_dsse_and_checkpoints_like_a_file_key(token: Token, tmp_path: Path) -> None:
    ring, created = KeyRing.load_or_create(tmp_path / "keys", store(token, "sign"))
    assert created and isinstance(ring.private, TokenKey)
    env = dsse.sign("image", {"a": 1}, ring.private, ring.keyid)
    assert dsse.verify(env, ring.lookup)[1] == {"a": 1}
    note = checkpoint.sign("o", 3, b"\x01" * 32, "o", ring.private)
    assert checkpoint.verify_note(note, "o", ring.public_key)
    assert ring.keyid == keyid_of(ring.public_key)
    # only the public key is in the directory; the private key is not extractable
    assert [p.name for p in (tmp_path / "keys").iterdir()] == [f"{ring.keyid}.pub.pem"]
    from pkcs11 import Attribute
    assert ring.private._private[Attribute.EXTRACTABLE] is False  # type: ignore[attr-defined]
    ring.close()
    again, created = KeyRing.load_or_create(tmp_path / "keys", store(token, "sign"))
    assert not created and again.keyid == ring.keyid
    again.close()


def test_rotation_stage_abort_commit_and_a_cut_commit(token: Token, tmp_path: Path) -> None:
    s = store(token, "rot")
    ring, _ = KeyRing.load_or_create(tmp_path, s)
    first = ring.keyid
    staged = ring.stage_rotation()
    assert keyid_of(ring.staged_rotation().public_key()) == keyid_of(staged.public_key())  # type: ignore[union-attr]
    ring.abort_rotation()
    assert ring.staged_rotation() is None
    new = ring.stage_rotation()
    ring.commit_rotation(new)
    assert ring.keyid == keyid_of(new.public_key()) != first
    assert ring.lookup(first) is not None and ring.staged_rotation() is None
    # a commit cut between its two relabels (old retired, new still .next) is finished at start
    nxt = ring.stage_rotation()
    assert isinstance(ring.private, TokenKey)
    ring.private.relabel(f"rot.retired.{ring.keyid[:16]}")
    ring.close()
    s2 = store(token, "rot")
    key, created = s2.load_or_create()
    assert not created and keyid_of(key.public_key()) == keyid_of(nxt.public_key())
    assert s2.staged() is None
    s2.close()


def test_pin_from_a_file_and_never_in_the_config(token: Token, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text(PIN + "\n")
    s = store(token, "pinfile", pin_env="", pin_file=str(pin))
    s.close()
    with pytest.raises(ConfigError, match=r"unknown \[signer\] key\(s\) \['pin'\]") as e:
        store(token, "x", pin=PIN)
    assert PIN not in str(e.value)
    with pytest.raises(ConfigError, match="exactly one of pin_env"):
        store(token, "x", pin_file=str(pin))
    with pytest.raises(ConfigError, match="pin_file '/no/pin' cannot be read"):
        store(token, "x", pin_env="", pin_file="/no/pin")
    with pytest.raises(ConfigError, match="IMM_NO_SUCH_PIN is not set"):
        store(token, "x", pin_env="IMM_NO_SUCH_PIN")
    with pytest.raises(ConfigError, match="is not a PKCS#11 library"):
        store(token, "x", module=str(pin))


class MemoryStore(FileKeyStore):
    """A third party's key store: keys in memory (stands for a cloud KMS plugin)."""

    kind = "memory"

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.description = "memory"
        self.key = Ed25519PrivateKey.generate()

    def load_or_create(self) -> tuple[SigningKey, bool]:
        return self.key, True


class ThirdParty:
    @hookimpl
    def imm_register_signers(self, registry: SignerRegistry) -> None:
        registry.add(MemoryStore)


def test_built_ins_and_a_third_party_register_signers_through_the_hook(tmp_path: Path) -> None:
    plugins = Plugins(extra=[ThirdParty()])
    kinds = plugins.signers.kinds()
    assert kinds["file"] == "imm.catalog.keys" and kinds["pkcs11"].endswith("signers.pkcs11")
    assert kinds["memory"] == __name__
    ring, _ = KeyRing.load_or_create(tmp_path, plugins.signers.get("memory")({}, tmp_path))
    assert ring.description == "memory"
    with pytest.raises(ConfigError, match=r"no signer of kind 'kms'.*known: file, memory, pkcs11"):
        plugins.signers.get("kms")
    blocked = Plugins(block=["pkcs11-signer"])
    assert "pkcs11" not in blocked.signers.kinds() and "file" in blocked.signers.kinds()
