"""``[signer] kind = "pkcs11"``: the Ed25519 key on a PKCS#11 token (an HSM, SoftHSM2, a YubiHSM).

Signs with CKM_EDDSA (pure Ed25519, RFC 8032), so records and checkpoints are byte-for-byte what
the file signer would produce with the same key; the key id is the SHA-256 of the raw public key
read from CKA_EC_POINT. The private key is generated on the token (CKA_SENSITIVE, not
extractable) and never leaves it. The PIN comes from ``pin_env`` or ``pin_file``, never from the
config file, and is never logged or put in a message.

Labels on the token: ``key_label`` is the key in force; a rotation generates ``<key_label>.next``,
and once its announcement is in the ledger relabels the old pair ``<key_label>.retired.<keyid16>``
and the new pair ``key_label``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ...catalog.keys import SigningKey
from ...errors import ConfigError
from ..hookspecs import hookimpl
from ..registry import SignerRegistry

ED25519_OID = "1.3.101.112"
KEYS = {"kind", "module", "token_label", "pin_env", "pin_file", "key_label"}


class TokenKey:
    """One Ed25519 key pair on the token; signs under the store's session lock."""

    def __init__(self, private: Any, public: Any, lock: threading.Lock) -> None:
        import asn1crypto.core
        from pkcs11 import Attribute

        self._private = private
        self._public_obj = public
        self._lock = lock
        raw = asn1crypto.core.OctetString.load(public[Attribute.EC_POINT]).native
        self._public = Ed25519PublicKey.from_public_bytes(raw)
        self.keyid = hashlib.sha256(raw).hexdigest()

    def __repr__(self) -> str:
        return f"<TokenKey {self.keyid[:16]}>"

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        with self._lock:
            return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def relabel(self, label: str) -> None:
        from pkcs11 import Attribute

        with self._lock:
            self._private[Attribute.LABEL] = label
            self._public_obj[Attribute.LABEL] = label


class Pkcs11KeyStore:
    kind = "pkcs11"

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        bad = set(config) - KEYS
        if bad:
            raise ConfigError(f"unknown [signer] key(s) {sorted(bad)} for kind 'pkcs11'; "
                              f"known: {sorted(KEYS)}")
        for k in ("module", "token_label"):
            if not isinstance(config.get(k), str) or not config[k]:
                raise ConfigError(f'[signer] kind = "pkcs11" needs {k} = "..."')
        self.module = str(config["module"])
        self.token_label = str(config["token_label"])
        self.key_label = str(config.get("key_label", "imm-signing"))
        self.description = (f"PKCS#11 token {self.token_label!r} (module {self.module}), "
                            f"key label {self.key_label!r}")
        pin = _pin(config)
        if not Path(self.module).is_file():
            raise ConfigError(f"[signer] module {self.module!r} does not exist; install the "
                              f"PKCS#11 library (e.g. softhsm2) or fix the path")
        try:
            import pkcs11
        except ImportError:
            raise ConfigError('[signer] kind = "pkcs11" needs python-pkcs11: '
                              "pip install 'imm[pkcs11]'") from None
        try:
            lib = pkcs11.lib(self.module)
        except Exception as e:  # noqa: BLE001 - any load failure is a bad module path
            raise ConfigError(f"[signer] module {self.module!r} is not a PKCS#11 library "
                              f"({type(e).__name__}: {e})") from None
        try:
            token = lib.get_token(token_label=self.token_label)
        except pkcs11.NoSuchToken:
            have = sorted(t.label for t in (s.get_token() for s in lib.get_slots(token_present=True))
                          if t.label)
            raise ConfigError(f"[signer] token_label {self.token_label!r}: no such token in "
                              f"{self.module} (tokens: {have or 'none'}); initialise it or fix "
                              f"the label") from None
        try:
            self.session = token.open(user_pin=pin, rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid):
            raise ConfigError(f"[signer] the PIN from {self._pin_source(config)} was refused by "
                              f"token {self.token_label!r}; fix the PIN") from None
        except pkcs11.PinLocked:
            raise ConfigError(f"[signer] token {self.token_label!r}: the user PIN is locked; "
                              f"reset it with the SO PIN") from None
        self.lock = threading.Lock()

    @staticmethod
    def _pin_source(config: Mapping[str, Any]) -> str:
        if config.get("pin_env"):
            return f"${config['pin_env']}"
        return f"file {config.get('pin_file')}"

    def _find(self, label: str) -> TokenKey | None:
        import pkcs11
        from pkcs11 import KeyType, ObjectClass

        with self.lock:
            try:
                priv = self.session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label=label)
                pub = self.session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC_EDWARDS, label=label)
            except pkcs11.NoSuchKey:
                return None
            except pkcs11.MultipleObjectsReturned:
                raise ConfigError(f"token {self.token_label!r} holds more than one key labelled "
                                  f"{label!r}; remove the extra ones") from None
        return TokenKey(priv, pub, self.lock)

    def _generate(self, label: str) -> TokenKey:
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        with self.lock:
            params = self.session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
            pub, priv = params.generate_keypair(
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, store=True, label=label,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        return TokenKey(priv, pub, self.lock)

    def _destroy(self, label: str) -> None:
        from pkcs11 import Attribute

        with self.lock:
            for obj in list(self.session.get_objects({Attribute.LABEL: label})):
                obj.destroy()

    def load_or_create(self) -> tuple[SigningKey, bool]:
        key = self._find(self.key_label)
        if key is not None:
            return key, False
        nxt = self._find(self.key_label + ".next")
        if nxt is not None and self._retired():
            # a commit was cut between its two relabels: the ledger already announced .next
            nxt.relabel(self.key_label)
            return nxt, False
        return self._generate(self.key_label), True

    def _retired(self) -> bool:
        from pkcs11 import Attribute, ObjectClass

        with self.lock:
            return any(str(o[Attribute.LABEL]).startswith(self.key_label + ".retired.")
                       for o in self.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))

    def stage(self) -> SigningKey:
        self._destroy(self.key_label + ".next")
        return self._generate(self.key_label + ".next")

    def staged(self) -> SigningKey | None:
        return self._find(self.key_label + ".next")

    def commit(self, new: SigningKey) -> None:
        assert isinstance(new, TokenKey)
        old = self._find(self.key_label)
        if old is not None:
            old.relabel(f"{self.key_label}.retired.{old.keyid[:16]}")
        new.relabel(self.key_label)

    def abort(self) -> None:
        self._destroy(self.key_label + ".next")

    def close(self) -> None:
        with self.lock:
            self.session.close()


def _pin(config: Mapping[str, Any]) -> str:
    env, file = config.get("pin_env"), config.get("pin_file")
    if "pin" in config:  # KEYS already refuses it; say why
        raise ConfigError("[signer] never takes the PIN itself; use pin_env or pin_file")
    if bool(env) == bool(file):
        raise ConfigError('[signer] kind = "pkcs11" needs exactly one of pin_env = "VAR" or '
                          'pin_file = "/path"')
    if env:
        pin = os.environ.get(str(env))
        if not pin:
            raise ConfigError(f"[signer] pin_env: environment variable {env} is not set")
        return pin
    try:
        return Path(str(file)).read_text().strip()
    except OSError as e:
        raise ConfigError(f"[signer] pin_file {file!r} cannot be read ({e.strerror})") from None


@hookimpl(trylast=True)
def imm_register_signers(registry: SignerRegistry) -> None:
    registry.add(Pkcs11KeyStore)
