"""The ``gcp`` provider: Compute Engine instances and images through libcloud's GCE driver.

A GCE *zone* is what imm calls a region: targets, artifacts and instances name zones
(``us-central1-a``). Images are global to a project, so one image id serves every zone.

Settings (``[providers.NAME]`` in the config)::

    kind = "gcp"
    project = "my-project"                 # default: project_id of the service account key
    zones = ["us-central1-a", "europe-west1-b"]
    size = "e2-small"                      # machine type when the service names none
    network = "default"                    # VPC network; or a table per zone
    subnetwork = "web-subnet"              # optional; or a table per zone (custom-mode VPCs)
    external_ip = false                    # give instances an ephemeral public address
    network_tags = ["web"]                 # GCE network tags (firewall rules)
    service_account_email = "web@my-project.iam.gserviceaccount.com"  # instance identity
    scopes = ["cloud-platform"]            # its OAuth scopes (libcloud/gcloud aliases allowed)
    disk_type = "pd-balanced"              # boot disk type (default pd-standard)
    disk_size_gb = 20                      # boot disk size (default: the image's)
    preemptible = false
    metadata = { "enable-oslogin" = "TRUE" }   # extra instance metadata (not imm-* keys)

    # credentials: never in this file
    auth_type = "SA"                       # SA (service account key), GCE (metadata server), IA
    service_account_file = "/etc/imm/gcp/key.json"   # SA: the JSON key (mode 0600) ...
    credentials_env = "GOOGLE_APPLICATION_CREDENTIALS"  # ... or the env var naming its path
    token_cache_file = "/var/lib/imm/gcp/NAME.token.json"  # libcloud's OAuth2 token cache
    # IA (installed application) needs client_id and client_secret_env / client_secret_file,
    # and a token cache holding a refresh token: immd never starts an interactive login.

    endpoint = "https://www.googleapis.com"  # the API host (a Private Service Connect name)
    terminate_untagged = false             # refuse to delete instances imm did not launch
    poll_interval_s = 2                    # between polls of zone operations
    operation_timeout_s = 600              # how long an insert/delete operation may take
    timeout_s = 30                         # per HTTP request
    retries = 5                            # throttling, 5xx, timeouts, connection errors
    backoff_base_s = 0.5
    backoff_max_s = 10

Tags. GCE labels cannot hold imm's values (at most 63 characters of ``[a-z0-9_-]``; an image
digest is 71), so every ``imm:<x>`` tag goes into instance **metadata** as ``imm-<x>`` with its
full value, and ``imm:service`` / ``imm:rollout`` / ``imm:slot`` also into **labels**
(``imm-service`` ...), sanitised (lowercased, other characters turned into ``-``, cut to 63), for
filtering in the console and billing. Other tags become labels only. When listing, metadata is
read first and labels are the fallback; other labels are returned as tags unchanged. The
launch's client token is kept as ``imm-token`` and the image id it was asked for as ``imm-image``.

Image ids: an image of the project is named by its name (``web-v2``); an image of another
project by ``projects/P/global/images/NAME``; a full selfLink URL is accepted everywhere and
means the same image. ``list_instances`` reports the image the boot disk was really created from
(``sourceImage``), in the same spelling as the ``imm-image`` metadata when both name the same
image, and in the short form above otherwise. ``describe_image`` also resolves
``[projects/P/global/images/]family/F``; a launch wants a concrete image, not a family.

What it does:

- ``list_instances`` is libcloud's ``list_nodes`` (one zone's ``instances.list``, or the
  aggregated list when several zones are configured, paged by libcloud with ``pageToken``),
  filtered by tags on our side (metadata is the truth; labels are sanitised copies).
- ``launch``: GCE has no client token, so instance names derive from it:
  ``imm-<service>-<sha256(token)[:12]>-000``... An attempt first lists the zone and keeps the
  instances that already carry those names (and the same ``imm-token``), then inserts the
  missing ones (``instances.insert``; 409 ``alreadyExists`` means an earlier attempt made it),
  polls their zone operations to DONE and returns them. A retried launch therefore never doubles
  up, whether the retry comes from imm's backoff or from the rollout engine.
- ``terminate`` finds the instances by name in the configured zones, refuses instances without
  ``imm:service`` unless ``terminate_untagged = true``, issues every ``instances.delete`` and polls
  the operations to DONE (404 = already gone; an instance already being deleted is waited for).
- ``describe_image`` is ``ex_get_image`` on the image's selfLink (404 = None).
- ``copy_image``: GCE images are global to the project, so the "copy" for another zone is the
  same image id (checked to exist).

Calls run through :class:`~imm.plugins.cloud.CloudCaller` (retries and error messages
naming cloud, provider, zone and API method, credentials scrubbed). Drivers are pooled: each call
takes one that no other thread is using.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .core import instance_names, label_value, labels_for, metadata_for, parse_image, tags_from
from .provider import GCPProvider

if TYPE_CHECKING:
    from ...registry import ProviderRegistry

__all__ = [
    "GCPProvider",
    "imm_register_providers",
    "instance_names",
    "label_value",
    "labels_for",
    "metadata_for",
    "parse_image",
    "tags_from",
]


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(GCPProvider)
