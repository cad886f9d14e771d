"""Operators' SSH keys and signatures made by OpenSSH's own ssh-keygen, as operators make them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None,
                                      reason="ssh-keygen (Debian openssh-client) is not installed")


def make_key(directory: Path, name: str, key_type: str = "ed25519") -> Path:
    """A new key pair; returns the private key path (the public key is beside it, .pub)."""
    path = directory / f"id_{name}"
    args = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", f"{name}@test", "-f", str(path)]
    if key_type == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True, capture_output=True)
    return path


def sign(key: Path, data: bytes, namespace: str = "imm") -> str:
    """``ssh-keygen -Y sign -n NAMESPACE -f KEY`` over ``data``; the armored signature."""
    msg = key.parent / f"msg-{key.name}"
    msg.write_bytes(data)
    sig = Path(str(msg) + ".sig")
    sig.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", namespace, "-f", str(key), "-q", str(msg)],
                   check=True, capture_output=True)
    return sig.read_text()


def ssh_verify(directory: Path, principal: str, public_key_line: str, signature: str,
               data: bytes, namespace: str = "imm") -> subprocess.CompletedProcess[bytes]:
    """``ssh-keygen -Y verify`` with an allowed_signers file naming one principal."""
    allowed = directory / f"allowed_signers-{principal}"
    allowed.write_text(f'{principal} namespaces="{namespace}" {public_key_line}\n')
    sig = directory / f"verify-{principal}.sig"
    sig.write_text(signature)
    return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal,
                           "-n", namespace, "-s", str(sig)], input=data, capture_output=True)
