"""A small world for engine unit tests: the real store, catalog, keyring and plugin manager in a
temporary directory, and an in-memory provider and router written for these tests.

The provider and router are stateful stand-ins for a cloud and a load balancer (what the engine
is tested against here is its own logic: plans, journal, rollback, verbs); the real plugins are
tested against their real peers elsewhere. Each fake can be told to fail a given call.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from imm.catalog.keys import KeyRing
from imm.catalog.service import Catalog
from imm.config import Settings
from imm.context import Context, ProviderHandle, RouterHandle, Timings
from imm.daemon.core import SCHEMAS
from imm.errors import ProviderError, RouterError
from imm.plugins.base import (
    Backend,
    ImageInfo,
    Instance,
    LaunchRequest,
    PluginContext,
    Provider,
    Router,
)
from imm.plugins.hookspecs import hookimpl
from imm.plugins.manager import Plugins
from imm.rollout.engine import Engine
from imm.rollout.states import TERMINAL

from pgcluster import open_database

T = TypeVar("T")
FAST = Timings(poll_s=0.002, view_ttl_s=0.0, retry_min_s=0.005, retry_max_s=0.02)


class MemProvider(Provider):
    """Instances in a dict; launch honours the client token, as the real providers do."""

    kind: ClassVar[str] = "memory"

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name, {}, PluginContext(Path("/nonexistent"), None))  # type: ignore[arg-type]
        self.instances: dict[str, Instance] = {}
        self.tokens: dict[str, list[str]] = {}
        self.fail: dict[str, int] = {}  # call name -> how many of the next calls fail
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._clock = itertools.count(1000)

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        if self.fail.get(call, 0) > 0:
            self.fail[call] -= 1
            raise ProviderError(f"provider {self.name}: {call} failed (injected)")

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        self._maybe_fail("list_instances")
        for i in list(self.instances.values()):
            if all(i.tags.get(k) == v for k, v in (tags or {}).items()):
                yield i

    def launch(self, request: LaunchRequest) -> list[Instance]:
        self._maybe_fail("launch")
        if request.client_token in self.tokens:
            return [self.instances[i] for i in self.tokens[request.client_token]
                    if i in self.instances]
        out = []
        for _ in range(request.count):
            n = next(self._ids)
            # ids and addresses unique across providers, as a cloud's are
            iid, net = ((f"i-{n}", "0.0") if self.name == "mem"
                        else (f"i-{self.name}-{n}", f"1.{sum(map(ord, self.name)) % 250}"))
            inst = Instance(id=iid, provider=self.name, region=request.region,
                            image_id=request.image_id, state="running",
                            launched_at=next(self._clock), tags=dict(request.tags),
                            address=f"10.{net}.{n}:80")
            self.instances[inst.id] = inst
            out.append(inst)
        self.tokens[request.client_token] = [i.id for i in out]
        return out

    def terminate(self, instance_ids: Sequence[str]) -> None:
        self._maybe_fail("terminate")
        for i in instance_ids:
            self.instances.pop(i, None)

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        return ImageInfo(region=region, image_id=image_id)

    def add_old(self, digest: str, n: int, service: str = "web") -> list[Instance]:
        """Instances as a previous rollout left them."""
        return self.launch(LaunchRequest(
            region="r1", image_id="img-old", count=n, client_token=f"old-{digest[:12]}-{n}",
            tags={"imm:service": service, "imm:rollout": "web-old", "imm:slot": "b0",
                  "imm:digest": digest}))


class Sick(set[str]):
    """Backend names failing their health check; a change wakes the router's waits."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self.changed = changed

    def add(self, name: str) -> None:
        with self.changed:
            super().add(name)
            self.changed.notify_all()

    def discard(self, name: str) -> None:
        with self.changed:
            super().discard(name)
            self.changed.notify_all()


class MemRouter(Router):
    """Routes of weighted backends; health is what the test says (healthy unless listed).

    ``wait_health`` sleeps on a condition variable that every change of health (a backend
    added, one made sick or well) notifies: no polling, as a router told of its checks works.
    """

    kind: ClassVar[str] = "memory"

    def __init__(self, name: str = "lb", checks: bool = True) -> None:
        super().__init__(name, {}, PluginContext(Path("/nonexistent"), None))  # type: ignore[arg-type]
        self.routes: dict[str, dict[str, Backend]] = {}
        self.changed = threading.Condition()
        self.sick = Sick(self.changed)  # backend names that fail their health check
        self.waits: list[tuple[str, list[str]]] = []  # (route, names) of each wait_health
        self.born_sick = False  # backends added while set fail their check until made well
        self.checks = checks
        self.fail: dict[str, int] = {}
        self.history: list[tuple[str, Any]] = []  # (call, argument) in order
        self.started = 0

    @property
    def checks_health(self) -> bool:
        return self.checks

    def _maybe_fail(self, call: str) -> None:
        if self.fail.get(call, 0) > 0:
            self.fail[call] -= 1
            raise RouterError(f"router {self.name}: {call} failed (injected)")

    def start(self) -> None:
        self.started += 1

    def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        self._maybe_fail("ensure_route")
        self.routes.setdefault(route, {})

    def _declared(self, route: str) -> dict[str, Backend]:
        """The route's backends; as haproxy does, a route nobody declared is an error."""
        if route not in self.routes:
            raise RouterError(f"router {self.name}: route {route!r} is not declared; call "
                              "ensure_route() with its bind address first")
        return self.routes[route]

    def backends(self, route: str) -> list[Backend]:
        self._maybe_fail("backends")
        out = []
        for b in self._declared(route).values():
            healthy = None if not self.checks else b.name not in self.sick
            out.append(Backend(b.name, b.address, b.weight, b.state, healthy))
        return out

    def wait_health(self, route: str, names: Sequence[str], timeout_s: float,
                    stop: threading.Event | None = None) -> dict[str, bool | None]:
        self._maybe_fail("wait_health")
        self.waits.append((route, list(names)))
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                health = self.health(route)
                if (not self.checks or (stop is not None and stop.is_set())
                        or all(health.get(n) is True for n in names)):
                    return health
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.health_timed_out(route, names, health, timeout_s)
                # a set stop cannot notify this condition: look at it again now and then
                self.changed.wait(min(left, 0.05) if stop is not None else left)

    def add(self, route: str, name: str, address: str) -> None:
        self._maybe_fail("add")
        self.history.append(("add", name))
        with self.changed:
            self._declared(route)[name] = Backend(name, address, 0, "ready", None)
            if self.born_sick:
                set.add(self.sick, name)
            self.changed.notify_all()

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        self._maybe_fail("set_weights")
        self.history.append(("set_weights", dict(weights)))
        for n, w in weights.items():
            b = self._declared(route)[n]
            b.weight, b.state = w, "ready"

    def drain(self, route: str, name: str) -> None:
        self._maybe_fail("drain")
        self.history.append(("drain", name))
        self._declared(route)[name].state = "drain"

    def remove(self, route: str, name: str) -> None:
        self._maybe_fail("remove")
        self.history.append(("remove", name))
        self._declared(route).pop(name, None)

    def serving(self, route: str = "web") -> dict[str, int]:
        """Backends taking traffic: weight > 0 and ready."""
        return {n: b.weight for n, b in self.routes.get(route, {}).items()
                if b.weight > 0 and b.state == "ready"}


class MemPlugin:
    """Registers the in-memory provider and router as plugins of kind "memory", for a real
    ``Daemon`` (``extra_plugins=[MemPlugin()]``) configured with ``kind = "memory"``."""

    def __init__(self) -> None:
        self.providers: list[MemProvider] = []
        self.routers: list[MemRouter] = []
        plugin = self

        class P(MemProvider):
            def __init__(self, name: str, settings: Any, ctx: Any) -> None:
                super().__init__(name)
                plugin.providers.append(self)

        class R(MemRouter):
            def __init__(self, name: str, settings: Any, ctx: Any) -> None:
                super().__init__(name)
                plugin.routers.append(self)

        self.P, self.R = P, R

    @hookimpl
    def imm_register_providers(self, registry: Any) -> None:
        registry.add(self.P)

    @hookimpl
    def imm_register_routers(self, registry: Any) -> None:
        registry.add(self.R)


@dataclass
class Gate:
    """An imm_health_gate plugin refusing the steps named in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    @hookimpl
    def imm_health_gate(self, rollout: dict[str, Any], step: dict[str, Any],
                        instances: list[dict[str, Any]]) -> str | None:
        self.seen.append(step["name"])
        return "error rate 7% > 1%" if step["name"] in self.refuse else None


@dataclass
class Events:
    """An imm_rollout_event plugin recording what it observes."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    @hookimpl
    def imm_rollout_event(self, event: dict[str, Any]) -> None:
        self.seen.append(event)


# a canary of 2 with a surge of 2 keeps both old instances until 100 %: the step names the
# engine tests use (0-launch, 1-attach, 2-shift, 3-pause, ...); test_rollout_plan_canary.py
# tests the shrinking old set
SERVICE = {"targets": [{"provider": "mem", "region": "r1", "count": 2}], "router": "lb",
           "route": "web", "strategy": "blue-green", "canary_steps": [10, 50],
           "canary_pause_s": 0, "canary_surge": 2, "health_timeout_s": 1, "batch": "1"}


def serving_fleet(provider: Any, router: Any, digest: str, n: int) -> list[str]:
    """``n`` instances of ``digest`` behind route ``web`` at full weight, as a completed rollout
    leaves them (the router's history cleared); their ids."""
    ids = [i.id for i in provider.add_old(digest, n)]
    for i in ids:
        router.add("web", i, provider.instances[i].address or "")
    router.set_weights("web", {i: 100 for i in ids})
    router.history.clear()
    return ids


class World:
    def __init__(self, tmp: Path, services: dict[str, dict[str, Any]] | None = None,
                 plugins: Sequence[object] = (), checks: bool = True,
                 timings: Timings = FAST, providers: Sequence[str] = ("mem",)) -> None:
        self.settings = Settings(source="test", state_dir=tmp, socket=tmp / "sock",
                                 services=services if services is not None
                                 else {"web": dict(SERVICE)})
        self.keyring, _ = KeyRing.load_or_create(tmp / "keys")
        self.db = open_database(tmp, SCHEMAS)
        self.db.open()
        self.catalog = Catalog(self.keyring, "imm.test/ledger")
        self.db.write_sync(self.catalog.init_keys, "test")
        self.plugins = Plugins()
        for p in plugins:
            self.plugins.register(p, name=type(p).__name__.lower())
        # several providers (e.g. "aws", "gcp") for services whose targets span them
        self.providers = {name: MemProvider(name) for name in providers}
        self.provider = self.providers[providers[0]]
        self.router = MemRouter(checks=checks)
        self.ctx = Context(settings=self.settings, store=self.db, catalog=self.catalog,
                           keyring=self.keyring, plugins=self.plugins,
                           providers={n: ProviderHandle(p) for n, p in self.providers.items()},
                           routers={"lb": RouterHandle(self.router)}, timings=timings)
        self.engine = Engine(self.ctx)
        self.router.routes["web"] = {}

    def image(self, version: str, regions: Sequence[str] = ("r1",),
              targets: Sequence[tuple[str, str]] = ()) -> str:
        """An image with an artifact in each region of "mem" (or each (provider, region))."""
        row = self.db.write_sync(
            self.catalog.add_image, "test", name="app", version=version,
            content_digest="sha256:" + version.encode().hex().ljust(64, "0")[:64],
            content_kind="file", layers=[], boot_actions=[], parent=None, labels={},
            artifacts=[(p, r, f"img-{version}-{p}-{r}") for p, r in targets] if targets
            else [("mem", r, f"img-{version}-{r}") for r in regions])
        return str(row["digest"])

    def old_fleet(self, digest: str, n: int = 2) -> list[str]:
        """A serving fleet of ``n`` instances of ``digest``, as a completed rollout leaves it."""
        return serving_fleet(self.provider, self.router, digest, n)

    def close(self) -> None:
        self.db.close()


async def settle(engine: Engine, rid: str, states: Sequence[str] = TERMINAL,
                 limit_s: float = 30.0) -> dict[str, Any]:
    """Wait until the rollout reaches one of ``states``; its status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        st = await engine.status(rid)
        if st["state"] in states:
            return st
        if loop.time() > deadline:
            raise AssertionError(f"rollout {rid} stuck in {st['state']} at {st['step']}: "
                                 f"{st['error']}")
        await asyncio.sleep(0.01)


async def at_step(engine: Engine, rid: str, step: str, limit_s: float = 30.0) -> dict[str, Any]:
    """Wait until ``step`` is the rollout's current (last begun) step; its status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        st = await engine.status(rid)
        if st["step"] == step:
            return st
        if loop.time() > deadline:
            raise AssertionError(f"rollout {rid} never reached {step} (at {st['step']})")
        await asyncio.sleep(0.01)


async def wait_for(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def run(world: World, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``body`` on a fresh loop with the engine started; park the engine afterwards."""
    async def main() -> T:
        await world.engine.startup()
        try:
            return await body()
        finally:
            await world.engine.shutdown()
    try:
        return asyncio.run(main())
    finally:
        world.close()


def actions(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(j["step"], j["action"]) for j in status["journal"]]
