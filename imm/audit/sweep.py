"""Audit sweeps: list every instance on every provider, judge each, record what changed.

Providers are listed concurrently (each ``list_instances`` call runs off the loop under the
provider's concurrency limit, and its iterator is drained in chunks in a worker thread, so a
paginated 100k listing never sits in memory or on the event loop). Each chunk is judged and
written in one transaction on the database's writer thread: observations opened, refreshed
or closed, findings opened or resolved, and the events of all that committed by one signed
ledger record (``events.record_events``). Between chunks the loop serves other requests.

After a provider's listing completes, its observations not seen in this sweep are closed and
their findings resolved (the instance is gone). A provider whose listing failed keeps its
observations open: not seen is not gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..catalog.canonical import canonical_json
from ..catalog.service import query, query_one
from ..catalog.verify import check_row
from ..errors import ConfigError, ImmError
from ..plugins.base import Instance
from . import events
from .verdicts import TAG_SERVICE, Facts, ImageFacts, judge

if TYPE_CHECKING:
    from ..catalog.keys import KeyRing
    from ..catalog.service import Catalog
    from ..daemon.core import Daemon

SCHEDULE_TICK_S = 5.0  # how often the scheduler looks at the (reloadable) interval
log = logging.getLogger("imm.audit")

CHUNK = 1000  # instances per transaction: ~tens of ms of writer time, then the loop breathes
ACTIVE_ROLLOUT_STATES = ("running", "paused", "rolling-back")
SCHEDULED_ACTOR = "immd (scheduled audit)"

Rehash = tuple[str, Mapping[str, Any]]
OK: list[tuple[str, dict[str, Any]]] = [("ok", {})]
OK_TEXT = json.dumps([{"verdict": "ok", "detail": {}}], sort_keys=True)


def _now() -> tuple[str, int]:
    ts = int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)), ts


@dataclass
class Observed:
    instance: Instance
    rehash: Rehash | None = None
    image_manifest: Mapping[str, Any] | None = None


@dataclass
class ChunkResult:
    instances: int = 0
    observations_opened: int = 0
    observations_closed: int = 0
    opened: list[dict[str, Any]] = field(default_factory=list)  # hook payloads
    resolved: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    more: bool = False


class CatalogFacts:
    """Catalog facts memoized for one sweep; used only on the writer thread.

    A fleet runs few distinct images, so each image's signed rows are re-verified once per
    sweep, not once per instance.
    """

    def __init__(self, keyring: KeyRing, services: Mapping[str, Mapping[str, Any]]) -> None:
        self.keyring = keyring
        self.services = services
        self._artifacts: dict[tuple[str, str, str], tuple[str | None, tuple[str, ...]]] = {}
        self._images: dict[str, ImageFacts] = {}
        self._rollouts: dict[str, bool] = {}
        self._active: dict[str, str | None] = {}
        self._channels: dict[str, str | None] = {}

    def artifact(self, conn: sqlite3.Connection, provider: str, region: str,
                 image_id: str) -> tuple[str | None, tuple[str, ...]]:
        key = (provider, region, image_id)
        if key not in self._artifacts:
            row = query_one(conn, "SELECT * FROM artifacts WHERE provider=? AND region=? AND "
                                  "image_id=?", key)
            if row is None:
                self._artifacts[key] = (None, ())
            else:
                problems = tuple(f"artifact {provider}/{region}/{image_id}: {p['problem']}"
                                 for p in check_row(conn, self.keyring, "artifacts", row))
                self._artifacts[key] = (str(row["digest"]), problems)
        return self._artifacts[key]

    def image(self, conn: sqlite3.Connection, digest: str) -> ImageFacts | None:
        if digest not in self._images:
            row = query_one(conn, "SELECT * FROM images WHERE digest=?", (digest,))
            if row is None:
                return None
            problems = tuple(f"image {digest[:19]}…: {p['problem']}"
                             for p in check_row(conn, self.keyring, "images", row))
            rev = query_one(conn, "SELECT root, reason, actor, at FROM revocations "
                                  "WHERE digest=?", (digest,))
            self._images[digest] = ImageFacts(
                digest=digest, name=str(row["name"]), version=str(row["version"]),
                content_digest=str(row["content_digest"]),
                content_kind=str(row["content_kind"]), revocation=rev, problems=problems)
        return self._images[digest]

    def rollout_known(self, conn: sqlite3.Connection, rollout: str) -> bool:
        if rollout not in self._rollouts:
            try:
                row = conn.execute("SELECT 1 FROM rollouts WHERE id=?", (rollout,)).fetchone()
            except sqlite3.OperationalError:  # no rollout layer in this database
                row = None
            self._rollouts[rollout] = row is not None
        return self._rollouts[rollout]

    def active_rollout(self, conn: sqlite3.Connection, service: str) -> str | None:
        if service not in self._active:
            marks = ",".join("?" * len(ACTIVE_ROLLOUT_STATES))
            try:
                row = conn.execute(
                    f"SELECT id FROM rollouts WHERE service=? AND state IN ({marks}) "  # noqa: S608
                    "LIMIT 1", (service, *ACTIVE_ROLLOUT_STATES)).fetchone()
            except sqlite3.OperationalError:
                row = None
            self._active[service] = None if row is None else str(row[0])
        return self._active[service]

    def channel_head(self, conn: sqlite3.Connection, name: str) -> str | None:
        if name not in self._channels:
            row = conn.execute("SELECT digest FROM channel_history WHERE name=? ORDER BY seq "
                               "DESC LIMIT 1", (name,)).fetchone()
            self._channels[name] = None if row is None else str(row[0])
        return self._channels[name]

    def facts(self, conn: sqlite3.Connection, provider: str, item: Observed, now: int) -> Facts:
        inst = item.instance
        digest, art_problems = self.artifact(conn, provider, inst.region, inst.image_id)
        image = self.image(conn, digest) if digest else None
        service_name = inst.tags.get(TAG_SERVICE)
        service = self.services.get(service_name) if service_name else None
        channel = service.get("channel") if service else None
        channel = channel if isinstance(channel, str) and channel else None
        rollout = inst.tags.get("imm:rollout")
        return Facts(
            now=now, image=image, service=service, channel=channel,
            channel_head=self.channel_head(conn, channel) if channel else None,
            active_rollout=(self.active_rollout(conn, service_name)
                            if channel and service_name else None),
            rollout_known=bool(rollout) and self.rollout_known(conn, str(rollout)),
            rehash=item.rehash, image_manifest=item.image_manifest,
            artifact_problems=art_problems)


@dataclass
class SweepRun:
    """What one sweep's chunk writers share."""

    id: int
    actor: str
    catalog: Catalog
    facts: CatalogFacts


# -- event bodies (the signed, exported facts) ------------------------------------------------

def _obs_event(event: str, provider: str, region: str, iid: str, image_id: str,
               digest: str | None, service: str | None, at: str, sweep: int,
               **extra: Any) -> dict[str, Any]:
    return {"type": "observation", "event": event, "provider": provider, "region": region,
            "instance_id": iid, "image_id": image_id, "digest": digest, "service": service,
            "at": at, "sweep": sweep, **extra}


def _finding_payload(row: Mapping[str, Any], status: str) -> dict[str, Any]:
    """The ``imm_audit_finding`` hook's view of a finding."""
    detail = row["detail"]
    return {"id": row["id"], "instance": row["instance_id"], "provider": row["provider"],
            "region": row["region"], "verdict": row["verdict"],
            "detail": json.loads(detail) if isinstance(detail, str) else detail,
            "status": status, "opened_at": row["opened_at"],
            "resolved_at": row.get("resolved_at")}


def _in(conn: sqlite3.Connection, sql: str, head: tuple[Any, ...],
        ids: list[str]) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(ids))
    return query(conn, sql.replace("(?*)", f"({marks})"), (*head, *ids))


class _Writer:
    """Accumulates one transaction's events and row changes, then writes them together."""

    def __init__(self, conn: sqlite3.Connection, run: SweepRun, provider: str) -> None:
        self.conn, self.run, self.provider = conn, run, provider
        self.at, self.ts = _now()
        self.index = events.next_index(conn)
        self.bodies: list[dict[str, Any]] = []
        self.ends: list[tuple[str, int, int]] = []
        self.obs_upserts: list[tuple[Any, ...]] = []
        self.obs_refresh: list[tuple[Any, ...]] = []
        self.obs_closes: list[tuple[Any, ...]] = []
        self.finding_inserts: list[tuple[Any, ...]] = []
        self.finding_resolves: list[tuple[Any, ...]] = []
        self.result = ChunkResult()
        row = conn.execute("SELECT coalesce(max(id), 0) FROM findings").fetchone()
        self.next_finding = int(row[0]) + 1

    def _event(self, body: dict[str, Any]) -> int:
        self.bodies.append(body)
        return len(self.bodies) - 1

    def close_observation(self, obs: Mapping[str, Any], reason: str) -> None:
        p = self.provider
        entry = self._event(_obs_event(
            "close", p, obs["region"], obs["instance_id"], obs["image_id"], obs["digest"],
            obs["service"], self.at, self.run.id, first_seen=obs["first_seen"],
            last_seen=obs["last_seen"], reason=reason))
        self.ends.append((self.at, obs["ledger_index"], obs["entry"]))
        self.obs_closes.append((self.at, self.index, entry, p, obs["region"],
                                obs["instance_id"], obs["image_id"]))
        self.result.observations_closed += 1

    def open_observation(self, inst: Instance, digest: str | None, service: str | None,
                         verdicts: str) -> None:
        entry = self._event(_obs_event(
            "open", self.provider, inst.region, inst.id, inst.image_id, digest, service,
            self.at, self.run.id, launched_at=int(inst.launched_at or 0)))
        self.obs_upserts.append((
            self.provider, inst.region, inst.id, inst.image_id, digest, service, inst.state,
            int(inst.launched_at or 0), self.at, self.at, self.run.id, verdicts, self.index,
            entry))
        self.result.observations_opened += 1

    def open_finding(self, inst: Instance, service: str | None, verdict: str,
                     detail: dict[str, Any]) -> None:
        fid = self.next_finding
        self.next_finding += 1
        entry = self._event({
            "type": "finding", "event": "open", "id": fid, "provider": self.provider,
            "region": inst.region, "instance_id": inst.id, "image_id": inst.image_id,
            "service": service, "verdict": verdict, "detail": detail, "at": self.at,
            "sweep": self.run.id})
        detail_text = canonical_json(detail).decode("utf-8")  # refuses floats: it is signed
        self.finding_inserts.append((fid, self.provider, inst.region, inst.id, inst.image_id,
                                     service, verdict, detail_text, self.at, self.index, entry))
        self.result.opened.append(_finding_payload(
            {"id": fid, "instance_id": inst.id, "provider": self.provider,
             "region": inst.region, "verdict": verdict, "detail": detail,
             "opened_at": self.at}, "open"))

    def resolve_finding(self, row: Mapping[str, Any], reason: str) -> None:
        entry = self._event({
            "type": "finding", "event": "resolve", "id": row["id"], "provider": self.provider,
            "region": row["region"], "instance_id": row["instance_id"],
            "image_id": row["image_id"], "service": row["service"], "verdict": row["verdict"],
            "opened_at": row["opened_at"], "at": self.at, "reason": reason,
            "sweep": self.run.id})
        self.ends.append((self.at, row["open_ledger_index"], row["open_entry"]))
        self.finding_resolves.append((self.at, reason, self.index, entry, row["id"]))
        self.result.resolved.append(_finding_payload({**row, "resolved_at": self.at},
                                                     "resolved"))

    def flush(self) -> ChunkResult:
        conn, r = self.conn, self.result
        if self.bodies:
            events.record_events(conn, self.run.catalog, self.run.id, self.run.actor,
                                 self.bodies, expect=self.index)
            r.records = 1
        conn.executemany(
            "UPDATE observations SET closed_at=?, close_ledger_index=?, close_entry=? "
            "WHERE provider=? AND region=? AND instance_id=? AND image_id=?", self.obs_closes)
        conn.executemany("""
            INSERT INTO observations (provider, region, instance_id, image_id, digest, service,
                state, launched_at, first_seen, last_seen, last_sweep, verdicts, ledger_index,
                entry)
            VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
            ON CONFLICT (provider, region, instance_id, image_id) DO UPDATE SET
                digest=excluded.digest, service=excluded.service, state=excluded.state,
                launched_at=excluded.launched_at, first_seen=excluded.first_seen,
                last_seen=excluded.last_seen, closed_at=NULL, last_sweep=excluded.last_sweep,
                verdicts=excluded.verdicts, ledger_index=excluded.ledger_index,
                entry=excluded.entry, close_ledger_index=NULL, close_entry=NULL""",
            self.obs_upserts)
        conn.executemany(
            "UPDATE observations SET last_seen=?, state=?, verdicts=?, last_sweep=?, digest=?, "
            "service=? WHERE provider=? AND region=? AND instance_id=? AND image_id=?",
            self.obs_refresh)
        conn.executemany(
            "INSERT INTO findings (id, provider, region, instance_id, image_id, service, "
            "verdict, detail, status, opened_at, open_ledger_index, open_entry) "
            "VALUES (?,?,?,?,?,?,?,?,'open',?,?,?)", self.finding_inserts)
        conn.executemany(
            "UPDATE findings SET status='resolved', resolved_at=?, resolution=?, "
            "resolve_ledger_index=?, resolve_entry=? WHERE id=?", self.finding_resolves)
        events.end_events(conn, self.ends)
        conn.execute(
            "UPDATE sweeps SET instances=instances+?, findings_opened=findings_opened+?, "
            "findings_resolved=findings_resolved+?, observations_opened=observations_opened+?,"
            " observations_closed=observations_closed+?, records=records+? WHERE id=?",
            (r.instances, len(r.opened), len(r.resolved), r.observations_opened,
             r.observations_closed, r.records, self.run.id))
        if self.bodies:
            self.run.catalog.checkpoint(conn)
        return r


_OBS_COLS = ("region, instance_id, image_id, digest, service, first_seen, last_seen, "
             "ledger_index, entry")
_FINDING_COLS = ("id, provider, region, instance_id, image_id, service, verdict, detail, "
                 "opened_at, open_ledger_index, open_entry")


def apply_chunk(conn: sqlite3.Connection, run: SweepRun, provider: str,
                items: list[Observed]) -> ChunkResult:
    """Judge one chunk of a provider's instances and record what changed (one transaction)."""
    w = _Writer(conn, run, provider)
    ids = [it.instance.id for it in items]
    open_obs = {(r["region"], r["instance_id"]): r for r in _in(
        conn, f"SELECT {_OBS_COLS} FROM observations WHERE closed_at IS NULL AND "  # noqa: S608
              "provider=? AND instance_id IN (?*)", (provider,), ids)}
    open_findings: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in _in(conn, f"SELECT {_FINDING_COLS} FROM findings WHERE status='open' AND "  # noqa: S608
                       "provider=? AND instance_id IN (?*)", (provider,), ids):
        open_findings.setdefault((r["region"], r["instance_id"]), {})[r["verdict"]] = r
    for item in items:
        inst = item.instance
        verdicts = judge(inst, run.facts.facts(conn, provider, item, w.ts))
        facts_image = run.facts.artifact(conn, provider, inst.region, inst.image_id)[0]
        service = inst.tags.get(TAG_SERVICE)
        verdict_text = (OK_TEXT if verdicts == OK else json.dumps(
            [{"verdict": v, "detail": d} for v, d in verdicts], sort_keys=True, ensure_ascii=False))
        key = (inst.region, inst.id)
        obs = open_obs.get(key)
        if obs is not None and obs["image_id"] != inst.image_id:
            w.close_observation(obs, "image changed")
            obs = None
        if obs is None:
            w.open_observation(inst, facts_image, service, verdict_text)
        else:
            w.obs_refresh.append((w.at, inst.state, verdict_text, run.id, facts_image, service,
                                  provider, inst.region, inst.id, inst.image_id))
        current = open_findings.get(key, {})
        names = {v for v, _ in verdicts}
        for verdict, detail in verdicts:
            if verdict != "ok" and verdict not in current:
                w.open_finding(inst, service, verdict, detail)
        for verdict, row in current.items():
            if verdict not in names:
                w.resolve_finding(row, "the cause is gone")
    w.result.instances = len(items)
    return w.flush()


def close_unseen(conn: sqlite3.Connection, run: SweepRun, provider: str,
                 limit: int = CHUNK) -> ChunkResult:
    """Close up to ``limit`` observations of ``provider`` this sweep did not see."""
    w = _Writer(conn, run, provider)
    rows = query(conn, f"SELECT {_OBS_COLS} FROM observations WHERE provider=? AND "  # noqa: S608
                       "closed_at IS NULL AND last_sweep < ? LIMIT ?", (provider, run.id, limit))
    if not rows:
        return w.result
    findings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in _in(conn, f"SELECT {_FINDING_COLS} FROM findings WHERE status='open' AND "  # noqa: S608
                       "provider=? AND instance_id IN (?*)", (provider,),
                 [r["instance_id"] for r in rows]):
        findings.setdefault((r["region"], r["instance_id"]), []).append(r)
    for obs in rows:
        w.close_observation(obs, "gone")
        for f in findings.pop((obs["region"], obs["instance_id"]), []):
            w.resolve_finding(f, "the instance is gone")
    w.result.more = len(rows) == limit
    return w.flush()


# -- sweeps table ------------------------------------------------------------------------------

def _new_sweep(conn: sqlite3.Connection, actor: str) -> int:
    at, _ = _now()
    cur = conn.execute("INSERT INTO sweeps (started_at, state, actor) VALUES (?, 'running', ?)",
                       (at, actor))
    assert cur.lastrowid is not None
    return int(cur.lastrowid)


def _finish_sweep(conn: sqlite3.Connection, sweep: int, state: str, error: str | None) -> None:
    at, _ = _now()
    conn.execute("UPDATE sweeps SET state=?, finished_at=?, error=? WHERE id=?",
                 (state, at, error, sweep))


def _abort_stale(conn: sqlite3.Connection) -> int:
    at, _ = _now()
    return conn.execute(
        "UPDATE sweeps SET state='aborted', finished_at=?, error='immd stopped during the sweep'"
        " WHERE state='running'", (at,)).rowcount


def sweep_row(conn: sqlite3.Connection, sweep: int | None = None) -> dict[str, Any] | None:
    if sweep is None:
        return query_one(conn, "SELECT * FROM sweeps ORDER BY id DESC LIMIT 1")
    return query_one(conn, "SELECT * FROM sweeps WHERE id=?", (sweep,))


def _take(it: Iterator[Instance], n: int) -> list[Instance]:
    return list(itertools.islice(it, n))


def _message(e: BaseException) -> str:
    return e.message if isinstance(e, ImmError) else f"{type(e).__name__}: {e}"


class Auditor:
    """The daemon's audit: one sweep at a time, on demand or on a schedule."""

    _of: weakref.WeakKeyDictionary[Any, Auditor] = weakref.WeakKeyDictionary()

    def __init__(self, daemon: Daemon, chunk: int = CHUNK) -> None:
        self.daemon = daemon
        self.chunk = chunk
        self.task: asyncio.Task[None] | None = None
        self.sweep_id: int | None = None
        self.progress: dict[str, Any] = {}

    @classmethod
    def of(cls, daemon: Daemon) -> Auditor:
        """The daemon's one auditor."""
        if daemon not in cls._of:
            cls._of[daemon] = cls(daemon)
        return cls._of[daemon]

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def interval(self) -> float:
        """``[audit] interval_s``: seconds between scheduled sweeps; 0 or absent: none."""
        value = self.daemon.settings.audit.get("interval_s", 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{self.daemon.settings.source}: [audit] interval_s {value!r} must "
                              "be a number of seconds ≥ 0 (0 turns scheduled sweeps off)")
        return float(value)

    async def recover(self) -> None:
        """At start: sweeps a previous immd left running can never finish; say so."""
        n = await self.daemon.db.write(_abort_stale)
        if n:
            log.warning("marked %d audit sweep(s) left running by a previous immd as aborted", n)

    async def start(self, actor: str) -> tuple[int, bool]:
        """Start a sweep unless one runs; returns (sweep id, whether this call started it)."""
        if self.running:
            assert self.sweep_id is not None
            return self.sweep_id, False
        sweep = await self.daemon.db.write(_new_sweep, actor)
        if self.running:  # another caller started one while we wrote: keep theirs
            await self.daemon.db.write(_finish_sweep, sweep, "aborted", "superseded")
            assert self.sweep_id is not None
            return self.sweep_id, False
        self.sweep_id = sweep
        self.progress = {"instances": 0, "providers": {
            name: {"instances": 0, "state": "listing", "error": None}
            for name in self.daemon.providers}}
        self.task = asyncio.create_task(self._run(sweep, actor), name=f"audit-sweep-{sweep}")
        return sweep, True

    async def wait(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    async def run_sweep(self, actor: str) -> dict[str, Any]:
        """Start (or join) a sweep and wait for it; returns its final row."""
        sweep, _ = await self.start(actor)
        await self.wait()
        row = await self.sweep(sweep)
        assert row is not None
        return row

    async def sweep(self, sweep: int | None = None) -> dict[str, Any] | None:
        """A sweep's row (the latest by default), with live progress while it runs."""
        row = await self.daemon.db.read(sweep_row, sweep)
        if row is not None and row["state"] == "running" and row["id"] == self.sweep_id:
            row["progress"] = json.loads(json.dumps(self.progress))
        return row

    async def stop(self) -> None:
        if self.running:
            assert self.task is not None
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def schedule(self) -> None:
        """Sweep every ``interval_s`` seconds until cancelled. The interval is read again on
        every tick, so a SIGHUP reload that changes it (or turns sweeps on or off) takes hold."""
        interval = self.interval()  # a bad value stops start-up with a message
        announced: float | None = None
        last = time.monotonic()
        while True:
            try:
                interval = self.interval()
            except ConfigError as e:
                log.error("%s; scheduled sweeps paused", e.message)
                interval = 0.0
            if interval != announced:
                if interval > 0:
                    log.info("audit sweeps every %g s", interval)
                else:
                    log.info("scheduled audit sweeps are off")
                announced = interval
            if interval > 0 and time.monotonic() - last >= interval:
                last = time.monotonic()
                try:
                    await self.run_sweep(SCHEDULED_ACTOR)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the schedule goes on
                    log.exception("scheduled audit sweep failed")
            await asyncio.sleep(min(interval, SCHEDULE_TICK_S) if interval > 0
                                else SCHEDULE_TICK_S)

    async def _run(self, sweep: int, actor: str) -> None:
        dm = self.daemon
        run = SweepRun(sweep, actor, dm.catalog,
                       CatalogFacts(dm.keyring, {k: dict(v) for k, v in dm.settings.services.items()}))
        errors: dict[str, str] = {}
        started = time.monotonic()
        try:
            await asyncio.gather(*(self._provider(run, name, errors) for name in dm.providers))
        except asyncio.CancelledError:
            await asyncio.shield(dm.db.write(_finish_sweep, sweep, "aborted",
                                             "immd stopped during the sweep"))
            raise
        except Exception as e:  # noqa: BLE001 - a failed sweep is recorded, not raised
            log.exception("audit sweep %d failed", sweep)
            await dm.db.write(_finish_sweep, sweep, "failed", _message(e))
            return
        if errors and len(errors) == len(dm.providers):
            state = "failed"
        else:
            state = "partial" if errors else "completed"
        text = "; ".join(f"{n}: {m}" for n, m in sorted(errors.items())) or None
        await dm.db.write(_finish_sweep, sweep, state, text)
        log.info("audit sweep %d %s: %d instance(s) in %.1f s", sweep, state,
                 self.progress.get("instances", 0), time.monotonic() - started)

    async def _provider(self, run: SweepRun, name: str, errors: dict[str, str]) -> None:
        dm = self.daemon
        mine = self.progress["providers"].setdefault(
            name, {"instances": 0, "state": "listing", "error": None})
        provider = dm.providers[name]
        rehash = "rehash" in provider.capabilities() and hasattr(provider, "rehash")
        manifests: dict[str, Mapping[str, Any] | None] = {}
        try:
            it = iter(await dm.provider_call(name, "list_instances"))
            while True:
                listed = await asyncio.to_thread(_take, it, self.chunk)
                if not listed:
                    break
                chunk = [i for i in listed if i.state != "terminated"]
                if not chunk:
                    continue
                items = await self._observe(name, chunk, rehash, manifests)
                result = await dm.db.write(apply_chunk, run, name, items)
                mine["instances"] += len(chunk)
                self.progress["instances"] += len(chunk)
                await self._notify(result)
            mine["state"] = "closing"
            while True:
                result = await dm.db.write(close_unseen, run, name, self.chunk)
                await self._notify(result)
                if not result.more:
                    break
            mine["state"] = "done"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one provider failing does not stop the others
            mine.update(state="failed", error=_message(e))
            errors[name] = _message(e)
            log.warning("audit sweep %d: provider %s failed: %s", run.id, name, _message(e))

    async def _observe(self, name: str, chunk: list[Instance], rehash: bool,
                       manifests: dict[str, Mapping[str, Any] | None]) -> list[Observed]:
        """Re-hash each instance's content where the provider can (tampering shows there)."""
        if not rehash:
            return [Observed(i) for i in chunk]
        dm = self.daemon
        provider = dm.providers[name]

        async def manifest(image_id: str) -> None:
            try:
                manifests[image_id] = await dm.provider_call(name, "image_manifest", image_id)
            except Exception:  # noqa: BLE001 - without it the verdict just names no files
                manifests[image_id] = None

        if hasattr(provider, "image_manifest"):
            await asyncio.gather(*(manifest(i) for i in {i.image_id for i in chunk}
                                   if i not in manifests))

        async def one(inst: Instance) -> Observed:
            try:
                digest, tree = await dm.provider_call(name, "rehash", inst.id)
            except Exception as e:  # noqa: BLE001 - gone meanwhile, or unreadable: no verdict
                log.debug("rehash of %s/%s failed: %s", name, inst.id, _message(e))
                return Observed(inst)
            return Observed(inst, (digest, tree), manifests.get(inst.image_id))

        return list(await asyncio.gather(*(one(i) for i in chunk)))

    async def _notify(self, result: ChunkResult) -> None:
        for finding in (*result.opened, *result.resolved):
            try:
                await self.daemon.plugins.call_all("imm_audit_finding", finding=finding)
            except Exception:  # noqa: BLE001 - a broken observer must not stop the audit
                log.exception("an imm_audit_finding hook failed on finding %s", finding["id"])

