"""What a sweep judges an instance against: catalog facts, memoized for one sweep.

A fleet runs few distinct images, so each image's signed rows are re-verified once per sweep,
not once per instance. Verdicts are memoized too: an instance's verdicts depend only on its
provider, region, image id and ``imm:service`` / ``imm:rollout`` / ``imm:digest`` tags (the
facts), and on its age through one cut-off, its service's ``max_instance_age_s``. Instances
alike that are under that age share one judgement; one past it (whose ``too-old`` detail names
its age) or one whose content was re-hashed is judged on its own. Whether a rollout exists or
is active is asked of the rollout package through :class:`RolloutLookup`, which the
composition root hands over: audit does not read the rollout package's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..catalog.keys import KeyRing
from ..catalog.verify import check_row
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE, Instance
from ..store import Connection, query_one
from .verdicts import Facts, ImageFacts, Verdict, judge, max_age, too_old, verdicts_text

Rehash = tuple[str, Mapping[str, Any]]
FactsKey = tuple[str, str, str, str | None, str | None]  # provider, region, image id, service, rollout


@dataclass(frozen=True, eq=False)
class Judged:
    """An instance's verdicts and what its open observation holds: shared by instances alike,
    so never changed in place."""

    verdicts: list[Verdict]
    text: str  # the verdicts as the observation stores them
    digest: str | None  # the digest its artifact maps its image id to
    service: str | None  # its imm:service tag
    failing: frozenset[str]  # the verdicts other than ok: what its open findings are
    # (region, image id, digest, service, state, text): the observation's compared columns
    row: tuple[str, str, str | None, str | None, str, str]
    alike: bool  # shared by the instances alike under their age limit (else: this one's own)


@dataclass
class Observed:
    """One listed instance, with what re-hashing it found (where the provider can)."""

    instance: Instance
    rehash: Rehash | None = None
    image_manifest: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RolloutLookup:
    """The rollout package's answers the audit needs, as plain functions on a connection."""

    exists: Callable[[Connection, str], bool]  # a rollout with this id was ever started
    active: Callable[[Connection, str], Mapping[str, Any] | None]  # the service's active one

    @classmethod
    def none(cls) -> RolloutLookup:
        """No rollouts anywhere (an audit without a rollout engine, e.g. in a test)."""
        return cls(exists=lambda _conn, _rid: False, active=lambda _conn, _service: None)


class CatalogFacts:
    """Catalog facts memoized for one sweep; used only on the writer thread."""

    def __init__(self, keyring: KeyRing, services: Mapping[str, Mapping[str, Any]],
                 rollouts: RolloutLookup) -> None:
        self.keyring = keyring
        self.services = services
        self.rollouts = rollouts
        self._artifacts: dict[tuple[str, str, str], tuple[str | None, tuple[str, ...]]] = {}
        self._images: dict[str, ImageFacts] = {}
        self._rollouts: dict[str, bool] = {}
        self._active: dict[str, str | None] = {}
        self._channels: dict[str, str | None] = {}
        # Facts are frozen and depend only on this key (and the time): instances that share
        # it share one object. Kept for one time value at a time (a chunk), so it stays small.
        self._facts: dict[FactsKey, Facts] = {}
        self._facts_now: int | None = None
        # by provider, then region, image id, imm:service, imm:rollout and imm:digest tags and
        # state: the age limit, and the judgement of the instances under it (which does not
        # depend on the time), for the whole sweep
        self._judged: dict[str, dict[tuple[str | None, ...], list[Any]]] = {}

    def artifact(self, conn: Connection, provider: str, region: str,
                 image_id: str) -> tuple[str | None, tuple[str, ...]]:
        """The digest an artifact row maps this image id to, and why that row does not verify."""
        key = (provider, region, image_id)
        found = self._artifacts.get(key)
        if found is None:
            row = query_one(conn, "SELECT * FROM artifacts WHERE provider=? AND region=? AND "
                                  "image_id=?", key)
            if row is None:
                found = (None, ())
            else:
                problems = tuple(f"artifact {provider}/{region}/{image_id}: {p['problem']}"
                                 for p in check_row(conn, self.keyring, "artifacts", row))
                found = (str(row["digest"]), problems)
            self._artifacts[key] = found
        return found

    def image(self, conn: Connection, digest: str) -> ImageFacts | None:
        if digest not in self._images:
            row = query_one(conn, "SELECT * FROM images WHERE digest=?", (digest,))
            if row is None:
                return None
            problems = tuple(f"image {digest[:19]}…: {p['problem']}"
                             for p in check_row(conn, self.keyring, "images", row))
            rev = query_one(conn, "SELECT root, reason, actor, at FROM revocations "
                                  "WHERE digest=?", (digest,))
            self._images[digest] = ImageFacts(
                digest=digest, name=str(row["name"]), version=str(row["version"]),
                content_digest=str(row["content_digest"]),
                content_kind=str(row["content_kind"]), revocation=rev, problems=problems)
        return self._images[digest]

    def rollout_known(self, conn: Connection, rollout: str) -> bool:
        if rollout not in self._rollouts:
            self._rollouts[rollout] = bool(self.rollouts.exists(conn, rollout))
        return self._rollouts[rollout]

    def active_rollout(self, conn: Connection, service: str) -> str | None:
        if service not in self._active:
            row = self.rollouts.active(conn, service)
            self._active[service] = None if row is None else str(row["id"])
        return self._active[service]

    def channel_head(self, conn: Connection, name: str) -> str | None:
        if name not in self._channels:
            row = conn.execute("SELECT digest FROM channel_history WHERE name=? ORDER BY seq "
                               "DESC LIMIT 1", (name,)).fetchone()
            self._channels[name] = None if row is None else str(row[0])
        return self._channels[name]

    def facts(self, conn: Connection, provider: str, item: Observed, now: int) -> Facts:
        if item.rehash is not None or item.image_manifest is not None:
            return self._facts_of(conn, provider, item, now)
        inst = item.instance
        key = (provider, inst.region, inst.image_id, inst.tags.get(TAG_SERVICE),
               inst.tags.get(TAG_ROLLOUT))
        if now != self._facts_now:
            self._facts.clear()
            self._facts_now = now
        found = self._facts.get(key)
        if found is None:
            found = self._facts[key] = self._facts_of(conn, provider, item, now)
        return found

    def judge(self, conn: Connection, provider: str, items: Sequence[Observed | Instance],
              now: int) -> tuple[list[Instance], list[Judged]]:
        """The items' instances, and each one's judgement at ``now`` (Unix seconds): exactly
        ``judge(instance, facts)``, computed once for instances alike under their age limit."""
        insts = [it.instance if isinstance(it, Observed) else it for it in items]
        out: list[Judged] = []
        put = out.append
        memo = self._judged.setdefault(provider, {})
        known = memo.get
        for item, inst in zip(items, insts, strict=True):
            if item is not inst and isinstance(item, Observed) and (
                    item.rehash is not None or item.image_manifest is not None):
                put(self._judge_one(conn, provider, item, now, alike=False))
                continue
            tag = inst.tags.get
            key = (inst.region, inst.image_id, tag(TAG_SERVICE), tag(TAG_ROLLOUT), tag(TAG_DIGEST),
                   inst.state)
            found = known(key)
            if found is None:
                service = self.facts(conn, provider, Observed(inst), now).service
                found = memo[key] = [max_age(service), None]
            limit, young = found
            if limit is not None and too_old(inst.launched_at, now, limit):
                # its age is in its too-old verdict: judged on its own
                put(self._judge_one(conn, provider, Observed(inst), now, alike=False))
                continue
            if young is None:
                young = found[1] = self._judge_one(conn, provider, Observed(inst), now,
                                                   alike=True)
            put(young)
        return insts, out

    def _judge_one(self, conn: Connection, provider: str, item: Observed, now: int,
                   alike: bool) -> Judged:
        inst = item.instance
        verdicts = judge(inst, self.facts(conn, provider, item, now))
        text = verdicts_text(verdicts)
        digest = self.artifact(conn, provider, inst.region, inst.image_id)[0]
        service = inst.tags.get(TAG_SERVICE)
        return Judged(verdicts, text, digest, service,
                      frozenset(v for v, _ in verdicts if v != "ok"),
                      (inst.region, inst.image_id, digest, service, inst.state, text), alike)

    def _facts_of(self, conn: Connection, provider: str, item: Observed, now: int) -> Facts:
        inst = item.instance
        digest, art_problems = self.artifact(conn, provider, inst.region, inst.image_id)
        image = self.image(conn, digest) if digest else None
        service_name = inst.tags.get(TAG_SERVICE)
        service = self.services.get(service_name) if service_name else None
        channel = service.get("channel") if service else None
        channel = channel if isinstance(channel, str) and channel else None
        rollout = inst.tags.get(TAG_ROLLOUT)
        return Facts(
            now=now, image=image, service=service, channel=channel,
            channel_head=self.channel_head(conn, channel) if channel else None,
            active_rollout=(self.active_rollout(conn, service_name)
                            if channel and service_name else None),
            rollout_known=bool(rollout) and self.rollout_known(conn, str(rollout)),
            rehash=item.rehash, image_manifest=item.image_manifest,
            artifact_problems=art_problems)
