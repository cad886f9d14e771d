"""The HAProxy router: moves traffic through haproxy's runtime API (the admin socket).

Two modes, chosen by the router's settings:

* **embedded** (the default): immd writes ``haproxy.cfg`` under ``dir``, runs
  ``haproxy -W -db -f haproxy.cfg`` (master-worker) as its own child, restarts it when it dies and
  adopts a running one left by a previous immd (:mod:`.supervisor`). A route is a
  ``frontend``/``backend`` pair; adding a route rewrites the config and reloads the master
  (SIGUSR2). Servers are added at runtime (:mod:`.runtime`), so before every reload the live
  ``show servers state`` is dumped into the ``server-state-file`` and written back into the
  config as ``server`` lines; the new worker loads the state file, so weights, drain/maint and
  health survive the reload.
* **external** (``admin_socket`` is set): drive an haproxy somebody else runs; a route is an
  existing ``backend`` of that haproxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ....errors import BadRequest, HealthTimeout, RouterError
from ...base import Backend, PluginContext, Router, RouterFeature
from ...statefile import write_json
from .runtime import RuntimeAPI, down_interval_ms, fmt_host, parse_stat_sessions, server_name
from .supervisor import ProcessSettings, Supervisor

MAX_WEIGHT = 256
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
# haproxy binds its socket as "<path>.<pid>.tmp" and renames it: 10 bytes fewer for the path
HAPROXY_SOCKET_MAX = 97
DELETE_GRACE_S = 2.0  # how long remove() retries 'del server' after the drain
WATCH_S = 0.005  # wait_health, remove: how often they read the servers' state

SHORT_SOCKET_ROOT = Path("/tmp")  # noqa: S108 - a private 0700 directory is made under it


def embedded_socket_path(directory: Path) -> Path:
    """Where the embedded haproxy's admin socket lives: ``admin.sock`` in the router's directory,
    or, when that path is too long for haproxy (a deep state directory), in a short private
    directory named after it (the same one for every immd on that directory, so a restarted
    immd finds the haproxy it left running). :func:`private_dir` checks and makes it."""
    path = directory / "admin.sock"
    if len(str(path)) <= HAPROXY_SOCKET_MAX:
        return path
    tag = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return SHORT_SOCKET_ROOT / f"imm-haproxy-{os.getuid()}-{tag}" / "admin.sock"


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
# check_timeout_ms: how long one health check may wait for its answer before it counts as a
# failure (haproxy's 'timeout check' for the route's backend); unset, the router's
# timeouts.check applies. A check that hangs then fails like a check that answers 500.
# down_interval_ms: how often a server that is down is checked (haproxy's 'downinter'); a new
# server is added down, so this is also how soon its first check comes. Unset: the check
# interval, at most 250 ms, so a new instance does not wait a whole check_interval_ms to serve.
ROUTE_KEYS = set(ROUTE_DEFAULTS) | {"bind", "drain_timeout_s", "check_timeout_ms",
                                    "down_interval_ms"}
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



class HAProxyRouter(Router):
    """Routes through haproxy: embedded (immd runs it) or external (``admin_socket`` set)."""

    kind = "haproxy"
    features = frozenset({RouterFeature.HEALTH_CHECK, RouterFeature.SESSIONS})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = f"router {name} (haproxy)"
        unknown = set(s) - ROUTER_KEYS
        if unknown:
            raise BadRequest(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(ROUTER_KEYS))}")
        self.log = context.log
        self.external = bool(s.get("admin_socket"))
        self.dir = Path(s.get("dir") or Path(context.state_dir) / "haproxy" / name)
        self.socket_path = (Path(s["admin_socket"]) if self.external
                            else embedded_socket_path(self.dir))

        def seconds(key: str, default: float, lo: float) -> float:
            return _as_float(where, key, s.get(key, default), lo)

        self.drain_timeout_s = seconds("drain_timeout_s", 30, 0)
        self.first_check_timeout_s = seconds("first_check_timeout_s", 10, 0)
        self.stop_on_close = bool(s.get("stop_on_close", False))
        retries = _as_int(where, "retries", s.get("retries", 3), 0, 100)
        retry_on = str(s.get("retry_on", "conn-failure empty-response"))
        if not re.fullmatch(r"[a-z0-9 -]+", retry_on):
            raise BadRequest(f"{where}: retry_on {retry_on!r} is not a list of haproxy "
                             f"retry-on keywords")
        maxconn = (_as_int(where, "maxconn", s["maxconn"], 1, 10_000_000)
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
        if self.external and len(str(self.socket_path)) > SUN_PATH_MAX:
            raise BadRequest(f"{where}: admin socket path {self.socket_path} is "
                             f"{len(str(self.socket_path))} bytes, longer than the "
                             f"{SUN_PATH_MAX} a unix socket allows; give haproxy a shorter "
                             "'stats socket' path")
        self.api = RuntimeAPI(name, self.socket_path, seconds("command_timeout_s", 5.0, 0.1),
                              self.external, None if self.external else self.dir / "haproxy.log")
        self.meta_file = self.dir / "router.json"
        self._lock = threading.RLock()
        self._start_error = ""
        self.supervisor: Supervisor | None = None
        if not self.external:
            self.supervisor = Supervisor(name, ProcessSettings(
                binary=str(s.get("binary", "haproxy")), dir=self.dir,
                socket_path=self.socket_path,
                start_timeout_s=seconds("start_timeout_s", 10, 0.1),
                reload_timeout_s=seconds("reload_timeout_s", 10, 0.1),
                hard_stop_after_s=seconds("hard_stop_after_s", 30, 1),
                supervise_interval_s=seconds("supervise_interval_s", 1.0, 0),
                state_save_interval_s=seconds("state_save_interval_s", 5.0, 0),
                retries=retries, retry_on=retry_on, maxconn=maxconn, timeouts=timeouts,
            ), self.api, lambda: self._routes, self._lock, self.log)
        self._started = False
        self._routes: dict[str, dict[str, Any]] = {}
        self._names: dict[str, dict[str, str]] = {}  # route -> haproxy server name -> imm name
        self._load_meta()
        self._declared = {r: dict(v) for r, v in dict(s.get("routes") or {}).items()}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            try:
                if self.supervisor is None:
                    self.api.check_admin()
                else:
                    self.supervisor.start()
            except RouterError as e:
                # what later calls say instead of a bare "not started"
                self._start_error = e.message.removeprefix(f"router {self.name}: ")
                raise
            self._started = True
            self._start_error = ""
        for route, rs in self._declared.items():
            self.ensure_route(route, rs)

    def stop(self) -> None:
        """Stop the embedded haproxy whatever stop_on_close says (immd --stop-fleet)."""
        self.stop_on_close = True
        self.close()

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop_watching()
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self.supervisor is not None:
                self.supervisor.close(stop_haproxy=self.stop_on_close)

    def _sup(self) -> Supervisor:
        """The supervisor of the embedded haproxy (routes of an external one never need it)."""
        assert self.supervisor is not None, "only an embedded haproxy is supervised"
        return self.supervisor

    def _not_started(self) -> RouterError:
        if self._start_error:
            return RouterError(f"router {self.name}: not started, because {self._start_error}")
        return RouterError(f"router {self.name}: not started; call start() first")

    def _ensure_running(self) -> None:
        if not self._started:
            raise self._not_started()
        if self.supervisor is not None:
            self.supervisor.ensure_running()

    def _save_state_quietly(self) -> None:
        if self.supervisor is not None:
            self.supervisor.save_state_quietly()

    def wait_healthy(self, route: str, name: str, timeout_s: float = 30.0) -> bool:
        """Wait until ``name`` has passed its health check; False on timeout."""
        try:
            self.wait_health(route, [name], timeout_s)
        except HealthTimeout:
            return False
        return True

    def wait_health(self, route: str, names: Sequence[str], timeout_s: float,
                    stop: threading.Event | None = None) -> dict[str, bool | None]:
        """Watch the servers' check state through the runtime API until every one of ``names``
        has passed (see ``Router.wait_health``).

        haproxy 2.6 tells nobody when a check changes a server's state, so the router reads
        ``show servers state <route>`` every ``WATCH_S`` (a command on a local socket that
        answers in well under a millisecond): the wait ends within that of the check that
        completes it, where polling the route's health every few tenths of a second would add
        up to that much to each rollout step.
        """
        self._known_route(route)
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._ensure_running()
                rows = self.api.rows(route)
                known = self._names.get(route, {})
            health = {known.get(r.name, r.name): r.healthy for r in rows}
            if stop.is_set() or all(health.get(n) is True for n in names):
                return health
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.health_timed_out(route, names, health, timeout_s)
            stop.wait(min(WATCH_S, left))

    # -- routes ---------------------------------------------------------------------------------

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        rs = self._route_settings(route, settings)
        with self._lock:
            if self.external:
                self._ensure_running()
                out = self.api.cmd(f"show servers state {route}", route=route, check=False)
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
                    not self._started or self.api.backend_exists(route)):
                return
            previous = self._routes.get(route)
            if not self._started:
                self._routes[route] = rs
                self._save_meta()
                return
            self._ensure_running()
            if previous is None or previous.get("bind") != rs["bind"]:
                self._sup().check_port_free(route, rs["bind"])
            self._routes[route] = rs
            try:
                self._sup().reload()
            except Exception:
                if previous is None:
                    del self._routes[route]
                else:
                    self._routes[route] = previous
                with contextlib.suppress(RouterError, OSError):
                    self._sup().write_config(self.api.dump_rows())
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
        if "down_interval_ms" in rs:
            rs["down_interval_ms"] = _as_int(where, "down_interval_ms", rs["down_interval_ms"],
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
        if "check_timeout_ms" in rs:
            if self.external:
                raise BadRequest(f"{where}: check_timeout_ms applies to the haproxy imm runs; "
                                 f"for this haproxy set 'timeout check' in its backend {route}")
            rs["check_timeout_ms"] = _as_int(where, "check_timeout_ms", rs["check_timeout_ms"],
                                             1, 3_600_000)
        return rs

    # -- backends -------------------------------------------------------------------------------

    def backends(self, route: str) -> list[Backend]:
        with self._lock:
            self._ensure_running()
            rows = self.api.rows(route)
            sessions = parse_stat_sessions(
                self.api.cmd(f"show stat {route} 4 -1", route=route, check=False))
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
            existing = {r.name: r for r in self.api.rows(route)}
            row = existing.get(hname)
            if row is not None:
                if (row.host, row.number("srv_port")) != (ip, port):
                    raise RouterError(
                        f"router {self.name}, route {route}: server {name!r} already exists "
                        f"with address {row.address}, not {fmt_host(ip)}:{port}; remove it "
                        f"first or use another name")
                if row.state != "maint":
                    self._remember(route, hname, name)
                    return  # already added and enabled: leave its weight alone
                # A half-finished add (or remove): make sure it starts again at weight 0.
                self.api.cmd(f"set weight {route}/{hname} 0", route=route, server=name)
            else:
                self._remember(route, hname, name)
                self.api.cmd(
                    f"add server {route}/{hname} {fmt_host(ip)}:{port} weight 0 check "
                    f"inter {rs['check_interval_ms']} downinter {down_interval_ms(rs)} "
                    f"rise {rs['rise']} fall {rs['fall']} "
                    f"maxconn {rs['maxconn']}",
                    route=route, server=name, expect="New server registered")
            self.api.cmd(f"enable health {route}/{hname}", route=route, server=name)
            self.api.cmd(f"enable server {route}/{hname}", route=route, server=name)
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
                self.api.cmd(f"set weight {route}/{hname} {int(w)}", route=route, server=n)
                if w > 0 and current[n].state == "drain":
                    self.api.cmd(f"set server {route}/{hname} state ready", route=route, server=n)
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
            row = {r.name: r for r in self.api.rows(route)}.get(hname)
            if row is None:
                self.log.info("router %s, route %s: drain %s: not present", self.name, route, name)
                return
            if row.state == "ready":
                self.api.cmd(f"set server {route}/{hname} state drain", route=route, server=name)
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
                self.api.cmd(f"shutdown sessions server {route}/{hname}", route=route, server=name)
                break
            time.sleep(WATCH_S)
        with self._lock:
            self._ensure_running()
            self.api.cmd(f"set server {route}/{hname} state maint", route=route, server=name)
            self._save_state_quietly()
        give_up = time.monotonic() + DELETE_GRACE_S
        while True:
            with self._lock:
                out = self.api.cmd(f"del server {route}/{hname}", route=route, server=name,
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

    def _known_route(self, route: str) -> dict[str, Any]:
        if not self._started:
            raise self._not_started()
        rs = self._routes.get(route)
        if rs is None:
            if self.external and self._started:
                # A backend in somebody else's haproxy: allowed once it exists there.
                self.ensure_route(route, {})
                return self._routes[route]
            raise RouterError(self.api.no_backend_message(route))
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
        write_json(self.meta_file, data, mode=0o644)
