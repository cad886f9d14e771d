"""The ``aws`` provider: EC2 instances and AMIs through libcloud's EC2 driver, one per region.

Settings (``[providers.NAME]`` in the config)::

    kind = "aws"
    regions = ["us-east-1", "eu-west-1"]     # one libcloud EC2 driver per region
    size = "t3.micro"                        # instance type when the service names none
    subnet_id = "subnet-0abc"                # optional; or a table per region:
    # subnet_id = { "us-east-1" = "subnet-0abc", "eu-west-1" = "subnet-0def" }
    security_group_ids = ["sg-0abc"]         # optional (needs subnet_id); list or table per region
    key_name = "ops"                         # optional EC2 key pair; string or table per region
    iam_profile = "web-role"                 # optional instance profile name or ARN
    assign_public_ip = false                 # with a subnet: give instances a public address

    # credentials: environment variables (defaults shown) or files, never the values here
    key_env = "AWS_ACCESS_KEY_ID"            # or key_file = "/etc/imm/aws/key-id"
    secret_env = "AWS_SECRET_ACCESS_KEY"     # or secret_file = "/etc/imm/aws/secret"
    token_env = "AWS_SESSION_TOKEN"          # optional; or token_file
    # credentials_file = "/etc/imm/aws/credentials"   # instead: an AWS shared credentials file
    # profile = "imm"                                 # ... and its profile (default "default")

    endpoint = "https://vpce-0abc.ec2.us-east-1.vpce.amazonaws.com"  # optional; or per region
    libcloud_driver = "ec2"                  # libcloud compute driver name (tests swap it)
    page_size = 1000                         # DescribeInstances MaxResults (5..1000)
    terminate_untagged = false               # refuse to terminate instances imm did not launch

    timeout_s = 30                           # per HTTP request
    retries = 5                              # throttling, 5xx, timeouts, connection errors
    backoff_base_s = 0.5
    backoff_max_s = 10

What it does:

- ``list_instances`` pages through DescribeInstances with ``MaxResults``/``NextToken`` (libcloud's
  ``list_nodes`` does not paginate, and makes an extra DescribeAddresses call per page), in all
  regions concurrently, with ``tag:<key>`` filters when tags are given. Terminated instances are
  not listed; ``shutting-down`` ones are, with state ``terminated``.
- ``launch`` is RunInstances (libcloud ``create_node``) with ``MinCount = MaxCount = count``, the
  request's tags on the instances at launch (TagSpecifications) and ``ClientToken`` = the
  request's client token (hashed when longer than EC2's 64 characters), so a retried launch
  returns the first launch's instances. The token is also put in an ``imm:token`` tag, and
  instances carrying it are looked for before launching and before every retry after a timeout:
  that keeps launches idempotent on EC2-compatible endpoints that ignore ClientToken (moto
  does) and after EC2 has forgotten the token.
- ``terminate`` finds each id's region with one DescribeInstances per region (ids in no region
  are already gone), refuses instances without an ``imm:service`` tag unless
  ``terminate_untagged = true``, and terminates them in batches (one at a time if the batch
  races with another terminate).
- ``describe_image`` is DescribeImages by id (None when EC2 says the AMI does not exist).
- ``copy_image`` is CopyImage into the destination region with the source AMI's name, the
  source's ``imm:*`` tags and an ``imm:copied-from = <region>/<ami>`` tag, and a ClientToken
  derived from (source region, AMI, destination region): a repeated copy returns the existing
  copy (looked up by that tag first) instead of making a second one.

Calls run through :class:`~imm.plugins.cloud.CloudCaller` (see there for retries and
error messages); each region's driver is used by one thread at a time.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ...errors import BadRequest, ConfigError, NotFound, ProviderError
from ..base import TAG_SERVICE, TAG_SLOT, Feature, ImageInfo, Instance, LaunchRequest, PluginContext, Provider
from ..cloud import (
    CallPolicy,
    CloudCaller,
    CloudProviderError,
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
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..registry import ProviderRegistry

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
STATE_MAP = {
    "pending": "pending", "running": "running", "stopping": "stopped", "stopped": "stopped",
    "shutting-down": "terminated", "terminated": "terminated",
}
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


class AWSProvider(Provider):
    kind = "aws"
    features = frozenset({Feature.CLIENT_TOKEN, Feature.COPY_IMAGE})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"aws provider {name}"
        unknown = sorted(set(s) - _KNOWN_SETTINGS)
        if unknown:
            context.log.warning("%s: ignoring unknown settings %s", where, ", ".join(unknown))
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

    def _describe(self, region: str, filters: Mapping[str, Any], call: str) -> list[Any]:
        """Every instance matching ``filters`` in ``region``, page by page (libcloud Nodes)."""
        from libcloud.compute.drivers.ec2 import NAMESPACE
        from libcloud.utils.xml import findall, findtext

        nodes: list[Any] = []
        token: str | None = None
        while True:
            def page(driver: Any, token: str | None = token) -> tuple[list[Any], str | None]:
                params = {"Action": "DescribeInstances", "MaxResults": str(self.page_size)}
                params.update(driver._build_filters(dict(filters)))
                if token:
                    params["NextToken"] = token
                elem = driver.connection.request(driver.path, params=params).object
                found: list[Any] = []
                for rs in findall(element=elem, xpath="reservationSet/item", namespace=NAMESPACE):
                    found += driver._to_nodes(rs, "instancesSet/item")
                return found, findtext(element=elem, xpath="nextToken", namespace=NAMESPACE)

            found, token = self._call(region, call, page)
            nodes += found
            if not token:
                return nodes

    def _to_instance(self, region: str, node: Any) -> Instance:
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
        nodes = self._describe(region, filters, "DescribeInstances")
        out = [self._to_instance(region, n) for n in nodes]
        return [i for i in out if i.extra.get("aws_state") != "terminated"]

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        filters: dict[str, Any] = {"instance-state-name": list(LIVE_STATES)}
        for key, value in (tags or {}).items():
            filters[f"tag:{key}"] = str(value)
        results = self._per_region(lambda r: self._list_region(r, filters))
        for region in self.regions:
            yield from results[region]

    def _per_region(self, fn: Callable[[str], Any]) -> dict[str, Any]:
        if len(self.regions) == 1:
            return {self.regions[0]: fn(self.regions[0])}
        with ThreadPoolExecutor(max_workers=min(8, len(self.regions)),
                                thread_name_prefix=f"imm-aws-{self.name}") as pool:
            futures = {r: pool.submit(fn, r) for r in self.regions}
            return {r: f.result() for r, f in futures.items()}

    # -- launch

    def _find_token(self, region: str, token: str) -> list[Instance]:
        nodes = self._describe(region, {"tag:" + TAG_TOKEN: token,
                                        "instance-state-name": list(LIVE_STATES)},
                               "DescribeInstances (launch token)")
        return [self._to_instance(region, n) for n in nodes]

    def launch(self, request: LaunchRequest) -> list[Instance]:
        from libcloud.compute.base import NodeImage, NodeSize
        from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

        region = request.region
        self.drivers.get(region)  # validates the region
        if not isinstance(request.count, int) or request.count < 1:
            raise BadRequest(f"{self.where}: launch count {request.count!r} must be >= 1")
        if not request.client_token:
            raise BadRequest(f"{self.where}: launch needs a client token")
        extra = dict(request.settings or {})
        unknown = sorted(set(extra) - _LAUNCH_SETTINGS - {"size"})
        if unknown:
            self.context.log.warning("%s: launch ignores settings %s", self.where,
                                     ", ".join(unknown))
        token = effective_token(request.client_token)
        existing = self._find_token(region, token)
        if existing:
            self.context.log.info("%s, region %s: launch %s already ran: %d instance(s) %s",
                                  self.where, region, token, len(existing),
                                  ", ".join(i.id for i in existing))
            return existing
        tags = {str(k): str(v) for k, v in request.tags.items()}
        tags[TAG_TOKEN] = token
        name = tags.pop("Name", None) or "-".join(
            v for v in (request.tags.get(TAG_SERVICE), request.tags.get(TAG_SLOT)) if v) or "imm"
        size_id = request.size or extra.get("size") or self.size
        subnet = request.network or extra.get("subnet_id") or self.subnets.get(region)
        groups = extra.get("security_group_ids", self.security_groups.get(region))
        if isinstance(groups, str):
            groups = [groups]
        if groups and not subnet:
            raise BadRequest(f"{self.where}: security_group_ids need a subnet_id in {region}")
        kwargs: dict[str, Any] = {
            "ex_mincount": request.count, "ex_maxcount": request.count,
            "ex_clienttoken": token, "ex_metadata": tags,
        }
        if subnet:
            kwargs["ex_subnet"] = EC2NetworkSubnet(str(subnet), None, None)
        if groups:
            kwargs["ex_security_group_ids"] = list(groups)
        key_name = extra.get("key_name") or self.key_names.get(region)
        if key_name:
            kwargs["ex_keyname"] = key_name
        iam = extra.get("iam_profile") or self.iam_profile
        if iam:
            kwargs["ex_iamprofile"] = iam
        if extra.get("user_data"):
            kwargs["ex_userdata"] = str(extra["user_data"])
        if subnet and extra.get("assign_public_ip", self.assign_public_ip):
            kwargs["ex_assign_public_ip"] = True

        def run(driver: Any) -> list[Instance]:
            image = NodeImage(request.image_id, request.image_id, driver)
            size = NodeSize(size_id, size_id, 0, 0, 0, 0.0, driver)
            nodes = driver.create_node(name=name, size=size, image=image, **kwargs)
            out = []
            for node in nodes if isinstance(nodes, list) else [nodes]:
                inst = self._to_instance(region, node)
                inst.tags = {**tags, "Name": name, **inst.tags}
                out.append(inst)
            return out

        def recover() -> list[Instance] | None:
            return self._find_token(region, token) or None

        try:
            instances: list[Instance] = self._call(region, "RunInstances", run, recover=recover)
        except CloudProviderError as exc:
            if exc.failure.cloud_code == "IdempotentParameterMismatch" or "Idempotent" in \
                    exc.failure.message:
                raise ProviderError(
                    f"{self.where}, region {region}: client token {token} was already used for "
                    f"a launch with other parameters; a retried launch must repeat the first "
                    f"one exactly", code="idempotent-mismatch") from None
            raise
        self.context.log.info("%s, region %s: launched %s from %s (token %s)", self.where,
                              region, ", ".join(i.id for i in instances), request.image_id, token)
        return instances

    # -- terminate

    def _locate(self, ids: Sequence[str]) -> dict[str, dict[str, Instance]]:
        """region -> {id: Instance} for the ids that exist and are not terminated."""
        def find(region: str) -> dict[str, Instance]:
            found: dict[str, Instance] = {}
            for i in range(0, len(ids), FILTER_VALUES_MAX):
                chunk = list(ids[i:i + FILTER_VALUES_MAX])
                for inst in self._list_region(region, {"instance-id": chunk}):
                    found[inst.id] = inst
            return found

        return self._per_region(find)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(str(i) for i in instance_ids))
        if not ids:
            return
        located = self._locate(ids)
        gone = set(ids) - {i for found in located.values() for i in found}
        if gone:
            self.context.log.info("%s: %s already gone", self.where, ", ".join(sorted(gone)))
        if not self.terminate_untagged:
            foreign = sorted(i for found in located.values() for i, inst in found.items()
                             if TAG_SERVICE not in inst.tags)
            if foreign:
                raise BadRequest(
                    f"{self.where}: refusing to terminate {', '.join(foreign)}: no "
                    f"{TAG_SERVICE} tag, so imm did not launch them (set terminate_untagged = "
                    f"true on the provider to allow it)")
        for region, found in located.items():
            live = [i for i, inst in found.items() if inst.state != "terminated"]
            for start in range(0, len(live), TERMINATE_BATCH):
                self._terminate_batch(region, live[start:start + TERMINATE_BATCH])

    def _terminate_batch(self, region: str, ids: list[str]) -> None:
        from libcloud.compute.base import Node
        from libcloud.compute.types import NodeState

        def batch(driver: Any) -> None:
            params = {"Action": "TerminateInstances", **driver._pathlist("InstanceId", ids)}
            driver.connection.request(driver.path, params=params)

        try:
            self._call(region, "TerminateInstances", batch)
            self.context.log.info("%s, region %s: terminating %s", self.where, region,
                                  ", ".join(ids))
            return
        except CloudProviderError as exc:
            if exc.failure.cloud_code not in INSTANCE_ABSENT_CODES:
                raise
        def one(driver: Any, iid: str) -> Any:
            return driver.destroy_node(Node(iid, iid, NodeState.UNKNOWN, [], [], driver))

        for iid in ids:  # one vanished meanwhile: the batch failed as a whole, go one by one
            try:
                self._call(region, "TerminateInstances", functools.partial(one, iid=iid))
            except CloudProviderError as exc:
                if exc.failure.cloud_code not in INSTANCE_ABSENT_CODES:
                    raise

    # -- images

    def _get_image(self, region: str, image_id: str) -> Any | None:
        try:
            images = self._call(region, "DescribeImages",
                                lambda d: d.list_images(ex_image_ids=[image_id]))
        except CloudProviderError as exc:
            if exc.failure.cloud_code in IMAGE_ABSENT_CODES:
                return None
            raise
        return next((i for i in images if i.id == image_id), None)

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        image = self._get_image(region, image_id)
        if image is None:
            return None
        extra = image.extra or {}
        return ImageInfo(
            region=region, image_id=image.id, name=image.name, state=extra.get("state"),
            extra={k: v for k, v in {
                "tags": extra.get("tags") or {}, "description": extra.get("description"),
                "owner_id": extra.get("owner_id"), "architecture": extra.get("architecture"),
                "root_device_type": extra.get("root_device_type"),
                "virtualization_type": extra.get("virtualization_type"),
            }.items() if v is not None},
        )

    def _find_copy(self, dst_region: str, source: str) -> str | None:
        images = self._call(dst_region, "DescribeImages (copies)", lambda d: d.list_images(
            ex_owner="self", ex_filters={f"tag:{TAG_COPIED_FROM}": source}))
        live = [i for i in images if (i.extra or {}).get("state") not in IMAGE_DEAD_STATES]
        return live[0].id if live else None

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        from libcloud.compute.drivers.ec2 import NAMESPACE
        from libcloud.utils.xml import findtext

        if src_region == dst_region:
            raise BadRequest(f"{self.where}: copy_image source and destination are both "
                             f"{src_region}")
        self.drivers.get(dst_region)
        source = self._get_image(src_region, image_id)
        if source is None:
            raise NotFound(f"{self.where}: no image {image_id} in {src_region} to copy")
        origin = f"{src_region}/{image_id}"
        existing = self._find_copy(dst_region, origin)
        if existing:
            return existing
        src_tags = (source.extra or {}).get("tags") or {}
        tags = {k: v for k, v in src_tags.items() if str(k).startswith("imm:")}
        tags[TAG_COPIED_FROM] = origin
        name = source.name or f"imm-{image_id}"
        token = "imm-copy-" + hashlib.sha256(
            f"{src_region}/{image_id}/{dst_region}".encode()).hexdigest()[:48]

        def copy(driver: Any, token: str = token) -> str:
            params = {"Action": "CopyImage", "SourceRegion": src_region,
                      "SourceImageId": image_id, "Name": name, "ClientToken": token,
                      "Description": f"copied by imm from {origin}"[:255],
                      "TagSpecification.1.ResourceType": "image"}
            for n, (k, v) in enumerate(sorted(tags.items()), start=1):
                params[f"TagSpecification.1.Tag.{n}.Key"] = k
                params[f"TagSpecification.1.Tag.{n}.Value"] = v
            elem = driver.connection.request(driver.path, params=params).object
            new = findtext(element=elem, xpath="imageId", namespace=NAMESPACE)
            if not new:
                raise ProviderError(f"{self.where}, region {dst_region}: CopyImage answered "
                                    f"without an imageId")
            return str(new)

        new_id = self._call(dst_region, "CopyImage", copy,
                            recover=lambda: self._find_copy(dst_region, origin))
        copied = self._get_image(dst_region, new_id)
        if copied is not None and (copied.extra or {}).get("state") in IMAGE_DEAD_STATES:
            # EC2 remembered the token of an earlier copy that has been deregistered since.
            new_id = self._call(dst_region, "CopyImage",
                                lambda d: copy(d, "imm-copy-" + secrets.token_hex(24)))
            copied = None
        if copied is None or ((copied.extra or {}).get("tags") or {}).get(
                TAG_COPIED_FROM) != origin:
            # The endpoint ignored TagSpecifications (moto does), or the new AMI is not visible
            # yet. The tag only speeds up finding the copy again (the ClientToken alone makes a
            # repeated copy return the same AMI), so failing to set it is not fatal.
            try:
                self._tag(dst_region, new_id, tags)
            except ProviderError as exc:
                self.context.log.warning("%s: could not tag the copy %s in %s: %s", self.where,
                                         new_id, dst_region, exc.message)
        self.context.log.info("%s: copied %s to %s as %s", self.where, origin, dst_region, new_id)
        return new_id

    def _tag(self, region: str, resource_id: str, tags: Mapping[str, str]) -> None:
        """CreateTags with 1-based parameters (libcloud's ex_create_tags numbers from 0)."""
        def create(driver: Any) -> None:
            params = {"Action": "CreateTags", "ResourceId.1": resource_id}
            for n, (k, v) in enumerate(sorted(tags.items()), start=1):
                params[f"Tag.{n}.Key"] = k
                params[f"Tag.{n}.Value"] = v
            driver.connection.request(driver.path, params=params)

        self._call(region, "CreateTags", create)

    # -- lifecycle

    def close(self) -> None:
        self.drivers.clear()
        self.credentials.clear()


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(AWSProvider)
