"""The embedded haproxy's supervisor: writes ``haproxy.cfg``, runs ``haproxy -W -db`` as its own
process group, adopts one a previous immd left running, restarts it when it dies, reloads it
(SIGUSR2) when the routes change, and keeps the server-state file current so a restart or a
reload restores every runtime server with its weight, drain/maint state and health."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....errors import RouterError
from ...statefile import atomic_write, move_into_place
from .runtime import (
    RuntimeAPI,
    ServerState,
    down_interval_ms,
    fmt_host,
    parse_servers_state,
    state_file_text,
)


def private_dir(path: Path) -> None:
    """Make ``path`` a directory only this user can enter; refuse one somebody else could have
    prepared (a shared /tmp: not ours, a symlink, or open to others)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RouterError(f"{path} (the haproxy admin socket's directory) is not a private "
                          f"directory of uid {os.getuid()} (a symlink, another owner, or open "
                          "to others); remove it, or set the router's 'dir' to a shorter path")


@dataclass(frozen=True)
class ProcessSettings:
    """What the router's settings say about the haproxy process and its global config."""

    binary: str
    dir: Path
    socket_path: Path
    start_timeout_s: float = 10.0
    reload_timeout_s: float = 10.0
    hard_stop_after_s: float = 30.0
    supervise_interval_s: float = 1.0
    state_save_interval_s: float = 5.0
    retries: int = 3
    retry_on: str = "conn-failure empty-response"
    maxconn: int | None = None
    timeouts: Mapping[str, str] = field(default_factory=dict)


class Supervisor:
    """Runs one embedded haproxy for one router.

    :param routes: the router's routes (``{route: settings}``), read whenever the config is
        rendered.
    :param lock: the router's lock; the supervising thread holds it while it checks haproxy.
    """

    def __init__(self, name: str, settings: ProcessSettings, api: RuntimeAPI,
                 routes: Callable[[], Mapping[str, Mapping[str, Any]]], lock: threading.RLock,
                 log: logging.Logger) -> None:
        s = settings
        self.name, self.api, self.routes, self._lock, self.log = name, api, routes, lock, log
        self.binary, self.dir, self.socket_path = s.binary, s.dir, s.socket_path
        self.start_timeout_s, self.reload_timeout_s = s.start_timeout_s, s.reload_timeout_s
        self.hard_stop_after_s = s.hard_stop_after_s
        self.supervise_interval_s = s.supervise_interval_s
        self.state_save_interval_s = s.state_save_interval_s
        self.retries, self.retry_on, self.maxconn = s.retries, s.retry_on, s.maxconn
        self.timeouts = dict(s.timeouts)
        self.cfg_path = self.dir / "haproxy.cfg"
        self.state_file = self.dir / "servers.state"
        self.pid_file = self.dir / "haproxy.pid"
        self.log_file = self.dir / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._worker_pid: int | None = None
        self._running = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The haproxy master's pid (None when not running)."""
        return self._pid

    def start(self) -> None:
        """Adopt the haproxy a previous immd left on this directory, or start one; reload it when
        the settings changed since; start the supervising thread. Call under the router's lock."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if self.socket_path.parent != self.dir:
            # the router's directory is too deep for haproxy's socket path: the socket lives
            # in a short private directory, linked from here for whoever looks for it
            private_dir(self.socket_path.parent)
            link = self.dir / "admin.sock"
            if not (link.is_symlink() and os.readlink(link) == str(self.socket_path)):
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                link.symlink_to(self.socket_path)
        if not self._adopt():
            self.cold_start()
        elif _skeleton(self.render_config(self.api.dump_rows()[1])) != _skeleton(
                self.cfg_path.read_text()):
            self.log.info("router %s: settings changed since haproxy started; reloading it",
                          self.name)
            self.reload()
        self._running = True
        if self.supervise_interval_s > 0:
            self._stop.clear()
            self._watcher = threading.Thread(
                target=self._watch, name=f"haproxy-supervisor-{self.name}", daemon=True)
            self._watcher.start()

    def stop_watching(self) -> None:
        """Stop the supervising thread (not haproxy). Call without the router's lock."""
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=10)

    def close(self, stop_haproxy: bool) -> None:
        """Leave haproxy serving (the default: traffic outlives immd), or save its servers and
        stop it. Call under the router's lock, after stop_watching()."""
        self._running = False
        if not stop_haproxy:
            self.log.info("router %s: leaving haproxy (pid %s) running", self.name, self._pid)
            return
        with contextlib.suppress(RouterError, OSError):
            self.save_state()
        self.stop_haproxy()

    def render_config(self, rows: list[ServerState]) -> str:
        t = self.timeouts
        g = [
            f"# Written by imm for router {self.name}. Do not edit: imm rewrites it whenever a",
            "# route changes, with the servers it added at runtime.",
            "global",
            f"    stats socket {self.socket_path} mode 600 level admin expose-fd listeners",
            "    stats timeout 30s",
            f"    server-state-file {self.state_file}",
            f"    hard-stop-after {int(self.hard_stop_after_s)}s",
        ]
        if self.maxconn:
            g.append(f"    maxconn {self.maxconn}")
        g += [
            "",
            "defaults",
            "    mode http",
            "    load-server-state-from-file global",
            "    option redispatch",
            f"    retries {self.retries}",
            f"    retry-on {self.retry_on}",
        ]
        g += [f"    timeout {k} {v}" for k, v in t.items()]
        by_route: dict[str, list[ServerState]] = {}
        for r in rows:
            by_route.setdefault(r.backend, []).append(r)
        for route in sorted(self.routes()):
            rs = self.routes()[route]
            g += [
                "",
                f"frontend fe_{route}",
                f"    bind {rs['bind']}",
                f"    default_backend {route}",
                "",
                f"backend {route}",
                f"    balance {rs['balance']}",
                f"    option httpchk GET {rs['health_path']}",
                "    http-check expect status 200",
            ]
            if "check_timeout_ms" in rs:
                g.append(f"    timeout check {rs['check_timeout_ms']}ms")
            for r in by_route.get(route, []):
                if r.host == "-":
                    continue
                line = (f"    server {r.name} {fmt_host(r.host)}:{r.fields.get('srv_port', '0')} "
                        f"weight {r.number('srv_iweight')}")
                if r.checked:
                    line += (f" check inter {rs['check_interval_ms']} "
                             f"downinter {down_interval_ms(rs)} rise {rs['rise']} "
                             f"fall {rs['fall']}")
                line += f" maxconn {rs['maxconn']}"
                g.append(line)
        return "\n".join(g) + "\n"

    def write_config(self, dump: tuple[list[str], list[ServerState]]) -> None:
        columns, rows = dump
        if columns:
            atomic_write(self.state_file, state_file_text(columns, rows), mode=0o644)
        text = self.render_config(rows)
        tmp = self.cfg_path.with_suffix(".cfg.new")  # kept when haproxy rejects it
        atomic_write(tmp, text, mode=0o644)
        try:
            # not -q: it silences the ALERT lines that say what is wrong
            res = subprocess.run([self.binary, "-c", "-f", str(tmp)], capture_output=True,
                                 text=True, timeout=30)
        except FileNotFoundError:
            raise RouterError(f"router {self.name}: haproxy binary {self.binary!r} not found; "
                              f"install haproxy (apt-get install haproxy) or set 'binary'"
                              ) from None
        if res.returncode != 0:
            out = (res.stderr or "") + (res.stdout or "")
            alerts = [line.split(" : ", 1)[-1].strip() for line in out.splitlines()
                      if "[ALERT]" in line]
            raise RouterError(f"router {self.name}: haproxy rejects the generated config "
                              f"{tmp}: {'; '.join(alerts) or out.strip()}"[:2000])
        move_into_place(tmp, self.cfg_path)

    def cold_start(self) -> None:
        """Start haproxy with the routes and the servers saved by the last run, if any."""
        try:
            saved = parse_servers_state(self.state_file.read_text())
        except FileNotFoundError:
            saved = ([], [])
            atomic_write(self.state_file, "1\n", mode=0o644)  # an empty state file, not a warning
        self.write_config(saved)
        self._spawn()

    def _spawn(self) -> None:
        if self.log_file.exists() and self.log_file.stat().st_size > 1 << 20:
            os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        cmd = [self.binary, "-W", "-db", "-f", str(self.cfg_path)]
        with open(self.log_file, "ab") as logf:
            logf.write(f"--- imm router {self.name}: starting {' '.join(cmd)}\n".encode())
            logf.flush()
            try:
                # Its own session: a signal to immd's process group must not stop the traffic.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                        stderr=subprocess.STDOUT, cwd=self.dir,
                                        start_new_session=True)
            except FileNotFoundError:
                raise RouterError(f"router {self.name}: haproxy binary {self.binary!r} not "
                                  f"found; install haproxy or set 'binary'") from None
        self._proc, self._pid = proc, proc.pid
        atomic_write(self.pid_file, f"{proc.pid}\n", mode=0o644)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if proc.poll() is not None:
                self._proc = self._pid = None
                raise RouterError(f"router {self.name}: haproxy exited with status "
                                  f"{proc.returncode} at start; its log {self.log_file} says: "
                                  f"{self.log_tail()}")
            pid = self.api.info_pid()
            if pid is not None:
                self._worker_pid = pid
                break
            if time.monotonic() >= deadline:
                self.stop_haproxy()
                raise RouterError(f"router {self.name}: haproxy did not answer on "
                                  f"{self.socket_path} within {self.start_timeout_s:.0f}s; its "
                                  f"log {self.log_file} says: {self.log_tail()}")
            time.sleep(0.02)
        self.log.info("router %s: haproxy started (master pid %s, worker %s)", self.name,
                      self._pid, self._worker_pid)

    def _adopt(self) -> bool:
        """Take over an haproxy a previous immd started on this directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and self._is_ours(pid):
            worker = self.api.info_pid()
            if worker is not None:
                self._pid, self._proc, self._worker_pid = pid, None, worker
                self.log.info("router %s: adopted running haproxy (master pid %s)", self.name, pid)
                return True
            self.log.warning("router %s: haproxy pid %s does not answer on %s; replacing it",
                             self.name, pid, self.socket_path)
            self._pid = pid
            self.stop_haproxy()
        elif self.api.info_pid() is not None:
            raise RouterError(f"router {self.name}: an haproxy imm did not start answers on "
                              f"{self.socket_path}; stop it, or point 'admin_socket' at it to "
                              f"drive it as an external haproxy")
        return False

    def _is_ours(self, pid: int) -> bool:
        """``pid`` is a live haproxy running our config (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return _pid_alive(pid) and str(self.cfg_path).encode() in cmdline

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        # Adopted: not our child. (Its cmdline is briefly empty while the master re-executes
        # itself on a reload, so only liveness is checked here.)
        return self._pid is not None and _pid_alive(self._pid)

    def ensure_running(self) -> None:
        if self._alive():
            return
        self.log.warning("router %s: haproxy (pid %s) is gone; restarting it with the saved "
                         "servers. Its log %s says: %s", self.name, self._pid, self.log_file,
                         self.log_tail())
        self._proc = self._pid = None
        self.cold_start()

    def reload(self) -> None:
        """Rewrite the config with the live servers and reload the master (SIGUSR2)."""
        assert self._pid is not None
        dump = self.api.dump_rows()
        self.write_config(dump)
        old = self._worker_pid or self.api.info_pid()
        os.kill(self._pid, signal.SIGUSR2)
        deadline = time.monotonic() + self.reload_timeout_s
        while True:
            pid = self.api.info_pid()
            if pid is not None and pid != old:
                self._worker_pid = pid
                break
            if not self._alive():
                raise RouterError(f"router {self.name}: haproxy died while reloading; its log "
                                  f"{self.log_file} says: {self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RouterError(f"router {self.name}: haproxy did not come back within "
                                  f"{self.reload_timeout_s:.0f}s of a reload (SIGUSR2 to pid "
                                  f"{self._pid}); its log {self.log_file} says: "
                                  f"{self.log_tail()}")
            time.sleep(0.02)
        self.log.info("router %s: haproxy reloaded (worker %s -> %s)", self.name, old, pid)

    def check_port_free(self, route: str, bind: str) -> None:
        host, _, port = bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - probes what haproxy will bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as e:
                raise RouterError(f"router {self.name}, route {route}: cannot bind {bind}: "
                                  f"{e.strerror or e}; pick a free address:port for 'bind'"
                                  ) from None

    def stop_haproxy(self) -> None:
        pid, proc = self._pid, self._proc
        self._proc = self._pid = self._worker_pid = None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # workers left behind by a master killed hard
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _watch(self) -> None:
        last_save = time.monotonic()
        while not self._stop.wait(self.supervise_interval_s):
            try:
                with self._lock:
                    if not self._running or self._stop.is_set():
                        continue
                    self.ensure_running()
                    if (self.state_save_interval_s
                            and time.monotonic() - last_save >= self.state_save_interval_s):
                        last_save = time.monotonic()
                        self.save_state_quietly()
            except Exception as e:  # noqa: BLE001 - the supervisor must outlive one failure
                self.log.error("router %s: supervising haproxy failed: %s", self.name, e)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def save_state(self) -> tuple[list[str], list[ServerState]]:
        columns, rows = self.api.dump_rows()
        if columns:
            atomic_write(self.state_file, state_file_text(columns, rows), mode=0o644)
        return columns, rows

    def save_state_quietly(self) -> None:
        """Keep the server-state file current, so a restart after a crash restores servers."""
        try:
            self.save_state()
        except (RouterError, OSError) as e:
            self.log.warning("router %s: could not save %s: %s", self.name, self.state_file, e)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        return False
    return True


def _skeleton(config: str) -> str:
    """A config without its server lines: what a settings change would alter."""
    return "\n".join(line for line in config.splitlines()
                     if not line.lstrip().startswith(("server ", "#")))
