"""Verdicts: what one instance is, judged from catalog facts. Pure: no database, no provider.

The sweep gathers the facts (``Facts``) for an instance and :func:`judge` returns every verdict
that applies, each with a JSON detail (integers and strings only: details are signed), or
``[("ok", {})]`` when none does. Rules:

- ``unknown-image``: no artifact ``(provider, region, image_id)`` in the catalog (a pet).
- ``digest-mismatch``: the instance's ``imm:digest`` tag names another digest than its
  artifact's image (the tag was edited after launch, or the launch lied).
- ``revoked``: its image is revoked.
- ``signature-invalid``: the catalog rows its verdict rests on (image, artifact) no longer
  verify from their signed envelopes and the ledger (e.g. edited in SQLite).
- ``not-current-channel``: its service has a ``channel`` and the image is not that channel's
  head, while no rollout of the service is active (a rollout in flight runs both).
- ``outside-rollout``: no ``imm:rollout`` tag, or one naming no known rollout.
- ``too-old``: running longer than its service's ``max_instance_age_s``.
- ``tampered``: the provider re-hashed the instance's tree and it is not the image's content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..catalog.digest import diff_manifests
from ..plugins.base import TAG_DIGEST, TAG_ROLLOUT, TAG_SERVICE

__all__ = ["TAG_DIGEST", "TAG_ROLLOUT", "TAG_SERVICE", "VERDICTS", "Facts", "ImageFacts", "judge",
           "too_old", "verdicts_text"]

VERDICTS = ("ok", "unknown-image", "digest-mismatch", "revoked", "signature-invalid",
            "not-current-channel", "outside-rollout", "too-old", "tampered")

Verdict = tuple[str, dict[str, Any]]
OK: list[Verdict] = [("ok", {})]
OK_TEXT = json.dumps([{"verdict": "ok", "detail": {}}], sort_keys=True)


class InstanceLike(Protocol):
    id: str
    image_id: str
    launched_at: int
    tags: dict[str, str]


@dataclass(frozen=True)
class ImageFacts:
    digest: str
    name: str
    version: str
    content_digest: str
    content_kind: str
    revocation: Mapping[str, Any] | None = None
    problems: tuple[str, ...] = ()  # why its signed rows do not verify; empty: they do


@dataclass(frozen=True)
class Facts:
    now: int  # Unix seconds
    image: ImageFacts | None  # None: no artifact for the instance's image id
    service: Mapping[str, Any] | None = None  # [services.NAME] of the instance's imm:service
    channel: str | None = None  # the service's channel, when it has one
    channel_head: str | None = None  # where that channel points (None: not set yet)
    active_rollout: str | None = None  # id of an active rollout of the service
    rollout_known: bool = False  # the imm:rollout tag names a row of the rollouts table
    rehash: tuple[str, Mapping[str, Any]] | None = None  # (digest, tree manifest) right now
    image_manifest: Mapping[str, Any] | None = None  # the tree manifest the image was stored as
    artifact_problems: tuple[str, ...] = field(default=())


def max_age(service: Mapping[str, Any] | None) -> int | None:
    """The service's ``max_instance_age_s`` as a positive integer, or None when unset or bad."""
    if not service:
        return None
    value = service.get("max_instance_age_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


def too_old(launched_at: int, now: int, limit: int | None) -> bool:
    """Whether an instance launched at ``launched_at`` is past its service's age limit at
    ``now``: the one way time enters a verdict (see :func:`judge`)."""
    return limit is not None and launched_at > 0 and now - int(launched_at) > limit


def verdicts_text(verdicts: list[Verdict]) -> str:
    """The verdicts as an observation stores them (JSON, keys sorted)."""
    if verdicts == OK:
        return OK_TEXT
    return json.dumps([{"verdict": v, "detail": d} for v, d in verdicts], sort_keys=True,
                      ensure_ascii=False)


def judge(instance: InstanceLike, facts: Facts) -> list[Verdict]:
    tags = instance.tags or {}
    image = facts.image
    out: list[Verdict] = []
    if image is None:
        out.append(("unknown-image", {
            "image_id": instance.image_id,
            "reason": "no artifact for this provider, region and image id in the catalog"}))
    else:
        tagged = tags.get(TAG_DIGEST)
        if tagged and tagged != image.digest:
            out.append(("digest-mismatch", {"tag": tagged, "image": image.digest}))
        if image.revocation is not None:
            rev = image.revocation
            out.append(("revoked", {"digest": image.digest, "root": rev.get("root"),
                                    "reason": rev.get("reason"), "actor": rev.get("actor"),
                                    "at": rev.get("at")}))
        problems = list(image.problems) + list(facts.artifact_problems)
        if problems:
            out.append(("signature-invalid", {"digest": image.digest, "problems": problems}))
        if (facts.channel and facts.channel_head != image.digest
                and facts.active_rollout is None):
            out.append(("not-current-channel", {"channel": facts.channel,
                                                "head": facts.channel_head,
                                                "image": image.digest}))
    rollout = tags.get(TAG_ROLLOUT)
    if not rollout:
        out.append(("outside-rollout", {"rollout": None,
                                        "reason": f"no {TAG_ROLLOUT} tag: not launched by imm"}))
    elif not facts.rollout_known:
        out.append(("outside-rollout", {"rollout": rollout,
                                        "reason": f"rollout {rollout} is not in the journal"}))
    limit = max_age(facts.service)
    if too_old(instance.launched_at, facts.now, limit):
        assert limit is not None
        out.append(("too-old", {"age_s": facts.now - int(instance.launched_at),
                                "max_instance_age_s": limit,
                                "launched_at": int(instance.launched_at)}))
    if (facts.rehash is not None and image is not None and image.content_kind == "tree"
            and facts.rehash[0] != image.content_digest):
        diff = (diff_manifests(dict(facts.image_manifest), dict(facts.rehash[1]))
                if facts.image_manifest is not None else {"added": [], "removed": [], "changed": []})
        out.append(("tampered", {"expected": image.content_digest, "found": facts.rehash[0],
                                 **diff}))
    return out or [("ok", {})]
