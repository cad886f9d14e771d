"""SQLite from asyncio: one writer thread, a few reader threads, numbered migrations.

Writes run in a single dedicated thread with group commit: the writer takes every call queued
while it was busy (up to ``max_batch``) and runs them in one ``BEGIN IMMEDIATE`` transaction, each
call inside its own savepoint. A call that raises is rolled back to its savepoint alone, so it
leaves the catalog and ledger exactly as they were and the other calls of the batch go on; the
batch then commits once (one WAL append, one fsync when the database syncs). Every caller is
answered only after the COMMIT returned: nothing is acknowledged before it is in the database.
If the COMMIT itself fails, every call of the batch fails. Batch hooks (e.g. signing one ledger
checkpoint) run inside the batch's transaction after its calls, at most once per interval; a
hook that is due while no call comes runs in a transaction of its own when its time comes.

Durability: ``synchronous=NORMAL`` in WAL mode, so a committed batch survives the process being
killed (kill -9) at any point; surviving power loss as well needs ``synchronous="FULL"``, whose
fsync per commit group commit makes affordable (one per batch, not per call).

Reads run on a small pool with their own connections (WAL mode lets them proceed while a write
is in flight). Nothing here touches the event loop.

The database applies the schemas it is given (the composition root passes every package's);
it imports no domain package.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NoSpace, StoreCorrupted
from .base import Connection, Migration, Schema, landed

T = TypeVar("T")
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 11, 13, 26


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
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk during COMMIT does)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def restore_hint(path: Path) -> str:
    return (f"stop immd, move {path} (with its -wal and -shm files) aside, and put the latest "
            f"backup in its place (sqlite3 BACKUP '.backup {path}' makes one from a copy "
            "taken with '.backup'); then start immd and run 'immctl ledger verify'")


def store_error(e: sqlite3.DatabaseError, path: Path) -> Exception:
    """An imm error for what SQLite says about the file itself (full disk, corruption)."""
    code = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF
    if code == SQLITE_FULL:
        return NoSpace(f"no space left under {path.parent}; nothing was written. Free space "
                       "there and try again")
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreCorrupted(f"the database {path} is corrupted ({e}): {restore_hint(path)}",
                              detail={"file": str(path)})
    return e


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's quick_check (every page and index entry is well formed, in O(N)); refuse a
    corrupted file with a message naming it and how to restore it."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as e:
        rows = [str(e)]
    if rows != ["ok"]:
        raise StoreCorrupted(
            f"the database {path} is corrupted (SQLite quick_check: {'; '.join(rows)[:400]}); "
            f"immd will not start on it: {restore_hint(path)}", detail={"file": str(path)})


class _Job:
    """One call for the writer: answered through ``fut`` on ``loop`` (async callers, answered
    together with one wake-up of their loop per batch) or through ``sync`` (blocking callers)."""

    __slots__ = ("fn", "args", "kw", "raw", "loop", "fut", "sync")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any], *,
                 raw: bool = False, loop: asyncio.AbstractEventLoop | None = None,
                 fut: asyncio.Future[Any] | None = None, sync: Future[Any] | None = None) -> None:
        self.fn, self.args, self.kw, self.raw = fn, args, kw, raw
        self.loop, self.fut, self.sync = loop, fut, sync


def _answer(answers: list[tuple[_Job, bool, Any]]) -> None:
    """Answer the callers of a batch: blocking ones at once, each event loop with one wake-up."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for job, ok, value in answers:
        if job.sync is not None:
            if ok:
                job.sync.set_result(value)
            else:
                job.sync.set_exception(value)
        elif job.loop is not None and job.fut is not None:
            by_loop.setdefault(job.loop, []).append((job.fut, ok, value))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, pairs)
        except RuntimeError:
            pass  # that loop is closed: its callers are gone


_STOP = object()


class _Hook:
    def __init__(self, fn: Callable[[sqlite3.Connection], Any], interval_s: float) -> None:
        self.fn = fn
        self.interval_s = interval_s
        self.pending = False  # calls committed since the hook last ran
        self.last = float("-inf")


def _deliver(pairs: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: answer every caller of one batch (one wake-up per batch)."""
    for fut, ok, value in pairs:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Database:
    """The SQLite backend. ``write``/``read`` run ``fn(conn, ...)`` off the event loop, where
    ``conn`` is a :class:`~imm.store.base.Connection` inside one transaction (for a write: inside
    its own savepoint of a group-committed transaction, see the module's docstring)."""

    def __init__(self, path: Path, schemas: Sequence[Schema], readers: int = 4, *,
                 max_batch: int = 512) -> None:
        self.path = path
        self.schemas = tuple(schemas)
        ordered(self.schemas)  # two schemas claiming one migration name fail here, not later
        self.max_batch = max_batch
        self._writer_conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hooks: list[_Hook] = []
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="imm-db-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.batches = 0  # transactions committed by the writer (for metrics and tests)
        self.calls = 0  # write calls that ran in them

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

    # -- the writer thread ----------------------------------------------------------------------

    def add_batch_hook(self, fn: Callable[[sqlite3.Connection], Any],
                       min_interval_s: float = 0.0) -> None:
        """Run ``fn(conn)`` inside the writer's transaction after a batch that committed calls,
        at most once per ``min_interval_s`` (0: after every such batch). When it is not yet due,
        it runs later in a transaction of its own, so it always follows the last batch."""
        if min_interval_s < 0:
            raise ValueError(f"batch hook interval {min_interval_s!r} must be >= 0 seconds")
        self._hooks.append(_Hook(fn, min_interval_s))

    def _submit(self, job: _Job) -> None:
        if self._closed:
            raise RuntimeError("the database is closed")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="imm-db-writer",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(job)

    def _due_in(self) -> float | None:
        waits = [h.last + h.interval_s - time.monotonic() for h in self._hooks if h.pending]
        return max(0.0, min(waits)) if waits else None

    def _run(self) -> None:
        while True:
            timeout = self._due_in()
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = None  # a hook is due and no call came: run it alone
            if first is _STOP:
                break
            batch: list[_Job] = [] if first is None else [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if stop:
                break
        if any(h.pending for h in self._hooks):
            self._commit([], hooks=True, force=True)  # hooks owed to what committed last
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _run_batch(self, batch: list[_Job]) -> None:
        txn: list[_Job] = []
        for job in batch:
            if job.raw:  # runs outside a transaction: commit what came before it first
                self._commit(txn)
                txn = []
                try:
                    _answer([(job, True, job.fn(self._wconn(), *job.args, **job.kw))])
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    _answer([(job, False, e)])
            else:
                txn.append(job)
        self._commit(txn, hooks=True)

    def _commit(self, jobs: list[_Job], hooks: bool = False, force: bool = False) -> None:
        now = time.monotonic()
        due = [h for h in self._hooks
               if hooks and (h.pending or jobs) and (force or now - h.last >= h.interval_s)]
        if not jobs and not due:
            return
        conn = self._wconn()
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                conn.execute("SAVEPOINT imm_call")
                try:
                    value = job.fn(conn, *job.args, **job.kw)
                except BaseException as e:  # noqa: BLE001 - this call alone is rolled back
                    conn.execute("ROLLBACK TO imm_call")
                    conn.execute("RELEASE imm_call")
                    results.append((False, self._map(e)))
                else:
                    conn.execute("RELEASE imm_call")
                    results.append((True, value))
            wrote = any(ok for ok, _ in results)
            ran = [h for h in due if wrote or h.pending]
            for h in ran:
                h.fn(conn)
            conn.execute("COMMIT")
        except BaseException as e:  # noqa: BLE001 - the batch did not commit: nobody is answered ok
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            _answer([(job, False, self._map(e)) for job in jobs])
            return
        self.batches += 1
        self.calls += len(jobs)
        for h in self._hooks:
            if h in ran:
                h.pending, h.last = False, now
            elif wrote:
                h.pending = True
        _answer([(job, ok, value) for job, (ok, value) in zip(jobs, results, strict=True)])

    # -- the public interface -------------------------------------------------------------------

    def open(self) -> list[str]:
        """Create the file and apply pending migrations (blocking; call before serving)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()

        def start(conn: sqlite3.Connection) -> list[str]:
            if existed:
                quick_check(conn, self.path)
            return migrate(conn, self.schemas)

        return self._call_sync(lambda conn: self._mapped(start, conn), raw=True)

    def _mapped(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return fn(*args, **kw)
        except sqlite3.DatabaseError as e:
            mapped = store_error(e, self.path)
            if mapped is e:
                raise
            raise mapped from None

    def _map(self, e: BaseException) -> BaseException:
        """What a caller is told of an error SQLite raised about the file (full, corrupted)."""
        if isinstance(e, sqlite3.DatabaseError):
            return store_error(e, self.path)
        return e

    async def write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args)`` in the writer thread, in its own savepoint of a group
        commit; returns once the transaction holding it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submit(_Job(fn, args, kw, loop=loop, fut=fut))
        return await landed(fut)

    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread (a consistent snapshot per call)."""
        loop = asyncio.get_running_loop()

        return await loop.run_in_executor(
            self._readers, lambda: self._mapped(self._read, fn, *args, **kw))

    def _read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        conn = self._rconn()
        conn.execute("BEGIN")
        try:
            return fn(conn, *args, **kw)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def read_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``read`` for start-up code that runs before the event loop serves."""
        return self._readers.submit(lambda: self._mapped(self._read, fn, *args, **kw)).result()

    def _call_sync(self, fn: Callable[..., T], *args: Any, raw: bool = False, **kw: Any) -> T:
        fut: Future[T] = Future()
        self._submit(_Job(fn, args, kw, raw=raw, sync=fut))
        return fut.result()

    async def backup(self, dest: Path) -> int:
        """A consistent copy of the whole database at ``dest`` (SQLite's online backup API).

        Runs on a reader thread with its own connection, in one step: in WAL mode that holds one
        read snapshot for the whole copy, so the writer goes on and the copy is the state as of
        one committed transaction. Returns the size in bytes.
        """
        def run() -> int:
            src = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            dst = sqlite3.connect(str(dest))
            try:
                src.backup(dst, pages=-1)
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                dst.close()
                src.close()
            return dest.stat().st_size

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, run)

    def write_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``write`` for blocking callers (start-up, tests)."""
        return self._call_sync(fn, *args, **kw)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)  # the writer finishes what is queued, then stops
            self._thread.join()
        elif self._writer_conn is not None:
            self._writer_conn.close()
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._reader_conns:
                try:
                    c.close()
                except sqlite3.ProgrammingError:
                    pass  # closed from another thread: sqlite3 is fine with that at exit


_: type[Connection] = sqlite3.Connection  # sqlite3's connection is a store Connection as it is
