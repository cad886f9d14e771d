"""The AWS provider's settings, credentials, drivers and listing (see the package docstring)."""

from __future__ import annotations

import configparser
import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ....errors import ConfigError, ProviderError
from ...base import (
    Feature,
    Instance,
    PluginContext,
    Provider,
)
from ...cloud import (
    CallPolicy,
    CloudCaller,
    CredentialCache,
    Credentials,
    CredentialSpec,
    DriverCache,
    Scrubber,
    check_credential_settings,
    credential_settings,
    credentials_hint,
    one_str,
    parse_endpoint,
    parse_time,
    per_region,
    setting_bool,
    setting_int,
    setting_str,
    setting_str_list,
)
from ...cloud.settings import warn_unknown
from .pages import STATE_MAP, page_instances, stream_pages

TAG_TOKEN = "imm:token"  # noqa: S105 - the launch's client token, for idempotency where ClientToken is ignored
TAG_COPIED_FROM = "imm:copied-from"  # "<region>/<ami>" on AMIs copy_image made
DEFAULT_SIZE = "t3.micro"
MAX_CLIENT_TOKEN = 64  # EC2's limit on ClientToken
TERMINATE_BATCH = 100
FILTER_VALUES_MAX = 195  # EC2 accepts up to 200 values per filter

CREDENTIALS = (
    CredentialSpec("key", "access key id", "AWS_ACCESS_KEY_ID"),
    CredentialSpec("secret", "secret access key", "AWS_SECRET_ACCESS_KEY"),
    CredentialSpec("token", "session token", "AWS_SESSION_TOKEN", required=False),
)
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
IMAGE_ABSENT_CODES = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
                      "InvalidAMIID.Malformed"}
INSTANCE_ABSENT_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
IMAGE_DEAD_STATES = {"deregistered", "failed", "invalid", "error", "disabled"}

_KNOWN_SETTINGS = {
    "kind", "regions", "size", "subnet_id", "security_group_ids", "key_name", "iam_profile",
    "assign_public_ip", "endpoint", "libcloud_driver", "page_size", "terminate_untagged",
    "credentials_file", "profile", *CallPolicy.KEYS, *credential_settings(CREDENTIALS),
}
# Per-service launch extras honoured from LaunchRequest.settings.
_LAUNCH_SETTINGS = {"subnet_id", "security_group_ids", "key_name", "iam_profile", "user_data",
                    "assign_public_ip"}


def effective_token(client_token: str) -> str:
    """EC2 takes at most 64 ASCII characters; longer or non-ASCII tokens are hashed."""
    if client_token and len(client_token) <= MAX_CLIENT_TOKEN and client_token.isascii() \
            and client_token.isprintable():
        return client_token
    return "imm-" + hashlib.sha256(client_token.encode()).hexdigest()[:56]


class AWSCore(Provider):
    """The AWS provider's settings, credentials, drivers and listing"""

    kind = "aws"
    features = frozenset({Feature.CLIENT_TOKEN, Feature.COPY_IMAGE})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"aws provider {name}"
        warn_unknown(s, _KNOWN_SETTINGS, where, context.log)
        regions = setting_str_list(s, "regions", where)
        if not regions:
            raise ConfigError(f"{where}: set regions, e.g. regions = [\"us-east-1\"]")
        if len(set(regions)) != len(regions):
            raise ConfigError(f"{where}: regions lists a region twice")
        self.regions = regions
        self.driver_name = setting_str(s, "libcloud_driver", where, "ec2") or "ec2"
        self.policy = CallPolicy.from_settings(s, where)
        self.size = setting_str(s, "size", where, DEFAULT_SIZE) or DEFAULT_SIZE
        self.page_size = setting_int(s, "page_size", where, 1000, 5, 1000)
        self.terminate_untagged = setting_bool(s, "terminate_untagged", where, False)
        self.assign_public_ip = setting_bool(s, "assign_public_ip", where, False)
        self.iam_profile = setting_str(s, "iam_profile", where)
        self.subnets = {r: one_str(v, "subnet_id", where)
                        for r, v in per_region(s, "subnet_id", where, regions).items()}
        self.key_names = {r: one_str(v, "key_name", where)
                          for r, v in per_region(s, "key_name", where, regions).items()}
        self.security_groups = {
            r: setting_str_list({"v": v}, "v", f"{where} security_group_ids")
            for r, v in per_region(s, "security_group_ids", where, regions).items()}
        for r, groups in self.security_groups.items():
            if groups and r not in self.subnets:
                raise ConfigError(f"{where}: security_group_ids in {r} need subnet_id there "
                                  f"(EC2 takes security group ids for VPC launches)")
        self.endpoints: dict[str, tuple[str, int, bool]] = {
            r: parse_endpoint(one_str(v, "endpoint", where), where)
            for r, v in per_region(s, "endpoint", where, regions).items()}
        self.credentials_file = setting_str(s, "credentials_file", where)
        self.profile = setting_str(s, "profile", where, "default") or "default"
        if self.credentials_file and any(k in s for k in credential_settings(CREDENTIALS)):
            raise ConfigError(f"{where}: set credentials_file or key_env/secret_env/..., "
                              f"not both")
        check_credential_settings(s, CREDENTIALS, where)
        self._check_regions()
        self.scrub = Scrubber()
        self.caller = CloudCaller(
            cloud="AWS", name=name, policy=self.policy, scrub=self.scrub, log=context.log,
            credentials_hint=self._credentials_hint(), endpoint=self._endpoint_text)
        self.credentials = CredentialCache(s, CREDENTIALS, where, self.scrub, context.log)
        self.drivers = DriverCache(where, self.regions, self._make_driver)

    # -- settings helpers

    def _check_regions(self) -> None:
        cls = self._driver_class()
        valid = getattr(cls, "list_regions", None)
        known = set(valid()) if callable(valid) else set()
        bad = [r for r in self.regions if known and r not in known]
        if bad:
            raise ConfigError(f"{self.where}: unknown region(s) {', '.join(bad)} for libcloud "
                              f"driver {self.driver_name!r}")

    def _driver_class(self) -> Any:
        from libcloud.compute.providers import get_driver

        try:
            return get_driver(self.driver_name)
        except AttributeError:
            raise ConfigError(f"{self.where}: libcloud has no compute driver "
                              f"{self.driver_name!r} (libcloud_driver; the default is \"ec2\")"
                              ) from None

    def _credentials_hint(self) -> str:
        if self.credentials_file:
            return f"profile [{self.profile}] in credentials_file {self.credentials_file}"
        return credentials_hint(self.settings, CREDENTIALS)

    def _endpoint_text(self, region: str) -> str:
        if region in self.endpoints:
            host, port, secure = self.endpoints[region]
            return f"{'https' if secure else 'http'}://{host}:{port}"
        return f"the EC2 endpoint of {region}"

    # -- drivers

    def _load_credentials(self) -> Credentials:
        if self.credentials_file and not self.credentials.loaded():
            return self.credentials.set(self._shared_credentials())
        return self.credentials.get()

    def _shared_credentials(self) -> Credentials:
        assert self.credentials_file is not None
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(self.credentials_file) as fh:
                parser.read_file(fh)
        except (OSError, configparser.Error) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"{self.where}: cannot read credentials_file "
                              f"{self.credentials_file}: {why}") from None
        if not parser.has_section(self.profile):
            raise ConfigError(f"{self.where}: credentials_file {self.credentials_file} has no "
                              f"profile [{self.profile}] (profile)")
        sec = parser[self.profile]
        values = {"key": sec.get("aws_access_key_id"), "secret": sec.get("aws_secret_access_key"),
                  "token": sec.get("aws_session_token")}
        missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not sec.get(k)]
        if missing:
            raise ConfigError(f"{self.where}: profile [{self.profile}] in "
                              f"{self.credentials_file} lacks {', '.join(missing)}")
        src = f"[{self.profile}] in {self.credentials_file}"
        return Credentials(values, {"key": src, "secret": src})

    def _make_driver(self, region: str) -> Any:
        creds = self._load_credentials()
        cls = self._driver_class()
        kwargs: dict[str, Any] = {"region": region, "signature_version": "4",
                                  "timeout": self.policy.timeout_s}
        if creds.get("token"):
            kwargs["token"] = creds.get("token")
        if region in self.endpoints:
            host, port, secure = self.endpoints[region]
            kwargs.update(host=host, port=port, secure=secure)
        try:
            return cls(creds.get("key"), creds.get("secret"), **kwargs)
        except Exception as exc:  # a driver's constructor can raise anything
            raise ProviderError(f"{self.where}, region {region}: cannot set up the libcloud "
                                f"{self.driver_name} driver: {type(exc).__name__}: "
                                f"{self.scrub(exc)}") from None

    def _call(self, region: str, call: str, fn: Callable[[Any], Any], *,
              recover: Callable[[], Any] | None = None) -> Any:
        """Run ``fn(driver)`` for ``region`` under the region's lock, with retries."""
        driver, lock = self.drivers.get(region)

        def attempt() -> Any:
            with lock:
                return fn(driver)

        return self.caller.call(region, call, attempt, recover=recover)

    # -- listing

    def _pages(self, region: str, filters: Mapping[str, Any], call: str
               ) -> Iterator[list[Instance]]:
        """The instances matching ``filters`` in ``region``, one DescribeInstances page at a time."""
        from libcloud.compute.drivers.ec2 import NAMESPACE

        token: str | None = None
        while True:
            def page(driver: Any, token: str | None = token) -> tuple[list[Instance], str | None]:
                params = {"Action": "DescribeInstances", "MaxResults": str(self.page_size)}
                params.update(driver._build_filters(dict(filters)))
                if token:
                    params["NextToken"] = token
                elem = driver.connection.request(driver.path, params=params).object
                return page_instances(elem, NAMESPACE, self.name, region)

            found, token = self._call(region, call, page)
            yield found
            if not token:
                return

    def _describe(self, region: str, filters: Mapping[str, Any], call: str) -> list[Instance]:
        """Every instance matching ``filters`` in ``region`` (all pages)."""
        return [i for page in self._pages(region, filters, call) for i in page]

    def _to_instance(self, region: str, node: Any) -> Instance:
        """A libcloud ``Node`` (what ``create_node`` returns) as an imm ``Instance``; listing
        reads DescribeInstances pages with :func:`page_instances`, which gives the same."""
        extra = node.extra or {}
        raw_state = str(extra.get("status") or "")
        launched = parse_time(extra.get("launch_time")) or parse_time(node.created_at) or 0
        private = node.private_ips[0] if node.private_ips else None
        public = node.public_ips[0] if node.public_ips else None
        tags = {str(k): "" if v is None else str(v) for k, v in (extra.get("tags") or {}).items()}
        return Instance(
            id=node.id, provider=self.name, region=region,
            image_id=str(extra.get("image_id") or ""),
            state=STATE_MAP.get(raw_state, "unknown"),
            launched_at=launched, tags=tags, address=private or public,
            extra={k: v for k, v in {
                "aws_state": raw_state or None, "instance_type": extra.get("instance_type"),
                "availability_zone": extra.get("availability"),
                "private_ip": private, "public_ip": public, "subnet_id": extra.get("subnet_id"),
                "vpc_id": extra.get("vpc_id"), "name": node.name,
            }.items() if v is not None},
        )

    def _list_region(self, region: str, filters: Mapping[str, Any]) -> list[Instance]:
        out = self._describe(region, filters, "DescribeInstances")
        return [i for i in out if i.extra.get("aws_state") != "terminated"]

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        """Live instances page by page as the regions' pages arrive (see :func:`stream_pages`)."""
        filters: dict[str, Any] = {"instance-state-name": list(LIVE_STATES)}
        for key, value in (tags or {}).items():
            filters[f"tag:{key}"] = str(value)
        pages = {r: functools.partial(self._pages, r, filters, "DescribeInstances")
                 for r in self.regions}
        for page in stream_pages(pages, f"imm-aws-{self.name}"):
            yield from (i for i in page if i.extra.get("aws_state") != "terminated")

    def _per_region(self, fn: Callable[[str], Any]) -> dict[str, Any]:
        if len(self.regions) == 1:
            return {self.regions[0]: fn(self.regions[0])}
        with ThreadPoolExecutor(max_workers=min(8, len(self.regions)),
                                thread_name_prefix=f"imm-aws-{self.name}") as pool:
            futures = {r: pool.submit(fn, r) for r in self.regions}
            return {r: f.result() for r, f in futures.items()}
