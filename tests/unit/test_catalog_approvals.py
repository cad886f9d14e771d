"""Protect blocks and the counting of approvals, on a catalog in a temp dir (no daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshkeys import make_key, needs_ssh_keygen, sign

from imm.catalog import approvals, operators
from imm.catalog.keys import KeyRing
from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
from imm.catalog.service import Catalog
from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
from imm.errors import ConfigError, Conflict
from imm.store.sqlite import connect, migrate, transaction


def test_parse_protect_channel_and_service() -> None:
    p = approvals.parse_protect({
        "web/production": {"approvals": 2, "approvers": ["sre-1", "sre-2", "sre-3"],
                           "expires": "30m"},
        "web": {"approvers": ["sre-1"]}}, "t.toml")
    assert p["web/production"].kind == "channel" and p["web/production"].expires_s == 1800
    assert p["web"].kind == "service" and p["web"].approvals == 1
    assert p["web"].expires_s == approvals.DEFAULT_EXPIRES_S


@pytest.mark.parametrize("block, needle", [
    ({"approvals": 0, "approvers": ["a"]}, "approvals = 0"),
    ({"approvals": True, "approvers": ["a"]}, "approvals = True"),
    ({"approvers": "a"}, "non-empty list"),
    ({"approvers": ["A B"]}, "non-empty list"),
    ({"approvers": ["a"], "quorum": 1}, "unknown key(s) ['quorum']"),
    ({"approvers": ["a"], "expires": "-1h"}, "'-1h' is not a duration"),
])
def test_parse_protect_names_the_bad_value(block: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        approvals.parse_protect({"web/production": block}, "t.toml")
    assert needle in e.value.message and "t.toml" in e.value.message


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("24h", 86400),
                                           ("7d", 604800), (5, 5)])
def test_durations(text: str | int, seconds: int) -> None:
    assert approvals.parse_duration(text, "x") == seconds


@needs_ssh_keygen
def test_a_removed_operator_no_longer_counts(tmp_path: Path) -> None:
    ring, _ = KeyRing.load_or_create(tmp_path / "keys")
    conn = connect(tmp_path / "imm.db")

    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    cat = Catalog(ring, "test.local/ledger")
    transaction(conn, cat.init_keys, "test")
    k1, k2, k3 = (make_key(tmp_path, n) for n in ("sre-1", "sre-2", "sre-3"))
    for name, k in (("sre-1", k1), ("sre-2", k2), ("sre-3", k3)):
        transaction(conn, operators.add, cat, "admin", name, Path(f"{k}.pub").read_text())
    p = approvals.parse_protect({"web": {"approvals": 2, "approvers": ["sre-1", "sre-2",
                                                                        "sre-3"]}}, "t")
    ch = transaction(conn, approvals.request, cat, "admin", p["web"], "rollout-start", "web",
                     {"image": "sha256:" + "0" * 64, "strategy": "canary"})
    stmt = ch["statement"].encode()
    assert transaction(conn, approvals.approve, cat, "x", ch["id"],
                       sign(k1, stmt))["approved_by"] == ["sre-1"]
    transaction(conn, operators.remove, cat, "admin", "sre-1")
    after = transaction(conn, approvals.approve, cat, "x", ch["id"], sign(k2, stmt))
    assert after["approved_by"] == ["sre-2"] and after["state"] == "pending"
    # sre-1's key registered again under another approver's name still cannot count twice
    transaction(conn, operators.remove, cat, "admin", "sre-3")
    transaction(conn, operators.add, cat, "admin", "sre-3", Path(f"{k1}.pub").read_text())
    with pytest.raises(Conflict, match="never counts twice"):
        transaction(conn, approvals.approve, cat, "x", ch["id"], sign(k1, stmt))
    assert transaction(conn, approvals.show, ch["id"])["state"] == "pending"
    conn.close()
