"""The ``local`` provider, imm's embedded default: an instance is a process on this machine.

An image is a directory holding ``imm-image.json``::

    {"command": ["python3", "app.py"], "health_path": "/healthz", "volumes": ["data"]}

``store_image`` copies it once into ``<root>/images/<image_id>/`` (read-only). ``launch`` copies
the stored image into the instance's own ``<root>/instances/<id>/root/`` (read-only) and starts
``command`` there, in a session of its own so the instance outlives immd (even ``kill -9``).
What must survive the instance lives outside it: ``<root>/logs/<id>.log`` (stdout and stderr)
and ``<root>/data/<service>/<volume>/`` for every declared volume (the persistent layer).

The process gets a small environment, not immd's own (which may hold cloud credentials):
``PATH``, locale and ``TZ`` from immd, ``PORT``, ``IMM_INSTANCE_ID``, ``IMM_SERVICE``,
``IMM_SLOT``, ``IMM_DATA_DIR`` (the first volume), ``IMM_VOLUME_<NAME>`` per volume,
``PYTHONDONTWRITEBYTECODE=1`` and ``PYTHONUNBUFFERED=1``, plus ``LaunchRequest.settings["env"]``.
A leading ``python3`` (or ``python``) in the command is replaced by ``sys.executable``: images
run on the same interpreter as immd, whatever ``PATH`` says.

Read-only copies are a courtesy, not a guarantee: root ignores file modes. What proves an
instance runs its image unchanged is ``rehash``, which the audit compares with the image's
manifest (the ``tampered`` verdict).

Instances are found again by scanning ``<root>/instances`` (after an immd restart too). A
process counts as running only if its pid is alive with the start time (``/proc/<pid>/stat``
field 22) and boot id recorded at launch, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ...catalog.digest import tree_digest, tree_manifest
from ...errors import BadRequest, ConfigError, Conflict, NotFound, ProviderError
from ..base import (
    TAG_SERVICE,
    TAG_SLOT,
    ImageInfo,
    Instance,
    LaunchRequest,
    Provider,
    ProviderContext,
)
from ..hookspecs import hookimpl
from ..registry import ProviderRegistry

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
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


class LocalProvider(Provider):
    """Instances are local processes started from read-only copies of directory images.

    Settings (all optional): ``root`` (default ``<state_dir>/local``), ``port_range``
    (``"20000-29999"``; default: a free port the kernel picks), ``stop_timeout_s`` (SIGTERM to
    SIGKILL, default 10), ``start_check_s`` (an instance exiting this soon after its start fails
    the launch, default 0.2; the health gate judges the rest), ``terminated_ttl_s`` (how long
    an instance whose process died, killed by hand or crashed, is still listed as
    ``terminated`` before its directory is reclaimed, default 60; its log and data volumes stay).
    """

    kind: ClassVar[str] = "local"

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext) -> None:
        super().__init__(name, settings, context)
        self.log = context.log
        self.root = Path(self.settings.get("root") or Path(context.state_dir) / "local")
        self.root = self.root.expanduser()
        self.port_range = self._parse_port_range(self.settings.get("port_range"))
        self.stop_timeout_s = self._parse_seconds("stop_timeout_s", 10)
        self.start_check_s = self._parse_seconds("start_check_s", START_CHECK_S)
        self.terminated_ttl_s = self._parse_seconds("terminated_ttl_s", 60)
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

    # -- instances -----------------------------------------------------------------------------

    def capabilities(self) -> set[str]:
        return {"rehash", "client_token", "store_image"}

    def _check_region(self, region: str, call: str) -> None:
        if region != REGION:
            raise BadRequest(f"{self._where(call)}: region {region!r} does not exist; the "
                             f"local provider has one region, {REGION!r}")

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        _reap()
        wanted = dict(tags or {})
        found = []
        for meta in self._metas():
            if not all(meta.get("tags", {}).get(k) == v for k, v in wanted.items()):
                continue
            inst = self._to_instance(meta)
            if inst.state == "stopped":
                # Nothing restarts a local instance whose process is gone: like a cloud's
                # terminated VM it is listed for a while, then its directory is reclaimed.
                inst.state = "terminated"
                if self._reclaim_dead(meta["id"]):
                    continue
            found.append(inst)
        return iter(found)  # built eagerly: the caller iterates on the event loop

    @contextlib.contextmanager
    def _try_locked(self) -> Iterator[bool]:
        """Like _locked, but never waits: False when a launcher holds the lock."""
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)
        finally:
            self._lock.release()

    def _reclaim_dead(self, iid: str) -> bool:
        """Note when a dead instance was first seen dead; remove its directory once that is
        terminated_ttl_s ago. True when it is gone."""
        with self._try_locked() as locked:
            if not locked:
                return False
            try:
                meta = self._read_meta(iid)
            except (OSError, ValueError):
                return False
            if meta is None or self._is_running(meta):
                return meta is None
            gone_at = meta.get("gone_at")
            if gone_at is None:
                meta["gone_at"] = time.time()
                _write_json(self.instances_dir / iid / "meta.json", meta)
                self.log.info("local instance %s: its process is gone; listed as terminated "
                              "for %.0f s", iid, self.terminated_ttl_s)
                return False
            if time.time() - float(gone_at) < self.terminated_ttl_s:
                return False
            self._remove_instance(iid)
            with contextlib.suppress(OSError), \
                    open(self.logs_dir / f"{iid}.log", "a", encoding="utf-8") as f:
                f.write(f"[imm-local] {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                        f"reclaimed {iid}: its process had died\n")
            return True

    def launch(self, request: LaunchRequest) -> list[Instance]:
        call = "launch"
        self._check_region(request.region, call)
        if not isinstance(request.count, int) or request.count < 0:
            raise BadRequest(f"{self._where(call)}: count {request.count!r} must be an integer "
                             f">= 0")
        if not request.client_token:
            raise BadRequest(f"{self._where(call)}: a client_token is required so a retried "
                             f"launch does not start instances twice")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in request.tags.items()):
            raise BadRequest(f"{self._where(call)}: tags must map strings to strings")
        image = self._image_meta(request.image_id)
        if image is None:
            raise NotFound(
                f"{self._where(call)}: image {request.image_id!r} is not in "
                f"{self.images_dir}; store the image with store_image first"
            )
        spec = image["spec"]
        service = request.tags.get(TAG_SERVICE, "")
        if spec.get("volumes") and not _NAME.fullmatch(service):
            raise BadRequest(
                f"{self._where(call)}: image {request.image_id} declares volumes "
                f"{spec['volumes']}, which live under data/<service>/: tag {TAG_SERVICE} "
                f"{service!r} must be a name (letters, digits, '.', '_', '-')"
            )
        extra_env = request.settings.get("env") or {}
        if not isinstance(extra_env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra_env.items()
        ):
            raise BadRequest(f"{self._where(call)}: settings.env must map strings to strings")

        with self._locked():
            self._clean_leftovers(self.instances_dir)
            metas = self._metas()
            kept = []
            for meta in metas:
                if meta.get("client_token") != request.client_token:
                    continue
                pid, start = self._resolve_pid(meta)
                if pid is None:  # immd died before the process started: start it again
                    self._remove_instance(meta["id"])
                    continue
                if not meta.get("pid"):
                    meta.update(pid=pid, pid_start=start)
                    _write_json(self.instances_dir / meta["id"] / "meta.json", meta)
                kept.append(meta)
            kept.sort(key=lambda m: (m.get("launched_at", 0), m["id"]))
            used_ports = {m["port"] for m in metas if m.get("port")}
            started: list[dict[str, Any]] = []
            try:
                missing = request.count - len(kept)
                if missing > 0:
                    self._start_checked(request, image, missing, extra_env, used_ports, started)
            except BaseException:
                self._kill_and_remove([m["id"] for m in started])
                raise
        if started:
            self.log.info("local provider %s: launched %s from %s", self.name,
                          ", ".join(m["id"] for m in started), request.image_id)
        return [self._to_instance(m) for m in kept] + [
            self._to_instance(m, "running") for m in started]

    def _start_checked(self, request: LaunchRequest, image: dict[str, Any], count: int,
                       extra_env: dict[str, str], used_ports: set[int],
                       started: list[dict[str, Any]]) -> None:
        """Start ``count`` instances and see them survive their first moments.

        They are appended to ``started`` as they start, so the caller can clean up on failure.
        Instances that lost their port to another process between pick and bind are retried.
        """
        for attempt in range(PORT_RETRIES):
            batch = [self._start(request, image, extra_env, used_ports) for _ in range(count)]
            started.extend(batch)
            deadline = time.monotonic() + self.start_check_s
            exits: dict[str, int] = {}
            while time.monotonic() < deadline and len(exits) < len(batch):
                time.sleep(0.02)
                for meta in batch:
                    code = _child_exit(meta["pid"])
                    if code is not None:
                        exits.setdefault(meta["id"], code)
            if not exits:
                return
            failed = [m for m in batch if m["id"] in exits]
            tails = {m["id"]: _log_tail(self.logs_dir / f"{m['id']}.log") for m in failed}
            for meta in failed:
                started.remove(meta)
                self._remove_instance(meta["id"])
            fatal = [m for m in failed if "Address already in use" not in tails[m["id"]]]
            if not fatal and attempt + 1 < PORT_RETRIES:
                count = len(failed)
                continue
            meta = (fatal or failed)[0]
            log = self.logs_dir / f"{meta['id']}.log"
            raise ProviderError(
                f"{self._where('launch')}: instance {meta['id']} of image "
                f"{request.image_id} exited with status {exits[meta['id']]} right after start "
                f"(command {meta['command']}); last lines of {log}:\n{tails[meta['id']]}\n"
                f"check the image's {IMAGE_SPEC_FILE} command and the app's log",
                detail={"instance": meta["id"], "image_id": request.image_id,
                        "exit_status": exits[meta["id"]], "log": str(log)},
            )

    def _start(self, request: LaunchRequest, image: dict[str, Any],
               extra_env: dict[str, str], used_ports: set[int]) -> dict[str, Any]:
        spec = image["spec"]
        iid = "i-" + secrets.token_hex(8)
        final = self.instances_dir / iid
        tmp = self.instances_dir / f".tmp-{iid}"
        service = request.tags.get(TAG_SERVICE, "")
        volumes = {v: str(self.data_dir / service / v) for v in spec.get("volumes", [])}
        command = list(spec["command"])
        if command[0] in ("python3", "python"):
            command[0] = sys.executable
        port = self._pick_port(used_ports)
        meta: dict[str, Any] = {
            "id": iid, "provider": self.name, "region": REGION, "image_id": request.image_id,
            "content_digest": image.get("content_digest"), "tags": dict(request.tags),
            "client_token": request.client_token, "port": port, "command": command,
            "health_path": spec.get("health_path"), "volumes": volumes,
            "launched_at": int(time.time()), "boot_id": _boot_id(), "pid": None,
            "pid_start": None,
        }
        try:
            tmp.mkdir()
            shutil.copytree(self.images_dir / request.image_id, tmp / "root", symlinks=True)
            _make_readonly(tmp / "root")
            for path in volumes.values():
                Path(path).mkdir(parents=True, exist_ok=True)
            _write_json(tmp / "meta.json", meta)
            tmp.rename(final)
        except OSError as e:
            _rmtree(tmp)
            raise ProviderError(
                f"{self._where('launch')}: preparing instance {iid} of image "
                f"{request.image_id} under {self.root} failed: {e}; check free space and "
                f"permissions"
            ) from e
        used_ports.add(port)

        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(extra_env)
        env.update({
            "PORT": str(port), "IMM_INSTANCE_ID": iid, "IMM_SERVICE": service,
            "IMM_SLOT": request.tags.get(TAG_SLOT, ""),
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        })
        if volumes:
            env["IMM_DATA_DIR"] = next(iter(volumes.values()))
        env.update({_env_name(v): p for v, p in volumes.items()})
        log_path = self.logs_dir / f"{iid}.log"
        try:
            with open(log_path, "ab") as logf:
                logf.write(f"[imm-local] {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                           f"start {iid} image={request.image_id} port={port} "
                           f"command={command}\n".encode())
                logf.flush()
                proc = subprocess.Popen(
                    command, cwd=final / "root", env=env, stdin=subprocess.DEVNULL,
                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                )
        except OSError as e:
            self._remove_instance(iid)
            raise ProviderError(
                f"{self._where('launch')}: cannot start {command} for image "
                f"{request.image_id}: {e}; fix the command in the image's {IMAGE_SPEC_FILE}",
                detail={"image_id": request.image_id, "command": command},
            ) from e
        with _children_lock:
            _children[proc.pid] = proc
        st = _proc_stat(proc.pid)
        meta.update(pid=proc.pid, pid_start=st[1] if st else None)
        _write_json(final / "meta.json", meta)
        return meta

    def _pick_port(self, used: set[int]) -> int:
        def bindable(port: int) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
                return True

        if self.port_range is None:
            for _ in range(100):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", 0))
                    port = int(s.getsockname()[1])
                if port not in used:
                    return port
        else:
            lo, hi = self.port_range
            size = hi - lo + 1
            first = secrets.randbelow(size)
            for i in range(size):
                port = lo + (first + i) % size
                if port not in used and bindable(port):
                    return port
        raise ProviderError(
            f"{self._where('launch')}: no free port on 127.0.0.1 in "
            f"{self.port_range or 'the kernel range'} ({len(used)} used by instances); "
            f"widen port_range or terminate instances"
        )

    def terminate(self, instance_ids: Sequence[str]) -> None:
        ids = [i for i in dict.fromkeys(instance_ids) if _INSTANCE_ID.fullmatch(str(i))]
        self._kill_and_remove(ids)
        _reap()

    def _kill_and_remove(self, ids: Sequence[str]) -> None:
        """SIGTERM each instance's process group, SIGKILL after stop_timeout_s, remove dirs."""
        procs: dict[str, tuple[int, int | None, str | None]] = {}
        for iid in ids:
            try:
                meta = self._read_meta(iid)
            except (OSError, ValueError):  # unreadable meta: find the process by its env
                meta = {"id": iid}
            if meta is None:
                continue
            pid, start = self._resolve_pid(meta)
            if pid and _alive(pid, start, meta.get("boot_id")):
                procs[iid] = (pid, start, meta.get("boot_id"))
                self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        pending = dict(procs)
        while pending:
            pending = {i: p for i, p in pending.items() if _alive(*p)}
            if not pending:
                break
            if time.monotonic() >= deadline:
                for iid, (pid, _, _) in pending.items():
                    self.log.warning("local instance %s (pid %d) ignored SIGTERM for %.0f s: "
                                     "killing it", iid, pid, self.stop_timeout_s)
                    self._signal_group(pid, signal.SIGKILL)
                kill_deadline = time.monotonic() + 5
                while pending and time.monotonic() < kill_deadline:
                    time.sleep(0.02)
                    pending = {i: p for i, p in pending.items() if _alive(*p)}
                break
            time.sleep(0.02)
        for pid, _, _ in procs.values():
            # The group leader is gone: take down anything it left behind in its group.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for iid in ids:
            if (self.instances_dir / iid).exists():
                self._remove_instance(iid)
                with contextlib.suppress(OSError), \
                        open(self.logs_dir / f"{iid}.log", "a", encoding="utf-8") as f:
                    f.write(f"[imm-local] {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                            f" terminated {iid}\n")
        if pending:
            raise ProviderError(
                f"{self._where('terminate')}: instance(s) {', '.join(sorted(pending))} still "
                f"run after SIGKILL; check them with ps (pids "
                f"{', '.join(str(p[0]) for p in pending.values())})"
            )

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)  # the app moved itself to another group

    def _remove_instance(self, iid: str) -> None:
        """Remove the instance dir (its logs and data stay); a rename first, so it is atomic."""
        trash = self.instances_dir / f".trash-{iid}-{secrets.token_hex(4)}"
        try:
            (self.instances_dir / iid).rename(trash)
        except FileNotFoundError:
            return
        _rmtree(trash)

    def rehash(self, instance_id: str) -> tuple[str, dict[str, Any]]:
        """``(tree_digest, tree_manifest)`` of the instance's root as it is now."""
        root = self.instances_dir / instance_id / "root"
        if not _INSTANCE_ID.fullmatch(instance_id) or not root.is_dir():
            raise NotFound(f"{self._where('rehash')}: no instance {instance_id!r} under "
                           f"{self.instances_dir}")
        manifest = tree_manifest(root)
        return tree_digest(manifest), manifest

    def close(self) -> None:
        """Instances outlive immd: nothing is stopped, finished children are reaped."""
        _reap()


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(LocalProvider)
