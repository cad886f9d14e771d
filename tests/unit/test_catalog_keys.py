"""imm/catalog/keys.py: the file key store behind the KeyStore interface, and the KeyRing."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.catalog.keys import PRIVATE_NAME, FileKeyStore, KeyRing, keyid_of
from imm.errors import ConfigError


def test_file_store_creates_0600_and_rotates_in_two_phases(tmp_path: Path) -> None:
    ring, created = KeyRing.load_or_create(tmp_path / "keys")
    assert created and isinstance(ring.store, FileKeyStore)
    key_file = tmp_path / "keys" / PRIVATE_NAME
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = ring.keyid
    assert first[:16] in repr(ring) and "PRIVATE" not in repr(ring)
    staged = ring.stage_rotation()
    assert (tmp_path / "keys" / (PRIVATE_NAME + ".next")).stat().st_mode & 0o777 == 0o600
    # a restart sees the staged key (to finish or drop it against the ledger)
    again, created = KeyRing.load_or_create(tmp_path / "keys")
    assert not created and again.keyid == first
    assert keyid_of(again.staged_rotation().public_key()) == keyid_of(staged.public_key())  # type: ignore[union-attr]
    again.abort_rotation()
    assert again.staged_rotation() is None
    new = ring.stage_rotation()
    ring.commit_rotation(new)
    assert ring.keyid == keyid_of(new.public_key()) != first
    reloaded, _ = KeyRing.load_or_create(tmp_path / "keys")
    assert reloaded.keyid == ring.keyid and reloaded.lookup(first) is not None


def test_file_store_refuses_unknown_settings_and_a_bad_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown \[signer\] key\(s\) \['module'\]"):
        FileKeyStore({"kind": "file", "module": "/x.so"}, tmp_path)
    (tmp_path / PRIVATE_NAME).write_text("not a key")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        KeyRing.load_or_create(tmp_path)
