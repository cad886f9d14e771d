"""The cloudlb router's shared part: the router base class every flavour extends, the
membership API it drives, and what the flavours have in common."""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ....errors import BadRequest, ConfigError, Conflict, NotFound
from ...base import Backend, PluginContext, Router, RouterFeature
from ...cloud import CloudRouterError, setting_num, setting_str
from ...cloud.settings import warn_unknown
from ...statefile import RouteState

GONE_CODES = {"InvalidTarget", "InvalidInstance", "InvalidEndPoint"}  # deregistering the absent
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DRAIN_POLL_S = 2.0


@dataclass(frozen=True)
class Target:
    id: str
    port: int | None
    health: str  # the LB's word: healthy, InService, draining, ...



class LBApi:
    """Membership calls of one load-balancer flavour, as raw requests through the driver's own
    connection (one batch per call; the ports a target is registered with are kept exact)."""

    flavour = ""
    root = "/"
    ns = ""
    health_map: dict[str, bool | None] = {}

    def __init__(self, request: Callable[[str, str, dict[str, str]], Any]) -> None:
        self._request = request  # (route, action, params) -> parsed XML, with retries

    def members(self, route: str, only: list[str] | None = None,
                with_health: bool = True) -> dict[str, list[Target]]:
        """``{target id: [Target, ...]}``; ``with_health=False`` when only membership matters
        (AWS answers health with membership anyway; GCE needs a call per member for it)."""
        raise NotImplementedError

    def register(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        raise NotImplementedError

    def deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        raise NotImplementedError

    def target_type(self, route: str) -> str:
        return "instance"

    def draining_timeout(self, route: str) -> float:
        return 0.0  # ALB shows draining targets: imm watches them instead

    def healthy(self, word: str | None) -> bool | None:
        return self.health_map.get(word or "", None)

    def target_by_name(self, name: str, live: Mapping[str, list[Target]]) -> str:
        """The target id of a backend imm has no record of (AWS: the name is the id)."""
        return name

    def display_name(self, tid: str) -> str:
        """The backend name of a target imm has no record of."""
        return tid


class CloudLBRouter(Router):
    """A cloud load balancer as a router. ``driver`` in the settings picks the flavour: each is
    a subclass (``ELBRouter``, ``ALBRouter``, ``GCERouter``) registered with
    ``flavour="..."``; constructing ``CloudLBRouter`` builds the one the settings name. What is
    the same for every flavour (the state file, membership as weight, standby routes, drains)
    lives here; the flavour supplies the driver, the membership API and how it names targets."""

    kind = "cloudlb"
    features = frozenset({RouterFeature.HEALTH_CHECK})
    flavour: ClassVar[str] = ""
    known_settings: ClassVar[frozenset[str]] = frozenset()
    watches_draining: ClassVar[bool] = True  # False: the LB has no draining state to wait for
    _flavours: ClassVar[dict[str, type[CloudLBRouter]]] = {}

    api: LBApi
    region: str
    drain_timeout_s: float
    standby: str | None

    def __init_subclass__(cls, flavour: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if flavour:
            cls.flavour = flavour
            CloudLBRouter._flavours[flavour] = cls

    def __new__(cls, name: str, settings: Mapping[str, Any], context: PluginContext
                ) -> CloudLBRouter:
        if cls is CloudLBRouter:
            where = f"cloudlb router {name}"
            flavour = setting_str(settings, "driver", where)
            if flavour not in cls._flavours:
                raise ConfigError(f"{where}: driver = {flavour!r} must be \"elb\" (classic load "
                                  f"balancer, route = its name), \"alb\" (route = a target group "
                                  f"ARN) or \"gce\" (route = a GCE target pool name)")
            cls = cls._flavours[str(flavour)]
        return super().__new__(cls)

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"cloudlb router {name}"
        warn_unknown(s, self.known_settings, where, context.log)
        safe = name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".") else \
            urllib.parse.quote(name, safe="")
        self.state = RouteState(context.state_dir / "cloudlb" / f"{safe}.json", where,
                                "what the load balancer holds")
        self._standby: dict[str, str] = {}  # per-route standby target groups (ensure_route)
        self._drain_timeout: dict[str, float] = {}  # per-route drain_timeout_s (ensure_route)
        self._driver: Any = None
        self._driver_lock = threading.Lock()
        self._lock = threading.RLock()
        self._configure(s, safe)

    # -- what each flavour supplies

    def _configure(self, s: Mapping[str, Any], safe: str) -> None:
        """Read the flavour's settings (no I/O) and set ``api``, ``region``, ``standby``..."""
        raise NotImplementedError

    def _make_driver(self) -> Any:
        raise NotImplementedError

    def _forget_credentials(self) -> None:
        """Drop cached credentials (``close``)."""

    def _target_of(self, route: str, name: str, address: str) -> tuple[str, int | None]:
        """The LB's target id (and port) of backend ``name`` at ``address``."""
        raise NotImplementedError

    def _route_standby(self, settings: Mapping[str, Any], where: str) -> str | None:
        """A route's own standby route from its settings (``ensure_route``)."""
        return None

    def _check_route(self, route: str) -> None:
        """Flavour checks of a route at ``ensure_route`` (e.g. a pool without health check)."""

    # -- driver, lifecycle, routes (shared)

    def driver(self) -> Any:
        with self._driver_lock:
            if self._driver is None:
                self._driver = self._make_driver()
            return self._driver

    def close(self) -> None:
        with self._driver_lock:
            self._driver = None
        self._forget_credentials()

    def _standby_of(self, route: str) -> str | None:
        return self._standby.get(route, self.standby)

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        where = f"{self.where} route {route}"
        standby = self._route_standby(settings, where)
        if "drain_timeout_s" in settings:
            self._drain_timeout[route] = setting_num(settings, "drain_timeout_s", where,
                                                     DEFAULT_DRAIN_TIMEOUT_S, 0, 3600)
        if standby:
            self._standby[route] = standby
        with self._lock:
            self._check_route(route)
            self.api.members(route, with_health=False)  # NotFound when the route is missing
            sb = self._standby_of(route)
            if sb:
                self.api.members(sb, with_health=False)

    def backends(self, route: str) -> list[Backend]:
        with self._lock:
            known = self.state.load().get(route, {})
            live = self.api.members(route)
            sb_route = self._standby_of(route)
            standby = self.api.members(sb_route) if sb_route else {}  # with health: parked
        out: list[Backend] = []
        seen: set[str] = set()
        for name in sorted(known):
            m = known[name]
            tid = m["target"]
            seen.add(tid)
            regs = live.get(tid, [])
            serving = [t for t in regs if t.health != "draining"]
            sb = [t for t in standby.get(tid, []) if t.health != "draining"]
            if serving:
                health = self.api.healthy(serving[0].health)
                weight = max(1, int(m.get("weight", 0)))
                state = "ready"
            elif sb:  # parked in the standby target group: health-checked, no traffic
                health, weight, state = self.api.healthy(sb[0].health), 0, "ready"
            elif regs:  # ALB is draining it
                health, weight, state = None, 0, "drain"
            else:
                health, weight, state = None, 0, m.get("state", "ready")
            out.append(Backend(name=name, address=m.get("address", tid), weight=weight,
                               state=state, healthy=health))
        for tid in sorted(set(live) - seen):
            t = live[tid][0]
            draining = t.health == "draining"
            out.append(Backend(name=self.api.display_name(tid),
                               address=f"{tid}:{t.port}" if t.port else tid,
                               weight=0 if draining else 1, state="drain" if draining else "ready",
                               healthy=None if draining else self.api.healthy(t.health)))
        return out

    def add(self, route: str, name: str, address: str) -> None:
        with self._lock:
            target, port = self._target_of(route, name, address)
            routes = self.state.load()
            members = routes.setdefault(route, {})
            old = members.get(name)
            if old is not None and (old["target"], old.get("port")) != (target, port):
                raise Conflict(f"{self.where}: backend {name} on {route} is already target "
                               f"{old['target']}:{old.get('port')}; remove it before adding it "
                               f"with {address}")
            members[name] = {"address": address, "target": target, "port": port,
                             "weight": int(old.get("weight", 0)) if old else 0,
                             "state": "ready"}
            self.state.save(routes)
            sb = self._standby_of(route)
            if sb:
                if not self._registered(sb, target):
                    self.api.register(sb, [(target, port)])
                return
            if not self._registered(route, target):
                self.context.log.info(
                    "%s: registering %s (%s) with %s now: a load balancer has no weight 0; it "
                    "takes traffic once it passes the load balancer's health check",
                    self.where, name, target, route)
                self.api.register(route, [(target, port)])

    def _registered(self, route: str, target: str) -> bool:
        return any(t.health != "draining" for t in
                   self.api.members(route, with_health=False).get(target, []))

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise BadRequest(f"weight {w!r} for backend {name} must be an integer >= 0")
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(route, {})
            live = self.api.members(route, with_health=False)
            sb = self._standby_of(route)
            standby = self.api.members(sb, with_health=False) if sb else {}
            missing = sorted(n for n in weights if n not in members
                             and self.api.target_by_name(n, live) not in live)
            if missing:
                raise NotFound(f"{self.where}: no backend {', '.join(missing)} on {route}; add "
                               f"it first")
            up: list[tuple[str, int | None]] = []
            down: list[tuple[str, int | None]] = []
            to_standby: list[tuple[str, int | None]] = []
            off_standby: list[tuple[str, int | None]] = []
            for name, w in weights.items():
                m = members.get(name)
                tid = m["target"] if m else self.api.target_by_name(name, live)
                port = m.get("port") if m else None
                serving = [t for t in live.get(tid, []) if t.health != "draining"]
                if w > 0:
                    if not serving:
                        up.append((tid, port))
                    off_standby += [(t.id, t.port) for t in standby.get(tid, [])]
                else:
                    down += [(t.id, t.port) for t in serving]
                    if sb and m is not None and not standby.get(tid):
                        to_standby.append((tid, port))
                if m is not None:
                    m["weight"] = w
                    if w > 0:
                        m["state"] = "ready"
                        m.pop("drained_at", None)
            # Add before taking away: the route never drops what it has before the new targets
            # are in (the load balancer routes to them once healthy).
            if up:
                self.api.register(route, up)
            if to_standby and sb:
                self.api.register(sb, to_standby)
            if down:
                self.api.deregister(route, down)
            if off_standby and sb:
                self.api.deregister(sb, off_standby)
            self.state.save(routes)
            if up or down:
                self.context.log.info("%s: %s: registered %s, deregistered %s", self.where,
                                      route, [t for t, _ in up] or "-",
                                      [t for t, _ in down] or "-")

    def drain(self, route: str, name: str) -> None:
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(route, {})
            m = members.get(name)
            live = self.api.members(route, with_health=False)
            tid = m["target"] if m else self.api.target_by_name(name, live)
            if m is None and tid not in live:
                raise NotFound(f"{self.where}: no backend {name} on {route}")
            self._deregister_everywhere(route, tid, live)
            if m is not None:
                if m.get("state") != "drain" or "drained_at" not in m:
                    m["drained_at"] = time.time()
                m["weight"], m["state"] = 0, "drain"
                self.state.save(routes)

    def remove(self, route: str, name: str) -> None:
        """Deregister (if ``drain`` has not), wait up to ``drain_timeout_s`` from the drain for
        the load balancer to finish draining, then forget the backend. Past the timeout the
        backend is forgotten anyway, with a warning: the load balancer finishes its
        deregistration delay on its own, and imm terminates the instance next."""
        with self._lock:
            routes = self.state.load()
            m = routes.get(route, {}).get(name)
            live = self.api.members(route, with_health=False)
            tid = m["target"] if m else self.api.target_by_name(name, live)
            if m is None and tid not in live:
                return
            self._deregister_everywhere(route, tid, live)
            started = float(m.get("drained_at") or time.time()) if m else time.time()
        self._wait_drained(route, name, tid, started)
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(route, {})
            members.pop(name, None)
            if not members:
                routes.pop(route, None)
            self.state.save(routes)

    def _wait_drained(self, route: str, name: str, tid: str, started: float) -> None:
        timeout = self._drain_timeout.get(route, self.drain_timeout_s)
        deadline = started + timeout
        if not self.watches_draining:  # target pools have no draining to watch
            left = deadline - time.time()
            if left > 0:
                self.context.log.info(
                    "%s: %s left target pool %s; waiting drain_timeout_s=%gs from the drain "
                    "before forgetting it (target pools have no connection draining)",
                    self.where, name, route, timeout)
                time.sleep(left)
            return
        lb_delay = self.api.draining_timeout(route)
        if lb_delay:  # classic ELB: draining is invisible; wait out its timeout (capped)
            time.sleep(max(0.0, min(started + lb_delay, deadline) - time.time()))
            return
        while True:
            try:
                with self._lock:
                    draining = any(t.health == "draining"
                                   for t in self.api.members(route, [tid]).get(tid, []))
            except CloudRouterError as exc:
                if exc.failure.cloud_code not in GONE_CODES:
                    raise
                draining = False
            if not draining:
                return
            left = deadline - time.time()
            if left <= 0:
                self.context.log.warning(
                    "%s: %s (%s) is still draining on %s after drain_timeout_s=%gs; forgetting "
                    "it (the load balancer ends the deregistration delay on its own; shorten "
                    "the target group's deregistration_delay.timeout_seconds to match)",
                    self.where, name, tid, route, timeout)
                return
            time.sleep(min(DRAIN_POLL_S, left))

    def _deregister_everywhere(self, route: str, tid: str,
                               live: Mapping[str, list[Target]]) -> None:
        regs = [(t.id, t.port) for t in live.get(tid, []) if t.health != "draining"]
        if regs:
            self._deregister(route, regs)
        sb = self._standby_of(route)
        if sb:
            sb_regs = [(t.id, t.port) for t in
                       self.api.members(sb, with_health=False).get(tid, [])
                       if t.health != "draining"]
            if sb_regs:
                self._deregister(sb, sb_regs)

    def _deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        try:
            self.api.deregister(route, targets)
        except CloudRouterError as exc:
            if exc.failure.cloud_code not in GONE_CODES:
                raise


def split_address(address: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare v6 address -> (host, port)."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise BadRequest(f"address {address!r} has an invalid port {port!r}")
    return host, int(port) if port else None
