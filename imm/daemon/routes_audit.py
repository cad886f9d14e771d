"""The /v1/audit API: sweeps, findings, instances, blast radius and signed export bundles.

A thin shell over ``imm.audit``: sweeps run as a background task of the daemon (one at a time),
reads go to reader threads, and the export streams its bundle chunk by chunk, each chunk read
off the loop, so a million-line bundle needs neither the memory nor the event loop.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..audit import blast_radius as radius
from ..audit.export import CONTENT_TYPES, FORMATS, BundleWriter, parse_time
from ..audit.queries import MAX_CURSOR, list_findings, list_instances
from ..audit.sweep import Auditor
from ..audit.verdicts import VERDICTS
from ..errors import BadRequest, NotFound
from .http import body, field, json_response, query_int
from .routes import Route, actor, d

log = logging.getLogger("imm.daemon")


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
    return d(request).auditor


# -- sweeps ---------------------------------------------------------------------------------

async def audit_sweeps_start(request: web.Request) -> web.Response:
    await body(request)
    wait = query_bool(request, "wait")
    a = auditor(request)
    sweep, started = await a.start_sweep(actor(request))
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


async def audit_findings(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.read(
        list_findings, open_only=query_bool(request, "open"), verdict=_verdict(request),
        instance=request.query.get("instance") or None,
        after=query_int(request, "after", default=0, maximum=MAX_CURSOR) or 0,
        limit=query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000)
    return json_response(result)


async def audit_instances(request: web.Request) -> web.Response:
    dm = d(request)
    result = await dm.db.read(
        list_instances, verdict=_verdict(request), service=request.query.get("service") or None,
        provider=request.query.get("provider") or None, region=request.query.get("region") or None,
        after=query_int(request, "after", default=0, maximum=MAX_CURSOR) or 0,
        limit=query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000)
    return json_response(result)


# -- blast radius ---------------------------------------------------------------------------

async def audit_blast_radius(request: web.Request) -> web.Response:
    dm = d(request)
    limit = query_int(request, "limit", default=1000, minimum=1, maximum=100000) or 1000
    return json_response(await dm.db.read(radius.blast_radius, dm.catalog,
                                          request.query.get("ref") or None, limit))


async def audit_blast_radius_replace(request: web.Request) -> web.Response:
    dm = d(request)
    data = await body(request)
    ref = field(data, "ref", str, required=True)
    replace = field(data, "replace", bool, default=False)
    if not replace:
        return json_response(await dm.db.read(radius.blast_radius, dm.catalog, ref,
                                              radius.REPLACE_LIMIT))
    result = await radius.replace(dm.context, dm.engine.start, actor(request), ref)
    return json_response(result, status=201 if result["rollouts"] else 200)


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
          query={"verdict": VERDICT, "service": {"schema": STR}, "provider": {"schema": STR},
                 "region": {"schema": STR}, **PAGE}, tag="audit"),
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
