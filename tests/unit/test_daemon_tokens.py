"""Bearer tokens: minted, checked, expired, revoked; only their hash is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imm.daemon.tokens import TokenStore, parse_ttl
from imm.errors import BadRequest, Forbidden, NotFound, StoreCorrupted


def test_parse_ttl() -> None:
    assert parse_ttl("90s") == 90 and parse_ttl("30m") == 1800 and parse_ttl("7d") == 604800
    for bad in ("", "0s", "59s", "31d", "1w", "١h", "5 m", "-5m", "1e3"):
        with pytest.raises(BadRequest, match="ttl"):
            parse_ttl(bad)


def test_a_token_checks_until_it_expires_or_is_revoked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, rec = store.create(1000, "alice", False, "read", 3600, now=1000)
    assert rec["state"] == "active" and "sha256" not in rec
    assert store.check(token, now=1001).uid == 1000  # type: ignore[union-attr]
    assert store.check(token, now=1000 + 3600) is None  # expired
    assert store.check(token[:-1] + ("A" if token[-1] != "A" else "B"), now=1001) is None
    assert store.check("imm_nothex_x", now=1001) is None
    # the file holds the hash, never the token, and survives a restart
    assert token.rsplit("_", 1)[1] not in (tmp_path / "tokens.json").read_text()
    again = TokenStore(tmp_path / "tokens.json")
    assert again.check(token, now=1001) is not None
    with pytest.raises(NotFound):
        again.revoke(rec["id"], 2000, False, "bob", now=1002)  # not bob's
    assert again.revoke(rec["id"], 1000, False, "alice", now=1002)["state"] == "revoked"
    assert again.check(token, now=1003) is None
    assert TokenStore(tmp_path / "tokens.json").check(token, now=1003) is None


def test_scopes_and_limits(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(Forbidden, match="not an admin"):
        store.create(1000, "alice", False, "admin", 3600)
    _, rec = store.create(0, "root", True, "admin", 3600)
    assert rec["scope"] == "admin"
    with pytest.raises(BadRequest):
        store.create(0, "root", True, "write", 3600)
    assert [t["user"] for t in store.listing(None)] == ["root"]
    assert store.listing(1000) == []


def test_a_broken_token_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": [{"id": 1}]}))
    with pytest.raises(StoreCorrupted, match="tokens.json"):
        TokenStore(tmp_path / "tokens.json")
