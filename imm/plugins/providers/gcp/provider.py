"""The GCP provider: operations, launch, terminate and images (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ....errors import BadRequest, NotFound, ProviderError
from ...base import (
    TAG_ROLLOUT,
    TAG_SERVICE,
    ImageInfo,
    Instance,
    LaunchRequest,
)
from ...cloud.gcp import GOOGLE_API
from ...cloud.terminate import screen
from .core import (
    _LAUNCH_SETTINGS,
    ALIVE,
    EXISTS_CODES,
    MAX_COUNT,
    NOT_READY_CODES,
    TAG_TOKEN,
    GCPCore,
    instance_names,
    labels_for,
    metadata_for,
    parse_image,
)


class GCPProvider(GCPCore):
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
        twice = sorted(n for n, found in located.items() if len(found) > 1)
        if twice:
            raise BadRequest(f"{self.where}: instance name(s) {', '.join(twice)} exist in "
                             f"several zones; delete them by hand")
        screen(self.where, names, {n: found[0].tags for n, found in located.items()},
               terminate_untagged=self.terminate_untagged, log=self.context.log,
               marked_by="tag (metadata imm-service)")
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
