"""The ``cloudlb`` router: AWS load balancers through libcloud's ELB (classic) and ALB drivers.

A route is what instances are registered with:

- ``driver = "elb"`` (classic ELB): the load balancer's **name**; backends are EC2 instances.
- ``driver = "alb"`` (ALB, also NLB target groups): a **target group ARN**; backends are EC2
  instances (target type ``instance``) or IP addresses (target type ``ip``, the address given to
  ``add``).

Backend names are what imm passes to ``add`` (the instance id). For instance targets the name
must be the EC2 instance id; the address's port, if any, becomes the ALB target's port (else
``port`` from the settings, else the target group's port). Classic ELBs ignore ports: the
listener decides.

What operators must know — **cloud load balancers have no weight 0 and no weights**:

- Weights are membership: weight > 0 registers the target with the route, weight 0
  deregisters it. A 10 % canary is really "1 of N instances".
- Without a standby target group, ``add`` registers the instance at once, because a load
  balancer only health-checks what is registered and imm waits for that health before it
  shifts traffic. The load balancer sends a new target no traffic until it passes the health
  check (ALB: ``initial`` -> ``healthy``; classic ELB: ``OutOfService`` -> ``InService``), then
  it serves alongside the old instances: with this router a blue/green switch is not atomic,
  green serves as soon as it is healthy and blue leaves when its weight goes to 0.
- With ``standby_target_group`` (ALB only; in the router settings or a route's settings) the
  exact order holds: ``add`` registers the instance in the standby target group, where the
  load balancer health-checks it without routing to it; ``set_weights`` > 0 registers it with
  the route and then takes it out of standby; weight 0 puts it back in standby first. The
  standby group must be *in use* by the same load balancer or ALB will not check it: forward
  to it from a listener rule no client matches (e.g. a header condition
  ``X-Imm-Standby: <random>``) or with weight 0 in a weighted forward action.
- ``drain`` deregisters: ALB keeps sending in-flight requests to a ``draining`` target for the
  target group's deregistration delay (``deregistration_delay.timeout_seconds``, 300 s by
  default; shorten it for fast rollouts); a classic ELB does the same only if connection
  draining is enabled on it. imm sees the target in state ``drain`` while ALB drains it.
- ``remove`` deregisters (if ``drain`` did not), waits up to ``drain_timeout_s`` (counted from
  the drain) for the load balancer to finish draining — ALB: until the target leaves
  ``draining``; classic ELB: its connection-draining timeout, which cannot be observed — then
  forgets the backend. Past the timeout it warns and forgets it anyway (the load balancer ends
  the deregistration delay on its own; imm terminates the instance next, which cuts what is
  still in flight). Absent is not an error.
- Health is the load balancer's own view (ALB DescribeTargetHealth, ELB
  DescribeInstanceHealth): healthy / InService -> True; unhealthy, unused / OutOfService ->
  False; initial, draining, unavailable / Unknown -> None.
- Targets registered by someone else show up under their target id (weight 1) and can be set to
  weight 0, drained or removed.

The router remembers backends it was given (name, address, target, weight, drain state) in
``<state_dir>/cloudlb/<router>.json`` (written atomically); the load balancer's answer is the
truth for membership and health.

Settings (``[routers.NAME]``)::

    kind = "cloudlb"
    driver = "alb"                     # "elb" (classic) or "alb"
    region = "us-east-1"
    port = 8080                        # optional, ALB: target port when the address has none
    standby_target_group = "arn:aws:elasticloadbalancing:...:targetgroup/web-standby/..."
    drain_timeout_s = 30               # how long remove() waits for draining to finish
    key_env = "AWS_ACCESS_KEY_ID"      # credentials as for the aws provider (key_file, ...)
    secret_env = "AWS_SECRET_ACCESS_KEY"
    token_env = "AWS_SESSION_TOKEN"
    endpoint = "https://..."           # optional: an endpoint other than the driver's own
    libcloud_driver = "alb"            # optional: the libcloud LB driver name (tests swap it)
    timeout_s = 30                     # retries as for the aws provider
    retries = 5
    backoff_base_s = 0.5
    backoff_max_s = 10

A route's settings (the service's ``route_settings``) may set ``standby_target_group`` and
``drain_timeout_s`` for that route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BadRequest, ConfigError, Conflict, NotFound, RouterError
from ..base import Backend, Router, RouterContext
from ..hookspecs import hookimpl
from ..providers.cloud import (
    CallPolicy,
    CloudCaller,
    CloudRouterError,
    Credentials,
    CredentialSpec,
    Scrubber,
    check_credential_settings,
    credential_settings,
    load_credentials,
    parse_endpoint,
    point_connection,
    set_timeout,
    setting_int,
    setting_num,
    setting_str,
)

if TYPE_CHECKING:
    from ..registry import RouterRegistry

CREDENTIALS = (
    CredentialSpec("key", "access key id", "AWS_ACCESS_KEY_ID"),
    CredentialSpec("secret", "secret access key", "AWS_SECRET_ACCESS_KEY"),
    CredentialSpec("token", "session token", "AWS_SESSION_TOKEN", required=False),
)
ALB_HEALTH: dict[str, bool | None] = {
    "healthy": True, "unhealthy": False, "unused": False,
    "initial": None, "draining": None, "unavailable": None,
}
ELB_HEALTH: dict[str, bool | None] = {"InService": True, "OutOfService": False, "Unknown": None}
GONE_CODES = {"InvalidTarget", "InvalidInstance", "InvalidEndPoint"}  # deregistering the absent
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DRAIN_POLL_S = 2.0
ROUTE_GONE_CODES = {"LoadBalancerNotFound", "TargetGroupNotFound", "AccessPointNotFound"}
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
_KNOWN_SETTINGS = {
    "kind", "driver", "region", "port", "standby_target_group", "endpoint", "libcloud_driver",
    "drain_timeout_s",
    *CallPolicy.KEYS, *credential_settings(CREDENTIALS),
}


@dataclass(frozen=True)
class Target:
    id: str
    port: int | None
    health: str  # the LB's word: healthy, InService, draining, ...


# --------------------------------------------------------------------------- LB APIs


class _LBApi:
    """Membership calls of one load-balancer flavour, as raw requests through the driver's own
    connection (one batch per call; the ports a target is registered with are kept exact)."""

    flavour = ""
    root = "/"
    ns = ""
    health_map: dict[str, bool | None] = {}

    def __init__(self, request: Callable[[str, str, dict[str, str]], Any]) -> None:
        self._request = request  # (route, action, params) -> parsed XML, with retries

    def members(self, route: str, only: list[str] | None = None) -> dict[str, list[Target]]:
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


class _ELBApi(_LBApi):
    flavour = "elb"
    health_map = ELB_HEALTH

    def __init__(self, request: Callable[[str, str, dict[str, str]], Any]) -> None:
        from libcloud.loadbalancer.drivers import elb

        super().__init__(request)
        self.root, self.ns = elb.ROOT, elb.NS

    def members(self, route: str, only: list[str] | None = None) -> dict[str, list[Target]]:
        from libcloud.utils.xml import findall, findtext

        data = self._request(route, "DescribeInstanceHealth", {"LoadBalancerName": route})
        out: dict[str, list[Target]] = {}
        for el in findall(data, "DescribeInstanceHealthResult/InstanceStates/member", self.ns):
            iid = findtext(el, "InstanceId", self.ns)
            if iid:
                out[iid] = [Target(iid, None, findtext(el, "State", self.ns) or "Unknown")]
        return out

    def _change(self, action: str, route: str, targets: list[tuple[str, int | None]]) -> None:
        params = {"LoadBalancerName": route}
        for n, (tid, _) in enumerate(targets, start=1):
            params[f"Instances.member.{n}.InstanceId"] = tid
        self._request(route, action, params)

    def register(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change("RegisterInstancesWithLoadBalancer", route, targets)

    def draining_timeout(self, route: str) -> float:
        """Seconds a classic ELB keeps serving a deregistered instance (0: draining is off)."""
        from libcloud.utils.xml import findtext

        data = self._request(route, "DescribeLoadBalancerAttributes",
                             {"LoadBalancerName": route})
        base = "DescribeLoadBalancerAttributesResult/LoadBalancerAttributes/ConnectionDraining/"
        if (findtext(data, base + "Enabled", self.ns) or "").lower() != "true":
            return 0.0
        try:
            return float(findtext(data, base + "Timeout", self.ns) or 0)
        except ValueError:
            return 0.0

    def deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change("DeregisterInstancesFromLoadBalancer", route, targets)


class _ALBApi(_LBApi):
    flavour = "alb"
    health_map = ALB_HEALTH

    def __init__(self, request: Callable[[str, str, dict[str, str]], Any]) -> None:
        from libcloud.loadbalancer.drivers import alb

        super().__init__(request)
        self.root, self.ns = alb.ROOT, alb.NS
        self._types: dict[str, str] = {}

    def members(self, route: str, only: list[str] | None = None) -> dict[str, list[Target]]:
        """Registered targets; with ``only``, the state of just those ids, which includes
        targets still draining after their deregistration ("draining") or gone ("unused")."""
        from libcloud.utils.xml import findall, findtext

        params = {"TargetGroupArn": route}
        for n, tid in enumerate(only or [], start=1):
            params[f"Targets.member.{n}.Id"] = tid
        data = self._request(route, "DescribeTargetHealth", params)
        out: dict[str, list[Target]] = {}
        for el in findall(data, "DescribeTargetHealthResult/TargetHealthDescriptions/member",
                          self.ns):
            tid = findtext(el, "Target/Id", self.ns)
            port = findtext(el, "Target/Port", self.ns)
            if tid:
                out.setdefault(tid, []).append(Target(
                    tid, int(port) if port and port.isdigit() else None,
                    findtext(el, "TargetHealth/State", self.ns) or "unavailable"))
        return out

    def _change(self, action: str, route: str, targets: list[tuple[str, int | None]]) -> None:
        params = {"TargetGroupArn": route}
        for n, (tid, port) in enumerate(targets, start=1):
            params[f"Targets.member.{n}.Id"] = tid
            if port:
                params[f"Targets.member.{n}.Port"] = str(port)
        self._request(route, action, params)

    def register(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change("RegisterTargets", route, targets)

    def deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change("DeregisterTargets", route, targets)

    def target_type(self, route: str) -> str:
        from libcloud.utils.xml import findall, findtext

        if route not in self._types:
            data = self._request(route, "DescribeTargetGroups",
                                 {"TargetGroupArns.member.1": route})
            groups = findall(data, "DescribeTargetGroupsResult/TargetGroups/member", self.ns)
            if not groups:
                raise NotFound(f"no target group {route}")
            self._types[route] = findtext(groups[0], "TargetType", self.ns) or "instance"
        return self._types[route]


# --------------------------------------------------------------------------- state file


class _StateFile:
    """``{route: {name: {address, target, port, weight, state}}}``, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RouterError(f"cloudlb router state file {self.path} is unreadable ({exc}); "
                              f"move it away to start from what the load balancer holds"
                              ) from None
        routes = data.get("routes", {}) if isinstance(data, dict) else {}
        return routes if isinstance(routes, dict) else {}

    def save(self, routes: Mapping[str, Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "routes": routes}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# --------------------------------------------------------------------------- the router


class CloudLBRouter(Router):
    kind = "cloudlb"

    def __init__(self, name: str, settings: Mapping[str, Any], context: RouterContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"cloudlb router {name}"
        unknown = sorted(set(s) - _KNOWN_SETTINGS)
        if unknown:
            context.log.warning("%s: ignoring unknown settings %s", where, ", ".join(unknown))
        flavour = setting_str(s, "driver", where)
        if flavour not in ("elb", "alb"):
            raise ConfigError(f"{where}: driver = {flavour!r} must be \"elb\" (classic load "
                              f"balancer, route = its name) or \"alb\" (route = a target group "
                              f"ARN)")
        self.flavour = flavour
        region = setting_str(s, "region", where)
        if not region:
            raise ConfigError(f"{where}: set region, e.g. region = \"us-east-1\"")
        self.region: str = region
        self.driver_name = setting_str(s, "libcloud_driver", where, flavour) or flavour
        self.port = setting_int(s, "port", where, 0, 0, 65535) or None
        self.drain_timeout_s = setting_num(s, "drain_timeout_s", where, DEFAULT_DRAIN_TIMEOUT_S,
                                           0, 3600)
        self.standby = setting_str(s, "standby_target_group", where)
        if self.standby and flavour != "alb":
            raise ConfigError(f"{where}: standby_target_group needs driver = \"alb\"")
        endpoint = setting_str(s, "endpoint", where)
        self.endpoint = parse_endpoint(endpoint, where) if endpoint else None
        self.policy = CallPolicy.from_settings(s, where)
        check_credential_settings(s, CREDENTIALS, where)
        self.scrub = Scrubber()
        self.caller = CloudCaller(
            cloud="AWS", name=name, policy=self.policy, scrub=self.scrub, log=context.log,
            credentials_hint="/".join(
                f"file {s[sp.name + '_file']}" if s.get(sp.name + "_file")
                else f"${s.get(sp.name + '_env') or sp.default_env}" for sp in CREDENTIALS),
            endpoint=lambda _r: self._endpoint_text(), error_cls=CloudRouterError,
            kind_word="router")
        self.api: _LBApi = (_ELBApi if flavour == "elb" else _ALBApi)(self._request)
        safe = name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".") else \
            urllib.parse.quote(name, safe="")
        self.state = _StateFile(context.state_dir / "cloudlb" / f"{safe}.json")
        self._standby: dict[str, str] = {}  # per-route standby target groups (ensure_route)
        self._drain_timeout: dict[str, float] = {}  # per-route drain_timeout_s (ensure_route)
        self._driver: Any = None
        self._credentials: Credentials | None = None
        self._driver_lock = threading.Lock()
        self._lock = threading.RLock()

    def _endpoint_text(self) -> str:
        if self.endpoint:
            host, port, secure = self.endpoint
            return f"{'https' if secure else 'http'}://{host}:{port}"
        return f"the {self.flavour.upper()} endpoint of {self.region}"

    # -- driver

    def driver(self) -> Any:
        with self._driver_lock:
            if self._driver is None:
                self._driver = self._make_driver()
            return self._driver

    def _make_driver(self) -> Any:
        from libcloud.loadbalancer.providers import get_driver

        try:
            cls = get_driver(self.driver_name)
        except AttributeError:
            raise ConfigError(f"{self.where}: libcloud has no load balancer driver "
                              f"{self.driver_name!r} (libcloud_driver)") from None
        if self._credentials is None:
            self._credentials = load_credentials(self.settings, CREDENTIALS, self.where,
                                                 self.context.log)
            self.scrub.add(*self._credentials.secrets())
        creds = self._credentials
        try:
            driver = cls(creds.get("key"), creds.get("secret"), self.region,
                         token=creds.get("token"))
            # The ELB/ALB drivers take neither host/port nor timeout: set them on the
            # connection and connect again (TESTING.md).
            if self.endpoint:
                host, port, secure = self.endpoint
                point_connection(driver, host, port, secure, self.policy.timeout_s)
            else:
                set_timeout(driver, self.policy.timeout_s)
        except Exception as exc:  # a driver's constructor can raise anything
            raise RouterError(f"{self.where}: cannot set up the libcloud {self.driver_name} "
                              f"driver: {type(exc).__name__}: {self.scrub(exc)}") from None
        return driver

    def _request(self, route: str, action: str, params: dict[str, str]) -> Any:
        driver = self.driver()

        def go() -> Any:
            with self._driver_lock:
                return driver.connection.request(self.api.root, params={"Action": action,
                                                                        **params}).object

        try:
            return self.caller.call(self.region, f"{action} ({route})", go)
        except CloudRouterError as exc:
            if exc.failure.cloud_code in ROUTE_GONE_CODES:
                what = "load balancer" if self.flavour == "elb" else "target group"
                raise NotFound(f"{self.where}: {what} {route} does not exist in {self.region} "
                               f"({exc.failure.cloud_code}); check the service's route") from None
            raise

    # -- names and targets

    def _standby_of(self, route: str) -> str | None:
        return self._standby.get(route, self.standby)

    def _target_of(self, route: str, name: str, address: str) -> tuple[str, int | None]:
        host, port = _split_address(address)
        if self.flavour == "elb":
            if not _INSTANCE_ID.fullmatch(name):
                raise BadRequest(f"{self.where}: backend {name!r} must be an EC2 instance id "
                                 f"(a classic ELB registers instances)")
            return name, None
        if self.api.target_type(route) == "ip":
            try:
                ip = ipaddress.ip_address(host).compressed
            except ValueError:
                raise BadRequest(f"{self.where}: target group {route} takes IP targets; "
                                 f"address {address!r} of {name} is not an IP") from None
            return ip, port or self.port
        if self.api.target_type(route) != "instance":
            raise BadRequest(f"{self.where}: target group {route} has target type "
                             f"{self.api.target_type(route)!r}; imm registers instances or IPs")
        if not _INSTANCE_ID.fullmatch(name):
            raise BadRequest(f"{self.where}: backend {name!r} must be an EC2 instance id (target "
                             f"group {route} takes instance targets)")
        return name, port or self.port

    # -- lifecycle

    def close(self) -> None:
        with self._driver_lock:
            self._driver = None
            self._credentials = None

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        where = f"{self.where} route {route}"
        standby = setting_str(settings, "standby_target_group", where)
        if "drain_timeout_s" in settings:
            self._drain_timeout[route] = setting_num(settings, "drain_timeout_s", where,
                                                     DEFAULT_DRAIN_TIMEOUT_S, 0, 3600)
        if standby:
            if self.flavour != "alb":
                raise BadRequest(f"{self.where}: standby_target_group needs driver = \"alb\"")
            self._standby[route] = standby
        with self._lock:
            self.api.members(route)  # NotFound when the route does not exist
            sb = self._standby_of(route)
            if sb:
                self.api.members(sb)

    # -- reads

    def backends(self, route: str) -> list[Backend]:
        with self._lock:
            known = self.state.load().get(route, {})
            live = self.api.members(route)
            sb_route = self._standby_of(route)
            standby = self.api.members(sb_route) if sb_route else {}
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
            out.append(Backend(name=tid, address=f"{tid}:{t.port}" if t.port else tid,
                               weight=0 if draining else 1, state="drain" if draining else "ready",
                               healthy=None if draining else self.api.healthy(t.health)))
        return out

    # -- changes

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
        return any(t.health != "draining" for t in self.api.members(route).get(target, []))

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise BadRequest(f"weight {w!r} for backend {name} must be an integer >= 0")
        with self._lock:
            routes = self.state.load()
            members = routes.setdefault(route, {})
            live = self.api.members(route)
            sb = self._standby_of(route)
            standby = self.api.members(sb) if sb else {}
            missing = sorted(n for n in weights if n not in members and n not in live)
            if missing:
                raise NotFound(f"{self.where}: no backend {', '.join(missing)} on {route}; add "
                               f"it first")
            up: list[tuple[str, int | None]] = []
            down: list[tuple[str, int | None]] = []
            to_standby: list[tuple[str, int | None]] = []
            off_standby: list[tuple[str, int | None]] = []
            for name, w in weights.items():
                m = members.get(name)
                tid = m["target"] if m else name
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
            tid = m["target"] if m else name
            live = self.api.members(route)
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
            tid = m["target"] if m else name
            live = self.api.members(route)
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
            sb_regs = [(t.id, t.port) for t in self.api.members(sb).get(tid, [])
                       if t.health != "draining"]
            if sb_regs:
                self._deregister(sb, sb_regs)

    def _deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        try:
            self.api.deregister(route, targets)
        except CloudRouterError as exc:
            if exc.failure.cloud_code not in GONE_CODES:
                raise


def _split_address(address: str) -> tuple[str, int | None]:
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


@hookimpl(trylast=True)
def imm_register_routers(registry: RouterRegistry) -> None:
    registry.add(CloudLBRouter)
