"""The /v1/audit API: sweeps, findings, instances, blast radius and signed export bundles.

A thin shell over ``imm.audit``: sweeps run as a background task of the daemon (one at a time),
reads go to reader threads, and the export streams its bundle chunk by chunk, each chunk read
off the loop, so a million-line bundle needs neither the memory nor the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..audit.export import CONTENT_TYPES, FORMATS, BundleWriter, parse_time
from ..audit.sweep import Auditor
from ..audit.verdicts import VERDICTS
from ..catalog.service import Catalog, query
from ..errors import EXIT_ERROR, BadRequest, ImmError, NotFound
from .http import body, field, json_response, query_int
from .routes import DAEMON, Route, actor, d

log = logging.getLogger("imm.daemon")
MAX_CURSOR = (1 << 63) - 1  # 'after' cursors are SQLite integers


class NotYet(ImmError):
    """A documented feature whose machinery this immd does not have yet."""

    code = "not-implemented"
    status = 501
    exit_code = EXIT_ERROR


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"query parameter {name}={raw!r} must be 1 or 0 (true or false)")


def auditor(request: web.Request) -> Auditor:
    return Auditor.of(d(request))


# -- sweeps ---------------------------------------------------------------------------------

async def audit_sweeps_start(request: web.Request) -> web.Response:
    await body(request)
    wait = query_bool(request, "wait")
    a = auditor(request)
    sweep, started = await a.start(actor(request))
    if wait:
        await a.wait()
    row = await a.sweep(sweep)
    assert row is not None
    row["started"] = started
    return json_response(row, status=200 if wait else 202)


async def audit_sweeps_latest(request: web.Request) -> web.Response:
    row = await auditor(request).sweep()
    if row is None:
        raise NotFound("no audit sweep has run yet; 'immctl audit run' starts one")
    return json_response(row)


async def audit_sweep_show(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"sweep id {raw!r} is not a number")
    row = await auditor(request).sweep(int(raw))
    if row is None:
        raise NotFound(f"no audit sweep {raw}; 'immctl audit status' shows the latest")
    return json_response(row)


# -- findings and instances -----------------------------------------------------------------

def _verdict(request: web.Request) -> str | None:
    verdict = request.query.get("verdict") or None
    if verdict is not None and verdict not in VERDICTS:
        raise BadRequest(f"verdict={verdict!r} is not one of {', '.join(VERDICTS)}")
    return verdict


def list_findings(conn: sqlite3.Connection, *, open_only: bool, verdict: str | None,
                  instance: str | None, after: int, limit: int) -> dict[str, Any]:
    where: list[str] = ["id > ?"]
    params: list[Any] = [after]
    if open_only:
        where.append("status = 'open'")
    if verdict:
        where.append("verdict = ?")
        params.append(verdict)
    if instance:
        where.append("instance_id = ?")
        params.append(instance)
    rows = query(conn, "SELECT id, provider, region, instance_id, image_id, service, verdict, "  # noqa: S608
                       "detail, status, opened_at, resolved_at, resolution, open_ledger_index, "
                       "resolve_ledger_index FROM findings WHERE " + " AND ".join(where)
                 + " ORDER BY id LIMIT ?", [*params, limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    counts = dict(conn.execute("SELECT verdict, count(*) FROM findings WHERE status = 'open' "
                               "GROUP BY verdict ORDER BY verdict").fetchall())
    return {"findings": rows, "next": rows[-1]["id"] if more and rows else None,
            "open": counts}


async def audit_findings(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.read(
        list_findings, open_only=query_bool(request, "open"), verdict=_verdict(request),
        instance=request.query.get("instance") or None,
        after=query_int(request, "after", default=0, maximum=MAX_CURSOR) or 0,
        limit=query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000)
    return json_response(result)


def _as_of(conn: sqlite3.Connection) -> dict[str, Any] | None:
    rows = query(conn, "SELECT id, state, started_at, finished_at FROM sweeps "
                       "WHERE state != 'running' ORDER BY id DESC LIMIT 1")
    return rows[0] if rows else None


_INSTANCE_COLS = """o.rowid AS cursor, o.provider, o.region, o.instance_id, o.image_id, o.digest,
    i.name || '@' || i.version AS image, o.service, o.state, o.launched_at, o.first_seen,
    o.last_seen, o.verdicts"""


def _instance_rows(conn: sqlite3.Connection, where: str, params: list[Any]) -> list[dict[str, Any]]:
    rows = query(conn, f"SELECT {_INSTANCE_COLS} FROM observations o "  # noqa: S608
                       f"LEFT JOIN images i ON i.digest = o.digest WHERE {where}", params)
    for r in rows:
        verdicts = json.loads(r.pop("verdicts"))
        r["verdicts"] = [v["verdict"] for v in verdicts]
        r["details"] = {v["verdict"]: v["detail"] for v in verdicts if v["detail"]}
    return rows


def list_instances(conn: sqlite3.Connection, *, verdict: str | None, service: str | None,
                   after: int, limit: int) -> dict[str, Any]:
    where: list[str] = ["o.closed_at IS NULL", "o.rowid > ?"]
    params: list[Any] = [after]
    if service:
        where.append("o.service = ?")
        params.append(service)
    if verdict:
        where.append("EXISTS (SELECT 1 FROM json_each(o.verdicts) j "
                     "WHERE json_extract(j.value, '$.verdict') = ?)")
        params.append(verdict)
    rows = _instance_rows(conn, " AND ".join(where) + " ORDER BY o.rowid LIMIT ?",
                          [*params, limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"instances": rows, "next": rows[-1]["cursor"] if more and rows else None,
            "as_of": _as_of(conn)}


async def audit_instances(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.read(
        list_instances, verdict=_verdict(request), service=request.query.get("service") or None,
        after=query_int(request, "after", default=0, maximum=MAX_CURSOR) or 0,
        limit=query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000)
    return json_response(result)


# -- blast radius ---------------------------------------------------------------------------

def blast_radius(conn: sqlite3.Connection, catalog: Catalog, ref: str | None,
                 limit: int) -> dict[str, Any]:
    """Running instances on an image or its descendants (default: on any revoked image)."""
    if ref:
        root: str | None = catalog.resolve(conn, ref)
        assert root is not None
        digests = [root, *catalog.descendants(conn, root)]
    else:
        root = None
        revoked = [r[0] for r in conn.execute("SELECT digest FROM revocations ORDER BY digest")]
        seen = dict.fromkeys(revoked)
        for dg in revoked:
            seen.update(dict.fromkeys(catalog.descendants(conn, dg)))
        digests = list(seen)
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    total = 0
    services: dict[str, int] = {}
    for dg in digests:
        img = query(conn, "SELECT i.name || '@' || i.version AS image, r.reason, r.root "
                          "FROM images i LEFT JOIN revocations r ON r.digest = i.digest "
                          "WHERE i.digest = ?", (dg,))
        info = img[0] if img else {"image": None, "reason": None, "root": None}
        images.append({"digest": dg, "image": info["image"],
                       "revoked": info["reason"] is not None, "reason": info["reason"],
                       "revoked_by": info["root"]})
        for svc, n in conn.execute("SELECT coalesce(service, ''), count(*) FROM observations "
                                   "WHERE closed_at IS NULL AND state = 'running' AND digest = ? "
                                   "GROUP BY 1", (dg,)):
            services[svc] = services.get(svc, 0) + n
            total += n
        if len(instances) < limit:
            instances += _instance_rows(
                conn, "o.closed_at IS NULL AND o.state = 'running' AND o.digest = ? "
                      "ORDER BY o.rowid LIMIT ?", [dg, limit - len(instances)])
    return {"ref": ref, "digest": root, "images": images, "instances": instances,
            "total": total, "truncated": total > len(instances), "services": services,
            "as_of": _as_of(conn)}


async def audit_blast_radius(request: web.Request) -> web.Response:
    dm = d(request)
    limit = query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000
    return json_response(await dm.db.read(blast_radius, dm.catalog,
                                          request.query.get("ref") or None, limit))


async def audit_blast_radius_replace(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    ref = field(data, "ref", str, required=True)
    replace = field(data, "replace", bool, default=False)
    result = await dm.db.read(blast_radius, dm.catalog, ref, 100000)
    if not replace:
        return json_response(result)
    start = getattr(dm, "start_rollout", None)
    if start is None:
        raise NotYet("replacing the blast radius needs the rollout engine, which this immd "
                     "does not have yet; 'immctl audit blast-radius REF' lists the instances "
                     "to replace", detail={"services": result["services"]})
    affected = {i["digest"] for i in result["images"]}
    rollouts, refused = [], {}
    for service in sorted(s for s in result["services"] if s):
        channel = dm.settings.services.get(service, {}).get("channel")
        if not channel:
            refused[service] = "the service has no channel to take a replacement image from"
            continue
        try:
            head = await dm.db.read(dm.catalog.channel, channel)
            if head["digest"] in affected:
                refused[service] = (f"channel {channel} still points at {head['digest']}, "
                                    "which is in the blast radius; move it to a good image first")
                continue
            started = start(actor(request), service, head["digest"])
            rollouts.append(await started if inspect.isawaitable(started) else started)
        except ImmError as e:  # one service refused (no channel yet, policy, a rollout in flight)
            refused[service] = e.message
    result.update(rollouts=rollouts, refused=refused)
    return json_response(result, status=201 if rollouts else 200)


# -- export ---------------------------------------------------------------------------------

async def audit_export(request: web.Request) -> web.StreamResponse:
    dm = d(request)
    fmt = request.query.get("format") or "jsonl"
    if fmt not in FORMATS:
        raise BadRequest(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    writer = BundleWriter(dm.catalog, since=parse_time(request.query.get("since"), "since"),
                          until=parse_time(request.query.get("until"), "until"), fmt=fmt)
    head = await dm.db.read(writer.begin)
    resp = web.StreamResponse(headers={
        "Content-Disposition": f'attachment; filename="imm-audit.{fmt}"'})
    resp.content_type = CONTENT_TYPES[fmt]
    resp.charset = "utf-8"
    await resp.prepare(request)
    try:
        await resp.write(head)
        while (chunk := await dm.db.read(writer.next)) is not None:
            await resp.write(chunk)
        await resp.write(writer.end())
        await resp.write_eof()
    except ConnectionResetError:
        log.info("audit export: the client went away after %d lines", writer.lines)
    except Exception:  # noqa: BLE001 - headers are sent: cut the stream short, unsigned
        log.exception("audit export failed after %d lines; the bundle was cut short "
                      "(it has no signature line, so it will not verify)", writer.lines)
        resp.force_close()
    return resp


# -- the scheduler, in the app's lifetime -----------------------------------------------------

async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """Scheduled sweeps (``[audit] interval_s``) while the app runs; stop any sweep at exit."""
    a = Auditor.of(app[DAEMON])
    a.interval()  # a bad value fails start-up, naming it
    await a.recover()
    task = asyncio.create_task(a.schedule(), name="audit-schedule")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await a.stop()


STR = {"type": "string"}
BOOL = {"schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}
PAGE = {"limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
        "after": {"schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR}}}
VERDICT = {"schema": {"type": "string", "enum": list(VERDICTS)}}
ROUTES: list[Route] = [
    Route("POST", "/v1/audit/sweeps", audit_sweeps_start,
          "Start an audit sweep (or join the running one); wait=1 waits for it",
          query={"wait": BOOL}, body={"type": "object"}, tag="audit"),
    Route("GET", "/v1/audit/sweeps/latest", audit_sweeps_latest,
          "The latest sweep, with progress while it runs", tag="audit"),
    Route("GET", "/v1/audit/sweeps/{id}", audit_sweep_show, "One sweep, with progress while it runs",
          query={"id": {"in": "path", "schema": {"type": "integer", "minimum": 1}}}, tag="audit"),
    Route("GET", "/v1/audit/findings", audit_findings, "Findings (open=1: only open ones)",
          query={"open": BOOL, "verdict": VERDICT, "instance": {"schema": STR}, **PAGE},
          tag="audit"),
    Route("GET", "/v1/audit/instances", audit_instances,
          "Every instance seen by the last sweeps: its image, since when, its verdicts",
          query={"verdict": VERDICT, "service": {"schema": STR}, **PAGE}, tag="audit"),
    Route("GET", "/v1/audit/blast-radius", audit_blast_radius,
          "Running instances on an image or its descendants (default: any revoked image)",
          query={"ref": {"schema": STR},
                 "limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 100000}}},
          tag="audit"),
    Route("POST", "/v1/audit/blast-radius", audit_blast_radius_replace,
          "The blast radius of an image; replace=true starts rollouts replacing it",
          body={"type": "object", "required": ["ref"], "properties": {
              "ref": STR, "replace": {"type": "boolean"}}}, tag="audit"),
    Route("GET", "/v1/audit/export", audit_export,
          "A signed audit bundle of a time range (JSON Lines or CSV), streamed",
          query={"since": {"schema": STR}, "until": {"schema": STR},
                 "format": {"schema": {"type": "string", "enum": list(FORMATS)}}},
          tag="audit"),
]
