"""SQLite from asyncio: one writer thread, a few reader threads, numbered migrations.

Writes run in a single dedicated thread, each call in one ``BEGIN IMMEDIATE`` transaction that
commits when the function returns and rolls back when it raises, so a failed operation leaves the
catalog and ledger exactly as they were. Reads run on a small pool with their own connections
(WAL mode lets them proceed while a write is in flight). Nothing here touches the event loop.

The database applies the schemas it is given (the composition root passes every package's);
it imports no domain package.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import Connection, Migration, Schema

T = TypeVar("T")


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def ordered(schemas: Sequence[Schema]) -> list[Migration]:
    """Every schema's migrations in name order; a name declared by two schemas is an error."""
    seen: dict[str, str] = {}
    out: list[Migration] = []
    for schema in schemas:
        for m in schema.migrations:
            if m.name in seen:
                raise ValueError(f"migration {m.name!r} is declared by both schema "
                                 f"{seen[m.name]} and schema {schema.owner}")
            seen[m.name] = schema.owner
            out.append(m)
    return sorted(out, key=lambda m: m.name)


def migrate(conn: sqlite3.Connection, schemas: Sequence[Schema]) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied."""
    migrations = ordered(schemas)
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, "
                 "applied_at INTEGER)")
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for m in migrations:
        if m.name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            m.apply(conn)
            conn.execute(
                "INSERT INTO _migrations(name, applied_at) VALUES (?, strftime('%s','now'))",
                (m.name,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(m.name)
    return applied


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kw)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class Database:
    """The SQLite backend. ``write``/``read`` run ``fn(conn, ...)`` off the event loop, where
    ``conn`` is a :class:`~imm.store.base.Connection` inside one transaction."""

    def __init__(self, path: Path, schemas: Sequence[Schema], readers: int = 4) -> None:
        self.path = path
        self.schemas = tuple(schemas)
        ordered(self.schemas)  # two schemas claiming one migration name fail here, not later
        self._writer_conn: sqlite3.Connection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="imm-db-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="imm-db-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _wconn(self) -> sqlite3.Connection:
        if self._writer_conn is None:
            self._writer_conn = connect(self.path)
        return self._writer_conn

    def _rconn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def open(self) -> list[str]:
        """Create the file and apply pending migrations (blocking; call before serving)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self._writer.submit(lambda: migrate(self._wconn(), self.schemas)).result()

    async def write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args)`` in the writer thread inside one transaction."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._writer, lambda: transaction(self._wconn(), fn, *args, **kw)
        )

    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread (a consistent snapshot per call)."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            conn = self._rconn()
            conn.execute("BEGIN")
            try:
                return fn(conn, *args, **kw)
            finally:
                conn.execute("ROLLBACK")

        return await loop.run_in_executor(self._readers, run)

    def write_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return self._writer.submit(lambda: transaction(self._wconn(), fn, *args, **kw)).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close_writer() -> None:
            if self._writer_conn is not None:
                self._writer_conn.close()

        self._writer.submit(close_writer).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._reader_conns:
                try:
                    c.close()
                except sqlite3.ProgrammingError:
                    pass  # closed from another thread: sqlite3 is fine with that at exit


_: type[Connection] = sqlite3.Connection  # sqlite3's connection is a store Connection as it is
