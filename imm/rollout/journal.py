"""The rollout store: the ``rollouts`` rows and their journal, each entry a signed ledger record.

Every decision is written here *before* it is acted on (see engine.py). The SQL of the rollout
tables lives in this module only; the functions taking a connection run inside the store's
transactions, the :class:`Journal` methods are their async front.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from ..context import Context
from ..errors import Conflict, NotFound
from ..store import Connection, now, query, query_one
from .states import ACTIVE, COMPLETED, PROMOTE, RUNNING, TERMINAL

_ACTIVE_MARKS = ",".join("?" * len(ACTIVE))


def rollout_exists(conn: Connection, rid: str) -> bool:
    return conn.execute("SELECT 1 FROM rollouts WHERE id=?", (rid,)).fetchone() is not None


def active_rollout(conn: Connection, service: str) -> dict[str, Any] | None:
    """The service's rollout under way (``id``, ``state``), if any: there is at most one."""
    return query_one(conn, f"SELECT id, state FROM rollouts WHERE service=? "  # noqa: S608
                           f"AND state IN ({_ACTIVE_MARKS})", (service, *ACTIVE))


def load(conn: Connection, rid: str) -> dict[str, Any]:
    row = query_one(conn, "SELECT * FROM rollouts WHERE id=?", (rid,))
    if row is None:
        raise NotFound(f"no rollout {rid!r}; 'immctl rollout list' shows them")
    row.pop("rowid", None)  # PostgreSQL's stand-in for SQLite's rowid (imm/store/postgres.py)
    row["params"] = json.loads(row["params"])
    row["journal"] = query(conn, "SELECT seq, step, action, detail, actor, at, ledger_index "
                                 "FROM rollout_journal WHERE rollout=? ORDER BY seq", (rid,))
    for j in row["journal"]:
        j["detail"] = json.loads(j["detail"])
    return row


class Journal:
    """Reads and writes the rollout tables through the context's store and ledger."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # rollout id -> futures of those awaiting its next journal entry (see ``changed``)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def append(self, conn: Connection, rid: str, step: str, action: str,
               detail: Mapping[str, Any], actor: str, state: str | None = None,
               error: str | None = None) -> dict[str, Any]:
        """Append one entry (and its signed ledger record) inside the caller's transaction."""
        r = query_one(conn, "SELECT service FROM rollouts WHERE id=?", (rid,))
        if r is None:
            raise NotFound(f"no rollout {rid!r}; 'immctl rollout list' shows them")
        seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM rollout_journal "
                           "WHERE rollout=?", (rid,)).fetchone()[0]
        body = {"type": "rollout", "rollout": rid, "service": r["service"], "seq": seq,
                "step": step, "action": action, "detail": dict(detail), "actor": actor,
                "time": now()}
        _env, idx, text = self.ctx.catalog.append(conn, "rollout", body)
        conn.execute("INSERT INTO rollout_journal VALUES (?,?,?,?,?,?,?,?,?)",
                     (rid, seq, step, action, json.dumps(body["detail"], sort_keys=True), actor,
                      body["time"], idx, text))
        sets, args = ["updated_at=?", "step=?"], [body["time"], step]
        if state:
            sets.append("state=?")
            args.append(state)
            if state in TERMINAL:
                sets.append("finished_at=?")
                args.append(body["time"])
        if error is not None:
            sets.append("error=?")
            args.append(error)
        conn.execute(f"UPDATE rollouts SET {', '.join(sets)} WHERE id=?", (*args, rid))  # noqa: S608
        self.ctx.catalog.checkpoint(conn)
        return body

    async def record(self, rid: str, step: str, action: str, detail: Mapping[str, Any],
                     actor: str = "immd", state: str | None = None,
                     error: str | None = None) -> None:
        """Append one entry in its own transaction, then tell the observers."""
        body = await self.ctx.store.write(self.append, rid, step, action, detail, actor, state,
                                          error)
        await self.notify(body)

    async def notify(self, body: dict[str, Any]) -> None:
        """Wake those awaiting the rollout's next entry, then tell the ``imm_rollout_event``
        observers (a failing one is logged, never raised)."""
        rid = body.get("rollout") or body.get("id")
        for key in ([rid] if isinstance(rid, str) else list(self._waiters)):
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)
        await self.ctx.plugins.rollout_event(body)

    async def changed(self, rid: str, timeout_s: float) -> bool:
        """Wait until the rollout's journal gets an entry (True) or ``timeout_s`` passes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rid, set()).add(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiters.get(rid)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    self._waiters.pop(rid, None)

    async def load(self, rid: str) -> dict[str, Any]:
        return await self.ctx.store.read(load, rid)

    async def create(self, rid: str, service: str, strategy: str, digest: str,
                     previous: str | None, params: Mapping[str, Any], actor: str,
                     start: Mapping[str, Any]) -> None:
        """Insert a running rollout and its ``start`` entry; Conflict if one is under way."""
        def create(conn: Connection) -> dict[str, Any]:
            active = active_rollout(conn, service)
            if active:
                raise Conflict(f"rollout {active['id']} of service {service} is "
                               f"{active['state']}; one rollout per service at a time: wait for "
                               "it, or abort it", detail={"active": active["id"]})
            t = now()
            conn.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (rid, service, strategy, digest, previous, RUNNING, None,
                          json.dumps(dict(params), sort_keys=True), actor, t, t, None, None))
            return self.append(conn, rid, "start", "start", start, actor)

        await self.notify(await self.ctx.store.write(create))

    async def promote(self, rid: str, actor: str) -> None:
        """Mark the rollout promoted: its remaining waits and partial shifts are skipped."""
        def promote(conn: Connection) -> dict[str, Any]:
            p = json.loads(conn.execute("SELECT params FROM rollouts WHERE id=?",
                                        (rid,)).fetchone()[0])
            p["promote"] = True
            conn.execute("UPDATE rollouts SET params=? WHERE id=?", (json.dumps(p), rid))
            return self.append(conn, rid, PROMOTE, PROMOTE, {}, actor, state=RUNNING)

        await self.notify(await self.ctx.store.write(promote))

    async def active(self) -> list[dict[str, Any]]:
        """Every rollout under way (``id``, ``service``), to resume after a restart."""
        return await self.ctx.store.read(lambda c: query(
            c, f"SELECT id, service FROM rollouts WHERE state IN ({_ACTIVE_MARKS})",  # noqa: S608
            ACTIVE))

    async def last_completed(self, service: str) -> dict[str, Any] | None:
        return await self.ctx.store.read(lambda c: query_one(
            c, "SELECT id, previous_digest FROM rollouts WHERE service=? AND state=? "
               "ORDER BY created_at DESC, rowid DESC LIMIT 1", (service, COMPLETED)))

    async def list(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        sql = ("SELECT id, service, strategy, state, digest, previous_digest, step, actor, "  # noqa: S608
               "created_at, finished_at, error FROM rollouts "
               + ("WHERE service=? " if service else "") + "ORDER BY created_at DESC, rowid DESC "
               "LIMIT ?")
        args = (service, limit) if service else (limit,)
        return await self.ctx.store.read(lambda c: query(c, sql, args))

    async def artifacts(self, digest: str) -> dict[str, str]:
        """The image ids of ``digest`` by ``provider/region``."""
        return await self.ctx.store.read(lambda c: {
            f"{a['provider']}/{a['region']}": a["image_id"] for a in query(
                c, "SELECT provider, region, image_id FROM artifacts WHERE digest=?", (digest,))})
