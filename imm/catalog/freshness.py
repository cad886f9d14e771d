"""Fresh metadata: checkpoints that carry their time, channel heads that expire.

A validly signed but stale view (a freeze attack, in TUF's words) goes unnoticed unless what
is signed says when. Two things here:

* **Checkpoint time.** imm's checkpoints carry one extension line (C2SP tlog-checkpoint allows
  opaque, non-empty extension lines after the root) ``time <POSIX seconds>``, the time the log
  signed that view, in the same form as the timestamp line of a C2SP cosignature/v1 message.
  The log re-signs its checkpoint (same size and root, new time) before it grows old, so a
  verifier can demand ``--max-age``. Checkpoint parsers that ignore extension lines (Go's
  sumdb/note and tlog, imm's own) still read size and root.
* **Channel heads.** Each channel's current head is published as a signed ``channel-head``
  statement (DSSE, the daemon's key) with ``issued`` and ``expires`` times, re-signed in the
  background before it expires. Heads are not ledger records (re-signing 10k heads a day would
  bloat the log); each names the ledger leaf of the channel move it attests.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError, NotFound, VerificationFailed
from ..store import Connection
from . import dsse
from .canonical import canonical_json
from .service import Catalog, query, query_one

TIME_LINE = re.compile(r"^time (0|[1-9][0-9]{0,18})$")
DEFAULT_HEAD_TTL_S = 24 * 3600
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, where: str) -> int:
    """'90s', '10m', '24h', '7d' (or a positive integer of seconds) → seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m and int(m.group(1)) > 0:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ConfigError(f"{where} {value!r} is not a duration; use e.g. 90s, 10m, 24h or 7d")


def human(seconds: int) -> str:
    """3725 → '1h02m05s'."""
    seconds = max(0, int(seconds))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unix_now() -> int:
    return int(datetime.now(UTC).timestamp())


# -- checkpoints --------------------------------------------------------------------------------

def time_extension(when: int) -> str:
    return f"time {int(when)}\n"


def checkpoint_time(text: str) -> int | None:
    """The ``time N`` extension line of checkpoint text (signed part), or None."""
    lines = text.rstrip("\n").split("\n")[3:]
    times = [int(m.group(1)) for ln in lines if (m := TIME_LINE.match(ln))]
    if len(times) > 1:
        raise ValueError("malformed checkpoint: more than one 'time' extension line")
    return times[0] if times else None


def check_age(issued: int | None, max_age_s: int, what: str, now: int | None = None) -> int:
    """Refuse metadata older than ``max_age_s``; return its age. Raises VerificationFailed."""
    if issued is None:
        raise VerificationFailed(f"{what} carries no time, so its age cannot be checked against "
                                 f"--max-age {human(max_age_s)}; it was signed before imm "
                                 "stamped checkpoints: fetch a fresh one")
    now = unix_now() if now is None else now
    age = now - issued
    if age > max_age_s:
        raise VerificationFailed(
            f"{what} is {human(age)} old (signed at {iso(issued)}), older than the "
            f"--max-age {human(max_age_s)} allowed; the log or the mirror that served it may be "
            "frozen: fetch a fresh one", detail={"age_s": age, "max_age_s": max_age_s})
    return age


def checkpoint_due(conn: Connection, catalog: Catalog, refresh_s: int,
                   now: int) -> bool:
    note = query_one(conn, "SELECT value FROM meta WHERE key='checkpoint'")
    if note is None:
        return True
    text = note["value"][: note["value"].rfind("\n\n") + 1]
    when = checkpoint_time(text)
    return when is None or now - when >= refresh_s


# -- channel heads ------------------------------------------------------------------------------

def _heads(conn: Connection) -> list[dict[str, Any]]:
    return query(conn, """
        SELECT h.name, h.seq, h.digest, h.ledger_index FROM channel_history h
        JOIN (SELECT name, max(seq) s FROM channel_history GROUP BY name) m
          ON h.name = m.name AND h.seq = m.s ORDER BY h.name""")


def sign_head(conn: Connection, catalog: Catalog, head: dict[str, Any], ttl_s: int,
              now: int) -> dict[str, Any]:
    body = {"type": "channel-head", "origin": catalog.origin, "channel": head["name"],
            "seq": head["seq"], "digest": head["digest"], "ledger_index": head["ledger_index"],
            "issued": iso(now), "expires": iso(now + ttl_s)}
    env = catalog._sign_with(catalog.keyring.private, "channel-head", body)
    conn.execute("INSERT INTO channel_heads VALUES (?,?,?,?,?,?) ON CONFLICT (name) DO UPDATE "
                 "SET seq = excluded.seq, digest = excluded.digest, issued_at = "
                 "excluded.issued_at, expires_at = excluded.expires_at, envelope = "
                 "excluded.envelope",
                 (head["name"], head["seq"], head["digest"], now, now + ttl_s,
                  canonical_json(env).decode()))
    return env


def refresh(conn: Connection, catalog: Catalog, ttl_s: int,
            now: int | None = None) -> dict[str, int]:
    """Re-sign every head that moved, is missing, or has less than half its life left; and the
    checkpoint when its time is older than half a TTL. Returns what was re-signed."""
    now = unix_now() if now is None else now
    have = {r["name"]: r for r in query(conn, "SELECT name, seq, expires_at FROM channel_heads")}
    signed = 0
    for head in _heads(conn):
        cur = have.get(head["name"])
        if cur is None or cur["seq"] != head["seq"] or cur["expires_at"] - now < ttl_s // 2:
            sign_head(conn, catalog, head, ttl_s, now)
            signed += 1
    resigned_checkpoint = 0
    if checkpoint_due(conn, catalog, max(1, ttl_s // 2), now):
        catalog.checkpoint(conn, now)
        resigned_checkpoint = 1
    return {"heads": signed, "checkpoint": resigned_checkpoint}


def head(conn: Connection, catalog: Catalog, name: str, ttl_s: int) -> dict[str, Any]:
    """A channel's signed head statement, re-signed first if it is missing, moved or expiring."""
    catalog._check_channel(name)
    cur = query_one(conn, "SELECT h.name, h.seq, h.digest, h.ledger_index FROM channel_history h "
                          "WHERE h.name=? ORDER BY seq DESC LIMIT 1", (name,))
    if cur is None:
        raise NotFound(f"channel {name!r} does not exist")
    now = unix_now()
    row = query_one(conn, "SELECT seq, expires_at, envelope FROM channel_heads WHERE name=?",
                    (name,))
    if row is None or row["seq"] != cur["seq"] or row["expires_at"] - now < ttl_s // 2:
        env = sign_head(conn, catalog, cur, ttl_s, now)
    else:
        env = json.loads(row["envelope"])
    return {"channel": name, "statement": env, "body": dsse.body_of(env)}


def verify_head(envelope: dict[str, Any], pub: Any, keyid: str, channel: str | None,
                max_age_s: int | None, now: int | None = None) -> dict[str, Any]:
    """Check a channel-head statement offline: signature, channel, expiry, and max age."""
    try:
        kind, body, _ = dsse.verify(envelope, lambda k: pub if k == keyid else None)
    except dsse.EnvelopeError as e:
        raise VerificationFailed(f"channel head statement does not verify with the given key: "
                                 f"{e}") from None
    if kind != "channel-head":
        raise VerificationFailed(f"the statement is a {kind!r} record, not a channel head")
    if channel is not None and body.get("channel") != channel:
        raise VerificationFailed(f"the statement is the head of {body.get('channel')!r}, not "
                                 f"{channel!r}")
    now = unix_now() if now is None else now
    expires = int(datetime.strptime(body["expires"], "%Y-%m-%dT%H:%M:%SZ")
                  .replace(tzinfo=UTC).timestamp())
    issued = int(datetime.strptime(body["issued"], "%Y-%m-%dT%H:%M:%SZ")
                 .replace(tzinfo=UTC).timestamp())
    if now >= expires:
        raise VerificationFailed(
            f"the head of channel {body['channel']} expired at {body['expires']} "
            f"({human(now - expires)} ago; signed {human(now - issued)} ago); a live daemon "
            "re-signs heads before they expire: fetch a fresh one",
            detail={"age_s": now - issued, "expired_s": now - expires})
    if max_age_s is not None:
        check_age(issued, max_age_s, f"the head of channel {body['channel']}", now)
    return body
