"""The OpenStack provider: launch, terminate and images (see the package docstring)."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from ....errors import BadRequest, ProviderError, Unsupported
from ...base import (
    TAG_SERVICE,
    TAG_SLOT,
    Feature,
    ImageInfo,
    Instance,
    LaunchRequest,
)
from ...cloud import (
    CloudProviderError,
)
from ...cloud.terminate import screen
from .core import (
    _IMAGE_KEYS,
    _LAUNCH_SETTINGS,
    MAX_META,
    META_KEY,
    TAG_TOKEN,
    OpenStackCore,
    absent,
    effective_token,
    token_key,
)


class OpenStackProvider(OpenStackCore):
    # -- launch

    def _find_token(self, region: str, token: str) -> list[Instance]:
        found = self._servers(region, {"name": token_key(token)},
                              "GET /servers/detail (launch token)")
        mine = [i for i in found if i.tags.get(TAG_TOKEN) == token and i.state != "terminated"]
        return sorted(mine, key=lambda i: (self._index(i, token), i.id))

    @staticmethod
    def _index(inst: Instance, token: str) -> int:
        m = re.search(rf"-{token_key(token)}-(\d+)$", str(inst.extra.get("name") or ""))
        return int(m.group(1)) if m else 1 << 30

    def _flavor_id(self, region: str, wanted: str) -> str:
        for refresh in (False, True):
            known = self._flavor_ids.get(region)
            if known is None or refresh:
                flavors = self._pages(region, "GET /flavors/detail", "/flavors/detail",
                                      "flavors")
                known = {}
                for f in flavors:  # ids first: a flavor named like another's id loses
                    known.setdefault(str(f.get("name")), str(f["id"]))
                for f in flavors:
                    known[str(f["id"])] = str(f["id"])
                self._flavor_ids[region] = known
            if wanted in known:
                return known[wanted]
        names = sorted({k for k, v in (self._flavor_ids.get(region) or {}).items() if k != v})
        raise BadRequest(f"{self.where}, region {region}: no flavor {wanted!r} (flavor or the "
                         f"service's size); flavors: {', '.join(names[:30]) or 'none'}")

    def _network_ids(self, region: str, wanted: Sequence[str]) -> list[str]:
        if not wanted:
            return []
        out: list[str] = []
        for refresh in (False, True):
            nets = self._networks_cache.get(region)
            if nets is None or refresh:
                nets = self._call(region, "GET /v2.0/networks", lambda d: (
                    d.network_connection.request(d._networks_url_prefix).object or {}
                ).get("networks") or [], service="network")
                self._networks_cache[region] = nets
            out = []
            for w in wanted:
                by_id = [n for n in nets if n.get("id") == w]
                by_name = [n for n in nets if n.get("name") == w]
                if by_id or len(by_name) == 1:
                    out.append(str((by_id or by_name)[0]["id"]))
                elif len(by_name) > 1:
                    raise BadRequest(f"{self.where}, region {region}: {len(by_name)} networks "
                                     f"are named {w!r}; give its id in network instead")
            if len(out) == len(wanted):
                return out
        names = sorted(str(n.get("name")) for n in self._networks_cache.get(region) or [])
        missing = [w for w in wanted if not any(w in (n.get("id"), n.get("name"))
                                                for n in self._networks_cache.get(region) or [])]
        raise BadRequest(f"{self.where}, region {region}: no network {', '.join(missing)} "
                         f"(network); networks: {', '.join(names[:30]) or 'none'}")

    def _check_tags(self, tags: Mapping[str, str]) -> None:
        bad = [k for k, v in tags.items() if not META_KEY.match(k) or len(v) > MAX_META]
        if bad:
            raise BadRequest(f"{self.where}: tag(s) {', '.join(sorted(bad))} cannot be nova "
                             f"metadata (keys: letters, digits and -_:. up to 255; values up "
                             f"to 255 characters)")
        if len(tags) > 128:
            raise BadRequest(f"{self.where}: {len(tags)} tags; nova allows 128 metadata items")

    def launch(self, request: LaunchRequest) -> list[Instance]:
        from libcloud.compute.base import NodeImage, NodeSize
        from libcloud.compute.drivers.openstack import OpenStackNetwork, OpenStackSecurityGroup

        region = request.region
        self.drivers.get(region)  # validates the region
        if not isinstance(request.count, int) or request.count < 1:
            raise BadRequest(f"{self.where}: launch count {request.count!r} must be >= 1")
        if not request.client_token:
            raise BadRequest(f"{self.where}: launch needs a client token")
        extra = dict(request.settings or {})
        unknown = sorted(set(extra) - _LAUNCH_SETTINGS)
        if unknown:
            self.context.log.warning("%s: launch ignores settings %s", self.where,
                                     ", ".join(unknown))
        token = effective_token(request.client_token)
        metadata = {str(k): str(v) for k, v in request.tags.items()}
        metadata[TAG_TOKEN] = token
        self._check_tags(metadata)

        existing = self._find_token(region, token)
        broken = [i for i in existing if i.extra.get("nova_status") == "ERROR"]
        if broken:
            self.context.log.warning("%s, region %s: replacing %s of launch %s (ERROR: %s)",
                                     self.where, region, ", ".join(i.id for i in broken), token,
                                     broken[0].extra.get("fault") or "no fault given")
            self._destroy(region, [i.id for i in broken])
            existing = [i for i in existing if i not in broken]
        if len(existing) >= request.count:
            self.context.log.info("%s, region %s: launch %s already ran: %s", self.where, region,
                                  token, ", ".join(i.id for i in existing))
            return self._wait_active(region, token, existing)

        flavor = request.size or extra.get("flavor") or extra.get("size") or \
            self.flavors.get(region)
        if not flavor:
            raise BadRequest(f"{self.where}: no flavor for region {region}: set flavor on the "
                             f"provider or size on the service")
        flavor_id = self._flavor_id(region, str(flavor))
        nets = request.network or extra.get("network") or self.networks.get(region) or []
        net_ids = self._network_ids(region, [nets] if isinstance(nets, str) else list(nets))
        groups = extra.get("security_groups", self.security_groups) or []
        key_name = extra.get("key_name") or self.key_name
        zone = extra.get("availability_zone") or self.availability_zone
        user_data = extra.get("user_data")

        prefix = "-".join(v for v in (request.tags.get(TAG_SERVICE), request.tags.get(TAG_SLOT))
                          if v) or "imm"
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix)[:200]
        taken = {self._index(i, token) for i in existing}
        free = (n for n in range(10 ** 6) if n not in taken)
        names = [f"{prefix}-{token_key(token)}-{next(free)}"
                 for _ in range(request.count - len(existing))]

        created: list[Instance] = []
        for name in names:
            def create(driver: Any, name: str = name) -> Instance:
                kwargs: dict[str, Any] = {"ex_metadata": dict(metadata)}
                if net_ids:
                    kwargs["networks"] = [OpenStackNetwork(n, None, None, driver)
                                          for n in net_ids]
                if groups:
                    kwargs["ex_security_groups"] = [
                        OpenStackSecurityGroup(None, None, g, None, driver) for g in groups]
                if key_name:
                    kwargs["ex_keyname"] = key_name
                if zone:
                    kwargs["ex_availability_zone"] = zone
                if user_data:
                    kwargs["ex_userdata"] = str(user_data)
                node = driver.create_node(
                    name=name, size=NodeSize(flavor_id, flavor_id, 0, 0, 0, 0.0, driver),
                    image=NodeImage(request.image_id, request.image_id, driver), **kwargs)
                return self._to_instance(region, node)

            def recover(name: str = name) -> Instance | None:
                return next((i for i in self._find_token(region, token)
                             if i.extra.get("name") == name), None)

            inst = self._call(region, "POST /servers", create, recover=recover, idempotent=False)
            created.append(inst)
            self.context.log.info("%s, region %s: created server %s (%s) from image %s",
                                  self.where, region, inst.id, name, request.image_id)
        return self._wait_active(region, token, existing + created)

    def _wait_active(self, region: str, token: str, instances: list[Instance]) -> list[Instance]:
        """Wait until the launch's servers are ACTIVE; delete those that end in ERROR and fail."""
        ids = {i.id for i in instances}
        deadline = time.monotonic() + self.wait_active_s
        current = instances
        while True:
            errored = [i for i in current if i.extra.get("nova_status") == "ERROR"]
            if errored:
                fault = errored[0].extra.get("fault") or "no fault given"
                details = errored[0].extra.get("fault_details")
                self._destroy(region, [i.id for i in errored])
                raise ProviderError(
                    f"{self.where}, region {region}: server(s) {', '.join(i.id for i in errored)}"
                    f" went to ERROR: {fault}" + (f" ({details})" if details else "") +
                    "; deleted them (a retried launch replaces them). Check quotas, flavor, "
                    "image and network", detail={"cloud": "OpenStack", "provider": self.name,
                                                 "region": region, "call": "POST /servers",
                                                 "kind": "build-failed", "fault": fault})
            building = [i for i in current if i.state == "pending"]
            if not building or self.wait_active_s <= 0:
                return current
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"{self.where}, region {region}: server(s) "
                    f"{', '.join(i.id for i in building)} still building after "
                    f"{self.wait_active_s:g}s (wait_active_s)", detail={
                        "cloud": "OpenStack", "provider": self.name, "region": region,
                        "call": "POST /servers", "kind": "build-timeout"})
            time.sleep(self.poll_interval_s)
            found = {i.id: i for i in self._find_token(region, token) if i.id in ids}
            current = sorted(found.values(), key=lambda i: (self._index(i, token), i.id))
            vanished = ids - set(found)
            if vanished:
                raise ProviderError(f"{self.where}, region {region}: server(s) "
                                    f"{', '.join(sorted(vanished))} vanished while building")

    # -- terminate

    def _get_server(self, region: str, server_id: str) -> Instance | None:
        def get(driver: Any) -> Instance:
            obj = driver.connection.request(f"/servers/{urllib.parse.quote(server_id)}").object
            return self._to_instance(region, driver._to_node(obj["server"]),
                                     str(obj["server"].get("status") or ""))

        try:
            inst: Instance = self._call(region, "GET /servers/<id>", get)
        except CloudProviderError as exc:
            if absent(exc):
                return None
            raise
        return inst

    def _destroy(self, region: str, ids: Sequence[str]) -> None:
        from libcloud.compute.base import Node
        from libcloud.compute.types import NodeState

        for sid in ids:
            def delete(driver: Any, sid: str = sid) -> Any:
                return driver.destroy_node(Node(sid, sid, NodeState.UNKNOWN, [], [], driver))

            try:
                self._call(region, "DELETE /servers/<id>", delete)
            except CloudProviderError as exc:
                if not absent(exc):
                    raise
            self.context.log.info("%s, region %s: deleting server %s", self.where, region, sid)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(str(i) for i in instance_ids))
        if not ids:
            return

        def locate(region: str) -> dict[str, Instance]:
            found = {}
            for sid in ids:
                inst = self._get_server(region, sid)
                if inst is not None:
                    found[sid] = inst
            return found

        located = self._per_region(locate)
        screen(self.where, ids, {i: inst.tags for found in located.values()
                                 for i, inst in found.items()},
               terminate_untagged=self.terminate_untagged, log=self.context.log,
               marked_by="metadata")
        for region, found in located.items():
            live = [i for i, inst in found.items() if inst.state != "terminated"]
            self._destroy(region, live)

    # -- images

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        def get(driver: Any) -> dict[str, Any]:
            path = f"/v2/images/{urllib.parse.quote(image_id, safe='')}"
            obj = driver.image_connection.request(path).object
            if not isinstance(obj, dict) or "id" not in obj:
                raise ProviderError(f"{self.where}, region {region}: glance answered GET "
                                    f"{path} without an image")
            return obj

        try:
            obj = self._call(region, "GET /v2/images/<id>", get, service="image")
        except CloudProviderError as exc:
            if absent(exc):
                return None
            raise
        props = {k: v for k, v in obj.items() if k not in _IMAGE_KEYS and v is not None}
        return ImageInfo(
            region=region, image_id=str(obj["id"]), name=obj.get("name"),
            state=obj.get("status"),
            extra={k: v for k, v in {
                "visibility": obj.get("visibility"), "checksum": obj.get("checksum"),
                "os_hash_algo": obj.get("os_hash_algo"), "os_hash_value": obj.get("os_hash_value"),
                "size": obj.get("size"), "disk_format": obj.get("disk_format"),
                "container_format": obj.get("container_format"), "owner": obj.get("owner"),
                "created_at": obj.get("created_at"), "tags": obj.get("tags") or [],
                "properties": props,
            }.items() if v is not None},
        )

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        raise Unsupported(
            f"{self.where}: cannot copy image {image_id} from {src_region} to {dst_region}: "
            f"glance images belong to one region and OpenStack has no cross-region copy (glance's "
            f"copy-image import only copies between the stores of one glance). Upload the image "
            f"to {dst_region} with the baker (Packer's openstack builder or glance "
            f"image-create) and record it with immctl image artifact add",
            detail={"provider": self.name, "kind": self.kind, "feature": Feature.COPY_IMAGE.value})

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self.drivers.clear()
            self.credentials.clear()
            self._flavor_ids.clear()
            self._networks_cache.clear()
