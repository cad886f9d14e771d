"""Ed25519 signing keys kept in the state dir.

The private key (PKCS#8 PEM, mode 0600) never leaves ``<state>/keys`` and is never logged: the
KeyRing's repr names only key ids. Every public key that ever signed is kept as
``<keyid>.pub.pem`` so old records keep verifying after a rotation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BadRequest, ConfigError

PRIVATE_NAME = "signing.pem"


def raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid_of(pub: Ed25519PublicKey) -> str:
    """Key id: hex SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public(pub)).hexdigest()


def public_pem(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_pem(data: bytes | str, source: str = "key") -> Ed25519PublicKey:
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    try:
        pub = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise BadRequest(
            f"{source} is not a PEM public key ({e}); export one with 'immctl keys export'"
        ) from None
    if not isinstance(pub, Ed25519PublicKey):
        raise BadRequest(f"{source} is not an Ed25519 public key; imm signs with Ed25519")
    return pub


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` created 0600 from the start (no window where it is readable)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyRing:
    """The daemon's signing key and every public key it has used."""

    def __init__(self, directory: Path, private: Ed25519PrivateKey) -> None:
        self.directory = directory
        self._private = private
        self.keyid = keyid_of(private.public_key())
        self._public: dict[str, Ed25519PublicKey] = {}
        for p in sorted(directory.glob("*.pub.pem")):
            pub = load_public_pem(p.read_bytes(), str(p))
            self._public[keyid_of(pub)] = pub
        self._public[self.keyid] = private.public_key()

    def __repr__(self) -> str:  # never show key material
        return f"<KeyRing current={self.keyid[:16]} known={len(self._public)}>"

    @classmethod
    def load_or_create(cls, directory: Path) -> tuple[KeyRing, bool]:
        """Load the signing key; create one (mode 0600) on first start. Returns (ring, created)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        path = directory / PRIVATE_NAME
        created = False
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, 0o600)
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError:
                raise ConfigError(
                    f"signing key {path} is not a PEM private key; restore it from backup"
                ) from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"signing key {path} is not Ed25519")
        else:
            key = Ed25519PrivateKey.generate()
            _write_secret(path, _private_pem(key))
            created = True
        ring = cls(directory, key)
        ring._save_public(key.public_key())
        return ring, created

    def _save_public(self, pub: Ed25519PublicKey) -> None:
        kid = keyid_of(pub)
        p = self.directory / f"{kid}.pub.pem"
        if not p.exists():
            p.write_text(public_pem(pub))
        self._public[kid] = pub

    @property
    def private(self) -> Ed25519PrivateKey:
        return self._private

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def lookup(self, keyid: str) -> Ed25519PublicKey | None:
        return self._public.get(keyid)

    def keyids(self) -> list[str]:
        return list(self._public)

    def export_pem(self, keyid: str | None = None) -> str:
        kid = keyid or self.keyid
        pub = self._public.get(kid)
        if pub is None:
            raise BadRequest(f"unknown key id {kid!r}; 'immctl keys list' shows the known ones")
        return public_pem(pub)

    def stage_rotation(self) -> tuple[Ed25519PrivateKey, Path]:
        """Make a new key and write it beside the current one, not yet in force."""
        new = Ed25519PrivateKey.generate()
        staged = self.directory / (PRIVATE_NAME + ".next")
        if staged.exists():
            staged.unlink()
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _private_pem(new))
            os.fsync(fd)
        finally:
            os.close(fd)
        return new, staged

    def commit_rotation(self, new: Ed25519PrivateKey, staged: Path) -> None:
        """Put the staged key in force; the old public key stays for verification."""
        self._save_public(new.public_key())
        os.replace(staged, self.directory / PRIVATE_NAME)
        self._private = new
        self.keyid = keyid_of(new.public_key())

    def abort_rotation(self, staged: Path) -> None:
        if staged.exists():
            staged.unlink()
