"""The provider and router interfaces every plugin implements.

Methods are synchronous: cloud SDKs (libcloud) block, so imm calls them off the event loop with
``asyncio.to_thread`` under a per-provider concurrency limit. Implementations raise
``imm.errors.ProviderError`` / ``RouterError`` whose message names the provider, region and call
that failed and what to check.

Optional operations are declared here too, each behind a feature flag, as libcloud's
``NodeDriver`` does: a plugin lists what it implements in ``features`` and callers ask
``supports(Feature.X)`` instead of probing with ``hasattr``. Calling an operation the plugin lacks
raises ``imm.errors.Unsupported`` naming the plugin and the feature.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from ..errors import HealthTimeout, Unsupported

# Tag keys every launched instance carries (GCE: labels hold short forms, metadata the full digest).
# Defined here only; the domain imports them from this module.
TAG_SERVICE = "imm:service"
TAG_ROLLOUT = "imm:rollout"
TAG_SLOT = "imm:slot"
TAG_DIGEST = "imm:digest"


class Feature(StrEnum):
    """Optional provider features (``Provider.features``)."""

    COPY_IMAGE = "copy_image"  # copy_image(): copy an image between regions
    CREATE_IMAGE = "create_image"  # create_image(): capture an image from an instance
    REHASH = "rehash"  # rehash(): recompute a running instance's content digest
    CLIENT_TOKEN = "client_token"  # noqa: S105 - launch() is idempotent per LaunchRequest.client_token
    STORE_IMAGE = "store_image"  # store_image(): import a built artifact as an image
    IMAGE_MANIFEST = "image_manifest"  # image_manifest(): the file tree an image was built from


class RouterFeature(StrEnum):
    """Optional router features (``Router.features``)."""

    HEALTH_CHECK = "health_check"  # Backend.healthy becomes True/False (else always None)
    SESSIONS = "sessions"  # Backend.sessions counts live sessions (else always 0)


@dataclass
class PluginContext:
    """What imm hands every provider and router: where to keep state, where to log."""

    state_dir: Path
    log: logging.Logger




@dataclass
class Instance:
    id: str
    provider: str  # the provider's configured name, e.g. "local" or "aws-prod"
    region: str
    image_id: str  # the artifact image id it was launched from
    state: str  # pending | running | stopped | terminated | unknown
    launched_at: int  # Unix seconds
    tags: dict[str, str] = field(default_factory=dict)
    address: str | None = None  # "host:port" (local) or an IP routers can reach
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageInfo:
    region: str
    image_id: str
    name: str | None = None
    state: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchRequest:
    region: str
    image_id: str
    count: int
    tags: dict[str, str]  # always includes imm:service, imm:rollout, imm:slot, imm:digest
    client_token: str  # deterministic per (rollout, batch): a retried launch must not double up
    size: str | None = None
    network: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # service-specific extras


class Provider(ABC):
    """One configured provider: a cloud account/region set, or the local machine."""

    kind: ClassVar[str]
    features: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        """``name`` is the configured name ([providers.NAME]), ``settings`` the rest of that
        table; raise ConfigError naming the bad setting. No network calls here: immd starts
        without the cloud."""
        self.name = name
        self.settings = dict(settings)
        self.context = context

    def supports(self, feature: Feature | str) -> bool:
        """Whether this provider implements the optional ``feature``."""
        try:
            return Feature(feature) in self.features
        except ValueError:
            return False

    def unsupported(self, feature: Feature) -> Unsupported:
        """The error an optional operation raises when this provider lacks ``feature``."""
        have = ", ".join(sorted(self.features)) or "none"
        return Unsupported(
            f"provider {self.name} ({self.kind}) does not support {feature.value} "
            f"(its features: {have}); use a provider kind that does",
            detail={"provider": self.name, "kind": self.kind, "feature": feature.value})

    @abstractmethod
    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        """Every live instance (paginated underneath), optionally only those carrying ``tags``."""

    @abstractmethod
    def launch(self, request: LaunchRequest) -> list[Instance]:
        """Start ``count`` instances; with the same client_token a second call returns the first's."""

    @abstractmethod
    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Terminate; ids already gone are not an error."""

    @abstractmethod
    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        """The image, or None when it does not exist."""

    # -- optional operations: each raises Unsupported unless its Feature is in ``features``

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        """Copy ``image_id`` from ``src_region`` to ``dst_region``; the new image's id."""
        raise self.unsupported(Feature.COPY_IMAGE)

    def create_image(self, instance_id: str, name: str) -> str:
        """Capture an image of ``instance_id`` named ``name``; the new image's id."""
        raise self.unsupported(Feature.CREATE_IMAGE)

    def rehash(self, instance_id: str) -> tuple[str, dict[str, Any]]:
        """Recompute the running instance's content: ``(digest, tree)`` where ``tree`` maps each
        path to its hash, comparable with ``image_manifest``."""
        raise self.unsupported(Feature.REHASH)

    def store_image(self, src: Path, content_digest: str) -> str:
        """Import the artifact at ``src`` (content digest ``content_digest``); its image id."""
        raise self.unsupported(Feature.STORE_IMAGE)

    def image_manifest(self, image_id: str) -> dict[str, Any]:
        """The file tree ``image_id`` was built from, as ``rehash`` reports it."""
        raise self.unsupported(Feature.IMAGE_MANIFEST)

    def close(self) -> None:
        """Release connections and helpers; called at daemon shutdown."""


@dataclass
class Backend:
    name: str  # unique within the route (imm uses the instance id)
    address: str  # "host:port" or an IP
    weight: int
    state: str  # ready | drain | maint
    healthy: bool | None  # None: not checked yet
    sessions: int = 0  # current sessions/connections (0 where the router cannot tell)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Router(ABC):
    """Moves traffic for routes (an HAProxy backend, a DNS name, a load balancer)."""

    kind: ClassVar[str]
    features: ClassVar[frozenset[RouterFeature]] = frozenset({RouterFeature.HEALTH_CHECK})

    def __init__(self, name: str, settings: Mapping[str, Any], context: PluginContext) -> None:
        """``name`` is the configured name ([routers.NAME]), ``settings`` the rest of that table;
        raise ConfigError naming the bad setting."""
        self.name = name
        self.settings = dict(settings)
        self.context = context

    def supports(self, feature: RouterFeature | str) -> bool:
        """Whether this router implements ``feature``. A router whose features depend on its
        settings (DNS health checks are optional) overrides this."""
        try:
            return RouterFeature(feature) in self.features
        except ValueError:
            return False

    @property
    def checks_health(self) -> bool:
        """Whether ``Backend.healthy`` ever becomes True or False (a DNS router without health
        checks always answers None). When False, imm gates on the instance being running."""
        return self.supports(RouterFeature.HEALTH_CHECK)

    def start(self) -> None:
        """Bring up anything the router supervises (the embedded haproxy); idempotent."""

    def close(self) -> None:
        """Release what start() started; what must outlive immd (an embedded haproxy that keeps
        serving) may stay."""

    def stop(self) -> None:
        """Stop everything start() started, even what close() would leave serving (immd
        --stop-fleet). Called instead of, not before, close()."""
        self.close()

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:  # noqa: B027
        """Make sure ``route`` exists (e.g. an HAProxy frontend/backend pair); idempotent."""

    @abstractmethod
    def backends(self, route: str) -> list[Backend]:
        """Every backend of ``route`` as the router sees it now: weight, state, health, sessions.
        An unknown route is an error naming it, not an empty list."""

    @abstractmethod
    def add(self, route: str, name: str, address: str) -> None:
        """Add at weight 0 with health checks on; it takes no traffic until set_weights."""

    @abstractmethod
    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        """Set the weight (0..256) of each named backend; backends not named keep theirs.
        Weight 0 takes no new traffic; a router without weights approximates (a DNS or load
        balancer router serves the backends with weight > 0)."""

    @abstractmethod
    def drain(self, route: str, name: str) -> None:
        """Stop new traffic to ``name``; existing sessions finish."""

    @abstractmethod
    def remove(self, route: str, name: str) -> None:
        """Take ``name`` out of the route for good; absent is not an error."""

    def health(self, route: str) -> dict[str, bool | None]:
        """Backend name -> passed its health check (None: not checked yet)."""
        return {b.name: b.healthy for b in self.backends(route)}

    #: the default ``wait_health`` probes ``health()`` first after ``[0]`` seconds, then at an
    #: interval growing by half each time up to ``[1]``: prompt for a backend about to pass,
    #: and no busier than one call every ``[1]`` seconds for one that takes its time
    health_poll_s: ClassVar[tuple[float, float]] = (0.02, 0.5)

    def wait_health(self, route: str, names: Sequence[str], timeout_s: float,
                    stop: threading.Event | None = None) -> dict[str, bool | None]:
        """Wait until every backend in ``names`` has passed its health check; the route's
        health (as ``health()``) at that moment.

        Returns as soon as the condition holds, at once for a router that does not check
        health, and early when ``stop`` is set (the caller was woken for another reason; it
        compares the health returned itself). After ``timeout_s`` without the condition it
        raises :class:`HealthTimeout` naming the route and each backend still unhealthy.

        This default polls ``health()`` (see ``health_poll_s``); a router that can watch its
        check state more cheaply, or be told of a change, overrides it. It blocks: imm runs it
        in a worker thread of its own and sets ``stop`` when it no longer waits.
        """
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout_s
        interval, ceiling = self.health_poll_s
        while True:
            health = self.health(route)
            if (not self.checks_health or stop.is_set()
                    or all(health.get(n) is True for n in names)):
                return health
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.health_timed_out(route, names, health, timeout_s)
            stop.wait(min(interval, left))
            interval = min(interval * 1.5, ceiling)

    def health_timed_out(self, route: str, names: Sequence[str], health: Mapping[str, bool | None],
                       timeout_s: float) -> HealthTimeout:
        """The error of a ``wait_health`` that ran out of time: each backend still unhealthy
        and why (failing its check, not checked yet, not in the route)."""
        why = {True: "healthy", False: "failing its check", None: "not checked yet"}
        bad = sorted(n for n in names if health.get(n) is not True)
        text = ", ".join(f"{n} ({why[health[n]] if n in health else 'not in the route'})"
                         for n in bad)
        return HealthTimeout(
            f"router {self.name}, route {route}: {len(bad)} of {len(set(names))} backend(s) did "
            f"not pass the health check within {timeout_s:g}s: {text}; check that each "
            f"instance answers its health check, or raise the service's health_timeout_s",
            detail={"router": self.name, "route": route, "unhealthy": bad,
                    "health": {n: health.get(n) for n in bad}})
