"""A small, stateful fake of OpenStack (keystone v3, nova v2.1, glance v2, a sliver of neutron)
served over real HTTP on 127.0.0.1, for testing libcloud's real ``OpenStack_2_NodeDriver``.

Why a fake: no OpenStack emulator installs and runs on a single machine here (mimic, the one
candidate, only speaks keystone v2 and breaks on image creation; devstack is a whole cloud). So
this speaks the real wire protocol (paths, JSON bodies, status codes, headers, paging links,
token handling) to the unchanged driver, and keeps its state consistent: servers that are created
show up in lists and gets, deleted ones vanish, metadata written is read back.

Its state is seeded from the responses libcloud itself recorded from real OpenStack APIs, read
from the installed wheel with ``importlib.resources`` (never copied into this repository):

- keystone ``POST /v3/auth/tokens``: ``openstack/_v3__auth.json`` (token, roles, user, project,
  catalog); the token is returned in ``X-Subject-Token`` with a far expiry (``token_ttl_s``), the
  user/project renamed to the fake's and the catalog's endpoints pointed at this server, one set
  per region, with the service names libcloud looks up (nova, glance, neutron).
- nova servers: ``openstack_v1_1/_servers_detail.json`` (two recorded servers: ``lc-test``, a
  pet in the fake's project, and ``lc-test-2``, which stays in its recorded project and is only
  listed with ``all_tenants``); created servers are built from the recorded server
  ``_servers_26f7fbee_8ce1_4c28_887a_bfe8e4bb10fe.json`` and answered like
  ``_servers_create.json`` (202, ``Location``, ``adminPass``).
- nova flavors: ``_flavors_detail.json``; server metadata: the shape of
  ``_servers_12063_metadata_two_keys.json``; errors: the shape of ``_os_keypairs_not_found.json``
  (``{"itemNotFound": {"message", "code"}}``, ``badRequest``, ``forbidden``, ...).
- glance images: ``_images_v2.json`` + ``_images_v2_page2.json``; new images are built from the
  first recorded image.
- neutron networks: ``_v2_0__networks.json`` (``net1``, ``net2``).

What it serves (every path also under ``/regions/<name>`` for regions after the first):

- ``POST /v3/auth/tokens`` (password method, project scope; 401 on a wrong password).
- ``GET /v2/<project>/servers``, ``.../servers/detail`` with nova's paging (``limit``, ``marker``,
  ``servers_links`` whenever a page is full; ``max_limit`` caps a page) and filters ``name``
  (a regular expression, as nova has it), ``status``, ``image``, ``flavor``, ``all_tenants``;
  ``POST /servers`` (validates image, flavor, networks, metadata like nova, 409 when the network
  is ambiguous), ``GET``/``DELETE /servers/<id>``, ``/servers/<id>/metadata[/<key>]``,
  ``POST /servers/<id>/action`` (createImage, os-stop, os-start, reboot), ``/flavors[/detail]``,
  ``/flavors/<id>``. ``/v2.1/<project>`` works the same.
- ``GET /v2/images`` (``limit``, ``marker``, ``name``, ``status``; glance's ``next`` link),
  ``GET``/``DELETE /v2/images/<id>``.
- ``GET /v2.0/networks`` (``name`` and ``id`` filters).
- Anything else: 404 with nova's ``itemNotFound`` body; a known path with another method: 405.

Servers go ``BUILD`` -> ``ACTIVE`` (with a fixed IPv4 address on their network) ``build_s``
after creation, or to ``ERROR`` with the recorded fault (details "No valid host was found.") while
``error_builds`` is above zero; a deleted server is listed with task state ``deleting`` for
``delete_s`` and then is gone. Every request but the token request is checked for a live token
of the right project (401 otherwise).

Test controls: ``calls`` (a Counter of operation names such as ``nova.servers.create``),
``requests`` (everything received), ``fail(op, ...)`` (answer an operation with an error, or act
and then answer too late), ``revoke_tokens()``, ``add_image()``, ``servers()``, ``settle()``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

FIXTURES = resources.files("libcloud") / "test" / "compute" / "fixtures"
NOT_FOUND_MESSAGE = "The resource could not be found."
METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")  # nova's metadata key pattern
MAX_METADATA_ITEMS = 128  # nova's default quota
GLANCE_DEFAULT_LIMIT = 25


def fixture(group: str, name: str) -> Any:
    """One recorded response from the installed apache-libcloud wheel."""
    return json.loads((FIXTURES / group / name).read_text())


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HTTPFailure(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def nova_error(status: int, message: str) -> HTTPFailure:
    kind = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
            409: "conflictingRequest", 413: "overLimit"}.get(status, "computeFault")
    return HTTPFailure(status, {kind: {"message": message, "code": status}})


def unauthorized() -> HTTPFailure:
    return HTTPFailure(401, {"error": {"code": 401, "title": "Unauthorized", "message":
                                       "The request you have made requires authentication."}},
                       {"WWW-Authenticate": "Keystone uri=\"/v3\""})


def glance_error(status: int, message: str) -> HTTPFailure:
    # glance answers through webob; asked for JSON it gives this shape
    titles = {400: "Bad Request", 404: "Not Found", 409: "Conflict"}
    title = titles.get(status, "Error")
    return HTTPFailure(status, {"message": f"{message}<br /><br />\n\n\n",
                                "code": f"{status} {title}", "title": title})


@dataclass
class Token:
    value: str
    expires: float
    project_id: str
    user_id: str


@dataclass
class Fault:
    op: str
    status: int | None
    body: Any
    headers: dict[str, str]
    times: int
    hold_s: float
    echo: bool


@dataclass
class Request:
    method: str
    path: str  # without the region prefix
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    region: Region
    match: dict[str, str]
    base: str  # scheme://host:port[/regions/<name>]

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise nova_error(400, "Malformed request body") from None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Region:
    name: str
    prefix: str
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> nova body
    order: dict[str, int] = field(default_factory=dict)  # id -> creation sequence
    ready_at: dict[str, float] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)  # id -> gone at
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_order: dict[str, int] = field(default_factory=dict)
    flavors: list[dict[str, Any]] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)
    ips: int = 10


Handler = Callable[["FakeOpenStack", Request], tuple[int, Any, dict[str, str]]]


class FakeOpenStack:
    """Start with ``FakeOpenStack(...).start()`` (or as a context manager); ``url`` is the root
    (keystone; nova, glance and neutron of the first region); ``compute_url(region)``,
    ``image_url(region)``, ``network_url(region)`` are what a driver is pointed at."""

    def __init__(self, *, username: str = "imm", password: str = "imm-Secret-Passw0rd",
                 project: str = "imm-project", domain: str = "Default",
                 regions: tuple[str, ...] = ("RegionOne",), token_ttl_s: float = 86400.0,
                 max_limit: int = 1000, build_s: float = 0.0, delete_s: float = 0.0) -> None:
        self.username, self.password, self.project, self.domain = (username, password, project,
                                                                   domain)
        self.token_ttl_s, self.max_limit = token_ttl_s, max_limit
        self.build_s, self.delete_s = build_s, delete_s
        self.error_builds = 0  # the next N servers created end in ERROR (no valid host)
        auth = fixture("openstack", "_v3__auth.json")["token"]
        self.project_id: str = auth["project"]["id"]
        self.user_id: str = auth["user"]["id"]
        self._auth_template = auth
        self.lock = threading.RLock()
        self.tokens: dict[str, Token] = {}
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.faults: list[Fault] = []
        self._seq = 0
        self.regions: dict[str, Region] = {}
        for i, name in enumerate(regions):
            region = Region(name, "" if i == 0 else f"/regions/{name}")
            self.regions[name] = region
            self._seed(region)
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOpenStack:
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True,
                         name="fake-openstack").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeOpenStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints and controls

    def _root(self, region: str | None = None) -> str:
        r = self.regions[region] if region else next(iter(self.regions.values()))
        return self.url + r.prefix

    def compute_url(self, region: str | None = None) -> str:
        return f"{self._root(region)}/v2/{self.project_id}"

    def image_url(self, region: str | None = None) -> str:
        return self._root(region)

    def network_url(self, region: str | None = None) -> str:
        return self._root(region)

    def fail(self, op: str, status: int | None = 503, body: Any = None, *, times: int = 1,
             hold_s: float = 0.0, echo: bool = False,
             headers: dict[str, str] | None = None) -> None:
        """The next ``times`` calls of ``op`` answer ``status`` with ``body`` (default: an
        OpenStack-style error); with ``hold_s`` the call is carried out and its answer sent
        ``hold_s`` late instead; ``echo`` puts the request's body and headers into the error
        (a server that reflects what it was sent, credentials included)."""
        with self.lock:
            self.faults.append(Fault(op, status, body, dict(headers or {}), times, hold_s, echo))

    def revoke_tokens(self) -> None:
        """Keystone forgets every token (restart with rotated keys, revocation)."""
        with self.lock:
            self.tokens.clear()

    def add_image(self, name: str, region: str | None = None, status: str = "active",
                  **properties: Any) -> str:
        """A glance image as a baker (Packer's openstack builder) leaves it."""
        r = self.regions[region] if region else next(iter(self.regions.values()))
        with self.lock:
            return self._new_image(r, name, status, properties)

    def settle(self) -> None:
        """Let time pass: every server still building finishes, every deleted one is gone."""
        with self.lock:
            for r in self.regions.values():
                r.ready_at = dict.fromkeys(r.ready_at, 0.0)
                r.deleting = dict.fromkeys(r.deleting, 0.0)
                self._tick(r)

    def servers(self, region: str | None = None, all_tenants: bool = False
                ) -> list[dict[str, Any]]:
        """The live servers of a region as nova would list them (deep copies)."""
        r = self.regions[region] if region else next(iter(self.regions.values()))
        with self.lock:
            self._tick(r)
            return [{k: copy.deepcopy(v) for k, v in s.items() if not k.startswith("_")}
                    for s in self._sorted_servers(r)
                    if all_tenants or s["tenant_id"] == self.project_id]

    # ------------------------------------------------------------------ seeding

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _seed(self, r: Region) -> None:
        for raw in fixture("openstack_v1_1", "_servers_detail.json")["servers"]:
            server = copy.deepcopy(raw)
            server["id"] = str(server.pop("uuid", None) or server["id"])
            if server["name"] == "lc-test":  # a pet in our project
                server["tenant_id"] = self.project_id
            server["metadata"] = dict(server.get("metadata") or {})
            r.servers[server["id"]] = server
            r.order[server["id"]] = self._next()
        for name in ("_images_v2.json", "_images_v2_page2.json"):
            for raw in fixture("openstack_v1_1", name)["images"]:
                r.images[raw["id"]] = copy.deepcopy(raw)
                r.image_order[raw["id"]] = self._next()
        for raw in fixture("openstack_v1_1", "_flavors_detail.json")["flavors"]:
            flavor = copy.deepcopy(raw)
            flavor["id"] = str(flavor["id"])
            r.flavors.append(flavor)
        for raw in fixture("openstack_v1_1", "_v2_0__networks.json")["networks"]:
            net = copy.deepcopy(raw)
            net["project_id"] = net["tenant_id"] = self.project_id
            r.networks.append(net)

    def _new_image(self, r: Region, name: str, status: str, properties: dict[str, Any]) -> str:
        template = fixture("openstack_v1_1", "_images_v2.json")["images"][0]
        image = copy.deepcopy(template)
        image_id = str(uuid.uuid4())
        stamp = now_iso()
        image.update({
            "id": image_id, "name": name, "status": status, "visibility": "private",
            "owner": self.project_id, "owner_id": self.project_id, "user_id": self.user_id,
            "created_at": stamp, "updated_at": stamp, "tags": [], "image_type": "image",
            "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file",
            "checksum": hashlib.md5(image_id.encode(), usedforsecurity=False).hexdigest(),
            "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(image_id.encode()).hexdigest(),
            "locations": [], "direct_url": f"file:///var/lib/glance/images/{image_id}",
        })
        for key in ("instance_uuid", "base_image_ref", "image_location", "image_state"):
            image.pop(key, None)
        image.update(properties)
        r.images[image_id] = image
        r.image_order[image_id] = self._next()
        return image_id

    # ------------------------------------------------------------------ HTTP plumbing

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        path = parts.path.rstrip("/") or "/"
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self.lock:
            self.requests.append((h.command, h.path, headers, body))
        region = next(iter(self.regions.values()))
        m = re.match(r"^/regions/([^/]+)(/.*)$", path)
        if m and m.group(1) in self.regions:
            region, path = self.regions[m.group(1)], m.group(2)
        host = headers.get("host") or self.url.split("//", 1)[1]
        base = f"http://{host}{region.prefix}"
        hold = 0.0
        try:
            op, handler, match = self._route(h.command, path, region)
            req = Request(h.command, path, parse_qs(parts.query, keep_blank_values=True),
                          headers, body, region, match, base)
            with self.lock:
                self.calls[op] += 1
                fault = next((f for f in self.faults if f.op == op and f.times > 0), None)
                if fault is not None:
                    fault.times -= 1
            if fault is not None and not fault.hold_s:
                raise self._fault_failure(fault, req)
            if op != "keystone.auth":
                self._check_token(req)
            with self.lock:
                self._tick(region)
                status, obj, extra = handler(self, req)
            if fault is not None:
                hold = fault.hold_s
        except HTTPFailure as exc:
            status, obj, extra = exc.status, exc.body, exc.headers
        if hold:
            time.sleep(hold)
        self._reply(h, status, obj, extra)

    def _fault_failure(self, fault: Fault, req: Request) -> HTTPFailure:
        status = fault.status or 503
        if fault.body is not None:
            body = fault.body
        else:
            message = {429: "Rate limit exceeded", 500: "Internal Server Error",
                       503: "Service Unavailable"}.get(status, "injected failure")
            if fault.echo:
                message += f" (request was {req.body.decode(errors='replace')} with headers " \
                           f"{json.dumps(req.headers)})"
            service = fault.op.split(".", 1)[0]
            if service == "keystone":
                body = {"error": {"code": status, "title": message, "message": message}}
            elif service == "glance":
                body = glance_error(status, message).body
            elif service == "neutron":
                body = {"NeutronError": {"type": "HTTPError", "message": message, "detail": ""}}
            else:
                body = nova_error(status, message).body
        return HTTPFailure(status, body, fault.headers)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str]) -> None:
        if obj is None or status == 204:
            data = b""
        elif isinstance(obj, bytes | str):
            data = obj.encode() if isinstance(obj, str) else obj
        else:
            data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            ctype = headers.pop("Content-Type", "application/json")
            if data:
                h.send_header("Content-Type", ctype)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.send_header("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        except OSError:
            pass  # the client gave up (a held answer): that is what the test wanted

    def _route(self, method: str, path: str, region: Region) -> tuple[str, Handler, dict[str, str]]:
        allowed = False
        for m, pattern, op, handler in ROUTES:
            found = pattern.fullmatch(path)
            if not found:
                continue
            if op == "keystone.auth" and region.prefix:
                continue
            if m != method:
                allowed = True
                continue
            return op, handler, {k: v for k, v in found.groupdict().items() if v is not None}
        if allowed:
            raise nova_error(405, "The method specified is not allowed for this resource.")
        raise nova_error(404, NOT_FOUND_MESSAGE)

    def _check_token(self, req: Request) -> None:
        token = self.tokens.get(req.headers.get("x-auth-token", ""))
        if token is None or token.expires < time.time():
            raise unauthorized()
        pid = req.match.get("project")
        if pid is not None and pid != token.project_id:
            raise nova_error(400, f"Malformed request URL: URL's project_id '{pid}' doesn't "
                                  f"match Context's project_id '{token.project_id}'")

    def _tick(self, r: Region) -> None:
        """Advance time: servers finish building, deleted ones go away."""
        now = time.monotonic()
        for sid, ready in list(r.ready_at.items()):
            server = r.servers.get(sid)
            if server is None or now < ready:
                continue
            del r.ready_at[sid]
            if server["status"] == "BUILD" and server.pop("_error", False):
                recorded = fixture("openstack_v1_1", "_servers_detail.json")["servers"]
                fault = next(s["fault"] for s in recorded if "fault" in s)
                server.pop("_networks", None)
                server.update({"status": "ERROR", "OS-EXT-STS:vm_state": "error",
                               "OS-EXT-STS:task_state": None, "updated": now_iso(),
                               "fault": {**fault, "instance_uuid": sid, "created": now_iso()}})
            elif server["status"] == "BUILD":
                self._activate(r, server)
        for sid, gone in list(r.deleting.items()):
            if now >= gone:
                del r.deleting[sid]
                r.servers.pop(sid, None)

    def _activate(self, r: Region, server: dict[str, Any]) -> None:
        nets = server.pop("_networks", None) or [r.networks[0]["id"]]
        addresses = {}
        for net_id in nets:
            net = next(n for n in r.networks if n["id"] == net_id)
            r.ips += 1
            index = r.networks.index(net) + 1
            mac = "fa:16:3e:%02x:%02x:%02x" % (index, r.ips // 256 % 256, r.ips % 256)
            addresses[net["name"]] = [{"version": 4, "addr": f"10.{index}.{r.ips // 250}."
                                                             f"{r.ips % 250 + 2}",
                                       "OS-EXT-IPS:type": "fixed",
                                       "OS-EXT-IPS-MAC:mac_addr": mac}]
        server.update({
            "status": "ACTIVE", "addresses": addresses, "progress": 100, "updated": now_iso(),
            "hostId": hashlib.sha224(f"{self.project_id}compute-1".encode()).hexdigest(),
            "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:task_state": None,
            "OS-EXT-STS:power_state": 1,
        })

    def _sorted_servers(self, r: Region) -> list[dict[str, Any]]:
        # nova's default order: created_at desc, id desc
        return sorted(r.servers.values(), key=lambda s: r.order[s["id"]], reverse=True)

    def _server(self, req: Request) -> dict[str, Any]:
        server = req.region.servers.get(req.match["id"])
        if server is None or server["tenant_id"] != self.project_id:
            raise nova_error(404, f"Instance {req.match['id']} could not be found.")
        return server

    def _view(self, req: Request, server: dict[str, Any]) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in server.items() if not k.startswith("_")}
        sid = server["id"]
        out["links"] = [
            {"href": f"{req.base}/v2/{server['tenant_id']}/servers/{sid}", "rel": "self"},
            {"href": f"{req.base}/{server['tenant_id']}/servers/{sid}", "rel": "bookmark"}]
        if sid in req.region.deleting:
            out["OS-EXT-STS:task_state"] = "deleting"
        return out


# ---------------------------------------------------------------------- keystone


def auth_tokens(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    body = req.json()
    try:
        ident = body["auth"]["identity"]
        user = ident["password"]["user"]
        ok = ("password" in ident["methods"] and user["name"] == fake.username
              and user["password"] == fake.password
              and (user.get("domain") or {}).get("name") == fake.domain)
        scope = body["auth"].get("scope", {}).get("project", {})
        pdomain = scope.get("domain") or {}
        scoped = scope.get("name") == fake.project and (
            pdomain.get("id") == "default" or pdomain.get("name") == fake.domain)
    except (KeyError, TypeError):
        raise HTTPFailure(400, {"error": {"code": 400, "title": "Bad Request", "message":
                                          "Expecting to find identity in auth."}}) from None
    if not ok:
        raise HTTPFailure(401, {"error": {"code": 401, "title": "Unauthorized", "message":
                                          "The request you have made requires authentication."}})
    if not scoped:
        raise HTTPFailure(401, {"error": {"code": 401, "title": "Unauthorized", "message":
                                          f"User {fake.user_id} has no access to project "
                                          f"{scope.get('name')}"}})
    value = "gAAAAA" + secrets.token_urlsafe(90)
    expires = time.time() + fake.token_ttl_s
    fake.tokens[value] = Token(value, expires, fake.project_id, fake.user_id)
    token = copy.deepcopy(fake._auth_template)
    stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    token.update({"expires_at": stamp,
                  "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")})
    token["user"]["name"] = fake.username
    token["project"]["name"] = fake.project
    catalog = []
    for entry in token["catalog"]:
        kind = entry["type"]
        names = {"compute": "nova", "image": "glance", "network": "neutron",
                 "identity": "keystone", "volume": "cinder", "volumev2": "cinderv2"}
        endpoints = []
        for region in fake.regions.values():
            root = fake.url + region.prefix
            url = {"compute": f"{root}/v2/{fake.project_id}", "image": root, "network": root,
                   "identity": f"{fake.url}/v3"}.get(kind, f"{root}/unavailable/{kind}")
            for interface in ("public", "internal", "admin"):
                endpoints.append({"id": uuid.uuid4().hex, "interface": interface,
                                  "region": region.name, "region_id": region.name, "url": url})
        catalog.append({**entry, "name": names.get(kind, kind), "endpoints": endpoints})
    token["catalog"] = catalog
    return 201, {"token": token}, {"X-Subject-Token": value}


# ---------------------------------------------------------------------- nova


def _page(items: list[dict[str, Any]], req: Request, limit_cap: int,
          default_limit: int) -> tuple[list[dict[str, Any]], int, bool]:
    limit_arg = req.arg("limit")
    try:
        limit = min(int(limit_arg), limit_cap) if limit_arg is not None else default_limit
    except ValueError:
        raise nova_error(400, "limit param must be an integer") from None
    if limit < 0:
        raise nova_error(400, "limit param must be positive")
    marker = req.arg("marker")
    start = 0
    if marker is not None:
        ids = [i["id"] for i in items]
        if marker not in ids:
            raise nova_error(400, f"marker [{marker}] not found")
        start = ids.index(marker) + 1
    page = items[start:start + limit]
    return page, limit, len(page) == limit and limit > 0


def _next_link(req: Request, key: str, page: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    query = {k: v[0] for k, v in req.query.items() if k not in ("marker", "limit")}
    query.update(limit=str(limit), marker=page[-1]["id"])
    return {f"{key}_links": [{"rel": "next",
                              "href": f"{req.base}{req.path}?{urlencode(query)}"}]}


def servers_list(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    r = req.region
    all_tenants = "all_tenants" in req.query and (req.arg("all_tenants") or "1").lower() not in (
        "0", "false", "no")
    items = [s for s in fake._sorted_servers(r)
             if all_tenants or s["tenant_id"] == fake.project_id]
    name = req.arg("name")
    if name:
        try:
            pattern = re.compile(name)
        except re.error:
            raise nova_error(400, f"Invalid regular expression {name!r}") from None
        items = [s for s in items if pattern.search(s["name"])]
    status = req.arg("status")
    if status:
        items = [s for s in items if s["status"].upper() == status.upper()]
    for arg, get in (("image", lambda s: (s.get("image") or {}).get("id")),
                     ("flavor", lambda s: (s.get("flavor") or {}).get("id"))):
        value = req.arg(arg)
        if value:
            items = [s for s in items if str(get(s)) == value]
    page, limit, full = _page(items, req, fake.max_limit, fake.max_limit)
    detail = req.path.endswith("/detail")
    views = [fake._view(req, s) if detail else
             {"id": s["id"], "name": s["name"], "links": fake._view(req, s)["links"]}
             for s in page]
    out: dict[str, Any] = {"servers": views}
    if full:
        out.update(_next_link(req, "servers", page, limit))
    return 200, out, {}


def _check_metadata(metadata: Any, existing: int = 0) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise nova_error(400, "Invalid input for field/attribute metadata. Value: "
                              f"{metadata!r}. {metadata!r} is not of type 'object'")
    for k, v in metadata.items():
        if not isinstance(k, str) or not METADATA_KEY.match(k):
            raise nova_error(400, f"Invalid input for field/attribute metadata. Value: "
                                  f"{k!r} does not match any of the regexes")
        if not isinstance(v, str) or len(v) > 255:
            raise nova_error(400, f"Invalid input for field/attribute {k}. Value: {v!r}. "
                                  "is not a string of at most 255 characters")
    if existing + len(metadata) > MAX_METADATA_ITEMS:
        raise nova_error(403, f"Quota exceeded for metadata_items: Requested "
                              f"{len(metadata)}, but already used {existing} of "
                              f"{MAX_METADATA_ITEMS} metadata_items")
    return dict(metadata)


def servers_create(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    r = req.region
    body = req.json()
    spec = body.get("server") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise nova_error(400, "Invalid input for field/attribute server.")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise nova_error(400, "Invalid input for field/attribute name.")
    image_id = spec.get("imageRef")
    image = r.images.get(str(image_id))
    if image is None or image["status"] != "active":
        raise nova_error(400, f"Image {image_id} could not be found.")
    flavor_id = str(spec.get("flavorRef", "")).rsplit("/", 1)[-1]
    flavor = next((f for f in r.flavors if f["id"] == flavor_id), None)
    if flavor is None:
        raise nova_error(400, f"Flavor {spec.get('flavorRef')} could not be found.")
    nets = spec.get("networks")
    if nets is None or nets == []:
        if len(r.networks) > 1:
            raise nova_error(409, "Multiple possible networks found, use a Network ID to be "
                                  "more specific.")
        net_ids = [r.networks[0]["id"]]
    elif nets in ("auto", "none"):
        net_ids = [r.networks[0]["id"]] if nets == "auto" else []
    else:
        net_ids = []
        for n in nets:
            nid = n.get("uuid") if isinstance(n, dict) else None
            if not any(x["id"] == nid for x in r.networks):
                raise nova_error(400, f"Network {nid} could not be found.")
            net_ids.append(nid)
    metadata = _check_metadata(spec.get("metadata", {}))
    if spec.get("user_data") is not None:
        try:
            base64.b64decode(spec["user_data"], validate=True)
        except ValueError:
            raise nova_error(400, "User data needs to be valid base 64.") from None
    template = fixture("openstack_v1_1", "_servers_26f7fbee_8ce1_4c28_887a_bfe8e4bb10fe.json")
    server = copy.deepcopy(template["server"])
    sid = str(uuid.uuid4())
    stamp = now_iso()
    server.update({
        "id": sid, "name": name, "status": "BUILD", "tenant_id": fake.project_id,
        "user_id": fake.user_id, "created": stamp, "updated": stamp, "hostId": "",
        "addresses": {}, "metadata": metadata, "progress": 0,
        "key_name": spec.get("key_name"), "config_drive": "",
        "image": {"id": image["id"], "links": [
            {"href": f"{req.base}/{fake.project_id}/images/{image['id']}", "rel": "bookmark"}]},
        "flavor": {"id": flavor["id"], "links": [
            {"href": f"{req.base}/{fake.project_id}/flavors/{flavor['id']}",
             "rel": "bookmark"}]},
        "OS-EXT-AZ:availability_zone": spec.get("availability_zone") or "nova",
        "OS-EXT-STS:vm_state": "building", "OS-EXT-STS:task_state": "scheduling",
        "OS-EXT-STS:power_state": 0, "OS-DCF:diskConfig": spec.get("OS-DCF:diskConfig", "MANUAL"),
        "security_groups": [{"name": g.get("name", "default")}
                            for g in spec.get("security_groups") or [{"name": "default"}]],
        "accessIPv4": "", "accessIPv6": "", "_networks": net_ids,
    })
    if fake.error_builds > 0:
        fake.error_builds -= 1
        server["_error"] = True
    r.servers[sid] = server
    r.order[sid] = fake._next()
    r.ready_at[sid] = time.monotonic() + fake.build_s
    created = copy.deepcopy(fixture("openstack_v1_1", "_servers_create.json"))
    created["server"].update({
        "id": sid, "adminPass": secrets.token_urlsafe(9),
        "OS-DCF:diskConfig": server["OS-DCF:diskConfig"],
        "security_groups": server["security_groups"],
        "links": fake._view(req, server)["links"]})
    return 202, created, {"Location": created["server"]["links"][0]["href"]}


def servers_get(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    return 200, {"server": fake._view(req, fake._server(req))}, {}


def servers_delete(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    server = fake._server(req)
    r = req.region
    if server["id"] not in r.deleting:
        r.deleting[server["id"]] = time.monotonic() + fake.delete_s
        fake._tick(r)
    return 204, None, {}


def metadata_all(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    server = fake._server(req)
    if req.method == "GET":
        return 200, {"metadata": dict(server["metadata"])}, {}
    body = req.json()
    given = body.get("metadata") if isinstance(body, dict) else None
    if req.method == "PUT":
        server["metadata"] = _check_metadata(given)
    else:  # POST merges
        merged = {**server["metadata"], **_check_metadata(given)}
        server["metadata"] = _check_metadata(merged)
    return 200, {"metadata": dict(server["metadata"])}, {}


def metadata_item(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    server = fake._server(req)
    key = req.match["key"]
    if req.method == "GET":
        if key not in server["metadata"]:
            raise nova_error(404, "Metadata item was not found")
        return 200, {"meta": {key: server["metadata"][key]}}, {}
    if req.method == "DELETE":
        if server["metadata"].pop(key, None) is None:
            raise nova_error(404, "Metadata item was not found")
        return 204, None, {}
    body = req.json()
    meta = body.get("meta") if isinstance(body, dict) else None
    if not isinstance(meta, dict) or list(meta) != [key]:
        raise nova_error(400, "Request body and URI mismatch")
    others = len([k for k in server["metadata"] if k != key])
    server["metadata"][key] = _check_metadata(meta, others)[key]
    return 200, {"meta": dict(meta)}, {}


def servers_action(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    server = fake._server(req)
    body = req.json()
    if not isinstance(body, dict) or len(body) != 1:
        raise nova_error(400, "There is no such action")
    (action, args), = body.items()
    if action == "createImage":
        args = args if isinstance(args, dict) else {}
        props = {k: str(v) for k, v in (args.get("metadata") or {}).items()}
        props.update(image_type="snapshot", instance_uuid=server["id"],
                     base_image_ref=str((server.get("image") or {}).get("id") or ""))
        image_id = fake._new_image(req.region, str(args.get("name") or "snapshot"), "active",
                                   props)
        return 202, {"image_id": image_id}, {"Location": f"{req.base}/v2/images/{image_id}"}
    states = {"os-stop": ("SHUTOFF", "stopped", 4), "os-start": ("ACTIVE", "active", 1),
              "reboot": ("ACTIVE", "active", 1)}
    if action not in states:
        raise nova_error(400, f"There is no such action: {action}")
    status, vm_state, power = states[action]
    server.update({"status": status, "OS-EXT-STS:vm_state": vm_state,
                   "OS-EXT-STS:power_state": power, "updated": now_iso()})
    return 202, None, {}


def flavors_list(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    flavors = sorted(req.region.flavors, key=lambda f: (int(f["id"]) if f["id"].isdigit()
                                                        else 0, f["id"]))
    page, limit, full = _page(flavors, req, fake.max_limit, fake.max_limit)
    detail = req.path.endswith("/detail")
    out: dict[str, Any] = {"flavors": [copy.deepcopy(f) if detail else
                                       {"id": f["id"], "name": f["name"],
                                        "links": f.get("links", [])} for f in page]}
    if full:
        out.update(_next_link(req, "flavors", page, limit))
    return 200, out, {}


def flavors_get(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    flavor = next((f for f in req.region.flavors if f["id"] == req.match["id"]), None)
    if flavor is None:
        raise nova_error(404, f"Flavor {req.match['id']} could not be found.")
    return 200, {"flavor": copy.deepcopy(flavor)}, {}


# ---------------------------------------------------------------------- glance


def images_list(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    r = req.region
    items = sorted(r.images.values(), key=lambda i: r.image_order[i["id"]], reverse=True)
    for arg in ("name", "status", "visibility"):
        value = req.arg(arg)
        if value:
            items = [i for i in items if str(i.get(arg)) == value]
    try:
        page, limit, full = _page(items, req, 1000, GLANCE_DEFAULT_LIMIT)
    except HTTPFailure as exc:
        raise glance_error(400, str(next(iter(exc.body.values()))["message"])) from None
    out: dict[str, Any] = {"images": [copy.deepcopy(i) for i in page],
                           "schema": "/v2/schemas/images", "first": "/v2/images"}
    if full:
        query = {k: v[0] for k, v in req.query.items() if k not in ("marker", "limit")}
        query.update(limit=str(limit), marker=page[-1]["id"])
        out["next"] = f"/v2/images?{urlencode(query)}"
    return 200, out, {}


def images_get(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    image = req.region.images.get(req.match["id"])
    if image is None:
        raise glance_error(404, f"No image found with ID {req.match['id']}")
    return 200, copy.deepcopy(image), {}


def images_delete(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    if req.region.images.pop(req.match["id"], None) is None:
        raise glance_error(404, f"Failed to find image {req.match['id']} to delete")
    return 204, None, {}


# ---------------------------------------------------------------------- neutron


def networks_list(fake: FakeOpenStack, req: Request) -> tuple[int, Any, dict[str, str]]:
    nets = req.region.networks
    for arg in ("name", "id"):
        values = req.query.get(arg)
        if values:
            nets = [n for n in nets if n[arg] in values]
    return 200, {"networks": copy.deepcopy(nets)}, {}


def _compile(rows: list[tuple[str, str, str, Handler]]
             ) -> list[tuple[str, re.Pattern[str], str, Handler]]:
    return [(m, re.compile(p), op, h) for m, p, op, h in rows]


NOVA = r"/v2(?:\.1)?/(?P<project>(?!images$|schemas$)[^/]+)"
ROUTES = _compile([
    ("POST", r"/v3/auth/tokens", "keystone.auth", auth_tokens),
    ("GET", NOVA + r"/servers(?:/detail)?", "nova.servers.list", servers_list),
    ("POST", NOVA + r"/servers", "nova.servers.create", servers_create),
    ("GET", NOVA + r"/servers/(?P<id>(?!detail$)[^/]+)", "nova.servers.get", servers_get),
    ("DELETE", NOVA + r"/servers/(?P<id>[^/]+)", "nova.servers.delete", servers_delete),
    ("GET", NOVA + r"/servers/(?P<id>[^/]+)/metadata", "nova.metadata.get", metadata_all),
    ("PUT", NOVA + r"/servers/(?P<id>[^/]+)/metadata", "nova.metadata.set", metadata_all),
    ("POST", NOVA + r"/servers/(?P<id>[^/]+)/metadata", "nova.metadata.update", metadata_all),
    ("GET", NOVA + r"/servers/(?P<id>[^/]+)/metadata/(?P<key>[^/]+)", "nova.metadata.get",
     metadata_item),
    ("PUT", NOVA + r"/servers/(?P<id>[^/]+)/metadata/(?P<key>[^/]+)", "nova.metadata.set",
     metadata_item),
    ("DELETE", NOVA + r"/servers/(?P<id>[^/]+)/metadata/(?P<key>[^/]+)", "nova.metadata.delete",
     metadata_item),
    ("POST", NOVA + r"/servers/(?P<id>[^/]+)/action", "nova.servers.action", servers_action),
    ("GET", NOVA + r"/flavors(?:/detail)?", "nova.flavors.list", flavors_list),
    ("GET", NOVA + r"/flavors/(?P<id>(?!detail$)[^/]+)", "nova.flavors.get", flavors_get),
    ("GET", r"/v2/images", "glance.images.list", images_list),
    ("GET", r"/v2/images/(?P<id>[^/]+)", "glance.images.get", images_get),
    ("DELETE", r"/v2/images/(?P<id>[^/]+)", "glance.images.delete", images_delete),
    ("GET", r"/v2\.0/networks", "neutron.networks.list", networks_list),
])
