"""Who may change things: the admin rule, and how a config sets it."""

from __future__ import annotations

import grp
import os
import socket
import subprocess
from pathlib import Path

import pytest

from imm import config
from imm.daemon.auth import AdminRule, is_admin, make_peer, peer_credentials, unix_peer
from imm.errors import ConfigError

DAEMON_UID = 999
NOBODY = 65534


def test_root_is_always_admin() -> None:
    assert is_admin(0, frozenset(), AdminRule("nosuchgroup-imm", owner_is_admin=False), DAEMON_UID)


def test_the_daemons_own_user_only_when_the_config_says_so() -> None:
    assert is_admin(DAEMON_UID, frozenset(), AdminRule("nosuchgroup-imm"), DAEMON_UID)
    # a system install: local instances run as immd's user and must only read
    assert not is_admin(DAEMON_UID, frozenset(), AdminRule("nosuchgroup-imm", False), DAEMON_UID)


def test_members_of_the_admin_group() -> None:
    g = grp.getgrnam("nogroup")
    rule = AdminRule("nogroup", owner_is_admin=False)
    assert is_admin(12345, frozenset({g.gr_gid}), rule, DAEMON_UID)
    assert not is_admin(12345, frozenset({g.gr_gid + 1}), rule, DAEMON_UID)
    assert not is_admin(12345, frozenset({g.gr_gid}), AdminRule("nosuchgroup-imm"), DAEMON_UID)


def test_config_sets_the_rule() -> None:
    s = config.parse('[daemon]\nowner_is_admin = false\nadmin_group = "ops"\n', "t")
    assert s.admin_rule == AdminRule("ops", owner_is_admin=False)
    assert config.parse("", "t").admin_rule.owner_is_admin is True
    with pytest.raises(ConfigError, match="owner_is_admin"):
        config.parse('[daemon]\nowner_is_admin = "no"\n', "t")


def test_peer_credentials_are_the_kernels_record_of_the_connecting_process() -> None:
    """uid, pid and the supplementary groups come from SO_PEERCRED and SO_PEERGROUPS: the
    groups the peer had when it connected, whatever the account database says."""
    path = f"\0imm-test-{os.getpid()}"  # abstract: no file permissions in the way
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    try:
        child = subprocess.Popen(
            ["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX);"
             " s.connect('\\0' + sys.argv[1][1:]); sys.stdin.read()", "@" + path[1:]],
            stdin=subprocess.PIPE, user=NOBODY, group=NOBODY, extra_groups=[4242, 4343])
        conn, _ = srv.accept()
        try:
            pid, uid, gid, groups = peer_credentials(conn)
            assert (pid, uid, gid) == (child.pid, NOBODY, NOBODY)
            assert groups == frozenset({4242, 4343})
            peer = unix_peer(conn, AdminRule("nosuchgroup-imm", owner_is_admin=False))
            assert peer.user == "nobody" and peer.actor == f"nobody (uid {NOBODY})"
            assert not peer.admin
        finally:
            conn.close()
            child.communicate(b"")
    finally:
        srv.close()


def test_make_peer_never_reads_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = open

    def spy(file: object, *a: object, **k: object) -> object:
        opened.append(str(file))
        return real_open(file, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy)
    make_peer(NOBODY, NOBODY, os.getpid(), AdminRule("nosuchgroup-imm"), frozenset({7}))
    assert not [f for f in opened if f.startswith("/proc/")]


def test_image_roots_must_be_absolute_directories() -> None:
    assert config.parse('[daemon]\nimage_roots = ["/srv/images"]\n', "t").image_roots == [
        Path("/srv/images")]
    assert config.parse("", "t").image_roots == []
    for bad in ('"/srv"', '["images"]', "[1]"):
        with pytest.raises(ConfigError, match="image_roots"):
            config.parse(f"[daemon]\nimage_roots = {bad}\n", "t")
