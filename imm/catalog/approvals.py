"""k-of-n approval of protected changes, signed by operators with their own SSH keys.

The config marks channels and services as protected::

    [protect."web/production"]          # a channel: 'channel set' needs approval
    approvals = 2
    approvers = ["sre-1", "sre-2", "sre-3"]
    expires = "24h"                     # how long a pending change waits (default 24h)

    [protect.web]                       # a service: 'rollout start' and 'rollout undo'

A protected change (``channel set``, ``rollout start``, ``rollout undo``, ``image restore``) is not
carried out when asked; it becomes a pending change: a signed ``change`` record whose
*statement* (canonical JSON binding the ledger origin, change id, action, target, image digest,
the state it replaces, who asked, when it expires and who may approve) is what approvers sign
with ``ssh-keygen -Y sign -n imm``. Each approval is verified (namespace ``imm``, over exactly
those bytes, by the key of a registered operator who is one of the approvers) and appended as a
signed ``approval`` record that holds the statement, the operator's public key and the SSHSIG,
so an auditor checks who approved from the ledger alone with ``ssh-keygen -Y verify``.

The change is carried out when k *distinct* approvers have signed: one operator, or one key,
never counts twice (python-tuf once counted duplicate signatures toward a threshold,
GHSA-pwqf-9h7j-7mv8); operators are unique by key too (see operators.py). A change past its
expiry can no longer be approved. ``image restore`` is protected by the blocks of the protected
channels that currently point at the image (the strictest one), because restoring it puts it
back where those channels send traffic.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import BadRequest, ConfigError, Conflict, Forbidden, ImmError, NotFound, VerificationFailed
from ..store import Connection
from . import operators, sshsig
from .canonical import canonical_json
from .freshness import parse_duration
from .service import CHANNEL, Catalog, query, query_one

STATEMENT_TYPE = "https://imm.dev/change/v1"
ACTIONS = ("channel-set", "rollout-start", "rollout-undo", "image-restore", "rollout-step")
CATALOG_ACTIONS = ("channel-set", "image-restore")
DEFAULT_EXPIRES_S = 24 * 3600
CHANGE_ID = re.compile(r"^c-[0-9a-f]{8}$")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Protect:
    name: str
    kind: str  # "channel" or "service"
    approvals: int
    approvers: tuple[str, ...]
    expires_s: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "approvals": self.approvals,
                "approvers": list(self.approvers)}


def parse_protect(raw: Any, source: str) -> dict[str, Protect]:
    """The ``[protect.NAME]`` blocks of the config; raises ConfigError naming the bad value."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [protect] must hold tables [protect.\"SERVICE/STAGE\"] or "
                          "[protect.SERVICE]")
    out = {}
    for name, block in raw.items():
        where = f"{source}: [protect.{json.dumps(name)}]"
        if not isinstance(block, dict):
            raise ConfigError(f"{where} must be a table")
        if "/" in name:
            if not CHANNEL.match(name):
                raise ConfigError(f"{where}: {name!r} is not a channel name (SERVICE/STAGE)")
            kind = "channel"
        elif SERVICE_NAME.match(name):
            kind = "service"
        else:
            raise ConfigError(f"{where}: {name!r} is neither a channel (SERVICE/STAGE) nor a "
                              "service name")
        unknown = set(block) - {"approvals", "approvers", "expires"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: approvals, "
                              "approvers, expires")
        approvers = block.get("approvers")
        if not isinstance(approvers, list) or not approvers or not all(
                isinstance(a, str) and operators.NAME.match(a) for a in approvers):
            raise ConfigError(f"{where}: approvers must be a non-empty list of operator names, "
                              f"got {approvers!r}")
        dupes = sorted({a for a in approvers if approvers.count(a) > 1})
        if dupes:
            raise ConfigError(f"{where}: approver(s) {dupes} listed twice; each counts once")
        k = block.get("approvals", 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(approvers):
            raise ConfigError(f"{where}: approvals = {k!r} must be an integer from 1 to the "
                              f"number of approvers ({len(approvers)})")
        expires = parse_duration(block.get("expires", DEFAULT_EXPIRES_S), f"{where} expires")
        out[name] = Protect(name, kind, k, tuple(approvers), expires)
    return out


def unknown_approvers(conn: Connection, p: Protect) -> list[str]:
    known = {r["name"] for r in query(conn, "SELECT name FROM operators")}
    return [a for a in p.approvers if a not in known]


def _time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- pending changes ----------------------------------------------------------------------------

def request(conn: Connection, catalog: Catalog, actor: str, p: Protect, action: str,
            target: str, terms: dict[str, Any]) -> dict[str, Any]:
    """Record a pending change; return its view, statement included."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown change action {action!r}")
    missing = unknown_approvers(conn, p)
    if missing:
        raise Conflict(
            f"[protect.{json.dumps(p.name)}] names approver(s) {', '.join(missing)} who are not "
            "registered operators, so its approvals could never be counted; register them with "
            "'immctl operator add NAME --ssh-key FILE.pub' or fix the config",
            detail={"unknown_approvers": missing})
    created = datetime.now(UTC).replace(microsecond=0)
    cid = f"c-{secrets.token_hex(4)}"
    statement = {"type": STATEMENT_TYPE, "origin": catalog.origin, "change": cid,
                 "action": action, "target": target, **terms, "requested_by": actor,
                 "created": _time(created), "expires": _time(created + timedelta(seconds=p.expires_s)),
                 "protect": p.to_dict()}
    text = canonical_json(statement).decode("utf-8")
    body = {"type": "change", "action": "request", "change": cid, "statement": text,
            "actor": actor, "time": statement["created"]}
    env, idx, rec = catalog.append(conn, "change", body)
    conn.execute("INSERT INTO changes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (cid, action, target, json.dumps(terms, sort_keys=True), text, p.name,
                  p.approvals, json.dumps(list(p.approvers)), actor, statement["created"],
                  statement["expires"], "pending", None, idx, rec))
    catalog.checkpoint(conn)
    return show(conn, cid)


def _row(conn: Connection, cid: str) -> dict[str, Any]:
    if not isinstance(cid, str) or not CHANGE_ID.match(cid):
        raise BadRequest(f"bad change id {cid!r}: expected c- and 8 hex digits, as "
                         "'immctl change list' shows")
    row = query_one(conn, "SELECT * FROM changes WHERE id=?", (cid,))
    if row is None:
        raise NotFound(f"no change {cid}; 'immctl change list' shows the pending ones")
    return row


def _state(row: dict[str, Any], at: datetime | None = None) -> str:
    if row["state"] == "pending" and (at or datetime.now(UTC)) >= _parse_time(row["expires_at"]):
        return "expired"
    return str(row["state"])


def _approvals(conn: Connection, cid: str) -> list[dict[str, Any]]:
    return query(conn, "SELECT operator, fingerprint, actor, at, ledger_index FROM approvals "
                       "WHERE change_id=? ORDER BY ledger_index", (cid,))


def counted(conn: Connection, row: dict[str, Any]) -> list[str]:
    """The approvers whose approval counts now: listed, still registered with the same key,
    each operator and each key once."""
    allowed = set(json.loads(row["approvers"]))
    seen_ops: set[str] = set()
    seen_keys: set[str] = set()
    for a in _approvals(conn, row["id"]):
        op = operators.by_fingerprint(conn, a["fingerprint"])
        if op is None or op["name"] != a["operator"] or a["operator"] not in allowed:
            continue
        if a["operator"] in seen_ops or a["fingerprint"] in seen_keys:
            continue
        seen_ops.add(a["operator"])
        seen_keys.add(a["fingerprint"])
    return sorted(seen_ops)


def show(conn: Connection, cid: str) -> dict[str, Any]:
    row = _row(conn, cid)
    have = counted(conn, row)
    return {"id": row["id"], "action": row["action"], "target": row["target"],
            "terms": json.loads(row["terms"]), "statement": row["statement"],
            "protect": row["protect"], "approvals_needed": row["approvals_needed"],
            "approvers": json.loads(row["approvers"]), "approved_by": have,
            "approvals": _approvals(conn, cid), "requested_by": row["requested_by"],
            "created_at": row["created_at"], "expires_at": row["expires_at"],
            "state": _state(row), "result": json.loads(row["result"]) if row["result"] else None,
            "ledger_index": row["ledger_index"], "pending": _state(row) == "pending"}


def listing(conn: Connection, everything: bool = False) -> list[dict[str, Any]]:
    rows = query(conn, "SELECT id FROM changes ORDER BY created_at DESC, rowid DESC LIMIT 500")
    views = [show(conn, r["id"]) for r in rows]
    return views if everything else [v for v in views if v["state"] == "pending"]


def _finish(conn: Connection, catalog: Catalog, cid: str, state: str, actor: str,
            result: dict[str, Any]) -> None:
    body = {"type": "change", "action": state, "change": cid, "result": result, "actor": actor,
            "time": _time(datetime.now(UTC))}
    catalog.append(conn, "change", body)
    conn.execute("UPDATE changes SET state=?, result=? WHERE id=?",
                 (state, json.dumps(result, sort_keys=True), cid))


def cancel(conn: Connection, catalog: Catalog, actor: str, cid: str) -> dict[str, Any]:
    row = _row(conn, cid)
    state = _state(row)
    if state not in ("pending", "expired"):
        raise Conflict(f"change {cid} is {state}; only a pending change can be cancelled")
    _finish(conn, catalog, cid, "cancelled", actor, {"cancelled_by": actor})
    catalog.checkpoint(conn)
    return show(conn, cid)


def approve(conn: Connection, catalog: Catalog, actor: str, cid: str,
            signature: str) -> dict[str, Any]:
    """Verify one operator's SSHSIG over the change's statement and record it as an approval.

    Carries out catalog changes (channel set, image restore) in the same transaction once k
    distinct approvers have signed; rollout changes are left 'approved' for the caller.
    """
    row = _row(conn, cid)
    state = _state(row)
    if state == "expired":
        raise Conflict(f"change {cid} expired at {row['expires_at']} (requested by "
                       f"{row['requested_by']} at {row['created_at']}); it can no longer be "
                       "approved: ask for the change again", detail={"state": "expired"})
    if state != "pending":
        raise Conflict(f"change {cid} is {state}; only a pending change can be approved",
                       detail={"state": state})
    try:
        sig = sshsig.verify(signature, row["statement"].encode("utf-8"), sshsig.NAMESPACE,
                            "the signature")
    except sshsig.SshError as e:
        raise VerificationFailed(f"approval of change {cid} refused: {e}; sign exactly the "
                                 f"statement 'immctl change statement {cid}' prints, with "
                                 "ssh-keygen -Y sign -n imm") from None
    op = operators.by_fingerprint(conn, sig.fingerprint)
    if op is None:
        raise Forbidden(f"approval of change {cid} refused: key {sig.fingerprint} is not a "
                        "registered operator's key; 'immctl operator list' shows them",
                        detail={"fingerprint": sig.fingerprint})
    approvers = json.loads(row["approvers"])
    if op["name"] not in approvers:
        raise Forbidden(f"approval of change {cid} refused: operator {op['name']} is not an "
                        f"approver of {row['protect']} (approvers: {', '.join(approvers)})")
    twice = query_one(conn, "SELECT operator, fingerprint FROM approvals WHERE change_id=? AND "
                            "(operator=? OR fingerprint=?)", (cid, op["name"], sig.fingerprint))
    if twice:
        raise Conflict(f"operator {twice['operator']} (key {twice['fingerprint']}) already "
                       f"approved change {cid}; the same operator or key never counts twice")
    body = {"type": "approval", "change": cid, "statement": row["statement"],
            "operator": op["name"], "public_key": op["public_key"],
            "fingerprint": sig.fingerprint, "namespace": sshsig.NAMESPACE,
            "signature": signature.strip() + "\n", "actor": actor,
            "time": _time(datetime.now(UTC))}
    env, idx, text = catalog.append(conn, "approval", body)
    conn.execute("INSERT INTO approvals VALUES (?,?,?,?,?,?,?,?)",
                 (cid, op["name"], sig.fingerprint, body["signature"], actor, body["time"], idx,
                  text))
    have = counted(conn, row)
    if len(have) >= row["approvals_needed"]:
        conn.execute("UPDATE changes SET state='approved' WHERE id=?", (cid,))
        if row["action"] in CATALOG_ACTIONS:
            carry_out_catalog(conn, catalog, cid)
    catalog.checkpoint(conn)
    return show(conn, cid)


def on_behalf(row: dict[str, Any], have: list[str]) -> str:
    """How the ledger names who did a carried-out change."""
    return f"{row['requested_by']} via change {row['id']} approved by {', '.join(have)}"


def carry_out_catalog(conn: Connection, catalog: Catalog, cid: str) -> None:
    """Do an approved channel move or restore; a stale change fails, recorded, not raised."""
    row = _row(conn, cid)
    terms = json.loads(row["terms"])
    who = on_behalf(row, counted(conn, row))
    conn.execute("SAVEPOINT carry_out")
    try:
        if row["action"] == "channel-set":
            head = query_one(conn, "SELECT digest FROM channel_history WHERE name=? ORDER BY seq "
                                   "DESC LIMIT 1", (row["target"],))
            now_at = head["digest"] if head else None
            if now_at != terms["previous"]:
                raise Conflict(f"channel {row['target']} moved since change {cid} was requested "
                               f"(it was {terms['previous']}, now {now_at}); ask again")
            result = catalog.set_channel(conn, who, row["target"], terms["image"])
            result = {"channel": row["target"], "image": result["image"],
                      "digest": result["digest"], "ledger_index": result["ledger_index"]}
        else:
            r = catalog.restore(conn, who, terms["image"])
            result = {"restored": r["restored"], "ledger_index": r["ledger_index"]}
    except ImmError as e:
        conn.execute("ROLLBACK TO carry_out")
        conn.execute("RELEASE carry_out")
        _finish(conn, catalog, cid, "failed", who, {"error": e.message})
        return
    conn.execute("RELEASE carry_out")
    _finish(conn, catalog, cid, "applied", who, result)


def mark(conn: Connection, catalog: Catalog, cid: str, state: str,
         result: dict[str, Any]) -> dict[str, Any]:
    """Record the outcome of an approved change the caller carried out (a rollout)."""
    row = _row(conn, cid)
    _finish(conn, catalog, cid, state, on_behalf(row, counted(conn, row)), result)
    catalog.checkpoint(conn)
    return show(conn, cid)


def channels_at(conn: Connection, digest: str) -> list[str]:
    """The channels whose head is ``digest`` (what an image restore would put back live)."""
    return [r["name"] for r in query(
        conn, "SELECT h.name FROM channel_history h JOIN (SELECT name, max(seq) s FROM "
              "channel_history GROUP BY name) m ON h.name=m.name AND h.seq=m.s "
              "WHERE h.digest=? ORDER BY h.name", (digest,))]


def is_revoked(conn: Connection, digest: str) -> bool:
    return query_one(conn, "SELECT 1 AS x FROM revocations WHERE digest=? OR root=?",
                     (digest, digest)) is not None


def approved_rollouts(conn: Connection) -> list[dict[str, Any]]:
    """Approved rollout changes not yet carried out (a crash came between)."""
    return query(conn, "SELECT id FROM changes WHERE state='approved' AND action IN "
                       "('rollout-start', 'rollout-undo')")
