"""The ``cloudlb`` router: cloud load balancers through libcloud — AWS's ELB (classic) and ALB
drivers, and Google Cloud's GCE load balancer driver (network load balancing, target pools).

A route is what instances are registered with:

- ``driver = "elb"`` (classic ELB): the load balancer's **name**; backends are EC2 instances.
- ``driver = "alb"`` (ALB, also NLB target groups): a **target group ARN**; backends are EC2
  instances (target type ``instance``) or IP addresses (target type ``ip``, the address given to
  ``add``).
- ``driver = "gce"``: a **target pool name** in the router's region; backends are GCE instances.
  See "Google Cloud (driver = gce)" below.

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

Google Cloud (``driver = "gce"``)
---------------------------------

A route is a **target pool** (network load balancing: a forwarding rule sends its traffic to the
pool; the pool sends each new connection to one of its instances that passes the pool's legacy
HTTP health check). Backend names are imm's instance ids, which for the ``gcp`` provider are
instance **names**; the pool holds instance URLs (``.../zones/<zone>/instances/<name>``). The
router keeps the name -> ``zones/<zone>/instances/<name>`` map in its state file, like the AWS
modes. The zone comes from the address when it is an instance path or URL
(``zones/us-central1-a/instances/web-1``), else from the settings: with one zone configured it is
that zone; with several, ``add`` looks the instance up by name in each (``instances.get``) and,
if the name exists in more than one, keeps the one whose internal or external IP is the address.

The same rules as for AWS hold, with GCE's words:

- **No weights, no weight 0.** Weight > 0 puts the instance in the pool (``addInstance``), weight
  0 takes it out (``removeInstance``). Without a standby pool ``add`` puts the instance in the
  pool at once: GCE health-checks only pool members and sends a member no new connection until
  its health check passes, and imm waits for that health before it moves traffic. So green
  serves as soon as it is healthy, next to blue, until blue's weight goes to 0.
- ``standby_target_pool`` (router or route settings): ``add`` puts the instance in that pool
  instead, where GCE health-checks it without it serving the route; weight > 0 moves it into the
  route's pool (in first, then out of standby); weight 0 moves it back. GCE reports health per
  forwarding-rule IP and only checks pools that something points at: give the standby pool the
  same health check and a forwarding rule of its own (an address no client uses), or its
  members' health stays unknown and imm's health wait times out.
- **Target pools have no connection draining.** ``drain`` and ``remove`` both take the instance
  out of the pool (``removeInstance``): no new connections go to it from then on, and GCE does
  not protect the ones already open (they end when imm terminates the instance). ``remove``
  waits ``drain_timeout_s`` counted from the drain only when it is configured (default 0 for
  ``gce``: no wait), e.g. to let short requests finish before the instance goes away.
- Health is the pool's own view: ``getHealth`` for each member (one call per instance; GCE's API
  takes one instance per call), one entry per forwarding rule IP: HEALTHY everywhere -> True,
  UNHEALTHY anywhere -> False, no entry / no state / instance gone -> None. A pool without a
  health check counts every instance as healthy (GCE's rule): the router warns about it in
  ``ensure_route``, since imm's health gate then proves only membership.
- Members added by someone else show up under their instance name (weight 1) and can be set to
  weight 0, drained or removed.
- Calls are raw requests through the GCE LB driver's own connection (the one it shares with its
  ``GCENodeDriver``): libcloud's ``ex_get_targetpool`` fetches every member instance, health check
  and region to build its objects (N+2 requests per read), its ``ex_targetpool_get_health`` fails
  on a member whose instance no longer exists, and its add/remove move one instance per
  operation. ``addInstance`` / ``removeInstance`` send every instance of a change in one call and
  poll the regional operation to DONE (``poll_interval_s``, ``operation_timeout_s``). A retried
  change first checks whether the earlier attempt took effect; an answer that the instance is
  already (not) a member counts as done once the pool shows it.

Settings (``[routers.NAME]``, ``driver = "gce"``)::

    kind = "cloudlb"
    driver = "gce"
    project = "my-project"               # default: project_id of the service account key
    zones = ["us-central1-a", "us-central1-b"]   # or zone = "us-central1-a"; one region
    region = "us-central1"               # optional: the zones' region (checked)
    standby_target_pool = "web-standby"  # optional, see above
    drain_timeout_s = 0                  # remove() waits this long after the drain (default 0)
    auth_type = "SA"                     # credentials exactly as for the gcp provider:
    credentials_env = "GOOGLE_APPLICATION_CREDENTIALS"  # service_account_file, client_id,
    token_cache_file = "/var/lib/imm/cloudlb/NAME.token.json"  # client_secret_env/_file, ...
    endpoint = "https://www.googleapis.com"  # optional: the API host
    libcloud_driver = "gce"              # optional: the libcloud LB driver name
    poll_interval_s = 2                  # between polls of regional operations
    operation_timeout_s = 300            # how long an addInstance/removeInstance may take
    timeout_s = 30                       # per request; retries as for the gcp provider
    retries = 5
    backoff_base_s = 0.5
    backoff_max_s = 10

The default token cache is ``<state_dir>/cloudlb/<router>.token.json`` (not the gcp provider's,
so a router and a provider with the same name never share one). Constructing the router does no
I/O: the key is read and the driver built on the first call.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import BadRequest, ConfigError, Conflict, ImmError, NotFound, RouterError
from ..base import Backend, PluginContext, Router, RouterFeature
from ..cloud import (
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
    setting_str_list,
)
from ..cloud.gcp import AUTH_SETTINGS, GOOGLE_API, GCPAuth, with_reason
from ..hookspecs import hookimpl
from ..statefile import RouteState

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
FLAVOURS = ("elb", "alb", "gce")

# Google Cloud (driver = "gce")
GCE_HEALTH: dict[str, bool | None] = {"HEALTHY": True, "UNHEALTHY": False}
DEFAULT_GCE_POLL_S = 2.0
DEFAULT_GCE_OPERATION_TIMEOUT_S = 300.0
GCE_AUTH_SETTINGS = AUTH_SETTINGS  # read by GCPAuth, exactly as the gcp provider reads them
_GCE_KNOWN_SETTINGS = {
    "kind", "driver", "region", "zone", "zones", "standby_target_pool", "endpoint",
    "libcloud_driver", "drain_timeout_s", "poll_interval_s", "operation_timeout_s",
    *GCE_AUTH_SETTINGS, *CallPolicy.KEYS,
}
_GCE_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_GCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_GCE_INSTANCE = re.compile(
    r"(?:(?:https?://[^/]+)?/?(?:compute/v1/)?projects/[^/]+/)?"
    r"zones/(?P<zone>[a-z0-9-]+)/instances/(?P<name>[a-z0-9-]+)")


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


class _ELBApi(_LBApi):
    flavour = "elb"
    health_map = ELB_HEALTH

    def __init__(self, request: Callable[[str, str, dict[str, str]], Any]) -> None:
        from libcloud.loadbalancer.drivers import elb

        super().__init__(request)
        self.root, self.ns = elb.ROOT, elb.NS

    def members(self, route: str, only: list[str] | None = None,
                with_health: bool = True) -> dict[str, list[Target]]:
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

    def members(self, route: str, only: list[str] | None = None,
                with_health: bool = True) -> dict[str, list[Target]]:
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


class _GCEApi(_LBApi):
    """Target pools of one region, through the GCE LB driver's connection (see the module
    docstring for why not libcloud's target pool methods). Target ids are
    ``zones/<zone>/instances/<name>``."""

    flavour = "gce"
    health_map = GCE_HEALTH

    def __init__(self, router: CloudLBRouter) -> None:  # no request callable: see _gce_call
        self.r = router
        self._urls: dict[str, str] = {}  # target id -> the URL the pool lists it under

    def _path(self, route: str, tail: str = "") -> str:
        if not _GCE_NAME.fullmatch(route):
            raise BadRequest(f"{self.r.where}: route {route!r} is not a target pool name "
                             f"(lowercase letters, digits and '-', at most 63)")
        return f"/regions/{self.r.region}/targetPools/{route}{tail}"

    def pool(self, route: str) -> dict[str, Any]:
        """The target pool resource (NotFound when it does not exist)."""
        where = self._path(route)
        try:
            return dict(self.r._gce_call(f"targetPools.get {route}",
                                         lambda conn: conn.request(where).object))
        except CloudRouterError as exc:
            if exc.failure.status == 404:
                raise NotFound(f"{self.r.where}: target pool {route} does not exist in "
                               f"{self.r.region} ({exc.failure.cloud_code or 'HTTP 404'}); "
                               f"check the service's route") from None
            raise

    def members(self, route: str, only: list[str] | None = None,
                with_health: bool = True) -> dict[str, list[Target]]:
        out: dict[str, list[Target]] = {}
        for url in self.pool(route).get("instances") or []:
            tid = _gce_target_id(str(url))
            if only is not None and tid not in only:
                continue
            self._urls[tid] = str(url)
            out[tid] = [Target(tid, None, self._health(route, tid) if with_health else "")]
        return out

    def _health(self, route: str, tid: str) -> str:
        """HEALTHY / UNHEALTHY / UNKNOWN, over every forwarding rule IP of the pool."""
        url, where = self.url(tid), self._path(route, "/getHealth")

        def get(conn: Any) -> Any:
            return conn.request(where, method="POST", data={"instance": url}).object

        try:  # read-only despite the POST: retried like a GET
            answer = self.r._gce_call(f"targetPools.getHealth {route} ({self.display_name(tid)})",
                                      get)
        except CloudRouterError as exc:
            if exc.failure.status in (400, 404):  # the instance is gone (or left meanwhile)
                self.r.context.log.info("%s: getHealth of %s on %s answered HTTP %s (%s): "
                                        "health unknown", self.r.where, tid, route,
                                        exc.failure.status, exc.failure.cloud_code)
                return "UNKNOWN"
            raise
        states = [str(e.get("healthState") or "") for e in
                  (answer.get("healthStatus") or [] if isinstance(answer, dict) else [])
                  if isinstance(e, dict)]
        if "UNHEALTHY" in states:
            return "UNHEALTHY"
        if states and all(st == "HEALTHY" for st in states):
            return "HEALTHY"
        return "UNKNOWN"

    def url(self, tid: str) -> str:
        return self._urls.get(tid) or self.r._instance_url(tid)

    def register(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change(route, "addInstance", [t for t, _ in targets])

    def deregister(self, route: str, targets: list[tuple[str, int | None]]) -> None:
        self._change(route, "removeInstance", [t for t, _ in targets])

    def _change(self, route: str, what: str, tids: list[str]) -> None:
        if not tids:
            return
        urls = [self.url(t) for t in tids]
        join = what == "addInstance"
        call = f"targetPools.{what} {route} ({', '.join(self.display_name(t) for t in tids)})"

        def done() -> bool:
            live = self.members(route, with_health=False)
            return all((t in live) == join for t in tids)

        where = self._path(route, f"/{what}")

        def post(conn: Any) -> Any:
            return conn.request(where, method="POST",
                                data={"instances": [{"instance": u} for u in urls]}).object

        try:
            # Not idempotent by itself: before a retry, look whether the attempt took effect.
            op = self.r._gce_call(call, post, recover=lambda: {} if done() else None)
            self.r._gce_wait(call, op)
        except CloudRouterError as exc:
            # "already a member" / "not a member" (or an earlier attempt that did it): done.
            if exc.failure.kind != "client":
                raise
            try:
                already = done()
            except ImmError:
                already = False
            if not already:
                raise

    def target_by_name(self, name: str, live: Mapping[str, list[Target]]) -> str:
        if name in live:
            return name
        found = [tid for tid in live if self.display_name(tid) == name]
        return found[0] if len(found) == 1 else name

    def display_name(self, tid: str) -> str:
        return tid.rsplit("/", 1)[-1]


def _gce_target_id(url: str) -> str:
    """An instance URL (or partial URL) -> ``zones/<zone>/instances/<name>``."""
    m = _GCE_INSTANCE.search(url)
    return f"zones/{m.group('zone')}/instances/{m.group('name')}" if m else url


def _gce_region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


# --------------------------------------------------------------------------- the router


class CloudLBRouter(Router):
    kind = "cloudlb"
    features = frozenset({RouterFeature.HEALTH_CHECK})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"cloudlb router {name}"
        flavour = setting_str(s, "driver", where)
        if flavour not in FLAVOURS:
            raise ConfigError(f"{where}: driver = {flavour!r} must be \"elb\" (classic load "
                              f"balancer, route = its name), \"alb\" (route = a target group "
                              f"ARN) or \"gce\" (route = a GCE target pool name)")
        unknown = sorted(set(s) - (_GCE_KNOWN_SETTINGS if flavour == "gce" else _KNOWN_SETTINGS))
        if unknown:
            context.log.warning("%s: ignoring unknown settings %s", where, ", ".join(unknown))
        self.flavour = flavour
        safe = name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".") else \
            urllib.parse.quote(name, safe="")
        self.state = RouteState(context.state_dir / "cloudlb" / f"{safe}.json", where,
                                "what the load balancer holds")
        self._standby: dict[str, str] = {}  # per-route standby target groups (ensure_route)
        self._drain_timeout: dict[str, float] = {}  # per-route drain_timeout_s (ensure_route)
        self._driver: Any = None
        self._credentials: Credentials | None = None
        self._driver_lock = threading.Lock()
        self._lock = threading.RLock()
        if flavour == "gce":
            self._init_gce(s, safe)
            return
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

    def _init_gce(self, s: Mapping[str, Any], safe: str) -> None:
        """Settings of ``driver = "gce"``; no I/O (the key is read on the first call)."""
        where = self.where
        if "zone" in s and "zones" in s:
            raise ConfigError(f"{where}: set zone or zones, not both")
        zones = setting_str_list(s, "zones" if "zones" in s else "zone", where)
        if not zones:
            raise ConfigError(f"{where}: set zones (or zone), the GCE zones of the instances it "
                              f"puts in target pools, e.g. zones = [\"us-central1-a\"]")
        bad = [z for z in zones if not _GCE_ZONE.fullmatch(z)]
        if bad:
            raise ConfigError(f"{where}: {', '.join(bad)} do not look like GCE zones "
                              f"(e.g. us-central1-a)")
        regions = sorted({_gce_region(z) for z in zones})
        if len(regions) > 1:
            raise ConfigError(f"{where}: zones {', '.join(zones)} span regions "
                              f"{', '.join(regions)}; a target pool is regional: use one "
                              f"router per region")
        region = setting_str(s, "region", where) or regions[0]
        if region != regions[0]:
            raise ConfigError(f"{where}: region = {region!r} but zones are in {regions[0]}")
        self.region = region
        self.zones: list[str] = list(dict.fromkeys(zones))
        self.driver_name = setting_str(s, "libcloud_driver", where, "gce") or "gce"
        self.port = None
        self.drain_timeout_s = setting_num(s, "drain_timeout_s", where, 0.0, 0, 3600)
        if "standby_target_group" in s:
            raise ConfigError(f"{where}: standby_target_group is for driver = \"alb\"; a GCE "
                              f"router takes standby_target_pool")
        self.standby = setting_str(s, "standby_target_pool", where)
        endpoint = setting_str(s, "endpoint", where)
        self.endpoint = parse_endpoint(endpoint, where) if endpoint else None
        self.policy = CallPolicy.from_settings(s, where)
        self.poll_interval = setting_num(s, "poll_interval_s", where, DEFAULT_GCE_POLL_S, 0, 60)
        self.operation_timeout = setting_num(s, "operation_timeout_s", where,
                                             DEFAULT_GCE_OPERATION_TIMEOUT_S, 1, 86400)
        # Credentials exactly as the gcp provider reads them (one GCPAuth for both), with
        # this router's token cache by default.
        self.scrub = Scrubber()
        self.auth = GCPAuth(s, where, self.context.state_dir / "cloudlb" / f"{safe}.token.json",
                            self.scrub, self.context.log)
        self.caller = CloudCaller(
            cloud="GCP", name=self.name, policy=self.policy, scrub=self.scrub,
            log=self.context.log, credentials_hint=self.auth.hint,
            endpoint=lambda _r: self._endpoint_text(), error_cls=CloudRouterError,
            kind_word="router")
        self.api = _GCEApi(self)

    def _endpoint_text(self) -> str:
        if self.endpoint:
            host, port, secure = self.endpoint
            return f"{'https' if secure else 'http'}://{host}:{port}"
        if self.flavour == "gce":
            return "https://www.googleapis.com (the Compute Engine API)"
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
        if self.flavour == "gce":
            return self._make_gce_driver(cls)
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

    def _make_gce_driver(self, cls: Any) -> Any:
        """The GCE LB driver on a GCE compute driver authenticated and aimed the way the gcp
        provider does it (one GCPAuth)."""
        def build() -> Any:
            return cls(gce_driver=self.auth.compute_driver(self.endpoint, self.policy.timeout_s,
                                                           self.poll_interval))

        return self.caller.call(self.region, "authenticate (OAuth2 token)", build)

    def _note_token(self, driver: Any) -> None:
        self.auth.note_token(driver)

    def _gce_call(self, call: str, fn: Callable[[Any], Any],
                  recover: Callable[[], Any] | None = None) -> Any:
        """``fn(connection)`` through the CloudCaller, with GCE's reason code in front of the
        message (``notFound: The resource ...``) so that errors carry it as cloud_code."""
        from libcloud.common.google import GoogleBaseError

        driver = self.driver()

        def go() -> Any:
            with self._driver_lock:
                conn = driver.connection
                conn.gce_params = None
                try:
                    return fn(conn)
                except GoogleBaseError as exc:
                    raise with_reason(exc) from None

        try:
            return self.caller.call(self.region, call, go, recover=recover)
        finally:
            self._note_token(driver)

    def _gce_wait(self, call: str, op: Any) -> None:
        """Poll a regional operation until it is DONE (an operation that ended in an error
        raises from libcloud's response parsing, with the operation's error code)."""
        link = op.get("selfLink") if isinstance(op, dict) else None
        if not link or op.get("status") == "DONE":
            return
        deadline = time.monotonic() + self.operation_timeout
        what = f"{call} (operation {op.get('name', '?')})"
        while True:
            status = self._gce_call(what, lambda conn: str(conn.request(link).object.get(
                "status")))
            if status == "DONE":
                return
            if time.monotonic() > deadline:
                raise RouterError(
                    f"{self.where}, region {self.region}: {call} not done after "
                    f"operation_timeout_s={self.operation_timeout:g}s; it may still finish "
                    f"(imm reads the pool again on its next step), or raise operation_timeout_s",
                    detail={"cloud": "GCP", "router": self.name, "region": self.region,
                            "call": call})
            time.sleep(self.poll_interval)

    def _instance_url(self, tid: str) -> str:
        return f"{GOOGLE_API}/compute/v1/projects/{self.auth.project}/{tid}"

    def _gce_target(self, name: str, address: str) -> str:
        """``zones/<zone>/instances/<name>`` of a backend: the zone from the address when it is
        an instance path or URL, else from the settings (looked up when there are several)."""
        m = _GCE_INSTANCE.search(address)
        if m:
            zone, instance = m.group("zone"), m.group("name")
        else:
            if not _GCE_NAME.fullmatch(name):
                raise BadRequest(f"{self.where}: backend {name!r} must be a GCE instance name "
                                 f"(imm's instance id on GCP), or give zones/<zone>/instances/"
                                 f"<name> as its address")
            instance, zone = name, self._zone_of(name, address)
        if _gce_region(zone) != self.region:
            raise BadRequest(f"{self.where}: instance {instance} is in zone {zone}, outside "
                             f"region {self.region}: a target pool holds instances of its own "
                             f"region only")
        return f"zones/{zone}/instances/{instance}"

    def _zone_of(self, name: str, address: str) -> str:
        if len(self.zones) == 1:
            return self.zones[0]
        from libcloud.common.google import ResourceNotFoundError

        host, _ = _split_address(address)
        found: list[tuple[str, Any]] = []
        for zone in self.zones:
            def get(conn: Any, zone: str = zone) -> Any:
                try:
                    return conn.request(f"/zones/{zone}/instances/{name}").object
                except ResourceNotFoundError:
                    return None

            instance = self._gce_call(f"instances.get {name} ({zone})", get)
            if isinstance(instance, dict):
                found.append((zone, instance))
        if not found:
            raise NotFound(f"{self.where}: no instance {name} in zones {', '.join(self.zones)}; "
                           f"give zones/<zone>/instances/{name} as its address if it runs "
                           f"elsewhere")
        if len(found) > 1:
            by_ip = [z for z, inst in found if host in _gce_ips(inst)]
            if len(by_ip) != 1:
                raise BadRequest(f"{self.where}: instance {name} exists in zones "
                                 f"{', '.join(z for z, _ in found)} and address {address!r} "
                                 f"does not tell which; give zones/<zone>/instances/{name}")
            return by_ip[0]
        return found[0][0]

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
        if self.flavour == "gce":
            return self._gce_target(name, address), None
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
        gce = self.flavour == "gce"
        if gce and "standby_target_group" in settings:
            raise BadRequest(f"{where}: standby_target_group is for driver = \"alb\"; a GCE "
                             f"route takes standby_target_pool")
        standby = setting_str(settings, "standby_target_pool" if gce else "standby_target_group",
                              where)
        if "drain_timeout_s" in settings:
            self._drain_timeout[route] = setting_num(settings, "drain_timeout_s", where,
                                                     DEFAULT_DRAIN_TIMEOUT_S, 0, 3600)
        if standby:
            if self.flavour == "elb":
                raise BadRequest(f"{self.where}: standby_target_group needs driver = \"alb\"")
            self._standby[route] = standby
        with self._lock:
            if isinstance(self.api, _GCEApi):
                self._check_pool(self.api, route)
            self.api.members(route, with_health=False)  # NotFound when the route is missing
            sb = self._standby_of(route)
            if sb:
                self.api.members(sb, with_health=False)

    def _check_pool(self, api: _GCEApi, route: str) -> None:
        pool = api.pool(route)
        if not pool.get("healthChecks"):
            self.context.log.warning(
                "%s: target pool %s has no health check: GCE counts every member as healthy, "
                "so imm's health gate only proves that an instance is in the pool; add an HTTP "
                "health check to the pool (gcloud compute target-pools add-health-checks)",
                self.where, route)

    # -- reads

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
        if self.flavour == "gce":  # target pools have no draining to watch
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


def _gce_ips(instance: Mapping[str, Any]) -> set[str]:
    """Internal and external IPs of a GCE instance resource."""
    ips: set[str] = set()
    for nic in instance.get("networkInterfaces") or []:
        if nic.get("networkIP"):
            ips.add(str(nic["networkIP"]))
        for ac in nic.get("accessConfigs") or []:
            if ac.get("natIP"):
                ips.add(str(ac["natIP"]))
    return ips


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
