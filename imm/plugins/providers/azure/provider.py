"""The Azure provider: launch, terminate and images (see the package docstring)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ....errors import BadRequest, ProviderError, Unsupported
from ...base import Feature, ImageInfo, Instance, LaunchRequest
from ...cloud.terminate import screen
from .core import (
    _GALLERY_IMAGE,
    _GALLERY_VERSION,
    _LAUNCH_SETTINGS,
    _MANAGED_IMAGE,
    GALLERY_API,
    IMAGE_API,
    IP_API,
    MAX_TAG_VALUE,
    MAX_TAGS,
    NIC_API,
    TAG_TOKEN,
    VM_API,
    AzureCore,
    _same_reference,
    _version_key,
    image_reference_id,
    location_name,
    parse_image_id,
)


class AzureProvider(AzureCore):
    # -- launch -----------------------------------------------------------------------------

    def _get_vm(self, location: str, vm_id: str, label: str | None = None) -> dict[str, Any] | None:
        got = self._request(location, "VirtualMachines_Get", vm_id, VM_API, absent_ok=True,
                            label=label)
        return got or None

    def _subnet_id(self, location: str, network: str | None, extra: Mapping[str, Any]) -> str:
        if network and network.lower().lstrip("/").startswith("subscriptions/"):
            return "/" + network.lstrip("/")  # a full subnet resource id
        vnet, _, subnet = (network or "").partition("/")
        vnet = vnet or self.networks.get(location) or ""
        subnet = subnet or str(extra.get("subnet") or "") or self.subnets.get(location) \
            or "default"
        if not vnet:
            raise BadRequest(f"{self.where}: no virtual network for {location}: set network "
                             f"(or network = {{ {location} = \"...\" }}) on the provider, or the "
                             f"service's network")
        return (f"{self._rg_path(self.network_resource_group)}/providers/Microsoft.Network/"
                f"virtualNetworks/{vnet}/subnets/{subnet}")

    def _tags(self, request: LaunchRequest, token: str) -> dict[str, str]:
        tags = {str(k): str(v) for k, v in request.tags.items()}
        tags[TAG_TOKEN] = token
        too_long = sorted(k for k, v in tags.items() if len(v) > MAX_TAG_VALUE or len(k) > 512)
        if too_long:
            raise BadRequest(f"{self.where}: tag(s) {', '.join(too_long)} exceed ARM's limits "
                             f"(names 512, values {MAX_TAG_VALUE} characters)")
        bad = sorted(k for k in tags if any(c in k for c in "<>%&\\?/"))
        if bad:
            raise BadRequest(f"{self.where}: tag name(s) {', '.join(bad)} contain a character "
                             f"ARM refuses (< > % & \\ ? /)")
        if len(tags) > MAX_TAGS:
            raise BadRequest(f"{self.where}: {len(tags)} tags; ARM allows {MAX_TAGS}")
        return tags

    def launch(self, request: LaunchRequest) -> list[Instance]:
        location = self._location(request.region)
        if isinstance(request.count, bool) or not isinstance(request.count, int) \
                or not 1 <= request.count <= 1000:
            raise BadRequest(f"{self.where}: launch count {request.count!r} must be 1..1000")
        if not request.client_token:
            raise BadRequest(f"{self.where}: launch needs a client token")
        extra = dict(request.settings or {})
        unknown = sorted(set(extra) - _LAUNCH_SETTINGS)
        if unknown:
            self.context.log.warning("%s: launch ignores settings %s (user_data: libcloud's "
                                     "Azure driver cannot send customData on Python 3)",
                                     self.where, ", ".join(unknown))
        kind, ref = parse_image_id(request.image_id)
        token = request.client_token if len(request.client_token) <= MAX_TAG_VALUE else \
            "sha256:" + hashlib.sha256(request.client_token.encode()).hexdigest()
        tags = self._tags(request, token)
        spec = {
            "size": str(request.size or extra.get("size") or self.size),
            "subnet_id": self._subnet_id(location, request.network or extra.get("network"),
                                         extra),
            "public_ip": bool(extra.get("public_ip", self.public_ip)),
            "admin_username": str(extra.get("admin_username") or self.admin_username),
            "ssh_public_key": extra.get("ssh_public_key") or self.ssh_public_key,
            "os_disk_type": str(extra.get("os_disk_type") or self.os_disk_type),
            "os_disk_size_gb": extra.get("os_disk_size_gb") or self.os_disk_size_gb,
        }
        prefix = extra.get("name_prefix") or self.name_prefix
        want_ref = ({"id": ref} if kind == "id" else
                    dict(zip(("publisher", "offer", "sku", "version"), ref, strict=True)))
        names = [self._vm_name(request, index, prefix) for index in range(request.count)]
        found = {name: self._get_vm(location, self._vm_path(name)) for name in names}
        for name, vm in found.items():
            if vm:
                self._check_existing(location, name, vm, token, want_ref)
        reused_list = self._instances([vm for vm in found.values() if vm])
        reused = {inst.id.lower(): n for n, inst in enumerate(reused_list)}
        if reused:
            self.context.log.info("%s, location %s: %d VM(s) of launch %s exist already",
                                  self.where, location, len(reused), token)
        instances = []
        for name in names:
            vm = found[name]
            instances.append(reused_list[reused[str(vm["id"]).lower()]] if vm else
                             self._launch_one(location, name, kind, ref, tags, spec))
        self.context.log.info("%s, location %s: launched %s from %s (token %s)", self.where,
                              location, ", ".join(i.extra.get("name", i.id) for i in instances),
                              request.image_id, request.client_token)
        return instances

    def _check_existing(self, location: str, name: str, vm: Mapping[str, Any], token: str,
                        want_ref: Mapping[str, Any]) -> None:
        tags = vm.get("tags") or {}
        if tags.get(TAG_TOKEN) != token:
            raise ProviderError(
                f"{self.where}, location {location}: a VM named {name} exists already in "
                f"resource group {self.resource_group} but was not launched with client token "
                f"{token} (its {TAG_TOKEN} tag: {tags.get(TAG_TOKEN)!r}); delete it or change "
                f"name_prefix", code="conflict")
        props = vm.get("properties") or {}
        have_ref = (props.get("storageProfile") or {}).get("imageReference")
        if not _same_reference(have_ref, want_ref):
            raise ProviderError(
                f"{self.where}, location {location}: client token {token} was already used to "
                f"launch {name} from {image_reference_id(have_ref)}, not "
                f"{image_reference_id(want_ref)}; a retried launch must repeat the first one "
                f"exactly", code="idempotent-mismatch")
        if str(props.get("provisioningState", "")).lower() == "deleting":
            raise ProviderError(f"{self.where}, location {location}: VM {name} of launch {token} "
                                f"is being deleted; it cannot be launched again under the same "
                                f"client token", code="conflict")

    def _launch_one(self, location: str, name: str, kind: str, ref: Any,
                    tags: Mapping[str, str], spec: Mapping[str, Any]) -> Instance:
        """Create the public IP (optional), NIC and VM ``name``: each an idempotent PUT."""
        from libcloud.compute.base import NodeAuthSSHKey, NodeLocation, NodeSize
        from libcloud.compute.drivers.azure_arm import (
            AzureComputeGalleryImage,
            AzureImage,
            AzureIPAddress,
            AzureNic,
            AzureSubnet,
        )

        vm_path = self._vm_path(name)
        rg = self.resource_group

        def where(driver: Any) -> Any:
            return NodeLocation(location, location, "", driver)

        public: AzureIPAddress | None = None
        if spec["public_ip"]:
            # Standard SKU, static: Azure no longer creates Basic public IPs (libcloud's
            # ex_create_public_ip asks for one)
            pip_id = f"{self._rg_path()}/providers/Microsoft.Network/publicIPAddresses/{name}-ip"
            got = self._request(location, "PublicIPAddresses_CreateOrUpdate", pip_id, IP_API,
                                method="PUT", data={
                                    "location": location, "tags": dict(tags),
                                    "sku": {"name": "Standard"},
                                    "properties": {"publicIPAllocationMethod": "Static",
                                                   "publicIPAddressVersion": "IPv4"}})
            public = AzureIPAddress(got.get("id") or pip_id, f"{name}-ip",
                                    got.get("properties") or {})
        subnet_id = spec["subnet_id"]
        nic: AzureNic = self._call(
            location, "NetworkInterfaces_CreateOrUpdate",
            lambda d: d.ex_create_network_interface(
                f"{name}-nic", AzureSubnet(subnet_id, subnet_id.rsplit("/", 1)[-1], {}), rg,
                where(d), public_ip=public))

        def create(driver: Any) -> dict[str, Any]:
            if kind == "urn":
                publisher, offer, sku, version = ref
                image: Any = AzureImage(version, sku, offer, publisher, location, driver)
            else:
                image = AzureComputeGalleryImage("", "", "", ref.rsplit("/", 1)[-1], driver)
                image.id = ref  # imageReference {"id": ...}: managed or gallery image
            size = NodeSize(spec["size"], spec["size"], 0, 0, 0, 0.0, driver)
            auth = NodeAuthSSHKey(spec["ssh_public_key"]) if spec["ssh_public_key"] else None
            node = driver.create_node(
                name=name, size=size, image=image, auth=auth, ex_resource_group=rg,
                location=where(driver), ex_user_name=spec["admin_username"], ex_nic=nic,
                ex_tags=dict(tags), ex_use_managed_disks=True,
                ex_storage_account_type=spec["os_disk_type"], ex_os_disk_delete=True,
                ex_disk_size=spec["os_disk_size_gb"])
            return dict(node.extra)

        def recover() -> dict[str, Any] | None:
            return self._get_vm(location, vm_path)

        vm = self._call(location, "VirtualMachines_CreateOrUpdate", create, recover=recover,
                        idempotent=False)
        configs = (nic.extra or {}).get("ipConfigurations") or [{}]
        private = (configs[0].get("properties") or {}).get("privateIPAddress")
        address = (private, (public.extra or {}).get("ipAddress") if public else None)
        return self._to_instance(vm, address, None)

    # -- terminate --------------------------------------------------------------------------

    def terminate(self, instance_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(self._vm_id(i) for i in instance_ids))
        if not ids:
            return
        label = self._list_label()
        vms: dict[str, dict[str, Any]] = {}
        for vm_id in ids:
            got = self._get_vm(self.locations[0], vm_id, label=label)
            if got:
                vms[vm_id] = got
        screen(self.where, ids, {i: vm.get("tags") or {} for i, vm in vms.items()},
               terminate_untagged=self.terminate_untagged, log=self.context.log, verb="delete")
        for vm_id, vm in vms.items():  # every DELETE first: Azure deletes them in parallel
            if str((vm.get("properties") or {}).get("provisioningState", "")).lower() != \
                    "deleting":
                self._request(self._vm_location(vm), "VirtualMachines_Delete", vm_id, VM_API,
                              method="DELETE", absent_ok=True)
        for vm_id, vm in vms.items():
            self._destroy(vm_id, vm)

    def _vm_location(self, vm: Mapping[str, Any]) -> str:
        loc = location_name(str(vm.get("location", "")))
        return loc if loc in self.locations else self.locations[0]

    def _destroy(self, vm_id: str, vm: Mapping[str, Any]) -> None:
        """libcloud's destroy_node: wait until the VM is gone, delete its NICs and OS disk; then
        the public IPs imm made for it."""
        location = self._vm_location(vm)
        name = str(vm.get("name") or vm_id.rsplit("/", 1)[-1])
        nics = ((vm.get("properties") or {}).get("networkProfile") or {}).get(
            "networkInterfaces") or []
        publics = []
        for ref in nics:
            nic = self._request(location, "NetworkInterfaces_Get", str(ref.get("id")), NIC_API,
                                absent_ok=True)
            for conf in ((nic or {}).get("properties") or {}).get("ipConfigurations") or []:
                pub = ((conf.get("properties") or {}).get("publicIPAddress") or {}).get("id")
                if pub and str(pub).rsplit("/", 1)[-1] == f"{name}-ip":
                    publics.append(str(pub))
        poll = self.delete_poll_s
        polls = max(1, int(self.delete_timeout_s / poll) if poll > 0 else 100)

        def destroy(driver: Any) -> None:
            from libcloud.common.exceptions import BaseHTTPError

            node = driver._to_node(dict(vm), fetch_nic=False, fetch_power_state=False)
            try:
                driver.destroy_node(node, ex_destroy_nic=True, ex_destroy_vhd=False,
                                    ex_poll_qty=polls, ex_poll_wait=poll,
                                    ex_destroy_os_disk=True)
            except BaseHTTPError as exc:
                if exc.code != 404:  # the VM (or its resource group) is gone
                    raise

        self._call(location, "VirtualMachines_Delete", destroy)
        for pub in publics:
            self._request(location, "PublicIPAddresses_Delete", pub, IP_API, method="DELETE",
                          absent_ok=True)
        self.context.log.info("%s, location %s: deleted VM %s", self.where, location, name)

    # -- images -----------------------------------------------------------------------------

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        location = self._location(region)
        kind, ref = parse_image_id(image_id)
        if kind == "urn":
            return self._marketplace_image(location, image_id, *ref)
        return self._resource_image(location, image_id, ref)

    def _marketplace_image(self, location: str, image_id: str, publisher: str, offer: str,
                           sku: str, version: str) -> ImageInfo | None:
        base = (f"/subscriptions/{self.subscription_id}/providers/Microsoft.Compute/locations/"
                f"{location}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/"
                f"{sku}/versions")
        resolved = version
        if version.lower() == "latest":
            listed = self._request(location, "VirtualMachineImages_List", base, VM_API,
                                   absent_ok=True)
            # a bare JSON array of {name, location, id}
            rows = listed if isinstance(listed, list) else (listed or {}).get("value") or []
            names = [str(v.get("name")) for v in rows if isinstance(v, dict) and v.get("name")]
            if not names:
                return None
            resolved = max(names, key=_version_key)
        got = self._request(location, "VirtualMachineImages_Get", f"{base}/{resolved}", VM_API,
                            absent_ok=True)
        if got is None:
            return None
        props = got.get("properties") or {}
        return ImageInfo(
            region=location, image_id=image_id, name=f"{publisher} {offer} {sku} {version}",
            state="available",
            extra={k: v for k, v in {
                "publisher": publisher, "offer": offer, "sku": sku, "version": resolved,
                "os_type": (props.get("osDiskImage") or {}).get("operatingSystem"),
                "hyper_v_generation": props.get("hyperVGeneration"),
                "architecture": props.get("architecture"),
            }.items() if v is not None})

    def _resource_image(self, location: str, image_id: str, ref: str) -> ImageInfo | None:
        if _GALLERY_VERSION.search(ref):
            call, api = "GalleryImageVersions_Get", GALLERY_API
        elif _GALLERY_IMAGE.search(ref):
            call, api = "GalleryImages_Get", GALLERY_API
        elif _MANAGED_IMAGE.search(ref):
            call, api = "Images_Get", IMAGE_API
        else:
            raise BadRequest(f"{self.where}: {image_id!r} is not the id of a managed image "
                             f"(.../providers/Microsoft.Compute/images/NAME) or of a gallery "
                             f"image (.../galleries/G/images/I[/versions/V])")
        got = self._request(location, call, ref, api, absent_ok=True)
        if got is None:
            return None
        props = got.get("properties") or {}
        home = location_name(str(got.get("location", "")))
        regions = {home} | {location_name(str(r.get("name", ""))) for r in
                            (props.get("publishingProfile") or {}).get("targetRegions") or []}
        if location not in regions:
            self.context.log.info("%s: image %s lives in %s, not in %s", self.where, ref,
                                  ", ".join(sorted(r for r in regions if r)), location)
            return None
        state = str(props.get("provisioningState") or "")
        storage = props.get("storageProfile") or {}
        return ImageInfo(
            region=location, image_id=image_id, name=got.get("name"),
            state="available" if state.lower() == "succeeded" else (state.lower() or None),
            extra={k: v for k, v in {
                "tags": got.get("tags") or {}, "location": home or None,
                "os_type": ((storage.get("osDisk") or {}).get("osType")
                            or (props.get("identifier") or {}).get("osType")
                            or props.get("osType")),
                "hyper_v_generation": props.get("hyperVGeneration"),
            }.items() if v is not None})

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        """Not supported: a managed image belongs to one location and ARM has no call that
        copies it to another (it has to be rebuilt there from a copied VHD or snapshot), and a
        Marketplace image exists in every location already. Replicate through an Azure Compute
        Gallery (target regions) or bake per location, and register each location's image id
        as its own artifact."""
        raise Unsupported(
            f"{self.where}: copy_image is not supported on Azure: managed images are bound to "
            f"their location and ARM cannot copy them ({src_region} -> {dst_region}); publish "
            f"{image_id} through an Azure Compute Gallery replicated to {dst_region}, or bake "
            f"there, and add that image id as the artifact for {dst_region}",
            detail={"provider": self.name, "kind": self.kind, "feature": Feature.COPY_IMAGE.value})

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.drivers.clear()
        self.credentials.clear()
