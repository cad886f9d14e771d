"""Bearer tokens for the loopback TCP listener, minted over the unix socket.

A TCP peer has no credentials the kernel vouches for, so immd asks for a token that a peer
the kernel did identify (on the unix socket) minted for itself: ``immctl token create --ttl
1h [--scope admin]``. A token is ``imm_<id>_<secret>``; immd keeps only the SHA-256 of the
secret (in ``STATE_DIR/tokens.json``, mode 0600), so the file does not give tokens away. Tokens
expire, can be revoked, carry the minting user's uid and a scope (``read``, or ``admin`` for
admins only), and are never logged: only their id is ever shown after minting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRequest, Forbidden, NotFound, StoreCorrupted

SCOPES = ("read", "admin")
MAX_TTL_S = 30 * 86400
MIN_TTL_S = 60
MAX_ACTIVE_PER_UID = 100
KEEP_EXPIRED_S = 86400  # expired and revoked tokens stay listed this long
_TOKEN = re.compile(r"imm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)
_TTL = re.compile(r"([0-9]{1,9})([smhd]?)", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds of a DURATION such as ``90s``, ``30m``, ``12h`` or ``7d``."""
    m = _TTL.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise BadRequest(f"ttl {text!r} is not a duration; use e.g. 30m, 12h or 7d")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise BadRequest(f"ttl {text!r} is out of range: a token lives from 1m to 30d")
    return seconds


@dataclass
class TokenRecord:
    id: str
    sha256: str
    uid: int
    user: str
    scope: str
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    revoked_by: str | None = None

    def public(self, now: float) -> dict[str, Any]:
        state = ("revoked" if self.revoked_at is not None else
                 "expired" if self.expires_at <= now else "active")
        out = {k: v for k, v in asdict(self).items() if k != "sha256"}
        out["state"] = state
        return out


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class TokenStore:
    """Tokens in memory, written through to a 0600 JSON file on every change (blocking: the
    daemon calls the changing methods off the event loop; :meth:`check` is memory-only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            self._tokens = {t["id"]: TokenRecord(**t) for t in data["tokens"]}
        except (ValueError, KeyError, TypeError) as e:
            raise StoreCorrupted(
                f"{self.path} is not a token file ({e}); move it away (every token is then "
                "revoked) and mint new ones with 'immctl token create'") from None

    def _save(self, now: float) -> None:
        keep = {i: t for i, t in self._tokens.items()
                if max(t.expires_at, t.revoked_at or 0) > now - KEEP_EXPIRED_S}
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        data = json.dumps({"tokens": [asdict(t) for t in keep.values()]}, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        self._tokens = keep

    def create(self, uid: int, user: str, admin: bool, scope: str, ttl_s: int,
               now: float | None = None) -> tuple[str, dict[str, Any]]:
        """Mint a token for ``uid``; return ``(token, its public record)``."""
        if scope not in SCOPES:
            raise BadRequest(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        if scope == "admin" and not admin:
            raise Forbidden(f"{user} (uid {uid}) is not an admin and may only mint read tokens; "
                            "drop --scope admin")
        t = time.time() if now is None else now
        with self._lock:
            active = [x for x in self._tokens.values()
                      if x.uid == uid and x.revoked_at is None and x.expires_at > t]
            if len(active) >= MAX_ACTIVE_PER_UID:
                raise Forbidden(f"{user} already has {len(active)} active tokens (the limit); "
                                "revoke some with 'immctl token revoke ID'")
            tid = secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            rec = TokenRecord(id=tid, sha256=_hash(secret), uid=uid, user=user, scope=scope,
                              created_at=int(t), expires_at=int(t) + ttl_s)
            self._tokens[tid] = rec
            try:
                self._save(t)
            except BaseException:
                self._tokens.pop(tid, None)
                raise
        return f"imm_{tid}_{secret}", rec.public(t)

    def listing(self, uid: int | None, now: float | None = None) -> list[dict[str, Any]]:
        """Tokens of ``uid`` (every token for ``None``: an admin asking)."""
        t = time.time() if now is None else now
        with self._lock:
            return [x.public(t) for x in sorted(self._tokens.values(),
                                                 key=lambda r: (r.created_at, r.id))
                    if uid is None or x.uid == uid]

    def revoke(self, tid: str, uid: int, admin: bool, actor: str,
               now: float | None = None) -> dict[str, Any]:
        t = time.time() if now is None else now
        with self._lock:
            rec = self._tokens.get(tid)
            if rec is None or (rec.uid != uid and not admin):
                raise NotFound(f"no token {tid!r} of yours; 'immctl token list' shows them")
            if rec.revoked_at is None:
                rec.revoked_at, rec.revoked_by = int(t), actor
                try:
                    self._save(t)
                except BaseException:
                    rec.revoked_at = rec.revoked_by = None
                    raise
            return rec.public(t)

    def check(self, token: str, now: float | None = None) -> TokenRecord | None:
        """The live record a presented token stands for, or None (unknown, wrong secret,
        expired or revoked). Constant-time in the secret."""
        m = _TOKEN.fullmatch(token)
        if not m:
            return None
        rec = self._tokens.get(m.group(1))
        if rec is None or not hmac.compare_digest(rec.sha256, _hash(m.group(2))):
            return None
        t = time.time() if now is None else now
        if rec.revoked_at is not None or rec.expires_at <= t:
            return None
        return rec
