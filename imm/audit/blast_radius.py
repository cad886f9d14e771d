"""Blast radius: which running instances stand on an image or its descendants, and their
replacement through the rollout engine.

The replacement gets the engine's ``start`` from the caller (the daemon passes its engine's):
audit does not import the rollout package, and each affected service is refused or rolled out
on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..catalog.service import Catalog
from ..context import Context
from ..errors import ImmError
from ..store import Connection, query
from .queries import as_of, instance_rows

StartRollout = Callable[[str, str, str], Awaitable[dict[str, Any]]]  # (actor, service, ref)


def blast_radius(conn: Connection, catalog: Catalog, ref: str | None,
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
            instances += instance_rows(
                conn, "o.closed_at IS NULL AND o.state = 'running' AND o.digest = ? "
                      "ORDER BY o.rowid LIMIT ?", [dg, limit - len(instances)])
    return {"ref": ref, "digest": root, "images": images, "instances": instances,
            "total": total, "truncated": total > len(instances), "services": services,
            "as_of": as_of(conn)}

REPLACE_LIMIT = 100000  # instances listed in a replacement's answer


async def replace(ctx: Context, start: StartRollout, actor: str, ref: str) -> dict[str, Any]:
    """Roll every service running an image in ``ref``'s blast radius onto its channel's head.

    A service is refused (and named, with why) when it has no channel, when its channel still
    points into the blast radius, or when the engine refuses the rollout (policy, a rollout
    already in flight); the others go ahead. Returns the blast radius with ``rollouts`` (as
    the engine started them) and ``refused`` (service -> reason).
    """
    result = await ctx.store.read(blast_radius, ctx.catalog, ref, REPLACE_LIMIT)
    affected = {i["digest"] for i in result["images"]}
    rollouts: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    services: Mapping[str, Mapping[str, Any]] = ctx.settings.services
    for service in sorted(s for s in result["services"] if s):
        channel = services.get(service, {}).get("channel")
        if not channel:
            refused[service] = "the service has no channel to take a replacement image from"
            continue
        try:
            head = await ctx.store.read(ctx.catalog.channel, channel)
            if head["digest"] in affected:
                refused[service] = (f"channel {channel} still points at {head['digest']}, "
                                    "which is in the blast radius; move it to a good image first")
                continue
            rollouts.append(await start(actor, service, head["digest"]))
        except ImmError as e:  # one service refused (no channel yet, policy, a rollout in flight)
            refused[service] = e.message
    result.update(rollouts=rollouts, refused=refused)
    return result
