"""The daemon's state: settings, store, keys, catalog, plugins, and configured providers/routers.

The domain packages know nothing of HTTP; this object wires them together for the routes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..catalog import packer
from ..catalog.db import Database
from ..catalog.digest import content_digest
from ..catalog.keys import KeyRing
from ..catalog.service import Catalog
from ..catalog.verify import verify_ledger, verify_rows
from ..config import Settings
from ..errors import BadRequest, ConfigError, PluginError
from ..plugins.base import Provider, ProviderContext, Router, RouterContext
from ..plugins.manager import Plugins
from .metrics import Metrics

log = logging.getLogger("imm.daemon")


class Daemon:
    def __init__(self, settings: Settings, extra_plugins: list[Any] | None = None) -> None:
        self.settings = settings
        self.started = time.time()
        self.metrics = Metrics()
        self.extra_plugins = extra_plugins or []
        self.db: Database
        self.keyring: KeyRing
        self.catalog: Catalog
        self.plugins: Plugins
        self.providers: dict[str, Provider] = {}
        self.routers: dict[str, Router] = {}
        self._provider_limits: dict[str, asyncio.Semaphore] = {}
        self.engine: Any = None

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, actor: str) -> None:
        """Blocking start-up work, done before the socket is served."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s.state_dir, 0o700)
        self.keyring, created = KeyRing.load_or_create(s.keys_dir)
        if created:
            log.info("created signing key %s", self.keyring.keyid)
        self.db = Database(s.db_path)
        applied = self.db.open()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self.catalog = Catalog(self.keyring, s.ledger_origin)
        self.db.write_sync(self.catalog.init_keys, actor)
        block = s.plugins.get("block", [])
        if not isinstance(block, list):
            raise ConfigError(f"{s.source}: [plugins] block must be a list of plugin names")
        self.plugins = Plugins(block=block, extra=self.extra_plugins)
        self._make_backends()
        from ..rollout.engine import Engine

        self.engine = Engine(self)

    async def start_rollout(self, actor: str, service: str, ref: str,
                            strategy: str | None = None) -> dict[str, Any]:
        return await self.engine.start(actor, service, ref, strategy)

    def _make_backends(self) -> None:
        s = self.settings
        for name, entry in s.providers.items():
            cls = self.plugins.providers.get(entry["kind"])
            settings = {k: v for k, v in entry.items() if k != "kind"}
            try:
                self.providers[name] = cls(name, settings, ProviderContext(
                    s.state_dir, logging.getLogger(f"imm.provider.{name}")))
            except (TypeError, ValueError, KeyError) as e:
                raise PluginError(f"provider {name!r} ({entry['kind']}) cannot start: {e}") from None
            self._provider_limits[name] = asyncio.Semaphore(int(entry.get("concurrency", 8)))
        for name, entry in s.routers.items():
            rcls = self.plugins.routers.get(entry["kind"])
            settings = {k: v for k, v in entry.items() if k != "kind"}
            try:
                self.routers[name] = rcls(name, settings, RouterContext(
                    s.state_dir, logging.getLogger(f"imm.router.{name}")))
            except (TypeError, ValueError, KeyError) as e:
                raise PluginError(f"router {name!r} ({entry['kind']}) cannot start: {e}") from None

    def close(self) -> None:
        for p in self.providers.values():
            try:
                p.close()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("closing provider %s", p.name)
        for r in self.routers.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001
                log.exception("closing router %s", r.name)
        self.db.close()

    # -- provider calls off the loop ----------------------------------------------------------

    async def provider_call(self, name: str, method: str, *args: Any, **kw: Any) -> Any:
        provider = self.providers[name]

        def call() -> Any:
            result = getattr(provider, method)(*args, **kw)
            # list_instances may be a generator that pages lazily: drain it here, in the
            # thread, so no cloud call runs on the event loop.
            if isinstance(result, Iterator):
                return list(result)
            return result

        async with self._provider_limits[name]:
            return await asyncio.to_thread(call)

    # -- catalog operations that need more than one transaction -------------------------------

    async def add_image(self, actor: str, path: str, spec: dict[str, Any]) -> dict[str, Any]:
        p = Path(path)
        if not p.is_absolute():
            raise BadRequest(f"path {path!r} must be absolute (immctl makes it so)")
        kind, digest, _manifest = await asyncio.to_thread(content_digest, p)
        artifacts: list[tuple[str, str, str]] = []
        if kind == "tree":
            for name, provider in self.providers.items():
                if "store_image" in provider.capabilities():
                    image_id = await self.provider_call(name, "store_image", p, digest)
                    artifacts.append((name, "local", image_id))
        result = await self.db.write(self.catalog.add_image, actor, content_digest=digest,
                                     content_kind=kind, artifacts=artifacts, **spec)
        self.metrics.inc("images_added" if result["created"] else "images_add_noop")
        return result

    def packer_providers(self, provider: str | None) -> dict[str, str]:
        """Which configured provider a Packer artifact is recorded under, by builder type or
        cloud: ``provider`` (import-packer --provider) for every build, else the config's
        [packer] providers, else the one configured provider of the builder's cloud kind."""
        if provider is not None:
            if provider not in self.providers:
                raise BadRequest(f"provider {provider!r} is not configured; configured: "
                                 f"{', '.join(sorted(self.providers)) or 'none'}")
            return {packer.EVERY_BUILDER: provider}
        by_kind: dict[str, list[str]] = {}
        for pname, p in self.providers.items():
            by_kind.setdefault(p.kind, []).append(pname)
        out = {kind: names[0] for kind, names in by_kind.items() if len(names) == 1}
        out.update(self.settings.packer_providers)
        return out

    async def import_packer(self, actor: str, text: str, source: str, name: str | None,
                            version: str | None, all_runs: bool,
                            provider: str | None = None) -> list[dict[str, Any]]:
        manifest = packer.parse(text, source)
        providers = self.packer_providers(provider)
        try:
            specs = packer.image_specs(manifest, name=name, version=version, all_runs=all_runs,
                                       providers=providers)
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
        def counts(conn: Any) -> dict[str, int]:
            return {
                "images": conn.execute("SELECT count(*) FROM images").fetchone()[0],
                "revoked": conn.execute("SELECT count(*) FROM revocations").fetchone()[0],
                "artifacts": conn.execute("SELECT count(*) FROM artifacts").fetchone()[0],
                "channels": conn.execute(
                    "SELECT count(DISTINCT name) FROM channel_history").fetchone()[0],
                "ledger_size": conn.execute(
                    "SELECT count(*) FROM ledger_leaves").fetchone()[0],
            }

        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": int(time.time() - self.started),
            "config": self.settings.source,
            "state_dir": str(self.settings.state_dir),
            "socket": str(self.settings.socket),
            "keyid": self.keyring.keyid,
            "catalog": await self.db.read(counts),
            "plugins": self.plugins.listing(),
            "plugins_blocked": sorted(self.plugins.blocked),
            "providers": {n: p.kind for n, p in self.providers.items()},
            "routers": {n: r.kind for n, r in self.routers.items()},
            "services": sorted(self.engine.services) if self.engine else [],
            "rollouts_active": len(self.engine.tasks) if self.engine else 0,
        }
