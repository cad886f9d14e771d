"""A stateful fake of the Google Compute Engine API (compute/v1), served over real HTTP.

No GCE emulator installs and runs on a machine without internet, so the gcp provider is tested
against this fake instead: it speaks the real wire protocol (JSON over HTTP, the same paths,
operations, paging and error bodies as ``https://compute.googleapis.com/compute/v1``) to the
real, unmodified libcloud ``GCENodeDriver``. Its state is seeded from the recorded responses of
the real API that apache-libcloud ships in its wheel (``libcloud/test/compute/fixtures/gce``,
read with ``importlib.resources``, never copied):

- ``zones.json``                             zones (``GET /zones``, ``/zones/Z``)
- ``zones_us-central1-a_machineTypes.json``  machine types, served in every zone
- ``zones_us-central1-a_diskTypes.json``     disk types, served in every zone
- ``global_networks.json``                   networks
- ``global_images.json``                     the project's own images
- ``projects_<p>_global_images.json``        public images (debian-cloud, centos-cloud, ...)
- ``aggregated_instances.json``              pre-existing instances ("pets" imm did not launch)
- ``aggregated_disks.json``                  their disks
- ``project.json``                           the project
- ``regions.json`` (+ ``regions_<r>.json``)  regions (``GET /regions``, ``/regions/R``)
- ``global_httpHealthChecks.json``           legacy HTTP health checks (target pools use them)
- ``aggregated_targetPools.json``, ``regions_us-central1_targetPools[_www-pool].json``
                                             target pools (network load balancing)
- ``regions_us-central1_forwardingRules.json`` forwarding rules (their IPs show in getHealth)

What it keeps consistent: ``instances.insert`` validates the body the way GCE does (name, labels,
metadata keys, machine type, source image), creates the instance (PROVISIONING) and its boot
disk, and answers with a zone operation that the client polls to DONE (the instance is RUNNING
from then on); inserting a name that exists answers 409 ``alreadyExists``. ``instances.delete``
marks the instance STOPPING and removes it (and its auto-delete disks) when its operation is
done. ``setLabels`` / ``setMetadata`` check fingerprints (412 ``conditionNotMet``). Lists page
with ``maxResults`` / ``pageToken`` / ``nextPageToken`` (at most ``page_size`` items a page);
aggregated lists carry a ``NO_RESULTS_ON_PAGE`` warning for empty zones. Every request needs
``Authorization: Bearer <token>`` (401 otherwise). Unknown paths answer 404 with a GCE error
body. Operations complete ``op_delay_s`` after they are created (checked on every request).

Target pools (the ``cloudlb`` router's ``driver = "gce"``): ``GET /regions/R/targetPools[/P]``,
``POST .../addInstance`` / ``.../removeInstance`` (``{"instances": [{"instance": URL}]}``, full or
partial instance URLs, several per call) answer a *regional* operation that is polled to DONE;
membership changes when it is done. The instances must exist (404 otherwise) and lie in a zone
of the pool's region (400). Adding a member twice / removing a non-member answers 400
``memberAlreadyExists`` / ``memberNotFound`` (libcloud ships no recording of either; the names are
those of instanceGroups' answers, and refusing is the stricter of the two possible behaviours).
``POST .../getHealth`` (``{"instance": URL}``) answers one ``healthStatus`` entry per forwarding
rule pointing at the pool (one without ``ipAddress`` when none does): ``HEALTHY`` when the
instance is RUNNING and not marked with :meth:`FakeGCE.set_unhealthy`, ``UNHEALTHY`` otherwise;
a pool without health checks reports every existing instance ``HEALTHY`` (what GCE does); an
instance that does not exist answers 404, one that is not a member 400. Test helpers:
:meth:`FakeGCE.add_target_pool`, :meth:`FakeGCE.pool_members`, :meth:`FakeGCE.set_unhealthy`.

Faults for retry tests: :meth:`FakeGCE.fail` answers chosen requests with an error status (or,
with ``apply=True``, carries the request out and then answers with the error, like a response
lost on the way back). ``calls`` records every request as ``(method, path, query)``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.server
import importlib.resources
import itertools
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# libcloud.test itself cannot be imported (it needs requests_mock): walk to it from libcloud.
FIXTURES = importlib.resources.files("libcloud") / "test" / "compute" / "fixtures" / "gce"
GOOGLE = "https://www.googleapis.com"
API = "/compute/v1/projects/"
FIXTURE_PROJECTS = ("project_name", "project-name", "verb-test")
PUBLIC_IMAGE_PROJECTS = ("centos-cloud", "cos-cloud", "debian-cloud", "opensuse-cloud",
                         "rhel-cloud", "suse-cloud", "ubuntu-os-cloud", "windows-cloud")
DEFAULT_TOKEN = "ya29.fake-gce-access-token-0123456789"  # noqa: S105 - the fake's own token

_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_META_KEY = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_INSTANCE_REF = re.compile(
    r"(?:(?:https?://[^/]+)?/?(?:compute/v1/)?projects/[^/]+/)?"
    r"zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)")


class ApiError(Exception):
    """An error answer: HTTP status, GCE reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "errors": [
            {"domain": "global", "reason": self.reason, "message": self.message}]}}


def not_found(what: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{what}' was not found")


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "-00:00"


def _fingerprint(value: Any) -> str:
    raw = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(raw).decode()


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    reason: str
    times: int
    apply: bool
    delay_s: float
    echo_auth: bool


@dataclass
class Operation:
    body: dict[str, Any]
    done_at: float
    effect: Callable[[], None] | None
    error: dict[str, Any] | None = None  # set on the operation when it is done


class FakeGCE:
    """The fake API server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, project: str = "imm-test", *, page_size: int = 500,
                 op_delay_s: float = 0.0, token: str = DEFAULT_TOKEN) -> None:
        self.project = project
        self.page_size = page_size
        self.op_delay_s = op_delay_s
        self.token = token
        self.lock = threading.RLock()
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.faults: list[Fault] = []
        self.insert_failures: list[tuple[str, str]] = []  # (code, message) for next inserts
        self._ids = itertools.count(7_000_000_000_000_000_000)
        self._ips = itertools.count(2)
        self.zones: dict[str, dict[str, Any]] = {}
        self.machine_types: dict[str, dict[str, Any]] = {}
        self.disk_types: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, dict[str, Any]]] = {}  # project -> name -> image
        self.instances: dict[str, dict[str, dict[str, Any]]] = {}  # zone -> name -> instance
        self.disks: dict[str, dict[str, dict[str, Any]]] = {}  # zone -> name -> disk
        self.operations: dict[str, Operation] = {}  # name -> op (zone or global)
        self.project_resource: dict[str, Any] = {}
        self.regions: dict[str, dict[str, Any]] = {}
        self.health_checks: dict[str, dict[str, Any]] = {}  # legacy httpHealthChecks
        self.target_pools: dict[str, dict[str, dict[str, Any]]] = {}  # region -> name -> pool
        self.forwarding_rules: dict[str, dict[str, dict[str, Any]]] = {}  # region -> name -> rule
        self.unhealthy: set[tuple[str, str]] = set()  # (zone, instance): fails health checks
        self._seed()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ seeding from fixtures

    def _fixture(self, name: str) -> Any:
        text = FIXTURES.joinpath(name).read_text()
        text = text.replace("https://content.googleapis.com/", GOOGLE + "/")
        for p in FIXTURE_PROJECTS:
            text = text.replace(f"projects/{p}/", f"projects/{self.project}/")
            text = text.replace(f"projects/{p}\"", f"projects/{self.project}\"")
        return json.loads(text)

    def _seed(self) -> None:
        for z in self._fixture("zones.json")["items"]:
            self.zones[z["name"]] = z
            self.instances[z["name"]] = {}
            self.disks[z["name"]] = {}
        for m in self._fixture("zones_us-central1-a_machineTypes.json")["items"]:
            self.machine_types[m["name"]] = m
        for d in self._fixture("zones_us-central1-a_diskTypes.json")["items"]:
            self.disk_types[d["name"]] = d
        for n in self._fixture("global_networks.json")["items"]:
            self.networks[n["name"]] = n
        self.images[self.project] = {}
        for img in self._fixture("global_images.json")["items"]:
            img = {k: v for k, v in img.items() if not k.startswith("get")}
            img["selfLink"] = self.image_link(self.project, img["name"])
            self.images[self.project].setdefault(img["name"], img)
        for proj in PUBLIC_IMAGE_PROJECTS:
            self.images[proj] = {i["name"]: i for i in
                                 self._fixture(f"projects_{proj}_global_images.json")["items"]}
        for key, entry in self._fixture("aggregated_disks.json")["items"].items():
            zone = key.split("/")[-1]
            for d in entry.get("disks", []):
                self.disks.setdefault(zone, {})[d["name"]] = d
        for key, entry in self._fixture("aggregated_instances.json")["items"].items():
            zone = key.split("/")[-1]
            for i in entry.get("instances", []):
                self.instances.setdefault(zone, {})[i["name"]] = i
        self.project_resource = self._fixture("project.json")
        self.project_resource["name"] = self.project
        for r in self._fixture("regions.json")["items"]:
            self.regions[r["name"]] = r
        for extra in ("asia-east1", "us-east1"):
            r = self._fixture(f"regions_{extra}.json")
            self.regions.setdefault(r["name"], r)
        for name in self.regions:
            self.target_pools[name] = {}
            self.forwarding_rules[name] = {}
        for hc in self._fixture("global_httpHealthChecks.json")["items"]:
            self.health_checks[hc["name"]] = hc
        # The recordings disagree a little (www-pool has no instances in the aggregated list):
        # the region's list and the single-pool recording win over the aggregated one.
        for key, entry in self._fixture("aggregated_targetPools.json")["items"].items():
            region = key.split("/")[-1]
            for tp in entry.get("targetPools", []):
                self.target_pools.setdefault(region, {})[tp["name"]] = tp
        for tp in [*self._fixture("regions_us-central1_targetPools.json")["items"],
                   self._fixture("regions_us-central1_targetPools_www-pool.json")]:
            self.target_pools["us-central1"][tp["name"]] = tp
        # backup-pool names a health check the recordings do not hold: keep references whole.
        for pools in self.target_pools.values():
            for tp in pools.values():
                for link in tp.get("healthChecks", []):
                    name = link.rstrip("/").split("/")[-1]
                    if name not in self.health_checks:
                        hc = copy.deepcopy(self.health_checks["basic-check"])
                        hc.update(name=name, id=str(next(self._ids)),
                                  selfLink=self.link(f"global/httpHealthChecks/{name}"))
                        self.health_checks[name] = hc
        for fr in self._fixture("regions_us-central1_forwardingRules.json")["items"]:
            self.forwarding_rules["us-central1"][fr["name"]] = fr

    def add_image(self, name: str, *, family: str | None = None,
                  labels: dict[str, str] | None = None, status: str = "READY") -> dict[str, Any]:
        """A new image in the project, shaped like the seeded ``custom-image``."""
        with self.lock:
            template = copy.deepcopy(next(iter(self.images[self.project].values())))
            template.update(name=name, id=str(next(self._ids)), status=status,
                            creationTimestamp=_now(), family=family, labels=labels or {},
                            selfLink=self.image_link(self.project, name),
                            description=f"image {name}")
            if family is None:
                template.pop("family")
            self.images[self.project][name] = template
            return template

    def add_target_pool(self, name: str, region: str = "us-central1", *,
                        health_checks: tuple[str, ...] = ("basic-check",),
                        forwarding_rule: bool = True,
                        instances: tuple[str, ...] = ()) -> dict[str, Any]:
        """A new target pool (and, with ``forwarding_rule``, a TCP forwarding rule to it, whose
        IP getHealth reports). ``instances`` are ``zones/Z/instances/N`` paths or URLs."""
        with self.lock:
            for hc in health_checks:
                if hc not in self.health_checks:
                    raise KeyError(f"no httpHealthCheck {hc}")
            pool = {
                "kind": "compute#targetPool", "id": str(next(self._ids)),
                "creationTimestamp": _now(), "name": name, "description": "",
                "region": self.link(f"regions/{region}"),
                "healthChecks": [self.link(f"global/httpHealthChecks/{hc}")
                                 for hc in health_checks],
                "instances": [self.instance_link(i) for i in instances],
                "sessionAffinity": "NONE",
                "selfLink": self.link(f"regions/{region}/targetPools/{name}"),
            }
            self.target_pools[region][name] = pool
            if forwarding_rule:
                n = next(self._ips)
                self.forwarding_rules[region][f"{name}-rule"] = {
                    "kind": "compute#forwardingRule", "id": str(next(self._ids)),
                    "creationTimestamp": _now(), "name": f"{name}-rule",
                    "IPAddress": f"198.51.100.{n % 250 + 2}", "IPProtocol": "TCP",
                    "portRange": "80-80", "region": self.link(f"regions/{region}"),
                    "target": pool["selfLink"],
                    "selfLink": self.link(f"regions/{region}/forwardingRules/{name}-rule"),
                }
            return pool

    def pool_members(self, name: str, region: str = "us-central1") -> list[str]:
        """The pool's instances as ``zones/Z/instances/N``, in the pool's order."""
        with self.lock:
            self._tick()
            return [self._short(u) for u in self.target_pools[region][name]["instances"]]

    def set_unhealthy(self, zone: str, name: str, unhealthy: bool = True) -> None:
        """Make an instance fail (or pass again) every target pool's health check."""
        with self.lock:
            if unhealthy:
                self.unhealthy.add((zone, name))
            else:
                self.unhealthy.discard((zone, name))

    # ------------------------------------------------------------------ links

    def link(self, path: str) -> str:
        return f"{GOOGLE}{API}{self.project}/{path}"

    def image_link(self, project: str, name: str) -> str:
        return f"{GOOGLE}{API}{project}/global/images/{name}"

    def instance_link(self, ref: str) -> str:
        """``zones/Z/instances/N``, ``projects/P/zones/...`` or a URL -> the full URL."""
        return self.link(self._short(ref))

    @staticmethod
    def _short(ref: str) -> str:
        m = _INSTANCE_REF.fullmatch(str(ref))
        if not m:
            raise invalid(f"Invalid value for field 'resource.instances[0].instance': '{ref}'. "
                          f"The URL is malformed.")
        return f"zones/{m.group('zone')}/instances/{m.group('name')}"

    # ------------------------------------------------------------------ test helpers

    def fail(self, method: str, path_regex: str, status: int = 503,
             reason: str = "backendError", *, times: int = 1, apply: bool = False,
             delay_s: float = 0.0, echo_auth: bool = False) -> None:
        """Answer the next ``times`` requests matching (method, path) with ``status``.

        ``apply=True`` carries the request out first; ``delay_s`` holds the answer back;
        ``echo_auth`` quotes the request's Authorization header in the error message (as some
        proxies do), to check that clients keep credentials out of their own errors."""
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(path_regex), status, reason,
                                     times, apply, delay_s, echo_auth))

    def fail_insert_operation(self, code: str = "QUOTA_EXCEEDED",
                              message: str = "Quota 'CPUS' exceeded.  Limit: 8.0 in region "
                                             "us-central1.") -> None:
        """The next ``instances.insert`` is accepted, but its operation ends with ``code``
        and the instance (and its disk) goes away, as GCE does when creation fails late."""
        with self.lock:
            self.insert_failures.append((code, message))

    def zone_instances(self, zone: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            self._tick()
            return copy.deepcopy(self.instances.get(zone, {}))

    def count(self, method: str, path_regex: str) -> int:
        pat = re.compile(path_regex)
        with self.lock:
            return sum(1 for m, p, _ in self.calls if m == method and pat.search(p))

    @staticmethod
    def metadata(instance: dict[str, Any]) -> dict[str, str]:
        return {i["key"]: i.get("value", "") for i in
                (instance.get("metadata") or {}).get("items", [])}

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGCE:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, delay = fake.handle(method, self.path,
                                                  self.headers.get("Authorization", ""), raw)
                if delay:
                    time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-gce")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGCE:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ dispatch

    def handle(self, method: str, target: str, auth: str,
               raw: bytes) -> tuple[int, Any, float]:
        parts = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(parts.query))
        path = parts.path
        with self.lock:
            self.calls.append((method, path, query))
            self._tick()
            if auth != f"Bearer {self.token}":
                return 401, {"error": {
                    "code": 401, "status": "UNAUTHENTICATED",
                    "message": "Request had invalid authentication credentials. Expected OAuth "
                               "2 access token, login cookie or other valid authentication "
                               "credential.",
                    "errors": [{"domain": "global", "reason": "authError",
                                "message": "Invalid Credentials", "locationType": "header",
                                "location": "Authorization"}]}}, 0.0
            fault = self._fault(method, path)
            injected = None
            if fault is not None:
                injected = ApiError(fault.status, fault.reason, f"fault injected: {fault.reason}"
                                    + (f" (request had Authorization: {auth})"
                                       if fault.echo_auth else ""))
            try:
                if injected is not None and fault is not None and not fault.apply:
                    raise injected
                body = json.loads(raw) if raw else None
                status, answer = self._route(method, path, query, body)
            except ApiError as e:
                return e.status, e.body(), fault.delay_s if fault else 0.0
            except (ValueError, KeyError, TypeError) as e:
                err = invalid(f"Invalid JSON payload received. {type(e).__name__}: {e}")
                return 400, err.body(), 0.0
            if injected is not None and fault is not None:
                return injected.status, injected.body(), fault.delay_s
            return status, answer, 0.0

    def _fault(self, method: str, path: str) -> Fault | None:
        for f in self.faults:
            if f.method == method and f.pattern.search(path) and f.times > 0:
                f.times -= 1
                return f
        return None

    def _route(self, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        if not path.startswith(API):
            raise not_found(path)
        project, _, rest = path[len(API):].partition("/")
        if project != self.project:
            m = re.fullmatch(r"global/images(?:/(family/)?([^/]+))?", rest)
            if method == "GET" and m and project in self.images:
                return self._images(project, bool(m.group(1)), m.group(2), query)
            raise not_found(f"projects/{project}/{rest}")
        where = f"projects/{project}/{rest}"
        seg = rest.split("/") if rest else []
        if method == "GET" and not seg:
            return 200, self.project_resource
        m = re.fullmatch(r"global/images(?:/(family/)?([^/]+))?", rest)
        if m and method == "GET":
            return self._images(project, bool(m.group(1)), m.group(2), query)
        if method == "GET" and rest == "zones":
            return 200, self._list("compute#zoneList", "zones", list(self.zones.values()), query)
        if method == "GET" and rest == "global/networks":
            return 200, self._list("compute#networkList", "global/networks",
                                   list(self.networks.values()), query)
        if method == "GET" and len(seg) == 3 and seg[:2] == ["global", "networks"]:
            return 200, self._get(self.networks, seg[2], where)
        if method == "GET" and len(seg) == 3 and seg[:2] == ["global", "operations"]:
            return 200, self._operation(seg[2], where)
        if method == "GET" and seg[:2] == ["global", "httpHealthChecks"] and len(seg) <= 3:
            if len(seg) == 2:
                return 200, self._list("compute#httpHealthCheckList", "global/httpHealthChecks",
                                       list(self.health_checks.values()), query)
            return 200, self._get(self.health_checks, seg[2], where)
        if method == "GET" and rest == "regions":
            return 200, self._list("compute#regionList", "regions", list(self.regions.values()),
                                   query)
        if len(seg) >= 2 and seg[0] == "regions":
            region = seg[1]
            if region not in self.regions:
                raise not_found(f"projects/{project}/regions/{region}")
            return self._region(method, region, seg[2:], query, body, where)
        if method == "GET" and len(seg) == 2 and seg[0] == "aggregated" and \
                seg[1] in ("instances", "disks"):
            return 200, self._aggregated(seg[1], query)
        if len(seg) >= 2 and seg[0] == "zones":
            zone = seg[1]
            if zone not in self.zones:
                raise not_found(f"projects/{project}/zones/{zone}")
            return self._zone(method, zone, seg[2:], query, body, where)
        raise not_found(where)

    def _zone(self, method: str, zone: str, seg: list[str], query: dict[str, str],
              body: Any, where: str) -> tuple[int, Any]:
        if method == "GET" and not seg:
            return 200, self.zones[zone]
        kind = seg[0] if seg else ""
        if method == "GET" and kind in ("machineTypes", "diskTypes"):
            table = self.machine_types if kind == "machineTypes" else self.disk_types
            items = [self._in_zone(v, zone, kind) for v in table.values()]
            if len(seg) == 1:
                return 200, self._list(f"compute#{kind[:-1]}List", f"zones/{zone}/{kind}",
                                       items, query)
            if len(seg) == 2:
                return 200, self._get({i["name"]: i for i in items}, seg[1], where)
        if kind == "operations" and len(seg) == 2 and method == "GET":
            return 200, self._operation(seg[1], where)
        if kind == "disks" and method == "GET":
            if len(seg) == 1:
                return 200, self._list("compute#diskList", f"zones/{zone}/disks",
                                       list(self.disks[zone].values()), query, self.page_size)
            if len(seg) == 2:
                return 200, self._get(self.disks[zone], seg[1], where)
        if kind == "instances":
            if len(seg) == 1 and method == "GET":
                return 200, self._list("compute#instanceList", f"zones/{zone}/instances",
                                       list(self.instances[zone].values()), query,
                                       self.page_size)
            if len(seg) == 1 and method == "POST":
                return 200, self._insert(zone, body)
            if len(seg) == 2 and method == "GET":
                return 200, self._get(self.instances[zone], seg[1], where)
            if len(seg) == 2 and method == "DELETE":
                return 200, self._delete(zone, seg[1], where)
            if len(seg) == 3 and method == "POST" and seg[2] in ("setLabels", "setMetadata"):
                return 200, self._set(zone, seg[1], seg[2], body, where)
        raise not_found(where)

    def _region(self, method: str, region: str, seg: list[str], query: dict[str, str],
                body: Any, where: str) -> tuple[int, Any]:
        if method == "GET" and not seg:
            return 200, self.regions[region]
        kind = seg[0] if seg else ""
        if kind == "operations" and len(seg) == 2 and method == "GET":
            return 200, self._operation(seg[1], where)
        if kind == "forwardingRules" and method == "GET":
            if len(seg) == 1:
                return 200, self._list("compute#forwardingRuleList",
                                       f"regions/{region}/forwardingRules",
                                       list(self.forwarding_rules[region].values()), query)
            if len(seg) == 2:
                return 200, self._get(self.forwarding_rules[region], seg[1], where)
        if kind == "targetPools":
            pools = self.target_pools[region]
            if len(seg) == 1 and method == "GET":
                return 200, self._list("compute#targetPoolList", f"regions/{region}/targetPools",
                                       list(pools.values()), query)
            if len(seg) == 2 and method == "GET":
                return 200, self._get(pools, seg[1], where)
            if len(seg) == 3 and method == "POST":
                pool = self._get(pools, seg[1], "/".join(where.split("/")[:-1]))
                if seg[2] in ("addInstance", "removeInstance"):
                    return 200, self._pool_change(region, pool, seg[2], body)
                if seg[2] == "getHealth":
                    return 200, self._pool_health(region, pool, body)
        raise not_found(where)

    def _find_instance(self, link: str) -> dict[str, Any]:
        short = self._short(link)
        _, zone, _, name = short.split("/")
        if zone not in self.instances or name not in self.instances[zone]:
            raise not_found(f"projects/{self.project}/{short}")
        return self.instances[zone][name]

    def _pool_change(self, region: str, pool: dict[str, Any], what: str,
                     body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) \
                or not body["instances"]:
            raise invalid("Required field 'instances' not specified")
        links: list[str] = []
        current = {self._short(u) for u in pool["instances"]}
        for ref in body["instances"]:
            if not isinstance(ref, dict) or not isinstance(ref.get("instance"), str):
                raise invalid("Invalid value for field 'resource.instances': each item needs "
                              "'instance'")
            link = self.instance_link(ref["instance"])
            short = self._short(link)
            zone = short.split("/")[1]
            if what == "addInstance":
                self._find_instance(link)
                if zone.rsplit("-", 1)[0] != region:
                    raise invalid(f"Instance '{short}' is in zone {zone}, not in region "
                                  f"{region} of target pool '{pool['name']}'")
                if short in current:
                    raise ApiError(400, "memberAlreadyExists",
                                   f"Resource 'projects/{self.project}/{short}' is already a "
                                   f"member of 'projects/{self.project}/regions/{region}/"
                                   f"targetPools/{pool['name']}'.")
            elif short not in current:
                raise ApiError(400, "memberNotFound",
                               f"Resource 'projects/{self.project}/{short}' is not a member of "
                               f"'projects/{self.project}/regions/{region}/targetPools/"
                               f"{pool['name']}'.")
            links.append(link)

        def apply() -> None:
            have = [u for u in pool["instances"]
                    if self._short(u) not in {self._short(x) for x in links}]
            pool["instances"] = have + links if what == "addInstance" else have

        return self._new_op(None, what, pool, apply, region=region)

    def _pool_health(self, region: str, pool: dict[str, Any], body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("instance"), str):
            raise invalid("Required field 'instance' not specified")
        link = self.instance_link(body["instance"])
        instance = self._find_instance(link)
        short = self._short(link)
        if short not in {self._short(u) for u in pool["instances"]}:
            raise invalid(f"Resource 'projects/{self.project}/{short}' is not a member of "
                          f"target pool '{pool['name']}'")
        zone = short.split("/")[1]
        if not pool.get("healthChecks"):
            state = "HEALTHY"  # GCE: without a health check every instance counts as healthy
        elif instance.get("status") == "RUNNING" and (zone, instance["name"]) \
                not in self.unhealthy:
            state = "HEALTHY"
        else:
            state = "UNHEALTHY"
        ips = [fr["IPAddress"] for fr in self.forwarding_rules.get(region, {}).values()
               if fr.get("target") == pool["selfLink"]]
        entries = [{"instance": link, "ipAddress": ip, "healthState": state} for ip in ips] \
            or [{"instance": link, "healthState": state}]
        return {"kind": "compute#targetPoolInstanceHealth", "healthStatus": entries}

    # ------------------------------------------------------------------ generic helpers

    def _in_zone(self, item: dict[str, Any], zone: str, kind: str) -> dict[str, Any]:
        item = dict(item)
        item["zone"] = zone if kind == "machineTypes" else self.link(f"zones/{zone}")
        item["selfLink"] = self.link(f"zones/{zone}/{kind}/{item['name']}")
        return item

    @staticmethod
    def _get(table: dict[str, dict[str, Any]], name: str, where: str) -> dict[str, Any]:
        if name not in table:
            raise not_found(where)
        return table[name]

    def _page(self, items: list[Any], query: dict[str, str],
              cap: int = 500) -> tuple[list[Any], str | None]:
        if "filter" in query:
            raise invalid("this fake does not evaluate list filters")
        try:
            size = min(int(query.get("maxResults", 500)), 500, cap)
            start = int(query["pageToken"], 16) if query.get("pageToken") else 0
        except ValueError:
            raise invalid("Invalid value for field 'pageToken' or 'maxResults'") from None
        if size < 1:
            raise invalid("Invalid value for field 'maxResults'")
        page = items[start:start + size]
        more = start + size < len(items)
        return page, (format(start + size, "x") if more else None)

    def _list(self, kind: str, path: str, items: list[Any], query: dict[str, str],
              cap: int = 500) -> dict[str, Any]:
        items = sorted(items, key=lambda i: i["name"])
        page, token = self._page(items, query, cap)
        out: dict[str, Any] = {"kind": kind, "id": f"projects/{self.project}/{path}",
                               "selfLink": self.link(path), "items": page}
        if token:
            out["nextPageToken"] = token
        return out

    def _aggregated(self, what: str, query: dict[str, str]) -> dict[str, Any]:
        table = self.instances if what == "instances" else self.disks
        flat = [(z, item) for z in sorted(self.zones) for _, item in
                sorted(table.get(z, {}).items())]
        page, token = self._page(flat, query, self.page_size)
        items: dict[str, Any] = {}
        for z in sorted(self.zones):
            got = [item for zz, item in page if zz == z]
            items[f"zones/{z}"] = {what: got} if got else {"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": "There are no results for scope 'zones/%s' on this page." % z,
                "data": [{"key": "scope", "value": f"zones/{z}"}]}}
        out: dict[str, Any] = {"kind": f"compute#{what[:-1]}AggregatedList",
                               "id": f"projects/{self.project}/aggregated/{what}",
                               "selfLink": self.link(f"aggregated/{what}"), "items": items}
        if token:
            out["nextPageToken"] = token
        return out

    def _images(self, project: str, family: bool, name: str | None,
                query: dict[str, str]) -> tuple[int, Any]:
        table = self.images[project]
        if name is None:
            return 200, self._list("compute#imageList", "global/images",
                                   list(table.values()), query)
        if family:
            members = [i for i in table.values() if i.get("family") == name
                       and "deprecated" not in i and i.get("status") == "READY"]
            if not members:
                raise not_found(f"projects/{project}/global/images/family/{name}")
            return 200, max(members, key=lambda i: (i["creationTimestamp"], int(i["id"])))
        return 200, self._get(table, name, f"projects/{project}/global/images/{name}")

    # ------------------------------------------------------------------ operations

    def _new_op(self, zone: str | None, op_type: str, target: dict[str, Any] | str,
                effect: Callable[[], None] | None, *, region: str | None = None
                ) -> dict[str, Any]:
        name = f"operation-{int(time.time() * 1000)}-{next(self._ids):x}"
        scope = f"zones/{zone}" if zone else f"regions/{region}" if region else "global"
        target_link = target if isinstance(target, str) else target["selfLink"]
        body = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "operationType": op_type, "targetLink": target_link,
            "targetId": "" if isinstance(target, str) else target.get("id", ""),
            "status": "PENDING", "progress": 0, "insertTime": _now(), "startTime": _now(),
            "user": "imm@imm-test.iam.gserviceaccount.com",
            "selfLink": self.link(f"{scope}/operations/{name}"),
        }
        if zone:
            body["zone"] = self.link(f"zones/{zone}")
        elif region:
            body["region"] = self.link(f"regions/{region}")
        self.operations[name] = Operation(body, time.monotonic() + self.op_delay_s, effect)
        return copy.deepcopy(body)

    def _tick(self) -> None:
        now = time.monotonic()
        for op in self.operations.values():
            if op.body["status"] != "DONE" and now >= op.done_at:
                if op.effect is not None:
                    op.effect()
                op.body.update(status="DONE", progress=100, endTime=_now())
                if op.error is not None:
                    op.body["error"] = op.error
            elif op.body["status"] == "PENDING":
                op.body["status"] = "RUNNING"

    def _operation(self, name: str, where: str) -> dict[str, Any]:
        if name not in self.operations:
            raise not_found(where)
        return copy.deepcopy(self.operations[name].body)

    # ------------------------------------------------------------------ instances

    def _insert(self, zone: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("Required field 'resource' not specified")
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise invalid(f"Invalid value for field 'resource.name': '{name}'. Must be a match "
                          f"of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")
        if name in self.instances[zone]:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{self.project}/zones/"
                                                 f"{zone}/instances/{name}' already exists")
        mt = str(body.get("machineType", "")).rstrip("/").split("/")[-1]
        if mt not in self.machine_types:
            raise not_found(f"projects/{self.project}/zones/{zone}/machineTypes/{mt}")
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or len(labels) > 64:
            raise invalid("Invalid value for field 'resource.labels'")
        for k, v in labels.items():
            if not _LABEL_KEY.fullmatch(str(k)) or not _LABEL_VALUE.fullmatch(str(v)):
                raise invalid(f"Invalid value for field 'resource.labels': '{k}={v}'. Label "
                              f"keys and values may contain only lowercase letters, digits, "
                              f"'_' and '-', at most 63 characters")
        meta = body.get("metadata") or {}
        items = meta.get("items") or []
        for item in items:
            if not _META_KEY.fullmatch(str(item.get("key", ""))):
                raise invalid(f"Invalid value for field 'resource.metadata': "
                              f"'{item.get('key')}'. Metadata keys must match [a-zA-Z0-9-_]"
                              f"{{1,128}}")
            if len(str(item.get("value", "")).encode()) > 256 * 1024:
                raise invalid("Metadata value too large (256 KB at most)")
        disks = body.get("disks") or []
        boot = next((d for d in disks if d.get("boot")), None)
        if boot is None:
            raise invalid("Invalid value for field 'resource.disks': no boot disk")
        iid = str(next(self._ids))
        link = self.link(f"zones/{zone}/instances/{name}")
        attached: list[dict[str, Any]] = []
        for index, d in enumerate(disks):
            init = d.get("initializeParams") or {}
            disk_name = init.get("diskName") or (name if d.get("boot") else f"{name}-{index}")
            if init:
                source = self._resolve_image(str(init.get("sourceImage", "")))
                if disk_name in self.disks[zone]:
                    raise ApiError(409, "alreadyExists", f"The resource 'projects/"
                                   f"{self.project}/zones/{zone}/disks/{disk_name}' already "
                                   f"exists")
                disk = {
                    "kind": "compute#disk", "id": str(next(self._ids)), "name": disk_name,
                    "zone": self.link(f"zones/{zone}"), "status": "READY",
                    "creationTimestamp": _now(), "sizeGb": str(init.get("diskSizeGb") or
                                                               source.get("diskSizeGb", "10")),
                    "sourceImage": source["selfLink"], "sourceImageId": source["id"],
                    "type": init.get("diskType") or self.link(
                        f"zones/{zone}/diskTypes/pd-standard"),
                    "selfLink": self.link(f"zones/{zone}/disks/{disk_name}"), "users": [link],
                }
                self.disks[zone][disk_name] = disk
                src = disk["selfLink"]
            else:
                src = str(d.get("source", ""))
            attached.append({"kind": "compute#attachedDisk", "type": "PERSISTENT",
                             "mode": d.get("mode", "READ_WRITE"), "source": src,
                             "deviceName": d.get("deviceName") or disk_name, "index": index,
                             "boot": bool(d.get("boot")), "autoDelete": bool(d.get("autoDelete")),
                             "interface": "SCSI"})
        n = next(self._ips)
        nics = []
        for i, nic in enumerate(body.get("networkInterfaces") or [{}]):
            out = {"kind": "compute#networkInterface", "name": f"nic{i}",
                   "network": nic.get("network") or self.link("global/networks/default"),
                   "networkIP": f"10.128.{n // 250}.{n % 250 + 2}"}
            if nic.get("subnetwork"):
                out["subnetwork"] = nic["subnetwork"]
            if nic.get("accessConfigs"):
                out["accessConfigs"] = [{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT",
                                         "name": "External NAT",
                                         "natIP": f"203.0.113.{n % 250 + 2}"}]
            nics.append(out)
        instance = {
            "kind": "compute#instance", "id": iid, "creationTimestamp": _now(), "name": name,
            "description": body.get("description", ""),
            "tags": {**({"items": body["tags"]["items"]} if (body.get("tags") or {}).get(
                "items") else {}), "fingerprint": _fingerprint(body.get("tags"))},
            "machineType": self.link(f"zones/{zone}/machineTypes/{mt}"),
            "status": "PROVISIONING", "zone": self.link(f"zones/{zone}"),
            "canIpForward": bool(body.get("canIpForward")), "networkInterfaces": nics,
            "disks": attached,
            "metadata": {"kind": "compute#metadata", "fingerprint": _fingerprint(items),
                         "items": [{"key": i["key"], "value": str(i.get("value", ""))}
                                   for i in items]},
            "serviceAccounts": body.get("serviceAccounts") or [],
            "selfLink": link, "scheduling": body.get("scheduling") or {
                "onHostMaintenance": "MIGRATE", "automaticRestart": True, "preemptible": False},
            "cpuPlatform": "Intel Broadwell", "labels": dict(labels),
            "labelFingerprint": _fingerprint(labels), "startRestricted": False,
            "deletionProtection": False, "fingerprint": _fingerprint(iid),
        }
        self.instances[zone][name] = instance

        def running() -> None:
            if name in self.instances[zone] and instance["status"] == "PROVISIONING":
                instance["status"] = "RUNNING"

        if not self.insert_failures:
            return self._new_op(zone, "insert", instance, running)
        code, message = self.insert_failures.pop(0)

        def failed() -> None:
            self.instances[zone].pop(name, None)
            for d in attached:
                self.disks[zone].pop(d["source"].rstrip("/").split("/")[-1], None)

        op = self._new_op(zone, "insert", instance, failed)
        self.operations[op["name"]].error = {"errors": [{"code": code, "message": message}]}
        op.update(httpErrorStatusCode=403, httpErrorMessage="FORBIDDEN")
        return op

    def _resolve_image(self, ref: str) -> dict[str, Any]:
        m = re.search(r"(?:projects/([^/]+)/)?global/images/(family/)?([^/]+)$", ref)
        if not m:
            raise invalid(f"Invalid value for field 'resource.disks[0].initializeParams."
                          f"sourceImage': '{ref}'")
        project = m.group(1) or self.project
        if project not in self.images:
            raise not_found(f"projects/{project}/global/images/{m.group(3)}")
        _, image = self._images(project, bool(m.group(2)), m.group(3), {})
        if image.get("status") != "READY":
            raise invalid(f"The resource '{image['selfLink']}' is not ready")
        return dict(image)

    def _delete(self, zone: str, name: str, where: str) -> dict[str, Any]:
        instance = self._get(self.instances[zone], name, where)
        if any(op.body["operationType"] == "delete" and op.body["status"] != "DONE"
               and op.body["targetLink"] == instance["selfLink"]
               for op in self.operations.values()):
            raise ApiError(400, "resourceNotReady", f"The resource '{where}' is not ready")
        instance["status"] = "STOPPING"

        def gone() -> None:
            inst = self.instances[zone].pop(name, None)
            for d in (inst or {}).get("disks", []):
                disk_name = d["source"].rstrip("/").split("/")[-1]
                if d.get("autoDelete"):
                    self.disks[zone].pop(disk_name, None)
                elif disk_name in self.disks[zone]:
                    users = self.disks[zone][disk_name].get("users", [])
                    self.disks[zone][disk_name]["users"] = [u for u in users
                                                            if u != instance["selfLink"]]

        return self._new_op(zone, "delete", instance, gone)

    def _set(self, zone: str, name: str, what: str, body: Any, where: str) -> dict[str, Any]:
        instance = self._get(self.instances[zone], name, where)
        if not isinstance(body, dict):
            raise invalid("Required field 'resource' not specified")
        if what == "setLabels":
            current = instance.get("labelFingerprint")
            if body.get("labelFingerprint") != current:
                raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or "
                                                       "resource labels have changed")
            labels = body.get("labels") or {}
            for k, v in labels.items():
                if not _LABEL_KEY.fullmatch(str(k)) or not _LABEL_VALUE.fullmatch(str(v)):
                    raise invalid(f"Invalid value for field 'labels': '{k}={v}'")

            def apply() -> None:
                instance["labels"] = dict(labels)
                instance["labelFingerprint"] = _fingerprint(labels)
        else:
            current = (instance.get("metadata") or {}).get("fingerprint")
            if body.get("fingerprint") != current:
                raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match "
                                                       "current metadata fingerprint.")
            items = body.get("items") or []
            for item in items:
                if not _META_KEY.fullmatch(str(item.get("key", ""))):
                    raise invalid(f"Invalid value for field 'metadata': '{item.get('key')}'")

            def apply() -> None:
                instance["metadata"] = {"kind": "compute#metadata", "items": items,
                                        "fingerprint": _fingerprint(items)}

        return self._new_op(zone, what, instance, apply)

