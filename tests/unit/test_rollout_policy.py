"""Rollout preconditions (imm.rollout.policy) against a real catalog in an in-memory SQLite
database: each rule refuses with its name, the value and what to do, and lets a good image pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imm.catalog.keys import KeyRing
from imm.catalog.schema import SCHEMA
from imm.catalog.service import Catalog
from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from imm.errors import PolicyRefused
from imm.rollout import policy
from imm.rollout.services import Service, Target
from imm.store.sqlite import connect, migrate

CONTENT = "sha256:" + hashlib.sha256(b"content").hexdigest()


@pytest.fixture
def cat(tmp_path: Path):
    conn = connect(":memory:")
    migrate(conn, [SCHEMA, TRUST_SCHEMA])
    ring = KeyRing(tmp_path, Ed25519PrivateKey.from_private_bytes(b"k" * 32))
    catalog = Catalog(ring, "imm.test/ledger")
    catalog.init_keys(conn, "alice")
    yield conn, catalog, ring
    conn.close()


def add(conn, catalog, version="v1", layers=("os=debian@12", "runtime=python@3.11", "app=web@1"),
        artifacts=(("local", "local", "img-1"),)):
    img = catalog.add_image(conn, "alice", name="web", version=version, content_digest=CONTENT,
                            content_kind="file", layers=list(layers), boot_actions=[],
                            parent=None, labels={}, artifacts=list(artifacts))
    return img["digest"]


def svc(**kw) -> Service:
    targets = kw.pop("targets", [Target("local", "local", 2)])
    return Service(name="web", targets=targets, router=None, route=None, **kw)


def refused(rule: str):
    return pytest.raises(PolicyRefused, match=f"^refused by rule '{rule}': ")


def test_a_good_image_passes_and_its_artifacts_are_returned(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog, artifacts=[("local", "local", "img-1"), ("aws", "eu-west-1", "ami-7")])
    service = svc(targets=[Target("local", "local", 1), Target("aws", "eu-west-1", 1)],
                  min_ladder_step=4)
    result = policy.check(conn, catalog, ring, service, digest)
    assert result["artifacts"] == {"local/local": "img-1", "aws/eu-west-1": "ami-7"}
    assert result["image"]["digest"] == digest and result["image"]["version"] == "v1"


def test_refuse_builds_the_policy_error():
    e = policy.refuse("some-rule", "what went wrong", image="sha256:x", extra=[1])
    assert isinstance(e, PolicyRefused)
    assert e.message == "refused by rule 'some-rule': what went wrong"
    assert e.detail == {"rule": "some-rule", "image": "sha256:x", "extra": [1]}
    assert e.code == "policy-refused" and e.exit_code == 6


def test_an_edited_image_row_is_refused_as_unsigned(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog)
    conn.execute("UPDATE images SET version='v9' WHERE digest=?", (digest,))
    with refused("signed-by-trusted-key") as e:
        policy.check(conn, catalog, ring, svc(), digest)
    assert e.value.message == (
        f"refused by rule 'signed-by-trusted-key': image web@v9 ({digest[:19]}) has no valid "
        "signature from a trusted key: column version is 'v9' but the signed record says 'v1'; "
        "re-register it or restore the catalog")
    assert e.value.detail == {"rule": "signed-by-trusted-key", "image": digest}


def test_an_image_signed_by_an_unknown_key_is_refused(cat, tmp_path):
    conn, catalog, ring = cat
    digest = add(conn, catalog)
    (tmp_path / "other").mkdir()
    stranger = KeyRing(tmp_path / "other", Ed25519PrivateKey.from_private_bytes(b"s" * 32))
    with refused("signed-by-trusted-key") as e:
        policy.check(conn, catalog, stranger, svc(), digest)
    assert "has no valid signature from a trusted key: envelope does not verify: no valid " \
           "signature: " in e.value.message


def test_a_revoked_image_is_refused_with_the_revocation(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog)
    rev = catalog.revoke(conn, "bob", digest, "CVE-2026-1234", cascade=False)
    at = catalog.revocation_of(conn, digest)["at"]
    with refused("not-revoked") as e:
        policy.check(conn, catalog, ring, svc(), digest)
    assert e.value.message == (
        f"refused by rule 'not-revoked': image web@v1 ({digest[:19]}) is revoked (reason: "
        f"CVE-2026-1234, by bob at {at}); pick another or restore it")
    assert e.value.detail == {"rule": "not-revoked", "image": digest}
    assert rev["revoked"] == [digest]


def test_an_artifact_is_needed_in_every_target_region(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog)
    service = svc(targets=[Target("aws", "eu-west-1", 1), Target("local", "local", 1),
                           Target("aws", "us-east-1", 2)])
    with refused("artifact-in-every-region") as e:
        policy.check(conn, catalog, ring, service, digest)
    assert e.value.message == (
        f"refused by rule 'artifact-in-every-region': image web@v1 ({digest[:19]}) has no "
        "artifact in aws/eu-west-1, aws/us-east-1; copy it there and record it with 'immctl "
        "image artifact add'")
    assert e.value.detail == {"rule": "artifact-in-every-region", "image": digest,
                              "missing": ["aws/eu-west-1", "aws/us-east-1"]}


def test_an_artifact_of_another_image_does_not_count(cat):
    conn, catalog, ring = cat
    add(conn, catalog, version="v1", artifacts=[("local", "local", "img-1")])
    digest = add(conn, catalog, version="v2", layers=("os=debian@12",), artifacts=[])
    with refused("artifact-in-every-region"):
        policy.check(conn, catalog, ring, svc(), digest)


def test_the_ladder_step_must_reach_the_services_minimum(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog, layers=("os=debian@12", "runtime=python@3.11"))
    assert policy.check(conn, catalog, ring, svc(min_ladder_step=2), digest)["artifacts"]
    with refused("min-ladder-step") as e:
        policy.check(conn, catalog, ring, svc(min_ladder_step=3), digest)
    assert e.value.message == (
        f"refused by rule 'min-ladder-step': image web@v1 ({digest[:19]}) is at ladder step 2 "
        "but service web needs at least 3; bake more of it into the image")
    assert e.value.detail == {"rule": "min-ladder-step", "image": digest}


def test_an_image_must_have_been_on_the_services_channel(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog)
    with refused("allowed-channel") as e:
        policy.check(conn, catalog, ring, svc(channel="web/production"), digest)
    assert e.value.message == (
        f"refused by rule 'allowed-channel': image web@v1 ({digest[:19]}) was never published "
        "on channel web/production, the only channel service web takes; 'immctl channel set "
        "web/production REF' first")
    assert e.value.detail == {"rule": "allowed-channel", "image": digest}
    catalog.set_channel(conn, "alice", "web/staging", digest)
    with refused("allowed-channel"):
        policy.check(conn, catalog, ring, svc(channel="web/production"), digest)
    catalog.set_channel(conn, "alice", "web/production", digest)
    other = add(conn, catalog, version="v2", layers=("os=debian@12",),
                artifacts=[("local", "local", "img-2")])
    catalog.set_channel(conn, "alice", "web/production", other)
    # once published is enough: the channel may have moved on since (rollback to it)
    assert policy.check(conn, catalog, ring, svc(channel="web/production"), digest)["image"][
        "digest"] == digest


def test_rules_apply_in_order_signature_first(cat):
    conn, catalog, ring = cat
    digest = add(conn, catalog, layers=("os=debian@12",), artifacts=[])
    catalog.revoke(conn, "bob", digest, "r", cascade=False)
    with refused("not-revoked"):
        policy.check(conn, catalog, ring, svc(min_ladder_step=4, channel="web/x"), digest)
    conn.execute("UPDATE images SET actor='mallory' WHERE digest=?", (digest,))
    with refused("signed-by-trusted-key"):
        policy.check(conn, catalog, ring, svc(min_ladder_step=4, channel="web/x"), digest)
    row = conn.execute("SELECT envelope FROM images WHERE digest=?", (digest,)).fetchone()
    assert json.loads(row[0])["payloadType"] == "application/vnd.imm.image.v1+json"
