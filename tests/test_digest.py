"""Content digests: files, trees, and what a tampered tree looks like."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from imm.catalog import digest as digest_mod
from imm.catalog.canonical import digest_of
from imm.catalog.digest import (
    content_digest,
    diff_manifests,
    file_digest,
    tree_digest,
    tree_manifest,
)
from imm.errors import BadRequest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- file_digest ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, digest_mod.CHUNK_SIZE - 1, digest_mod.CHUNK_SIZE, digest_mod.CHUNK_SIZE + 1],
)
def test_file_digest_matches_hashlib_around_chunk_edges(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    assert file_digest(write(tmp_path / "f", data)) == sha(data)


def test_file_digest_pipelined_large_file_matches_sha256sum(tmp_path: Path) -> None:
    size = digest_mod.PIPELINE_MIN_SIZE + digest_mod.CHUNK_SIZE * 3 + 12345
    data = os.urandom(size)
    path = write(tmp_path / "disk.img", data)
    seen: list[int] = []
    got = file_digest(path, progress=seen.append)
    assert got == sha(data)
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert got == "sha256:" + out.stdout.split()[0]
    assert seen[-1] == size
    assert seen == sorted(seen)
    assert len(seen) > 3  # progress while hashing, not only at the end


def test_file_digest_small_file_reports_progress(tmp_path: Path) -> None:
    seen: list[int] = []
    file_digest(write(tmp_path / "f", b"abc"), progress=seen.append)
    assert seen[-1] == 3


def test_file_digest_progress_error_stops_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path / "f", os.urandom(digest_mod.PIPELINE_MIN_SIZE + 1))

    def boom(n: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        file_digest(path, progress=boom)


def test_file_digest_refuses_missing_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        file_digest(tmp_path / "nope")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadRequest, match="FIFO"):
        file_digest(fifo)  # must not block waiting for a writer


# --- tree_manifest ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "img"
    write(root / "bin" / "app", b"#!/bin/sh\necho hi\n", 0o755)
    write(root / "etc" / "app.conf", b"port=8080\n")
    write(root / "a-b", b"dash")
    (root / "empty").mkdir()
    (root / "current").symlink_to("bin/app")
    (root / "dangling").symlink_to("/does/not/exist")
    return root


def test_tree_manifest_entries(tree: Path) -> None:
    m = tree_manifest(tree)
    assert m["version"] == 1
    assert m["entries"] == [
        {"path": "a-b", "type": "file", "mode": "0644", "size": 4, "digest": sha(b"dash")},
        {"path": "bin", "type": "dir"},
        {
            "path": "bin/app", "type": "file", "mode": "0755", "size": 18,
            "digest": sha(b"#!/bin/sh\necho hi\n"),
        },
        {"path": "current", "type": "symlink", "target": "bin/app"},
        {"path": "dangling", "type": "symlink", "target": "/does/not/exist"},
        {"path": "empty", "type": "dir"},
        {"path": "etc", "type": "dir"},
        {
            "path": "etc/app.conf", "type": "file", "mode": "0644", "size": 10,
            "digest": sha(b"port=8080\n"),
        },
    ]
    assert tree_digest(m) == digest_of(m)


def test_tree_manifest_sorts_bytewise(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for name in ["b", "a/x", "a-b", "a.b", "Z", "é", "a0"]:
        write(root / name, b"")
    paths = [e["path"] for e in tree_manifest(root)["entries"]]
    assert paths == sorted(paths, key=lambda p: p.encode())
    assert paths.index("a-b") < paths.index("a/x")  # '-' (0x2d) sorts before '/' (0x2f)


def test_tree_digest_is_stable_and_ignores_irrelevant_metadata(tmp_path: Path, tree: Path) -> None:
    before = tree_digest(tree_manifest(tree))
    # timestamps, group/other bits and file creation order do not count
    os.utime(tree / "etc" / "app.conf", (1, 1))
    (tree / "etc" / "app.conf").chmod(0o600)
    (tree / "bin" / "app").chmod(0o700)
    assert tree_digest(tree_manifest(tree)) == before
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    assert tree_digest(tree_manifest(copy)) == before


@pytest.mark.parametrize(
    "change",
    ["content", "exec bit", "new empty dir", "symlink target", "file becomes symlink"],
)
def test_tree_digest_changes_with_content(tree: Path, change: str) -> None:
    before = tree_manifest(tree)
    if change == "content":
        (tree / "etc" / "app.conf").write_bytes(b"port=9090\n")
    elif change == "exec bit":
        (tree / "etc" / "app.conf").chmod(0o755)
    elif change == "new empty dir":
        (tree / "empty" / "more").mkdir()
    elif change == "symlink target":
        (tree / "current").unlink()
        (tree / "current").symlink_to("etc/app.conf")
    else:
        (tree / "a-b").unlink()
        (tree / "a-b").symlink_to("dash")
    assert tree_digest(tree_manifest(tree)) != tree_digest(before)


def test_tree_manifest_refuses_special_files(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(BadRequest, match=r"r/pipe is a FIFO"):
        tree_manifest(root)
    (root / "pipe").unlink()
    sock_path = root / "s"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        with pytest.raises(BadRequest, match=r"r/s is a socket"):
            tree_manifest(root)
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_tree_manifest_refuses_unreadable_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write(root / "secret", b"x", 0o000)
    with pytest.raises(BadRequest, match=r"cannot read .*r/secret"):
        tree_manifest(root)


def test_tree_manifest_refuses_unreadable_file_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    write(root / "secret", b"x")
    real_open = os.open

    def deny(path: object, flags: int, *args: object) -> int:
        if str(path).endswith("secret"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(digest_mod.os, "open", deny)
    with pytest.raises(BadRequest, match=r"cannot read .*r/secret: Permission denied"):
        tree_manifest(root)


def test_tree_manifest_refuses_unlistable_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    (root / "locked").mkdir(parents=True)
    real_scandir = os.scandir

    def deny(path: str) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(digest_mod.os, "scandir", deny)
    with pytest.raises(BadRequest, match=r"cannot list directory .*r/locked: Permission denied"):
        tree_manifest(root)


def test_tree_manifest_refuses_non_utf8_name(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    bad = os.fsencode(str(root)) + b"/caf\xe9"
    with open(bad, "wb"):
        pass
    with pytest.raises(BadRequest) as e:
        tree_manifest(root)
    assert "/r/caf\\xe9'" in e.value.message and "not valid UTF-8" in e.value.message
    os.unlink(bad)
    os.symlink(b"caf\xe9", os.fsencode(str(root)) + b"/link")
    with pytest.raises(BadRequest, match=r"the target of symlink .*/r/link is not valid UTF-8"):
        tree_manifest(root)


def test_tree_manifest_unicode_name_ok(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write(root / "café", b"")
    assert tree_manifest(root)["entries"][0]["path"] == "café"


# --- content_digest --------------------------------------------------------------------------


def test_content_digest_file_and_tree(tmp_path: Path, tree: Path) -> None:
    disk = write(tmp_path / "disk.raw", b"\0" * 4096)
    assert content_digest(disk) == ("file", sha(b"\0" * 4096), None)
    kind, d, m = content_digest(tree)
    assert kind == "tree" and m == tree_manifest(tree) and d == tree_digest(m)


def test_content_digest_follows_top_level_symlink(tmp_path: Path, tree: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tree)
    assert content_digest(link)[1] == content_digest(tree)[1]


def test_content_digest_errors(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match=r"path .*missing does not exist; give the path"):
        content_digest(tmp_path / "missing")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(BadRequest, match=r"dangling is a symlink to .*gone.*does not exist"):
        content_digest(tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadRequest, match=r"is a FIFO, not a regular file or directory"):
        content_digest(tmp_path / "fifo")


def test_content_digest_device(tmp_path: Path) -> None:
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(BadRequest, match=r"/dev/null is a character device"):
        content_digest(Path("/dev/null"))


# --- diff_manifests --------------------------------------------------------------------------


def test_diff_manifests_names_what_changed(tree: Path) -> None:
    old = tree_manifest(tree)
    (tree / "etc" / "app.conf").write_bytes(b"port=6666\n")  # tampered config
    (tree / "bin" / "app").chmod(0o644)  # lost exec bit
    (tree / "a-b").unlink()
    (tree / "bin" / "backdoor").write_bytes(b"nc -l 4444")
    (tree / "current").unlink()
    (tree / "current").symlink_to("bin/backdoor")
    new = tree_manifest(tree)
    assert diff_manifests(old, new) == {
        "added": ["bin/backdoor"],
        "removed": ["a-b"],
        "changed": ["bin/app", "current", "etc/app.conf"],
    }
    assert diff_manifests(new, new) == {"added": [], "removed": [], "changed": []}


def test_open_under_roots_with_a_directory_cache_checks_each_file(tmp_path: Path) -> None:
    """Many files opened with one ``dirs`` cache: the directory is resolved once, and a file
    that is a symlink is still followed and judged where it points, as without the cache."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"secret")
    (root / "a.raw").write_bytes(b"a")
    (root / "inside-link.raw").symlink_to(root / "a.raw")
    (root / "outside-link.raw").symlink_to(outside)
    (tmp_path / "via").symlink_to(root)  # a directory reached through a symlink
    dirs: dict[str, str] = {}
    for p in (root / "a.raw", root / "inside-link.raw", tmp_path / "via" / "a.raw"):
        fd = digest_mod.open_under_roots(str(p), [root], dirs)
        try:
            assert os.read(fd, 10) == b"a"
        finally:
            os.close(fd)
    assert dirs == {str(root): str(root), str(tmp_path / "via"): str(root)}
    with pytest.raises(BadRequest, match="not under any of the configured image_roots"):
        digest_mod.open_under_roots(str(root / "outside-link.raw"), [root], dirs)
    with pytest.raises(BadRequest, match="does not exist"):
        digest_mod.open_under_roots(str(root / "absent.raw"), [root], dirs)
