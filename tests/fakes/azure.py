"""A stateful fake of the Azure Resource Manager compute API (and the Azure AD token endpoint),
served over real HTTP on 127.0.0.1.

Why a fake: no Azure emulator installs and runs here (Azurite covers storage only), so the azure
provider is tested against this: it speaks the real wire protocol — JSON over HTTP, ARM's paths
(case-insensitive), ``api-version``, ``nextLink`` paging, 201/202/204 answers with
``Azure-AsyncOperation`` headers, ARM error bodies ``{"error": {"code", "message"}}`` — to the
real, unmodified libcloud ``AzureNodeDriver`` (only its connection is adapted, below). Its state
is seeded from the recorded responses of the real APIs that apache-libcloud ships in its wheel
(``libcloud/test/compute/fixtures/azure_arm``, read with ``importlib.resources``, never copied):

- ``_77777777_..._oauth2_token.json``                  the shape of the token answer (tenant
                                                       ``77777777-7777-7777-7777-777777777777``)
- ``..._Microsoft_Compute.json``                       the locations VMs can be created in
- ``..._locations_eastus_vmSizes.json``                the VM sizes accepted (every location)
- ``..._Compute_virtualMachines.json``, ``_1.json``    two pre-existing VMs ("pets" imm did not
                                                       launch), resource group ``000000``
- ``..._test_node_{1,2}_InstanceView.json``            their instance views
- ``..._networkInterfaces_test_node_{1,2}_nic.json``   their NICs
- ``..._Microsoft_Network_networkInterfaces.json``     another NIC (resource group ``REVIZOR``)
- ``..._publicIPAddresses_test_public_ip.json``        a public IP
- ``..._Microsoft_Network_virtualnetworks.json``       a virtual network
- ``..._Compute_disks.json``, ``_disks_1.json``        managed disks

Fixture ids naming the placeholder subscription ``subid`` are re-homed into the fake's
subscription (``99999999-9999-9999-9999-999999999999``). Marketplace images (the fixtures'
``OpenLogic:CentOS:7.3``), managed images and networks for a test are added with
:meth:`FakeAzure.add_marketplace_image`, :meth:`add_managed_image`, :meth:`add_network`.

What it keeps consistent:

- ``PUT`` of a NIC checks its subnet (and public IP) exist in the NIC's location and gives it the
  next private address of the subnet; ``PUT`` of a public IP gives it an address.
- ``PUT`` of a VM checks the resource group, location, size, image (a Marketplace version, or a
  managed / gallery image in that location), admin credentials and NICs (existing, not used by
  another VM); it strips ``adminPassword``/``customData`` (Azure never returns them), creates the
  managed OS disk, answers 201 ``Creating`` with an ``Azure-AsyncOperation`` to poll; the VM is
  ``Succeeded`` and running ``provision_s`` later. A ``PUT`` of an existing VM is an update: tags
  and size change, an attempt to change the image, admin user or OS disk name answers 409
  ``PropertyChangeNotAllowed``; a VM being deleted answers 409.
- ``DELETE`` of a VM answers 202 and marks it ``Deleting``; ``delete_s`` later it is gone, its
  NICs detached and a ``deleteOption: Delete`` OS disk deleted with it (otherwise detached).
  ``DELETE`` of an absent resource answers 204 (404 when its resource group does not exist).
  A NIC still used by a VM cannot be deleted (400 ``NicInUse``), nor a public IP still on a NIC
  (400 ``PublicIPAddressCannotBeDeleted``), nor a disk attached to a VM (409).
- Lists (subscription- or resource-group-wide) page ``page_size`` items at a time with
  ``nextLink``/``$skiptoken``.
- Every ARM request needs ``Authorization: Bearer <token>`` from ``POST /<tenant>/oauth2/token``
  (client credentials checked; 401 otherwise) and an ``api-version`` (400 otherwise). Unknown
  paths answer 404 with an ARM error.

Faults for retry tests: :meth:`FakeAzure.fail` answers chosen requests with an error (or, with
``apply=True``, carries the request out and then answers with the error, like an answer lost on
the way back; ``delay_s`` holds the answer back). ``calls`` records ``(method, path)`` of every
request.

The driver side: libcloud's ARM connection always speaks https on port 443 (see TESTING.md), so
:class:`FakeArmNodeDriver` (registered as ``libcloud_driver = DRIVER_NAME`` by :func:`register`)
uses a connection that honours the scheme and port of the ``cloud_environment`` URLs, for ARM and
for the token request alike; nothing else differs from libcloud's driver. immd loads this module
as a plugin (:func:`install`) so its ``imm_register_providers`` hook registers the driver there.
"""

from __future__ import annotations

import copy
import http.server
import importlib.resources
import ipaddress
import itertools
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libcloud.common.azure_arm import AzureAuthJsonResponse, AzureResourceManagementConnection
from libcloud.compute.drivers.azure_arm import AzureNodeDriver
from libcloud.compute.providers import set_driver
from libcloud.utils.py3 import urlencode

from imm.plugins.hookspecs import hookimpl

FIXTURES = importlib.resources.files("libcloud") / "test" / "compute" / "fixtures" / "azure_arm"
SUBSCRIPTION = "99999999-9999-9999-9999-999999999999"
TENANT = "77777777-7777-7777-7777-777777777777"
DRIVER_NAME = "azure_arm_imm_fake"
CLIENT_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
CLIENT_SECRET = "imm~Fake.Azure~Secret-3c9Q8wVZ_kP2"  # noqa: S105 - a fake service principal

VM = "microsoft.compute/virtualmachines"
NIC = "microsoft.network/networkinterfaces"
PIP = "microsoft.network/publicipaddresses"
DISK = "microsoft.compute/disks"
VNET = "microsoft.network/virtualnetworks"
IMAGE = "microsoft.compute/images"
LISTABLE = {VM, NIC, PIP, DISK, VNET, IMAGE}
NOT_FOUND_HINT = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"


def fixture(name: str) -> Any:
    """One recorded response from the installed apache-libcloud wheel."""
    text = (FIXTURES / f"{name}.json").read_text()
    return json.loads(text.replace("/subscriptions/subid/", f"/subscriptions/{SUBSCRIPTION}/"))


def loc_name(text: str) -> str:
    return str(text).lower().replace(" ", "")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0+00:00")


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def not_found(rtype: str, name: str, rg: str) -> ArmError:
    return ArmError(404, "ResourceNotFound", f"The Resource '{rtype}/{name}' under resource group "
                    f"'{rg}' was not found. {NOT_FOUND_HINT}")


def invalid(message: str, code: str = "InvalidParameter") -> ArmError:
    return ArmError(400, code, message)


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    message: str
    times: int
    apply: bool
    delay_s: float
    headers: dict[str, str]


@dataclass
class Meta:
    """What the fake knows about a VM beyond its document."""

    ready_at: float = 0.0  # provisioning completes
    gone_at: float | None = None  # deleting: purged then
    view: dict[str, Any] | None = None  # a recorded instance view (seeded VMs)


@dataclass
class Req:
    method: str
    path: str  # as sent, without the query
    parts: list[str]  # path segments as sent
    low: list[str]  # lowercased
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


class FakeAzure:
    def __init__(self, page_size: int = 2, provision_s: float = 0.1, delete_s: float = 0.1,
                 client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        self.page_size = page_size
        self.provision_s = provision_s
        self.delete_s = delete_s
        self.client_id, self.client_secret = client_id, client_secret
        self.tenant = TENANT
        self.subscription = SUBSCRIPTION
        self.calls: list[tuple[str, str]] = []
        self.tokens: dict[str, float] = {}
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._ops: dict[str, tuple[float, float]] = {}  # id -> (start, done)
        self._ip_seq = itertools.count(10)
        self.resource_groups: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, Any]] = {}  # lowercased id -> document
        self.meta: dict[str, Meta] = {}  # lowercased VM id -> Meta
        self.images: dict[tuple[str, str, str, str], dict[str, str]] = {}  # marketplace
        self.sizes = [s["name"] for s in fixture(
            "_subscriptions_99999999_providers_Microsoft_Compute_locations_eastus_vmSizes")["value"]]
        compute = fixture("_subscriptions_99999999_providers_Microsoft_Compute")
        self.locations = {loc_name(x) for rt in compute["resourceTypes"]
                          if rt["resourceType"] == "virtualMachines" for x in rt["locations"]}
        self._seed()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- seeding ----------------------------------------------------------------------------

    def _seed(self) -> None:
        prefix = "_subscriptions_99999999_"
        vms = (fixture(prefix + "providers_Microsoft_Compute_virtualMachines")["value"]
               + fixture(prefix + "providers_Microsoft_Compute_virtualMachines_1")["value"])
        docs: list[dict[str, Any]] = list(vms)
        for n in (1, 2):
            docs.append(fixture(prefix + f"resourceGroups_000000_providers_Microsoft_Network_"
                                f"networkInterfaces_test_node_{n}_nic"))
        docs += fixture(prefix + "providers_Microsoft_Network_networkInterfaces")["value"]
        docs.append(fixture(prefix + "resourceGroups_REVIZOR_providers_Microsoft_Network_"
                            "publicIPAddresses_test_public_ip"))
        docs += fixture(prefix + "providers_Microsoft_Network_virtualnetworks")["value"]
        docs += fixture(prefix + "providers_Microsoft_Compute_disks")["value"]
        docs += fixture(prefix + "providers_Microsoft_Compute_disks_1")["value"]
        for doc in docs:
            rg = doc["id"].split("/")[4]
            self.add_resource_group(rg, doc.get("location", "eastus"))
            self.resources[doc["id"].lower()] = doc
        for n, vm in enumerate(vms, start=1):
            view = fixture(prefix + f"resourceGroups_000000_providers_Microsoft_Compute_"
                           f"virtualMachines_test_node_{n}_InstanceView")
            self.meta[vm["id"].lower()] = Meta(view=view)
            disk = vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
            if disk.lower() not in self.resources:  # referenced, not recorded: make it exist
                self.resources[disk.lower()] = {
                    "id": disk, "name": disk.rsplit("/", 1)[-1], "type": "Microsoft.Compute/disks",
                    "location": vm["location"], "managedBy": vm["id"], "tags": {},
                    "properties": {"osType": "Linux", "diskSizeGB": 30, "diskState": "Attached",
                                   "provisioningState": "Succeeded"}}
            ref = vm["properties"]["storageProfile"].get("imageReference") or {}
            if ref.get("publisher"):
                self.add_marketplace_image(ref["publisher"], ref["offer"], ref["sku"],
                                           ["7.3.20170925", "7.3.20180215"], vm["location"])

    def add_resource_group(self, name: str, location: str = "eastus") -> str:
        rid = f"/subscriptions/{self.subscription}/resourceGroups/{name}"
        with self._lock:
            self.resource_groups.setdefault(name.lower(), {
                "id": rid, "name": name, "location": loc_name(location),
                "properties": {"provisioningState": "Succeeded"}})
        return rid

    def add_network(self, rg: str, name: str, location: str = "eastus",
                    prefix: str = "10.0.0.0/16",
                    subnets: dict[str, str] | None = None) -> str:
        rid = f"{self.add_resource_group(rg, location)}/providers/Microsoft.Network/" \
              f"virtualNetworks/{name}"
        subs = subnets or {"default": "10.0.0.0/24"}
        with self._lock:
            self.resources[rid.lower()] = {
                "id": rid, "name": name, "type": "Microsoft.Network/virtualNetworks",
                "location": loc_name(location), "tags": {}, "etag": f'W/"{uuid.uuid4()}"',
                "properties": {
                    "provisioningState": "Succeeded", "resourceGuid": str(uuid.uuid4()),
                    "addressSpace": {"addressPrefixes": [prefix]},
                    "subnets": [{"id": f"{rid}/subnets/{n}", "name": n,
                                 "properties": {"addressPrefix": p,
                                                "provisioningState": "Succeeded"},
                                 "type": "Microsoft.Network/virtualNetworks/subnets"}
                                for n, p in subs.items()]}}
        return rid

    def add_marketplace_image(self, publisher: str, offer: str, sku: str,
                              versions: list[str], location: str = "eastus") -> None:
        key = (loc_name(location), publisher.lower(), offer.lower(), sku.lower())
        with self._lock:
            self.images.setdefault(key, {}).update({v.lower(): v for v in versions})

    def add_managed_image(self, rg: str, name: str, location: str = "eastus",
                          tags: dict[str, str] | None = None) -> str:
        rid = f"{self.add_resource_group(rg, location)}/providers/Microsoft.Compute/images/{name}"
        with self._lock:
            self.resources[rid.lower()] = {
                "id": rid, "name": name, "type": "Microsoft.Compute/images",
                "location": loc_name(location), "tags": dict(tags or {}),
                "properties": {
                    "provisioningState": "Succeeded", "hyperVGeneration": "V2",
                    "storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized",
                                                  "diskSizeGB": 30, "caching": "ReadWrite",
                                                  "storageAccountType": "Standard_LRS"},
                                       "dataDisks": [], "zoneResilient": False}}}
        return rid

    # -- inspection -------------------------------------------------------------------------

    def vms(self, rg: str | None = None) -> list[dict[str, Any]]:
        """Live VMs (rendered as GET answers them), optionally of one resource group."""
        with self._lock:
            self._tick()
            return [self._render_vm(d) for k, d in sorted(self.resources.items())
                    if self._type(k) == VM and (rg is None or k.split("/")[4] == rg.lower())]

    def exists(self, rid: str) -> bool:
        with self._lock:
            self._tick()
            return rid.lower() in self.resources

    def of_type(self, rtype: str, rg: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._tick()
            return [copy.deepcopy(d) for k, d in sorted(self.resources.items())
                    if self._type(k) == rtype.lower()
                    and (rg is None or k.split("/")[4] == rg.lower())]

    def count(self, method: str, pattern: str) -> int:
        rx = re.compile(pattern, re.I)
        return sum(1 for m, p in self.calls if m == method and rx.search(p))

    def fail(self, method: str, pattern: str, status: int = 500, code: str = "InternalServerError",
             message: str = "The server encountered an internal error. Please retry.",
             times: int = 1, apply: bool = False, delay_s: float = 0.0,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests matching (method, path regex) with an error."""
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(pattern, re.I), status, code,
                                      message, times, apply, delay_s, dict(headers or {})))

    # -- the HTTP server --------------------------------------------------------------------

    def start(self) -> FakeAzure:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, out = fake.handle(self.command, self.path,
                                                   {k.lower(): v for k, v in self.headers.items()},
                                                   body)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    if out and self.command != "HEAD":
                        self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout test)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-azure", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def environment(self) -> dict[str, str]:
        """A libcloud ``cloud_environment`` (the provider's setting) pointing at this fake."""
        return {"name": "imm-fake", "resourceManagerEndpointUrl": self.url + "/",
                "activeDirectoryEndpointUrl": self.url,
                "activeDirectoryResourceId": "https://management.core.windows.net/",
                "storageEndpointSuffix": ".core.windows.net"}

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        split = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(split.path)
        parts = [p for p in path.split("/") if p]
        req = Req(method.upper(), path, parts, [p.lower() for p in parts],
                  {k: v[0] for k, v in urllib.parse.parse_qs(split.query,
                                                             keep_blank_values=True).items()},
                  headers, body)
        fault = None
        with self._lock:
            self.calls.append((req.method, path))
            for f in self._faults:
                if f.times > 0 and f.method == req.method and f.pattern.search(path):
                    f.times -= 1
                    fault = f
                    break
            self._faults = [f for f in self._faults if f.times > 0]
            if fault is None or fault.apply:
                try:
                    status, extra, obj = self._dispatch(req)
                except ArmError as e:
                    status, extra, obj = e.status, e.headers, self._error_body(e)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            err = ArmError(fault.status, fault.code, fault.message, fault.headers)
            status, extra, obj = err.status, err.headers, self._error_body(err)
        out = b"" if obj is None else json.dumps(obj).encode()
        hdrs = {"x-ms-request-id": str(uuid.uuid4()), **extra}
        if out:
            hdrs.setdefault("Content-Type", "application/json; charset=utf-8")
        return status, hdrs, out

    @staticmethod
    def _error_body(e: ArmError) -> Any:
        if e.code.startswith("oauth:"):  # Azure AD's own error shape
            return {"error": e.code[6:], "error_description": e.message,
                    "error_codes": [7000215], "timestamp": iso(time.time()),
                    "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}
        return {"error": {"code": e.code, "message": e.message}}

    def _dispatch(self, req: Req) -> tuple[int, dict[str, str], Any]:
        self._tick()
        low = req.low
        if req.method == "POST" and len(low) == 3 and low[1:] == ["oauth2", "token"]:
            return self._token(req)
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed",
                           "Authentication failed. The 'Authorization' header is missing.")
        expiry = self.tokens.get(auth[7:])
        if expiry is None or expiry < time.time():
            raise ArmError(401, "InvalidAuthenticationToken",
                           "The access token is invalid.")
        if "api-version" not in req.query:
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all "
                           "requests.")
        if req.body:
            try:
                req.json = json.loads(req.body)
            except ValueError:
                raise invalid("The request content was invalid and could not be deserialized.",
                              "InvalidRequestContent") from None
        if len(low) < 2 or low[0] != "subscriptions":
            raise ArmError(404, "NotFound", f"The requested path {req.path} was not found.")
        if low[1] != self.subscription.lower():
            raise ArmError(404, "SubscriptionNotFound",
                           f"The subscription '{req.parts[1]}' could not be found.")
        if len(low) >= 4 and low[2] == "providers":
            return self._subscription_level(req)
        if len(low) >= 4 and low[2] == "resourcegroups":
            return self._resource_group_level(req)
        raise ArmError(404, "NotFound", f"The requested path {req.path} was not found.")

    # -- Azure AD ---------------------------------------------------------------------------

    def _token(self, req: Req) -> tuple[int, dict[str, str], Any]:
        form = {k: v[0] for k, v in urllib.parse.parse_qs(req.body.decode()).items()}
        if req.parts[0].lower() != self.tenant.lower():
            raise ArmError(400, "oauth:invalid_request",
                           f"AADSTS90002: Tenant '{req.parts[0]}' not found. Check to make sure "
                           f"you have the correct tenant ID and are signing into the correct "
                           f"cloud.")
        if form.get("grant_type") != "client_credentials":
            raise ArmError(400, "oauth:unsupported_grant_type",
                           "AADSTS70003: The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            raise ArmError(400, "oauth:unauthorized_client",
                           f"AADSTS700016: Application with identifier '{form.get('client_id')}' "
                           f"was not found in the directory '{self.tenant}'.")
        if form.get("client_secret") != self.client_secret:
            raise ArmError(401, "oauth:invalid_client",
                           f"AADSTS7000215: Invalid client secret provided. Ensure the secret "
                           f"being sent in the request is the client secret value, not the client "
                           f"secret ID, for a secret added to app '{self.client_id}'.")
        answer = fixture("_77777777_7777_7777_7777_777777777777_oauth2_token")
        token = secrets.token_urlsafe(40)
        now = int(time.time())
        self.tokens[token] = now + 86400
        answer.update(access_token=token, expires_in="86400", expires_on=str(now + 86400),
                      not_before=str(now), resource=form.get("resource", answer["resource"]))
        return 200, {}, answer

    # -- subscription-level paths -------------------------------------------------------------

    def _subscription_level(self, req: Req) -> tuple[int, dict[str, str], Any]:
        low = req.low
        if req.method != "GET":
            raise ArmError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        if low[3:] == ["microsoft.compute"]:
            return 200, {}, fixture("_subscriptions_99999999_providers_Microsoft_Compute")
        if len(low) == 5 and f"{low[3]}/{low[4]}" in LISTABLE:
            return 200, {}, self._list(req, f"{low[3]}/{low[4]}", None)
        if len(low) >= 7 and low[3:5] == ["microsoft.compute", "locations"]:
            loc, rest = low[5], low[6:]
            if rest == ["vmsizes"]:
                return 200, {}, fixture("_subscriptions_99999999_providers_Microsoft_Compute_"
                                        "locations_eastus_vmSizes")
            if len(rest) == 2 and rest[0] == "operations":
                return 200, {}, self._operation(req.parts[-1])
            if len(rest) in (9, 10) and rest[0] == "publishers" and rest[2:4] == [
                    "artifacttypes", "vmimage"] and rest[4] == "offers" and rest[6] == "skus" \
                    and rest[8] == "versions":
                return self._vm_image(req, loc, rest)
        raise ArmError(404, "NotFound", f"The requested path {req.path} was not found.")

    def _operation(self, op_id: str) -> dict[str, Any]:
        start, done = self._ops.get(op_id, (0.0, 0.0))
        if not start:
            raise ArmError(404, "NotFound", f"Operation {op_id} was not found.")
        status = "Succeeded" if time.time() >= done else "InProgress"
        out = {"name": op_id, "status": status, "startTime": iso(start)}
        if status == "Succeeded":
            out["endTime"] = iso(done)
        return out

    def _vm_image(self, req: Req, loc: str, rest: list[str]) -> tuple[int, dict[str, str], Any]:
        publisher, offer, sku = req.parts[7], req.parts[11], req.parts[13]
        versions = self.images.get((loc, rest[1], rest[5], rest[7]))
        if versions is None:
            raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
        base = (f"/Subscriptions/{self.subscription}/Providers/Microsoft.Compute/Locations/{loc}/"
                f"Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions")
        if len(rest) == 9:
            return 200, {}, [{"location": loc, "name": v, "id": f"{base}/{v}"}
                             for v in sorted(versions.values())]
        version = versions.get(rest[9])
        if version is None:
            raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
        return 200, {}, {"properties": {"osDiskImage": {"operatingSystem": "Linux"},
                                        "dataDiskImages": [], "hyperVGeneration": "V1",
                                        "architecture": "x64"},
                         "location": loc, "name": version, "id": f"{base}/{version}"}

    # -- resource-group paths ---------------------------------------------------------------

    def _resource_group_level(self, req: Req) -> tuple[int, dict[str, str], Any]:
        low, parts = req.low, req.parts
        rg = self.resource_groups.get(low[3])
        if len(low) == 4 and req.method == "GET":
            if rg is None:
                raise self._no_rg(parts[3])
            return 200, {}, rg
        if len(low) < 7 or low[4] != "providers":
            raise ArmError(404, "NotFound", f"The requested path {req.path} was not found.")
        rtype = f"{low[5]}/{low[6]}"
        if len(low) == 7 and req.method == "GET" and rtype in LISTABLE:
            if rg is None:
                raise self._no_rg(parts[3])
            return 200, {}, self._list(req, rtype, low[3])
        if len(low) < 8:
            raise ArmError(404, "NotFound", f"The requested path {req.path} was not found.")
        rid = "/" + "/".join(parts[:8])
        key = rid.lower()
        if len(low) == 9 and rtype == VM and low[8] == "instanceview" and req.method == "GET":
            doc = self.resources.get(key)
            if doc is None:
                raise not_found("Microsoft.Compute/virtualMachines", parts[7], parts[3])
            return 200, {}, self._instance_view(key)
        if len(low) > 8:  # child resources: subnets, gallery images and versions
            if req.method != "GET":
                raise ArmError(405, "MethodNotAllowed", f"{req.method} is not allowed here")
            return 200, {}, self._child(req)
        if req.method == "GET":
            if key not in self.resources:
                if rtype not in LISTABLE | {"microsoft.compute/galleries"}:
                    raise ArmError(404, "InvalidResourceType",
                                   f"The resource type '{parts[6]}' could not be found in the "
                                   f"namespace '{parts[5]}' for api version "
                                   f"'{req.query['api-version']}'.")
                raise not_found(f"{parts[5]}/{parts[6]}", parts[7], parts[3])
            return 200, {}, self._render(key)
        if rg is None:
            raise self._no_rg(parts[3])
        if req.method == "PUT":
            if rtype == VM:
                return self._put_vm(req, rid, rg)
            if rtype == NIC:
                return self._put_nic(req, rid)
            if rtype == PIP:
                return self._put_pip(req, rid)
            raise ArmError(405, "MethodNotAllowed", f"the fake does not create {parts[6]}")
        if req.method == "DELETE":
            return self._delete(rtype, rid)
        raise ArmError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")

    def _no_rg(self, name: str) -> ArmError:
        return ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be "
                        f"found.")

    def _child(self, req: Req) -> Any:
        key = req.path.lower().rstrip("/")
        doc = self.resources.get(key)
        if doc is not None:
            return copy.deepcopy(doc)
        low = req.low
        if len(low) == 10 and low[5:7] == ["microsoft.network", "virtualnetworks"] and \
                low[8] == "subnets":
            vnet = self.resources.get("/" + "/".join(low[:8]))
            for sub in ((vnet or {}).get("properties") or {}).get("subnets") or []:
                if sub["name"].lower() == low[9]:
                    return copy.deepcopy(sub)
        raise not_found("/".join(req.parts[5:7] + req.parts[8::2]), req.parts[-1], req.parts[3])

    def _list(self, req: Req, rtype: str, rg: str | None) -> dict[str, Any]:
        keys = sorted(k for k in self.resources if self._type(k) == rtype
                      and (rg is None or k.split("/")[4] == rg))
        try:
            start = int(req.query.get("$skiptoken", "0"))
        except ValueError:
            raise invalid("The $skiptoken is invalid.") from None
        page = keys[start:start + self.page_size]
        out: dict[str, Any] = {"value": [self._render(k) for k in page]}
        if start + self.page_size < len(keys):
            query = urllib.parse.urlencode({"api-version": req.query["api-version"],
                                            "$skiptoken": str(start + self.page_size)})
            out["nextLink"] = f"{self.url}{req.path}?{query}"
        return out

    @staticmethod
    def _type(key: str) -> str | None:
        p = key.strip("/").split("/")
        return f"{p[5]}/{p[6]}" if len(p) == 8 and p[4] == "providers" else None

    def _render(self, key: str) -> dict[str, Any]:
        doc = self.resources[key]
        if self._type(key) == VM:
            return self._render_vm(doc)
        return copy.deepcopy(doc)

    # -- time -------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.time()
        for key, meta in list(self.meta.items()):
            if meta.gone_at is not None and now >= meta.gone_at:
                self._purge_vm(key)

    def _purge_vm(self, key: str) -> None:
        doc = self.resources.pop(key, None)
        self.meta.pop(key, None)
        if doc is None:
            return
        props = doc["properties"]
        for ref in props["networkProfile"]["networkInterfaces"]:
            nic = self.resources.get(ref["id"].lower())
            if nic is not None:
                nic["properties"].pop("virtualMachine", None)
        os_disk = props["storageProfile"].get("osDisk") or {}
        disk_id = ((os_disk.get("managedDisk") or {}).get("id") or "").lower()
        if disk_id in self.resources:
            if os_disk.get("deleteOption") == "Delete":
                del self.resources[disk_id]
            else:
                disk = self.resources[disk_id]
                disk.pop("managedBy", None)
                disk["properties"]["diskState"] = "Unattached"

    # -- VMs --------------------------------------------------------------------------------

    def _render_vm(self, doc: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        meta = self.meta.get(doc["id"].lower(), Meta())
        props = out["properties"]
        if meta.gone_at is not None:
            props["provisioningState"] = "Deleting"
        elif meta.view is None and "provisioningState" in props:
            props["provisioningState"] = "Succeeded" if time.time() >= meta.ready_at \
                else "Creating"
        return out

    def _instance_view(self, key: str) -> dict[str, Any]:
        meta = self.meta.get(key, Meta())
        if meta.view is not None and meta.gone_at is None:
            return copy.deepcopy(meta.view)
        now = time.time()
        if meta.gone_at is not None:
            statuses = [("ProvisioningState/deleting", "Deleting"), ("PowerState/running",
                                                                     "VM running")]
        elif now < meta.ready_at:
            statuses = [("ProvisioningState/creating", "Creating"), ("PowerState/starting",
                                                                     "VM starting")]
        else:
            statuses = [("ProvisioningState/succeeded", "Provisioning succeeded"),
                        ("PowerState/running", "VM running")]
        return {"computerName": self.resources[key]["properties"].get("osProfile", {}).get(
                    "computerName"),
                "statuses": [{"code": c, "level": "Info", "displayStatus": d,
                              **({"time": iso(now)} if c.startswith("Prov") else {})}
                             for c, d in statuses]}

    def _known_image(self, ref: dict[str, Any], location: str) -> None:
        if ref.get("id"):
            image = self.resources.get(str(ref["id"]).lower())
            if image is None or loc_name(image.get("location", "")) != location:
                raise ArmError(404, "NotFound", f"The Image '{ref['id']}' cannot be found in "
                               f"'{location}' region.")
            return
        key = (location, str(ref.get("publisher", "")).lower(), str(ref.get("offer", "")).lower(),
               str(ref.get("sku", "")).lower())
        versions = self.images.get(key, {})
        version = str(ref.get("version", "")).lower()
        if not versions or (version != "latest" and version not in versions):
            urn = ":".join(str(ref.get(k, "")) for k in ("publisher", "offer", "sku", "version"))
            raise ArmError(404, "PlatformImageNotFound",
                           f"The platform image '{urn}' is not available. Verify that all fields "
                           f"in the storage profile are correct.")

    def _put_vm(self, req: Req, rid: str, rg: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        body = req.json
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise invalid("The request content was invalid: properties are required.",
                          "InvalidRequestContent")
        key, name = rid.lower(), req.parts[7]
        location = loc_name(body.get("location", ""))
        if location not in self.locations:
            raise invalid(f"The provided location '{body.get('location')}' is not available for "
                          f"resource type 'Microsoft.Compute/virtualMachines'.",
                          "LocationNotAvailableForResourceType")
        props = body["properties"]
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or len(tags) > 50 or any(
                len(str(v)) > 256 or len(str(k)) > 512 for k, v in tags.items()):
            raise invalid("Tags are invalid: at most 50 tags, names up to 512 and values up to "
                          "256 characters.", "InvalidTag")
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        if size not in self.sizes:
            raise invalid(f"The value {size} provided for the VM size is not valid. The valid "
                          f"sizes in the current region are: {', '.join(self.sizes)}.")
        storage = props.get("storageProfile") or {}
        ref = storage.get("imageReference") or {}
        os_disk = dict(storage.get("osDisk") or {})
        profile = dict(props.get("osProfile") or {})
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        existing = self.resources.get(key)
        if existing is not None:
            if self.meta.get(key, Meta()).gone_at is not None:
                raise ArmError(409, "OperationNotAllowed", f"Operation 'PUT' is not allowed on "
                               f"VM '{name}' since the VM is marked for deletion.")
            old = existing["properties"]
            changes = [
                ("imageReference", {k: str(v).lower() for k, v in ref.items()},
                 {k: str(v).lower() for k, v in (old["storageProfile"].get("imageReference")
                                                 or {}).items() if k != "exactVersion"}),
                ("osDisk.name", os_disk.get("name"), old["storageProfile"]["osDisk"].get("name")),
                ("osProfile.adminUsername", profile.get("adminUsername"),
                 old.get("osProfile", {}).get("adminUsername")),
            ]
            for prop, new, have in changes:
                if new and new != have:
                    raise ArmError(409, "PropertyChangeNotAllowed",
                                   f"Changing property '{prop}' is not allowed.")
            existing["tags"] = dict(tags)
            old["hardwareProfile"] = {"vmSize": size}
            return 200, {}, self._render_vm(existing)
        self._known_image(ref, location)
        if not profile.get("computerName") or not profile.get("adminUsername"):
            raise invalid("Required parameter 'osProfile.adminUsername' is missing (null).")
        linux = profile.get("linuxConfiguration") or {}
        keys = (linux.get("ssh") or {}).get("publicKeys") or []
        if not profile.get("adminPassword") and not keys:
            raise invalid("Required parameter 'adminPassword' is missing (null).")
        if not nics:
            raise invalid("At least one network interface is required.",
                          "VirtualMachineMustHaveOneNetworkInterface")
        for ref_nic in nics:
            nic = self.resources.get(str(ref_nic.get("id", "")).lower())
            if nic is None:
                raise ArmError(404, "NotFound", f"Resource {ref_nic.get('id')} referenced by "
                               f"resource {rid} was not found.")
            if loc_name(nic.get("location", "")) != location:
                raise invalid(f"The network interface {nic['id']} is in location "
                              f"{nic.get('location')}, not {location}.",
                              "NicLocationMismatch")
            used = (nic["properties"].get("virtualMachine") or {}).get("id")
            if used and used.lower() != key:
                raise invalid(f"Network Interface {nic['id']} is used by existing resource "
                              f"{used}.", "NicInUse")
        now = time.time()
        disk_name = os_disk.get("name") or f"{name}_OsDisk_1_{uuid.uuid4().hex}"
        disk_id = f"{rid.split('/providers/')[0]}/providers/Microsoft.Compute/disks/{disk_name}"
        if disk_id.lower() in self.resources:
            raise ArmError(409, "ConflictingUserInput", f"Disk {disk_name} already exists in "
                           f"resource group {req.parts[3]}. Only CreateOption.Attach is supported.")
        managed = dict(os_disk.get("managedDisk") or {})
        managed["id"] = disk_id
        managed.setdefault("storageAccountType", "Standard_LRS")
        os_disk.update(name=disk_name, managedDisk=managed,
                       diskSizeGB=os_disk.get("diskSizeGB") or 30)
        profile.pop("adminPassword", None)
        profile.pop("customData", None)
        profile.setdefault("secrets", [])
        profile.setdefault("allowExtensionOperations", True)
        image_ref = dict(ref)
        if ref.get("publisher"):
            versions = self.images[(location, ref["publisher"].lower(), ref["offer"].lower(),
                                    ref["sku"].lower())]
            image_ref["exactVersion"] = versions.get(str(ref["version"]).lower()) or max(
                versions.values())
        doc = {
            "name": name, "id": rid, "type": "Microsoft.Compute/virtualMachines",
            "location": location, "tags": dict(tags),
            "properties": {
                "vmId": str(uuid.uuid4()), "hardwareProfile": {"vmSize": size},
                "storageProfile": {"imageReference": image_ref, "osDisk": os_disk,
                                   "dataDisks": []},
                "osProfile": profile,
                "networkProfile": {"networkInterfaces": [{"id": n["id"]} for n in nics]},
                "provisioningState": "Creating", "timeCreated": iso(now),
            },
        }
        self.resources[key] = doc
        self.meta[key] = Meta(ready_at=now + self.provision_s)
        self.resources[disk_id.lower()] = {
            "id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks",
            "location": location, "managedBy": rid, "tags": {},
            "sku": {"name": managed["storageAccountType"]},
            "properties": {"osType": "Linux", "diskSizeGB": os_disk["diskSizeGB"],
                           "creationData": {"createOption": "FromImage", "imageReference": ref},
                           "diskState": "Attached", "provisioningState": "Succeeded",
                           "timeCreated": iso(now)}}
        for n in nics:
            self.resources[n["id"].lower()]["properties"]["virtualMachine"] = {"id": rid}
        return 201, self._async_headers(location, now, now + self.provision_s, req), \
            self._render_vm(doc)

    def _async_headers(self, location: str, start: float, done: float,
                       req: Req) -> dict[str, str]:
        op = str(uuid.uuid4())
        self._ops[op] = (start, done)
        url = (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/"
               f"locations/{location}/operations/{op}?api-version={req.query['api-version']}")
        return {"Azure-AsyncOperation": url, "Location": url + "&monitor=true",
                "Retry-After": "0"}

    # -- network ----------------------------------------------------------------------------

    def _subnet(self, subnet_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        m = re.match(r"^(/subscriptions/[^/]+/resourcegroups/[^/]+/providers/"
                     r"microsoft\.network/virtualnetworks/[^/]+)/subnets/([^/]+)$",
                     subnet_id.lower())
        if not m:
            return None
        vnet = self.resources.get(m.group(1))
        for sub in ((vnet or {}).get("properties") or {}).get("subnets") or []:
            if sub["name"].lower() == m.group(2):
                return vnet or {}, sub
        return None

    def _next_ip(self, subnet: dict[str, Any]) -> str:
        net = ipaddress.ip_network(subnet["properties"].get("addressPrefix") or "10.0.0.0/24",
                                   strict=False)
        used = {((c.get("properties") or {}).get("privateIPAddress"))
                for n in self.resources.values()
                for c in (n.get("properties") or {}).get("ipConfigurations") or []}
        for host in itertools.islice(net.hosts(), 3, None):  # Azure reserves .1-.3
            if str(host) not in used:
                return str(host)
        raise invalid(f"Subnet {subnet['name']} has no free address.", "SubnetIsFull")

    def _put_nic(self, req: Req, rid: str) -> tuple[int, dict[str, str], Any]:
        body = req.json if isinstance(req.json, dict) else {}
        location = loc_name(body.get("location", ""))
        if location not in self.locations:
            raise invalid(f"The provided location '{body.get('location')}' is not available.",
                          "LocationNotAvailableForResourceType")
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        if not configs:
            raise invalid("Network interface must have at least one IP configuration.",
                          "NetworkInterfaceMustHaveAtLeastOneIpConfiguration")
        key = rid.lower()
        old = self.resources.get(key)
        old_ips = [(c.get("properties") or {}).get("privateIPAddress")
                   for c in ((old or {}).get("properties") or {}).get("ipConfigurations") or []]
        out_configs = []
        for n, conf in enumerate(configs):
            cprops = dict(conf.get("properties") or {})
            subnet_id = str((cprops.get("subnet") or {}).get("id", ""))
            found = self._subnet(subnet_id)
            if found is None or loc_name(found[0].get("location", "")) != location:
                raise invalid(f"Resource {subnet_id} referenced by resource {rid} was not found. "
                              f"Please make sure that the referenced resource exists, and that "
                              f"both resources are in the same region.",
                              "InvalidResourceReference")
            pub = (cprops.get("publicIPAddress") or {}).get("id")
            if pub and str(pub).lower() not in self.resources:
                raise invalid(f"Resource {pub} referenced by resource {rid} was not found.",
                              "InvalidResourceReference")
            cname = conf.get("name") or f"ipconfig{n + 1}"
            cprops.update(provisioningState="Succeeded", primary=n == 0,
                          privateIPAddressVersion="IPv4",
                          privateIPAddress=(old_ips[n] if n < len(old_ips) and old_ips[n]
                                            else self._next_ip(found[1])))
            out_configs.append({"name": cname, "id": f"{rid}/ipConfigurations/{cname}",
                                "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                                "properties": cprops})
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "resourceGuid": ((old or {}).get("properties") or {}).get("resourceGuid")
            or str(uuid.uuid4()),
            "ipConfigurations": out_configs, "dnsSettings": {"dnsServers": [],
                                                             "appliedDnsServers": []},
            "enableIPForwarding": False, "primary": True,
        }
        if old and old["properties"].get("virtualMachine"):
            props["virtualMachine"] = old["properties"]["virtualMachine"]
        doc = {"name": req.parts[7], "id": rid, "etag": f'W/"{uuid.uuid4()}"',
               "location": location, "tags": body.get("tags") or {}, "properties": props,
               "type": "Microsoft.Network/networkInterfaces"}
        self.resources[key] = doc
        return (200 if old else 201), {}, copy.deepcopy(doc)

    def _put_pip(self, req: Req, rid: str) -> tuple[int, dict[str, str], Any]:
        body = req.json if isinstance(req.json, dict) else {}
        location = loc_name(body.get("location", ""))
        if location not in self.locations:
            raise invalid(f"The provided location '{body.get('location')}' is not available.",
                          "LocationNotAvailableForResourceType")
        key = rid.lower()
        old = self.resources.get(key)
        n = next(self._ip_seq)
        address = ((old or {}).get("properties") or {}).get("ipAddress") or \
            f"20.42.{n // 250}.{n % 250 + 1}"
        props = dict(body.get("properties") or {})
        props.update(provisioningState="Succeeded", publicIPAddressVersion="IPv4",
                     ipAddress=address, idleTimeoutInMinutes=4)
        doc = {"name": req.parts[7], "id": rid, "location": location,
               "tags": body.get("tags") or {},
               "sku": {"name": (body.get("sku") or {}).get("name") or "Basic"},
               "type": "Microsoft.Network/publicIPAddresses", "properties": props}
        self.resources[key] = doc
        return (200 if old else 201), {}, copy.deepcopy(doc)

    # -- DELETE -----------------------------------------------------------------------------

    def _delete(self, rtype: str, rid: str) -> tuple[int, dict[str, str], Any]:
        key = rid.lower()
        doc = self.resources.get(key)
        if doc is None:
            return 204, {}, None
        if rtype == VM:
            meta = self.meta.setdefault(key, Meta())
            now = time.time()
            if meta.gone_at is None:
                meta.gone_at = now + self.delete_s
            location = loc_name(doc.get("location", ""))
            req = Req("DELETE", rid, [], [], {"api-version": "2021-11-01"}, {}, b"")
            return 202, self._async_headers(location, now, meta.gone_at, req), None
        if rtype == NIC:
            vm = (doc["properties"].get("virtualMachine") or {}).get("id")
            if vm and vm.lower() in self.resources:
                raise invalid(f"Network Interface {rid} is used by existing resource {vm}. In "
                              f"order to delete the network interface, it must be dissociated "
                              f"from the resource.", "NicInUse")
        if rtype == PIP:
            for other in self.resources.values():
                for conf in (other.get("properties") or {}).get("ipConfigurations") or []:
                    pub = ((conf.get("properties") or {}).get("publicIPAddress") or {}).get("id")
                    if pub and pub.lower() == key and self._type(other["id"].lower()) == NIC:
                        raise invalid(f"Public IP address {rid} can not be deleted since it is "
                                      f"still allocated to resource {conf.get('id')}.",
                                      "PublicIPAddressCannotBeDeleted")
        if rtype == DISK:
            owner = doc.get("managedBy")
            if owner and owner.lower() in self.resources:
                raise ArmError(409, "OperationNotAllowed", f"Disk {doc['name']} is attached to "
                               f"VM {owner}.")
        del self.resources[key]
        return 200, {}, None


# --------------------------------------------------------------------------- the driver side


class FakeArmConnection(AzureResourceManagementConnection):
    """libcloud's ARM connection, honouring the scheme and port of ``cloud_environment``'s URLs
    (libcloud's own always uses https on port 443), for ARM and the Azure AD token alike."""

    def __init__(self, key: Any, secret: Any, secure: bool = True, tenant_id: Any = None,
                 subscription_id: Any = None, cloud_environment: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(key, secret, secure=secure, tenant_id=tenant_id,
                         subscription_id=subscription_id, cloud_environment=cloud_environment,
                         **kwargs)
        arm = urllib.parse.urlsplit(cloud_environment["resourceManagerEndpointUrl"])
        self.secure = 1 if arm.scheme == "https" else 0
        self.host, self.port = arm.hostname, arm.port or (443 if self.secure else 80)
        login = urllib.parse.urlsplit(cloud_environment["activeDirectoryEndpointUrl"])
        self._login = (login.hostname, login.port or (443 if login.scheme == "https" else 80),
                       login.scheme == "https")

    def get_token_from_credentials(self) -> None:
        host, port, secure = self._login
        conn = self.conn_class(host, port, secure=secure, timeout=self.timeout)
        conn.connect()
        params = urlencode({"grant_type": "client_credentials", "client_id": self.user_id,
                            "client_secret": self.key, "resource": self.login_resource})
        headers = {"Content-type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/%s/oauth2/token" % self.tenant_id, params, headers)
        answer: Any = AzureAuthJsonResponse(conn.getresponse(), conn).object
        self.access_token = answer["access_token"]
        self.expires_on = answer["expires_on"]


class FakeArmNodeDriver(AzureNodeDriver):
    connectionCls = FakeArmConnection


def register() -> str:
    """Make ``get_driver(DRIVER_NAME)`` return :class:`FakeArmNodeDriver`; returns the name."""
    try:
        set_driver(DRIVER_NAME, __name__, "FakeArmNodeDriver")  # type: ignore[arg-type]
    except AttributeError:
        pass  # already registered
    return DRIVER_NAME


@hookimpl
def imm_register_providers(registry: Any) -> None:
    """Inside immd: register the driver (no provider of its own)."""
    register()


def install(where: Path) -> dict[str, str]:
    """Make immd load this module as plugin ``azure_fake``; returns the env to start it with."""
    dist = where / "imm_test_azure_fake-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imm-test-azure-fake\n"
                                   "Version: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[imm]\nazure_fake = {__name__}\n")
    root = Path(__file__).resolve().parent.parent  # tests/
    if "." in __name__ and __name__.split(".")[0] == "tests":
        root = root.parent
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(where), str(root)] + ([old] if old else []))}
