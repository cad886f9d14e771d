"""SSH public keys and SSHSIG signatures (``ssh-keygen -Y sign``), checked in process.

Operators sign on their own machine with their own SSH key, exactly as git does for SSH commit
signing; imm only ever sees public keys and signatures. The signature format is OpenSSH's
PROTOCOL.sshsig::

    -----BEGIN SSH SIGNATURE-----            (base64 of the blob, wrapped at 70 columns)
    blob = "SSHSIG" uint32(1) string(public key) string(namespace) string(reserved)
           string(hash algorithm) string(signature)
    signed data = "SSHSIG" string(namespace) string(reserved) string(hash algorithm)
                  string(H(message))

Ed25519, ECDSA (P-256/384/521) and RSA (rsa-sha2-256/512) keys are accepted; security-key (sk-)
keys are not (their signatures carry flags and a counter this module does not check).
Verification runs in process with ``cryptography``, so nothing here blocks on a subprocess; the
tests check the same signatures with ``ssh-keygen -Y verify``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAGIC = b"SSHSIG"
NAMESPACE = "imm"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "ssh-rsa")
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
MAX_KEY_LINE = 16384
MAX_SIGNATURE = 16384
_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_ECDSA_HASH = {"ecdsa-sha2-nistp256": hashes.SHA256(), "ecdsa-sha2-nistp384": hashes.SHA384(),
               "ecdsa-sha2-nistp521": hashes.SHA512()}
_RSA_HASH = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}


class SshError(ValueError):
    """A key or signature is malformed or does not verify; the message says which and why."""


@dataclass(frozen=True)
class SshKey:
    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` prints it: SHA256: + unpadded base64 of SHA-256(blob)."""
        return fingerprint(self.blob)

    @property
    def line(self) -> str:
        """The key as one authorized_keys line without its comment."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"


def fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise SshError(f"{self.what} is truncated")
        (n,) = struct.unpack(">I", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return int(n)

    def string(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise SshError(f"{self.what} is truncated (a field claims {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def text(self) -> str:
        raw = self.string()
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise SshError(f"{self.what} has a non-ASCII name field") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SshError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def parse_public_key(text: str, source: str = "SSH public key") -> SshKey:
    """Read one OpenSSH public key line (``ssh-ed25519 AAAA... comment``)."""
    if not isinstance(text, str) or not text.strip():
        raise SshError(f"{source} is empty; give the .pub file ssh-keygen wrote")
    if len(text) > MAX_KEY_LINE:
        raise SshError(f"{source} is {len(text)} characters long; one public key line is expected")
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        if text.lstrip().startswith("-----BEGIN"):
            raise SshError(f"{source} is a PEM block (a private key?); give the .pub file "
                           "ssh-keygen wrote beside it, never the private key")
        raise SshError(f"{source} holds {len(lines)} lines; give exactly one public key line")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise SshError(f"{source} is not 'TYPE BASE64 [comment]': {lines[0][:60]!r}")
    key_type, b64 = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    if key_type not in KEY_TYPES:
        raise SshError(f"{source} has key type {key_type[:40]!r}; imm takes "
                       + ", ".join(KEY_TYPES))
    if not _B64.match(b64):
        raise SshError(f"{source}: the key data is not base64")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SshError(f"{source}: the key data is not base64") from None
    r = _Reader(blob, source)
    inner = r.text()
    if inner != key_type:
        raise SshError(f"{source} says {key_type} but its key data holds a {inner[:40]!r} key")
    _load(blob, source)
    return SshKey(key_type, blob, comment)


def _load(blob: bytes, what: str) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey \
        | rsa.RSAPublicKey:
    key_type = _Reader(blob, what).text()
    line = key_type.encode("ascii") + b" " + base64.b64encode(blob)
    try:
        key = serialization.load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SshError(f"{what}: not a valid {key_type} key ({e})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise SshError(f"{what}: an RSA key of {key.key_size} bits is too weak; use ≥2048 "
                       "bits, or better Ed25519")
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        raise SshError(f"{what}: key type {key_type} is not supported")
    return key


@dataclass(frozen=True)
class Signature:
    public_key: bytes
    namespace: str
    hash_algorithm: str
    sig_algorithm: str
    sig: bytes
    reserved: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def parse_signature(armored: str | bytes, source: str = "signature") -> Signature:
    """Read an armored SSHSIG (what ``ssh-keygen -Y sign`` writes to FILE.sig)."""
    if isinstance(armored, bytes):
        try:
            armored = armored.decode("ascii")
        except UnicodeDecodeError:
            raise SshError(f"{source} is not ASCII text; give the .sig file ssh-keygen "
                           "-Y sign wrote") from None
    if not isinstance(armored, str) or len(armored) > MAX_SIGNATURE:
        raise SshError(f"{source} is not an SSH signature (too long or not text)")
    text = armored.strip()
    if not text.startswith(ARMOR_BEGIN) or not text.endswith(ARMOR_END):
        raise SshError(f"{source} is not an SSH signature: expected '{ARMOR_BEGIN}' ... "
                       f"'{ARMOR_END}' (made by ssh-keygen -Y sign -n {NAMESPACE})")
    body = "".join(text[len(ARMOR_BEGIN):-len(ARMOR_END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SshError(f"{source}: the armored body is not base64") from None
    if not blob.startswith(MAGIC):
        raise SshError(f"{source}: the blob does not start with {MAGIC.decode()}")
    r = _Reader(blob[len(MAGIC):], source)
    version = r.u32()
    if version != 1:
        raise SshError(f"{source}: SSHSIG version {version} is not supported (only 1)")
    public_key = r.string()
    namespace = r.text()
    reserved = r.string()
    hash_alg = r.text()
    sig_blob = r.string()
    r.end()
    sr = _Reader(sig_blob, f"{source} (signature field)")
    sig_alg = sr.text()
    sig = sr.string()
    sr.end()
    return Signature(public_key, namespace, hash_alg, sig_alg, sig, reserved)


def signed_data(namespace: str, hash_algorithm: str, message: bytes, reserved: bytes = b"") -> bytes:
    h = HASHES[hash_algorithm](message).digest()
    return (MAGIC + _string(namespace.encode("ascii")) + _string(reserved)
            + _string(hash_algorithm.encode("ascii")) + _string(h))


def verify(armored: str | bytes, message: bytes, namespace: str = NAMESPACE,
           source: str = "signature") -> Signature:
    """Check an SSHSIG over ``message`` in ``namespace``; return it (its key says who signed).

    Raises SshError naming the problem: malformed, another namespace, unknown hash, bad
    signature. The caller decides whether the signing key is one it trusts.
    """
    s = parse_signature(armored, source)
    if s.namespace != namespace:
        raise SshError(f"{source} was made for namespace {s.namespace[:40]!r}, not "
                       f"{namespace!r}; sign with ssh-keygen -Y sign -n {namespace}")
    if s.hash_algorithm not in HASHES:
        raise SshError(f"{source} uses hash {s.hash_algorithm[:40]!r}; expected sha512 or sha256")
    key = _load(s.public_key, f"{source} (its public key)")
    data = signed_data(s.namespace, s.hash_algorithm, message, s.reserved)
    key_type = _Reader(s.public_key, source).text()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if s.sig_algorithm != "ssh-ed25519":
                raise SshError(f"{source}: an {key_type} key with signature algorithm "
                               f"{s.sig_algorithm[:40]!r}")
            key.verify(s.sig, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if s.sig_algorithm != key_type:
                raise SshError(f"{source}: an {key_type} key with signature algorithm "
                               f"{s.sig_algorithm[:40]!r}")
            rs = _Reader(s.sig, f"{source} (ECDSA signature)")
            r_int = int.from_bytes(rs.string(), "big")
            s_int = int.from_bytes(rs.string(), "big")
            rs.end()
            key.verify(encode_dss_signature(r_int, s_int), data, ec.ECDSA(_ECDSA_HASH[key_type]))
        else:
            if s.sig_algorithm not in _RSA_HASH:  # ssh-rsa (SHA-1) is refused by SSHSIG too
                raise SshError(f"{source}: RSA signature algorithm {s.sig_algorithm[:40]!r}; "
                               "expected rsa-sha2-512 or rsa-sha2-256")
            key.verify(s.sig, data, padding.PKCS1v15(), _RSA_HASH[s.sig_algorithm])
    except InvalidSignature:
        raise SshError(f"{source} by key {s.fingerprint} does not verify over this statement "
                       "(it was made over other bytes, or altered)") from None
    return s
