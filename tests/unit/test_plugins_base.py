"""The declared plugin interface: features, supports() and the Unsupported optional operations."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from imm.errors import ERROR_CLASSES, HealthTimeout, Unsupported
from imm.plugins.base import (
    Backend,
    Feature,
    ImageInfo,
    Instance,
    LaunchRequest,
    PluginContext,
    Provider,
    Router,
    RouterFeature,
)

CTX = PluginContext(Path("/nonexistent"), logging.getLogger("test"))


class Bare(Provider):
    kind = "bare"

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        return iter(())

    def launch(self, request: LaunchRequest) -> list[Instance]:
        return []

    def terminate(self, instance_ids: Sequence[str]) -> None:
        return None

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        return None


class Copier(Bare):
    kind = "copier"
    features = frozenset({Feature.COPY_IMAGE})

    def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        return f"{image_id}@{dst_region}"


@pytest.mark.parametrize(("call", "feature"), [
    (lambda p: p.copy_image("a", "img", "b"), Feature.COPY_IMAGE),
    (lambda p: p.create_image("i-1", "snap"), Feature.CREATE_IMAGE),
    (lambda p: p.rehash("i-1"), Feature.REHASH),
    (lambda p: p.store_image(Path("/x"), "sha256:00"), Feature.STORE_IMAGE),
    (lambda p: p.image_manifest("img"), Feature.IMAGE_MANIFEST),
])
def test_an_optional_operation_the_provider_lacks_raises_unsupported_naming_it(call, feature) -> None:
    p = Bare("edge", {}, CTX)
    assert not p.supports(feature)
    with pytest.raises(Unsupported) as err:
        call(p)
    assert f"provider edge (bare) does not support {feature.value}" in err.value.message
    assert err.value.detail == {"provider": "edge", "kind": "bare", "feature": feature.value}
    assert err.value.status == 501 and ERROR_CLASSES["unsupported"] is Unsupported


def test_supports_follows_features_and_accepts_the_string_form() -> None:
    p = Copier("c", {}, CTX)
    assert p.supports(Feature.COPY_IMAGE) and p.supports("copy_image")
    assert not p.supports(Feature.REHASH) and not p.supports("no-such-feature")
    assert p.copy_image("a", "img", "b") == "img@b"
    with pytest.raises(Unsupported, match="its features: copy_image"):
        p.rehash("i-1")


def test_feature_values_are_the_documented_strings() -> None:
    assert {f.value for f in Feature} == {"copy_image", "create_image", "rehash", "client_token",
                                          "store_image", "image_manifest"}


class Plain(Router):
    kind = "plain"
    features = frozenset()

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.table: dict[str, dict[str, Backend]] = {}

    def backends(self, route: str) -> list[Backend]:
        return list(self.table.get(route, {}).values())

    def add(self, route: str, name: str, address: str) -> None:
        self.table.setdefault(route, {})[name] = Backend(name, address, 0, "ready", None)

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None: ...

    def drain(self, route: str, name: str) -> None: ...

    def remove(self, route: str, name: str) -> None:
        self.table.get(route, {}).pop(name, None)


def test_router_health_check_is_a_feature() -> None:
    r = Plain("p", {}, CTX)
    assert not r.checks_health and not r.supports(RouterFeature.HEALTH_CHECK)
    r.add("web", "i-1", "10.0.0.1:80")
    assert r.health("web") == {"i-1": None}

    class Checked(Plain):
        features = frozenset({RouterFeature.HEALTH_CHECK})

    assert Checked("c", {}, CTX).checks_health


def test_one_context_class() -> None:
    from imm.plugins import base
    assert not hasattr(base, "ProviderContext") and not hasattr(base, "RouterContext")


class Flaky(Plain):
    """Health checked; a backend passes once health() has been asked ``after`` times."""

    features = frozenset({RouterFeature.HEALTH_CHECK})
    health_poll_s = (0.001, 0.004)

    def __init__(self, *a, after: int = 3, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.after, self.asked = after, 0

    def health(self, route: str) -> dict[str, bool | None]:
        self.asked += 1
        return {n: self.asked > self.after for n in self.table.get(route, {})}


def test_the_default_wait_health_polls_until_every_backend_passes() -> None:
    r = Flaky("f", {}, CTX, after=3)
    r.add("web", "i-1", "10.0.0.1:80")
    assert r.wait_health("web", ["i-1"], 30) == {"i-1": True}
    assert r.asked == 4, "it returns at the first health() that shows the check passed"


def test_the_default_wait_health_names_what_is_unhealthy_when_it_times_out() -> None:
    r = Flaky("f", {}, CTX, after=10**9)
    r.add("web", "i-1", "10.0.0.1:80")
    with pytest.raises(HealthTimeout) as err:
        r.wait_health("web", ["i-1", "i-2"], 0.01)
    assert err.value.message.startswith(
        "router f, route web: 2 of 2 backend(s) did not pass the health check within 0.01s: "
        "i-1 (failing its check), i-2 (not in the route);")
    assert err.value.detail == {"router": "f", "route": "web", "unhealthy": ["i-1", "i-2"],
                                "health": {"i-1": False, "i-2": None}}
    assert ERROR_CLASSES["health-timeout"] is HealthTimeout and err.value.status == 504


def test_the_default_wait_health_ends_when_told_to_stop_or_when_nothing_is_checked() -> None:
    r = Flaky("f", {}, CTX, after=10**9)
    r.add("web", "i-1", "10.0.0.1:80")
    stop = threading.Event()
    stop.set()
    assert r.wait_health("web", ["i-1"], 3600, stop) == {"i-1": False}
    p = Plain("p", {}, CTX)  # no health checks: nothing to wait for
    p.add("web", "i-1", "10.0.0.1:80")
    assert p.wait_health("web", ["i-1"], 3600) == {"i-1": None}
