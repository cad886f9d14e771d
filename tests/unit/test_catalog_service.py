"""The catalog under group commit: one signed checkpoint per committed batch (or interval), and
``ledger head`` always a signed checkpoint of a committed tree."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from imm.catalog import checkpoint
from imm.catalog.keys import KeyRing
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.service import Catalog
from imm.catalog.verify import verify_ledger
from imm.store import Connection
from imm.store.sqlite import Database

ORIGIN = "imm.test/ledger"


def open_catalog(tmp: Path, interval_s: float = 0.0) -> tuple[Database, Catalog, list[str]]:
    keyring, _ = KeyRing.load_or_create(tmp / "keys")
    db = Database(tmp / "imm.db", [CATALOG_SCHEMA])
    db.open()
    cat = Catalog(keyring, ORIGIN)
    db.write_sync(cat.init_keys, "test")
    signed: list[str] = []
    real = cat.sign_checkpoint

    def counting(conn: Connection) -> str:
        note = real(conn)
        signed.append(note)
        return note

    cat.sign_checkpoint = counting  # type: ignore[method-assign]
    db.add_batch_hook(cat.checkpoint_if_behind, interval_s)
    cat.defer_checkpoints = True
    return db, cat, signed


def add(cat: Catalog, i: int) -> Any:
    def fn(conn: Connection) -> dict[str, Any]:
        return cat.add_image(conn, "test", name="app", version=str(i),
                             content_digest="sha256:" + f"{i:064x}", content_kind="file",
                             layers=[], boot_actions=[], parent=None, labels={})
    return fn


def head_size(db: Database, cat: Catalog) -> tuple[int, int]:
    h = db.write_sync(cat.head)
    _, size, _ = checkpoint.verify(h["checkpoint"], ORIGIN, cat.keyring.public_key)
    return h["size"], size


def test_one_checkpoint_per_batch_and_the_head_covers_every_acknowledged_record(
        tmp_path: Path) -> None:
    db, cat, signed = open_catalog(tmp_path)

    async def body() -> None:
        # 40 registrations at once: they queue behind each other and commit in few batches
        done = await asyncio.gather(*(db.write(add(cat, i)) for i in range(40)))
        assert all(r["created"] for r in done)
        # acknowledged => committed and covered by the signed head
        h = await db.read(cat.head)
        _, size, _ = checkpoint.verify(h["checkpoint"], ORIGIN, cat.keyring.public_key)
        assert size == h["size"] == 41  # the genesis key record + 40 images

    try:
        asyncio.run(body())
        assert 1 <= len(signed) < 40, f"{len(signed)} checkpoints for 40 records"
        assert len(signed) <= db.batches  # at most one per committed batch
        report = db.write_sync(verify_ledger, cat.keyring, ORIGIN)
        assert report["ok"], report
        # a write that appends nothing signs nothing
        n = len(signed)
        db.write_sync(cat.head)
        assert len(signed) == n
    finally:
        db.close()


def test_with_an_interval_the_head_trails_then_catches_up_and_always_verifies(
        tmp_path: Path) -> None:
    db, cat, signed = open_catalog(tmp_path, interval_s=0.3)
    try:
        db.write_sync(add(cat, 0))
        assert head_size(db, cat) == (2, 2)  # the first batch: due at once
        for i in range(1, 6):
            db.write_sync(add(cat, i))
        size, cp = head_size(db, cat)
        assert size == 7 and cp == 2  # trailing, but a signed checkpoint of a committed tree
        assert db.write_sync(verify_ledger, cat.keyring, ORIGIN)["ok"]
        deadline = time.monotonic() + 5
        while head_size(db, cat)[1] != 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert head_size(db, cat) == (7, 7)
        assert len(signed) == 2
    finally:
        db.close()
    # closing signs what is owed: reopen and see the head at the ledger's size
    db2, cat2, _ = open_catalog(tmp_path)
    try:
        assert head_size(db2, cat2) == (7, 7)
    finally:
        db2.close()
