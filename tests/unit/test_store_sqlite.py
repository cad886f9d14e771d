"""The SQLite backend: it applies exactly the schemas it is given, in name order, once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from imm.store import Connection, Schema, execute_script, query, query_one
from imm.store.sqlite import Database, migrate, ordered


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
