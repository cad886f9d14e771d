"""The cloudlb router on Google Cloud (``driver = "gce"``): network load balancing target pools,
through the GCE load balancer driver's connection, authenticated by the same GCPAuth as the gcp
provider."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ....errors import BadRequest, ConfigError, ImmError, NotFound, RouterError
from ...cloud import (
    CallPolicy,
    CloudCaller,
    CloudRouterError,
    Scrubber,
    parse_endpoint,
    setting_num,
    setting_str,
    setting_str_list,
)
from ...cloud.gcp import AUTH_SETTINGS, GOOGLE_API, GCPAuth, with_reason
from .base import CloudLBRouter, LBApi, Target, split_address

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



class GCEApi(LBApi):
    """Target pools of one region, through the GCE LB driver's connection (see the module
    docstring for why not libcloud's target pool methods). Target ids are
    ``zones/<zone>/instances/<name>``."""

    flavour = "gce"
    health_map = GCE_HEALTH

    def __init__(self, router: GCERouter) -> None:  # no request callable: see _gce_call
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


class GCERouter(CloudLBRouter, flavour="gce"):
    """A route is a target pool of the router's region; backends are GCE instances."""

    known_settings = frozenset(_GCE_KNOWN_SETTINGS)
    watches_draining = False  # target pools have no connection draining
    api: GCEApi

    def _configure(self, s: Mapping[str, Any], safe: str) -> None:
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
        self.api = GCEApi(self)

    def _endpoint_text(self) -> str:
        if self.endpoint:
            host, port, secure = self.endpoint
            return f"{'https' if secure else 'http'}://{host}:{port}"
        return "https://www.googleapis.com (the Compute Engine API)"

    def _make_driver(self) -> Any:
        from libcloud.loadbalancer.providers import get_driver

        try:
            cls = get_driver(self.driver_name)
        except AttributeError:
            raise ConfigError(f"{self.where}: libcloud has no load balancer driver "
                              f"{self.driver_name!r} (libcloud_driver)") from None
        return self._make_gce_driver(cls)

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

        host, _ = split_address(address)
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

    def _forget_credentials(self) -> None:
        self.auth.forget()

    def _target_of(self, route: str, name: str, address: str) -> tuple[str, int | None]:
        return self._gce_target(name, address), None

    def _route_standby(self, settings: Mapping[str, Any], where: str) -> str | None:
        if "standby_target_group" in settings:
            raise BadRequest(f"{where}: standby_target_group is for driver = \"alb\"; a GCE "
                             f"route takes standby_target_pool")
        return setting_str(settings, "standby_target_pool", where)

    def _check_route(self, route: str) -> None:
        self._check_pool(self.api, route)

    def _check_pool(self, api: GCEApi, route: str) -> None:
        pool = api.pool(route)
        if not pool.get("healthChecks"):
            self.context.log.warning(
                "%s: target pool %s has no health check: GCE counts every member as healthy, "
                "so imm's health gate only proves that an instance is in the pool; add an HTTP "
                "health check to the pool (gcloud compute target-pools add-health-checks)",
                self.where, route)
