"""An image's life after it is baked: deprecated, expired, revoked on a schedule.

* ``deprecate``: rollouts are still allowed; the image carries a warning wherever it shows.
* ``expire --at T``: from T on, rollouts to it are refused by the policy rule ``not-expired``.
* ``revoke --at T``: at T the daemon revokes it (a revocation record like ``image revoke``);
  until then it is a scheduled revocation that shows on the image.

Each is a signed ``lifecycle`` ledger record. Expiring or revoking an image that the last audit
sweep saw running is refused unless forced, and the refusal names the instances (Cloud
Custodian users broke production deprecating AMIs still in use). The caller passes the running
instances in: the catalog does not read the audit's tables.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from ..errors import BadRequest, Conflict
from ..store import Connection
from .freshness import iso, parse_duration, unix_now
from .service import Catalog, query, query_one

ACTIONS = ("deprecate", "expire", "revoke")
_RELATIVE = re.compile(r"^\+(\d+[smhd])$")


def parse_at(value: Any, now: int | None = None) -> int:
    """'now', '+90s' / '+2h' / '+7d', or an RFC 3339 UTC time like 2026-12-31T00:00:00Z."""
    now = unix_now() if now is None else now
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("--at is required: an RFC 3339 UTC time (2026-12-31T00:00:00Z), 'now' "
                         "or +DURATION (+2h, +7d)")
    text = value.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now + parse_duration(m.group(1), "--at")
    try:
        t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"--at {value!r} is not a time: use RFC 3339 UTC like "
                         "2026-12-31T00:00:00Z, 'now' or +DURATION (+2h, +7d)") from None
    return int(t.timestamp())


def _current(conn: Connection, digest: str) -> dict[str, dict[str, Any]]:
    rows = query(conn, "SELECT action, at, reason, actor, time, ledger_index, state FROM lifecycle "
                       "WHERE digest=? ORDER BY ledger_index", (digest,))
    return {r["action"]: r for r in rows}


def status(conn: Connection, digest: str, now: int | None = None) -> dict[str, Any]:
    """What the image's lifecycle says now: deprecated, expires/expired, revoke scheduled; and
    the warnings to show beside it."""
    now = unix_now() if now is None else now
    cur = _current(conn, digest)
    out: dict[str, Any] = {"deprecated": None, "expires_at": None, "expired": False,
                           "revoke_at": None, "warnings": []}
    dep = cur.get("deprecate")
    if dep:
        out["deprecated"] = {"reason": dep["reason"], "by": dep["actor"], "at": dep["time"]}
        out["warnings"].append(f"deprecated by {dep['actor']} at {dep['time']}"
                               + (f": {dep['reason']}" if dep["reason"] else ""))
    exp = cur.get("expire")
    if exp:
        out["expires_at"] = iso(exp["at"])
        out["expired"] = now >= exp["at"]
        out["warnings"].append(("expired at " if out["expired"] else "expires at ")
                               + iso(exp["at"]) + (f" ({exp['reason']})" if exp["reason"] else ""))
    rev = cur.get("revoke")
    if rev and rev["state"] == "scheduled":
        out["revoke_at"] = iso(rev["at"])
        out["warnings"].append(f"revocation scheduled for {iso(rev['at'])}"
                               + (f" ({rev['reason']})" if rev["reason"] else ""))
    return out


def record(conn: Connection, catalog: Catalog, actor: str, ref: str, action: str, *,
           at: int | None, reason: str, running: list[dict[str, Any]], force: bool,
           now: int | None = None) -> dict[str, Any]:
    """Deprecate, expire or schedule a revocation as a signed record."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown lifecycle action {action!r}; use one of {', '.join(ACTIONS)}")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise BadRequest("--reason must be text of at most 1000 characters")
    digest = catalog.resolve(conn, ref)
    now = unix_now() if now is None else now
    if action != "deprecate":
        if at is None:
            raise BadRequest(f"image {action} needs --at TIME")
        if running and not force:
            names = [f"{r['provider']}/{r['region']}/{r['instance_id']}"
                     + (f" ({r['service']})" if r.get("service") else "") for r in running]
            raise Conflict(
                f"image {digest} is running on {len(names)} instance(s) the last audit sweep "
                f"saw: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}; roll them to "
                f"another image first, or pass --force to {action} it anyway",
                detail={"instances": names})
        if action == "revoke" and catalog.revocation_of(conn, digest):
            raise Conflict(f"image {digest} is already revoked")
    body = {"type": "lifecycle", "action": action, "digest": digest,
            "at": iso(at) if at is not None else None, "reason": reason,
            "forced_over": [f"{r['provider']}/{r['region']}/{r['instance_id']}" for r in running]
            if (force and running and action != "deprecate") else [],
            "actor": actor, "time": iso(now)}
    env, idx, text = catalog.append(conn, "lifecycle", body)
    state = "scheduled" if action == "revoke" else "set"
    conn.execute("INSERT INTO lifecycle VALUES (?,?,?,?,?,?,?,?,?)",
                 (digest, action, at if at is not None else now, reason, actor, body["time"],
                  idx, state, text))
    catalog.checkpoint(conn)
    return {"digest": digest, "action": action, "at": body["at"], "ledger_index": idx,
            "forced_over": body["forced_over"], "envelope": env,
            "lifecycle": status(conn, digest, now)}


def due_revocations(conn: Connection, now: int | None = None) -> list[dict[str, Any]]:
    now = unix_now() if now is None else now
    return query(conn, "SELECT digest, reason, actor, ledger_index FROM lifecycle WHERE "
                       "action='revoke' AND state='scheduled' AND at <= ?", (now,))


def carry_out_revocations(conn: Connection, catalog: Catalog,
                          now: int | None = None) -> list[str]:
    """Revoke every image whose scheduled time has come (a revocation record each)."""
    done = []
    for r in due_revocations(conn, now):
        if not catalog.revocation_of(conn, r["digest"]):
            reason = r["reason"] or "scheduled revocation"
            catalog.revoke(conn, f"{r['actor']} (scheduled at leaf {r['ledger_index']})",
                           r["digest"], reason, False)
        conn.execute("UPDATE lifecycle SET state='done' WHERE ledger_index=?", (r["ledger_index"],))
        done.append(r["digest"])
    return done


def expired(conn: Connection, digest: str, now: int | None = None) -> dict[str, Any] | None:
    """The expiry in force for ``digest`` (for the rollout rule not-expired), or None."""
    now = unix_now() if now is None else now
    row = query_one(conn, "SELECT at, reason, actor, time, ledger_index FROM lifecycle WHERE "
                          "digest=? AND action='expire' ORDER BY ledger_index DESC LIMIT 1",
                    (digest,))
    if row and now >= row["at"]:
        return {**row, "at": iso(row["at"])}
    return None


def revocation_due(conn: Connection, digest: str,
                   now: int | None = None) -> dict[str, Any] | None:
    """A scheduled revocation of ``digest`` whose time has come but is not carried out yet."""
    now = unix_now() if now is None else now
    row = query_one(conn, "SELECT at, reason, actor, ledger_index FROM lifecycle WHERE digest=? "
                          "AND action='revoke' AND state='scheduled' AND at <= ? LIMIT 1",
                    (digest, now))
    return {**row, "at": iso(row["at"])} if row else None


def listing(conn: Connection, digest: str) -> list[dict[str, Any]]:
    rows = query(conn, "SELECT action, at, reason, actor, time, ledger_index, state, envelope "
                       "FROM lifecycle WHERE digest=? ORDER BY ledger_index", (digest,))
    for r in rows:
        r["at"] = iso(r["at"])
        r["envelope"] = json.loads(r["envelope"])
    return rows
