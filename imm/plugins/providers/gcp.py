"""The ``gcp`` provider: Compute Engine instances and images through libcloud's GCE driver.

A GCE *zone* is what imm calls a region: targets, artifacts and instances name zones
(``us-central1-a``). Images are global to a project, so one image id serves every zone.

Settings (``[providers.NAME]`` in the config)::

    kind = "gcp"
    project = "my-project"                 # default: project_id of the service account key
    zones = ["us-central1-a", "europe-west1-b"]
    size = "e2-small"                      # machine type when the service names none
    network = "default"                    # VPC network; or a table per zone
    subnetwork = "web-subnet"              # optional; or a table per zone (custom-mode VPCs)
    external_ip = false                    # give instances an ephemeral public address
    network_tags = ["web"]                 # GCE network tags (firewall rules)
    service_account_email = "web@my-project.iam.gserviceaccount.com"  # instance identity
    scopes = ["cloud-platform"]            # its OAuth scopes (libcloud/gcloud aliases allowed)
    disk_type = "pd-balanced"              # boot disk type (default pd-standard)
    disk_size_gb = 20                      # boot disk size (default: the image's)
    preemptible = false
    metadata = { "enable-oslogin" = "TRUE" }   # extra instance metadata (not imm-* keys)

    # credentials: never in this file
    auth_type = "SA"                       # SA (service account key), GCE (metadata server), IA
    service_account_file = "/etc/imm/gcp/key.json"   # SA: the JSON key (mode 0600) ...
    credentials_env = "GOOGLE_APPLICATION_CREDENTIALS"  # ... or the env var naming its path
    token_cache_file = "/var/lib/imm/gcp/NAME.token.json"  # libcloud's OAuth2 token cache
    # IA (installed application) needs client_id and client_secret_env / client_secret_file,
    # and a token cache holding a refresh token: immd never starts an interactive login.

    endpoint = "https://www.googleapis.com"  # the API host (a Private Service Connect name)
    terminate_untagged = false             # refuse to delete instances imm did not launch
    poll_interval_s = 2                    # between polls of zone operations
    operation_timeout_s = 600              # how long an insert/delete operation may take
    timeout_s = 30                         # per HTTP request
    retries = 5                            # throttling, 5xx, timeouts, connection errors
    backoff_base_s = 0.5
    backoff_max_s = 10

Tags. GCE labels cannot hold imm's values (at most 63 characters of ``[a-z0-9_-]``; an image
digest is 71), so every ``imm:<x>`` tag goes into instance **metadata** as ``imm-<x>`` with its
full value, and ``imm:service`` / ``imm:rollout`` / ``imm:slot`` also into **labels**
(``imm-service`` ...), sanitised (lowercased, other characters turned into ``-``, cut to 63), for
filtering in the console and billing. Other tags become labels only. When listing, metadata is
read first and labels are the fallback; other labels are returned as tags unchanged. The
launch's client token is kept as ``imm-token`` and the image id it was asked for as ``imm-image``.

Image ids: an image of the project is named by its name (``web-v2``); an image of another
project by ``projects/P/global/images/NAME``; a full selfLink URL is accepted everywhere and
means the same image. ``list_instances`` reports the image the boot disk was really created from
(``sourceImage``), in the same spelling as the ``imm-image`` metadata when both name the same
image, and in the short form above otherwise. ``describe_image`` also resolves
``[projects/P/global/images/]family/F``; a launch wants a concrete image, not a family.

What it does:

- ``list_instances`` is libcloud's ``list_nodes`` (one zone's ``instances.list``, or the
  aggregated list when several zones are configured, paged by libcloud with ``pageToken``),
  filtered by tags on our side (metadata is the truth; labels are sanitised copies).
- ``launch``: GCE has no client token, so instance names derive from it:
  ``imm-<service>-<sha256(token)[:12]>-000``... An attempt first lists the zone and keeps the
  instances that already carry those names (and the same ``imm-token``), then inserts the
  missing ones (``instances.insert``; 409 ``alreadyExists`` means an earlier attempt made it),
  polls their zone operations to DONE and returns them. A retried launch therefore never doubles
  up, whether the retry comes from imm's backoff or from the rollout engine.
- ``terminate`` finds the instances by name in the configured zones, refuses instances without
  ``imm:service`` unless ``terminate_untagged = true``, issues every ``instances.delete`` and polls
  the operations to DONE (404 = already gone; an instance already being deleted is waited for).
- ``describe_image`` is ``ex_get_image`` on the image's selfLink (404 = None).
- ``copy_image``: GCE images are global to the project, so the "copy" for another zone is the
  same image id (checked to exist).

Calls run through :class:`~imm.plugins.cloud.CloudCaller` (retries and error messages
naming cloud, provider, zone and API method, credentials scrubbed). Drivers are pooled: each call
takes one that no other thread is using.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BadRequest, ConfigError, NotFound, ProviderError
from ..base import (
    TAG_ROLLOUT,
    TAG_SERVICE,
    TAG_SLOT,
    Feature,
    ImageInfo,
    Instance,
    LaunchRequest,
    PluginContext,
    Provider,
)
from ..cloud import (
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
from ..cloud.gcp import CLIENT_SECRET, GOOGLE_API, GCPAuth, with_reason
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..registry import ProviderRegistry

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


class GCPProvider(Provider):
    kind = "gcp"
    features = frozenset({Feature.CLIENT_TOKEN, Feature.COPY_IMAGE})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"gcp provider {name}"
        unknown = sorted(set(s) - _KNOWN_SETTINGS)
        if unknown:
            context.log.warning("%s: ignoring unknown settings %s", where, ", ".join(unknown))
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

    # -- operations

    def _wait(self, driver: Any, zone: str, ops: Mapping[str, dict[str, Any]], what: str,
              ok_codes: frozenset[str] = frozenset()) -> None:
        """Poll zone operations (name -> operation) until every one is DONE."""
        from libcloud.common.google import GoogleBaseError, ResourceNotFoundError

        pending = dict(ops)
        deadline = time.monotonic() + self.operation_timeout
        while pending:
            for name, op in list(pending.items()):
                def poll(op: dict[str, Any] = op) -> str:
                    try:
                        return str(driver.connection.request(op["selfLink"]).object["status"])
                    except ResourceNotFoundError:
                        if "notFound" in ok_codes:
                            return "DONE"
                        raise
                    except GoogleBaseError as exc:
                        if getattr(exc, "code", None) in ok_codes:
                            return "DONE"
                        raise

                status = self._call(driver, zone, f"{what} {name} (operation "
                                                  f"{op.get('name', '?')})", poll)
                if status == "DONE":
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{self.where}, region {zone}: {what} of {', '.join(sorted(pending))} not "
                    f"done after operation_timeout_s={self.operation_timeout:g}s; it may still "
                    f"finish (a retried launch or terminate picks it up), or raise "
                    f"operation_timeout_s", detail={"cloud": "GCP", "provider": self.name,
                                                    "region": zone, "call": what})
            time.sleep(self.poll_interval)

    # -- launch

    def _launch_settings(self, request: LaunchRequest) -> dict[str, Any]:
        extra = dict(request.settings or {})
        unknown = sorted(set(extra) - _LAUNCH_SETTINGS)
        if unknown:
            self.context.log.warning("%s: launch ignores settings %s", self.where,
                                     ", ".join(unknown))
        return extra

    def launch(self, request: LaunchRequest) -> list[Instance]:
        zone = request.region
        self._check_zone(zone)
        if not isinstance(request.count, int) or not 1 <= request.count <= MAX_COUNT:
            raise BadRequest(f"{self.where}: launch count {request.count!r} must be "
                             f"1..{MAX_COUNT}")
        if not request.client_token:
            raise BadRequest(f"{self.where}: launch needs a client token")
        parsed = parse_image(request.image_id)
        if parsed is None:
            raise BadRequest(f"{self.where}: image id {request.image_id!r} is not a GCE image "
                             f"(NAME, projects/P/global/images/NAME or its URL)")
        if parsed[1]:
            raise BadRequest(f"{self.where}: image id {request.image_id!r} names an image "
                             f"family; an artifact must name one concrete image")
        extra = self._launch_settings(request)
        user_meta = {**self.metadata, **self._user_metadata(extra.get("metadata"),
                                                            "launch metadata")}
        if extra.get("user_data"):
            user_meta["user-data"] = str(extra["user_data"])  # cloud-init's GCE datasource
        tags = {str(k): str(v) for k, v in request.tags.items()}
        tags[TAG_TOKEN] = request.client_token
        names = instance_names(tags.get(TAG_SERVICE, ""), request.client_token, request.count)
        metadata = {**user_meta, **metadata_for(tags, request.image_id)}
        labels = labels_for(tags)

        with self._driver(zone) as driver:
            existing = self._existing(driver, zone, names, request.client_token)
            missing = [n for n in names if n not in existing]
            if missing:
                self._insert(driver, zone, missing, request, extra, metadata, labels)
                existing = self._existing(driver, zone, names, request.client_token)
            else:
                self.context.log.info("%s, region %s: launch %s already ran: %s", self.where,
                                      zone, request.client_token, ", ".join(names))
        absent = [n for n in names if n not in existing]
        if absent:
            raise ProviderError(f"{self.where}, region {zone}: instances.insert of "
                                f"{', '.join(absent)} finished but they are not listed; they "
                                f"may have been deleted meanwhile; retry the launch",
                                detail={"cloud": "GCP", "provider": self.name, "region": zone,
                                        "call": "instances.insert"})
        return [existing[n] for n in names]

    def _existing(self, driver: Any, zone: str, names: Sequence[str],
                  token: str) -> dict[str, Instance]:
        wanted = set(names)
        found: dict[str, Instance] = {}
        for z, node in self._nodes(driver, [zone]):
            if node.name not in wanted:
                continue
            inst = self._to_instance(z, node)
            status = inst.extra.get("gce_status")
            if inst.tags.get(TAG_TOKEN) != token:
                raise ProviderError(
                    f"{self.where}, region {zone}: instance name {node.name} (derived from "
                    f"client token {token}) is taken by an instance launched with another "
                    f"token ({inst.tags.get(TAG_TOKEN) or 'none'}); delete it or use a new "
                    f"rollout", code="conflict")
            if status not in ALIVE:
                raise ProviderError(
                    f"{self.where}, region {zone}: instance {node.name} of launch {token} is "
                    f"{status} (being deleted or stopped); a launch with the same token cannot "
                    f"reuse it: wait until it is gone or start a new rollout", code="conflict")
            found[node.name] = inst
        return found

    def _insert(self, driver: Any, zone: str, names: Sequence[str], request: LaunchRequest,
                extra: Mapping[str, Any], metadata: Mapping[str, str],
                labels: Mapping[str, str]) -> None:
        from libcloud.common.google import ResourceExistsError

        project, _, image_name = parse_image(request.image_id) or (None, False, "")
        link = f"{GOOGLE_API}/compute/v1/projects/{project or self.project}/global/images/" \
               f"{image_name}"
        image = self._get_image(driver, zone, link)
        if image is None:
            raise NotFound(f"{self.where}, region {zone}: image {request.image_id} does not "
                           f"exist (images.get answered 404); register an artifact that "
                           f"names an existing image")
        status = (image.extra or {}).get("status")
        if status and status != "READY":
            raise ProviderError(f"{self.where}, region {zone}: image {request.image_id} is "
                                f"{status}, not READY", code="conflict")
        size_name = request.size or extra.get("size") or self.size
        network_name = request.network or extra.get("network") or self.networks.get(zone) \
            or "default"
        subnet_name = extra.get("subnetwork") or self.subnetworks.get(zone)
        disk_type_name = extra.get("disk_type") or self.disk_type or "pd-standard"
        location = self._call(driver, zone, "zones.get", lambda: driver.ex_get_zone(zone))
        if location is None:
            raise BadRequest(f"{self.where}: zone {zone} does not exist in project "
                             f"{self.project}")
        size = self._call(driver, zone, f"machineTypes.get {size_name}",
                          lambda: driver.ex_get_size(size_name, location))
        network = self._call(driver, zone, f"networks.get {network_name}",
                             lambda: driver.ex_get_network(network_name))
        subnet = None
        if subnet_name:
            subnet = self._call(driver, zone, f"subnetworks.get {subnet_name}",
                                lambda: driver.ex_get_subnetwork(subnet_name,
                                                                 region=zone.rsplit("-", 1)[0]))
        disk_type = self._call(driver, zone, f"diskTypes.get {disk_type_name}",
                               lambda: driver.ex_get_disktype(disk_type_name, zone=location))
        email = extra.get("service_account_email") or self.sa_email
        scopes = extra.get("scopes") or self.scopes
        accounts = None
        if email or scopes:
            accounts = [{k: v for k, v in {"email": email, "scopes": scopes}.items() if v}]
        network_tags = extra.get("network_tags") or self.network_tags or None
        disk_size = extra.get("disk_size_gb") or self.disk_size
        external = extra.get("external_ip", self.external_ip)
        preemptible = bool(extra.get("preemptible", self.preemptible)) or None
        description = str(extra.get("description") or
                          f"launched by imm ({request.tags.get(TAG_ROLLOUT, '')})")[:2048]

        ops: dict[str, dict[str, Any]] = {}
        for name in names:
            req, body = driver._create_node_req(
                name, size, image, location, network, tags=network_tags,
                metadata=[{"key": k, "value": v} for k, v in metadata.items()],
                external_ip="ephemeral" if external else None, ex_disk_type=disk_type,
                ex_service_accounts=accounts, description=description,
                ex_preemptible=preemptible, ex_subnetwork=subnet, ex_labels=dict(labels),
                ex_disk_size=int(disk_size) if disk_size else None)

            def insert(req: str = req, body: dict[str, Any] = body) -> dict[str, Any] | None:
                try:
                    return dict(driver.connection.request(req, method="POST", data=body).object)
                except ResourceExistsError:
                    return None  # an earlier attempt inserted it (409 alreadyExists)

            # A repeated insert answers 409 and is treated as done, so retrying is safe.
            op = self._call(driver, zone, f"instances.insert {name}", insert)
            if op is not None:
                ops[name] = op
        self.context.log.info("%s, region %s: inserting %s from %s (token %s)", self.where,
                              zone, ", ".join(names), request.image_id, request.client_token)
        self._wait(driver, zone, ops, "instances.insert", frozenset(EXISTS_CODES))

    # -- terminate

    def terminate(self, instance_ids: Sequence[str]) -> None:
        names = list(dict.fromkeys(str(i) for i in instance_ids))
        if not names:
            return
        located: dict[str, list[Instance]] = {}
        for inst in self._list(self.zones):
            if inst.id in names:
                located.setdefault(inst.id, []).append(inst)
        gone = [n for n in names if n not in located]
        if gone:
            self.context.log.info("%s: %s already gone", self.where, ", ".join(gone))
        twice = sorted(n for n, found in located.items() if len(found) > 1)
        if twice:
            raise BadRequest(f"{self.where}: instance name(s) {', '.join(twice)} exist in "
                             f"several zones; delete them by hand")
        if not self.terminate_untagged:
            foreign = sorted(n for n, found in located.items()
                             if TAG_SERVICE not in found[0].tags)
            if foreign:
                raise BadRequest(
                    f"{self.where}: refusing to terminate {', '.join(foreign)}: no "
                    f"{TAG_SERVICE} tag (metadata imm-service), so imm did not launch them (set "
                    f"terminate_untagged = true on the provider to allow it)")
        by_zone: dict[str, list[str]] = {}
        for name, found in located.items():
            by_zone.setdefault(found[0].region, []).append(name)
        for zone, zone_names in by_zone.items():
            with self._driver(zone) as driver:
                self._delete(driver, zone, zone_names)

    def _delete(self, driver: Any, zone: str, names: Sequence[str]) -> None:
        from libcloud.common.google import GoogleBaseError, ResourceNotFoundError

        ops: dict[str, dict[str, Any]] = {}
        busy: list[str] = []
        for name in names:
            def delete(name: str = name) -> dict[str, Any] | None:
                try:
                    return dict(driver.connection.request(
                        f"/zones/{zone}/instances/{name}", method="DELETE").object)
                except ResourceNotFoundError:
                    return None  # already gone
                except GoogleBaseError as exc:
                    if getattr(exc, "code", None) in NOT_READY_CODES:
                        busy.append(name)  # being deleted already (or otherwise busy)
                        return None
                    raise

            op = self._call(driver, zone, f"instances.delete {name}", delete)
            if op is not None:
                ops[name] = op
        self.context.log.info("%s, region %s: deleting %s", self.where, zone, ", ".join(names))
        self._wait(driver, zone, ops, "instances.delete", frozenset({"notFound"}))
        if busy:
            self._wait_gone(driver, zone, busy)

    def _wait_gone(self, driver: Any, zone: str, names: Sequence[str]) -> None:
        """Instances another delete is already removing: wait until they are not listed."""
        deadline = time.monotonic() + self.operation_timeout
        while True:
            left = {n.name for _, n in self._nodes(driver, [zone])} & set(names)
            if not left:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{self.where}, region {zone}: {', '.join(sorted(left))} still exist "
                    f"{self.operation_timeout:g}s after instances.delete answered "
                    f"resourceNotReady", detail={"cloud": "GCP", "provider": self.name,
                                                 "region": zone, "call": "instances.delete"})
            time.sleep(max(self.poll_interval, 0.05))

    # -- images

    def _get_image(self, driver: Any, zone: str, link: str) -> Any | None:
        from libcloud.common.google import ResourceNotFoundError

        def get() -> Any | None:
            try:
                return driver.ex_get_image(link)
            except ResourceNotFoundError:
                return None

        call = "images.getFromFamily" if "/family/" in link else "images.get"
        return self._call(driver, zone, call, get)

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        self._check_zone(region)
        parsed = parse_image(image_id)
        if parsed is None:
            raise BadRequest(f"{self.where}: image id {image_id!r} is not a GCE image (NAME, "
                             f"projects/P/global/images/NAME, family/F or a selfLink URL)")
        project, family, name = parsed
        project = project or self.project
        link = f"{GOOGLE_API}/compute/v1/projects/{project}/global/images/" \
               f"{'family/' if family else ''}{name}"
        with self._driver(region) as driver:
            image = self._get_image(driver, region, link)
        if image is None:
            return None
        extra = image.extra or {}
        deprecated = extra.get("deprecated") or {}
        return ImageInfo(
            region=region, image_id=image_id, name=image.name, state=extra.get("status"),
            extra={k: v for k, v in {
                "project": project, "self_link": extra.get("selfLink"),
                "family": extra.get("family"), "labels": extra.get("labels") or {},
                "description": extra.get("description"),
                "disk_size_gb": extra.get("diskSizeGb"),
                "created": extra.get("creationTimestamp"), "gce_id": str(image.id),
                "deprecated": deprecated.get("state") if isinstance(deprecated, dict) else None,
            }.items() if v is not None},
        )

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        """GCE images are global to the project: the id already works in ``dst_region``."""
        self._check_zone(dst_region)
        if self.describe_image(src_region, image_id) is None:
            raise NotFound(f"{self.where}: no image {image_id} to copy from {src_region}")
        return image_id

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._idle.clear()


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(GCPProvider)
