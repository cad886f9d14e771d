"""Who may change things: the admin rule, and how a config sets it."""

from __future__ import annotations

import grp

import pytest

from imm import config
from imm.daemon.auth import AdminRule, is_admin
from imm.errors import ConfigError

DAEMON_UID = 999


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
