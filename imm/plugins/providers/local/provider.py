"""The local provider: instances (launch, terminate, rehash) (see the package docstring)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ....catalog.digest import tree_digest, tree_manifest
from ....errors import BadRequest, NotFound, ProviderError
from ...base import (
    TAG_SERVICE,
    TAG_SLOT,
    Instance,
    LaunchRequest,
)
from .core import (
    _INSTANCE_ID,
    _NAME,
    IMAGE_SPEC_FILE,
    PASS_ENV,
    PORT_RETRIES,
    REGION,
    LocalCore,
    _alive,
    _boot_id,
    _child_exit,
    _children,
    _children_lock,
    _env_name,
    _log_tail,
    _make_readonly,
    _proc_stat,
    _reap,
    _rmtree,
    _write_json,
)

START_WORKERS = 8  # instances of one launch prepared and started at once


class LocalProvider(LocalCore):
    # -- instances -----------------------------------------------------------------------------


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
            if meta.get("terminating") is not None:
                # a terminate stopped the process and was cut short (immd killed) before it
                # removed the directory: finish it, the instance is not "seen dead" but gone
                self._remove_dirs([iid])
                return True
            gone_at = meta.get("gone_at")
            if gone_at is None:
                meta["gone_at"] = time.time()
                try:
                    _write_json(self.instances_dir / iid / "meta.json", meta)
                except FileNotFoundError:
                    return True  # terminated meanwhile (its directory removed): it is gone
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
                self._kill_and_remove([m["id"] for m in started], locked=True)
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
            ports = []
            for _ in range(count):
                ports.append(self._pick_port(used_ports))
                used_ports.add(ports[-1])
            batch = self._start_all(request, image, extra_env, ports, started)
            exits = self._survivors(batch)
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

    def _start_all(self, request: LaunchRequest, image: dict[str, Any],
                   extra_env: dict[str, str], ports: list[int],
                   started: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start one instance on each of ``ports`` at once: preparing an instance (copying its
        image, writing its record durably) mostly waits on the disk, and a batch of fsyncs
        costs about one. Each started instance is appended to ``started`` even when another
        fails, so the caller cleans every one up."""
        if len(ports) == 1:
            batch = [self._start(request, image, extra_env, ports[0])]
            started.extend(batch)
            return batch
        with ThreadPoolExecutor(min(len(ports), START_WORKERS),
                                thread_name_prefix=f"local-{self.name}-start") as pool:
            futures = [pool.submit(self._start, request, image, extra_env, port)
                       for port in ports]
            wait(futures)
        batch = [f.result() for f in futures if f.exception() is None]
        started.extend(batch)
        for f in futures:
            error = f.exception()
            if error is not None:
                raise error
        return batch

    def _survivors(self, batch: list[dict[str, Any]]) -> dict[str, int]:
        """Watch the batch for ``start_check_s``: the exit status of each instance that exited.

        The wait sleeps on each child's pidfd (Linux 5.3+), so an instance that dies is seen
        the moment it does and a batch that all died returns at once; where pidfds are not
        available it looks every 20 ms.
        """
        deadline = time.monotonic() + self.start_check_s
        exits: dict[str, int] = {}
        poller = select.poll()
        fds: dict[int, dict[str, Any]] = {}
        try:
            for meta in batch:
                try:
                    fd = os.pidfd_open(meta["pid"])
                except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
                    continue
                fds[fd] = meta
                poller.register(fd, select.POLLIN)
            while len(exits) < len(batch):
                for meta in batch:
                    code = _child_exit(meta["pid"])
                    if code is not None:
                        exits.setdefault(meta["id"], code)
                left = deadline - time.monotonic()
                if left <= 0 or len(exits) == len(batch):
                    break
                if len(fds) < len(batch) - len(exits):
                    left = min(left, 0.02)  # an instance without a pidfd is looked at
                ready = poller.poll(left * 1000)
                for fd, _ev in ready:  # exited: stop watching it (reaped above next turn)
                    poller.unregister(fd)
                    del fds[fd]
                    os.close(fd)
        finally:
            for fd in fds:
                os.close(fd)
        return exits

    def _start(self, request: LaunchRequest, image: dict[str, Any],
               extra_env: dict[str, str], port: int) -> dict[str, Any]:
        spec = image["spec"]
        iid = "i-" + secrets.token_hex(8)
        final = self.instances_dir / iid
        tmp = self.instances_dir / f".tmp-{iid}"
        service = request.tags.get(TAG_SERVICE, "")
        volumes = {v: str(self.data_dir / service / v) for v in spec.get("volumes", [])}
        command = list(spec["command"])
        if command[0] in ("python3", "python"):
            command[0] = sys.executable
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
            # Probe the way servers bind (SO_REUSEADDR, as the example app and most servers
            # do): a port whose last connections are in TIME_WAIT is free for a new listener.
            # Without it, every port an old instance served stays unusable for about a minute
            # after its retirement, and back-to-back rollouts run out of a small range.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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

    def _kill_and_remove(self, ids: Sequence[str], locked: bool = False) -> None:
        """SIGTERM each instance's process group, SIGKILL after stop_timeout_s, remove dirs.
        The dirs are removed under the provider's lock (``locked``: the caller holds it), so a
        listing that notes a dead instance never writes into, or re-creates, a removed one."""
        procs: dict[str, tuple[int, int | None, str | None]] = {}
        metas: dict[str, dict[str, Any]] = {}
        with contextlib.nullcontext() if locked else self._locked():
            for iid in ids:
                try:
                    meta = self._read_meta(iid)
                except (OSError, ValueError):  # unreadable meta: find the process by its env
                    meta = {"id": iid}
                if meta is None:
                    continue
                metas[iid] = meta
                if "tags" in meta and meta.get("terminating") is None:
                    # the terminate began: if immd dies before the directory is removed, the
                    # next listing finishes the job instead of showing a dead instance
                    meta["terminating"] = time.time()
                    with contextlib.suppress(FileNotFoundError):
                        _write_json(self.instances_dir / iid / "meta.json", meta)
        for iid, meta in metas.items():
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
        with contextlib.nullcontext() if locked else self._locked():
            self._remove_dirs(ids)
        self._still_running(pending)

    def _remove_dirs(self, ids: Sequence[str]) -> None:
        for iid in ids:
            if (self.instances_dir / iid).exists():
                self._remove_instance(iid)
                with contextlib.suppress(OSError), \
                        open(self.logs_dir / f"{iid}.log", "a", encoding="utf-8") as f:
                    f.write(f"[imm-local] {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                            f" terminated {iid}\n")

    def _still_running(self, pending: dict[str, tuple[int, int | None, str | None]]) -> None:
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
