"""Content digests of images: a disk file's bytes, or a directory tree's per-file manifest.

These functions block (they read whole images); the daemon runs them in an executor.

Large files are hashed by a two-stage pipeline: the calling thread reads into one of a few
reusable buffers while a helper thread hashes the previous one. Both ``readinto`` and
``hashlib``'s ``update`` release the GIL, so reading (a page-cache copy, or real disk I/O on a
cold cache) overlaps hashing and the whole runs at the speed of SHA-256 itself rather than
SHA-256 plus the copy. ``mmap`` would avoid the copy too, but a file truncated under a mapping
kills the process with SIGBUS, which a daemon must not risk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imm.catalog.canonical import digest_of
from imm.errors import BadRequest

CHUNK_SIZE = 2 << 20  # 2 MiB: the best of 256 KiB..8 MiB measured with bench/bench_hash.py
PIPELINE_BUFFERS = 3
PIPELINE_MIN_SIZE = 8 << 20  # below this a helper thread costs more than it saves
TREE_MANIFEST_VERSION = 1

Progress = Callable[[int], None]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def file_digest(path: Path, progress: Progress | None = None) -> str:
    """``sha256:<hex>`` of the bytes of the regular file at ``path`` (symlinks followed).

    ``progress``, when given, is called in the calling thread with the total number of bytes
    hashed so far, after every chunk and once at the end.
    """
    fd, st = _open_regular(Path(path), follow=True)
    try:
        digest, _ = _hash_fd(fd, st, Path(path), bytearray(CHUNK_SIZE), progress)
    finally:
        os.close(fd)
    return digest


def tree_manifest(root: Path) -> dict[str, Any]:
    """Deterministic manifest of every entry under the directory ``root`` (not ``root`` itself).

    Entries are sorted by POSIX relative path, bytewise:

    - file: ``{"path", "type": "file", "mode": "0755" | "0644", "size", "digest"}``; only the
      owner's exec bit is recorded, since ownership and other bits do not survive copies;
    - symlink: ``{"path", "type": "symlink", "target"}``; never followed;
    - dir: ``{"path", "type": "dir"}``, so empty directories count.

    Devices, sockets and FIFOs, unreadable entries and names that are not UTF-8 are refused with
    a BadRequest that names them.
    """
    root = Path(root)
    buf = bytearray(CHUNK_SIZE)
    entries: list[dict[str, Any]] = []
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        dir_path, rel_dir = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                children = list(it)
        except OSError as e:
            raise BadRequest(
                f"cannot list directory {dir_path}: {_why(e)}; "
                "make it readable by the daemon's user",
                detail={"path": dir_path},
            ) from e
        for child in children:
            rel = _checked_name(child.name, rel_dir, dir_path)
            entries.append(_entry(child, rel, buf))
            if entries[-1]["type"] == "dir":
                stack.append((child.path, rel))
    entries.sort(key=lambda e: e["path"].encode("utf-8"))
    return {"version": TREE_MANIFEST_VERSION, "entries": entries}


def tree_digest(manifest: dict[str, Any]) -> str:
    """Content digest of a directory image: the digest of its canonical tree manifest."""
    return digest_of(manifest)


def content_digest(path: Path) -> tuple[str, str, dict[str, Any] | None]:
    """``(kind, digest, manifest)`` of an image at ``path``: a disk file or a directory tree.

    ``kind`` is ``"file"`` (manifest ``None``) or ``"tree"`` (manifest from
    :func:`tree_manifest`). A symlink given as ``path`` itself is followed.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        if os.path.lexists(path):
            raise BadRequest(
                f"path {path} is a symlink to {os.readlink(path)!r}, which does not exist; "
                "point it at the image file or directory",
                detail={"path": str(path)},
            ) from e
        raise BadRequest(
            f"path {path} does not exist; give the path of an image disk file or directory "
            "(relative paths are resolved by the daemon, so an absolute path is safest)",
            detail={"path": str(path)},
        ) from e
    except OSError as e:
        raise BadRequest(f"cannot stat {path}: {_why(e)}", detail={"path": str(path)}) from e
    if stat.S_ISREG(st.st_mode):
        return "file", file_digest(path), None
    if stat.S_ISDIR(st.st_mode):
        manifest = tree_manifest(path)
        return "tree", tree_digest(manifest), manifest
    raise BadRequest(
        f"path {path} is a {_kind_name(st.st_mode)}, not a regular file or directory; "
        "an image is a disk file or a directory tree",
        detail={"path": str(path)},
    )


def diff_manifests(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Paths ``added``, ``removed`` and ``changed`` (type, digest, mode or target), old → new."""
    before = {e["path"]: e for e in old.get("entries", [])}
    after = {e["path"]: e for e in new.get("entries", [])}

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e.get("type"), e.get("digest"), e.get("mode"), e.get("target"))

    def order(paths: Any) -> list[str]:
        return sorted(paths, key=lambda p: p.encode("utf-8"))

    return {
        "added": order(after.keys() - before.keys()),
        "removed": order(before.keys() - after.keys()),
        "changed": order(
            p for p in before.keys() & after.keys() if key(before[p]) != key(after[p])
        ),
    }


# --- internals -------------------------------------------------------------------------------


def _entry(child: os.DirEntry[str], rel: str, buf: bytearray) -> dict[str, Any]:
    try:
        st = child.stat(follow_symlinks=False)
    except OSError as e:
        raise BadRequest(f"cannot stat {child.path}: {_why(e)}", detail={"path": child.path}) from e
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(child.path)
        except OSError as e:
            raise BadRequest(
                f"cannot read symlink {child.path}: {_why(e)}", detail={"path": child.path}
            ) from e
        _require_utf8(target, f"the target of symlink {child.path}")
        return {"path": rel, "type": "symlink", "target": target}
    if stat.S_ISDIR(mode):
        return {"path": rel, "type": "dir"}
    if not stat.S_ISREG(mode):
        raise BadRequest(
            f"{child.path} is a {_kind_name(mode)}; an image tree may hold only regular files, "
            "directories and symlinks: remove it from the image",
            detail={"path": child.path},
        )
    path = Path(child.path)
    fd, fst = _open_regular(path, follow=False)
    try:
        digest, size = _hash_fd(fd, fst, path, buf, None)
    finally:
        os.close(fd)
    return {
        "path": rel,
        "type": "file",
        "mode": "0755" if fst.st_mode & stat.S_IXUSR else "0644",
        "size": size,
        "digest": digest,
    }


def _open_regular(path: Path, *, follow: bool) -> tuple[int, os.stat_result]:
    """Open without blocking on FIFOs and, inside trees, without following a swapped-in symlink."""
    flags = _OPEN_FLAGS if follow else _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise BadRequest(f"file {path} does not exist", detail={"path": str(path)}) from e
    except OSError as e:
        raise BadRequest(
            f"cannot read {path}: {_why(e)}; make it readable by the daemon's user",
            detail={"path": str(path)},
        ) from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadRequest(
            f"{path} is a {_kind_name(st.st_mode)}, not a regular file", detail={"path": str(path)}
        )
    return fd, st


def _hash_fd(
    fd: int, st: os.stat_result, path: Path, buf: bytearray, progress: Progress | None
) -> tuple[str, int]:
    """Hash an open regular file; return (digest, bytes hashed)."""
    try:
        if st.st_size >= PIPELINE_MIN_SIZE:
            h, total = _hash_pipelined(fd, progress)
        else:
            h, total = _hash_simple(fd, buf, progress)
    except OSError as e:
        raise BadRequest(
            f"cannot read {path}: {_why(e)}", detail={"path": str(path)}
        ) from e
    if progress is not None:
        progress(total)
    return "sha256:" + h.hexdigest(), total


def _hash_simple(fd: int, buf: bytearray, progress: Progress | None) -> tuple[Any, int]:
    h = hashlib.sha256()
    mv = memoryview(buf)
    total = 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(mv):
            h.update(mv[:n])
            total += n
            if progress is not None and n == len(buf):
                progress(total)
    return h, total


def _hash_pipelined(fd: int, progress: Progress | None) -> tuple[Any, int]:
    h = hashlib.sha256()
    free: queue.SimpleQueue[tuple[memoryview, int]] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
    for _ in range(PIPELINE_BUFFERS):
        free.put((memoryview(bytearray(CHUNK_SIZE)), 0))
    failure: list[BaseException] = []

    def hasher() -> None:
        try:
            while (item := full.get()) is not None:
                mv, n = item
                h.update(mv[:n])
                free.put(item)
        except BaseException as e:  # handed back to the reading thread
            failure.append(e)
            free.put((memoryview(bytearray(0)), -1))

    worker = threading.Thread(target=hasher, name="imm-sha256", daemon=True)
    worker.start()
    read = hashed = 0
    try:
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                mv, done = free.get()
                if done < 0:
                    break
                hashed += done
                if progress is not None and done:
                    progress(hashed)
                n = f.readinto(mv)
                if not n:
                    break
                read += n
                full.put((mv, n))
    finally:
        full.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return h, read


def _checked_name(name: str, rel_dir: str, dir_path: str) -> str:
    _require_utf8(name, f"the name {os.fsencode(os.path.join(dir_path, name))!r}")
    return f"{rel_dir}/{name}" if rel_dir else name


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(
            f"{what} is not valid UTF-8 ({os.fsencode(text)!r}); rename it: image trees "
            "need UTF-8 names",
            detail={"name": repr(os.fsencode(text))},
        ) from e


def _kind_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _why(e: OSError) -> str:
    return e.strerror or str(e)
