"""Verdicts (imm.audit.verdicts): what an instance is, judged from facts alone.

Each rule is checked on both sides of its condition, with the exact detail it signs, and the
verdicts of one instance come in the documented order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from imm.audit.verdicts import VERDICTS, Facts, ImageFacts, judge, max_age

NOW = 1_800_000_000
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
CONTENT = "sha256:" + "c" * 64


@dataclass
class Inst:
    id: str = "i-1"
    image_id: str = "ami-1"
    launched_at: int = NOW - 60
    tags: dict[str, str] | None = field(
        default_factory=lambda: {"imm:rollout": "r-1", "imm:digest": DIGEST})


def image(**kw) -> ImageFacts:
    base = dict(digest=DIGEST, name="web", version="v1", content_digest=CONTENT,
                content_kind="tree")
    return ImageFacts(**{**base, **kw})


def facts(**kw) -> Facts:
    base = dict(now=NOW, image=image(), rollout_known=True)
    return Facts(**{**base, **kw})


def test_a_well_known_instance_is_ok():
    assert judge(Inst(), facts()) == [("ok", {})]


def test_every_verdict_name_is_listed():
    assert VERDICTS == ("ok", "unknown-image", "digest-mismatch", "revoked", "signature-invalid",
                        "not-current-channel", "outside-rollout", "too-old", "tampered")


def test_unknown_image_is_a_pet():
    assert judge(Inst(image_id="ami-9"), facts(image=None)) == [
        ("unknown-image", {"image_id": "ami-9", "reason": "no artifact for this provider, "
                           "region and image id in the catalog"})]


def test_digest_tag_naming_another_image():
    assert judge(Inst(tags={"imm:rollout": "r-1", "imm:digest": OTHER}), facts()) == [
        ("digest-mismatch", {"tag": OTHER, "image": DIGEST})]


def test_missing_or_empty_digest_tag_is_not_a_mismatch():
    assert judge(Inst(tags={"imm:rollout": "r-1"}), facts()) == [("ok", {})]
    assert judge(Inst(tags={"imm:rollout": "r-1", "imm:digest": ""}), facts()) == [("ok", {})]


def test_revoked_image_names_the_revocation():
    rev = {"root": OTHER, "reason": "CVE-2026-1", "actor": "alice", "at": "2026-11-20T10:02:00Z",
           "extra": "not copied"}
    assert judge(Inst(), facts(image=image(revocation=rev))) == [
        ("revoked", {"digest": DIGEST, "root": OTHER, "reason": "CVE-2026-1", "actor": "alice",
                     "at": "2026-11-20T10:02:00Z"})]


def test_an_empty_revocation_mapping_is_still_a_revocation():
    assert judge(Inst(), facts(image=image(revocation={}))) == [
        ("revoked", {"digest": DIGEST, "root": None, "reason": None, "actor": None, "at": None})]


def test_signature_problems_of_image_and_artifact_together():
    f = facts(image=image(problems=("image row edited",)), artifact_problems=("artifact gone",))
    assert judge(Inst(), f) == [
        ("signature-invalid", {"digest": DIGEST, "problems": ["image row edited", "artifact gone"]})]
    assert judge(Inst(), facts(artifact_problems=("a",))) == [
        ("signature-invalid", {"digest": DIGEST, "problems": ["a"]})]


def test_not_current_channel_only_outside_a_rollout():
    f = facts(channel="web/prod", channel_head=OTHER)
    assert judge(Inst(), f) == [
        ("not-current-channel", {"channel": "web/prod", "head": OTHER, "image": DIGEST})]
    unset = facts(channel="web/prod", channel_head=None)
    assert judge(Inst(), unset) == [
        ("not-current-channel", {"channel": "web/prod", "head": None, "image": DIGEST})]
    assert judge(Inst(), facts(channel="web/prod", channel_head=OTHER, active_rollout="r-2")) \
        == [("ok", {})]
    assert judge(Inst(), facts(channel="web/prod", channel_head=DIGEST)) == [("ok", {})]
    assert judge(Inst(), facts(channel=None, channel_head=OTHER)) == [("ok", {})]


def test_outside_rollout_without_a_tag_or_with_an_unknown_one():
    assert judge(Inst(tags={"imm:digest": DIGEST}), facts()) == [
        ("outside-rollout", {"rollout": None, "reason": "no imm:rollout tag: not launched by imm"})]
    assert judge(Inst(tags={"imm:rollout": "", "imm:digest": DIGEST}), facts()) == [
        ("outside-rollout", {"rollout": None, "reason": "no imm:rollout tag: not launched by imm"})]
    assert judge(Inst(), facts(rollout_known=False)) == [
        ("outside-rollout", {"rollout": "r-1", "reason": "rollout r-1 is not in the journal"})]


def test_instance_without_tags_at_all():
    assert judge(Inst(tags=None), facts(image=None)) == [
        ("unknown-image", {"image_id": "ami-1", "reason": "no artifact for this provider, "
                           "region and image id in the catalog"}),
        ("outside-rollout", {"rollout": None, "reason": "no imm:rollout tag: not launched by imm"}),
    ]


@pytest.mark.parametrize(
    ("service", "limit"),
    [
        (None, None),
        ({}, None),
        ({"other": 1}, None),
        ({"max_instance_age_s": 0}, None),
        ({"max_instance_age_s": -5}, None),
        ({"max_instance_age_s": True}, None),
        ({"max_instance_age_s": "3600"}, None),
        ({"max_instance_age_s": None}, None),
        ({"max_instance_age_s": 1}, 1),
        ({"max_instance_age_s": 3600}, 3600),
        ({"max_instance_age_s": 90.9}, 90),
        ({"max_instance_age_s": 0.5}, 0),
    ],
)
def test_max_age(service, limit):
    got = max_age(service)
    assert got == limit and type(got) is type(limit)


def test_too_old_only_past_the_maximum_age():
    svc = {"max_instance_age_s": 3600}
    exactly = Inst(launched_at=NOW - 3600)
    assert judge(exactly, facts(service=svc)) == [("ok", {})]
    older = Inst(launched_at=NOW - 3601)
    assert judge(older, facts(service=svc)) == [
        ("too-old", {"age_s": 3601, "max_instance_age_s": 3600, "launched_at": NOW - 3601})]


def test_too_old_from_the_first_second_of_the_epoch_but_not_without_a_launch_time():
    svc = {"max_instance_age_s": 10}
    assert judge(Inst(launched_at=1), facts(service=svc)) == [
        ("too-old", {"age_s": NOW - 1, "max_instance_age_s": 10, "launched_at": 1})]
    assert judge(Inst(launched_at=0), facts(service=svc)) == [("ok", {})]
    assert judge(Inst(launched_at=NOW - 100), facts(service={"max_instance_age_s": 0})) \
        == [("ok", {})]


def manifest(*entries: tuple[str, str]) -> dict:
    return {"entries": [{"path": p, "type": "file", "digest": d, "mode": 0o644}
                        for p, d in entries]}


def test_tampered_tree_names_the_changed_files():
    stored = manifest(("bin/app", "d1"), ("etc/conf", "d2"), ("old", "d3"))
    now = manifest(("bin/app", "d1"), ("etc/conf", "dX"), ("new", "d4"))
    f = facts(rehash=(OTHER, now), image_manifest=stored)
    assert judge(Inst(), f) == [
        ("tampered", {"expected": CONTENT, "found": OTHER, "added": ["new"], "removed": ["old"],
                      "changed": ["etc/conf"]})]


def test_tampered_without_the_stored_manifest_lists_nothing():
    f = facts(rehash=(OTHER, manifest(("a", "1"))))
    assert judge(Inst(), f) == [
        ("tampered", {"expected": CONTENT, "found": OTHER, "added": [], "removed": [],
                      "changed": []})]


def test_not_tampered_when_the_hash_matches_or_the_image_is_no_tree():
    assert judge(Inst(), facts(rehash=(CONTENT, manifest()))) == [("ok", {})]
    assert judge(Inst(), facts(image=image(content_kind="disk"), rehash=(OTHER, manifest()))) \
        == [("ok", {})]
    assert judge(Inst(), facts(image=None, rehash=(OTHER, manifest())), ) == [
        ("unknown-image", {"image_id": "ami-1", "reason": "no artifact for this provider, "
                           "region and image id in the catalog"})]


def test_every_rule_at_once_in_order():
    rev = {"root": DIGEST, "reason": "r", "actor": "a", "at": "t"}
    f = facts(image=image(revocation=rev, problems=("p",)), channel="c", channel_head=None,
              rollout_known=False, service={"max_instance_age_s": 5},
              rehash=(OTHER, manifest()), image_manifest=manifest())
    inst = Inst(launched_at=NOW - 6, tags={"imm:rollout": "r-9", "imm:digest": OTHER})
    assert [v for v, _ in judge(inst, f)] == [
        "digest-mismatch", "revoked", "signature-invalid", "not-current-channel",
        "outside-rollout", "too-old", "tampered"]
