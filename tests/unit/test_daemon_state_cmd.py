"""``immd state migrate``: a SQLite state (catalog, a finished rollout, an audit sweep) copied into
a real PostgreSQL 15 database keeps its ledger size and root, re-verifies, and serves on; a
non-empty target or a copy that does not verify leaves the target as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rollout_world import World, run, settle

from imm.audit.record import new_sweep
from imm.catalog.merkle import MerkleLog
from imm.daemon import state_cmd
from imm.daemon.core import SCHEMAS
from imm.errors import Conflict, VerificationFailed
from imm.rollout import journal
from imm.store import query
from imm.store.postgres import Database


def _sqlite_state(tmp: Path) -> World:
    w = World(tmp)  # SQLite: this module is not parametrised
    w.old_fleet(w.image("1"))
    w.image("2")
    w.db.write_sync(new_sweep, "test")

    async def body() -> dict:
        st = await w.engine.start("alice", "web", "app@2")
        return await settle(w.engine, st["id"])

    assert run(w, body)["state"] == "completed"  # run() closes the store
    w.settings.ledger_origin = "imm.test/ledger"
    return w


def test_migrate_copies_and_proves_the_copy(pg_cluster: Any, tmp_path: Path) -> None:
    w = _sqlite_state(tmp_path)
    with sqlite3.connect(tmp_path / "imm.db") as src:
        size, root = MerkleLog(src).size(), MerkleLog(src).root()
    name = pg_cluster.new_database()
    url = pg_cluster.dsn(name)
    # only public keys are needed to prove the copy: the private key may be on a token
    (w.settings.keys_dir / "signing.pem").unlink()
    out = state_cmd.migrate(w.settings, url, SCHEMAS)
    assert out["ledger_size"] == size and out["root"] == root.hex() and size > 10
    assert out["tables"]["rollout_journal"] > 0 and out["rows_verified"] > 0
    db = Database(url, SCHEMAS)
    assert db.open() == []  # every migration is recorded as applied
    assert db.write_sync(lambda c: (MerkleLog(c).size(), MerkleLog(c).root())) == (size, root)
    rid = db.write_sync(lambda c: query(c, "SELECT id FROM rollouts"))[0]["id"]
    assert db.write_sync(journal.load, rid)["state"] == "completed"
    assert db.write_sync(new_sweep, "test") == 2  # identities continue after the copied rows
    db.close()
    # a second migration into the now non-empty database is refused and changes nothing
    with pytest.raises(Conflict, match="not empty"):
        state_cmd.migrate(w.settings, url, SCHEMAS)
    assert pg_cluster.sql("SELECT count(*) FROM sweeps", name) == [(2,)]


def test_a_copy_that_does_not_verify_writes_nothing(pg_cluster: Any, tmp_path: Path) -> None:
    w = _sqlite_state(tmp_path)
    with sqlite3.connect(tmp_path / "imm.db") as src:
        src.execute("UPDATE images SET name = 'forged' WHERE version = '2'")
    name = pg_cluster.new_database()
    with pytest.raises(VerificationFailed, match="does not verify"):
        state_cmd.migrate(w.settings, pg_cluster.dsn(name), SCHEMAS)
    assert pg_cluster.sql("SELECT count(*) FROM pg_tables WHERE schemaname='public'", name) == [(0,)]
