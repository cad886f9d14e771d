"""The AWS provider: launch, terminate and images (see the package docstring)."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ....errors import BadRequest, NotFound, ProviderError
from ...base import (
    TAG_SERVICE,
    TAG_SLOT,
    ImageInfo,
    Instance,
    LaunchRequest,
)
from ...cloud import (
    CloudProviderError,
)
from ...cloud.terminate import screen
from .core import (
    _LAUNCH_SETTINGS,
    FILTER_VALUES_MAX,
    IMAGE_ABSENT_CODES,
    IMAGE_DEAD_STATES,
    INSTANCE_ABSENT_CODES,
    LIVE_STATES,
    TAG_COPIED_FROM,
    TAG_TOKEN,
    TERMINATE_BATCH,
    AWSCore,
    effective_token,
)


class AWSProvider(AWSCore):
    # -- launch

    def _find_token(self, region: str, token: str) -> list[Instance]:
        return self._describe(region, {"tag:" + TAG_TOKEN: token,
                                       "instance-state-name": list(LIVE_STATES)},
                              "DescribeInstances (launch token)")

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
        screen(self.where, ids, {i: inst.tags for found in located.values()
                                 for i, inst in found.items()},
               terminate_untagged=self.terminate_untagged, log=self.context.log)
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
