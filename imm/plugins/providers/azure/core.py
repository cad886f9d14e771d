"""The Azure provider's settings, ARM requests, ids and listing (see the package docstring)."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ....errors import BadRequest, ConfigError, ProviderError
from ...base import TAG_SERVICE, Feature, Instance, LaunchRequest, PluginContext, Provider
from ...cloud import (
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
    parse_time,
    per_region,
    required,
    setting_bool,
    setting_num,
    setting_str,
    setting_str_list,
)
from ...cloud.settings import warn_unknown

TAG_TOKEN = "imm:token"  # noqa: S105 - the launch's client token, not a secret
DEFAULT_SIZE = "Standard_B1s"
DEFAULT_DRIVER = "azure_arm"
MAX_TAG_VALUE = 256  # ARM: tag values up to 256 characters
MAX_TAGS = 50  # ARM: tags per resource
MAX_PAGES = 10_000

# ARM API versions of the calls made here directly (libcloud's own calls use its versions).
VM_API = "2021-11-01"
NIC_API = "2018-06-01"
IP_API = "2019-06-01"
IMAGE_API = "2021-11-01"
GALLERY_API = "2022-03-03"

CREDENTIALS = (
    CredentialSpec("client_id", "service principal client (application) id", "AZURE_CLIENT_ID"),
    CredentialSpec("client_secret", "service principal client secret", "AZURE_CLIENT_SECRET"),
)
ENVIRONMENT_KEYS = ("resourceManagerEndpointUrl", "activeDirectoryEndpointUrl",
                    "activeDirectoryResourceId", "storageEndpointSuffix")

_KNOWN_SETTINGS = {
    "subscription_id", "tenant_id", "resource_group", "locations", "size", "network", "subnet",
    "network_resource_group", "public_ip", "admin_username", "ssh_public_key",
    "ssh_public_key_file", "os_disk_type", "os_disk_size_gb", "name_prefix", "list_scope",
    "power_state", "terminate_untagged", "delete_poll_s", "delete_timeout_s",
    "cloud_environment", "libcloud_driver", "concurrency",
    *CallPolicy.KEYS, *credential_settings(CREDENTIALS),
}
# Per-service launch extras honoured from LaunchRequest.settings ([services.X] launch = {...}).
_LAUNCH_SETTINGS = {"size", "subnet", "network", "public_ip", "admin_username", "ssh_public_key",
                    "os_disk_type", "os_disk_size_gb", "name_prefix"}

_LOCATION = re.compile(r"^[a-z0-9]{2,40}$")
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]$")
_ARM_CODE = re.compile(r"^\[([A-Za-z][A-Za-z0-9_.]*)\]\s*")
_NAME_PART = re.compile(r"[^a-z0-9-]+")
_URN = re.compile(r"^([^:/\s]+):([^:/\s]+):([^:/\s]+):([^:/\s]+)$")
_GALLERY_VERSION = re.compile(r"/galleries/[^/]+/images/[^/]+/versions/[^/]+$", re.I)
_GALLERY_IMAGE = re.compile(r"/galleries/[^/]+/images/[^/]+$", re.I)
_MANAGED_IMAGE = re.compile(r"/providers/Microsoft\.Compute/images/[^/]+$", re.I)

_STATE_BY_PROVISIONING = {
    "creating": "pending", "updating": "running", "succeeded": "running", "running": "running",
    "migrating": "running", "deleting": "terminated", "failed": "unknown", "canceled": "unknown",
}
_STATE_BY_POWER = {
    "running": "running", "starting": "pending", "stopping": "stopped", "stopped": "stopped",
    "deallocating": "stopped", "deallocated": "stopped",
}


def location_name(text: str) -> str:
    """``East US`` / ``eastus`` -> ``eastus`` (ARM answers with either)."""
    return text.lower().replace(" ", "")


def arm_code(failure_message: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9_.]*):\s", failure_message)
    return m.group(1) if m else None


def image_reference_id(ref: Mapping[str, Any] | None) -> str:
    """The imm image id of an ARM ``imageReference``: a resource id without its leading slash,
    or ``publisher:offer:sku:version``."""
    if not ref:
        return ""
    for key in ("id", "sharedGalleryImageId", "communityGalleryImageId"):
        value = ref.get(key)
        if value:
            return str(value).lstrip("/")
    parts = [ref.get(k) for k in ("publisher", "offer", "sku", "version")]
    return ":".join(str(p) for p in parts) if all(parts) else ""


def parse_image_id(image_id: str) -> tuple[str, Any]:
    """``("urn", (publisher, offer, sku, version))`` or ``("id", "/subscriptions/...")``."""
    text = (image_id or "").strip()
    m = _URN.match(text)
    if m:
        return "urn", m.groups()
    if text.lower().startswith(("subscriptions/", "/subscriptions/")):
        return "id", "/" + text.lstrip("/")
    raise BadRequest(
        f"Azure image id {image_id!r} is neither publisher:offer:sku:version nor the resource id "
        f"of a managed or gallery image (subscriptions/<sub>/resourceGroups/<rg>/providers/"
        f"Microsoft.Compute/images/<name>)")


def _same_reference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    return image_reference_id(a).lower() == image_reference_id(b).lower()


def _version_key(name: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.-]", name))


class AzureCore(Provider):
    """The Azure provider's settings, ARM requests, ids and listing"""

    kind = "azure"
    features = frozenset({Feature.CLIENT_TOKEN})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"azure provider {name}"
        warn_unknown(s, _KNOWN_SETTINGS | {"kind"}, where, context.log)
        self.subscription_id = self._arm_name_setting(s, "subscription_id")
        self.tenant_id = self._arm_name_setting(s, "tenant_id")
        self.resource_group = self._arm_name_setting(s, "resource_group")
        if not _RESOURCE_GROUP.match(self.resource_group):
            raise ConfigError(f"{where}: resource_group {self.resource_group!r} is not a valid "
                              f"resource group name (letters, digits, - _ . ( ), up to 90)")
        raw_locations = setting_str_list(s, "locations", where)
        if not raw_locations:
            raise ConfigError(f"{where}: set locations, e.g. locations = [\"eastus\"]")
        self.locations = [location_name(x) for x in raw_locations]
        bad = [x for x in self.locations if not _LOCATION.match(x)]
        if bad:
            raise ConfigError(f"{where}: {', '.join(bad)} is not an Azure location name "
                              f"(lowercase letters and digits, e.g. eastus, westeurope)")
        if len(set(self.locations)) != len(self.locations):
            raise ConfigError(f"{where}: locations lists a location twice")
        self.policy = CallPolicy.from_settings(s, where)
        self.size = setting_str(s, "size", where, DEFAULT_SIZE) or DEFAULT_SIZE
        # per_region checks table keys against the configured (normalized) locations
        tables = {k: self._per_location(s, k) for k in ("network", "subnet")}
        self.networks = {loc: self._arm_name(v, "network") for loc, v in tables["network"].items()}
        self.subnets = {loc: self._arm_name(v, "subnet") for loc, v in tables["subnet"].items()}
        self.network_resource_group = setting_str(s, "network_resource_group", where,
                                                  self.resource_group) or self.resource_group
        self.public_ip = setting_bool(s, "public_ip", where, False)
        self.admin_username = setting_str(s, "admin_username", where, "azureuser") or "azureuser"
        self.ssh_public_key = self._ssh_key(s)
        self.os_disk_type = setting_str(s, "os_disk_type", where, "Standard_LRS") or "Standard_LRS"
        disk = s.get("os_disk_size_gb")
        if disk is not None and (isinstance(disk, bool) or not isinstance(disk, int)
                                 or not 1 <= disk <= 32767):
            raise ConfigError(f"{where}: os_disk_size_gb = {disk!r} must be an integer 1..32767")
        self.os_disk_size_gb: int | None = disk
        self.name_prefix = setting_str(s, "name_prefix", where)
        self.list_scope = setting_str(s, "list_scope", where, "resource_group") or "resource_group"
        if self.list_scope not in ("resource_group", "subscription"):
            raise ConfigError(f"{where}: list_scope = {self.list_scope!r} must be "
                              f"\"resource_group\" or \"subscription\"")
        self.power_state = setting_bool(s, "power_state", where, True)
        self.terminate_untagged = setting_bool(s, "terminate_untagged", where, False)
        self.delete_poll_s = setting_num(s, "delete_poll_s", where, 5.0, 0, 300)
        self.delete_timeout_s = setting_num(s, "delete_timeout_s", where, 600.0, 0, 7200)
        self.driver_name = setting_str(s, "libcloud_driver", where, DEFAULT_DRIVER) \
            or DEFAULT_DRIVER
        self.environment = self._environment(s.get("cloud_environment"))
        check_credential_settings(s, CREDENTIALS, where)
        self.scrub = Scrubber()
        self.caller = CloudCaller(
            cloud="Azure", name=name, policy=self.policy, scrub=self.scrub, log=context.log,
            credentials_hint=self._credentials_hint(), endpoint=lambda _region: self.arm_url)
        self.credentials = CredentialCache(s, CREDENTIALS, where, self.scrub, context.log)
        self.drivers = DriverCache(where, self.locations, self._make_driver, what="location")

    # -- settings ---------------------------------------------------------------------------

    def _arm_name_setting(self, s: Mapping[str, Any], key: str) -> str:
        """A required ARM name (an id segment: no '/', no spaces)."""
        value = required(s, key, self.where)
        if "/" in value or any(c.isspace() for c in value):
            raise ConfigError(f"{self.where}: {key} = {value!r} must not contain '/' or spaces")
        return value

    def _arm_name(self, value: Any, key: str) -> str:
        """One ARM name per location (an id segment: no '/')."""
        name = one_str(value, key, self.where, per="location")
        if "/" in name:
            raise ConfigError(f"{self.where}: {key} = {value!r} must be a name without '/'")
        return name

    def _per_location(self, s: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = s.get(key)
        if isinstance(value, Mapping):
            value = {location_name(str(k)): v for k, v in value.items()}
        return per_region({key: value} if value is not None else {}, key, self.where,
                          self.locations)

    def _ssh_key(self, s: Mapping[str, Any]) -> str | None:
        key = setting_str(s, "ssh_public_key", self.where)
        path = setting_str(s, "ssh_public_key_file", self.where)
        if key and path:
            raise ConfigError(f"{self.where}: set ssh_public_key or ssh_public_key_file, not both")
        if path:
            try:
                key = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{self.where}: cannot read ssh_public_key_file {path}: "
                                  f"{exc.strerror or type(exc).__name__}") from None
        if key and not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ConfigError(f"{self.where}: the SSH public key does not look like one "
                              f"(\"ssh-rsa AAAA...\"); a private key does not belong here")
        return key or None

    def _environment(self, value: Any) -> dict[str, str]:
        from libcloud.common.azure_arm import publicEnvironments

        if value is None or isinstance(value, str):
            env_name = value or "default"
            if env_name not in publicEnvironments:
                raise ConfigError(f"{self.where}: cloud_environment {env_name!r} is not one of "
                                  f"{', '.join(publicEnvironments)} (or a table of endpoints)")
            return {k: str(v) for k, v in publicEnvironments[env_name].items()}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where}: cloud_environment must be a name or a table")
        missing = [k for k in ENVIRONMENT_KEYS if not isinstance(value.get(k), str)
                   or not value.get(k)]
        if missing:
            raise ConfigError(f"{self.where}: cloud_environment lacks {', '.join(missing)}")
        env = {str(k): str(v) for k, v in value.items()}
        for key in ("resourceManagerEndpointUrl", "activeDirectoryEndpointUrl"):
            parts = urllib.parse.urlsplit(env[key])
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{self.where}: cloud_environment {key} {env[key]!r} must be "
                                  f"an https URL")
            if self._stock_connection() and (parts.scheme != "https" or parts.port not in
                                             (None, 443)):
                raise ConfigError(
                    f"{self.where}: cloud_environment {key} {env[key]!r}: libcloud's Azure "
                    f"driver always speaks https on port 443 and ignores any other scheme or "
                    f"port")
        return env

    def _stock_connection(self) -> bool:
        from libcloud.common.azure_arm import AzureResourceManagementConnection

        return getattr(self._driver_class(), "connectionCls", None) is \
            AzureResourceManagementConnection

    def _driver_class(self) -> Any:
        from libcloud.compute.providers import get_driver

        try:
            return get_driver(self.driver_name)
        except AttributeError:
            raise ConfigError(f"{self.where}: libcloud has no compute driver "
                              f"{self.driver_name!r} (libcloud_driver; the default is "
                              f"\"{DEFAULT_DRIVER}\")") from None

    @property
    def arm_url(self) -> str:
        return self.environment["resourceManagerEndpointUrl"]

    def _credentials_hint(self) -> str:
        return f"{credentials_hint(self.settings, CREDENTIALS)} (tenant {self.tenant_id})"

    # -- drivers and calls ------------------------------------------------------------------

    def _load_credentials(self) -> Credentials:
        return self.credentials.get()

    def _location(self, region: str) -> str:
        loc = location_name(region or "")
        if loc not in self.locations:
            raise BadRequest(f"{self.where}: location {region!r} is not configured (locations: "
                             f"{', '.join(self.locations)})")
        return loc

    def _driver(self, location: str) -> tuple[Any, threading.Lock]:
        return self.drivers.get(location)

    def _make_driver(self, location: str) -> Any:
        """A driver for ``location``; building it fetches an Azure AD token (a network call)."""
        from libcloud.common.exceptions import BaseHTTPError

        creds = self._load_credentials()
        cls = self._driver_class()
        try:
            return cls(self.tenant_id, self.subscription_id, creds.get("client_id"),
                       creds.get("client_secret"), region=location,
                       cloud_environment=dict(self.environment), timeout=self.policy.timeout_s)
        except BaseHTTPError as exc:
            exc.message = f"getting an Azure AD token failed: {exc.message}"
            raise

    def _call(self, location: str, call: str, fn: Callable[[Any], Any], *,
              recover: Callable[[], Any] | None = None, idempotent: bool = True,
              label: str | None = None) -> Any:
        """Run ``fn(driver)`` with ``location``'s driver under its lock, with retries."""
        from libcloud.common.exceptions import BaseHTTPError

        def attempt() -> Any:
            driver, lock = self._driver(location)
            with lock:
                try:
                    return fn(driver)
                except BaseHTTPError as exc:
                    # "[Code] message" (libcloud's wording of ARM errors) -> "Code: message"
                    msg = str(exc.message or "")
                    m = _ARM_CODE.match(msg)
                    if m:
                        exc.message = f"{m.group(1)}: {msg[m.end():]}"
                    raise

        return self.caller.call(label or location, call, attempt, recover=recover,
                                idempotent=idempotent)

    def _request(self, location: str, call: str, path: str, api: str, *, method: str = "GET",
                 params: Mapping[str, str] | None = None, data: Any = None,
                 absent_ok: bool = False, label: str | None = None) -> Any:
        """One raw ARM request; the parsed answer, or None for 404 when ``absent_ok``.

        2xx answers libcloud counts as errors (202 Accepted, 204 No Content) return {}.
        """
        from libcloud.common.exceptions import BaseHTTPError

        query = {"api-version": api, **(params or {})}

        def run(driver: Any) -> Any:
            try:
                r = driver.connection.request(path, params=query, data=data, method=method)
            except BaseHTTPError as exc:
                if exc.code in (202, 204):
                    return {}
                raise
            return r.object if isinstance(r.object, dict | list) else {}

        try:
            return self._call(location, call, run, label=label)
        except CloudProviderError as exc:
            if absent_ok and exc.failure.status == 404 and arm_code(exc.failure.message) not in (
                    "SubscriptionNotFound", "InvalidSubscriptionId"):
                return None
            raise

    def _pages(self, location: str, call: str, path: str, api: str,
               label: str | None = None) -> list[dict[str, Any]]:
        """Every item of an ARM list, following ``nextLink``."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            obj = self._request(location, call, path, api, params=params, label=label)
            if isinstance(obj, list):  # a few ARM lists are bare arrays
                return items + [v for v in obj if isinstance(v, dict)]
            items += [v for v in obj.get("value") or [] if isinstance(v, dict)]
            link = obj.get("nextLink")
            if not link:
                return items
            if link in seen:
                raise ProviderError(f"{self.where}: {call} returned the same nextLink twice "
                                    f"({len(items)} items so far); the API is looping")
            seen.add(link)
            parts = urllib.parse.urlsplit(link)
            path = parts.path
            query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
            api = query.pop("api-version", [api])[0]
            params = {k: v[0] for k, v in query.items()}
        raise ProviderError(f"{self.where}: {call} did not end after {MAX_PAGES} pages")

    # -- ids --------------------------------------------------------------------------------

    def _rg_path(self, resource_group: str | None = None) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/" \
               f"{resource_group or self.resource_group}"

    def _vm_path(self, name: str) -> str:
        return f"{self._rg_path()}/providers/Microsoft.Compute/virtualMachines/{name}"

    def _vm_id(self, instance_id: str) -> str:
        text = str(instance_id).strip()
        if text.lower().startswith(("subscriptions/", "/subscriptions/")):
            return "/" + text.lstrip("/")
        if text and "/" not in text:
            return self._vm_path(text)  # a bare VM name: in the configured resource group
        raise BadRequest(f"{self.where}: {instance_id!r} is not an Azure VM resource id")

    def _vm_name(self, request: LaunchRequest, index: int, prefix: str | None) -> str:
        base = prefix or request.tags.get(TAG_SERVICE) or "imm"
        base = _NAME_PART.sub("-", base.lower()).strip("-")[:40].strip("-") or "imm"
        digest = hashlib.sha256(request.client_token.encode()).hexdigest()[:10]
        return f"{base}-{digest}-{index}"

    # -- listing ----------------------------------------------------------------------------

    def _list_label(self) -> str:
        return ",".join(self.locations)

    def _scope_path(self) -> str:
        if self.list_scope == "subscription":
            return f"/subscriptions/{self.subscription_id}"
        return self._rg_path()

    def _list_vms(self) -> list[dict[str, Any]]:
        return self._pages(self.locations[0], "VirtualMachines_List",
                           f"{self._scope_path()}/providers/Microsoft.Compute/virtualMachines",
                           VM_API, label=self._list_label())

    def _addresses(self, vms: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str | None,
                                                                               str | None]]:
        """VM id (lowercase) -> (private IP, public IP) of its primary NIC."""
        loc, label = self.locations[0], self._list_label()
        nic_ids = {}
        for vm in vms:
            nics = ((vm.get("properties") or {}).get("networkProfile") or {}).get(
                "networkInterfaces") or []
            primary = next((n for n in nics if (n.get("properties") or {}).get("primary")),
                           nics[0] if nics else None)
            if primary and primary.get("id"):
                nic_ids[str(vm["id"]).lower()] = str(primary["id"])
        if not nic_ids:
            return {}
        listed = {str(n.get("id", "")).lower(): n for n in self._pages(
            loc, "NetworkInterfaces_List",
            f"{self._scope_path()}/providers/Microsoft.Network/networkInterfaces", NIC_API,
            label=label)}
        for nic_id in nic_ids.values():
            if nic_id.lower() not in listed:  # a NIC outside the listed scope
                got = self._request(loc, "NetworkInterfaces_Get", nic_id, NIC_API,
                                    absent_ok=True, label=label)
                if got:
                    listed[nic_id.lower()] = got
        ips: dict[str, tuple[str | None, str | None]] = {}
        public_refs: dict[str, str] = {}
        for vm_id, nic_id in nic_ids.items():
            nic = listed.get(nic_id.lower())
            configs = ((nic or {}).get("properties") or {}).get("ipConfigurations") or []
            if not configs:
                continue
            first = next((c for c in configs if (c.get("properties") or {}).get("primary")),
                         configs[0])
            props = first.get("properties") or {}
            ips[vm_id] = (props.get("privateIPAddress"), None)
            pub = (props.get("publicIPAddress") or {}).get("id")
            if pub:
                public_refs[vm_id] = str(pub)
        if public_refs:
            pubs = {str(p.get("id", "")).lower(): p for p in self._pages(
                loc, "PublicIPAddresses_List",
                f"{self._scope_path()}/providers/Microsoft.Network/publicIPAddresses", IP_API,
                label=label)}
            for vm_id, pub_id in public_refs.items():
                addr = ((pubs.get(pub_id.lower()) or {}).get("properties") or {}).get("ipAddress")
                ips[vm_id] = (ips[vm_id][0], addr)
        return ips

    def _instance_view(self, vm: Mapping[str, Any]) -> dict[str, Any] | None:
        loc = location_name(str(vm.get("location", "")))
        return self._request(loc if loc in self.locations else self.locations[0],
                             "VirtualMachines_InstanceView", f"{vm['id']}/instanceView", VM_API,
                             absent_ok=True)

    @staticmethod
    def _state(vm: Mapping[str, Any], view: Mapping[str, Any] | None) -> tuple[str, str | None]:
        """(imm state, Azure power state) from the model's provisioningState and the view."""
        provisioning = str((vm.get("properties") or {}).get("provisioningState") or "").lower()
        power = None
        if view:
            for status in view.get("statuses") or []:
                code = str(status.get("code") or "")
                if code.startswith("PowerState/"):
                    power = code.split("/", 1)[1].lower()
                elif code.startswith("ProvisioningState/"):
                    provisioning = code.split("/", 1)[1].lower()
        if provisioning == "deleting":
            return "terminated", power
        if power in _STATE_BY_POWER:
            return _STATE_BY_POWER[power], power
        if provisioning.startswith("failed"):
            return "unknown", power
        return _STATE_BY_PROVISIONING.get(provisioning, "unknown"), power

    def _to_instance(self, vm: Mapping[str, Any], addresses: tuple[str | None, str | None],
                     view: Mapping[str, Any] | None) -> Instance:
        props = vm.get("properties") or {}
        storage = props.get("storageProfile") or {}
        state, power = self._state(vm, view)
        private, public = addresses
        vm_id = str(vm.get("id", ""))
        parts = vm_id.split("/")
        tags = {str(k): "" if v is None else str(v) for k, v in (vm.get("tags") or {}).items()}
        return Instance(
            id=vm_id, provider=self.name, region=location_name(str(vm.get("location", ""))),
            image_id=image_reference_id(storage.get("imageReference")), state=state,
            launched_at=parse_time(props.get("timeCreated")) or 0, tags=tags,
            address=private or public,
            extra={k: v for k, v in {
                "name": vm.get("name"), "resource_group": parts[4] if len(parts) > 4 else None,
                "vm_size": (props.get("hardwareProfile") or {}).get("vmSize"),
                "vm_id": props.get("vmId"), "provisioning_state": props.get("provisioningState"),
                "power_state": power, "private_ip": private, "public_ip": public,
            }.items() if v is not None},
        )

    def _instances(self, vms: Sequence[Mapping[str, Any]]) -> list[Instance]:
        addresses = self._addresses(vms) if vms else {}
        out = []
        for vm in vms:
            view = self._instance_view(vm) if self.power_state else None
            out.append(self._to_instance(vm, addresses.get(str(vm["id"]).lower(), (None, None)),
                                         view))
        return out

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        want = {str(k): str(v) for k, v in (tags or {}).items()}
        selected = []
        for vm in self._list_vms():
            if not vm.get("id") or location_name(str(vm.get("location", ""))) not in \
                    self.locations:
                continue
            vm_tags = vm.get("tags") or {}
            if all(str(vm_tags.get(k)) == v and k in vm_tags for k, v in want.items()):
                selected.append(vm)
        return iter(self._instances(selected))  # all I/O done here, in the caller's thread
