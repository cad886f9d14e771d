"""Ed25519 signing keys: the signer interface, the file signer, and the public keys kept.

The private key lives in a :class:`KeyStore` chosen by ``[signer] kind``: ``file`` (PKCS#8 PEM,
mode 0600, in ``<state>/keys``, this module) or ``pkcs11`` (on a token, imm/plugins/signers/);
other kinds come from plugins through ``imm_register_signers``. It never leaves its store and is
never logged: the KeyRing's repr names only key ids. Every public key that ever signed is kept as
``<keyid>.pub.pem`` so old records keep verifying after a rotation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BadRequest, ConfigError

PRIVATE_NAME = "signing.pem"


class SigningKey(Protocol):
    """What signs records and checkpoints: an Ed25519 private key, in memory or on a token."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


class KeyStore(Protocol):
    """Where the private signing key lives. Registered by ``kind`` (``imm_register_signers``).

    Rotation is two-phase: :meth:`stage` makes the next key beside the current one; once its
    announcement is in the ledger :meth:`commit` puts it in force, else :meth:`abort` drops it.
    After a crash, :meth:`staged` returns the staged key (or None) so start-up can finish or drop it.
    """

    kind: str
    description: str  # names the store in messages (a path, a token label); never a secret

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None: ...

    def load_or_create(self) -> tuple[SigningKey, bool]: ...

    def stage(self) -> SigningKey: ...

    def staged(self) -> SigningKey | None: ...

    def commit(self, new: SigningKey) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


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


class KeyLookup(Protocol):
    """What verification needs: the public keys by key id (a KeyRing, or PublicKeys)."""

    def lookup(self, keyid: str) -> Ed25519PublicKey | None: ...

    def keyids(self) -> list[str]: ...


class PublicKeys:
    """Every ``<keyid>.pub.pem`` of a keys directory: verifies, never signs (wherever the
    private key lives: a file, a token)."""

    def __init__(self, directory: Path) -> None:
        self._public: dict[str, Ed25519PublicKey] = {}
        for p in sorted(directory.glob("*.pub.pem")):
            pub = load_public_pem(p.read_bytes(), str(p))
            self._public[keyid_of(pub)] = pub

    def lookup(self, keyid: str) -> Ed25519PublicKey | None:
        return self._public.get(keyid)

    def keyids(self) -> list[str]:
        return list(self._public)


class FileKeyStore:
    """``[signer] kind = "file"``: the key is ``<state>/keys/signing.pem`` (mode 0600)."""

    kind = "file"

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        bad = set(config) - {"kind"}
        if bad:
            raise ConfigError(f"unknown [signer] key(s) {sorted(bad)} for kind 'file'")
        self.directory = directory
        self.path = directory / PRIVATE_NAME
        self.next_path = directory / (PRIVATE_NAME + ".next")
        self.description = str(self.path)

    def _load(self, path: Path) -> Ed25519PrivateKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError:
            raise ConfigError(
                f"signing key {path} is not a PEM private key; restore it from backup"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"signing key {path} is not Ed25519")
        return key

    def load_or_create(self) -> tuple[SigningKey, bool]:
        if self.path.exists():
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o600)
            return self._load(self.path), False
        key = Ed25519PrivateKey.generate()
        _write_secret(self.path, _private_pem(key))
        return key, True

    def stage(self) -> SigningKey:
        new = Ed25519PrivateKey.generate()
        if self.next_path.exists():
            self.next_path.unlink()
        fd = os.open(self.next_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _private_pem(new))
            os.fsync(fd)
        finally:
            os.close(fd)
        return new

    def staged(self) -> SigningKey | None:
        return self._load(self.next_path) if self.next_path.exists() else None

    def commit(self, new: SigningKey) -> None:
        os.replace(self.next_path, self.path)

    def abort(self) -> None:
        if self.next_path.exists():
            self.next_path.unlink()

    def close(self) -> None:
        pass


class KeyRing:
    """The daemon's signing key (in its :class:`KeyStore`) and every public key it has used."""

    def __init__(self, directory: Path, private: SigningKey,
                 store: KeyStore | None = None) -> None:
        self.directory = directory
        self.store: KeyStore = store or FileKeyStore({}, directory)
        self._private = private
        self.keyid = keyid_of(private.public_key())
        self._public: dict[str, Ed25519PublicKey] = {}
        for p in sorted(directory.glob("*.pub.pem")):
            pub = load_public_pem(p.read_bytes(), str(p))
            self._public[keyid_of(pub)] = pub
        self._public[self.keyid] = private.public_key()

    def __repr__(self) -> str:  # never show key material
        return f"<KeyRing current={self.keyid[:16]} known={len(self._public)}>"

    @property
    def description(self) -> str:
        return self.store.description

    @classmethod
    def load_or_create(cls, directory: Path,
                       store: KeyStore | None = None) -> tuple[KeyRing, bool]:
        """Load the signing key from ``store`` (default: the file); create one on first start.

        Returns (ring, created). The public keys are kept in ``directory`` either way.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        store = store or FileKeyStore({}, directory)
        key, created = store.load_or_create()
        ring = cls(directory, key, store)
        ring._save_public(key.public_key())
        return ring, created

    def _save_public(self, pub: Ed25519PublicKey) -> None:
        kid = keyid_of(pub)
        p = self.directory / f"{kid}.pub.pem"
        if not p.exists():
            p.write_text(public_pem(pub))
        self._public[kid] = pub

    @property
    def private(self) -> SigningKey:
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

    def stage_rotation(self) -> SigningKey:
        """Make a new key beside the current one in the store, not yet in force."""
        return self.store.stage()

    def staged_rotation(self) -> SigningKey | None:
        return self.store.staged()

    def commit_rotation(self, new: SigningKey) -> None:
        """Put the staged key in force; the old public key stays for verification."""
        self._save_public(new.public_key())
        self.store.commit(new)
        self._private = new
        self.keyid = keyid_of(new.public_key())

    def abort_rotation(self) -> None:
        self.store.abort()

    def close(self) -> None:
        self.store.close()
