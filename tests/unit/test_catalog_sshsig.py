"""SSHSIG parsing and verification against keys and signatures made by OpenSSH's ssh-keygen."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from sshkeys import make_key, needs_ssh_keygen, sign, ssh_verify

from imm.catalog import sshsig

pytestmark = needs_ssh_keygen
STATEMENT = b'{"action":"channel-set","change":"c-1"}'


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_ssh_keygen_signature_verifies(tmp_path: Path, key_type: str) -> None:
    key = make_key(tmp_path, "alice", key_type)
    pub = sshsig.parse_public_key(Path(str(key) + ".pub").read_text())
    armored = sign(key, STATEMENT)
    s = sshsig.verify(armored, STATEMENT)
    assert s.fingerprint == pub.fingerprint
    # the fingerprint is the one ssh-keygen -l prints
    listed = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    assert pub.fingerprint == listed
    with pytest.raises(sshsig.SshError, match="does not verify"):
        sshsig.verify(armored, STATEMENT + b" ")


def test_other_namespace_is_refused_by_name(tmp_path: Path) -> None:
    key = make_key(tmp_path, "bob")
    armored = sign(key, STATEMENT, namespace="git")
    with pytest.raises(sshsig.SshError, match="namespace 'git'"):
        sshsig.verify(armored, STATEMENT)


def test_altered_signature_bytes_fail(tmp_path: Path) -> None:
    key = make_key(tmp_path, "carol")
    armored = sign(key, STATEMENT)
    lines = armored.strip().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))
    blob[-5] ^= 1  # inside the Ed25519 signature
    bad = "\n".join([lines[0], base64.b64encode(bytes(blob)).decode(), lines[-1]])
    with pytest.raises(sshsig.SshError, match="does not verify"):
        sshsig.verify(bad, STATEMENT)
    # and OpenSSH agrees
    pub = Path(str(key) + ".pub").read_text()
    assert ssh_verify(tmp_path, "carol", pub, bad, STATEMENT).returncode != 0
    assert ssh_verify(tmp_path, "carol", pub, armored, STATEMENT).returncode == 0


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("ssh-ed25519", "not 'TYPE BASE64"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP== x", "key type 'ssh-dss'"),
    ("ssh-ed25519 !!!notbase64 x", "not base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x", "not a valid ssh-ed25519 key"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOyv4c1o6l1n8S2bUSbSEQF+aX6/9q7GgmETTLqcu9Q9 x",
     "says ssh-rsa but its key data holds a 'ssh-ed25519'"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
     "private key"),
])
def test_malformed_public_keys_are_named(text: str, match: str) -> None:
    with pytest.raises(sshsig.SshError, match=match):
        sshsig.parse_public_key(text, "key file k.pub")


def test_short_rsa_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weak"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    with pytest.raises(sshsig.SshError, match="1024 bits is too weak"):
        sshsig.parse_public_key(Path(str(path) + ".pub").read_text())


@pytest.mark.parametrize("text, match", [
    ("hello", "not an SSH signature"),
    ("-----BEGIN SSH SIGNATURE-----\n%%%\n-----END SSH SIGNATURE-----", "not base64"),
    ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----",
     "truncated"),
    ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAg==\n-----END SSH SIGNATURE-----",
     "version 2"),
])
def test_malformed_signatures_are_named(text: str, match: str) -> None:
    with pytest.raises(sshsig.SshError, match=match):
        sshsig.verify(text, STATEMENT)
