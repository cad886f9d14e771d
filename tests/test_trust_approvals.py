"""k-of-n approvals end to end: operators' keys made by ssh-keygen in the test, approvals signed
by ssh-keygen -Y sign, a real immd driven through immctl, and every approval checked offline
with ssh-keygen -Y verify from the ledger's leaves alone."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from sshkeys import make_key, needs_ssh_keygen, sign, ssh_verify

from backends import free_port
from harness import Immd, have

pytestmark = needs_ssh_keygen
REPO = Path(__file__).resolve().parent.parent

PROTECT = """
[protect."web/production"]
approvals = 2
approvers = ["sre-1", "sre-2", "sre-3"]

[protect."web/staging"]
approvals = 1
approvers = ["sre-1"]
expires = "2s"

[protect."web/canary"]
approvals = 1
approvers = ["sre-1", "ghost"]
"""


def disk(tmp: Path, version: str) -> Path:
    p = tmp / f"web-{version}.raw"
    p.write_bytes(version.encode() * 4096)
    return p


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Path]:
    keys = {"sre-1": make_key(tmp_path, "sre-1"), "sre-2": make_key(tmp_path, "sre-2", "ecdsa"),
            "sre-3": make_key(tmp_path, "sre-3", "rsa"),
            "mallory": make_key(tmp_path, "mallory")}
    return keys


@pytest.fixture
def protected(tmp_path: Path, team: dict[str, Path]) -> Immd:
    d = Immd(tmp_path, PROTECT).start()
    for name in ("sre-1", "sre-2", "sre-3"):
        d.run("operator", "add", name, "--ssh-key", f"{team[name]}.pub")
    for v in ("v1", "v2", "v3"):
        d.run("image", "add", str(disk(tmp_path, v)), "--name", "web", "--version", v)
    return d


def approve_all(d: Immd, change: str, keys: list[Path]) -> dict:
    r: dict = {}
    for k in keys:
        r = d.json("approve", change, "--key", str(k))
    return r


def test_two_of_three_moves_the_channel_only_after_the_second_approval(
        protected: Immd, team: dict[str, Path], tmp_path: Path) -> None:
    d = protected
    first = d.json("channel", "set", "web/production", "web@v1")
    assert first["pending"] and first["state"] == "pending"
    approve_all(d, first["id"], [team["sre-1"], team["sre-2"]])
    assert d.json("channel", "show", "web/production")["image"] == "web@v1"

    ch = d.json("channel", "set", "web/production", "web@v2")
    cid = ch["id"]
    out = d.run("channel", "set", "web/production", "web@v2").stdout
    assert "is pending" in out and "immctl approve" in out  # a second request, for people
    statement = d.run("change", "statement", cid).stdout.encode()
    assert statement == ch["statement"].encode()
    terms = json.loads(statement)
    assert terms["change"] == cid and terms["action"] == "channel-set"
    assert terms["previous"] == first["terms"]["image"] and terms["protect"]["approvals"] == 2

    r = d.json("approve", cid, "--key", str(team["sre-1"]))
    assert r["state"] == "pending" and r["approved_by"] == ["sre-1"]
    assert d.json("channel", "show", "web/production")["image"] == "web@v1"
    size = d.ledger_size()

    # the same key (and so the same operator) twice does not count
    cp = d.fails("approve", cid, "--key", str(team["sre-1"]), code=4)
    assert "sre-1" in cp.stderr and "never counts twice" in cp.stderr
    # an unregistered key
    cp = d.fails("approve", cid, "--key", str(team["mallory"]), code=5)
    assert "is not a registered operator's key" in cp.stderr
    # a valid signature over another statement
    other = tmp_path / "other.sig"
    other.write_text(sign(team["sre-2"], statement + b" "))
    cp = d.fails("approve", cid, "--signature", str(other), code=7)
    assert "does not verify over this statement" in cp.stderr and cid in cp.stderr
    # a signature for another namespace (git's)
    other.write_text(sign(team["sre-2"], statement, namespace="git"))
    cp = d.fails("approve", cid, "--signature", str(other), code=7)
    assert "namespace 'git'" in cp.stderr
    # garbage
    other.write_text("not a signature at all\n")
    cp = d.fails("approve", cid, "--signature", str(other), code=7)
    assert "not an SSH signature" in cp.stderr
    cp = d.fails("approve", "c-00000000", "--key", str(team["sre-2"]), code=3)
    assert "no change c-00000000" in cp.stderr
    assert d.ledger_size() == size
    assert d.json("channel", "show", "web/production")["image"] == "web@v1"

    # the second distinct approver, with a signature made apart and handed over as a file
    sig = tmp_path / "sre-2.sig"
    sig.write_text(sign(team["sre-2"], statement))
    out = d.run("approve", cid, "--signature", str(sig)).stdout
    assert "carried out" in out
    shown = d.json("channel", "show", "web/production")
    assert shown["image"] == "web@v2"
    assert f"via change {cid} approved by sre-1, sre-2" in shown["actor"]
    done = d.json("change", "show", cid)
    assert done["state"] == "applied" and done["approved_by"] == ["sre-1", "sre-2"]
    cp = d.fails("approve", cid, "--key", str(team["sre-3"]), code=4)
    assert "is applied" in cp.stderr

    # offline: every approval verifies with ssh-keygen -Y verify from its ledger leaf alone,
    # and the leaf itself is a DSSE envelope signed by the daemon's key
    pem = d.run("keys", "export").stdout.encode()
    pub = serialization.load_pem_public_key(pem)
    keyid = d.json("status")["keyid"]
    dsse_key = SSlibKey.from_crypto(pub, keyid=keyid)  # type: ignore[arg-type]
    for a in done["approvals"]:
        leaf = d.json("ledger", "leaf", str(a["ledger_index"]))["data"]
        assert keyid in Envelope.from_dict(leaf).verify([dsse_key], 1)
        body = json.loads(base64.b64decode(leaf["payload"]))
        assert body["type"] == "approval" and body["change"] == cid
        ok = ssh_verify(tmp_path, body["operator"], body["public_key"], body["signature"],
                        body["statement"].encode())
        assert ok.returncode == 0, ok.stderr
        assert f'Good "imm" signature for {body["operator"]}' in ok.stdout.decode()
        # and it is bound to that statement: OpenSSH refuses it for any other
        bad = ssh_verify(tmp_path, body["operator"], body["public_key"], body["signature"],
                         body["statement"].encode().replace(b"web/production", b"web/prod"))
        assert bad.returncode != 0
    assert d.run("ledger", "verify").returncode == 0
    assert d.run("image", "verify", "--all").returncode == 0

    # an approval row edited behind imm's back no longer matches its signed record
    db = sqlite3.connect(d.state / "imm.db")
    with db:
        db.execute("UPDATE approvals SET operator='sre-3' WHERE change_id=? AND operator='sre-1'",
                   (cid,))
    db.close()
    cp = d.fails("image", "verify", "--all", code=7)
    assert f"approvals {cid}/sre-3" in cp.stderr and "column operator is 'sre-3'" in cp.stderr


def test_expired_cancelled_and_misconfigured_changes(protected: Immd,
                                                     team: dict[str, Path]) -> None:
    d = protected
    ch = d.json("channel", "set", "web/staging", "web@v1")
    time.sleep(2.2)  # past its 2 s expiry
    assert d.json("change", "show", ch["id"])["state"] == "expired"
    size = d.ledger_size()
    cp = d.fails("approve", ch["id"], "--key", str(team["sre-1"]), code=4)
    assert f"change {ch['id']} expired at" in cp.stderr
    assert d.ledger_size() == size
    with pytest.raises(AssertionError):
        d.json("channel", "show", "web/staging")  # never created

    # a protect block naming someone who is not a registered operator
    cp = d.fails("channel", "set", "web/canary", "web@v1", code=4)
    assert "approver(s) ghost who" in cp.stderr
    assert "not registered operators" in cp.stderr
    assert d.ledger_size() == size

    ch = d.json("channel", "set", "web/production", "web@v3")
    assert [c["id"] for c in d.items("change", "list")] == [ch["id"]]
    d.run("change", "cancel", ch["id"])
    assert d.items("change", "list") == []
    assert d.items("change", "list", "--all")[0]["state"] == "cancelled"
    cp = d.fails("approve", ch["id"], "--key", str(team["sre-1"]), code=4)
    assert "is cancelled" in cp.stderr
    cp = d.fails("approve", ch["id"], code=2)
    assert "--key FILE" in cp.stderr

    # unprotected channels move at once, as before
    assert d.json("channel", "set", "web/dev", "web@v1")["changed"] is True


def test_protect_block_errors_stop_the_daemon(tmp_path: Path) -> None:
    for text, needle in [
        ('[protect."web/production"]\napprovals = 3\napprovers = ["a", "b"]\n', "approvals = 3"),
        ('[protect."web/production"]\napprovals = 1\napprovers = ["a", "a"]\n', "listed twice"),
        ('[protect."web/production"]\napprovers = []\n', "non-empty list"),
        ('[protect."web/production"]\napprovers = ["a"]\nexpires = "soon"\n', "'soon'"),
        ('[protect."Web!"]\napprovers = ["a"]\n', "neither a channel"),
    ]:
        root = tmp_path / str(abs(hash(text)))
        root.mkdir()
        d = Immd(root, text)
        with pytest.raises(RuntimeError):
            d.start()
        log = d.log.read_text()
        assert needle in log, log
        d.stop()


@pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
def test_protected_rollout_start_and_undo(tmp_path: Path, team: dict[str, Path]) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
           'stop_on_close = false\n\n[services.web]\n'
           'targets = [{ provider = "local", region = "local", count = 1 }]\n'
           'router = "haproxy"\nhealth_timeout_s = 10\ndrain_timeout_s = 2\n'
           f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
           'check_interval_ms = 200, rise = 1, fall = 1 }\n\n'
           '[protect.web]\napprovals = 2\napprovers = ["sre-1", "sre-2"]\n')
    d = Immd(tmp_path, cfg).start()
    for name in ("sre-1", "sre-2"):
        d.run("operator", "add", name, "--ssh-key", f"{team[name]}.pub")
    for v in ("v1", "v2"):
        d.run("image", "add", str(images / v), "--name", "web", "--version", v)
    v1 = d.json("image", "show", "web@v1")["digest"]
    for v in ("v1", "v2"):
        before = len(d.items("rollout", "list"))
        ch = d.json("rollout", "start", "web", "--image", f"web@{v}", "--wait")
        assert ch["pending"] and ch["action"] == "rollout-start"
        r = d.json("approve", ch["id"], "--key", str(team["sre-1"]))
        assert r["state"] == "pending" and len(d.items("rollout", "list")) == before
        r = d.json("approve", ch["id"], "--key", str(team["sre-2"]))
        assert r["state"] == "applied", r
        assert d.json("rollout", "watch", r["result"]["rollout"])["state"] == "completed"
    undo = d.json("rollout", "undo", "web")
    assert undo["pending"] and undo["terms"]["image"] == v1
    r = approve_all(d, undo["id"], [team["sre-2"], team["sre-1"]])
    rid = r["result"]["rollout"]
    done = d.json("rollout", "watch", rid)
    assert done["state"] == "completed" and done["image_ref"] == "web@v1"
    assert f"via change {undo['id']}" in done["actor"]


def test_approve_through_ssh_agent(protected: Immd, team: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's private key lives only in ssh-agent: immctl approve is given the .pub."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setitem(protected.base_env, "SSH_AUTH_SOCK", str(sock))  # immctl's env
        subprocess.run(["ssh-add", "-q", str(team["sre-1"])], check=True, capture_output=True)
        team["sre-1"].unlink()  # from now on only the agent holds it
        ch = protected.json("channel", "set", "web/production", "web@v2")
        r = protected.json("approve", ch["id"], "--key", f"{team['sre-1']}.pub")
        assert r["state"] == "pending" and r["approved_by"] == ["sre-1"]
        r = protected.json("approve", ch["id"], "--key", str(team["sre-2"]))
        assert r["state"] == "applied" and r["approved_by"] == ["sre-1", "sre-2"]
        assert protected.json("channel", "show", "web/production")["image"] == "web@v2"
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.slow
@pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
def test_an_approved_rollout_survives_a_kill_before_it_starts(tmp_path: Path,
                                                              team: dict[str, Path]) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
           'stop_on_close = false\n\n[services.web]\n'
           'targets = [{ provider = "local", region = "local", count = 1 }]\n'
           'router = "haproxy"\nhealth_timeout_s = 10\ndrain_timeout_s = 2\n'
           f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
           'check_interval_ms = 200, rise = 1, fall = 1 }\n\n'
           '[protect.web]\napprovals = 1\napprovers = ["sre-1"]\n')
    d = Immd(tmp_path, cfg).start(extra_env={"IMM_TEST_KILL_AT": "change-approved:after"})
    d.run("operator", "add", "sre-1", "--ssh-key", f"{team['sre-1']}.pub")
    d.run("image", "add", str(images / "v1"), "--name", "web", "--version", "v1")
    ch = d.json("rollout", "start", "web", "--image", "web@v1")
    d.fails("approve", ch["id"], "--key", str(team["sre-1"]), code=69)  # killed mid-way
    assert d.proc is not None and d.proc.wait(10) == -9
    d.stop()
    d.start()
    deadline = time.monotonic() + 30
    while (view := d.json("change", "show", ch["id"]))["state"] != "applied":
        assert time.monotonic() < deadline, view
        time.sleep(0.3)
    done = d.json("rollout", "watch", view["result"]["rollout"])
    assert done["state"] == "completed" and f"via change {ch['id']}" in done["actor"]
    assert len(d.items("rollout", "list")) == 1
