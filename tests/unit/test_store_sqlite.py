"""The SQLite backend: it applies exactly the schemas it is given, in name order, once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from imm.store import Connection, Schema, execute_script, query, query_one
from imm.store.sqlite import Database, migrate, ordered

from harness import rows_after_a_cancelled_write


def two_schemas() -> tuple[Schema, Schema]:
    a, b = Schema("a"), Schema("b")

    @a.migration("0001-a")
    def _a1(conn: Connection) -> None:
        execute_script(conn, "CREATE TABLE a (x INTEGER); CREATE INDEX a_x ON a(x)")

    @b.migration("0002-b")
    def _b2(conn: Connection) -> None:
        conn.execute("CREATE TABLE b (y INTEGER REFERENCES a(x))")

    @a.migration("0003-a")
    def _a3(conn: Connection) -> None:
        conn.execute("ALTER TABLE a ADD COLUMN z TEXT")

    return a, b


def test_migrations_of_all_schemas_apply_in_name_order_once(tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    try:
        assert db.open() == ["0001-a", "0002-b", "0003-a"]
    finally:
        db.close()
    again = Database(tmp_path / "x.db", [b, a])
    try:
        assert again.open() == []
    finally:
        again.close()


def test_only_the_schemas_given_are_applied(tmp_path: Path) -> None:
    a, _ = two_schemas()
    db = Database(tmp_path / "x.db", [a])
    try:
        db.open()
        tables = db.write_sync(lambda c: {r["name"] for r in query(
            c, "SELECT name FROM sqlite_master WHERE type='table'")})
        assert "a" in tables and "b" not in tables
    finally:
        db.close()


def test_a_migration_name_claimed_twice_is_refused() -> None:
    a, b = Schema("catalog"), Schema("audit")
    a.migration("0001-x")(lambda conn: None)
    b.migration("0001-x")(lambda conn: None)
    with pytest.raises(ValueError, match="0001-x.*catalog.*audit"):
        ordered([a, b])
    with pytest.raises(ValueError, match="declared twice"):
        a.migration("0001-x")(lambda conn: None)


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    s = Schema("s")

    @s.migration("0001-ok")
    def _ok(conn: Connection) -> None:
        conn.execute("CREATE TABLE ok (x)")

    @s.migration("0002-bad")
    def _bad(conn: Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    with pytest.raises(RuntimeError):
        migrate(conn, [s])
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "ok" in names and "half" not in names
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == ["0001-ok"]


def test_a_write_that_raises_rolls_back_and_reads_see_commits(tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()

    def insert(conn: Connection, x: int, fail: bool) -> None:
        conn.execute("INSERT INTO a (x) VALUES (?)", (x,))
        if fail:
            raise ValueError("no")

    async def body() -> list[dict]:
        await db.write(insert, 1, False)
        with pytest.raises(ValueError):
            await db.write(insert, 2, True)
        return await db.read(lambda c: query(c, "SELECT x, z FROM a ORDER BY x"))

    try:
        assert asyncio.run(body()) == [{"x": 1, "z": None}]
        assert db.write_sync(lambda c: query_one(c, "SELECT x FROM a WHERE x=?", (9,))) is None
    finally:
        db.close()
        db.close()  # twice is fine


def test_reads_cannot_write(tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
            asyncio.run(db.read(lambda c: c.execute("INSERT INTO a (x) VALUES (1)")))
    finally:
        db.close()


# -- group commit -------------------------------------------------------------------------------


def _gated(db: Database) -> tuple[threading.Event, Callable[[Connection], None]]:
    """A first write that holds the writer until released, so the next calls queue up."""
    gate = threading.Event()

    def hold(conn: Connection) -> None:
        gate.wait(10)

    return gate, hold


def test_queued_writes_commit_together_and_a_failing_one_alone_is_rolled_back(
        tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    gate, hold = _gated(db)

    def insert(conn: Connection, x: int, fail: bool) -> int:
        conn.execute("INSERT INTO a (x) VALUES (?)", (x,))
        if fail:
            raise ValueError(f"no {x}")
        return x

    async def body() -> list[object]:
        first = asyncio.ensure_future(db.write(hold))
        await asyncio.sleep(0.05)  # the writer now holds `hold`; the rest queue behind it
        calls = [db.write(insert, x, x == 3) for x in range(1, 6)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.05)
        gate.set()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        before = db.batches
        got = asyncio.run(body())
        assert got[:2] == [1, 2] and got[3:] == [4, 5]
        assert isinstance(got[2], ValueError) and "no 3" in str(got[2])
        # the five queued calls ran in one transaction (the held one in its own)
        assert db.batches - before == 2
        rows = db.write_sync(lambda c: [r["x"] for r in query(c, "SELECT x FROM a ORDER BY x")])
        assert rows == [1, 2, 4, 5]
    finally:
        db.close()


def test_a_batch_that_cannot_commit_answers_every_caller_with_the_error(tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    broken = [True]

    def hook(conn: Connection) -> None:
        if broken[0]:
            raise OSError("disk on fire")

    db.add_batch_hook(hook)
    try:
        with pytest.raises(OSError, match="disk on fire"):
            db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (7)"))
        broken[0] = False
        assert db.write_sync(lambda c: query(c, "SELECT x FROM a")) == []  # nothing half-done
    finally:
        db.close()


def test_a_batch_hook_runs_once_per_batch_or_later_on_its_own_when_rate_limited(
        tmp_path: Path) -> None:
    import time

    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    seen: list[int] = []

    def hook(conn: Connection) -> None:
        seen.append(conn.execute("SELECT COUNT(*) FROM a").fetchone()[0])

    db.add_batch_hook(hook, min_interval_s=0.2)
    try:
        db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (1)"))
        assert seen == [1]  # the first batch: due at once
        db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (2)"))
        db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (3)"))
        assert seen == [1]  # not due yet: the writes are committed, the hook owed
        deadline = time.monotonic() + 5
        while seen == [1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [1, 3]  # it ran on its own, after the last write
        time.sleep(0.3)
        assert seen == [1, 3]  # and not again while nothing was written
    finally:
        db.close()


def test_closing_runs_the_hooks_still_owed(tmp_path: Path) -> None:
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    seen: list[int] = []
    db.add_batch_hook(lambda c: seen.append(c.execute("SELECT COUNT(*) FROM a").fetchone()[0]),
                      min_interval_s=60)
    db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (1)"))
    db.write_sync(lambda c: c.execute("INSERT INTO a (x) VALUES (2)"))
    assert seen == [1]  # the second is owed for a minute
    db.close()
    assert seen == [1, 2]  # but closing does not wait for it, nor drop it


def test_a_write_whose_caller_is_cancelled_has_landed_when_the_cancellation_returns(
        tmp_path: Path) -> None:
    """A rollout task stopped while its journal write runs: the stop returns only once the write
    is committed, so the engine started next reads it (it decided a step twice otherwise)."""
    a, b = two_schemas()
    db = Database(tmp_path / "x.db", [a, b])
    db.open()
    try:
        assert rows_after_a_cancelled_write(db, "INSERT INTO a (x) VALUES (7)",
                                            "SELECT x FROM a") == [{"x": 7}]
    finally:
        db.close()
