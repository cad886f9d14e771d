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
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..audit.facts import RolloutLookup
from ..audit.schema import SCHEMA as AUDIT_SCHEMA
from ..audit.sweep import Auditor, audit_interval
from ..catalog import packer
from ..catalog.digest import Reader, content_digest_fd, open_under_roots
from ..catalog.keys import KeyRing
from ..catalog.schema import SCHEMA as CATALOG_SCHEMA
from ..catalog.service import Catalog
from ..catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from ..catalog.verify import check_ledger_head, verify_ledger, verify_rows
from ..config import Settings
from ..context import Cluster, Context, Solo, Timings
from ..errors import BadRequest, ConfigError, ImmError
from ..plugins.base import Feature
from ..plugins.manager import Plugins
from ..plugins.notify import Dispatcher
from ..rollout import journal
from ..rollout.engine import Engine
from ..rollout.reconcile import Reconciler
from ..rollout.schema import SCHEMA as ROLLOUT_SCHEMA
from ..rollout.services import load_services
from ..store import Backend
from ..store.url import open_state
from .metrics import Metrics
from .tokens import TokenStore

log = logging.getLogger("imm.daemon")

SCHEMAS = (CATALOG_SCHEMA, TRUST_SCHEMA, ROLLOUT_SCHEMA, AUDIT_SCHEMA)


class Daemon:
    def __init__(self, settings: Settings, extra_plugins: list[Any] | None = None,
                 timings: Timings | None = None) -> None:
        self.settings = settings
        self.started = time.time()
        self.metrics = Metrics()
        self.extra_plugins = extra_plugins or []
        self.timings = timings or Timings(heal_interval_s=settings.heal_interval_s)
        self.db: Backend
        self.keyring: KeyRing
        self.catalog: Catalog
        self.plugins: Plugins
        self.context: Context
        self.engine: Engine
        self.notifications: Dispatcher
        self.auditor: Auditor
        self.tokens: TokenStore | None = None
        self.reconciler: Reconciler
        self.cluster: Cluster = Solo()
        self.elector: Any = None  # imm.store.lease.Elector when the state is in PostgreSQL

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, actor: str) -> None:
        """Blocking start-up work, done before the socket is served."""
        s = self.settings
        block = s.plugins.get("block", [])
        if not isinstance(block, list):
            raise ConfigError(f"{s.source}: [plugins] block must be a list of plugin names")
        self.plugins = Plugins(block=block, extra=self.extra_plugins)
        # what the config says is checked before any state exists: a mistake in [services] or
        # [audit] must not leave a new key and an empty database behind
        load_services(s.services, set(s.providers), set(s.routers), self.plugins.analysis,
                      s.analysis)
        audit_interval(s)
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s.state_dir, 0o700)
        signer = self.plugins.signers.get(str(s.signer.get("kind", "file")))
        self.keyring, created = KeyRing.load_or_create(s.keys_dir, signer(s.signer, s.keys_dir))
        if created:
            log.info("created signing key %s in %s", self.keyring.keyid, self.keyring.description)
        self.db = open_state(s.state_location, SCHEMAS, state_dir=s.state_dir,
                             password_env=s.state_password_env,
                             password_file=s.state_password_file)
        applied = self.db.open()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self.catalog = Catalog(self.keyring, s.ledger_origin)
        self.db.write_sync(self.catalog.init_keys, actor)
        self.db.read_sync(check_ledger_head, self.keyring, s.ledger_origin, s.db_path)
        self.tokens = TokenStore(s.state_dir / "tokens.json")
        # From here on, one checkpoint per committed batch of writes (or per interval), signed
        # in the batch's transaction, instead of one per record.
        self.db.add_batch_hook(self.catalog.checkpoint_if_behind,
                               s.checkpoint_interval_ms / 1000)
        self.catalog.defer_checkpoints = True
        self.notifications = Dispatcher(s.notifications, self.plugins.notifiers,
                                        s.state_dir / "notifications.jsonl")
        self.plugins.register(self.notifications, name="notifications")
        if getattr(self.db, "dialect", "sqlite") == "postgresql":
            # several immd may share this database: one leads (imm/store/lease.py)
            from ..store.lease import Elector

            self.elector = Elector(self.db.session, s.cluster_lease_s)  # type: ignore[attr-defined]
            self.cluster = self.elector
        self.context = Context.build(s, self.db, self.catalog, self.keyring, self.plugins,
                                     self.timings, self.cluster)
        self.engine = Engine(self.context)
        self.reconciler = Reconciler(self.context, self.engine.fleet)
        self.auditor = Auditor(self.context, RolloutLookup(exists=journal.rollout_exists,
                                                           active=journal.active_rollout))

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: take part in the election (PostgreSQL) or lead at once (SQLite);
        stop leading, then stop, when the app stops. See :meth:`lead`."""
        self.auditor.interval()  # a bad [audit] interval_s fails start-up, naming it
        if self.elector is not None:
            self.elector.on_elected = self._elected
            self.elector.on_deposed = self._deposed
            self.elector.on_wake = self.engine.wake_local
            await self.elector.start()
        else:
            await self.lead()
        yield
        try:
            if self.elector is not None:
                await self.elector.stop()  # steps down (follow) and lets the lease go
            else:
                await self.follow()
        finally:
            await self.notifications.close()

    async def _elected(self, epoch: int) -> None:
        log.info("leading at epoch %d: resuming rollouts, starting the reconciler and the audit "
                 "schedule", epoch)
        await self.lead()

    async def _deposed(self, reason: str) -> None:
        await self.follow()

    async def lead(self) -> None:
        """Start what only the leader runs: the engine, the reconciler, then the audit schedule.

        The engine outlives the auditor, which may start replacement rollouts, and the
        reconciler, which leaves a service alone while a rollout runs.
        """
        await self.engine.startup()
        try:
            await self.reconciler.start()
            await self.auditor.start()
        except BaseException:
            await self.reconciler.stop()
            await self.engine.shutdown()
            raise

    async def follow(self) -> None:
        """Stop what only the leader runs, in reverse (the rollouts are parked: their journal
        says where they stopped, and whoever leads next resumes them)."""
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
        self.keyring.close()

    # -- catalog operations that need more than one transaction -------------------------------

    async def add_image(self, actor: str, path: str, spec: dict[str, Any], fd: int | None = None,
                        reader: Reader | None = None) -> dict[str, Any]:
        """Register the image the caller passed as the open descriptor ``fd`` (read with the
        ``reader``'s access), or, without one, the one at ``path`` under ``image_roots``. The
        descriptor is closed here, whatever happens."""
        try:
            if not path.startswith("/"):
                raise BadRequest(f"path {path!r} must be absolute (immctl makes it so)")
            if fd is None:
                fd = await asyncio.to_thread(open_under_roots, path, self.settings.image_roots)
            kind, digest, _manifest = await asyncio.to_thread(content_digest_fd, fd, path,
                                                              reader)
            artifacts: list[tuple[str, str, str]] = []
            if kind == "tree":
                # what the provider copies is checked against ``digest`` on the copy, and
                # ``digest`` covers only what the reader could read
                p = Path(f"/proc/self/fd/{fd}")
                for name, provider in self.context.providers.items():
                    if provider.supports(Feature.STORE_IMAGE):
                        image_id = await provider.store_image(p, digest)
                        artifacts.append((name, "local", image_id))
        finally:
            if fd is not None:
                os.close(fd)
        result = await self.db.write(self.catalog.add_image, actor, content_digest=digest,
                                     content_kind=kind, artifacts=artifacts, **spec)
        self.metrics.inc("images_added" if result["created"] else "images_add_noop")
        return result

    def packer_providers(self, provider: str | None) -> dict[str, str]:
        """Which configured provider a Packer artifact is recorded under, by builder type or
        cloud: ``provider`` (import-packer --provider) for every build, else the config's
        [packer] providers, else the one configured provider of the builder's cloud kind."""
        if provider is not None:
            if provider not in self.context.providers:
                raise BadRequest(f"provider {provider!r} is not configured; configured: "
                                 f"{', '.join(sorted(self.context.providers)) or 'none'}")
            return {packer.EVERY_BUILDER: provider}
        by_kind: dict[str, list[str]] = {}
        for pname, p in self.context.providers.items():
            by_kind.setdefault(p.kind, []).append(pname)
        out = {kind: names[0] for kind, names in by_kind.items() if len(names) == 1}
        out.update(self.settings.packer_providers)
        return out

    async def add_images(self, actor: str,
                         specs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Register many images in one transaction (all or none), each its own signed record.
        Paths without a descriptor are read only under ``image_roots``, as for one image."""
        for i, (path, _) in enumerate(specs):
            if not path.startswith("/"):
                raise BadRequest(f"images[{i}]: path {path!r} must be absolute (immctl makes it so)")

        def hash_all() -> list[tuple[str, str, int]]:
            out: list[tuple[str, str, int]] = []
            dirs: dict[str, str] = {}  # many images share a directory: resolved once
            try:
                for i, (path, _) in enumerate(specs):
                    try:
                        fd = open_under_roots(path, self.settings.image_roots, dirs)
                        out.append((*content_digest_fd(fd, path, None)[:2], fd))
                    except ImmError as e:
                        raise type(e)(f"images[{i}]: {e.message}", detail=e.detail) from None
            except BaseException:
                for _, _, fd in out:
                    os.close(fd)
                raise
            return out

        digests = await asyncio.to_thread(hash_all)
        items = []
        try:
            for (_path, spec), (kind, digest, fd) in zip(specs, digests, strict=True):
                artifacts: list[tuple[str, str, str]] = []
                if kind == "tree":
                    for name, provider in self.context.providers.items():
                        if provider.supports(Feature.STORE_IMAGE):
                            image_id = await provider.store_image(Path(f"/proc/self/fd/{fd}"),
                                                                  digest)
                            artifacts.append((name, "local", image_id))
                items.append({"content_digest": digest, "content_kind": kind,
                              "artifacts": artifacts, **spec})
        finally:
            for _, _, fd in digests:
                os.close(fd)

        def add_all(conn: Any) -> list[dict[str, Any]]:
            results = []
            for i, item in enumerate(items):
                try:
                    results.append(self.catalog.add_image(conn, actor, **item))
                except ImmError as e:
                    raise type(e)(f"images[{i}] ({item['name']}@{item['version']}): "
                                  f"{e.message}", detail=e.detail) from None
            return results

        results = await self.db.write(add_all)
        for r in results:
            self.metrics.inc("images_added" if r["created"] else "images_add_noop")
        return results

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
        new = await asyncio.to_thread(self.keyring.stage_rotation)
        try:
            result = await self.db.write(self.catalog.rotate_key, actor, new)
        except BaseException:
            await asyncio.to_thread(self.keyring.abort_rotation)
            raise
        await asyncio.to_thread(self.keyring.commit_rotation, new)
        log.info("rotated signing key %s -> %s", result["previous"], result["keyid"])
        return result

    async def verify_images(self, digest: str | None) -> dict[str, Any]:
        return await self.db.read(verify_rows, self.keyring, digest)

    async def verify_ledger(self) -> dict[str, Any]:
        return await self.db.read(verify_ledger, self.keyring, self.settings.ledger_origin)

    async def backup_state(self) -> Path:
        """A consistent copy of the SQLite state in a private temp file of the state dir.

        The caller streams it and removes it. PostgreSQL states are backed up with pg_dump.
        """
        from ..store.sqlite import Database as SqliteDatabase

        if not isinstance(self.db, SqliteDatabase):
            raise BadRequest("the state is in PostgreSQL: back it up with pg_dump (or the "
                             "server's own backups); 'immctl state backup' copies SQLite states")
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=".backup-", suffix=".db", dir=self.settings.state_dir)
        os.close(fd)  # created 0600 by mkstemp
        path = Path(name)
        try:
            size = await self.db.backup(path)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        log.info("state backup: %d bytes", size)
        return path

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
            "cluster": await self.cluster_status(),
        }

    async def cluster_status(self) -> dict[str, Any]:
        """This immd's role, the leader, its epoch and since when, and the immd seen lately."""
        if self.elector is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
            return {"backend": "sqlite", "role": "leader", "me": f"pid {os.getpid()}",
                    "leader": f"pid {os.getpid()}", "epoch": 1, "since": since,
                    "lease_s": None, "members": []}
        from ..store.lease import view

        e = self.elector
        seen = await self.db.read(view, e.lease_s)
        lease = seen["lease"] or {}
        return {"backend": "postgresql", "role": "leader" if e.is_leader() else "follower",
                "me": e.holder, "leader": lease.get("holder") if lease.get("live") else None,
                "epoch": lease.get("epoch"), "since": lease.get("since"),
                "lease_s": e.lease_s, "reason": e.reason, "members": seen["members"]}
