"""A small world for audit unit tests: the real store (only the catalog's and the audit's
schemas: the audit needs no rollout tables), catalog, keyring and plugin manager in a temporary
directory, and an in-memory fleet written for these tests.

The fleet is a stateful stand-in for a cloud (what is tested here is the audit's own logic:
verdicts recorded, findings opened and resolved, events signed); the real providers are tested
against their real peers elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from imm.audit.facts import RolloutLookup
from imm.audit.schema import SCHEMA as AUDIT_SCHEMA
from imm.audit.sweep import Auditor
from imm.catalog.keys import KeyRing
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.service import Catalog
from imm.config import Settings
from imm.context import Context, ProviderHandle
from imm.errors import ProviderError
from imm.plugins.base import (
    TAG_DIGEST,
    TAG_ROLLOUT,
    TAG_SERVICE,
    Feature,
    Instance,
    LaunchRequest,
    PluginContext,
    Provider,
)
from imm.plugins.hookspecs import hookimpl
from imm.plugins.manager import Plugins
from imm.store import query

from pgcluster import open_database

T = TypeVar("T")


class Fleet(Provider):
    """Instances in a dict. ``fail_listing``: the next listing raises after ``fail_after``."""

    kind: ClassVar[str] = "fleet"

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name, {}, PluginContext(Path("/nonexistent"), None))  # type: ignore[arg-type]
        self.instances: dict[str, Instance] = {}
        self.fail_listing: str | None = None
        self.fail_after = 0
        self.listings = 0
        self.rehashed: list[str] = []
        self.hold: threading.Event | None = None  # set: listing stops after one until it is set
        self._ids = itertools.count(1)

    def add(self, image_id: str, n: int = 1, region: str = "r1", launched_at: int = 1000,
            **tags: str) -> list[str]:
        ids = []
        for _ in range(n):
            iid = f"i-{next(self._ids)}"
            self.instances[iid] = Instance(id=iid, provider=self.name, region=region,
                                           image_id=image_id, state="running",
                                           launched_at=launched_at, tags=dict(tags))
            ids.append(iid)
        return ids

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        self.listings += 1
        for n, i in enumerate(list(self.instances.values())):
            if self.fail_listing is not None and n >= self.fail_after:
                raise ProviderError(self.fail_listing)
            if n == 1 and self.hold is not None:
                self.hold.wait(30)  # a worker thread: the sweep is under way meanwhile
            yield i

    def launch(self, request: LaunchRequest) -> list[Instance]:
        raise AssertionError("the audit never launches")

    def terminate(self, instance_ids: Sequence[str]) -> None:
        raise AssertionError("the audit never terminates")

    def describe_image(self, region: str, image_id: str) -> None:
        return None


class HashingFleet(Fleet):
    """A fleet that can re-hash its instances (like the local provider)."""

    features = frozenset({Feature.REHASH, Feature.IMAGE_MANIFEST})

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name)
        self.trees: dict[str, tuple[str, dict[str, Any]]] = {}  # instance -> (digest, tree)
        self.manifests: dict[str, dict[str, Any]] = {}  # image id -> tree

    def rehash(self, instance_id: str) -> tuple[str, dict[str, Any]]:
        self.rehashed.append(instance_id)
        return self.trees[instance_id]

    def image_manifest(self, image_id: str) -> dict[str, Any]:
        return self.manifests[image_id]


@dataclass
class Findings:
    """An imm_audit_finding plugin recording what it is told."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    @hookimpl
    def imm_audit_finding(self, finding: dict[str, Any]) -> None:
        self.seen.append(finding)


@dataclass
class Rollouts:
    """The rollout package's answers, as the composition root would hand them over."""

    known: set[str] = field(default_factory=set)
    active_by_service: dict[str, str] = field(default_factory=dict)

    def lookup(self) -> RolloutLookup:
        return RolloutLookup(
            exists=lambda _conn, rid: rid in self.known,
            active=lambda _conn, service: ({"id": self.active_by_service[service]}
                                           if service in self.active_by_service else None))


class World:
    def __init__(self, tmp: Path, services: dict[str, dict[str, Any]] | None = None,
                 fleet: Fleet | None = None, audit: dict[str, Any] | None = None,
                 chunk: int = 1000) -> None:
        self.settings = Settings(source="test.toml", state_dir=tmp, socket=tmp / "sock",
                                 services=services or {}, audit=audit or {})
        self.keyring, _ = KeyRing.load_or_create(tmp / "keys")
        self.db = open_database(tmp, [CATALOG_SCHEMA, AUDIT_SCHEMA])
        self.db.open()
        self.catalog = Catalog(self.keyring, "imm.test/ledger")
        self.db.write_sync(self.catalog.init_keys, "test")
        self.findings = Findings()
        self.plugins = Plugins(extra=[self.findings])
        self.fleet = fleet or Fleet()
        self.ctx = Context(settings=self.settings, store=self.db, catalog=self.catalog,
                           keyring=self.keyring, plugins=self.plugins,
                           providers={"mem": ProviderHandle(self.fleet)})
        self.rollouts = Rollouts()
        self.auditor = Auditor(self.ctx, self.rollouts.lookup(), chunk=chunk)

    def image(self, version: str, image_id: str | None = None, kind: str = "file",
              content: str | None = None, parent: str | None = None) -> str:
        """Register an image with an artifact ``image_id`` on provider mem, region r1."""
        row = self.db.write_sync(
            self.catalog.add_image, "test", name="app", version=version,
            content_digest=content or "sha256:" + version.encode().hex().ljust(64, "0")[:64],
            content_kind=kind, layers=[], boot_actions=[], parent=parent, labels={},
            artifacts=[("mem", "r1", image_id or f"img-{version}")])
        return str(row["digest"])

    def sql(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.db.write_sync(lambda c: query(c, sql, params))

    def open_findings(self) -> set[tuple[str, str]]:
        return {(r["instance_id"], r["verdict"]) for r in self.sql(
            "SELECT instance_id, verdict FROM findings WHERE status='open'")}

    def close(self) -> None:
        self.db.close()


def managed(digest: str, rollout: str = "r-1", service: str = "web") -> dict[str, str]:
    """The tags a rollout leaves on an instance."""
    return {TAG_SERVICE: service, TAG_ROLLOUT: rollout, TAG_DIGEST: digest}


def run(world: World, body: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await asyncio.wait_for(body, 20)
        finally:
            await world.auditor.stop()

    return asyncio.run(main())
