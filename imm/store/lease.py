"""One leader among the immd sharing a PostgreSQL database: a lease row with an epoch.

Every immd serves reads and catalog writes; exactly one, the leader, runs the rollouts, the fleet
reconciler and the scheduled audit sweeps. The leader holds the row ``leases('leader')``: its
``holder``, an ``epoch`` that grows by one at every change of leader, and ``expires_at``, set from
the database's own clock (``clock_timestamp()``), so the hosts' clocks never have to agree.

- **Taking the lease**: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < now``: only an
  expired lease changes hands, and its epoch goes up by one in the same statement.
- **Renewing** every ``lease_s / 4``, for ``lease_s * 3/4``: ``UPDATE ... WHERE holder = me AND
  epoch = mine``. No row updated: another immd took over; step down at once. A leader that cannot
  reach the database keeps acting only until its own lease would have expired (measured on its
  monotonic clock from the start of its last successful renewal), then steps down. A follower
  asks every ``lease_s / 4``, so a dead leader's work is taken over at most ``lease_s`` after its
  last renewal (plus the time to resume the rollouts).
- **Fencing** (two locks, both needed): every write of the engine carries the epoch it acts
  under (``imm.store.FENCE``) and the backend checks it against the row inside the write's own
  transaction (``check_epoch``, ``FOR SHARE``: a takeover waits for that write to commit, and a
  write after a takeover sees the new epoch), so a deposed leader's journal entry is refused and
  nothing is acted on; and every provider or router call that changes something asks
  :meth:`Elector.guard` first, which refuses once the local lease deadline passed (a leader
  stopped with SIGSTOP wakes up past it). A refused call raises :class:`~imm.errors.NotLeader`.
- **Waking the leader**: a verb given on a follower is written to the journal there, then
  ``NOTIFY imm_rollouts, '<rollout id>'``; the leader ``LISTEN``\\ s on its own connection and
  kicks the rollout.

``lease_members`` keeps each immd's last heartbeat and role, for ``immctl status``.
SQLite has none of this: one immd on its own file is always the leader (epoch 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg

from ..errors import NotLeader
from .base import Connection, query, query_one

log = logging.getLogger("imm.cluster")

LEADER = "leader"
CHANNEL = "imm_rollouts"
ALL = "*"  # a NOTIFY payload asking the leader to look at every active rollout

DDL = (
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL, since TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lease_members (holder TEXT PRIMARY KEY, host TEXT NOT NULL, "
    "pid BIGINT NOT NULL, role TEXT NOT NULL, epoch BIGINT, seen_at TIMESTAMPTZ NOT NULL)",
)


def holder_id() -> str:
    """This process's name in the lease: host, pid and a random tag (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# -- the SQL (blocking, on a psycopg connection in autocommit mode) ------------------------------


def try_acquire(raw: psycopg.Connection[Any], holder: str, ttl_s: float) -> tuple[int, datetime] | None:
    """Take the lease if nobody holds it or it expired: (epoch, since), else None."""
    row = raw.execute(
        "INSERT INTO leases AS l (name, holder, epoch, expires_at, since) VALUES "
        "(%s, %s, 1, clock_timestamp() + make_interval(secs => %s), clock_timestamp()) "
        "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, "
        "expires_at = EXCLUDED.expires_at, since = EXCLUDED.since "
        "WHERE l.expires_at < clock_timestamp() RETURNING epoch, since",
        (LEADER, holder, ttl_s)).fetchone()
    return (int(row[0]), row[1]) if row else None


def renew(raw: psycopg.Connection[Any], holder: str, epoch: int, ttl_s: float) -> bool:
    """Extend our lease; False when another immd holds it now."""
    cur = raw.execute(
        "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %s) "
        "WHERE name = %s AND holder = %s AND epoch = %s", (ttl_s, LEADER, holder, epoch))
    return cur.rowcount == 1


def release(raw: psycopg.Connection[Any], holder: str, epoch: int) -> None:
    """Let the lease expire now (a clean stop: a follower takes over at its next look)."""
    raw.execute("UPDATE leases SET expires_at = clock_timestamp() "
                "WHERE name = %s AND holder = %s AND epoch = %s", (LEADER, holder, epoch))


def heartbeat(raw: psycopg.Connection[Any], holder: str, role: str, epoch: int | None) -> None:
    raw.execute(
        "INSERT INTO lease_members (holder, host, pid, role, epoch, seen_at) VALUES "
        "(%s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (holder) DO UPDATE SET "
        "role = EXCLUDED.role, epoch = EXCLUDED.epoch, seen_at = EXCLUDED.seen_at",
        (holder, socket.gethostname(), os.getpid(), role, epoch))


def check_epoch(raw: psycopg.Connection[Any], epoch: int) -> None:
    """Inside a write's transaction: refuse it unless ``epoch`` is the leader's now. ``FOR
    SHARE`` holds the row until the write commits, so no takeover slips in between."""
    row = raw.execute("SELECT holder, epoch FROM leases WHERE name = %s FOR SHARE",
                      (LEADER,)).fetchone()
    if row is None or int(row[1]) != epoch:
        now = f"{row[0]} leads at epoch {row[1]}" if row else "no immd holds the lease"
        raise NotLeader(f"write refused: it was made as the leader of epoch {epoch}, but {now}; "
                        "nothing was written, and this immd stops acting")


def view(conn: Connection, lease_s: float) -> dict[str, Any]:
    """The lease and the immd seen within the last two leases (a store read)."""
    lease = query_one(conn, "SELECT holder, epoch, since, expires_at, "
                            "expires_at > clock_timestamp() AS live FROM leases WHERE name = ?",
                      (LEADER,))
    members = query(conn, "SELECT holder, host, pid, role, epoch, seen_at FROM lease_members "
                          "WHERE seen_at > clock_timestamp() - make_interval(secs => ?) "
                          "ORDER BY holder", (2 * lease_s,))
    for m in members:
        m["seen_at"] = _iso(m["seen_at"])
    if lease:
        lease["since"], lease["expires_at"] = _iso(lease["since"]), _iso(lease["expires_at"])
    return {"lease": lease, "members": members}


def _iso(t: Any) -> str | None:
    return t.isoformat(timespec="milliseconds") if isinstance(t, datetime) else t


# -- the elector ---------------------------------------------------------------------------------


class Elector:
    """This immd's side of the election (see the module docstring).

    ``on_elected(epoch)`` runs when this immd becomes the leader (it starts the rollouts, the
    reconciler and the audit schedule), ``on_deposed(reason)`` when it stops being one (it stops
    them); ``on_wake(rid)`` when a follower asked the leader to look at a rollout (``"*"``: at
    every active one). The callbacks run on the event loop, one transition at a time.

    It is the context's ``cluster`` (:class:`imm.context.Cluster`): ``is_leader``, ``guard``,
    ``fence``, ``wake``.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], lease_s: float, *,
                 holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s {lease_s!r} must be > 0")
        self._connect = connect
        self.lease_s = float(lease_s)
        self.ttl_s = self.lease_s * 0.75  # written to the row
        self.period_s = self.lease_s / 4  # renew / ask this often
        self.holder = holder or holder_id()
        self.clock = clock
        self.role = "follower"
        self.epoch: int | None = None
        self.leader: str | None = None  # the holder another immd's lease names, as last seen
        self.since: datetime | None = None
        self.reason = "starting"
        self.on_elected: Callable[[int], Awaitable[None]] = _nothing_int
        self.on_deposed: Callable[[str], Awaitable[None]] = _nothing_str
        self.on_wake: Callable[[str], None] = lambda _rid: None
        self._deadline = 0.0  # local monotonic time after which this leader stops acting
        self._raw: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # one statement at a time on the lease connection
        self._task: asyncio.Task[None] | None = None
        self._transition: asyncio.Task[None] | None = None
        self._down: asyncio.Task[None] | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unreachable = False
        self._inflight: asyncio.Future[Any] | None = None

    # -- what the domain asks (imm.context.Cluster) ---------------------------------------------

    @property
    def fence(self) -> int | None:
        return self.epoch if self.role == "leader" else None

    def is_leader(self) -> bool:
        return self.role == "leader" and self.clock() < self._deadline

    def guard(self, call: str) -> None:
        """Refuse a provider or router change unless this immd holds a live lease."""
        if self.role != "leader":
            raise NotLeader(f"{call}: this immd ({self.holder}) is a follower; give it to the "
                            f"leader, {self.leader or 'named by immctl status'}")
        if self.clock() >= self._deadline:
            raise NotLeader(f"{call}: refused: this immd's lease (epoch {self.epoch}) lapsed "
                            "before it could renew it; it stops acting until it knows it still "
                            "leads")

    async def wake(self, rid: str) -> None:
        """Ask the leader to look at rollout ``rid`` (NOTIFY; errors are logged)."""
        try:
            await asyncio.to_thread(self._sql, lambda raw: raw.execute(
                "SELECT pg_notify(%s, %s)", (CHANNEL, rid)))
        except (psycopg.Error, OSError) as e:
            log.warning("could not notify the leader about rollout %s: %s; it finds it at its "
                        "next election or restart", rid, " ".join(str(e).split()))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take part: one look at the lease now (a lone immd leads at once), then the loop."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        await self._tick()
        self._task = asyncio.create_task(self._run(), name="imm-elector")
        self._listener = threading.Thread(target=self._listen, name="imm-listen", daemon=True)
        self._listener.start()

    async def stop(self) -> None:
        """Stop taking part: step down (if leading) and let the lease go, so another immd takes
        over at its next look; close the connections."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._down is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._down
        await self._step_down("immd is stopping")
        await self._settle()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 5)
            self._listener = None
        self._drop()

    def halt(self) -> None:
        """Stop at once, as a killed process would: no step down, no release (tests)."""
        self._stop.set()
        for t in (self._task, self._transition):
            if t is not None:
                t.cancel()
        self._task = None

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = self.clock()
            await asyncio.sleep(max(0.0, self.period_s - (self.clock() - started)))
            await self._tick()

    async def _tick(self) -> None:
        if self._down is not None and not self._down.done():
            return  # still stepping down: look again next time
        t0 = self.clock()
        try:
            if self._inflight is not None and not self._inflight.done():
                raise TimeoutError("the previous lease statement has not returned yet")
            leading = self.role == "leader"
            if leading:
                assert self.epoch is not None
                epoch = self.epoch
                work = asyncio.ensure_future(asyncio.to_thread(
                    self._sql, lambda raw: self._renew(raw, epoch)))
            else:
                work = asyncio.ensure_future(asyncio.to_thread(self._sql, self._ask))
            self._inflight = work
            work.add_done_callback(_retrieve)
            # leader: renewed (bool); follower: (epoch, since) when it took the lease, or None
            result = await asyncio.wait_for(asyncio.shield(work), self.period_s * 2)
        except (psycopg.Error, OSError, TimeoutError) as e:
            self._drop()
            if not self._unreachable:
                log.warning("the state database is unreachable for the lease: %s",
                            " ".join(str(e).split()) or type(e).__name__)
            self._unreachable = True
            if self.role == "leader" and self.clock() >= self._deadline:
                await self._step_down("cut off from PostgreSQL: the lease could not be renewed "
                                      "before it expired")
            return
        if self._unreachable:
            log.info("the state database answers again")
            self._unreachable = False
        if (self.role == "leader") != leading:
            return  # stepped down meanwhile (a refused write): the answer is for another role
        if self.role == "leader":
            if result:
                lapsed = self.clock() >= self._deadline
                self._deadline = t0 + self.ttl_s * 0.9
                if lapsed:  # a verb kicked meanwhile was not acted on: look at every rollout
                    self.on_wake(ALL)
            else:
                await self._step_down("another immd took the lease")
        elif result is not None:
            await self._settle()
            self.epoch, self.since = result
            self.role = "leader"
            self.reason = "elected"
            self._deadline = t0 + self.ttl_s * 0.9
            log.info("this immd (%s) is the leader, epoch %d", self.holder, self.epoch)
            epoch = self.epoch
            self._transition = asyncio.create_task(self._elected(epoch), name="imm-elected")

    def _renew(self, raw: psycopg.Connection[Any], epoch: int) -> bool:
        ok = renew(raw, self.holder, epoch, self.ttl_s)
        heartbeat(raw, self.holder, "leader" if ok else "follower", epoch if ok else None)
        return ok

    def _ask(self, raw: psycopg.Connection[Any]) -> tuple[int, datetime] | None:
        got = try_acquire(raw, self.holder, self.ttl_s)
        if got is None:
            row = raw.execute("SELECT holder, epoch FROM leases WHERE name = %s",
                              (LEADER,)).fetchone()
            self.leader = f"{row[0]} (epoch {row[1]})" if row else None
        heartbeat(raw, self.holder, "leader" if got else "follower",
                  got[0] if got else None)
        return got

    async def _elected(self, epoch: int) -> None:
        try:
            await self.on_elected(epoch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting as the leader (epoch %d) failed; stepping down", epoch)
            self.role = "follower"
            self.reason = "failed to start as the leader"

    async def _step_down(self, reason: str) -> None:
        """Stop acting: the rollouts, the reconciler and the schedule stop (their journal says
        where they were; the next leader resumes them); then let the lease go if it is still
        ours, so the next leader (perhaps this immd again, at a new epoch) need not wait for it
        to expire."""
        if self.role != "leader":
            return
        was = self.epoch
        self.role = "follower"
        self.reason = reason
        self._deadline = 0.0
        log.warning("this immd (%s) steps down as the leader of epoch %s: %s", self.holder, was,
                    reason)
        t, self._transition = self._transition, None
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        try:
            await self.on_deposed(reason)
        except Exception:
            log.exception("stepping down")
        if was is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(
                    self._sql, lambda raw: release(raw, self.holder, was)), self.period_s * 2)
            except (psycopg.Error, OSError, TimeoutError):
                self._drop()

    async def _settle(self) -> None:
        t = self._transition
        if t is not None and not t.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(t)

    def refused(self, reason: str) -> None:
        """A write or a call of this leader was refused (fencing): stop acting now. Safe to call
        from any task of the loop, more than once."""
        if self.role == "leader" and self._loop is not None:
            self._deadline = 0.0  # the guard refuses from here on
            if self._down is None or self._down.done():
                self._down = self._loop.create_task(self._step_down(reason), name="imm-step-down")

    # -- connections (worker threads) ----------------------------------------------------------

    def _sql(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        with self._lock:  # held only to open the connection; psycopg serialises its use
            raw = self._raw
            if raw is None or raw.closed:
                raw = self._raw = self._connect()
        return fn(raw)

    def _drop(self) -> None:
        """Forget the lease connection; close it in the background (a statement stuck on a
        dead network must not hold the elector up)."""
        with self._lock:
            raw, self._raw = self._raw, None
        if raw is not None:
            threading.Thread(target=_close_quietly, args=(raw,), name="imm-lease-close",
                             daemon=True).start()

    def _listen(self) -> None:
        """LISTEN on a connection of its own; hand each payload to the loop."""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                with self._connect() as raw:
                    raw.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.2
                    self._deliver(ALL)  # anything said while we were not listening
                    while not self._stop.is_set():
                        for n in raw.notifies(timeout=0.5):
                            self._deliver(n.payload)
            except (psycopg.Error, OSError) as e:
                if self._stop.is_set():
                    return
                log.debug("listen connection lost: %s", e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.period_s)

    def _deliver(self, payload: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._stop.is_set():
            return  # stopped (or halted): a notification still arriving wakes nothing
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._woken, payload)

    def _woken(self, payload: str) -> None:
        if self.is_leader() and not self._stop.is_set():
            self.on_wake(payload)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Take the outcome of a lease statement nobody waits for any more."""
    if not fut.cancelled():
        fut.exception()


def _close_quietly(raw: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        raw.close()


async def _nothing_int(_epoch: int) -> None:
    return None


async def _nothing_str(_reason: str) -> None:
    return None
