"""The read-only pages beyond the first slice: the audit view of the fleet with its filters,
an image (artifacts, revocation and cascade, lineage), a channel's history, and compliance
(findings over time, blast radius, the signed export).

Each page reads what the JSON API's route for the same data reads (``imm.audit.queries``,
``Catalog``), in one reader transaction, and filters on the server from query parameters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ...audit import blast_radius as radius
from ...audit.queries import MAX_CURSOR, findings_timeline, list_findings, list_instances
from ...audit.verdicts import VERDICTS
from ...catalog import lifecycle
from ...errors import BadRequest
from ...store import Connection
from .charts import svg
from .common import DAEMON, page

PAGE_ROWS = 200
MAX_PARAM = 200


def param(request: web.Request, name: str, choices: tuple[str, ...] | None = None) -> str:
    value = request.query.get(name, "").strip()
    if len(value) > MAX_PARAM:
        raise BadRequest(f"{name} is {len(value)} characters long; at most {MAX_PARAM}")
    if value and choices is not None and value not in choices:
        raise BadRequest(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def cursor(request: web.Request) -> int:
    raw = request.query.get("after", "")
    if raw and (not raw.isdigit() or int(raw) > MAX_CURSOR):
        raise BadRequest(f"after={raw!r} is not a cursor; use the page's Next link")
    return int(raw) if raw else 0


async def audit_view(request: web.Request) -> dict[str, Any]:
    """The fleet as the last sweeps saw it, filtered by service, provider, region, verdict."""
    dm = request.app[DAEMON]
    f = {"service": param(request, "service"), "provider": param(request, "provider"),
         "region": param(request, "region"), "verdict": param(request, "verdict", VERDICTS)}

    def read(conn: Connection) -> dict[str, Any]:
        seen = list_instances(conn, verdict=f["verdict"] or None, service=f["service"] or None,
                              provider=f["provider"] or None, region=f["region"] or None,
                              after=cursor(request), limit=PAGE_ROWS)
        findings = list_findings(conn, open_only=True, verdict=None, instance=None, after=0,
                                 limit=0)
        return {**seen, "open": findings["open"]}

    view = await dm.db.read(read)
    return {"filters": f, "audit": view, "verdicts": VERDICTS,
            "providers": sorted(dm.context.providers)}


async def image(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    ref = request.match_info["ref"]

    def read(conn: Connection) -> dict[str, Any]:
        img = dm.catalog.show(conn, ref)
        lineage: list[dict[str, Any]] = []
        parent = img["parent"]
        while parent and len(lineage) < 50:
            p = dm.catalog.show(conn, parent)
            lineage.append({"digest": p["digest"], "image": f"{p['name']}@{p['version']}",
                            "status": p["status"]})
            parent = p["parent"]
        children = []
        for dg in dm.catalog.descendants(conn, img["digest"])[:PAGE_ROWS]:
            c = dm.catalog.show(conn, dg)
            children.append({"digest": dg, "image": f"{c['name']}@{c['version']}",
                             "status": c["status"], "parent": c["parent"],
                             "revocation": c["revocation"]})
        return {"img": img, "ancestors": lineage, "descendants": children,
                "lifecycle": lifecycle.status(conn, img["digest"]),
                "lifecycle_records": lifecycle.listing(conn, img["digest"])}

    return page(request, "image.html", {"page": "Catalog", **await dm.db.read(read)})


async def channel(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    name = request.match_info["name"]
    history = await dm.db.read(dm.catalog.channel_history, name)
    return page(request, "channel.html", {"page": "Catalog", "name": name,
                                          "history": list(reversed(history))})


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def findings_over_time(timeline: list[tuple[str, int]]) -> list[tuple[float, float]]:
    """(hours since the first finding, findings open then), from ``findings_timeline``."""
    if not timeline:
        return []
    start = _t(timeline[0][0])
    return [((_t(at) - start) / 3600, float(n)) for at, n in timeline]


async def compliance(request: web.Request) -> web.Response:
    dm = request.app[DAEMON]
    ref = param(request, "ref")

    def read(conn: Connection) -> dict[str, Any]:
        return {"timeline": findings_timeline(conn),
                "open": list_findings(conn, open_only=True, verdict=None, instance=None,
                                      after=0, limit=PAGE_ROWS),
                "blast": radius.blast_radius(conn, dm.catalog, ref or None, PAGE_ROWS)}

    data = await dm.db.read(read)
    points = findings_over_time(data["timeline"])
    chart = svg("Open findings over time (hours since the first finding)",
                {"open findings": points}, cid="findings", x_unit="h") if points else None
    return page(request, "compliance.html", {
        "page": "Compliance", "ref": ref, "chart": chart, "open": data["open"]["open"],
        "more": data["open"]["next"] is not None, "findings": data["open"]["findings"],
        "blast": data["blast"]})
