"""The ``azure`` provider: Azure virtual machines through libcloud's Azure Resource Manager driver.

A location (``eastus``, ``westeurope``) is imm's region. Settings (``[providers.NAME]``)::

    kind = "azure"
    subscription_id = "00000000-0000-0000-0000-000000000000"
    tenant_id = "11111111-1111-1111-1111-111111111111"   # or the directory's domain name
    resource_group = "imm-prod"              # where VMs, their NICs and public IPs are created
    locations = ["eastus", "westeurope"]
    size = "Standard_B1s"                    # VM size when the service names none
    network = "imm-vnet"                     # virtual network for the NICs; or a table per location:
    # network = { eastus = "vnet-use", westeurope = "vnet-weu" }
    subnet = "default"                       # subnet of that network; string or table per location
    network_resource_group = "net-rg"        # optional: the network's resource group (default
                                             # resource_group)
    public_ip = false                        # give each VM a Standard static public IP (deleted
                                             # with it; closed to inbound traffic unless the
                                             # subnet's or NIC's security group allows it)
    admin_username = "azureuser"
    ssh_public_key_file = "/etc/imm/azure-admin.pub"   # or ssh_public_key = "ssh-ed25519 ...";
                                             # without one libcloud sets a random password that
                                             # nobody ever sees (immutable VMs need no login)
    os_disk_type = "Standard_LRS"            # managed OS disk SKU (Premium_LRS, StandardSSD_LRS)
    # os_disk_size_gb = 64
    name_prefix = "web"                      # optional; default: the service's name
    list_scope = "resource_group"            # or "subscription": list VMs in every resource group
                                             # (audit sees pets anywhere; needs Reader on it)
    power_state = true                       # read each listed VM's power state (one call each)
    terminate_untagged = false               # refuse to delete VMs imm did not launch
    delete_poll_s = 5                        # terminate: poll a deleting VM this often ...
    delete_timeout_s = 600                   # ... for at most this long before cleaning up

    # service principal credentials: environment variables (defaults shown) or files
    client_id_env = "AZURE_CLIENT_ID"        # or client_id_file = "/etc/imm/azure/client-id"
    client_secret_env = "AZURE_CLIENT_SECRET"  # or client_secret_file = "/etc/imm/azure/secret"

    cloud_environment = "default"            # or AzureChinaCloud, AzureUSGovernment,
                                             # AzureGermanCloud, or a table of endpoints:
    # cloud_environment = { resourceManagerEndpointUrl = "https://management.azure.com/",
    #     activeDirectoryEndpointUrl = "https://login.microsoftonline.com",
    #     activeDirectoryResourceId = "https://management.core.windows.net/",
    #     storageEndpointSuffix = ".core.windows.net" }
    libcloud_driver = "azure_arm"            # libcloud compute driver name (tests swap it)

    timeout_s = 30                           # per HTTP request
    retries = 5                              # throttling (429), 5xx, timeouts, connection errors
    backoff_base_s = 0.5
    backoff_max_s = 10

Image ids (artifacts) are image references: ``publisher:offer:sku:version`` for a Marketplace
image, or the resource id of a managed image or an Azure Compute Gallery image (version). They
are reported without the leading slash
(``subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/images/web-2``), so
record artifacts in that form; the provider accepts the leading slash too.

What it does:

- ``list_instances`` pages through ``VirtualMachines_List`` (``nextLink``) in the resource group
  or the whole subscription (``list_scope``), keeps the VMs of the configured locations, filters
  on tags, then reads the listed VMs' addresses from one NIC listing (and one public IP listing
  when a NIC has one) and, with ``power_state``, each VM's instance view. The image is read from
  ``properties.storageProfile.imageReference``; tags are the VM's ARM tags. The list is built in
  the calling thread: the returned iterator does no I/O.
- ``launch`` gives each VM a name derived from the client token (``<prefix>-<hash>-<n>``), so a
  repeated launch addresses the same VMs: a VM that exists already (with this token in its
  ``imm:token`` tag and the same image) is returned instead of created, and creation is an ARM
  PUT, idempotent by name (NIC ``<vm>-nic``, public IP ``<vm>-ip``, then the VM through libcloud's
  ``create_node`` with a managed OS disk deleted with the VM). After a timeout the VM is looked
  up before the PUT is sent again. Tags map directly to ARM tags (values up to 256 characters:
  the full ``imm:digest`` fits).
- ``terminate`` reads each VM (absent: already gone), refuses VMs without an ``imm:service`` tag
  unless ``terminate_untagged``, sends every DELETE first (Azure deletes asynchronously), then
  runs libcloud's ``destroy_node`` per VM, which polls until the VM is gone and deletes its NICs
  and managed OS disk; public IPs imm created (``<vm>-ip``) are deleted last.
- ``describe_image`` reads a Marketplace image version (``latest`` resolved to the newest), a
  managed image or a gallery image (version); None when it does not exist in the location.
- ``copy_image`` is not supported: see :meth:`AzureProvider.copy_image`.

Every call runs through :class:`~imm.plugins.cloud.CloudCaller` (retries, errors naming
cloud, provider, location and the ARM operation, e.g. ``VirtualMachines_CreateOrUpdate``); ARM's
``[Code] message`` errors are reworded ``Code: message`` so the error code lands in ``detail``.
One libcloud driver per location, used by one thread at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .core import TAG_TOKEN, location_name, parse_image_id
from .provider import AzureProvider

if TYPE_CHECKING:
    from ...registry import ProviderRegistry

__all__ = ["AzureProvider", "TAG_TOKEN", "imm_register_providers", "location_name", "parse_image_id"]


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(AzureProvider)
