"""Who is on the other end of the socket, and may they change things.

A unix socket peer is identified once, from what the kernel recorded when it connected:
``SO_PEERCRED`` (uid, gid, pid) and ``SO_PEERGROUPS`` (its supplementary groups). Nothing is
ever looked up later by pid: a pid is recycled once its process exits, so ``/proc/<pid>`` may
describe somebody else by the time a request arrives. The actor's name is resolved once too.

A loopback TCP peer has no credentials the kernel will vouch for: it must present a bearer
token minted over the unix socket (see :mod:`imm.daemon.tokens`).

Admins (root, the daemon's own user, members of ``admin_group``) may change things; every other
peer that can reach the socket may only read.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..config import AdminRule

__all__ = ["AdminRule", "Peer", "is_admin", "make_peer", "peer_credentials", "unix_peer"]

# Linux's SO_PEERGROUPS (asm-generic/socket.h); Python does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS = 65536  # NGROUPS_MAX on Linux


def is_admin(uid: int, groups: set[int] | frozenset[int], rule: AdminRule,
             daemon_uid: int) -> bool:
    if uid == 0:
        return True
    if rule.owner_is_admin and uid == daemon_uid:
        return True
    gid = _admin_gid(rule.group)
    return gid is not None and gid in groups


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int | None
    groups: frozenset[int]
    admin: bool
    user: str = ""
    via: str = "socket"  # "socket", or "token <id>" for a loopback TCP request
    scope: str = ""  # a token's scope ("read" or "admin"); empty on the socket

    @property
    def actor(self) -> str:
        """How the ledger names who did something."""
        return f"{self.user} (uid {self.uid})"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def account_groups(uid: int, gid: int) -> set[int]:
    """Groups of ``uid`` in the account database (for immd itself, never for a peer)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return set(os.getgrouplist(name, gid))


@functools.lru_cache(maxsize=8)
def _admin_gid(admin_group: str) -> int | None:
    """The admin group's gid (cached: a missing group means a scan of /etc/group per call;
    cleared when the config is reloaded)."""
    if not admin_group:
        return None
    try:
        return grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return None


def make_peer(uid: int, gid: int, pid: int | None, rule: AdminRule,
              groups: set[int] | frozenset[int] | None = None) -> Peer:
    """A peer from credentials already established; ``groups`` None means the account
    database's groups of ``uid`` (used for immd's own identity only)."""
    gs = set(groups) if groups is not None else account_groups(uid, gid)
    gs.add(gid)
    admin = is_admin(uid, gs, rule, os.geteuid())
    return Peer(uid=uid, gid=gid, pid=pid, groups=frozenset(gs), admin=admin,
                user=user_name(uid))


def peer_groups(sock: Any) -> frozenset[int]:
    """The supplementary groups the kernel recorded for the peer when it connected."""
    size = 256 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == 34 and size < _MAX_GROUPS * 4:  # ERANGE: more groups than room
                size *= 4
                continue
            raise
        n = len(raw) // 4
        return frozenset(struct.unpack(f"{n}I", raw[:n * 4]))


def peer_credentials(sock: Any) -> tuple[int, int, int, frozenset[int]]:
    """``(pid, uid, gid, groups)`` of a unix socket peer, as the kernel saw it at connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                          struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid, peer_groups(sock)


def unix_peer(sock: Any, rule: AdminRule) -> Peer:
    pid, uid, gid, groups = peer_credentials(sock)
    return make_peer(uid, gid, pid, rule, groups)
