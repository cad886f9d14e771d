"""The context: everything the domain (rollout, audit) is handed, and nothing more.

The domain packages never see the daemon. The composition root (``imm/daemon/core.py``) builds
one :class:`Context` at start-up and passes it to the ``Engine`` and the ``Auditor``; a unit test
builds one from a temporary store and in-memory providers and routers. It is a plain bundle, in
the spirit of argo-rollouts' ``ControllerConfig``: no globals, no lookups by name.

    ctx = Context(settings=settings, store=db, catalog=catalog, keyring=keyring,
                  plugins=plugins,
                  providers={"local": ProviderHandle(local_provider, concurrency=8)},
                  routers={"haproxy": RouterHandle(haproxy_router)})
    got = await ctx.provider("local").list_instances({TAG_SERVICE: "web"})
    await ctx.router("haproxy").set_weights("web", {"i-1": 100})

or, from the configuration, ``Context.build(settings, store, catalog, keyring, plugins)``, which
instantiates every ``[providers.*]`` and ``[routers.*]`` entry through the plugin registries.

Every call to a plugin goes through a typed handle (:class:`ProviderHandle`,
:class:`RouterHandle`), never through a method name in a string. A handle:

- runs the plugin's blocking code in a worker thread (``asyncio.to_thread``), draining a lazily
  paging ``list_instances`` iterator there too, so no cloud call runs on the event loop; a
  provider's listing runs in threads of its own handle (as many as its concurrency), so many
  providers listing at once are not held to the loop's few default threads;
- holds the provider's concurrency limit (``concurrency`` in its config entry, default 8) for
  as long as the worker thread runs, even when the caller stops waiting;
- gives up waiting after ``timeout_s`` (``call_timeout_s`` in the entry, default 600 s) with a
  ``ProviderError``/``RouterError`` that names the provider, the call and the setting.

One call is different: a router's ``wait_health`` mostly sleeps until the router sees the
condition (or a wake-up event ends it), so it runs in a thread of the handle's own pool, outside
the concurrency limit, where it holds up neither the calls that change the route nor the
threads everything else runs in.

Retries of throttling and 5xx answers live in the plugins' shared cloud machinery, close to the
SDK that knows which errors are transient; a handle does not retry (a second ``launch`` is only
safe because of its client token, which the provider honours, not the handle).

``timings`` holds the engine's poll and backoff intervals; the defaults are the daemon's, and a
unit test passes shorter ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from .catalog.keys import KeyRing
from .catalog.service import Catalog
from .config import Settings
from .errors import ConfigError, ImmError, NotFound, PluginError, ProviderError, RouterError
from .plugins.base import (
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
from .plugins.manager import Plugins

log = logging.getLogger("imm.context")
T = TypeVar("T")

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0
WAIT_THREADS = 64  # health waits one router runs at once (each in a thread, outside its limit)


class Store(Protocol):
    """What the domain needs of the database: run a function on a connection, in a thread.

    ``read`` runs ``fn(conn, *args)`` on a consistent snapshot; ``write`` runs it in one
    transaction that commits when it returns and rolls back when it raises. The SQLite backend
    is ``imm.store.sqlite.Database``; another backend only has to offer these two.
    """

    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...

    async def write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...


class Cluster(Protocol):
    """Who among the immd sharing the state acts (leader election, ``imm/store/lease.py``).

    ``is_leader()``: this immd runs the rollouts, the reconciler and the scheduled sweeps now.
    ``fence``: the epoch the engine's writes carry (``imm.store.fence``), ``None`` when there is
    nothing to fence. ``guard(call)`` raises :class:`~imm.errors.NotLeader` unless this immd may
    change a provider or a router now (every handle asks it first). ``wake(rid)`` asks the leader
    to look at a rollout a verb changed here. ``refused(reason)``: one of this immd's writes or
    calls was refused as a deposed leader's; stop acting.
    """

    @property
    def fence(self) -> int | None: ...

    def is_leader(self) -> bool: ...

    def guard(self, call: str) -> None: ...

    async def wake(self, rid: str) -> None: ...

    def refused(self, reason: str) -> None: ...


class Solo:
    """One immd alone on its state (SQLite, the embedded default): always the leader, epoch 1,
    nothing to elect or fence."""

    epoch = 1
    fence = None

    def is_leader(self) -> bool:
        return True

    def guard(self, call: str) -> None:
        return None

    async def wake(self, rid: str) -> None:
        return None

    def refused(self, reason: str) -> None:
        return None


@dataclass(frozen=True)
class Timings:
    """Intervals the engine waits between polls and retries (seconds)."""

    poll_s: float = 0.2  # a pause step's look at background analyses; approval and analysis polls
    view_ttl_s: float = 1.0  # how long status shares one listing of a service's instances
    retry_min_s: float = 0.5  # backoff between attempts to finish a rollback
    retry_max_s: float = 30.0  # ... its ceiling, and the wait before a crashed run restarts
    heal_interval_s: float = 5.0  # how often the reconciler compares each service with its desired state


P = TypeVar("P", Provider, Router)


class _Limited(Generic[P]):
    """A configured plugin whose blocking calls run in a thread under a concurrency limit and a
    timeout."""

    what: str  # "provider" or "router", for messages
    error: type[ImmError]

    def __init__(self, plugin: P, concurrency: int = DEFAULT_CONCURRENCY,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        name = plugin.name
        if concurrency < 1:
            raise ConfigError(f"[{self.what}s.{name}] concurrency must be ≥ 1, got {concurrency}")
        if timeout_s <= 0:
            raise ConfigError(f"[{self.what}s.{name}] call_timeout_s must be > 0, got {timeout_s}")
        self.name = name
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._limit: asyncio.Semaphore | None = None
        self.plugin: P = plugin
        # asked before every call that changes something (the context binds it to its
        # cluster's guard: only a leader with a live lease changes a provider or a router)
        self.guard: Callable[[str], None] = _allowed

    def _change(self, call: str) -> None:
        self.guard(f"{self.what} {self.name}: {call}")

    @property
    def kind(self) -> str:
        return self.plugin.kind

    def close(self) -> None:
        """Release the plugin's connections and helpers (blocking)."""
        self.plugin.close()

    def _semaphore(self) -> asyncio.Semaphore:
        # created on first use, so a handle can be built outside a running loop
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        return self._limit

    async def _call(self, call: str, fn: Callable[[], T],
                    pool: ThreadPoolExecutor | None = None) -> T:
        """Run ``fn`` in a worker thread (of ``pool``, else the loop's default pool); ``call``
        only labels it in the timeout message."""
        limit = self._semaphore()
        await limit.acquire()
        work: asyncio.Future[T]
        try:
            if pool is None:
                work = asyncio.ensure_future(asyncio.to_thread(fn))
            else:
                work = asyncio.get_running_loop().run_in_executor(
                    pool, functools.partial(contextvars.copy_context().run, fn))
        except BaseException:
            limit.release()
            raise
        # the slot is given back when the thread ends, not when the caller stops waiting
        work.add_done_callback(lambda _f: limit.release())
        work.add_done_callback(_consume)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the call finishes, and a parked rollout would then run on
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(work)
        except TimeoutError:
            raise self.error(
                f"{self.what} {self.name}: {call} did not answer within {self.timeout_s:g}s; "
                f"check that it is reachable, or raise call_timeout_s in "
                f"[{self.what}s.{self.name}]") from None


def _allowed(_call: str) -> None:
    return None


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call nobody waits for any more (no 'never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()


def _drain(it: Iterable[T]) -> list[T]:
    return list(it)


def _take(it: Iterator[T], n: int) -> list[T]:
    out: list[T] = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


class ProviderHandle(_Limited[Provider]):
    """A configured provider, called off the event loop under its limit and timeout."""

    what = "provider"
    error = ProviderError
    _lists: ThreadPoolExecutor | None = None  # listing's threads, created on first use

    def supports(self, feature: Feature) -> bool:
        return self.plugin.supports(feature)

    def _list_pool(self) -> ThreadPoolExecutor:
        """The handle's own threads for listing, up to its concurrency limit: a listing pages
        for as long as the cloud takes, and many providers listing at once (an audit sweep)
        in the loop's default pool (a few threads per CPU) would page a few at a time."""
        if self._lists is None:
            self._lists = ThreadPoolExecutor(self.concurrency,
                                             thread_name_prefix=f"provider-{self.name}-list")
        return self._lists

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[Instance]:
        """Every live instance carrying ``tags`` (all pages, fetched in the worker thread)."""
        p = self.plugin
        return await self._call("list_instances", lambda: _drain(p.list_instances(tags)),
                                self._list_pool())

    async def instance_chunks(self, tags: Mapping[str, str] | None = None,
                              size: int = 500) -> AsyncGenerator[list[Instance], None]:
        """The instances ``size`` at a time, each chunk paged in a worker thread.

        For a fleet too large to hold at once (the audit sweep); the limit is held per chunk.
        """
        p, pool = self.plugin, self._list_pool()
        it: Iterator[Instance] = iter(await self._call(
            "list_instances", lambda: iter(p.list_instances(tags)), pool))
        while True:
            chunk = await self._call("list_instances", lambda: _take(it, size), pool)
            if not chunk:
                return
            yield chunk

    async def launch(self, request: LaunchRequest) -> list[Instance]:
        self._change("launch")
        p = self.plugin
        return await self._call("launch", lambda: list(p.launch(request)))

    async def terminate(self, instance_ids: Sequence[str]) -> None:
        self._change("terminate")
        p, ids = self.plugin, list(instance_ids)
        await self._call("terminate", lambda: p.terminate(ids))

    async def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        p = self.plugin
        return await self._call("describe_image", lambda: p.describe_image(region, image_id))

    async def copy_image(self, src_region: str, image_id: str, dst_region: str) -> str:
        self._change("copy_image")
        p = self.plugin
        return await self._call("copy_image",
                                lambda: p.copy_image(src_region, image_id, dst_region))

    async def create_image(self, instance_id: str, name: str) -> str:
        self._change("create_image")
        p = self.plugin
        return await self._call("create_image", lambda: p.create_image(instance_id, name))

    async def rehash(self, instance_id: str) -> tuple[str, dict[str, Any]]:
        """The content digest of a running instance's tree, and the tree (tamper check)."""
        p = self.plugin
        return await self._call("rehash", lambda: p.rehash(instance_id))

    async def store_image(self, path: Path, digest: str) -> str:
        """Store a content tree as an image; its image id."""
        p = self.plugin
        return await self._call("store_image", lambda: p.store_image(path, digest))

    async def image_manifest(self, image_id: str) -> dict[str, Any]:
        """The file tree an image was built from, as ``rehash`` reports it."""
        p = self.plugin
        return await self._call("image_manifest", lambda: p.image_manifest(image_id))

    def close(self) -> None:
        if self._lists is not None:
            self._lists.shutdown(wait=False, cancel_futures=True)
        super().close()


class RouterHandle(_Limited[Router]):
    """A configured router, called off the event loop under its limit and timeout."""

    what = "router"
    error = RouterError
    _waits: ThreadPoolExecutor | None = None  # wait_health's threads, created on first use

    @property
    def checks_health(self) -> bool:
        return self.plugin.checks_health

    def supports(self, feature: RouterFeature) -> bool:
        return self.plugin.supports(feature)

    async def start(self) -> None:
        r = self.plugin
        await self._call("start", r.start)

    async def ensure_route(self, route: str, settings: Mapping[str, Any]) -> None:
        r = self.plugin
        await self._call("ensure_route", lambda: r.ensure_route(route, settings))

    async def backends(self, route: str) -> list[Backend]:
        r = self.plugin
        return await self._call("backends", lambda: list(r.backends(route)))

    async def add(self, route: str, name: str, address: str) -> None:
        self._change("add")
        r = self.plugin
        await self._call("add", lambda: r.add(route, name, address))

    async def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        self._change("set_weights")
        r, w = self.plugin, dict(weights)
        await self._call("set_weights", lambda: r.set_weights(route, w))

    async def drain(self, route: str, name: str) -> None:
        self._change("drain")
        r = self.plugin
        await self._call("drain", lambda: r.drain(route, name))

    async def remove(self, route: str, name: str) -> None:
        self._change("remove")
        r = self.plugin
        await self._call("remove", lambda: r.remove(route, name))

    async def health(self, route: str) -> dict[str, bool | None]:
        r = self.plugin
        return await self._call("health", lambda: dict(r.health(route)))

    async def wait_health(self, route: str, names: Sequence[str], timeout_s: float,
                          wake: asyncio.Event | None = None) -> dict[str, bool | None]:
        """Wait until every backend in ``names`` has passed its health check (the router's
        ``wait_health``): the route's health then. Returns early, with the health as it
        stands, once ``wake`` is set (a verb changed the rollout); raises ``HealthTimeout``
        naming the backends still unhealthy after ``timeout_s``.

        The wait runs in a thread of the handle's own pool, outside the concurrency limit: it
        mostly sleeps, and holding a slot or a shared worker thread for a whole health timeout
        would hold up the calls that change the route and everything else run in threads.
        """
        r, want, stop = self.plugin, list(names), threading.Event()
        if self._waits is None:
            # threads are made as waits need them: as many as rollouts and heals wait at once
            self._waits = ThreadPoolExecutor(WAIT_THREADS,
                                             thread_name_prefix=f"router-{self.name}-wait")
        work = asyncio.get_running_loop().run_in_executor(
            self._waits, lambda: dict(r.wait_health(route, want, timeout_s, stop)))
        work.add_done_callback(_consume)
        waker = None
        if wake is not None:
            waker = asyncio.ensure_future(wake.wait())
            waker.add_done_callback(lambda _f: stop.set())
        try:
            # the router gives up after timeout_s itself; past that, one probe that hangs
            async with asyncio.timeout(timeout_s + self.timeout_s):
                return await asyncio.shield(work)
        except TimeoutError:
            raise self.error(
                f"router {self.name}: wait_health on route {route} did not answer within "
                f"{timeout_s + self.timeout_s:g}s; check that it is reachable, or raise "
                f"call_timeout_s in [routers.{self.name}]") from None
        finally:
            stop.set()  # a caller that stops waiting (cancelled, woken) ends the wait too
            if waker is not None:
                waker.cancel()

    def close(self) -> None:
        if self._waits is not None:
            self._waits.shutdown(wait=False, cancel_futures=True)
        super().close()


def _limits(what: str, name: str, entry: Mapping[str, Any]) -> tuple[int, float]:
    conc, timeout = entry.get("concurrency", DEFAULT_CONCURRENCY), entry.get(
        "call_timeout_s", DEFAULT_TIMEOUT_S)
    try:
        conc = int(conc)
    except (TypeError, ValueError):
        raise ConfigError(f"[{what}.{name}] concurrency must be an integer ≥ 1, "
                          f"got {conc!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(f"[{what}.{name}] call_timeout_s must be a number of seconds, "
                          f"got {timeout!r}")
    return conc, float(timeout)


@dataclass
class Context:
    """The bundle the domain receives (see the module docstring)."""

    settings: Settings
    store: Store
    catalog: Catalog
    keyring: KeyRing
    plugins: Plugins
    providers: dict[str, ProviderHandle] = field(default_factory=dict)
    routers: dict[str, RouterHandle] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    cluster: Cluster = field(default_factory=Solo)

    def __post_init__(self) -> None:
        self.bind_handles()

    def bind_handles(self) -> None:
        """Make every handle ask the cluster's guard before a change (see :class:`Cluster`)."""
        handles: list[ProviderHandle | RouterHandle] = [*self.providers.values(),
                                                         *self.routers.values()]
        for handle in handles:
            handle.guard = self._guard

    def _guard(self, call: str) -> None:
        self.cluster.guard(call)

    def provider(self, name: str) -> ProviderHandle:
        try:
            return self.providers[name]
        except KeyError:
            raise NotFound(f"no provider named {name!r} (providers: "
                           f"{', '.join(sorted(self.providers)) or 'none'})") from None

    def router(self, name: str) -> RouterHandle:
        try:
            return self.routers[name]
        except KeyError:
            raise NotFound(f"no router named {name!r} (routers: "
                           f"{', '.join(sorted(self.routers)) or 'none'})") from None

    @classmethod
    def build(cls, settings: Settings, store: Store, catalog: Catalog, keyring: KeyRing,
              plugins: Plugins, timings: Timings | None = None,
              cluster: Cluster | None = None) -> Context:
        """Instantiate every configured provider and router (blocking; before serving)."""
        ctx = cls(settings=settings, store=store, catalog=catalog, keyring=keyring,
                  plugins=plugins, timings=timings or Timings(), cluster=cluster or Solo())
        try:
            for name, entry in settings.providers.items():
                pcls = plugins.providers.get(entry["kind"])
                conc, timeout = _limits("providers", name, entry)
                conf = {k: v for k, v in entry.items() if k != "kind"}
                try:
                    provider = pcls(name, conf, PluginContext(
                        settings.state_dir, logging.getLogger(f"imm.provider.{name}")))
                except (TypeError, ValueError, KeyError) as e:
                    raise PluginError(f"provider {name!r} ({entry['kind']}) cannot start: "
                                      f"{e}") from None
                ctx.providers[name] = ProviderHandle(provider, conc, timeout)
            for name, entry in settings.routers.items():
                rcls = plugins.routers.get(entry["kind"])
                conc, timeout = _limits("routers", name, entry)
                conf = {k: v for k, v in entry.items() if k != "kind"}
                try:
                    router = rcls(name, conf, PluginContext(
                        settings.state_dir, logging.getLogger(f"imm.router.{name}")))
                except (TypeError, ValueError, KeyError) as e:
                    raise PluginError(f"router {name!r} ({entry['kind']}) cannot start: "
                                      f"{e}") from None
                ctx.routers[name] = RouterHandle(router, conc, timeout)
            ctx.bind_handles()
        except BaseException:
            ctx.close_plugins()
            raise
        return ctx

    def close_plugins(self) -> None:
        """Close every provider and router (blocking; at shutdown). Errors are logged."""
        handles: list[ProviderHandle | RouterHandle] = [*self.providers.values(),
                                                         *self.routers.values()]
        for handle in handles:
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("closing %s %s", handle.what, handle.name)
