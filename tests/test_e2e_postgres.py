"""End to end on PostgreSQL: a real immd whose state is in a real PostgreSQL 15 (the session's
cluster, tests/pgcluster.py), driven only through immctl; then two immd on one database.

The password reaches immd through an environment variable ([state] password_env) and TCP with
SCRAM authentication, as a production install would use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

import pgcluster
from harness import IMMD, Immd
from test_e2e_catalog import add, c2sp_verify

PW_ENV = {"IMM_PG_PASSWORD": pgcluster.PASSWORD}


def config(url: str) -> str:
    return (f'[state]\nurl = "{url}"\npassword_env = "IMM_PG_PASSWORD"\n\n'
            '[providers.local]\nkind = "local"\n')


def leaves(cluster: Any, db: str) -> list[bytes]:
    return [bytes(r[0]) for r in cluster.sql("SELECT data FROM ledger_leaves ORDER BY idx", db)]


def test_the_catalog_through_immctl_on_postgresql(pg_cluster: Any, tmp_path: Path) -> None:
    db = pg_cluster.new_database()
    d = Immd(_mk(tmp_path / "a"), config(pg_cluster.tcp_url(db))).start(extra_env=PW_ENV)
    v1 = add(d, tmp_path, "web", "1", "--label", "team=web")
    v2 = add(d, tmp_path, "web", "2")
    d.run("channel", "set", "web/prod", "web@1")
    d.run("channel", "set", "web/prod", "web@2")
    assert [h["digest"] for h in d.items("channel", "history", "web/prod")] == \
        [v1["digest"], v2["digest"]]
    old_pem = d.run("keys", "export").stdout
    rot = d.json("keys", "rotate")
    v3 = add(d, tmp_path, "web", "3")
    assert v3["envelope"]["signatures"][0]["keyid"] == rot["keyid"]
    d.run("image", "revoke", "web@1", "--reason", "test")
    assert d.run("image", "verify", "--all").returncode == 0
    assert d.run("ledger", "verify").returncode == 0
    # every leaf in PostgreSQL is an envelope that verifies under securesystemslib's DSSE
    keys = {}
    for pem in (old_pem, d.run("keys", "export").stdout):
        pub = serialization.load_pem_public_key(pem.encode())
        assert isinstance(pub, Ed25519PublicKey)
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = hashlib.sha256(raw).hexdigest()
        keys[kid] = SSlibKey.from_crypto(pub, keyid=kid)
    data = leaves(pg_cluster, db)
    head = d.json("ledger", "head")
    assert head["size"] == len(data) >= 6
    for leaf in data:
        env = Envelope.from_dict(json.loads(leaf))
        kid = env.signatures[next(iter(env.signatures))].keyid
        assert kid in env.verify([keys[kid]], 1)
    origin, size, root = c2sp_verify(head["checkpoint"], "imm.local/ledger",
                                     serialization.load_pem_public_key(
                                         d.run("keys", "export").stdout.encode()))  # type: ignore[arg-type]
    assert size == len(data) and root.hex() == head["root"]
    # nothing of the state went to SQLite, and the password is never logged
    assert not (d.state / "imm.db").exists()
    d.stop()
    assert pgcluster.PASSWORD not in d.log.read_text()
    # a restart finds everything where it was
    d.start(extra_env=PW_ENV)
    assert d.json("ledger", "head")["root"] == head["root"]
    assert d.json("image", "show", "web@3")["digest"] == v3["digest"]


def _immd_fails(tmp: Path, cfg: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp / "immd.toml").write_text(cfg)
    return subprocess.run([IMMD, "--state-dir", str(tmp / "state"), "--socket",
                           str(tmp / "immd.sock"), "--config", str(tmp / "immd.toml")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_an_unreachable_or_wrong_password_database_stops_immd_naming_it(
        pg_cluster: Any, tmp_path: Path) -> None:
    db = pg_cluster.new_database()
    port = pgcluster.free_port()
    url = f"postgresql://imm@127.0.0.1:{port}/imm"
    cp = _immd_fails(tmp_path, config(url), PW_ENV)
    assert cp.returncode == 2 and url in cp.stderr and "cannot connect" in cp.stderr
    assert "Traceback" not in cp.stderr and pgcluster.PASSWORD not in cp.stderr
    url = pg_cluster.tcp_url(db)
    cp = _immd_fails(tmp_path, config(url), {"IMM_PG_PASSWORD": "not-it"})
    assert cp.returncode == 2 and url in cp.stderr and "password authentication failed" in cp.stderr
    assert "not-it" not in cp.stderr and "Traceback" not in cp.stderr
    assert pg_cluster.sql("SELECT count(*) FROM pg_tables WHERE schemaname='public'", db) == [(0,)]
    cp = _immd_fails(tmp_path, config(f"postgresql://imm:{pgcluster.PASSWORD}@127.0.0.1/x"), {})
    assert cp.returncode == 2 and "holds a password" in cp.stderr
    assert pgcluster.PASSWORD not in cp.stderr


@pytest.mark.slow
def test_two_immd_on_one_postgresql_lose_no_update(pg_cluster: Any, tmp_path: Path) -> None:
    """20 concurrent writers over both sockets: every image and channel move is there, each
    ledger index once, `ledger verify` passes on both, both report the same checkpoint."""
    db = pg_cluster.new_database()
    cfg = config(pg_cluster.tcp_url(db))
    a = Immd(_mk(tmp_path / "a"), cfg).start(extra_env=PW_ENV)
    b = Immd(_mk(tmp_path / "b"), cfg)
    shutil.copytree(a.state / "keys", b.state / "keys")  # one catalog, one signing key
    b.start(extra_env=PW_ENV)
    errors: list[str] = []
    digests: list[str] = []

    def writer(n: int) -> None:
        d = a if n % 2 else b
        try:
            img = add(d, tmp_path, f"svc{n}", "1")
            digests.append(img["digest"])
            d.run("channel", "set", "shared/prod", img["digest"])
            d.run("channel", "set", f"own/{n}", img["digest"])
        except AssertionError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    for d in (a, b):
        names = {i["name"] for i in d.items("image", "list", "--limit", "100")}
        assert names == {f"svc{n}" for n in range(20)}
        hist = d.items("channel", "history", "shared/prod")
        assert sorted(h["digest"] for h in hist) == sorted(digests)  # 20 moves, none lost
        assert len(d.items("channel", "list")) == 21
        assert d.run("ledger", "verify").returncode == 0
    rows = pg_cluster.sql("SELECT count(*), count(DISTINCT idx), max(idx) FROM ledger_leaves", db)
    n, distinct, top = rows[0]
    assert n == distinct == top + 1 == 1 + 20 * 3  # genesis key + 3 records per writer
    ha, hb = a.json("ledger", "head"), b.json("ledger", "head")
    assert ha["checkpoint"] == hb["checkpoint"] and ha["size"] == n


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_immd_state_migrate_moves_a_served_sqlite_state_to_postgresql(
        pg_cluster: Any, tmp_path: Path) -> None:
    d = Immd(_mk(tmp_path / "a")).start()
    for v in ("1", "2", "3"):
        add(d, tmp_path, "web", v)
    d.run("channel", "set", "web/prod", "web@3")
    head = d.json("ledger", "head")
    d.stop()
    db = pg_cluster.new_database()
    url = pg_cluster.tcp_url(db)
    cp = subprocess.run([IMMD, "state", "migrate", "--to", url, "--password-env",
                         "IMM_PG_PASSWORD", "--state-dir", str(d.state)], capture_output=True,
                        text=True, timeout=120, env={**os.environ, **PW_ENV})
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert (out["ledger_size"], out["root"]) == (head["size"], head["root"])
    # again into the same database: refused (exit 4), naming the target, nothing changed
    again = subprocess.run([IMMD, "state", "migrate", "--to", url, "--password-env",
                            "IMM_PG_PASSWORD", "--state-dir", str(d.state)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, **PW_ENV})
    assert again.returncode == 4 and "not empty" in again.stderr and url in again.stderr
    # the same state dir (its key) served from PostgreSQL now
    d.config_path = tmp_path / "a" / "immd.toml"
    d.config_path.write_text(config(url))
    d.start(extra_env=PW_ENV)
    assert d.json("ledger", "head") == head
    assert d.json("image", "show", "channel:web/prod")["version"] == "3"
    assert d.run("image", "verify", "--all").returncode == 0
