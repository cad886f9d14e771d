"""Several immd on one PostgreSQL database, in one test process: each "host" has its own store
connections, its own :class:`~imm.store.lease.Elector` (a short lease) and its own engine, and
every host talks to one shared cloud and one shared load balancer (the in-memory provider and
router of rollout_world.py, stand-ins for what is not tested here). Each host's handles record
the calls that passed its guard, so a test can say what reached the cloud from which host.

What is real: the PostgreSQL server (the session's cluster), the lease SQL, LISTEN/NOTIFY, the
fencing check inside each write's transaction, the engine, the journal and the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rollout_world import FAST, SERVICE, MemProvider, MemRouter, serving_fleet

from imm.catalog.keys import KeyRing
from imm.catalog.service import Catalog
from imm.catalog.verify import verify_ledger
from imm.config import Settings
from imm.context import Context, ProviderHandle, RouterHandle, Timings
from imm.daemon.core import SCHEMAS
from imm.plugins.manager import Plugins
from imm.rollout.engine import Engine
from imm.store.lease import Elector
from imm.store.postgres import Database

T = TypeVar("T")

# calls that change the cloud or the route (reads may reach it from any host)
CHANGES = {"launch", "terminate", "copy_image", "create_image", "add", "set_weights", "drain",
           "remove"}


class Killed(BaseException):
    """A host's process ends here (as kill -9: nothing of the engine can catch it)."""


class RecordingProvider(ProviderHandle):
    def __init__(self, plugin: MemProvider, calls: list[str]) -> None:
        super().__init__(plugin)
        self.calls = calls

    async def _call(self, call: str, fn: Callable[[], T], pool: Any = None) -> T:
        self.calls.append(call)
        return await super()._call(call, fn, pool)


class RecordingRouter(RouterHandle):
    def __init__(self, plugin: MemRouter, calls: list[str]) -> None:
        super().__init__(plugin)
        self.calls = calls

    async def _call(self, call: str, fn: Callable[[], T], pool: Any = None) -> T:
        self.calls.append(call)
        return await super()._call(call, fn, pool)


class Host:
    """One immd: its store, elector and engine over the shared cloud."""

    def __init__(self, name: str, dsn: str, tmp: Path, keys: Path, provider: MemProvider,
                 router: MemRouter, lease_s: float, services: dict[str, Any],
                 timings: Timings = FAST, plugins: tuple[object, ...] = ()) -> None:
        self.name = name
        (tmp / name).mkdir(parents=True, exist_ok=True)
        self.settings = Settings(source="test", state_dir=tmp / name, socket=tmp / name / "s",
                                 services=services)
        self.keyring, _ = KeyRing.load_or_create(keys)
        self.db = Database(dsn, SCHEMAS)
        self.db.open()
        self.catalog = Catalog(self.keyring, "imm.test/ledger")
        self.db.write_sync(self.catalog.init_keys, "test")
        self.calls: list[str] = []
        self.elector = Elector(self.db.session, lease_s, holder=name)
        self.plugins = Plugins()
        for p in plugins:
            self.plugins.register(p, name=type(p).__name__.lower())
        self.ctx = Context(settings=self.settings, store=self.db, catalog=self.catalog,
                           keyring=self.keyring, plugins=self.plugins,
                           providers={"mem": RecordingProvider(provider, self.calls)},
                           routers={"lb": RecordingRouter(router, self.calls)},
                           timings=timings, cluster=self.elector)
        self.engine = Engine(self.ctx)
        self.elector.on_elected = self._lead
        self.elector.on_deposed = self._follow
        self.elector.on_wake = self.engine.wake_local
        self.elected: list[float] = []  # loop times this host became the leader

    async def _lead(self, epoch: int) -> None:
        self.elected.append(asyncio.get_running_loop().time())
        await self.engine.startup()

    async def _follow(self, reason: str) -> None:
        await self.engine.shutdown()

    def changes(self, since: int = 0) -> list[str]:
        """The changing calls this host made (after the first ``since`` calls)."""
        return [c for c in self.calls[since:] if c in CHANGES]

    async def kill(self) -> None:
        """As kill -9: the lease is neither renewed nor released, every task just stops."""
        self.elector.halt()
        with contextlib.suppress(Killed):  # the task that was killed ends with it
            await self.engine.shutdown()

    async def stop(self) -> None:
        await self.elector.stop()
        await self.engine.shutdown()

    def close(self) -> None:
        self.elector.halt()
        self.elector._drop()  # a killed host's lease connection (a stopped one has none left)
        self.db.close()


class Cluster:
    """Hosts on one database, one cloud, one load balancer."""

    def __init__(self, dsn: str, tmp: Path, n: int = 2, lease_s: float = 1.0,
                 services: dict[str, Any] | None = None, plugins: tuple[object, ...] = ()) -> None:
        self.provider = MemProvider()
        self.router = MemRouter()
        self.router.routes["web"] = {}
        self.hosts = [Host(f"host-{chr(97 + i)}", dsn, tmp, tmp / "keys", self.provider,
                           self.router, lease_s, services or {"web": dict(SERVICE)},
                           plugins=plugins) for i in range(n)]

    def image(self, version: str) -> str:
        h = self.hosts[0]
        row = h.db.write_sync(
            h.catalog.add_image, "test", name="app", version=version,
            content_digest="sha256:" + version.encode().hex().ljust(64, "0")[:64],
            content_kind="file", layers=[], boot_actions=[], parent=None, labels={},
            artifacts=[("mem", "r1", f"img-{version}-r1")])
        return str(row["digest"])

    def old_fleet(self, digest: str, n: int = 2) -> list[str]:
        return serving_fleet(self.provider, self.router, digest, n)

    async def leader(self, limit_s: float = 20.0) -> Host:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            leading = [h for h in self.hosts if h.elector.is_leader()]
            if len(leading) == 1:
                return leading[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no single leader")

    async def ledger_ok(self) -> dict[str, Any]:
        h = self.hosts[-1]
        return await h.db.read(verify_ledger, h.keyring, "imm.test/ledger")

    def close(self) -> None:
        for h in self.hosts:
            h.close()
