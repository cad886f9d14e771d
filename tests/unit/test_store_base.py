"""What the domain sees of the store: the Connection protocol and the helpers over it."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from imm.store import Connection, Cursor, execute_script, now, query, query_one


class Recorder:
    """A connection that is not sqlite3's: what a PostgreSQL wrapper would offer the domain."""

    def __init__(self) -> None:
        self.inner = sqlite3.connect(":memory:")
        self.statements: list[str] = []

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        self.statements.append(sql.strip())
        return self.inner.execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor:
        return self.inner.executemany(sql, seq_of_parameters)

    def __iter__(self) -> Iterator[str]:
        return iter(self.statements)


def test_query_returns_rows_as_dicts_through_any_connection() -> None:
    conn: Connection = Recorder()
    execute_script(conn, """
        CREATE TABLE t (a INTEGER, b TEXT);
        INSERT INTO t VALUES (1, 'x');
        INSERT INTO t VALUES (2, 'y');
    """)
    assert query(conn, "SELECT a, b FROM t ORDER BY a") == [{"a": 1, "b": "x"},
                                                             {"a": 2, "b": "y"}]
    assert query_one(conn, "SELECT b FROM t WHERE a=?", [2]) == {"b": "y"}
    assert query_one(conn, "SELECT b FROM t WHERE a=?", (3,)) is None


def test_execute_script_runs_each_statement_inside_the_callers_transaction() -> None:
    rec = Recorder()
    rec.inner.isolation_level = None
    rec.execute("BEGIN")
    execute_script(rec, "CREATE TABLE t (a); ;\n  ; CREATE TABLE u (b)")
    assert rec.statements == ["BEGIN", "CREATE TABLE t (a)", "CREATE TABLE u (b)"]
    rec.execute("ROLLBACK")  # the script did not commit: nothing is left
    assert rec.inner.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_now_is_utc_seconds_with_z() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now())


def test_sqlite3_connection_is_a_store_connection() -> None:
    conn: Connection = sqlite3.connect(":memory:")
    assert query(conn, "SELECT 1 AS one") == [{"one": 1}]
