"""The HAProxy router: moves traffic through haproxy's runtime API (the admin socket).

Two modes, chosen by the router's settings:

* **embedded** (the default): immd writes ``haproxy.cfg`` under ``dir``, runs
  ``haproxy -W -db -f haproxy.cfg`` (master-worker) as its own child, restarts it when it dies and
  adopts a running one left by a previous immd. A route is a ``frontend``/``backend`` pair;
  adding a route rewrites the config and reloads the master (SIGUSR2). Servers are added at
  runtime, so before every reload the live ``show servers state`` is dumped into the
  ``server-state-file`` and written back into the config as ``server`` lines; the new worker loads
  the state file, so weights, drain/maint and health survive the reload.
* **external** (``admin_socket`` is set): drive an haproxy somebody else runs; a route is an
  existing ``backend`` of that haproxy.

Two haproxy 2.6 behaviours shape the code (both checked against the real binary):

* ``add server`` creates the server in maintenance and does not inherit ``default-server``; once
  enabled it takes traffic *before* its first health check. Hence: add with ``weight 0`` and every
  check option, ``enable health``, ``enable server``; ``set_weights`` refuses to raise a server
  from 0 until its check has passed.
* The state file restores the runtime weight only when the configured (initial) weight equals
  the one in the file, and drops a forced drain when the initial weight goes from 0 to > 0. So a
  server is written back with ``weight <srv_iweight>`` (its initial weight), never its current one.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BadRequest, RouterError
from ..base import Backend, Router, RouterContext
from ..hookspecs import hookimpl

# srv_op_state
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
# srv_admin_state bits (haproxy server-t.h)
ADM_FMAINT, ADM_IMAINT, ADM_CMAINT = 0x01, 0x02, 0x04
ADM_FDRAIN, ADM_IDRAIN = 0x08, 0x10
ADM_RMAINT, ADM_FQDN_CHANGED = 0x20, 0x40
ADM_MAINT = ADM_FMAINT | ADM_IMAINT | ADM_CMAINT | ADM_RMAINT
ADM_DRAIN = ADM_FDRAIN | ADM_IDRAIN
# srv_check_state bits
CHK_CONFIGURED, CHK_ENABLED = 0x02, 0x04
# srv_check_status (enum healthcheck_status; its numbers are part of the state-file format).
# srv_check_result is no use for "has it been checked": it is reset to 0 when a check starts.
HCHK_UNKNOWN, HCHK_INI, HCHK_START = 0, 1, 2
HCHK_PASSED = {6, 9, 15, 16, 20}  # L4OK, L6OK, L7OKD, L7OKCD, PROCOK

MAX_WEIGHT = 256
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
DELETE_GRACE_S = 2.0  # how long remove() retries 'del server' after the drain

_NAME_OK = re.compile(r"^[A-Za-z0-9_.:-]+$")
_BIND_OK = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.:-]*):[0-9]{1,5}$")
_PATH_OK = re.compile(r"^/[!-~]*$")  # printable, no spaces
_TIME_OK = re.compile(r"^[0-9]+(us|ms|s|m|h|d)?$")

ROUTE_DEFAULTS: dict[str, Any] = {
    "health_path": "/healthz",
    "check_interval_ms": 2000,
    "rise": 2,
    "fall": 3,
    "maxconn": 200,
    "balance": "roundrobin",
    "default_port": 80,
}
ROUTE_KEYS = set(ROUTE_DEFAULTS) | {"bind", "drain_timeout_s"}
BALANCE_ALGOS = {"roundrobin", "leastconn", "static-rr", "first"}

TIMEOUT_DEFAULTS = {
    "connect": "5s",
    "client": "30s",
    "server": "30s",
    "queue": "10s",
    "http-request": "10s",
    "http-keep-alive": "10s",
    "check": "2s",
}

ROUTER_KEYS = {
    "binary", "dir", "admin_socket", "routes", "drain_timeout_s", "first_check_timeout_s",
    "start_timeout_s", "reload_timeout_s", "command_timeout_s", "hard_stop_after_s",
    "supervise_interval_s", "state_save_interval_s", "stop_on_close", "timeouts", "retries",
    "retry_on", "maxconn",
}


# -- pure helpers ------------------------------------------------------------------------------


def server_name(name: str) -> str:
    """The haproxy server name for an imm backend name (instance ids usually pass unchanged)."""
    if _NAME_OK.match(name) and len(name) <= 64:
        return name
    safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:48]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


@dataclass
class ServerState:
    """One row of ``show servers state`` (format version 1)."""

    fields: dict[str, str]

    @property
    def backend(self) -> str:
        return self.fields["be_name"]

    @property
    def name(self) -> str:
        return self.fields["srv_name"]

    def number(self, key: str) -> int:
        try:
            return int(self.fields.get(key, "0"))
        except ValueError:
            return 0

    @property
    def host(self) -> str:
        addr = self.fields.get("srv_addr", "-")
        if addr == "-":
            addr = self.fields.get("srv_fqdn", "-")
        return addr

    @property
    def address(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.fields.get('srv_port', '0')}"

    @property
    def state(self) -> str:
        admin = self.number("srv_admin_state")
        if admin & ADM_MAINT:
            return "maint"
        if admin & ADM_DRAIN:
            return "drain"
        return "ready"

    @property
    def checked(self) -> bool:
        return bool(self.number("srv_check_state") & CHK_CONFIGURED)

    @property
    def healthy(self) -> bool | None:
        """None until the first check completes; servers without checks follow their op state."""
        op = self.number("srv_op_state")
        if not self.checked:
            return op == OP_RUNNING
        status = self.number("srv_check_status")
        if status in (HCHK_UNKNOWN, HCHK_INI, HCHK_START):
            return None
        return op == OP_RUNNING and status in HCHK_PASSED


def parse_servers_state(text: str) -> tuple[list[str], list[ServerState]]:
    """Parse ``show servers state`` output: (column names, rows)."""
    columns: list[str] = []
    rows: list[ServerState] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            columns = line[1:].split()
            continue
        if not columns:
            continue  # the version line
        values = line.split()
        rows.append(ServerState(dict(zip(columns, values, strict=False))))
    return columns, rows


def parse_stat_sessions(text: str) -> dict[str, int]:
    """Current sessions (``scur``) per server from ``show stat <backend> 4 -1`` CSV output."""
    header: list[str] = []
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            continue
        if not header or not line.strip():
            continue
        row = dict(zip(header, line.split(","), strict=False))
        sv = row.get("svname", "")
        if sv in ("FRONTEND", "BACKEND", ""):
            continue
        try:
            out[sv] = int(row.get("scur") or 0)
        except ValueError:
            out[sv] = 0
    return out


def _state_file_text(columns: list[str], rows: list[ServerState]) -> str:
    """A server-state file haproxy accepts: admin states it would reject are normalized."""
    lines = ["1", "# " + " ".join(columns)]
    for row in rows:
        f = dict(row.fields)
        admin = int(f.get("srv_admin_state", "0") or 0)
        admin &= ~(ADM_IDRAIN | ADM_IMAINT | ADM_RMAINT | ADM_FQDN_CHANGED)
        if admin & ADM_FMAINT:
            admin &= ~ADM_FDRAIN  # maint wins; haproxy refuses FMAINT|FDRAIN in a state file
        f["srv_admin_state"] = str(admin)
        lines.append(" ".join(f.get(c, "-") for c in columns))
    return "\n".join(lines) + "\n"


def _split_address(address: str, default_port: int) -> tuple[str, int]:
    host, port = address, default_port
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise BadRequest(f"address {address!r} has an unclosed '['; use [v6addr]:port")
        host, rest = address[1:end], address[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise BadRequest(f"address {address!r}: expected [v6addr]:port")
            port = int(rest[1:])
    elif address.count(":") == 1:
        host, _, p = address.partition(":")
        if not p.isdigit():
            raise BadRequest(f"address {address!r}: port {p!r} is not a number")
        port = int(p)
    if not host or not 0 < port < 65536:
        raise BadRequest(f"address {address!r}: expected host:port with a port in 1-65535")
    return host, port


def _resolve(host: str) -> str:
    """Dynamic servers cannot resolve names in haproxy 2.6: hand it an IP address."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as e:
        raise RouterError(f"cannot resolve backend host {host!r}: {e}; check the instance "
                          f"address or DNS") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # prefer IPv4
    return str(infos[0][4][0])


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _as_int(where: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise BadRequest(f"{where}: {key} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise BadRequest(f"{where}: {key} must be between {lo} and {hi}, got {value}")
    return int(value)


def _as_float(where: str, key: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
        raise BadRequest(f"{where}: {key} must be a number >= {lo}, got {value!r}")
    return float(value)


# -- the runtime API ---------------------------------------------------------------------------


class AdminSocket:
    """haproxy's runtime API: one command per connection, plain text in and out."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.path))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")


# -- the router --------------------------------------------------------------------------------


class HAProxyRouter(Router):
    """Routes through haproxy: embedded (immd runs it) or external (``admin_socket`` set)."""

    kind = "haproxy"

    def __init__(self, name: str, settings: Mapping[str, Any], context: RouterContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = f"router {name} (haproxy)"
        unknown = set(s) - ROUTER_KEYS
        if unknown:
            raise BadRequest(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(ROUTER_KEYS))}")
        self.log = context.log
        self.external = bool(s.get("admin_socket"))
        self.binary = str(s.get("binary", "haproxy"))
        self.dir = Path(s.get("dir") or Path(context.state_dir) / "haproxy" / name)
        self.socket_path = Path(s["admin_socket"]) if self.external else self.dir / "admin.sock"

        def seconds(key: str, default: float, lo: float) -> float:
            return _as_float(where, key, s.get(key, default), lo)

        self.drain_timeout_s = seconds("drain_timeout_s", 30, 0)
        self.first_check_timeout_s = seconds("first_check_timeout_s", 10, 0)
        self.start_timeout_s = seconds("start_timeout_s", 10, 0.1)
        self.reload_timeout_s = seconds("reload_timeout_s", 10, 0.1)
        self.hard_stop_after_s = seconds("hard_stop_after_s", 30, 1)
        self.supervise_interval_s = seconds("supervise_interval_s", 1.0, 0)
        self.state_save_interval_s = seconds("state_save_interval_s", 5.0, 0)
        self.stop_on_close = bool(s.get("stop_on_close", False))
        self.retries = _as_int(where, "retries", s.get("retries", 3), 0, 100)
        self.retry_on = str(s.get("retry_on", "conn-failure empty-response"))
        if not re.fullmatch(r"[a-z0-9 -]+", self.retry_on):
            raise BadRequest(f"{where}: retry_on {self.retry_on!r} is not a list of haproxy "
                             f"retry-on keywords")
        self.maxconn = (_as_int(where, "maxconn", s["maxconn"], 1, 10_000_000)
                        if s.get("maxconn") is not None else None)
        timeouts = dict(TIMEOUT_DEFAULTS)
        for k, v in dict(s.get("timeouts") or {}).items():
            if k not in TIMEOUT_DEFAULTS:
                raise BadRequest(f"{where}: unknown timeout {k!r}; known: "
                                 f"{', '.join(TIMEOUT_DEFAULTS)}")
            v = f"{v}ms" if isinstance(v, int) and not isinstance(v, bool) else str(v)
            if not _TIME_OK.match(v):
                raise BadRequest(f"{where}: timeout {k} = {v!r} is not an haproxy time "
                                 f"(e.g. 500ms, 5s)")
            timeouts[k] = v
        self.timeouts = timeouts
        if len(str(self.socket_path)) > SUN_PATH_MAX:
            raise BadRequest(f"{where}: admin socket path {self.socket_path} is "
                             f"{len(str(self.socket_path))} bytes, longer than the {SUN_PATH_MAX} "
                             f"a unix socket allows; set 'dir' to a shorter directory")
        self.api = AdminSocket(self.socket_path, seconds("command_timeout_s", 5.0, 0.1))
        self.cfg_path = self.dir / "haproxy.cfg"
        self.state_file = self.dir / "servers.state"
        self.pid_file = self.dir / "haproxy.pid"
        self.log_file = self.dir / "haproxy.log"
        self.meta_file = self.dir / "router.json"

        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._worker_pid: int | None = None
        self._started = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._routes: dict[str, dict[str, Any]] = {}
        self._names: dict[str, dict[str, str]] = {}  # route -> haproxy server name -> imm name
        self._load_meta()
        self._declared = {r: dict(v) for r, v in dict(s.get("routes") or {}).items()}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            if self.external:
                self._check_external()
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
                os.chmod(self.dir, 0o700)
                if not self._adopt():
                    self._cold_start()
                elif _skeleton(self._render_config(self._dump_rows()[1])) != _skeleton(
                        self.cfg_path.read_text()):
                    self.log.info("router %s: settings changed since haproxy started; "
                                  "reloading it", self.name)
                    self._reload()
                if self.supervise_interval_s > 0:
                    self._stop.clear()
                    self._watcher = threading.Thread(
                        target=self._watch, name=f"haproxy-supervisor-{self.name}", daemon=True)
                    self._watcher.start()
            self._started = True
        for route, rs in self._declared.items():
            self.ensure_route(route, rs)

    def stop(self) -> None:
        """Stop the embedded haproxy whatever stop_on_close says (immd --stop-fleet)."""
        self.stop_on_close = True
        self.close()

    def close(self) -> None:
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=10)
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self.external:
                return
            if not self.stop_on_close:
                self.log.info("router %s: leaving haproxy (pid %s) running", self.name, self._pid)
                return
            with contextlib.suppress(RouterError, OSError):
                self._save_state()
            self._stop_haproxy()

    def wait_healthy(self, route: str, name: str, timeout_s: float = 30.0) -> bool:
        """Wait until ``name`` has passed its health check; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            b = self._find(route, name)
            if b is not None and b.healthy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- routes ---------------------------------------------------------------------------------

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        rs = self._route_settings(route, settings)
        with self._lock:
            if self.external:
                self._ensure_running()
                out = self._cmd(f"show servers state {route}", route=route, check=False)
                if "Can't find backend" in out:
                    raise RouterError(
                        f"router {self.name}: haproxy at {self.socket_path} has no backend "
                        f"{route!r}; add to its haproxy.cfg a section 'backend {route}' with "
                        f"'balance roundrobin', 'option httpchk GET {rs['health_path']}' and "
                        f"'http-check expect status 200', then reload it")
                self._routes[route] = rs
                self._save_meta()
                return
            for other, ors in self._routes.items():
                if other != route and ors.get("bind") == rs["bind"]:
                    raise BadRequest(f"router {self.name}: route {route!r} binds {rs['bind']}, "
                                     f"already used by route {other!r}")
            if self._routes.get(route) == rs and (
                    not self._started or self._backend_exists(route)):
                return
            previous = self._routes.get(route)
            if not self._started:
                self._routes[route] = rs
                self._save_meta()
                return
            self._ensure_running()
            if previous is None or previous.get("bind") != rs["bind"]:
                self._check_port_free(route, rs["bind"])
            self._routes[route] = rs
            try:
                self._reload()
            except Exception:
                if previous is None:
                    del self._routes[route]
                else:
                    self._routes[route] = previous
                with contextlib.suppress(RouterError, OSError):
                    self._write_config(self._dump_rows())
                raise
            self._save_meta()

    def _route_settings(self, route: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        where = f"router {self.name}, route {route!r}"
        if not isinstance(route, str) or not _NAME_OK.match(route):
            raise BadRequest(f"{where}: a route name may only hold letters, digits and "
                             f"'_.:-' (it becomes an haproxy backend name)")
        unknown = set(settings) - ROUTE_KEYS
        if unknown:
            raise BadRequest(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(ROUTE_KEYS))}")
        rs: dict[str, Any] = {**ROUTE_DEFAULTS, **settings}
        if not self.external:
            bind = rs.get("bind")
            if not isinstance(bind, str) or not _BIND_OK.match(bind):
                raise BadRequest(f"{where}: 'bind' must be 'address:port' such as "
                                 f"'127.0.0.1:8080', got {bind!r}")
        if not isinstance(rs["health_path"], str) or not _PATH_OK.match(rs["health_path"]):
            raise BadRequest(f"{where}: health_path must be an absolute URL path without "
                             f"spaces, got {rs['health_path']!r}")
        rs["check_interval_ms"] = _as_int(where, "check_interval_ms", rs["check_interval_ms"],
                                          10, 3_600_000)
        rs["rise"] = _as_int(where, "rise", rs["rise"], 1, 100)
        rs["fall"] = _as_int(where, "fall", rs["fall"], 1, 100)
        rs["maxconn"] = _as_int(where, "maxconn", rs["maxconn"], 1, 1_000_000)
        rs["default_port"] = _as_int(where, "default_port", rs["default_port"], 1, 65535)
        if rs["balance"] not in BALANCE_ALGOS:
            raise BadRequest(f"{where}: balance {rs['balance']!r} does not allow servers added "
                             f"at runtime; use one of {', '.join(sorted(BALANCE_ALGOS))}")
        if "drain_timeout_s" in rs:
            rs["drain_timeout_s"] = _as_float(where, "drain_timeout_s", rs["drain_timeout_s"], 0)
        return rs

    # -- backends -------------------------------------------------------------------------------

    def backends(self, route: str) -> list[Backend]:
        with self._lock:
            self._ensure_running()
            rows = self._rows(route)
            sessions = parse_stat_sessions(
                self._cmd(f"show stat {route} 4 -1", route=route, check=False))
            names = self._names.get(route, {})
        return [
            Backend(name=names.get(r.name, r.name), address=r.address, weight=r.number("srv_uweight"),
                    state=r.state, healthy=r.healthy, sessions=sessions.get(r.name, 0))
            for r in rows
        ]

    def add(self, route: str, name: str, address: str) -> None:
        rs = self._known_route(route)
        host, port = _split_address(address, rs["default_port"])
        ip = _resolve(host)
        hname = server_name(name)
        with self._lock:
            self._ensure_running()
            existing = {r.name: r for r in self._rows(route)}
            row = existing.get(hname)
            if row is not None:
                if (row.host, row.number("srv_port")) != (ip, port):
                    raise RouterError(
                        f"router {self.name}, route {route}: server {name!r} already exists "
                        f"with address {row.address}, not {_fmt_host(ip)}:{port}; remove it "
                        f"first or use another name")
                if row.state != "maint":
                    self._remember(route, hname, name)
                    return  # already added and enabled: leave its weight alone
                # A half-finished add (or remove): make sure it starts again at weight 0.
                self._cmd(f"set weight {route}/{hname} 0", route=route, server=name)
            else:
                self._remember(route, hname, name)
                self._cmd(
                    f"add server {route}/{hname} {_fmt_host(ip)}:{port} weight 0 check "
                    f"inter {rs['check_interval_ms']} rise {rs['rise']} fall {rs['fall']} "
                    f"maxconn {rs['maxconn']}",
                    route=route, server=name, expect="New server registered")
            self._cmd(f"enable health {route}/{hname}", route=route, server=name)
            self._cmd(f"enable server {route}/{hname}", route=route, server=name)
            self._save_state_quietly()
        self.log.info("router %s, route %s: added %s at %s (weight 0, health-checked)",
                      self.name, route, name, address)

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        self._known_route(route)
        for n, w in weights.items():
            _as_int(f"router {self.name}, route {route!r}, server {n!r}", "weight", w,
                    0, MAX_WEIGHT)
        current = {b.name: b for b in self.backends(route)}
        missing = sorted(set(weights) - set(current))
        if missing:
            raise RouterError(f"router {self.name}, route {route}: no server(s) "
                              f"{', '.join(missing)} in the route; add them first")
        raising = [n for n, w in weights.items() if w > 0 and current[n].weight == 0]
        self._gate_health(route, raising)
        # Raise before lowering, so the route never has no weight left in between.
        order = sorted(weights.items(), key=lambda kv: kv[1] <= current[kv[0]].weight)
        with self._lock:
            self._ensure_running()
            for n, w in order:
                hname = server_name(n)
                self._cmd(f"set weight {route}/{hname} {int(w)}", route=route, server=n)
                if w > 0 and current[n].state == "drain":
                    self._cmd(f"set server {route}/{hname} state ready", route=route, server=n)
            self._save_state_quietly()

    def _gate_health(self, route: str, names: list[str]) -> None:
        """A server gets weight only once its health check has passed."""
        if not names:
            return
        deadline = time.monotonic() + self.first_check_timeout_s
        while True:
            state = {b.name: b for b in self.backends(route)}
            pending = [n for n in names if n in state and state[n].healthy is None]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        bad = [n for n in names if n not in state or state[n].healthy is not True]
        if bad:
            detail = ", ".join(
                f"{n} (healthy={state[n].healthy if n in state else 'gone'})" for n in bad)
            path = self._routes.get(route, {}).get("health_path", "/healthz")
            raise RouterError(
                f"router {self.name}, route {route}: refusing to give weight to {detail}: its "
                f"health check ({path}) has not passed; check that the instance answers "
                f"{path} with 200, then wait_healthy() before set_weights()")

    def drain(self, route: str, name: str) -> None:
        self._known_route(route)
        hname = server_name(name)
        with self._lock:
            self._ensure_running()
            row = {r.name: r for r in self._rows(route)}.get(hname)
            if row is None:
                self.log.info("router %s, route %s: drain %s: not present", self.name, route, name)
                return
            if row.state == "ready":
                self._cmd(f"set server {route}/{hname} state drain", route=route, server=name)
                self._save_state_quietly()

    def remove(self, route: str, name: str) -> None:
        """Drain, wait for sessions to end (``drain_timeout_s``), then maint and ``del server``.

        haproxy refuses to delete a server that still has connections, and 2.6 cannot cut a
        request that is waiting for its server (``shutdown sessions`` only takes effect once the
        server answers). Past the timeout the server is left in maint, taking no traffic, and a
        RouterError says so; calling remove() again once its sessions are gone finishes the job.
        """
        rs = self._known_route(route)
        hname = server_name(name)
        if self._find(route, name) is None:
            return
        self.drain(route, name)
        timeout = float(rs.get("drain_timeout_s", self.drain_timeout_s))
        deadline = time.monotonic() + timeout
        while True:
            b = self._find(route, name)
            if b is None:
                return
            if b.sessions == 0:
                break
            if time.monotonic() >= deadline:
                self.log.warning("router %s, route %s: %s still has %d session(s) after %.1fs "
                                 "of drain; shutting them down", self.name, route, name,
                                 b.sessions, timeout)
                self._cmd(f"shutdown sessions server {route}/{hname}", route=route, server=name)
                break
            time.sleep(0.05)
        with self._lock:
            self._ensure_running()
            self._cmd(f"set server {route}/{hname} state maint", route=route, server=name)
            self._save_state_quietly()
        give_up = time.monotonic() + DELETE_GRACE_S
        while True:
            with self._lock:
                out = self._cmd(f"del server {route}/{hname}", route=route, server=name,
                                check=False)
                if "Server deleted" in out or "No such server" in out:
                    self._names.get(route, {}).pop(hname, None)
                    self._save_meta()
                    self._save_state_quietly()
                    break
            if time.monotonic() >= give_up:
                left = self._find(route, name)
                raise RouterError(
                    f"router {self.name}, route {route}, server {name}: 'del server "
                    f"{route}/{hname}' refused: {out.strip()} ({left.sessions if left else '?'} "
                    f"session(s) left after a {timeout:.1f}s drain). The server is in maint and "
                    f"takes no traffic; stop the instance or wait for its requests to end, then "
                    f"call remove again", detail={"command": f"del server {route}/{hname}",
                                                   "answer": out.strip()})
            time.sleep(0.05)
        self.log.info("router %s, route %s: removed %s", self.name, route, name)

    # -- helpers: the runtime API ---------------------------------------------------------------

    def _cmd(self, cmd: str, *, route: str | None = None, server: str | None = None,
             expect: str | None = None, check: bool = True) -> str:
        """Run one runtime API command; with ``check``, any unexpected answer is an error."""
        where = f"router {self.name}" + (f", route {route}" if route else "") + (
            f", server {server}" if server else "")
        try:
            out = self.api.command(cmd)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            hint = ("check that haproxy runs with 'stats socket "
                    f"{self.socket_path} level admin'" if self.external
                    else f"haproxy is not answering; see {self.log_file}")
            raise RouterError(f"{where}: cannot reach the haproxy admin socket "
                              f"{self.socket_path} for '{cmd}': {e.strerror or e}; {hint}",
                              detail={"command": cmd}) from None
        except PermissionError:
            raise RouterError(f"{where}: permission denied on the haproxy admin socket "
                              f"{self.socket_path} for '{cmd}'; run immd as the socket's owner "
                              f"or give the socket a group immd is in", detail={"command": cmd}
                              ) from None
        except OSError as e:
            raise RouterError(f"{where}: haproxy admin socket {self.socket_path} failed on "
                              f"'{cmd}': {e}; check haproxy's health and load",
                              detail={"command": cmd}) from None
        if not check:
            return out
        text = out.strip()
        if (expect is not None and text.startswith(expect)) or (expect is None and not text):
            return out
        raise RouterError(f"{where}: haproxy refused '{cmd}': {text[:300] or '(no answer)'}",
                          detail={"command": cmd, "answer": text})

    def _rows(self, route: str) -> list[ServerState]:
        out = self._cmd(f"show servers state {route}", route=route, check=False)
        if "Can't find backend" in out:
            raise RouterError(self._no_backend_message(route))
        return parse_servers_state(out)[1]

    def _dump_rows(self) -> tuple[list[str], list[ServerState]]:
        return parse_servers_state(self._cmd("show servers state", check=False))

    def _backend_exists(self, route: str) -> bool:
        return "Can't find backend" not in self._cmd(f"show servers state {route}", check=False)

    def _no_backend_message(self, route: str) -> str:
        if self.external:
            return (f"router {self.name}: haproxy at {self.socket_path} has no backend {route!r}; "
                    f"add 'backend {route}' to its haproxy.cfg and reload it")
        return (f"router {self.name}: route {route!r} is not declared; call ensure_route() "
                f"with its bind address first")

    def _known_route(self, route: str) -> dict[str, Any]:
        if not self._started:
            raise RouterError(f"router {self.name}: not started; call start() first")
        rs = self._routes.get(route)
        if rs is None:
            if self.external and self._started:
                # A backend in somebody else's haproxy: allowed once it exists there.
                self.ensure_route(route, {})
                return self._routes[route]
            raise RouterError(self._no_backend_message(route))
        return rs

    def _find(self, route: str, name: str) -> Backend | None:
        for b in self.backends(route):
            if b.name == name:
                return b
        return None

    def _remember(self, route: str, hname: str, name: str) -> None:
        if self._names.get(route, {}).get(hname) != name:
            self._names.setdefault(route, {})[hname] = name
            self._save_meta()

    # -- helpers: persistence -------------------------------------------------------------------

    def _load_meta(self) -> None:
        try:
            data = json.loads(self.meta_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warning("router %s: ignoring unreadable %s: %s", self.name, self.meta_file, e)
            return
        if not self.external:
            self._routes = {r: dict(v) for r, v in data.get("routes", {}).items()}
        self._names = {r: dict(v) for r, v in data.get("names", {}).items()}

    def _save_meta(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "routes": self._routes, "names": self._names}
        _atomic_write(self.meta_file, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def _save_state(self) -> tuple[list[str], list[ServerState]]:
        columns, rows = self._dump_rows()
        if columns:
            _atomic_write(self.state_file, _state_file_text(columns, rows))
        return columns, rows

    def _save_state_quietly(self) -> None:
        """Keep the server-state file current, so a restart after a crash restores servers."""
        if self.external:
            return
        try:
            self._save_state()
        except (RouterError, OSError) as e:
            self.log.warning("router %s: could not save %s: %s", self.name, self.state_file, e)

    # -- helpers: the embedded haproxy ----------------------------------------------------------

    def _render_config(self, rows: list[ServerState]) -> str:
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
        for route in sorted(self._routes):
            rs = self._routes[route]
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
            for r in by_route.get(route, []):
                if r.host == "-":
                    continue
                line = (f"    server {r.name} {_fmt_host(r.host)}:{r.fields.get('srv_port', '0')} "
                        f"weight {r.number('srv_iweight')}")
                if r.checked:
                    line += (f" check inter {rs['check_interval_ms']} rise {rs['rise']} "
                             f"fall {rs['fall']}")
                line += f" maxconn {rs['maxconn']}"
                g.append(line)
        return "\n".join(g) + "\n"

    def _write_config(self, dump: tuple[list[str], list[ServerState]]) -> None:
        columns, rows = dump
        if columns:
            _atomic_write(self.state_file, _state_file_text(columns, rows))
        text = self._render_config(rows)
        tmp = self.cfg_path.with_suffix(".cfg.new")
        tmp.write_text(text)
        try:
            res = subprocess.run([self.binary, "-c", "-q", "-f", str(tmp)], capture_output=True,
                                 text=True, timeout=30)
        except FileNotFoundError:
            raise RouterError(f"router {self.name}: haproxy binary {self.binary!r} not found; "
                              f"install haproxy (apt-get install haproxy) or set 'binary'"
                              ) from None
        if res.returncode != 0:
            raise RouterError(f"router {self.name}: haproxy rejects the generated config "
                              f"{tmp}: {(res.stderr or res.stdout).strip()[-2000:]}")
        os.replace(tmp, self.cfg_path)

    def _cold_start(self) -> None:
        """Start haproxy with the routes and the servers saved by the last run, if any."""
        try:
            saved = parse_servers_state(self.state_file.read_text())
        except FileNotFoundError:
            saved = ([], [])
            _atomic_write(self.state_file, "1\n")  # an empty state file, not a warning
        self._write_config(saved)
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
        _atomic_write(self.pid_file, f"{proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if proc.poll() is not None:
                self._proc = self._pid = None
                raise RouterError(f"router {self.name}: haproxy exited with status "
                                  f"{proc.returncode} at start; its log {self.log_file} says: "
                                  f"{self._log_tail()}")
            pid = self._info_pid()
            if pid is not None:
                self._worker_pid = pid
                break
            if time.monotonic() >= deadline:
                self._stop_haproxy()
                raise RouterError(f"router {self.name}: haproxy did not answer on "
                                  f"{self.socket_path} within {self.start_timeout_s:.0f}s; its "
                                  f"log {self.log_file} says: {self._log_tail()}")
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
            worker = self._info_pid()
            if worker is not None:
                self._pid, self._proc, self._worker_pid = pid, None, worker
                self.log.info("router %s: adopted running haproxy (master pid %s)", self.name, pid)
                return True
            self.log.warning("router %s: haproxy pid %s does not answer on %s; replacing it",
                             self.name, pid, self.socket_path)
            self._pid = pid
            self._stop_haproxy()
        elif self._info_pid() is not None:
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

    def _info_pid(self) -> int | None:
        try:
            out = self.api.command("show info")
        except OSError:
            return None
        m = re.search(r"^Pid: (\d+)$", out, re.M)
        return int(m.group(1)) if m else None

    def _ensure_running(self) -> None:
        if not self._started:
            raise RouterError(f"router {self.name}: not started; call start() first")
        if self.external or self._alive():
            return
        self.log.warning("router %s: haproxy (pid %s) is gone; restarting it with the saved "
                         "servers. Its log %s says: %s", self.name, self._pid, self.log_file,
                         self._log_tail())
        self._proc = self._pid = None
        self._cold_start()

    def _reload(self) -> None:
        """Rewrite the config with the live servers and reload the master (SIGUSR2)."""
        assert self._pid is not None
        dump = self._dump_rows()
        self._write_config(dump)
        old = self._worker_pid or self._info_pid()
        os.kill(self._pid, signal.SIGUSR2)
        deadline = time.monotonic() + self.reload_timeout_s
        while True:
            pid = self._info_pid()
            if pid is not None and pid != old:
                self._worker_pid = pid
                break
            if not self._alive():
                raise RouterError(f"router {self.name}: haproxy died while reloading; its log "
                                  f"{self.log_file} says: {self._log_tail()}")
            if time.monotonic() >= deadline:
                raise RouterError(f"router {self.name}: haproxy did not come back within "
                                  f"{self.reload_timeout_s:.0f}s of a reload (SIGUSR2 to pid "
                                  f"{self._pid}); its log {self.log_file} says: "
                                  f"{self._log_tail()}")
            time.sleep(0.02)
        self.log.info("router %s: haproxy reloaded (worker %s -> %s)", self.name, old, pid)

    def _check_port_free(self, route: str, bind: str) -> None:
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

    def _stop_haproxy(self) -> None:
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
                    if not self._started or self._stop.is_set():
                        continue
                    self._ensure_running()
                    if (self.state_save_interval_s
                            and time.monotonic() - last_save >= self.state_save_interval_s):
                        last_save = time.monotonic()
                        self._save_state_quietly()
            except Exception as e:  # noqa: BLE001 - the supervisor must outlive one failure
                self.log.error("router %s: supervising haproxy failed: %s", self.name, e)

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    # -- helpers: external mode -----------------------------------------------------------------

    def _check_external(self) -> None:
        level = self._cmd("show cli level", check=False).strip()
        if level != "admin":
            raise RouterError(f"router {self.name}: the haproxy admin socket {self.socket_path} "
                              f"grants level {level!r}, not 'admin'; add 'level admin' to its "
                              f"'stats socket' line")


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@hookimpl(trylast=True)
def imm_register_routers(registry: Any) -> None:
    registry.add(HAProxyRouter)
