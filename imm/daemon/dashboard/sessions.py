"""One-time login links and browser sessions of the dashboard.

A link is minted over the unix socket for the kernel-identified peer (``immctl dashboard``); it
works once, within ``LINK_TTL_S``. Redeeming it opens a session that carries the peer's actor
and role (reader or admin) for ``SESSION_TTL_S``, with its own CSRF token. Only hashes of the
link tokens are kept; everything lives in the daemon's memory and ends with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

LINK_TTL_S = 60.0
SESSION_TTL_S = 8 * 3600.0


@dataclass(frozen=True)
class Identity:
    actor: str
    user: str
    admin: bool

    @property
    def role(self) -> str:
        return "admin" if self.admin else "reader"


@dataclass(frozen=True)
class Session:
    sid: str
    who: Identity
    csrf: str
    expires: float

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


def _h(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Logins:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 link_ttl: float = LINK_TTL_S, session_ttl: float = SESSION_TTL_S) -> None:
        self.clock = clock
        self.link_ttl = link_ttl
        self.session_ttl = session_ttl
        self._links: dict[str, tuple[Identity, float]] = {}
        self._sessions: dict[str, Session] = {}

    def _sweep(self) -> None:
        now = self.clock()
        for k in [k for k, (_, exp) in self._links.items() if exp <= now]:
            del self._links[k]
        for k in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[k]

    def mint(self, who: Identity) -> str:
        self._sweep()
        token = secrets.token_urlsafe(32)
        self._links[_h(token)] = (who, self.clock() + self.link_ttl)
        return token

    def redeem(self, token: str) -> Session | None:
        """The session a link opens, or None if it is unknown, used or expired (it is spent)."""
        entry = self._links.pop(_h(token), None)
        if entry is None or entry[1] <= self.clock():
            return None
        s = Session(sid=secrets.token_urlsafe(32), who=entry[0], csrf=secrets.token_urlsafe(32),
                    expires=self.clock() + self.session_ttl)
        self._sessions[s.sid] = s
        return s

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None or s.expires <= self.clock():
            self._sessions.pop(sid or "", None)
            return None
        return s
