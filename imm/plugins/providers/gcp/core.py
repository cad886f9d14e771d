"""The GCP provider's settings, drivers and listing (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ....errors import BadRequest, ConfigError
from ...base import (
    TAG_ROLLOUT,
    TAG_SERVICE,
    TAG_SLOT,
    Feature,
    Instance,
    PluginContext,
    Provider,
)
from ...cloud import (
    CallPolicy,
    CloudCaller,
    Scrubber,
    credential_settings,
    one_str,
    parse_endpoint,
    parse_time,
    per_region,
    setting_bool,
    setting_int,
    setting_num,
    setting_str,
    setting_str_list,
)
from ...cloud.gcp import CLIENT_SECRET, GOOGLE_API, GCPAuth, with_reason
from ...cloud.settings import warn_unknown

TAG_TOKEN = "imm:token"  # noqa: S105 - the launch's client token, not a secret
META_IMAGE = "imm-image"
LABEL_TAGS = (TAG_SERVICE, TAG_ROLLOUT, TAG_SLOT)  # also copied into labels (sanitised)
DEFAULT_SIZE = "e2-small"
MAX_COUNT = 1000  # instance names carry a 3-digit index
ALIVE = {"PROVISIONING", "STAGING", "RUNNING", "REPAIRING"}
STATE_MAP = {
    "PROVISIONING": "pending", "STAGING": "pending", "REPAIRING": "pending",
    "RUNNING": "running", "STOPPING": "stopped", "SUSPENDING": "stopped",
    "SUSPENDED": "stopped", "TERMINATED": "stopped",  # GCE's TERMINATED is a stopped VM
}
EXISTS_CODES = {"alreadyExists", "RESOURCE_ALREADY_EXISTS"}
NOT_READY_CODES = {"resourceNotReady"}

_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_IMAGE_REF = re.compile(
    r"(?:(?:https?://[^/]+)?/?(?:compute/v1/)?projects/(?P<project>[a-z0-9][-a-z0-9.:]*)/)?"
    r"(?:global/images/)?(?P<family>family/)?(?P<name>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)")

_KNOWN_SETTINGS = {
    "kind", "concurrency", "project", "zones", "size", "network", "subnetwork", "external_ip",
    "network_tags", "service_account_email", "scopes", "disk_type", "disk_size_gb",
    "preemptible", "metadata", "auth_type", "service_account_file", "credentials_env",
    "client_id", "token_cache_file", "endpoint", "terminate_untagged", "poll_interval_s",
    "operation_timeout_s", *CallPolicy.KEYS, *credential_settings([CLIENT_SECRET]),
}
# Per-service launch extras honoured from LaunchRequest.settings.
_LAUNCH_SETTINGS = {"size", "network", "subnetwork", "external_ip", "network_tags",
                    "service_account_email", "scopes", "disk_type", "disk_size_gb",
                    "preemptible", "metadata", "user_data", "description"}


# --------------------------------------------------------------------------- tags and names


def label_value(value: str) -> str:
    """A GCE label value: lowercase ``[a-z0-9_-]``, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def label_key(key: str) -> str:
    """``imm:service`` -> ``imm-service``; keys must start with a lowercase letter."""
    out = label_value(key)
    if not out or not out[0].isalpha():
        out = ("t-" + out)[:63]
    return out


def meta_key(tag: str) -> str:
    """``imm:digest`` -> ``imm-digest`` (metadata keys are ``[a-zA-Z0-9_-]{1,128}``)."""
    rest = tag[len("imm:"):]
    return ("imm-" + re.sub(r"[^a-zA-Z0-9_-]", "-", rest))[:128]


def labels_for(tags: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tags.items():
        if key.startswith("imm:") and key not in LABEL_TAGS:
            continue  # the digest does not fit; the token means nothing to people
        out[label_key(key)] = label_value(value)
    return dict(list(out.items())[:64])


def metadata_for(tags: Mapping[str, str], image_id: str) -> dict[str, str]:
    items = {meta_key(k): str(v) for k, v in tags.items() if k.startswith("imm:")}
    items[META_IMAGE] = image_id
    return items


def tags_from(metadata: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, str]:
    """Instance tags: ``imm-*`` metadata first, labels as the fallback."""
    tags: dict[str, str] = {}
    for key, value in metadata.items():
        if key.startswith("imm-") and key != META_IMAGE:
            tags["imm:" + key[len("imm-"):]] = "" if value is None else str(value)
    for key, value in labels.items():
        if key.startswith("imm-"):
            tag = "imm:" + key[len("imm-"):]
            if tag in LABEL_TAGS and tag not in tags:
                tags[tag] = str(value)
        else:
            tags.setdefault(key, "" if value is None else str(value))
    return tags


def instance_names(service: str, client_token: str, count: int) -> list[str]:
    """Deterministic instance names for one launch: the same token gives the same names."""
    digest = hashlib.sha256(client_token.encode()).hexdigest()[:12]
    svc = re.sub(r"[^a-z0-9-]+", "-", service.lower()).strip("-")[:20].strip("-")
    base = f"imm-{svc}-{digest}" if svc else f"imm-{digest}"
    return [f"{base}-{i:03d}" for i in range(count)]


def parse_image(ref: str) -> tuple[str | None, bool, str] | None:
    """``(project or None, is_family, name)`` of an image reference, None when malformed."""
    m = _IMAGE_REF.fullmatch(ref.strip())
    if not m:
        return None
    return m.group("project"), bool(m.group("family")), m.group("name")


# --------------------------------------------------------------------------- the provider


class GCPCore(Provider):
    """The GCP provider's settings, drivers and listing"""

    kind = "gcp"
    features = frozenset({Feature.CLIENT_TOKEN, Feature.COPY_IMAGE})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"gcp provider {name}"
        warn_unknown(s, _KNOWN_SETTINGS, where, context.log)
        zones = setting_str_list(s, "zones", where)
        if not zones:
            raise ConfigError(f"{where}: set zones, e.g. zones = [\"us-central1-a\"] (a GCE zone "
                              f"is what imm calls a region)")
        bad = [z for z in zones if not _ZONE.fullmatch(z)]
        if bad:
            raise ConfigError(f"{where}: {', '.join(bad)} do not look like GCE zones "
                              f"(e.g. us-central1-a)")
        if len(set(zones)) != len(zones):
            raise ConfigError(f"{where}: zones lists a zone twice")
        self.zones = zones
        self.policy = CallPolicy.from_settings(s, where)
        self.size = setting_str(s, "size", where, DEFAULT_SIZE) or DEFAULT_SIZE
        self.networks = {z: one_str(v, "network", where, per="zone")
                         for z, v in per_region(s, "network", where, zones).items()}
        self.subnetworks = {z: one_str(v, "subnetwork", where, per="zone")
                            for z, v in per_region(s, "subnetwork", where, zones).items()}
        self.external_ip = setting_bool(s, "external_ip", where, False)
        self.network_tags = setting_str_list(s, "network_tags", where)
        self.sa_email = setting_str(s, "service_account_email", where)
        self.scopes = setting_str_list(s, "scopes", where)
        self.disk_type = setting_str(s, "disk_type", where)
        self.disk_size = setting_int(s, "disk_size_gb", where, 0, 0, 65536) or None
        self.preemptible = setting_bool(s, "preemptible", where, False)
        self.metadata = self._user_metadata(s.get("metadata"), "metadata")
        self.terminate_untagged = setting_bool(s, "terminate_untagged", where, False)
        self.poll_interval = setting_num(s, "poll_interval_s", where, 2.0, 0, 60)
        self.operation_timeout = setting_num(s, "operation_timeout_s", where, 600.0, 1, 86400)
        self.endpoint = None
        if s.get("endpoint") is not None:
            url = setting_str(s, "endpoint", where) or ""
            self.endpoint = parse_endpoint(url, where)
        self.scrub = Scrubber()
        self.auth = GCPAuth(s, where, Path(context.state_dir) / "gcp" / f"{name}.token.json",
                            self.scrub, context.log, sa_email=self.sa_email)
        self.auth_type = self.auth.auth_type
        self.token_cache = self.auth.token_cache
        self.caller = CloudCaller(
            cloud="GCP", name=name, policy=self.policy, scrub=self.scrub, log=context.log,
            credentials_hint=self.auth.hint, endpoint=self._endpoint_text)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    # -- settings helpers

    def _user_metadata(self, value: Any, what: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where}: {what} must be a table of key = \"value\"")
        out = {}
        for k, v in value.items():
            if not re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", str(k)):
                raise ConfigError(f"{self.where}: {what} key {k!r} is not a valid GCE metadata "
                                  f"key ([a-zA-Z0-9_-], at most 128)")
            if str(k).startswith("imm-"):
                raise ConfigError(f"{self.where}: {what} key {k!r}: imm-* keys are imm's own")
            out[str(k)] = str(v)
        return out

    def _endpoint_text(self, region: str) -> str:
        if self.endpoint:
            host, port, secure = self.endpoint
            return f"{'https' if secure else 'http'}://{host}:{port}"
        return f"{GOOGLE_API} (the Compute Engine API)"

    def _check_zone(self, zone: str) -> None:
        if zone not in self.zones:
            raise BadRequest(f"{self.where}: zone {zone!r} is not configured (zones: "
                             f"{', '.join(self.zones)})")

    # -- credentials and drivers

    @property
    def project(self) -> str:
        return self.auth.project

    def _make_driver(self, zone: str) -> Any:
        return self.caller.call(zone, "authenticate (OAuth2 token)", self.auth.compute_driver,
                                self.endpoint, self.policy.timeout_s, self.poll_interval)

    def _note_token(self, driver: Any) -> None:
        self.auth.note_token(driver)

    @contextlib.contextmanager
    def _driver(self, zone: str) -> Iterator[Any]:
        """A driver no other thread uses; dropped (not pooled) when a call through it failed,
        so half-done paging state never leaks into the next call."""
        with self._lock:
            driver = self._idle.pop() if self._idle else None
        if driver is None:
            driver = self._make_driver(zone)
        yield driver
        self._note_token(driver)
        with self._lock:
            if not self._closed and len(self._idle) < 16:
                self._idle.append(driver)

    def _call(self, driver: Any, zone: str, call: str, fn: Callable[[], Any], *,
              idempotent: bool = True) -> Any:
        """``fn()`` through the CloudCaller; Google errors carry their reason code in front
        of the message ("alreadyExists: The resource ... already exists")."""
        from libcloud.common.google import GoogleBaseError

        def attempt() -> Any:
            driver.connection.gce_params = None  # stale paging state of a failed attempt
            try:
                return fn()
            except GoogleBaseError as exc:
                raise with_reason(exc) from None

        return self.caller.call(zone, call, attempt, idempotent=idempotent)

    # -- listing

    def _canonical(self, ref: str | None) -> str | None:
        parsed = parse_image(ref) if ref else None
        if parsed is None:
            return ref or None
        project, family, name = parsed
        project = project or self.project
        short = f"family/{name}" if family else name
        return short if project == self.project else f"projects/{project}/global/images/{short}"

    def _image_of(self, node: Any, metadata: Mapping[str, str]) -> tuple[str, str]:
        """(image id, where it came from) for a libcloud GCE node."""
        extra = node.extra or {}
        boot = extra.get("boot_disk")
        source = getattr(boot, "extra", {}).get("sourceImage") if boot is not None else None
        source = source or extra.get("image") or node.image
        asked = metadata.get(META_IMAGE)
        if source:
            canonical = self._canonical(str(source)) or str(source)
            if asked and self._canonical(asked) == canonical:
                return asked, "disk"
            return canonical, "disk"
        return (asked or ""), ("metadata" if asked else "unknown")

    def _to_instance(self, zone: str, node: Any) -> Instance:
        extra = node.extra or {}
        metadata = {str(i.get("key")): "" if i.get("value") is None else str(i.get("value"))
                    for i in (extra.get("metadata") or {}).get("items", []) or []}
        labels = {str(k): str(v) for k, v in (extra.get("labels") or {}).items()}
        image_id, image_source = self._image_of(node, metadata)
        status = str(extra.get("status") or "")
        private = next((ip for ip in node.private_ips or [] if ip), None)
        public = next((ip for ip in node.public_ips or [] if ip), None)
        machine = str(extra.get("machineType") or "").rstrip("/").split("/")[-1] or None
        return Instance(
            id=node.name, provider=self.name, region=zone, image_id=image_id,
            state=STATE_MAP.get(status, "unknown"),
            launched_at=parse_time(extra.get("creationTimestamp")) or 0,
            tags=tags_from(metadata, labels), address=private or public,
            extra={k: v for k, v in {
                "zone": zone, "gce_id": str(node.id), "gce_status": status or None,
                "machine_type": machine, "private_ip": private, "public_ip": public,
                "self_link": extra.get("selfLink"), "image_source": image_source,
                "network_tags": list(extra.get("tags") or []) or None,
            }.items() if v is not None},
        )

    def _nodes(self, driver: Any, zones: Sequence[str]) -> list[tuple[str, Any]]:
        """(zone, libcloud node) of every instance in ``zones``."""
        scope = zones[0] if len(zones) == 1 else "all"
        where = zones[0] if len(zones) == 1 else ", ".join(zones)
        nodes = self._call(driver, where, "instances.list" if len(zones) == 1 else
                           "instances.aggregatedList", lambda: driver.list_nodes(ex_zone=scope))
        out = []
        for node in nodes:
            zone = getattr((node.extra or {}).get("zone"), "name", None)
            if isinstance(zone, str) and zone in zones:
                out.append((zone, node))
        return out

    def _list(self, zones: Sequence[str], tags: Mapping[str, str] | None = None
              ) -> list[Instance]:
        with self._driver(zones[0]) as driver:
            nodes = self._nodes(driver, zones)
        found = [self._to_instance(z, n) for z, n in nodes]
        want = {str(k): str(v) for k, v in (tags or {}).items()}
        return [i for i in found if all(i.tags.get(k) == v for k, v in want.items())]

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        # Not a generator: the work happens in the caller's thread (immd calls this off the
        # event loop and iterates the result on it).
        return iter(self._list(self.zones, tags))
