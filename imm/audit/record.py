"""A sweep's writes: each chunk of instances judged and recorded in one transaction.

``apply_chunk`` opens, closes or (when its state, verdicts, image or service changed) rewrites
observations, opens or resolves findings, and commits
the events of all that by one signed ledger record (``events.record_events``); an observation
seen unchanged is not written at all (its ``last_seen`` is when it last changed). ``close_unseen``
closes what a completed listing did not see. Both run on the database's writer thread. The
``sweeps`` table functions keep each sweep's row.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog.canonical import canonical_json
from ..catalog.service import Catalog
from ..plugins.base import Instance
from ..store import Connection, query, query_one
from . import events
from .facts import CatalogFacts, Judged, Observed

CHUNK = 1000  # instances per transaction: ~tens of ms of writer time, then the loop breathes


def _now() -> tuple[str, int]:
    ts = int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)), ts


@dataclass
class ChunkResult:
    instances: int = 0
    observations_opened: int = 0
    observations_closed: int = 0
    opened: list[dict[str, Any]] = field(default_factory=list)  # hook payloads
    resolved: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    more: bool = False


@dataclass
class SweepRun:
    """What one sweep's chunk writers share."""

    id: int
    actor: str
    catalog: Catalog
    facts: CatalogFacts
    # the instance ids each provider listed in this sweep, by region: what close_unseen keeps
    # open. Unchanged observations are not rewritten, so the table alone cannot tell "seen,
    # unchanged" from "not seen". (Sets of strings: nothing the garbage collector must scan.)
    seen: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    # the open findings of each provider as they were when its first chunk came
    findings_at_start: dict[str, dict[tuple[str, str], frozenset[str]]] = field(
        default_factory=dict)
    # where close_unseen's scan of a provider's open observations has got to
    close_after: dict[str, tuple[str, str, str]] = field(default_factory=dict)


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


def _in(conn: Connection, sql: str, head: tuple[Any, ...],
        ids: list[str]) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(ids))
    return query(conn, sql.replace("(?*)", f"({marks})"), (*head, *ids))


_CLOSE_SQL = ("UPDATE observations SET closed_at=?, close_ledger_index=?, close_entry=? "
              "WHERE provider=? AND region=? AND instance_id=? AND image_id=?")
_UPSERT_SQL = """
    INSERT INTO observations (provider, region, instance_id, image_id, digest, service,
        state, launched_at, first_seen, last_seen, last_sweep, verdicts, ledger_index,
        entry)
    VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT (provider, region, instance_id, image_id) DO UPDATE SET
        digest=excluded.digest, service=excluded.service, state=excluded.state,
        launched_at=excluded.launched_at, first_seen=excluded.first_seen,
        last_seen=excluded.last_seen, closed_at=NULL, last_sweep=excluded.last_sweep,
        verdicts=excluded.verdicts, ledger_index=excluded.ledger_index,
        entry=excluded.entry, close_ledger_index=NULL, close_entry=NULL"""
_REFRESH_SQL = ("UPDATE observations SET last_seen=?, state=?, verdicts=?, last_sweep=?, "
                "digest=?, service=? WHERE provider=? AND region=? AND instance_id=? AND "
                "image_id=?")
_FINDING_SQL = ("INSERT INTO findings (id, provider, region, instance_id, image_id, service, "
                "verdict, detail, status, opened_at, open_ledger_index, open_entry) "
                "VALUES (?,?,?,?,?,?,?,?,'open',?,?,?)")
_RESOLVE_SQL = ("UPDATE findings SET status='resolved', resolved_at=?, resolution=?, "
                "resolve_ledger_index=?, resolve_entry=? WHERE id=?")


class _Writer:
    """Accumulates one transaction's events and row changes, then writes them together."""

    def __init__(self, conn: Connection, run: SweepRun, provider: str) -> None:
        self.conn, self.run, self.provider = conn, run, provider
        self.at, self.ts = _now()
        self.bodies: list[dict[str, Any]] = []
        self.ends: list[tuple[str, int, int]] = []
        self.obs_upserts: list[tuple[Any, ...]] = []
        self.obs_refresh: list[tuple[Any, ...]] = []
        self.obs_closes: list[tuple[Any, ...]] = []
        self.finding_inserts: list[tuple[Any, ...]] = []
        self.finding_resolves: list[tuple[Any, ...]] = []
        self.result = ChunkResult()
        self._next_finding: int | None = None

    @functools.cached_property
    def index(self) -> int:
        """The ledger index this transaction's record gets (read when first needed: a steady
        chunk writes none)."""
        return events.next_index(self.conn)

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
        if self._next_finding is None:
            row = self.conn.execute("SELECT coalesce(max(id), 0) FROM findings").fetchone()
            self._next_finding = int(row[0]) + 1
        fid = self._next_finding
        self._next_finding += 1
        entry = self._event({
            "type": "finding", "event": "open", "id": fid, "provider": self.provider,
            "region": inst.region, "instance_id": inst.id, "image_id": inst.image_id,
            "service": service, "verdict": verdict, "detail": detail, "at": self.at,
            "sweep": self.run.id})
        detail_text = canonical_json(detail).decode("utf-8")  # refuses floats: it is signed
        self.finding_inserts.append((fid, self.provider, inst.region, inst.id, inst.image_id,
                                     service, verdict, detail_text, self.at, self.index, entry))
        # the hook gets a copy: judgements (and so details) are shared by instances alike
        self.result.opened.append(_finding_payload(
            {"id": fid, "instance_id": inst.id, "provider": self.provider,
             "region": inst.region, "verdict": verdict, "detail": detail_text,
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
        for sql, rows in ((_CLOSE_SQL, self.obs_closes), (_UPSERT_SQL, self.obs_upserts),
                          (_REFRESH_SQL, self.obs_refresh), (_FINDING_SQL, self.finding_inserts),
                          (_RESOLVE_SQL, self.finding_resolves)):
            if rows:  # a steady chunk has none
                conn.executemany(sql, rows)
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


_OBS_COLS = ("region, instance_id, image_id, digest, service, state, verdicts, first_seen, "
             "last_seen, ledger_index, entry")
_CMP_COLS = "region, instance_id, image_id, digest, service, state, verdicts"


def _open_observation(conn: Connection, provider: str, key: tuple[Any, ...]) -> dict[str, Any]:
    """The whole open observation whose (region, instance_id, image_id) lead ``key``."""
    row = query_one(conn, f"SELECT {_OBS_COLS} FROM observations WHERE provider=? AND "  # noqa: S608
                          "region=? AND instance_id=? AND image_id=? AND closed_at IS NULL",
                    (provider, *key[:3]))
    if row is None:  # it was read in this transaction a moment ago
        raise LookupError(f"open observation {provider}/{'/'.join(map(str, key[:3]))} vanished")
    return row
_FINDING_COLS = ("id, provider, region, instance_id, image_id, service, verdict, detail, "
                 "opened_at, open_ledger_index, open_entry")


def _unchanged(conn: Connection, provider: str, row: tuple[Any, ...], ids: list[str]) -> bool:
    """Whether each of ``ids`` has an open observation holding exactly ``row`` (region, image
    id, digest, service, state, verdicts), and none other: one count over their index entries,
    not a row read per instance. False is always safe (the caller then compares row by row)."""
    marks = ",".join("?" * len(ids))
    region, image_id, digest, service, state, text = row
    # "= NULL" matches nothing: a NULL is compared with IS NULL, and PostgreSQL has no "IS ?"
    same = ("region=? AND image_id=? AND state=? AND verdicts=? AND "
            + ("digest IS NULL" if digest is None else "digest=?") + " AND "
            + ("service IS NULL" if service is None else "service=?"))
    args = [region, image_id, state, text] + [v for v in (digest, service) if v is not None]
    n, good = conn.execute(
        f"SELECT count(*), coalesce(sum(CASE WHEN {same} THEN 1 ELSE 0 END), 0) "  # noqa: S608
        f"FROM observations WHERE closed_at IS NULL AND provider=? AND instance_id IN ({marks})",
        (*args, provider, *ids)).fetchone()
    # the primary key: one observation per (provider, region, instance_id, image_id), so as many
    # matching as ids means one each (and no id twice); as many in all means no other one
    return bool(n == good == len(ids))


def _findings_at_start(conn: Connection, run: SweepRun,
                       provider: str) -> dict[tuple[str, str], frozenset[str]]:
    """The verdicts of the provider's open findings by (region, instance id), as they were when
    this sweep first came to the provider (read once: a steady fleet has few)."""
    found = run.findings_at_start.get(provider)
    if found is None:
        sets: dict[tuple[str, str], set[str]] = {}
        for region, iid, verdict in conn.execute(
                "SELECT region, instance_id, verdict FROM findings WHERE status='open' AND "
                "provider=?", (provider,)).fetchall():
            sets.setdefault((region, iid), set()).add(verdict)
        found = run.findings_at_start[provider] = {k: frozenset(v) for k, v in sets.items()}
    return found


def apply_chunk(conn: Connection, run: SweepRun, provider: str,
                items: Sequence[Observed | Instance]) -> ChunkResult:
    """Judge one chunk of a provider's instances and record what changed (one transaction)."""
    w = _Writer(conn, run, provider)
    insts, judged = run.facts.judge(conn, provider, items, w.ts)
    regions = run.seen.setdefault(provider, {})
    region: str | None = None
    seen: set[str] = set()
    findings = _findings_at_start(conn, run, provider)
    none: frozenset[str] = frozenset()
    # Instances judged alike (one judgement, so the same observation row expected): most of a
    # steady sweep is a few such groups whose rows all hold already, settled by one count each.
    # Only an instance this sweep has not listed before can be settled so: the findings read
    # at the start are still its findings (this sweep writes an instance's rows only when it
    # lists it).
    groups: dict[Judged, tuple[list[int], list[str]]] = {}
    rest: list[int] = []
    add = seen.add
    for n, (inst, j) in enumerate(zip(insts, judged, strict=True)):
        if inst.region != region:
            region = inst.region
            seen = regions.setdefault(region, set())
            add = seen.add
        size = len(seen)
        add(inst.id)
        if (j.alike and len(seen) > size  # alike, and listed for the first time
                and (findings.get((region, inst.id), none) if findings else none)
                == j.failing):
            group = groups.get(j)
            if group is None:
                group = groups[j] = ([], [])
            group[0].append(n)
            group[1].append(inst.id)
        else:
            rest.append(n)
    for j, (members, ids) in groups.items():
        if not _unchanged(conn, provider, j.row, ids):
            rest.extend(members)
    rest.sort()  # the rest in listing order: their events are numbered in it
    w.result.instances = len(items)
    if not rest:
        return w.flush()
    ids = [insts[n].id for n in rest]
    # rows as tuples (region, instance_id, image_id, digest, service, state, verdicts): they
    # are only compared, and the index observations_open holds these columns; the rest is
    # read for the few that close
    marks = ",".join("?" * len(ids))
    open_obs = {(r[0], r[1]): r for r in conn.execute(
        f"SELECT {_CMP_COLS} FROM observations WHERE closed_at IS NULL AND "  # noqa: S608
        f"provider=? AND instance_id IN ({marks})", (provider, *ids)).fetchall()}
    open_findings: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in _in(conn, f"SELECT {_FINDING_COLS} FROM findings WHERE status='open' AND "  # noqa: S608
                       "provider=? AND instance_id IN (?*)", (provider,), ids):
        open_findings.setdefault((r["region"], r["instance_id"]), {})[r["verdict"]] = r
    for n in rest:
        inst, j = insts[n], judged[n]
        verdicts, verdict_text, facts_image, service = j.verdicts, j.text, j.digest, j.service
        key = (inst.region, inst.id)
        obs = open_obs.get(key)
        if obs is not None and obs[2] != inst.image_id:
            w.close_observation(_open_observation(conn, provider, obs), "image changed")
            obs = None
        if obs is None:
            w.open_observation(inst, facts_image, service, verdict_text)
        elif (obs[5], obs[6], obs[3], obs[4]) != (inst.state, verdict_text, facts_image, service):
            # changed: rewrite it; an unchanged observation is left as it is (no write)
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
    return w.flush()


def close_unseen(conn: Connection, run: SweepRun, provider: str,
                 limit: int = CHUNK) -> ChunkResult:
    """Close the observations of ``provider`` this sweep did not see, scanning up to ``limit``
    of its open observations per call (``more`` says whether to call again)."""
    w = _Writer(conn, run, provider)
    run.findings_at_start.pop(provider, None)  # its listing is over
    after = run.close_after.get(provider)
    seen = run.seen.get(provider, {})
    if after is None:
        # every instance seen has exactly one open observation (opened or kept by apply_chunk):
        # as many open as seen means none is unseen, and there is nothing to scan
        (n_open,) = conn.execute("SELECT count(*) FROM observations WHERE provider=? AND "
                                 "closed_at IS NULL", (provider,)).fetchone()
        if n_open == sum(map(len, seen.values())):
            return w.result
        after = ("", "", "")
    # the keys only: most were seen, and nothing more of them is read
    scanned = conn.execute("SELECT region, instance_id, image_id FROM observations WHERE "
                           "provider=? AND closed_at IS NULL AND (region, instance_id, image_id) "
                           "> (?, ?, ?) ORDER BY region, instance_id, image_id LIMIT ?",
                           (provider, *after, limit)).fetchall()
    w.result.more = len(scanned) == limit
    if scanned:
        run.close_after[provider] = tuple(scanned[-1])
    unseen = {tuple(r) for r in scanned if r[1] not in seen.get(r[0], ())}
    if not unseen:
        return w.result
    rows = [r for r in _in(conn, f"SELECT {_OBS_COLS} FROM observations WHERE "  # noqa: S608
                                 "closed_at IS NULL AND provider=? AND instance_id IN (?*)",
                           (provider,), sorted({k[1] for k in unseen}))
            if (r["region"], r["instance_id"], r["image_id"]) in unseen]
    rows.sort(key=lambda r: (r["region"], r["instance_id"], r["image_id"]))
    findings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in _in(conn, f"SELECT {_FINDING_COLS} FROM findings WHERE status='open' AND "  # noqa: S608
                       "provider=? AND instance_id IN (?*)", (provider,),
                 [r["instance_id"] for r in rows]):
        findings.setdefault((r["region"], r["instance_id"]), []).append(r)
    for obs in rows:
        w.close_observation(obs, "gone")
        for f in findings.pop((obs["region"], obs["instance_id"]), []):
            w.resolve_finding(f, "the instance is gone")
    return w.flush()


# -- sweeps table ------------------------------------------------------------------------------

def new_sweep(conn: Connection, actor: str) -> int:
    at, _ = _now()
    rows = conn.execute("INSERT INTO sweeps (started_at, state, actor) VALUES (?, 'running', ?) "
                        "RETURNING id", (at, actor)).fetchall()  # all: the statement completes
    return int(rows[0][0])


def finish_sweep(conn: Connection, sweep: int, state: str, error: str | None) -> None:
    at, _ = _now()
    conn.execute("UPDATE sweeps SET state=?, finished_at=?, error=? WHERE id=?",
                 (state, at, error, sweep))


def abort_stale(conn: Connection) -> int:
    at, _ = _now()
    return conn.execute(
        "UPDATE sweeps SET state='aborted', finished_at=?, error='immd stopped during the sweep'"
        " WHERE state='running'", (at,)).rowcount


def sweep_row(conn: Connection, sweep: int | None = None) -> dict[str, Any] | None:
    if sweep is None:
        return query_one(conn, "SELECT * FROM sweeps ORDER BY id DESC LIMIT 1")
    return query_one(conn, "SELECT * FROM sweeps WHERE id=?", (sweep,))
