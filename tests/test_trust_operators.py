"""Operators who sign: registered through immctl with keys made by ssh-keygen; each a signed
ledger record; bad keys, duplicate names and duplicate keys refused with the ledger unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from securesystemslib.dsse import Envelope
from sshkeys import make_key, needs_ssh_keygen

from harness import Immd

pytestmark = needs_ssh_keygen


def test_operator_add_list_remove(immd: Immd, tmp_path: Path) -> None:
    alice = make_key(tmp_path, "alice")
    bob = make_key(tmp_path, "bob", "ecdsa")
    size = immd.ledger_size()
    r = immd.json("operator", "add", "alice", "--ssh-key", f"{alice}.pub")
    assert r["key_type"] == "ssh-ed25519" and r["fingerprint"].startswith("SHA256:")
    immd.json("operator", "add", "bob", "--ssh-key", f"{bob}.pub")
    assert immd.ledger_size() == size + 2
    rows = immd.items("operator", "list")
    assert [o["name"] for o in rows] == ["alice", "bob"]
    table = immd.run("operator", "list").stdout
    assert r["fingerprint"] in table

    # the record is a DSSE envelope in the ledger holding the public key
    leaf = immd.json("ledger", "leaf", str(r["ledger_index"]))
    env = Envelope.from_dict(leaf["data"])
    body = json.loads(env.pae().split(b" ", 4)[-1])
    assert body["name"] == "alice" and body["public_key"] == " ".join(
        Path(f"{alice}.pub").read_text().split()[:2])

    gone = immd.json("operator", "remove", "bob")
    assert gone["removed"] and immd.ledger_size() == size + 3
    assert [o["name"] for o in immd.items("operator", "list")] == ["alice"]
    cp = immd.fails("operator", "remove", "bob", code=3)
    assert "no operator named 'bob'" in cp.stderr


def test_bad_operator_input_leaves_the_ledger_unchanged(immd: Immd, tmp_path: Path) -> None:
    alice = make_key(tmp_path, "alice")
    immd.json("operator", "add", "alice", "--ssh-key", f"{alice}.pub")
    size = immd.ledger_size()

    cp = immd.fails("operator", "add", "alice", "--ssh-key", f"{make_key(tmp_path, 'x')}.pub",
                    code=4)
    assert "operator 'alice' already exists" in cp.stderr
    cp = immd.fails("operator", "add", "alice2", "--ssh-key", f"{alice}.pub", code=4)
    assert "already registered to operator 'alice'" in cp.stderr

    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== sre@laptop\n")
    cp = immd.fails("operator", "add", "carol", "--ssh-key", str(garbage), code=2)
    assert str(garbage) in cp.stderr and "not a valid ssh-ed25519 key" in cp.stderr
    cp = immd.fails("operator", "add", "carol", "--ssh-key", str(alice), code=2)
    assert "private key" in cp.stderr
    cp = immd.fails("operator", "add", "carol", "--ssh-key", str(tmp_path / "nope.pub"), code=2)
    assert "nope.pub does not exist" in cp.stderr
    cp = immd.fails("operator", "add", "Carol!", "--ssh-key", f"{make_key(tmp_path, 'c')}.pub",
                    code=2)
    assert "bad operator name 'Carol!'" in cp.stderr
    assert immd.ledger_size() == size

