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
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from ..errors import Unsupported

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
        """Stop what start() started."""

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:  # noqa: B027
        """Make sure ``route`` exists (e.g. an HAProxy frontend/backend pair); idempotent."""

    @abstractmethod
    def backends(self, route: str) -> list[Backend]:
        ...

    @abstractmethod
    def add(self, route: str, name: str, address: str) -> None:
        """Add at weight 0 with health checks on; it takes no traffic until set_weights."""

    @abstractmethod
    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        ...

    @abstractmethod
    def drain(self, route: str, name: str) -> None:
        """Stop new traffic to ``name``; existing sessions finish."""

    @abstractmethod
    def remove(self, route: str, name: str) -> None:
        """Take ``name`` out of the route for good; absent is not an error."""

    def health(self, route: str) -> dict[str, bool | None]:
        return {b.name: b.healthy for b in self.backends(route)}
