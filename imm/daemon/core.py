"""The composition root: builds the store, keys, catalog, plugins, the domain's context, the
rollout engine and the auditor, and holds them for the routes.

``open`` does the blocking start-up work; ``lifecycle`` (an aiohttp ``cleanup_ctx``, see
app.py) starts the engine and the auditor when the app starts and stops them, then closes the
plugins and the store, when it stops. Nothing in the domain reaches back here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..audit.facts import RolloutLookup
from ..audit.schema import SCHEMA as AUDIT_SCHEMA
from ..audit.sweep import Auditor
from ..catalog import packer
from ..catalog.digest import content_digest
from ..catalog.keys import KeyRing
from ..catalog.schema import SCHEMA as CATALOG_SCHEMA
from ..catalog.service import Catalog
from ..catalog.verify import verify_ledger, verify_rows
from ..config import Settings
from ..context import Context, Timings
from ..errors import BadRequest, ConfigError
from ..plugins.base import Feature
from ..plugins.manager import Plugins
from ..rollout import journal
from ..rollout.engine import Engine
from ..rollout.reconcile import Reconciler
from ..rollout.schema import SCHEMA as ROLLOUT_SCHEMA
from ..store.sqlite import Database
from .metrics import Metrics

log = logging.getLogger("imm.daemon")

SCHEMAS = (CATALOG_SCHEMA, ROLLOUT_SCHEMA, AUDIT_SCHEMA)


class Daemon:
    def __init__(self, settings: Settings, extra_plugins: list[Any] | None = None,
                 timings: Timings | None = None) -> None:
        self.settings = settings
        self.started = time.time()
        self.metrics = Metrics()
        self.extra_plugins = extra_plugins or []
        self.timings = timings or Timings()
        self.db: Database
        self.keyring: KeyRing
        self.catalog: Catalog
        self.plugins: Plugins
        self.context: Context
        self.engine: Engine
        self.auditor: Auditor
        self.reconciler: Reconciler

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, actor: str) -> None:
        """Blocking start-up work, done before the socket is served."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s.state_dir, 0o700)
        self.keyring, created = KeyRing.load_or_create(s.keys_dir)
        if created:
            log.info("created signing key %s", self.keyring.keyid)
        self.db = Database(s.db_path, SCHEMAS)
        applied = self.db.open()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self.catalog = Catalog(self.keyring, s.ledger_origin)
        self.db.write_sync(self.catalog.init_keys, actor)
        block = s.plugins.get("block", [])
        if not isinstance(block, list):
            raise ConfigError(f"{s.source}: [plugins] block must be a list of plugin names")
        self.plugins = Plugins(block=block, extra=self.extra_plugins)
        self.context = Context.build(s, self.db, self.catalog, self.keyring, self.plugins,
                                     self.timings)
        self.engine = Engine(self.context)
        self.reconciler = Reconciler(self.context, self.engine.fleet)
        self.auditor = Auditor(self.context, RolloutLookup(exists=journal.rollout_exists,
                                                           active=journal.active_rollout))

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: start the engine, the reconciler, then the audit schedule; stop
        in reverse.

        The engine outlives the auditor, which may start replacement rollouts, and the
        reconciler, which leaves a service alone while a rollout runs.
        """
        await self.engine.startup()
        try:
            await self.reconciler.start()
            await self.auditor.start()  # a bad [audit] interval_s fails start-up, naming it
        except BaseException:
            await self.reconciler.stop()
            await self.engine.shutdown()
            raise
        yield
        try:
            await self.auditor.stop()
        finally:
            try:
                await self.reconciler.stop()
            finally:
                await self.engine.shutdown()

    def close(self) -> None:
        """Blocking: close the providers, routers and the store (after the app stopped)."""
        self.context.close_plugins()
        self.db.close()

    # -- catalog operations that need more than one transaction -------------------------------

    async def add_image(self, actor: str, path: str, spec: dict[str, Any]) -> dict[str, Any]:
        p = Path(path)
        if not p.is_absolute():
            raise BadRequest(f"path {path!r} must be absolute (immctl makes it so)")
        kind, digest, _manifest = await asyncio.to_thread(content_digest, p)
        artifacts: list[tuple[str, str, str]] = []
        if kind == "tree":
            for name, provider in self.context.providers.items():
                if provider.supports(Feature.STORE_IMAGE):
                    image_id = await provider.store_image(p, digest)
                    artifacts.append((name, "local", image_id))
        result = await self.db.write(self.catalog.add_image, actor, content_digest=digest,
                                     content_kind=kind, artifacts=artifacts, **spec)
        self.metrics.inc("images_added" if result["created"] else "images_add_noop")
        return result

    async def import_packer(self, actor: str, text: str, source: str, name: str | None,
                            version: str | None, all_runs: bool) -> list[dict[str, Any]]:
        manifest = packer.parse(text, source)
        try:
            specs = packer.image_specs(manifest, name=name, version=version, all_runs=all_runs)
        except BadRequest as e:
            if source not in e.message:
                e.message = f"{source}: {e.message}"
                e.args = (e.message,)
            raise

        def write_all(conn: Any) -> list[dict[str, Any]]:
            out = []
            for spec in specs:
                out.append(self.catalog.add_image(
                    conn, actor, name=spec["name"], version=spec["version"],
                    content_digest=spec["content_digest"], content_kind=spec["content_kind"],
                    layers=[], boot_actions=[], parent=None, labels=spec["labels"],
                    provenance=spec["provenance"],
                    artifacts=[tuple(a) for a in spec["artifacts"]]))
            return out

        return await self.db.write(write_all)

    async def rotate_key(self, actor: str) -> dict[str, Any]:
        new, staged = await asyncio.to_thread(self.keyring.stage_rotation)
        try:
            result = await self.db.write(self.catalog.rotate_key, actor, new)
        except BaseException:
            await asyncio.to_thread(self.keyring.abort_rotation, staged)
            raise
        await asyncio.to_thread(self.keyring.commit_rotation, new, staged)
        log.info("rotated signing key %s -> %s", result["previous"], result["keyid"])
        return result

    async def verify_images(self, digest: str | None) -> dict[str, Any]:
        return await self.db.read(verify_rows, self.keyring, digest)

    async def verify_ledger(self) -> dict[str, Any]:
        return await self.db.read(verify_ledger, self.keyring, self.settings.ledger_origin)

    async def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": int(time.time() - self.started),
            "config": self.settings.source,
            "state_dir": str(self.settings.state_dir),
            "socket": str(self.settings.socket),
            "keyid": self.keyring.keyid,
            "catalog": await self.db.read(self.catalog.counts),
            "plugins": self.plugins.listing(),
            "plugins_blocked": sorted(self.plugins.blocked),
            "providers": {n: p.kind for n, p in self.context.providers.items()},
            "routers": {n: r.kind for n, r in self.context.routers.items()},
            "services": sorted(self.engine.services),
            "rollouts_active": len(self.engine.tasks),
        }
