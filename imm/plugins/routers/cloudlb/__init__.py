"""The ``cloudlb`` router: cloud load balancers through libcloud — AWS's ELB (classic) and ALB
drivers, and Google Cloud's GCE load balancer driver (network load balancing, target pools).

A route is what instances are registered with:

- ``driver = "elb"`` (classic ELB): the load balancer's **name**; backends are EC2 instances.
- ``driver = "alb"`` (ALB, also NLB target groups): a **target group ARN**; backends are EC2
  instances (target type ``instance``) or IP addresses (target type ``ip``, the address given to
  ``add``).
- ``driver = "gce"``: a **target pool name** in the router's region; backends are GCE instances.
  See "Google Cloud (driver = gce)" below.

Backend names are what imm passes to ``add`` (the instance id). For instance targets the name
must be the EC2 instance id; the address's port, if any, becomes the ALB target's port (else
``port`` from the settings, else the target group's port). Classic ELBs ignore ports: the
listener decides.

What operators must know — **cloud load balancers have no weight 0 and no weights**:

- Weights are membership: weight > 0 registers the target with the route, weight 0
  deregisters it. A 10 % canary is really "1 of N instances".
- Without a standby target group, ``add`` registers the instance at once, because a load
  balancer only health-checks what is registered and imm waits for that health before it
  shifts traffic. The load balancer sends a new target no traffic until it passes the health
  check (ALB: ``initial`` -> ``healthy``; classic ELB: ``OutOfService`` -> ``InService``), then
  it serves alongside the old instances: with this router a blue/green switch is not atomic,
  green serves as soon as it is healthy and blue leaves when its weight goes to 0.
- With ``standby_target_group`` (ALB only; in the router settings or a route's settings) the
  exact order holds: ``add`` registers the instance in the standby target group, where the
  load balancer health-checks it without routing to it; ``set_weights`` > 0 registers it with
  the route and then takes it out of standby; weight 0 puts it back in standby first. The
  standby group must be *in use* by the same load balancer or ALB will not check it: forward
  to it from a listener rule no client matches (e.g. a header condition
  ``X-Imm-Standby: <random>``) or with weight 0 in a weighted forward action.
- ``drain`` deregisters: ALB keeps sending in-flight requests to a ``draining`` target for the
  target group's deregistration delay (``deregistration_delay.timeout_seconds``, 300 s by
  default; shorten it for fast rollouts); a classic ELB does the same only if connection
  draining is enabled on it. imm sees the target in state ``drain`` while ALB drains it.
- ``remove`` deregisters (if ``drain`` did not), waits up to ``drain_timeout_s`` (counted from
  the drain) for the load balancer to finish draining — ALB: until the target leaves
  ``draining``; classic ELB: its connection-draining timeout, which cannot be observed — then
  forgets the backend. Past the timeout it warns and forgets it anyway (the load balancer ends
  the deregistration delay on its own; imm terminates the instance next, which cuts what is
  still in flight). Absent is not an error.
- Health is the load balancer's own view (ALB DescribeTargetHealth, ELB
  DescribeInstanceHealth): healthy / InService -> True; unhealthy, unused / OutOfService ->
  False; initial, draining, unavailable / Unknown -> None.
- Targets registered by someone else show up under their target id (weight 1) and can be set to
  weight 0, drained or removed.

The router remembers backends it was given (name, address, target, weight, drain state) in
``<state_dir>/cloudlb/<router>.json`` (written atomically); the load balancer's answer is the
truth for membership and health.

Settings (``[routers.NAME]``)::

    kind = "cloudlb"
    driver = "alb"                     # "elb" (classic) or "alb"
    region = "us-east-1"
    port = 8080                        # optional, ALB: target port when the address has none
    standby_target_group = "arn:aws:elasticloadbalancing:...:targetgroup/web-standby/..."
    drain_timeout_s = 30               # how long remove() waits for draining to finish
    key_env = "AWS_ACCESS_KEY_ID"      # credentials as for the aws provider (key_file, ...)
    secret_env = "AWS_SECRET_ACCESS_KEY"
    token_env = "AWS_SESSION_TOKEN"
    endpoint = "https://..."           # optional: an endpoint other than the driver's own
    libcloud_driver = "alb"            # optional: the libcloud LB driver name (tests swap it)
    timeout_s = 30                     # retries as for the aws provider
    retries = 5
    backoff_base_s = 0.5
    backoff_max_s = 10

A route's settings (the service's ``route_settings``) may set ``standby_target_group`` and
``drain_timeout_s`` for that route.

Google Cloud (``driver = "gce"``)
---------------------------------

A route is a **target pool** (network load balancing: a forwarding rule sends its traffic to the
pool; the pool sends each new connection to one of its instances that passes the pool's legacy
HTTP health check). Backend names are imm's instance ids, which for the ``gcp`` provider are
instance **names**; the pool holds instance URLs (``.../zones/<zone>/instances/<name>``). The
router keeps the name -> ``zones/<zone>/instances/<name>`` map in its state file, like the AWS
modes. The zone comes from the address when it is an instance path or URL
(``zones/us-central1-a/instances/web-1``), else from the settings: with one zone configured it is
that zone; with several, ``add`` looks the instance up by name in each (``instances.get``) and,
if the name exists in more than one, keeps the one whose internal or external IP is the address.

The same rules as for AWS hold, with GCE's words:

- **No weights, no weight 0.** Weight > 0 puts the instance in the pool (``addInstance``), weight
  0 takes it out (``removeInstance``). Without a standby pool ``add`` puts the instance in the
  pool at once: GCE health-checks only pool members and sends a member no new connection until
  its health check passes, and imm waits for that health before it moves traffic. So green
  serves as soon as it is healthy, next to blue, until blue's weight goes to 0.
- ``standby_target_pool`` (router or route settings): ``add`` puts the instance in that pool
  instead, where GCE health-checks it without it serving the route; weight > 0 moves it into the
  route's pool (in first, then out of standby); weight 0 moves it back. GCE reports health per
  forwarding-rule IP and only checks pools that something points at: give the standby pool the
  same health check and a forwarding rule of its own (an address no client uses), or its
  members' health stays unknown and imm's health wait times out.
- **Target pools have no connection draining.** ``drain`` and ``remove`` both take the instance
  out of the pool (``removeInstance``): no new connections go to it from then on, and GCE does
  not protect the ones already open (they end when imm terminates the instance). ``remove``
  waits ``drain_timeout_s`` counted from the drain only when it is configured (default 0 for
  ``gce``: no wait), e.g. to let short requests finish before the instance goes away.
- Health is the pool's own view: ``getHealth`` for each member (one call per instance; GCE's API
  takes one instance per call), one entry per forwarding rule IP: HEALTHY everywhere -> True,
  UNHEALTHY anywhere -> False, no entry / no state / instance gone -> None. A pool without a
  health check counts every instance as healthy (GCE's rule): the router warns about it in
  ``ensure_route``, since imm's health gate then proves only membership.
- Members added by someone else show up under their instance name (weight 1) and can be set to
  weight 0, drained or removed.
- Calls are raw requests through the GCE LB driver's own connection (the one it shares with its
  ``GCENodeDriver``): libcloud's ``ex_get_targetpool`` fetches every member instance, health check
  and region to build its objects (N+2 requests per read), its ``ex_targetpool_get_health`` fails
  on a member whose instance no longer exists, and its add/remove move one instance per
  operation. ``addInstance`` / ``removeInstance`` send every instance of a change in one call and
  poll the regional operation to DONE (``poll_interval_s``, ``operation_timeout_s``). A retried
  change first checks whether the earlier attempt took effect; an answer that the instance is
  already (not) a member counts as done once the pool shows it.

Settings (``[routers.NAME]``, ``driver = "gce"``)::

    kind = "cloudlb"
    driver = "gce"
    project = "my-project"               # default: project_id of the service account key
    zones = ["us-central1-a", "us-central1-b"]   # or zone = "us-central1-a"; one region
    region = "us-central1"               # optional: the zones' region (checked)
    standby_target_pool = "web-standby"  # optional, see above
    drain_timeout_s = 0                  # remove() waits this long after the drain (default 0)
    auth_type = "SA"                     # credentials exactly as for the gcp provider:
    credentials_env = "GOOGLE_APPLICATION_CREDENTIALS"  # service_account_file, client_id,
    token_cache_file = "/var/lib/imm/cloudlb/NAME.token.json"  # client_secret_env/_file, ...
    endpoint = "https://www.googleapis.com"  # optional: the API host
    libcloud_driver = "gce"              # optional: the libcloud LB driver name
    poll_interval_s = 2                  # between polls of regional operations
    operation_timeout_s = 300            # how long an addInstance/removeInstance may take
    timeout_s = 30                       # per request; retries as for the gcp provider
    retries = 5
    backoff_base_s = 0.5
    backoff_max_s = 10

The default token cache is ``<state_dir>/cloudlb/<router>.token.json`` (not the gcp provider's,
so a router and a provider with the same name never share one). Constructing the router does no
I/O: the key is read and the driver built on the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .aws import ALBRouter, AWSLBRouter, ELBRouter
from .base import CloudLBRouter, LBApi, Target
from .gce import GCERouter

if TYPE_CHECKING:
    from ...registry import RouterRegistry

__all__ = ["ALBRouter", "AWSLBRouter", "CloudLBRouter", "ELBRouter", "GCERouter", "LBApi",
           "Target", "imm_register_routers"]


@hookimpl(trylast=True)
def imm_register_routers(registry: RouterRegistry) -> None:
    registry.add(CloudLBRouter)
