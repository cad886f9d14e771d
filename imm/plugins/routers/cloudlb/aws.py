"""The cloudlb router on AWS: classic ELB (``driver = "elb"``) and ALB/NLB target groups
(``driver = "alb"``), through libcloud's ELB and ALB drivers' own connections."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from ....errors import BadRequest, ConfigError, NotFound, RouterError
from ...cloud import (
    CallPolicy,
    CloudCaller,
    CloudRouterError,
    CredentialCache,
    CredentialSpec,
    Scrubber,
    check_credential_settings,
    credential_settings,
    credentials_hint,
    parse_endpoint,
    point_connection,
    set_timeout,
    setting_int,
    setting_num,
    setting_str,
)
from .base import DEFAULT_DRAIN_TIMEOUT_S, CloudLBRouter, LBApi, Target, split_address

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
ROUTE_GONE_CODES = {"LoadBalancerNotFound", "TargetGroupNotFound", "AccessPointNotFound"}
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
_KNOWN_SETTINGS = {
    "kind", "driver", "region", "port", "standby_target_group", "endpoint", "libcloud_driver",
    "drain_timeout_s",
    *CallPolicy.KEYS, *credential_settings(CREDENTIALS),
}


class ELBApi(LBApi):
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


class ALBApi(LBApi):
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


class AWSLBRouter(CloudLBRouter):
    """What ELB and ALB share: region, credentials, the driver, raw requests."""

    known_settings = frozenset(_KNOWN_SETTINGS)
    route_word = "load balancer"

    def _configure(self, s: Mapping[str, Any], safe: str) -> None:
        where = self.where
        region = setting_str(s, "region", where)
        if not region:
            raise ConfigError(f"{where}: set region, e.g. region = \"us-east-1\"")
        self.region = region
        self.driver_name = setting_str(s, "libcloud_driver", where, self.flavour) or self.flavour
        self.port = setting_int(s, "port", where, 0, 0, 65535) or None
        self.drain_timeout_s = setting_num(s, "drain_timeout_s", where, DEFAULT_DRAIN_TIMEOUT_S,
                                           0, 3600)
        self.standby = setting_str(s, "standby_target_group", where)
        endpoint = setting_str(s, "endpoint", where)
        self.endpoint = parse_endpoint(endpoint, where) if endpoint else None
        self.policy = CallPolicy.from_settings(s, where)
        check_credential_settings(s, CREDENTIALS, where)
        self.scrub = Scrubber()
        self.credentials = CredentialCache(s, CREDENTIALS, where, self.scrub, self.context.log)
        self.caller = CloudCaller(
            cloud="AWS", name=self.name, policy=self.policy, scrub=self.scrub,
            log=self.context.log, credentials_hint=credentials_hint(s, CREDENTIALS),
            endpoint=lambda _r: self._endpoint_text(), error_cls=CloudRouterError,
            kind_word="router")
        self.api = self._api(self._request)

    def _api(self, request: Callable[[str, str, dict[str, str]], Any]) -> LBApi:
        raise NotImplementedError

    def _endpoint_text(self) -> str:
        if self.endpoint:
            host, port, secure = self.endpoint
            return f"{'https' if secure else 'http'}://{host}:{port}"
        return f"the {self.flavour.upper()} endpoint of {self.region}"

    def _forget_credentials(self) -> None:
        self.credentials.clear()

    def _make_driver(self) -> Any:
        from libcloud.loadbalancer.providers import get_driver

        try:
            cls = get_driver(self.driver_name)
        except AttributeError:
            raise ConfigError(f"{self.where}: libcloud has no load balancer driver "
                              f"{self.driver_name!r} (libcloud_driver)") from None
        creds = self.credentials.get()
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
                what = self.route_word
                raise NotFound(f"{self.where}: {what} {route} does not exist in {self.region} "
                               f"({exc.failure.cloud_code}); check the service's route") from None
            raise


class ELBRouter(AWSLBRouter, flavour="elb"):
    """Classic ELB: a route is the load balancer's name; backends are EC2 instances."""

    def _configure(self, s: Mapping[str, Any], safe: str) -> None:
        super()._configure(s, safe)
        if self.standby:
            raise ConfigError(f"{self.where}: standby_target_group needs driver = \"alb\"")

    def _api(self, request: Callable[[str, str, dict[str, str]], Any]) -> LBApi:
        return ELBApi(request)

    def _route_standby(self, settings: Mapping[str, Any], where: str) -> str | None:
        if setting_str(settings, "standby_target_group", where):
            raise BadRequest(f"{self.where}: standby_target_group needs driver = \"alb\"")
        return None

    def _target_of(self, route: str, name: str, address: str) -> tuple[str, int | None]:
        if not _INSTANCE_ID.fullmatch(name):
            raise BadRequest(f"{self.where}: backend {name!r} must be an EC2 instance id "
                             f"(a classic ELB registers instances)")
        return name, None


class ALBRouter(AWSLBRouter, flavour="alb"):
    """ALB/NLB: a route is a target group ARN; backends are instances or IPs."""

    route_word = "target group"

    def _api(self, request: Callable[[str, str, dict[str, str]], Any]) -> LBApi:
        return ALBApi(request)

    def _route_standby(self, settings: Mapping[str, Any], where: str) -> str | None:
        return setting_str(settings, "standby_target_group", where)

    def _target_of(self, route: str, name: str, address: str) -> tuple[str, int | None]:
        host, port = split_address(address)
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
