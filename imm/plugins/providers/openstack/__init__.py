"""The ``openstack`` provider: nova servers and glance images through libcloud's
``OpenStack_2_NodeDriver`` (keystone v3 password auth), one driver per region.

Settings (``[providers.NAME]`` in the config)::

    kind = "openstack"
    auth_url = "https://keystone.example.com:5000"   # keystone; a trailing /v3 is dropped
    username = "imm"
    project = "web-prod"                     # the project (tenant) servers live in
    domain = "Default"                       # the user's domain (name)
    project_domain_id = "default"            # the project's domain (id)
    regions = ["RegionOne"]                  # one driver per region; endpoints from the catalog
    flavor = "m1.small"                      # name or id, when the service names no size;
                                             # or a table per region
    network = ["private"]                    # network name(s) or id(s); or a table per region
    security_groups = ["web"]                # optional, by name
    key_name = "ops"                         # optional nova key pair
    availability_zone = "nova"               # optional
    wait_active_s = 600                      # launch waits for ACTIVE (0: return at BUILD)
    poll_interval_s = 2
    page_size = 500                          # servers per page (nova's limit/marker paging)
    terminate_untagged = false               # refuse to delete servers imm did not launch

    # the password: an environment variable (default OS_PASSWORD) or a file, never the value
    password_env = "OS_PASSWORD"             # or password_file = "/etc/imm/openstack.password"

    # endpoint overrides instead of the catalog (all three, or none; string or table per region)
    compute_url = "https://nova.example.com:8774/v2.1/<project id>"
    image_url = "https://glance.example.com:9292"
    network_url = "https://neutron.example.com:9696"

    timeout_s = 30                           # per HTTP request
    retries = 5                              # throttling (429), 5xx, timeouts, resets
    backoff_base_s = 0.5
    backoff_max_s = 10

Tags are server **metadata** (key/value, 255 characters each, so the full ``imm:digest`` fits):
given as ``ex_metadata`` when the server is created, read back from ``extra["metadata"]``. The
image id of an instance is the glance image id nova reports (``extra["imageId"]``).

What it does:

- ``list_instances`` pages through ``GET /servers/detail`` with ``limit``/``marker`` (each page
  is its own retried call), in all regions concurrently, and filters by metadata here (nova has
  no server-side metadata filter). Only the token's project is listed: libcloud's
  ``ex_all_tenants`` (``all_tenants=1``) would list every project's servers to an admin, which is
  not what imm manages. Servers being deleted (task state ``deleting``) and soft-deleted ones are
  listed as ``terminated``; ``ERROR`` ones as ``unknown`` with the fault in ``extra``.
- ``launch`` is idempotent by the client token: server ``i`` of a launch is named
  ``<service>-<slot>-<sha256(token)[:16]>-<i>`` and carries an ``imm:token`` metadata item. Before
  creating anything the servers whose name holds that hash (nova's ``name`` filter) and whose
  ``imm:token`` matches are looked up and reused; only the missing ones are created (one
  ``create_node`` each; a create that timed out is looked up by its name before it is tried
  again). Then it waits (``wait_active_s``) until every server is ACTIVE; servers that end in
  ERROR are deleted and the launch fails naming nova's fault, so a retry (same token) replaces
  just those. Flavor and network names are resolved to ids (paged ``/flavors/detail``, neutron
  ``/v2.0/networks``) once per region.
- ``terminate`` finds each id's region (``GET /servers/<id>``; 404 = already gone), refuses
  servers without an ``imm:service`` tag unless ``terminate_untagged = true``, then
  ``destroy_node`` (``DELETE /servers/<id>``; 404 = gone).
- ``describe_image`` is glance's ``GET /v2/images/<id>`` (what ``get_image`` calls, read raw so
  that checksums and custom properties survive); None on 404.
- ``copy_image`` is not supported: glance images live in one region's glance, and neither glance
  nor nova can copy an image to another region (glance's ``copy-image`` import method only copies
  between the stores of one glance). A copy means downloading the image data from one region and
  uploading it to the other, gigabytes through immd; let the baker (Packer's openstack builder,
  ``glance image-create`` per region) upload to every region and record each artifact instead.

Authentication: each libcloud connection (compute, image, network) gets a keystone token on first
use and keeps it until shortly before its ``expires_at``; the log-in is done as a step of its own
before each call (a no-op while the token is valid), so that errors say whether keystone, the
catalog (no endpoint for the region) or the service failed. When a service answers 401 anyway
(token revoked, keystone keys rotated) libcloud drops the token; the call is then made once more
with a fresh one. Keystone tokens are scrubbed from error messages like the password.

Calls run through :class:`~imm.plugins.cloud.CloudCaller` (see there for retries and
error messages); each region's driver is used by one thread at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .core import TAG_TOKEN, effective_token, token_key
from .provider import OpenStackProvider

if TYPE_CHECKING:
    from ...registry import ProviderRegistry

__all__ = ["OpenStackProvider", "TAG_TOKEN", "effective_token", "imm_register_providers", "token_key"]


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(OpenStackProvider)
