"""Lifecycle times and records on a catalog in a temp dir (no daemon, chosen clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.catalog import lifecycle
from imm.catalog.keys import KeyRing
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.service import Catalog
from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from imm.errors import BadRequest, Conflict
from imm.store.sqlite import connect, migrate, transaction

NOW = 1_900_000_000


@pytest.mark.parametrize("text, at", [("now", NOW), ("+90s", NOW + 90), ("+2h", NOW + 7200),
                                      ("2030-03-17T17:46:40Z", 1_900_000_000)])
def test_parse_at(text: str, at: int) -> None:
    assert lifecycle.parse_at(text, NOW) == at


@pytest.mark.parametrize("text", ["", "tomorrow", "+2y", "2030-03-17 17:46:40", "-1h"])
def test_parse_at_names_the_bad_value(text: str) -> None:
    with pytest.raises(BadRequest, match="--at"):
        lifecycle.parse_at(text, NOW)


def test_expiry_schedule_and_forced_refusal(tmp_path: Path) -> None:
    ring, _ = KeyRing.load_or_create(tmp_path / "keys")
    conn = connect(tmp_path / "imm.db")

    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    cat = Catalog(ring, "test.local/ledger")
    transaction(conn, cat.init_keys, "t")
    img = transaction(conn, cat.add_image, "t", name="web", version="1",
                      content_digest="sha256:" + "b" * 64, content_kind="file", layers=[],
                      boot_actions=[], parent=None, labels={})
    running = [{"provider": "aws", "region": "eu-west-1", "instance_id": "i-0abc",
                "service": "web"}]
    with pytest.raises(Conflict, match=r"aws/eu-west-1/i-0abc \(web\)"):
        transaction(conn, lifecycle.record, cat, "t", "web@1", "expire", at=NOW + 60,
                    reason="", running=running, force=False, now=NOW)
    r = transaction(conn, lifecycle.record, cat, "t", "web@1", "expire", at=NOW + 60,
                    reason="old", running=running, force=True, now=NOW)
    assert r["forced_over"] == ["aws/eu-west-1/i-0abc"]
    assert lifecycle.expired(conn, img["digest"], NOW + 59) is None
    assert lifecycle.expired(conn, img["digest"], NOW + 60)["reason"] == "old"
    transaction(conn, lifecycle.record, cat, "t", "web@1", "revoke", at=NOW + 100,
                reason="CVE", running=[], force=False, now=NOW)
    assert transaction(conn, lifecycle.carry_out_revocations, cat, NOW + 99) == []
    assert lifecycle.revocation_due(conn, img["digest"], NOW + 100) is not None
    assert transaction(conn, lifecycle.carry_out_revocations, cat, NOW + 100) == [img["digest"]]
    assert cat.revocation_of(conn, img["digest"])["reason"] == "CVE"
    assert lifecycle.revocation_due(conn, img["digest"], NOW + 200) is None
    conn.close()
