"""The ``aws`` provider: EC2 instances and AMIs through libcloud's EC2 driver, one per region.

Settings (``[providers.NAME]`` in the config)::

    kind = "aws"
    regions = ["us-east-1", "eu-west-1"]     # one libcloud EC2 driver per region
    size = "t3.micro"                        # instance type when the service names none
    subnet_id = "subnet-0abc"                # optional; or a table per region:
    # subnet_id = { "us-east-1" = "subnet-0abc", "eu-west-1" = "subnet-0def" }
    security_group_ids = ["sg-0abc"]         # optional (needs subnet_id); list or table per region
    key_name = "ops"                         # optional EC2 key pair; string or table per region
    iam_profile = "web-role"                 # optional instance profile name or ARN
    assign_public_ip = false                 # with a subnet: give instances a public address

    # credentials: environment variables (defaults shown) or files, never the values here
    key_env = "AWS_ACCESS_KEY_ID"            # or key_file = "/etc/imm/aws/key-id"
    secret_env = "AWS_SECRET_ACCESS_KEY"     # or secret_file = "/etc/imm/aws/secret"
    token_env = "AWS_SESSION_TOKEN"          # optional; or token_file
    # credentials_file = "/etc/imm/aws/credentials"   # instead: an AWS shared credentials file
    # profile = "imm"                                 # ... and its profile (default "default")

    endpoint = "https://vpce-0abc.ec2.us-east-1.vpce.amazonaws.com"  # optional; or per region
    libcloud_driver = "ec2"                  # libcloud compute driver name (tests swap it)
    page_size = 1000                         # DescribeInstances MaxResults (5..1000)
    terminate_untagged = false               # refuse to terminate instances imm did not launch

    timeout_s = 30                           # per HTTP request
    retries = 5                              # throttling, 5xx, timeouts, connection errors
    backoff_base_s = 0.5
    backoff_max_s = 10

What it does:

- ``list_instances`` pages through DescribeInstances with ``MaxResults``/``NextToken`` (libcloud's
  ``list_nodes`` does not paginate, and makes an extra DescribeAddresses call per page), in all
  regions concurrently, with ``tag:<key>`` filters when tags are given, and hands each page on
  as it arrives (a lazy iterator holding a few pages, not the fleet). Each page is read
  straight into imm instances (``pages.py``), not through libcloud's per-field ``_to_node``.
  Terminated instances are not listed; ``shutting-down`` ones are, with state ``terminated``.
- ``launch`` is RunInstances (libcloud ``create_node``) with ``MinCount = MaxCount = count``, the
  request's tags on the instances at launch (TagSpecifications) and ``ClientToken`` = the
  request's client token (hashed when longer than EC2's 64 characters), so a retried launch
  returns the first launch's instances. The token is also put in an ``imm:token`` tag, and
  instances carrying it are looked for before launching and before every retry after a timeout:
  that keeps launches idempotent on EC2-compatible endpoints that ignore ClientToken (moto
  does) and after EC2 has forgotten the token.
- ``terminate`` finds each id's region with one DescribeInstances per region (ids in no region
  are already gone), refuses instances without an ``imm:service`` tag unless
  ``terminate_untagged = true``, and terminates them in batches (one at a time if the batch
  races with another terminate).
- ``describe_image`` is DescribeImages by id (None when EC2 says the AMI does not exist).
- ``copy_image`` is CopyImage into the destination region with the source AMI's name, the
  source's ``imm:*`` tags and an ``imm:copied-from = <region>/<ami>`` tag, and a ClientToken
  derived from (source region, AMI, destination region): a repeated copy returns the existing
  copy (looked up by that tag first) instead of making a second one.

Calls run through :class:`~imm.plugins.cloud.CloudCaller` (see there for retries and
error messages); each region's driver is used by one thread at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .core import TAG_COPIED_FROM, TAG_TOKEN, effective_token
from .provider import AWSProvider

if TYPE_CHECKING:
    from ...registry import ProviderRegistry

__all__ = ["AWSProvider", "TAG_COPIED_FROM", "TAG_TOKEN", "effective_token", "imm_register_providers"]


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(AWSProvider)
