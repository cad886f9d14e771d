"""What the domain sees of the store: a small connection protocol and helpers over it.

Domain functions take a :class:`Connection` (whatever a backend hands them inside a
transaction) and write SQL with ``?`` placeholders. ``sqlite3.Connection`` satisfies the
protocol as it is; a PostgreSQL backend hands over a thin wrapper around a psycopg connection
(see docs/architecture.md). Nothing here imports a driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# A unique or foreign-key constraint refused a write. Backends raise this class (or a
# subclass): the SQLite driver's own; a PostgreSQL wrapper re-raises psycopg's as it.
IntegrityError = sqlite3.IntegrityError
# The database file itself cannot be read (a corrupted page): verifiers report it as a failed
# verification rather than crash. Backends raise this class (or a subclass) likewise.
DatabaseError = sqlite3.DatabaseError


class Cursor(Protocol):
    """The part of a DB-API cursor the domain uses."""

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection inside one transaction (the backend begins and ends it)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


# The leader epoch the running task acts under (fencing): the engine's rollout tasks, the
# reconciler and the scheduled audit sweeps set it when they start. A backend shared by several
# immd (PostgreSQL) refuses, inside the write's own transaction, a write under an epoch that is no
# longer the leader's; one immd alone (SQLite) has nothing to fence. ``None``: not an engine
# write (an operator's verb, a catalog change), allowed on every immd.
FENCE: ContextVar[int | None] = ContextVar("imm_fence", default=None)


def fence(epoch: int | None) -> None:
    """Mark the current task's writes as the leader's of ``epoch`` (``None``: unfenced)."""
    FENCE.set(epoch)


async def landed(work: asyncio.Future[T]) -> T:
    """Await a write running in a thread; if the caller is cancelled meanwhile, let the write
    land (commit or fail) before the cancellation goes on. A stopped task's last write is then
    never still in flight when the stop returns: whoever reads the journal next (a restarted
    engine, the next leader) sees it, and does not decide the same step a second time."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if not work.done():
            with contextlib.suppress(BaseException):
                await work
        raise


def dialect(conn: Connection) -> str:
    """``"sqlite"`` or ``"postgresql"``: for the rare query the two cannot share (a filter inside a
    JSON array). A backend's connection wrapper names its dialect; sqlite3's has none."""
    return str(getattr(conn, "dialect", "sqlite"))


class Backend(Protocol):
    """What the composition root holds: a database that runs domain functions off the loop."""

    def open(self) -> list[str]: ...

    async def write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...

    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...

    def write_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...

    def read_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...

    def add_batch_hook(self, fn: Callable[[Any], Any], min_interval_s: float = 0.0) -> None:
        """Run ``fn(conn)`` inside the transaction that commits a batch of writes (at most once
        per ``min_interval_s`` where the backend groups writes)."""

    def close(self) -> None: ...


def now() -> str:
    """The store's timestamp format: UTC, seconds, ISO 8601 with ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def query(conn: Connection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name."""
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def query_one(conn: Connection, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
    rows = query(conn, sql, params)
    return rows[0] if rows else None


def execute_script(conn: Connection, sql: str) -> None:
    """Run ``;``-separated DDL inside the caller's transaction (sqlite3's executescript would
    commit first)."""
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


@dataclass(frozen=True)
class Migration:
    name: str  # "NNNN-what": migrations of all schemas apply in name order
    apply: Callable[[Connection], None]


class Schema:
    """One package's tables, as numbered migrations. The package declares it; the composition
    root hands every schema to the database, which applies what is pending."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.migrations: list[Migration] = []

    def migration(self, name: str) -> Callable[[Callable[[Connection], None]],
                                               Callable[[Connection], None]]:
        def register(fn: Callable[[Connection], None]) -> Callable[[Connection], None]:
            if any(m.name == name for m in self.migrations):
                raise ValueError(f"schema {self.owner}: migration {name!r} is declared twice")
            self.migrations.append(Migration(name, fn))
            return fn
        return register

    def __repr__(self) -> str:
        return f"Schema({self.owner!r}, {[m.name for m in self.migrations]})"
