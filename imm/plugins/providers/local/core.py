"""The local provider's settings, instance records and images (see the package docstring)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ....catalog.digest import tree_digest, tree_manifest
from ....errors import BadRequest, ConfigError, Conflict, NotFound, ProviderError
from ...base import (
    Feature,
    ImageInfo,
    Instance,
    PluginContext,
    Provider,
)
from ...statefile import write_json

REGION = "local"
IMAGE_SPEC_FILE = "imm-image.json"
IMAGE_SPEC_KEYS = ("command", "health_path", "volumes")
START_CHECK_S = 0.2  # default: a process that exits this soon after start failed to launch
PORT_RETRIES = 3  # relaunches of an instance whose port was taken between pick and bind
PASS_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

_IMAGE_ID = re.compile(r"img-[0-9a-f]{16}")
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{16}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # services and volumes: path parts
_PORT_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")

# Children started by this process, whichever provider object started them: polled to reap
# zombies, and never garbage-collected while running (instances outlive provider objects).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _reap() -> None:
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def _child_exit(pid: int) -> int | None:
    """Exit status of our own child ``pid`` (reaping it), None if running or not ours."""
    with _children_lock:
        proc = _children.get(pid)
        if proc is None:
            return None
        code = proc.poll()
        if code is not None:
            del _children[pid]
        return code


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid``, None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
    return fields[0].decode(), int(fields[19])  # fields 3 and 22 of proc(5)


def _alive(pid: int | None, start: int | None, boot: str | None) -> bool:
    if not pid:
        return False
    _child_exit(pid)
    if boot and boot != _boot_id():
        return False
    st = _proc_stat(pid)
    if st is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no procfs (not Linux): best effort
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    state, started = st
    return state not in ("Z", "X", "x") and (start is None or started == start)


def _find_process(instance_id: str) -> tuple[int, int] | None:
    """(pid, start) of the process launched for ``instance_id``, from its environment.

    Only needed when immd died between starting a process and recording its pid.
    """
    needle = f"IMM_INSTANCE_ID={instance_id}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            st = _proc_stat(int(entry.name))
            if st is not None and st[0] not in ("Z", "X", "x"):
                return int(entry.name), st[1]
    return None


def _write_json(path: Path, obj: Any) -> None:
    """Atomically and durably (see imm.plugins.statefile)."""
    write_json(path, obj, mode=0o644)


def _make_readonly(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o222)
    os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) & ~0o222)


def _rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only directories."""
    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in [dirpath] + [os.path.join(dirpath, n) for n in dirnames]:
            with contextlib.suppress(OSError):
                if not os.path.islink(d):
                    os.chmod(d, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _env_name(volume: str) -> str:
    return "IMM_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume.upper())


class LocalCore(Provider):
    """The local provider's settings, instance records and images"""

    """Instances are local processes started from read-only copies of directory images.

    Settings (all optional): ``root`` (default ``<state_dir>/local``), ``port_range``
    (``"20000-29999"``; default: a free port the kernel picks), ``stop_timeout_s`` (SIGTERM to
    SIGKILL, default 10), ``start_check_s`` (an instance exiting this soon after its start fails
    the launch, default 0.2; the health gate judges the rest).
    """

    kind: ClassVar[str] = "local"
    features = frozenset({Feature.REHASH, Feature.CLIENT_TOKEN, Feature.STORE_IMAGE, Feature.IMAGE_MANIFEST})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        self.log = context.log
        self.root = Path(self.settings.get("root") or Path(context.state_dir) / "local")
        self.root = self.root.expanduser()
        self.port_range = self._parse_port_range(self.settings.get("port_range"))
        self.stop_timeout_s = self._parse_seconds("stop_timeout_s", 10)
        self.start_check_s = self._parse_seconds("start_check_s", START_CHECK_S)
        self.images_dir = self.root / "images"
        self.instances_dir = self.root / "instances"
        self.logs_dir = self.root / "logs"
        self.data_dir = self.root / "data"
        try:
            for d in (self.images_dir, self.instances_dir, self.logs_dir, self.data_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"local provider {name!r}: cannot create its directories under {self.root}: "
                f"{e.strerror}; set 'root' to a writable directory"
            ) from e
        self._lock = threading.Lock()

    # -- settings ------------------------------------------------------------------------------

    def _parse_port_range(self, value: Any) -> tuple[int, int] | None:
        if value is None or value == "":
            return None
        m = _PORT_RANGE.fullmatch(str(value))
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if 1024 <= lo <= hi <= 65535:
                return lo, hi
        raise ConfigError(
            f"local provider {self.name!r}: port_range {value!r} is not a range like "
            f"'20000-29999' (low-high, within 1024-65535)"
        )

    def _parse_seconds(self, key: str, default: float) -> float:
        value = self.settings.get(key, default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not 0 < seconds <= 3600 or isinstance(value, bool):
            raise ConfigError(
                f"local provider {self.name!r}: {key} {value!r} must be a number of seconds "
                f"above 0 and at most 3600"
            )
        return seconds

    # -- helpers -------------------------------------------------------------------------------

    def _where(self, call: str) -> str:
        return f"local provider {self.name!r} ({call})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One launcher at a time, across threads and across processes sharing ``root``."""
        with self._lock:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _clean_leftovers(self, directory: Path) -> None:
        """Remove half-built dirs of a launcher that died (call with the lock held)."""
        for p in directory.glob(".tmp-*"):
            _rmtree(p)
        for p in directory.glob(".trash-*"):
            _rmtree(p)

    def _read_meta(self, instance_id: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.instances_dir / instance_id / "meta.json").read_text())
        except FileNotFoundError:
            return None
        if not isinstance(meta, dict):
            raise ValueError("meta.json is not an object")
        return meta

    def _metas(self) -> list[dict[str, Any]]:
        metas = []
        for d in sorted(self.instances_dir.iterdir()):
            if not _INSTANCE_ID.fullmatch(d.name):
                continue
            try:
                meta = self._read_meta(d.name)
            except (OSError, ValueError) as e:
                self.log.warning("local instance %s: unreadable meta.json (%s)", d.name, e)
                meta = {"id": d.name, "corrupt": True, "tags": {}}
            if meta is not None:
                metas.append(meta)
        return metas

    def _resolve_pid(self, meta: dict[str, Any]) -> tuple[int | None, int | None]:
        """(pid, start) of the instance's process, finding it when immd died before noting it."""
        if meta.get("pid"):
            return meta["pid"], meta.get("pid_start")
        if meta.get("corrupt") or meta.get("boot_id") not in (None, _boot_id()):
            return None, None
        found = _find_process(meta["id"])
        return found if found else (None, None)

    def _is_running(self, meta: dict[str, Any]) -> bool:
        pid, start = self._resolve_pid(meta)
        return _alive(pid, start, meta.get("boot_id"))

    def _to_instance(self, meta: dict[str, Any], state: str | None = None) -> Instance:
        if meta.get("corrupt"):
            return Instance(id=meta["id"], provider=self.name, region=REGION, image_id="",
                            state="unknown", launched_at=0, tags={},
                            extra={"error": "meta.json unreadable"})
        port = meta.get("port")
        pid, _ = self._resolve_pid(meta)
        extra: dict[str, Any] = {
            "pid": pid,
            "port": port,
            "root": str(self.instances_dir / meta["id"] / "root"),
            "log": str(self.logs_dir / f"{meta['id']}.log"),
            "client_token": meta.get("client_token"),
            "volumes": meta.get("volumes", {}),
        }
        if meta.get("health_path"):
            extra["health_url"] = f"http://127.0.0.1:{port}{meta['health_path']}"
        if state is None:
            state = "running" if self._is_running(meta) else "stopped"
        return Instance(
            id=meta["id"], provider=self.name, region=meta.get("region", REGION),
            image_id=meta.get("image_id", ""), state=state,
            launched_at=int(meta.get("launched_at", 0)), tags=dict(meta.get("tags", {})),
            address=f"127.0.0.1:{port}" if port else None, extra=extra,
        )

    # -- images --------------------------------------------------------------------------------

    def _load_spec(self, path: Path, call: str) -> dict[str, Any]:
        """Read and check an image's ``imm-image.json``."""
        need = (
            f'{IMAGE_SPEC_FILE} must be a JSON object like {{"command": ["python3", "app.py"], '
            f'"health_path": "/healthz", "volumes": ["data"]}} (command required: a non-empty '
            f"list of strings, run in the image directory)"
        )
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadRequest(f"{self._where(call)}: {path} does not exist; {need}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise BadRequest(f"{self._where(call)}: cannot read {path} ({e}); {need}") from None
        problems = []
        if not isinstance(spec, dict):
            raise BadRequest(f"{self._where(call)}: {path} is not a JSON object; {need}")
        unknown = sorted(set(spec) - set(IMAGE_SPEC_KEYS))
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: "
                            f"{', '.join(IMAGE_SPEC_KEYS)})")
        cmd = spec.get("command")
        if not (isinstance(cmd, list) and cmd and all(isinstance(a, str) and a for a in cmd)):
            problems.append(f"'command' is {cmd!r}")
        health = spec.get("health_path")
        if health is not None and not (isinstance(health, str) and health.startswith("/")):
            problems.append(f"'health_path' {health!r} must be a path starting with '/'")
        volumes = spec.get("volumes", [])
        if not isinstance(volumes, list) or not all(
            isinstance(v, str) and _NAME.fullmatch(v) for v in volumes
        ) or len(set(volumes)) != len(volumes):
            problems.append(f"'volumes' {volumes!r} must be a list of distinct names "
                            f"(letters, digits, '.', '_', '-')")
        if problems:
            raise BadRequest(f"{self._where(call)}: {path}: {'; '.join(problems)}; {need}")
        return spec

    def _check_tree(self, src: Path) -> None:
        """Refuse what cannot be copied and hashed: sockets, fifos, devices."""
        for dirpath, dirnames, filenames in os.walk(src):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                mode = os.lstat(p).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    raise BadRequest(
                        f"{self._where('store_image')}: {p} is neither a file, a directory nor "
                        f"a symlink; remove it from the image"
                    )

    def _image_meta(self, image_id: str) -> dict[str, Any] | None:
        if not _IMAGE_ID.fullmatch(image_id) or not (self.images_dir / image_id).is_dir():
            return None
        try:
            meta = json.loads((self.images_dir / f"{image_id}.json").read_text())
        except (OSError, ValueError) as e:
            raise ProviderError(
                f"local provider {self.name!r}: image {image_id} has no readable "
                f"{self.images_dir / (image_id + '.json')} ({e}); remove "
                f"{self.images_dir / image_id} and store the image again"
            ) from e
        return meta if isinstance(meta, dict) else None

    def store_image(self, src: Path, content_digest: str) -> str:
        """Copy directory image ``src`` into the store once; return its image id.

        The id is ``img-`` + the first 16 hex digits of ``content_digest``, which must be the
        ``tree_digest`` of ``src`` (checked on the copy). Storing the same content again is a
        no-op returning the same id.
        """
        call = "store_image"
        src = Path(src)
        m = _DIGEST.fullmatch(content_digest or "")
        if not m:
            raise BadRequest(f"{self._where(call)}: content digest {content_digest!r} is not "
                             f"'sha256:' followed by 64 lowercase hex digits")
        if not src.is_dir():
            what = "does not exist" if not src.exists() else "is not a directory"
            raise BadRequest(f"{self._where(call)}: {src} {what}; a local image is a directory "
                             f"holding {IMAGE_SPEC_FILE}")
        self._load_spec(src / IMAGE_SPEC_FILE, call)  # fail early, before any copying
        image_id = "img-" + m.group(1)[:16]
        with self._locked():
            existing = self._image_meta(image_id)
            if existing is not None:
                if existing.get("content_digest") != content_digest:
                    raise Conflict(
                        f"{self._where(call)}: image id {image_id} already holds "
                        f"{existing.get('content_digest')}, not {content_digest}"
                    )
                return image_id
            self._clean_leftovers(self.images_dir)
            self._check_tree(src)
            tmp = self.images_dir / f".tmp-{image_id}-{secrets.token_hex(4)}"
            try:
                shutil.copytree(src, tmp, symlinks=True)
                manifest = tree_manifest(tmp)
                actual = tree_digest(manifest)
                if actual != content_digest:
                    raise BadRequest(
                        f"{self._where(call)}: {src} has content digest {actual}, not the "
                        f"{content_digest} given; re-read the image or fix the digest"
                    )
                spec = self._load_spec(tmp / IMAGE_SPEC_FILE, call)  # what was hashed
                _make_readonly(tmp)
                _write_json(self.images_dir / f"{image_id}.json", {
                    "image_id": image_id, "content_digest": content_digest, "spec": spec,
                    "manifest": manifest, "stored_at": int(time.time()), "source": str(src),
                })
                tmp.rename(self.images_dir / image_id)
            except OSError as e:
                raise ProviderError(
                    f"{self._where(call)}: copying {src} into {self.images_dir} failed: {e}; "
                    f"check free space and permissions"
                ) from e
            finally:
                _rmtree(tmp)
        self.log.info("local provider %s: stored %s as %s", self.name, src, image_id)
        return image_id

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        self._check_region(region, "describe_image")
        meta = self._image_meta(image_id)
        if meta is None:
            return None
        spec = meta.get("spec", {})
        return ImageInfo(
            region=REGION, image_id=image_id, name=Path(meta.get("source", image_id)).name,
            state="available",
            extra={
                "content_digest": meta.get("content_digest"),
                "path": str(self.images_dir / image_id),
                "command": spec.get("command"),
                "health_path": spec.get("health_path"),
                "volumes": spec.get("volumes", []),
                "stored_at": meta.get("stored_at"),
            },
        )

    def image_manifest(self, image_id: str) -> dict[str, Any]:
        """The tree manifest recorded when the image was stored (compare with ``rehash``)."""
        meta = self._image_meta(image_id)
        if meta is None:
            raise NotFound(f"{self._where('image_manifest')}: no image {image_id}; store it "
                           f"first with store_image")
        manifest: dict[str, Any] = meta["manifest"]
        return manifest

    def _check_region(self, region: str, call: str) -> None:
        if region != REGION:
            raise BadRequest(f"{self._where(call)}: region {region!r} does not exist; the "
                             f"local provider has one region, {REGION!r}")
