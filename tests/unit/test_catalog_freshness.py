"""Checkpoint times, ages and head re-signing, on a catalog in a temp dir at chosen times."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imm.catalog import checkpoint, freshness
from imm.catalog.keys import KeyRing, keyid_of
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.service import Catalog
from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from imm.errors import VerificationFailed
from imm.store.sqlite import connect, migrate, transaction


def test_checkpoint_time_is_a_signed_extension_line() -> None:
    key = Ed25519PrivateKey.generate()
    note = checkpoint.sign("o.example/log", 5, b"\x01" * 32, "o.example/log", key, 1700000000)
    text = checkpoint.verify_note(note, "o.example/log", key.public_key())
    assert text.endswith("time 1700000000\n")
    assert checkpoint.parse_body(text)[1] == 5
    assert freshness.checkpoint_time(text) == 1700000000
    assert freshness.checkpoint_time(checkpoint.body("o", 1, b"\0" * 32)) is None
    with pytest.raises(ValueError, match="more than one"):
        freshness.checkpoint_time(text + "time 1\n")
    with pytest.raises(ValueError, match="POSIX seconds"):
        checkpoint.sign("o", 1, b"\0" * 32, "o", key, -1)


def test_check_age_names_the_age() -> None:
    assert freshness.check_age(1000, 60, "x", now=1030) == 30
    with pytest.raises(VerificationFailed, match=r"x is 1h01m01s old .* --max-age 1h00m00s"):
        freshness.check_age(1000, 3600, "x", now=1000 + 3661)
    with pytest.raises(VerificationFailed, match="carries no time"):
        freshness.check_age(None, 60, "x")


@pytest.mark.parametrize("s, text", [(0, "0s"), (59, "59s"), (61, "1m01s"), (3725, "1h02m05s"),
                                     (90061, "1d01h01m")])
def test_human(s: int, text: str) -> None:
    assert freshness.human(s) == text


def test_refresh_resigns_what_moved_or_is_half_expired(tmp_path: Path) -> None:
    ring, _ = KeyRing.load_or_create(tmp_path / "keys")
    conn = connect(tmp_path / "imm.db")

    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    cat = Catalog(ring, "test.local/ledger")
    transaction(conn, cat.init_keys, "t")
    img = transaction(conn, cat.add_image, "t", name="web", version="1",
                      content_digest="sha256:" + "a" * 64, content_kind="file", layers=[],
                      boot_actions=[], parent=None, labels={})
    transaction(conn, cat.set_channel, "t", "web/prod", "web@1")
    t0 = 1_900_000_000
    assert transaction(conn, freshness.refresh, cat, 100, t0) == {"heads": 1, "checkpoint": 1}
    assert transaction(conn, freshness.refresh, cat, 100, t0 + 10) == {"heads": 0,
                                                                        "checkpoint": 0}
    assert transaction(conn, freshness.refresh, cat, 100, t0 + 51)["heads"] == 1
    env = transaction(conn, freshness.head, cat, "web/prod", 100)["statement"]
    pub = ring.public_key
    body = freshness.verify_head(env, pub, keyid_of(pub), "web/prod", None, now=t0 + 60)
    assert body["digest"] == img["digest"]
    with pytest.raises(VerificationFailed, match="expired at"):
        freshness.verify_head(env, pub, keyid_of(pub), "web/prod", None, now=t0 + 151)
    with pytest.raises(VerificationFailed, match="not 'web/dev'"):
        freshness.verify_head(env, pub, keyid_of(pub), "web/dev", None, now=t0 + 60)
    conn.close()
