"""Who is on the other end of the socket, and may they change things.

Unix socket peers are identified by ``SO_PEERCRED`` (kernel-attested uid/gid/pid). Loopback TCP
peers (only when ``daemon.tcp`` is configured) are identified like identd does: the kernel's
socket table in ``/proc/net/tcp{,6}`` names the uid owning the peer's end of the connection.

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

from ..config import AdminRule

__all__ = ["AdminRule", "Peer", "is_admin", "make_peer", "tcp_peer", "unix_peer"]


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

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid{self.uid}"

    @property
    def actor(self) -> str:
        """How the ledger names who did something."""
        return f"{self.user} (uid {self.uid})"


def _proc_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _user_groups(uid: int, gid: int) -> set[int]:
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


def make_peer(uid: int, gid: int, pid: int | None, rule: AdminRule) -> Peer:
    groups = _proc_groups(pid) if pid else set()
    if not groups:
        groups = _user_groups(uid, gid)
    groups.add(gid)
    admin = is_admin(uid, groups, rule, os.geteuid())
    return Peer(uid=uid, gid=gid, pid=pid, groups=frozenset(groups), admin=admin)


def unix_peer(sock: socket.socket, rule: AdminRule) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return make_peer(uid, gid, pid, rule)


def _hex_addr(host: str, port: int, family: int) -> str:
    packed = socket.inet_pton(family, host)
    if family == socket.AF_INET:
        return f"{struct.unpack('<I', packed)[0]:08X}:{port:04X}"
    words = struct.unpack("<4I", struct.unpack(">16s", packed)[0])
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def tcp_peer(peer: tuple[str, int], local: tuple[str, int], family: int,
             rule: AdminRule) -> Peer | None:
    """The uid of the process holding the other end of a loopback TCP connection."""
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    want_local = _hex_addr(peer[0], peer[1], family)
    want_remote = _hex_addr(local[0], local[1], family)
    try:
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want_local and parts[2] == want_remote:
                    uid = int(parts[7])
                    try:
                        gid = pwd.getpwuid(uid).pw_gid
                    except KeyError:
                        gid = -1
                    return make_peer(uid, gid, None, rule)
    except OSError:
        return None
    return None
