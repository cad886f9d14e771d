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
import struct
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
    fd: int, st: os.stat_result, path: Path | str, buf: bytearray, progress: Progress | None
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
    while n := os.readv(fd, [mv]):
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


# --- hashing through descriptors, with the caller's access ------------------------------------

MAX_TREE_DEPTH = 256
_ACL_XATTR = "system.posix_acl_access"
_R, _W, _X = 4, 2, 1


class Reader:
    """Who asked for an image to be read: immd reads only what they could read themselves.

    ``uid`` and ``groups`` come from the kernel (SO_PEERCRED, SO_PEERGROUPS of the caller's
    connection). Root may read anything; everyone else by the mode bits and, when a file has
    one, its POSIX access ACL, evaluated as the kernel does (acl(5))."""

    def __init__(self, uid: int, groups: frozenset[int] | set[int]) -> None:
        self.uid = uid
        self.groups = frozenset(groups)

    def may(self, fd: int, st: os.stat_result, need: int) -> bool:
        if self.uid == 0:
            return True
        acl = _access_acl(fd)
        if acl is not None:
            return _acl_allows(acl, st, self.uid, self.groups, need)
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & need == need


def _access_acl(fd: int) -> list[tuple[int, int, int]] | None:
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
    except OSError:
        return None  # no ACL (ENODATA), or a file system without them (ENOTSUP)
    if len(raw) < 4 or (len(raw) - 4) % 8:
        return []  # unreadable ACL: grants nothing
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def _acl_allows(acl: list[tuple[int, int, int]], st: os.stat_result, uid: int,
                groups: frozenset[int], need: int) -> bool:
    """The access check algorithm of acl(5)."""
    user_obj, user, group_obj, group, mask, other = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
    masked = next((p for t, p, _ in acl if t == mask), 7)
    if uid == st.st_uid:
        return any(t == user_obj and p & need == need for t, p, _ in acl)
    for t, p, i in acl:
        if t == user and i == uid:
            return p & masked & need == need
    matched = False
    for t, p, i in acl:
        if (t == group_obj and st.st_gid in groups) or (t == group and i in groups):
            matched = True
            if p & masked & need == need:
                return True
    if matched:
        return False
    return any(t == other and p & need == need for t, p, _ in acl)


def content_digest_fd(fd: int, shown: str, reader: Reader | None
                      ) -> tuple[str, str, dict[str, Any] | None]:
    """``(kind, digest, manifest)`` of an image read through the open descriptor ``fd`` (a
    regular file or a directory); ``shown`` names it in messages.

    Inside a directory every entry is opened relative to its parent (``openat`` with
    ``O_NOFOLLOW``), so nothing swapped in for a symlink is followed, and, with a ``reader``,
    every directory must be readable and searchable and every file readable by them: immd never
    reads on a caller's behalf what the caller could not read. The caller's ``fd`` stays open.
    """
    st = os.fstat(fd)
    flags = fd_flags(fd)
    if flags & getattr(os, "O_PATH", 0) or flags & os.O_ACCMODE == os.O_WRONLY:
        # an O_PATH descriptor needs no read permission to open: it proves nothing
        raise BadRequest(f"{shown} was not opened for reading; pass a descriptor opened with "
                         "O_RDONLY", detail={"path": shown})
    if stat.S_ISREG(st.st_mode):
        # a buffer no larger than the file needs: zeroing 2 MiB costs more than hashing a small
        # image (the file may grow meanwhile: the read goes on until its end all the same)
        buf = bytearray(min(CHUNK_SIZE, max(st.st_size + 1, 1 << 12)))
        digest, _ = _hash_fd(fd, st, shown, buf, None)
        return "file", digest, None
    if stat.S_ISDIR(st.st_mode):
        if reader is not None and not reader.may(fd, st, _R | _X):
            raise _unreadable(shown, reader, "directory")
        manifest = _tree_manifest_fd(fd, shown, reader)
        return "tree", tree_digest(manifest), manifest
    raise BadRequest(
        f"{shown} is a {_kind_name(st.st_mode)}, not a regular file or directory; an image is "
        "a disk file or a directory tree", detail={"path": shown})


def _resolved(path: str, dirs: dict[str, str] | None) -> str:
    """os.path.realpath(path), the directory part looked up in ``dirs`` (and kept there)."""
    head, base = os.path.split(path)
    if dirs is None or base in ("", ".", ".."):
        return os.path.realpath(path)
    top = dirs.get(head)
    if top is None:
        top = dirs[head] = os.path.realpath(head)
    real = os.path.join(top, base)
    try:
        if stat.S_ISLNK(os.lstat(real).st_mode):  # followed, as realpath does
            return os.path.realpath(path)
    except OSError:
        return os.path.realpath(path)  # opening it says what is wrong
    return real


def fd_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _unreadable(shown: str, reader: Reader, what: str) -> BadRequest:
    return BadRequest(
        f"{shown}: you (uid {reader.uid}) cannot read this {what}, so immd will not read it for "
        "you; make it readable to you or leave it out of the image", detail={"path": shown})


def _tree_manifest_fd(root_fd: int, shown: str, reader: Reader | None) -> dict[str, Any]:
    buf = bytearray(CHUNK_SIZE)
    entries: list[dict[str, Any]] = []
    # (directory fd, its relative path, the names in it still to visit); fds open = depth
    stack: list[tuple[int, str, list[str]]] = [(root_fd, "", _names(root_fd, shown))]
    try:
        while stack:
            dfd, rel_dir, names = stack[-1]
            if not names:
                stack.pop()
                if dfd != root_fd:
                    os.close(dfd)
                continue
            name = names.pop()
            rel = f"{rel_dir}/{name}" if rel_dir else name
            where = f"{shown}/{rel}"
            _require_utf8(name, f"the name {os.fsencode(where)!r}")
            try:
                lst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as e:
                raise BadRequest(f"cannot stat {where}: {_why(e)}", detail={"path": where}) from e
            if stat.S_ISLNK(lst.st_mode):
                try:
                    target = os.readlink(name, dir_fd=dfd)
                except OSError as e:
                    raise BadRequest(f"cannot read symlink {where}: {_why(e)}",
                                     detail={"path": where}) from e
                _require_utf8(target, f"the target of symlink {where}")
                entries.append({"path": rel, "type": "symlink", "target": target})
            elif stat.S_ISDIR(lst.st_mode):
                if len(stack) >= MAX_TREE_DEPTH:
                    raise BadRequest(f"{where} is nested deeper than {MAX_TREE_DEPTH} "
                                     "directories; an image tree may not be", detail={"path": where})
                cfd = _open_at(dfd, name, where, os.O_DIRECTORY)
                try:
                    if reader is not None and not reader.may(cfd, os.fstat(cfd), _R | _X):
                        raise _unreadable(where, reader, "directory")
                    children = _names(cfd, where)
                except BaseException:
                    os.close(cfd)
                    raise
                entries.append({"path": rel, "type": "dir"})
                stack.append((cfd, rel, children))
            elif stat.S_ISREG(lst.st_mode):
                ffd = _open_at(dfd, name, where, os.O_NONBLOCK)
                try:
                    fst = os.fstat(ffd)
                    if not stat.S_ISREG(fst.st_mode):
                        raise BadRequest(f"{where} changed while it was read; try again",
                                         detail={"path": where})
                    if reader is not None and not reader.may(ffd, fst, _R):
                        raise _unreadable(where, reader, "file")
                    digest, size = _hash_fd(ffd, fst, Path(where), buf, None)
                finally:
                    os.close(ffd)
                entries.append({"path": rel, "type": "file",
                                "mode": "0755" if fst.st_mode & stat.S_IXUSR else "0644",
                                "size": size, "digest": digest})
            else:
                raise BadRequest(
                    f"{where} is a {_kind_name(lst.st_mode)}; an image tree may hold only "
                    "regular files, directories and symlinks: remove it from the image",
                    detail={"path": where})
    finally:
        for dfd, _, _ in stack:
            if dfd != root_fd:
                os.close(dfd)
    entries.sort(key=lambda e: e["path"].encode("utf-8"))
    return {"version": TREE_MANIFEST_VERSION, "entries": entries}


def _names(dfd: int, shown: str) -> list[str]:
    try:
        return sorted(os.listdir(dfd), reverse=True)
    except OSError as e:
        raise BadRequest(f"cannot list directory {shown}: {_why(e)}",
                         detail={"path": shown}) from e


def _open_at(dfd: int, name: str, where: str, extra: int) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | extra
    try:
        return os.open(name, flags, dir_fd=dfd)
    except OSError as e:
        raise BadRequest(f"cannot open {where}: {_why(e)}", detail={"path": where}) from e


def open_under_roots(path: str, roots: list[Path], dirs: dict[str, str] | None = None) -> int:
    """Open ``path`` for reading if it lies under one of the configured ``image_roots``.

    ``dirs`` (a dict kept by a caller opening many files) remembers each directory's resolved
    path, so only the file itself is looked at again (realpath is an lstat per component)."""
    if not roots:
        raise BadRequest(
            f"immd reads an image only through a descriptor its caller passes, and no "
            f"[daemon] image_roots are configured to read {path!r} from by path: run "
            "'immctl image add PATH' (it opens the image with your own access), or configure "
            "image_roots", detail={"path": path})
    real = _resolved(path, dirs)
    for root in roots:  # absolute: as the config gives them
        top = str(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            break
    else:
        raise BadRequest(
            f"{path} is not under any of the configured image_roots "
            f"({', '.join(map(str, roots))}); run 'immctl image add PATH' instead, which "
            "passes the image as an open descriptor", detail={"path": path})
    try:
        return os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError as e:
        raise BadRequest(f"path {path} does not exist", detail={"path": path}) from e
    except OSError as e:
        raise BadRequest(f"cannot open {path}: {_why(e)}", detail={"path": path}) from e
