"""The one way plugins keep state on disk: written atomically and durably.

:func:`atomic_write` writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory, so that after a crash or power loss a reader finds the old
file or the new one, never half of one, and a completed write is not lost. :class:`RouteState`
is the per-route backend table the dns and cloudlb routers keep (``{route: {name: {...}}}``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import RouterError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text``: temp file, fsync, rename, directory fsync. The parent
    directory is created when missing; the temp file is removed when anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a file already written with :func:`atomic_write` (e.g. once it has been
    validated) over ``dst``, durably."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def write_json(path: Path, obj: Any, *, mode: int = 0o600) -> None:
    """:func:`atomic_write` of ``obj`` as sorted, indented JSON."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode=mode)


class RouteState:
    """Backends a router knows by name, per route: ``{route: {name: {...}}}`` in a JSON file
    ``{"version": 1, "routes": ...}``.

    :param what: the router, for messages ("dns router edge").
    :param truth: where the state can be rebuilt from, for messages ("what DNS holds").
    """

    def __init__(self, path: Path, what: str, truth: str) -> None:
        self.path = path
        self.what = what
        self.truth = truth

    def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RouterError(f"{self.what}: state file {self.path} is unreadable ({exc}); "
                              f"move it away to start from {self.truth}") from None
        routes = data.get("routes", {}) if isinstance(data, dict) else {}
        return routes if isinstance(routes, dict) else {}

    def save(self, routes: Mapping[str, Mapping[str, Any]]) -> None:
        write_json(self.path, {"version": 1, "routes": routes})
