"""Who may read what: the mode-bit and POSIX ACL checks immd applies for its caller."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from imm.catalog.digest import Reader, _acl_allows

R, W, X = 4, 2, 1
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class St:
    """The fields of a stat result the checks read."""

    def __init__(self, mode: int, uid: int, gid: int) -> None:
        self.st_mode, self.st_uid, self.st_gid = stat.S_IFREG | mode, uid, gid


def may(tmp_path: Path, mode: int, reader: Reader, need: int = R, uid: int = 1000,
        gid: int = 1000) -> bool:
    f = tmp_path / "f"
    f.write_text("x")
    fd = os.open(f, os.O_RDONLY)
    try:
        return reader.may(fd, St(mode, uid, gid), need)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_mode_bits_owner_group_other(tmp_path: Path) -> None:
    assert may(tmp_path, 0o400, Reader(1000, set()))
    assert not may(tmp_path, 0o040, Reader(1000, {1000}))  # the owner class decides for the owner
    assert may(tmp_path, 0o040, Reader(2000, {1000}))
    assert not may(tmp_path, 0o004, Reader(2000, {1000}))  # the group class decides for members
    assert may(tmp_path, 0o004, Reader(3000, {3000}))
    assert not may(tmp_path, 0o600, Reader(3000, {3000}))
    assert may(tmp_path, 0o000, Reader(0, set()))  # root reads anything
    assert not may(tmp_path, 0o644, Reader(3000, set()), need=R | X)  # a directory needs x


def test_acl_named_user_is_masked() -> None:
    st = St(0o640, 1000, 1000)
    acl = [(USER_OBJ, 6, 0), (USER, 4, 2000), (GROUP_OBJ, 4, 0), (MASK, 4, 0), (OTHER, 0, 0)]
    assert _acl_allows(acl, st, 2000, frozenset(), R)  # type: ignore[arg-type]
    masked = [(USER_OBJ, 6, 0), (USER, 4, 2000), (GROUP_OBJ, 4, 0), (MASK, 0, 0),
              (OTHER, 0, 0)]
    assert not _acl_allows(masked, st, 2000, frozenset(), R)  # type: ignore[arg-type]


def test_acl_owning_group_denied_although_the_mask_shows_rwx() -> None:
    """With an ACL the mode's group bits are the mask: a member of the owning group whose ACL
    entry grants nothing must not pass, though a plain mode check would let it."""
    st = St(0o670, 1000, 1000)
    acl = [(USER_OBJ, 6, 0), (GROUP_OBJ, 0, 0), (GROUP, 7, 50), (MASK, 7, 0), (OTHER, 0, 0)]
    assert not _acl_allows(acl, st, 2000, frozenset({1000}), R)  # type: ignore[arg-type]
    assert _acl_allows(acl, st, 2000, frozenset({50}), R)  # type: ignore[arg-type]
    # matching a group entry that does not grant it ends the search: other is not consulted
    acl_other = [(USER_OBJ, 6, 0), (GROUP_OBJ, 0, 0), (MASK, 7, 0), (OTHER, 4, 0)]
    assert not _acl_allows(acl_other, st, 2000, frozenset({1000}), R)  # type: ignore[arg-type]
    assert _acl_allows(acl_other, st, 3000, frozenset(), R)  # type: ignore[arg-type]
