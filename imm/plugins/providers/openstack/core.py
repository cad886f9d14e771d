"""The OpenStack provider's settings, keystone login, drivers and listing (see the package docstring)."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
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
    REDACTED,
    CallPolicy,
    CloudCaller,
    CloudProviderError,
    CredentialCache,
    CredentialSpec,
    DriverCache,
    Failure,
    Scrubber,
    check_credential_settings,
    credential_settings,
    one_str,
    parse_time,
    per_region,
    required,
    setting_bool,
    setting_int,
    setting_num,
    setting_str,
    setting_str_list,
)
from ...cloud.settings import warn_unknown

TAG_TOKEN = "imm:token"  # noqa: S105 - the launch's client token, not a credential
CREDENTIALS = (CredentialSpec("password", "password", "OS_PASSWORD"),)
MAX_META = 255  # nova: metadata keys and values, server names
META_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")  # nova's metadata key pattern
UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                  r"[0-9a-fA-F]{12}$")
MAX_PAGES = 10000
STATE_MAP = {
    "ACTIVE": "running", "BUILD": "pending", "REBUILD": "pending", "REBOOT": "running",
    "HARD_REBOOT": "running", "PASSWORD": "running", "RESIZE": "running",
    "VERIFY_RESIZE": "running", "REVERT_RESIZE": "running", "MIGRATING": "running",
    "SHUTOFF": "stopped", "SUSPENDED": "stopped", "PAUSED": "stopped", "SHELVED": "stopped",
    "SHELVED_OFFLOADED": "stopped", "RESCUE": "stopped", "SOFT_DELETED": "terminated",
    "DELETED": "terminated", "ERROR": "unknown", "UNKNOWN": "unknown",
}
# libcloud's NodeState (as str) -> the nova status it came from, when only a Node is at hand
NODE_STATES = {
    "running": "ACTIVE", "pending": "BUILD", "error": "ERROR", "stopped": "SHUTOFF",
    "suspended": "SUSPENDED", "terminated": "DELETED", "rebooting": "REBOOT",
    "reconfiguring": "RESIZE", "unknown": "UNKNOWN",
}
_URL_KEYS = ("compute_url", "image_url", "network_url")
_KNOWN_SETTINGS = {
    "kind", "auth_url", "username", "project", "domain", "project_domain_id", "regions",
    "flavor", "network", "security_groups", "key_name", "availability_zone", "wait_active_s",
    "poll_interval_s", "page_size", "terminate_untagged", *_URL_KEYS, *CallPolicy.KEYS,
    *credential_settings(CREDENTIALS),
}
# Per-service launch extras honoured from LaunchRequest.settings.
_LAUNCH_SETTINGS = {"flavor", "size", "network", "security_groups", "key_name",
                    "availability_zone", "user_data"}
_IMAGE_KEYS = {  # glance's own image fields; anything else is a custom property
    "id", "name", "status", "visibility", "protected", "checksum", "os_hash_algo",
    "os_hash_value", "owner", "size", "virtual_size", "min_ram", "min_disk", "disk_format",
    "container_format", "created_at", "updated_at", "tags", "self", "file", "schema",
    "locations", "direct_url", "os_hidden", "stores",
}


# Keystone tokens: Fernet (gAAAAA...) and the older PKI/PKIZ ones; both are bearer secrets.
_KEYSTONE_TOKEN = re.compile(r"\b(?:gAAAAA[A-Za-z0-9_=-]{20,}|PKIZ_[A-Za-z0-9_=-]{20,}|"
                             r"MII[A-Za-z0-9+/=-]{40,})")


class TokenScrubber(Scrubber):
    """Also removes keystone tokens: the ones the drivers hold now, and anything shaped like
    one (a server that echoes its request headers would otherwise put X-Auth-Token in an
    error message)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, set[str]] = {}  # region -> the tokens its driver holds

    def __call__(self, text: Any) -> str:
        out = super().__call__(text)
        for tokens in list(self.tokens.values()):
            for token in tokens:
                out = out.replace(token, REDACTED)
        return _KEYSTONE_TOKEN.sub(REDACTED, out)


def effective_token(client_token: str) -> str:
    """A metadata value holds 255 characters; longer or unprintable tokens are hashed."""
    if client_token and len(client_token) <= MAX_META and client_token.isprintable():
        return client_token
    return "imm-" + hashlib.sha256(client_token.encode()).hexdigest()[:56]


def absent(exc: CloudProviderError) -> bool:
    """The service said 404: the server or image does not exist (keystone's 404 is "auth")."""
    return exc.failure.status == 404 and exc.failure.kind == "client"


def token_key(token: str) -> str:
    """The part of a launch's server names that identifies its client token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class OpenStackCore(Provider):
    """The OpenStack provider's settings, keystone login, drivers and listing"""

    kind = "openstack"
    features = frozenset({Feature.CLIENT_TOKEN})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(name, settings, context)
        s = self.settings
        where = self.where = f"openstack provider {name}"
        warn_unknown(s, _KNOWN_SETTINGS, where, context.log)
        self.auth_url = self._auth_url(setting_str(s, "auth_url", where))
        self.username = required(s, "username", where)
        self.project = required(s, "project", where)
        self.domain = setting_str(s, "domain", where, "Default") or "Default"
        self.project_domain_id = setting_str(s, "project_domain_id", where, "default") or \
            "default"
        regions = setting_str_list(s, "regions", where) if "regions" in s else ["RegionOne"]
        if not regions:
            raise ConfigError(f"{where}: regions is empty; name at least one, e.g. "
                              f"regions = [\"RegionOne\"]")
        if len(set(regions)) != len(regions):
            raise ConfigError(f"{where}: regions lists a region twice")
        self.regions = regions
        self.policy = CallPolicy.from_settings(s, where)
        self.page_size = setting_int(s, "page_size", where, 500, 1, 1000)
        self.wait_active_s = setting_num(s, "wait_active_s", where, 600, 0, 86400)
        self.poll_interval_s = setting_num(s, "poll_interval_s", where, 2, 0.01, 600)
        self.terminate_untagged = setting_bool(s, "terminate_untagged", where, False)
        self.flavors = {r: one_str(v, "flavor", where)
                        for r, v in per_region(s, "flavor", where, regions).items()}
        self.networks = {r: setting_str_list({"v": v}, "v", f"{where} network")
                         for r, v in per_region(s, "network", where, regions).items()}
        self.security_groups = setting_str_list(s, "security_groups", where)
        self.key_name = setting_str(s, "key_name", where)
        self.availability_zone = setting_str(s, "availability_zone", where)
        self.urls: dict[str, dict[str, str]] = {r: {} for r in regions}
        for key in _URL_KEYS:
            for r, v in per_region(s, key, where, regions).items():
                self.urls[r][key] = self._url(one_str(v, key, where), key)
        for r, urls in self.urls.items():
            if urls and len(urls) != len(_URL_KEYS):
                missing = ", ".join(k for k in _URL_KEYS if k not in urls)
                raise ConfigError(
                    f"{where}: region {r} overrides {', '.join(sorted(urls))} but not {missing}; "
                    f"set all three or none (libcloud sends the services it is not told about "
                    f"to the last URL it was given)")
        check_credential_settings(s, CREDENTIALS, where)
        self.scrub = TokenScrubber()
        self.caller = CloudCaller(
            cloud="OpenStack", name=name, policy=self.policy, scrub=self.scrub, log=context.log,
            credentials_hint=self._credentials_hint(), endpoint=self._endpoint_text)
        self._lock = threading.Lock()
        self.credentials = CredentialCache(s, CREDENTIALS, where, self.scrub, context.log)
        self.drivers = DriverCache(where, self.regions, self._make_driver)
        self._flavor_ids: dict[str, dict[str, str]] = {}
        self._networks_cache: dict[str, list[dict[str, Any]]] = {}

    # -- settings helpers

    def _url(self, url: str, key: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(f"{self.where}: {key} = {url!r} must be an http(s) URL such as "
                              f"https://keystone.example.com:5000")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(f"{self.where}: {key} = {url!r} has an invalid port") from None
        return url.rstrip("/")

    def _auth_url(self, url: str | None) -> str:
        if url is None:
            raise ConfigError(f"{self.where}: set auth_url, the keystone endpoint, e.g. "
                              f"auth_url = \"https://keystone.example.com:5000\"")
        url = self._url(url, "auth_url")
        # OS_AUTH_URL usually ends in /v3; libcloud appends /v3/auth/tokens itself.
        return re.sub(r"/v3(?:\.\d+)?$", "", url)

    def _credentials_hint(self) -> str:
        path = self.settings.get("password_file")
        env = self.settings.get("password_env") or "OS_PASSWORD"
        source = f"the password in file {path}" if path else f"the password in ${env}"
        return (f"{source} and username {self.username!r} (domain {self.domain!r}), project "
                f"{self.project!r} at {self.auth_url}")

    def _endpoint_text(self, region: str) -> str:
        urls = self.urls.get(region)
        if urls:
            return f"{urls['compute_url']} (and image_url/network_url)"
        return f"keystone {self.auth_url} and the {region} endpoints of its catalog"

    # -- drivers

    def _make_driver(self, region: str) -> Any:
        from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver

        password = self.credentials.get().get("password")
        kwargs: dict[str, Any] = {
            "api_version": "2.0", "ex_force_auth_version": "3.x_password",
            "ex_force_auth_url": self.auth_url, "ex_tenant_name": self.project,
            "ex_domain_name": self.domain, "ex_tenant_domain_id": self.project_domain_id,
            "ex_force_service_region": region, "timeout": self.policy.timeout_s,
            "secure": self.auth_url.startswith("https:"),
        }
        urls = self.urls.get(region) or {}
        if urls:
            kwargs.update(ex_force_base_url=urls["compute_url"],
                          ex_force_image_url=urls["image_url"],
                          ex_force_network_url=urls["network_url"])
        try:
            return OpenStack_2_NodeDriver(self.username, password, **kwargs)
        except Exception as exc:  # a driver's constructor can raise anything
            raise ProviderError(f"{self.where}, region {region}: cannot set up the libcloud "
                                f"OpenStack driver: {type(exc).__name__}: "
                                f"{self.scrub(exc)}") from None

    def _call(self, region: str, call: str, fn: Callable[[Any], Any], *,
              service: str = "compute", recover: Callable[[], Any] | None = None,
              idempotent: bool = True) -> Any:
        """Run ``fn(driver)`` for ``region`` under the region's lock, with retries, once the
        driver's connection to ``service`` (compute, image, network) holds a token."""
        driver, lock = self.drivers.get(region)

        def attempt() -> Any:
            with lock:
                try:
                    return self._authenticated(region, call, service, driver, fn)
                finally:
                    conns = (driver.connection, driver.image_connection,
                             driver.network_connection)
                    self.scrub.tokens[region] = {
                        t for t in (getattr(c, "auth_token", None) for c in conns)
                        if isinstance(t, str) and len(t) >= 8}

        return self.caller.call(region, call, attempt, recover=recover, idempotent=idempotent)

    def _authenticated(self, region: str, call: str, service: str, driver: Any,
                       fn: Callable[[Any], Any]) -> Any:
        """``fn(driver)`` after logging in; a token the service refuses is replaced once."""
        from libcloud.common.exceptions import BaseHTTPError

        conn = {"compute": driver.connection, "image": driver.image_connection,
                "network": driver.network_connection}[service]
        self._login(region, call, service, conn)
        try:
            return fn(driver)
        except BaseHTTPError as exc:
            if exc.code != 401:
                raise
            # The service refused a token keystone gave us (revoked, keys rotated, expired
            # early); libcloud has dropped it. Log in again and repeat the call, once.
            self.context.log.info("%s, region %s: %s refused the keystone token (%s); "
                                  "authenticating again", self.where, region, service,
                                  self.scrub(exc.message))
            self._login(region, call, service, conn)
            return fn(driver)

    def _login(self, region: str, call: str, service: str, conn: Any) -> None:
        """Make sure ``conn`` holds a valid token and knows its endpoint, which is what libcloud
        does before each request anyway; done here so that keystone's and the catalog's
        failures can be told apart from the service's."""
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError

        keystone = f"keystone {self.auth_url}/v3/auth/tokens"
        try:
            conn._populate_hosts_and_request_paths()  # no request while the token is valid
        except InvalidCredsError:
            raise InvalidCredsError(
                f"{keystone} refused the password of user {self.username} (domain "
                f"{self.domain}) for project {self.project}") from None
        except BaseHTTPError as exc:
            raise self._keystone_error(region, call, exc.code, str(exc.message),
                                       exc.headers) from None
        except MalformedResponseError as exc:
            m = re.match(r"code: (\d{3}) body:(.*)", str(exc.body or ""), re.S)
            if not m:
                raise
            raise self._keystone_error(region, call, int(m.group(1)), m.group(2)) from None
        except (LibcloudError, ValueError) as exc:
            if "endpoint" not in str(exc):
                raise
            kind = {"compute": "compute (nova)", "image": "image (glance)",
                    "network": "network (neutron)"}[service]
            try:
                regions = sorted(set(conn.service_catalog.get_regions()))
            except Exception:  # noqa: BLE001 - only for the message
                regions = []
            message = (
                f"OpenStack provider {self.name}, region {region}: {call} failed: the catalog of "
                f"keystone {self.auth_url} has {'more than one' if isinstance(exc, ValueError) else 'no'} "
                f"public {kind} endpoint for region {region} (the catalog's regions: "
                f"{', '.join(regions) or 'none'}); check regions, or set compute_url, image_url "
                f"and network_url")
            raise ProviderError(message, detail={
                "cloud": "OpenStack", "provider": self.name, "region": region, "call": call,
                "attempts": 1, "kind": "catalog", "http_status": None,
                "cloud_code": None}) from None

    def _keystone_error(self, region: str, call: str, status: int, text: str,
                        headers: Any = None) -> Exception:
        """Keystone's answer to POST /v3/auth/tokens: throttling and 5xx as HTTP errors (so they
        are retried), anything else as an auth failure, never as the service's 404."""
        from libcloud.common.exceptions import BaseHTTPError

        message = f"keystone {self.auth_url}/v3/auth/tokens answered {status}: " \
                  f"{' '.join(str(text).split())[:500]}"
        if status == 429 or status >= 500:
            return BaseHTTPError(status, message, headers=headers)
        return self.caller.error(region, call, Failure("auth", False, self.scrub(message), status))

    def _per_region(self, fn: Callable[[str], Any]) -> dict[str, Any]:
        if len(self.regions) == 1:
            return {self.regions[0]: fn(self.regions[0])}
        with ThreadPoolExecutor(max_workers=min(8, len(self.regions)),
                                thread_name_prefix=f"imm-openstack-{self.name}") as pool:
            futures = {r: pool.submit(fn, r) for r in self.regions}
            return {r: f.result() for r, f in futures.items()}

    # -- listing

    def _pages(self, region: str, call: str, path: str, key: str,
               params: Mapping[str, str] | None = None,
               convert: Callable[[Any, dict[str, Any]], Any] | None = None) -> list[Any]:
        """Every item of a nova collection, one retried call per page (``limit``/``marker``,
        following ``<key>_links`` rel=next the way nova gives it)."""
        out: list[Any] = []
        marker: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            query = {**(params or {}), "limit": str(self.page_size)}
            if marker:
                query["marker"] = marker

            def page(driver: Any, query: dict[str, str] = query) -> tuple[list[Any], str | None]:
                obj = driver.connection.request(path, params=query).object or {}
                items = obj.get(key) or []
                links = [link for link in obj.get(f"{key}_links") or []
                         if link.get("rel") == "next"]
                nxt = None
                if links and items:
                    q = urllib.parse.parse_qs(urllib.parse.urlsplit(links[0]["href"]).query)
                    nxt = (q.get("marker") or [str(items[-1]["id"])])[0]
                return [convert(driver, i) if convert else i for i in items], nxt

            items, marker = self._call(region, call, page)
            out += items
            if not marker:
                return out
            if marker in seen:
                raise ProviderError(f"{self.where}, region {region}: {call} pages loop (marker "
                                    f"{marker} came back); the API is misbehaving")
            seen.add(marker)
        raise ProviderError(f"{self.where}, region {region}: {call} has more than {MAX_PAGES} "
                            f"pages; raise page_size")

    def _to_instance(self, region: str, node: Any, status: str | None = None) -> Instance:
        """A libcloud Node (``_to_node`` of nova's server body) as an imm Instance; ``status``
        is nova's own status when the raw body is at hand."""
        extra = node.extra or {}
        if status is None:
            status = NODE_STATES.get(str(node.state), "UNKNOWN")
        status = status.upper()
        task = extra.get("task_state")
        state = "terminated" if task == "deleting" else STATE_MAP.get(status, "unknown")
        v4 = [ip for ip in (node.private_ips or []) + (node.public_ips or []) if ":" not in ip]
        private = next((ip for ip in node.private_ips or [] if ":" not in ip), None)
        public = next((ip for ip in node.public_ips or [] if ":" not in ip), None)
        fault = extra.get("fault") or {}
        metadata = extra.get("metadata") or {}
        return Instance(
            id=str(node.id), provider=self.name, region=region,
            image_id=str(extra.get("imageId") or ""), state=state,
            launched_at=parse_time(extra.get("created")) or 0,
            tags={str(k): "" if v is None else str(v) for k, v in metadata.items()},
            address=private or (v4[0] if v4 else None),
            extra={k: v for k, v in {
                "nova_status": status, "task_state": task, "name": node.name,
                "flavor_id": None if extra.get("flavorId") is None else str(extra["flavorId"]),
                "availability_zone": extra.get("availability_zone"),
                "private_ip": private, "public_ip": public,
                "fault": fault.get("message"),
                "fault_details": str(fault["details"])[:300] if fault.get("details") else None,
            }.items() if v is not None},
        )

    def _servers(self, region: str, params: Mapping[str, str] | None = None,
                 call: str = "GET /servers/detail") -> list[Instance]:
        return self._pages(region, call, "/servers/detail", "servers", params,
                           lambda d, raw: self._to_instance(region, d._to_node(raw),
                                                            str(raw.get("status") or "")))

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        want = {str(k): str(v) for k, v in (tags or {}).items()}
        results = self._per_region(self._servers)
        for region in self.regions:
            for inst in results[region]:
                if inst.extra.get("nova_status") == "DELETED":
                    continue
                if all(inst.tags.get(k) == v for k, v in want.items()):
                    yield inst
