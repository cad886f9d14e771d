"""The audit's reads: findings, the instances seen, and what the last sweep was.

Plain functions on a store connection, run on a reader thread (``store.read(fn, ...)``); the
daemon's routes only parse the request and render the result.
"""

from __future__ import annotations

import json
from typing import Any

from ..store import Connection, dialect, query

MAX_CURSOR = (1 << 63) - 1  # 'after' cursors are SQLite integers


def list_findings(conn: Connection, *, open_only: bool, verdict: str | None,
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


def findings_timeline(conn: Connection) -> list[tuple[str, int]]:
    """How many findings were open after each moment one opened or was resolved: (time, count)
    per distinct timestamp, oldest first, counted by the database (no row is read out)."""
    rows = conn.execute(
        "SELECT at, sum(n) FROM (SELECT opened_at AS at, count(*) AS n FROM findings "
        "GROUP BY opened_at UNION ALL SELECT resolved_at AS at, -count(*) AS n FROM findings "
        "WHERE resolved_at IS NOT NULL GROUP BY resolved_at) t GROUP BY at ORDER BY at"
    ).fetchall()
    out, open_ = [], 0
    for at, n in rows:
        open_ += int(n)
        out.append((str(at), open_))
    return out


def as_of(conn: Connection) -> dict[str, Any] | None:
    rows = query(conn, "SELECT id, state, started_at, finished_at FROM sweeps "
                       "WHERE state != 'running' ORDER BY id DESC LIMIT 1")
    return rows[0] if rows else None


_INSTANCE_COLS = """o.rowid AS cursor, o.provider, o.region, o.instance_id, o.image_id, o.digest,
    i.name || '@' || i.version AS image, o.service, o.state, o.launched_at, o.first_seen,
    o.last_seen, o.verdicts"""


def instance_rows(conn: Connection, where: str, params: list[Any]) -> list[dict[str, Any]]:
    rows = query(conn, f"SELECT {_INSTANCE_COLS} FROM observations o "  # noqa: S608
                       f"LEFT JOIN images i ON i.digest = o.digest WHERE {where}", params)
    for r in rows:
        verdicts = json.loads(r.pop("verdicts"))
        r["verdicts"] = [v["verdict"] for v in verdicts]
        r["details"] = {v["verdict"]: v["detail"] for v in verdicts if v["detail"]}
    return rows


# an observation whose JSON array of verdicts holds one named ?
_HAS_VERDICT = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(o.verdicts) j "
              "WHERE json_extract(j.value, '$.verdict') = ?)",
    "postgresql": "EXISTS (SELECT 1 FROM jsonb_array_elements(o.verdicts::jsonb) j "
                  "WHERE j ->> 'verdict' = ?)",
}


def list_instances(conn: Connection, *, verdict: str | None, service: str | None,
                   after: int, limit: int, provider: str | None = None,
                   region: str | None = None) -> dict[str, Any]:
    where: list[str] = ["o.closed_at IS NULL", "o.rowid > ?"]
    params: list[Any] = [after]
    for column, value in (("service", service), ("provider", provider), ("region", region)):
        if value:
            where.append(f"o.{column} = ?")
            params.append(value)
    if verdict:
        where.append(_HAS_VERDICT[dialect(conn)])
        params.append(verdict)
    rows = instance_rows(conn, " AND ".join(where) + " ORDER BY o.rowid LIMIT ?",
                          [*params, limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"instances": rows, "next": rows[-1]["cursor"] if more and rows else None,
            "as_of": as_of(conn)}


def running(conn: Connection, digest: str) -> list[dict[str, Any]]:
    """Instances the latest sweeps saw running ``digest`` (open observations): what expiring or
    revoking the image on a schedule must not silently hit."""
    return query(conn, "SELECT provider, region, instance_id, service FROM observations "
                       "WHERE digest=? AND closed_at IS NULL ORDER BY provider, region, "
                       "instance_id", (digest,))
