"""imm.plugins.cloud.settings and credentials: the shared setting and credential readers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imm.errors import ConfigError
from imm.plugins.cloud import (
    CredentialCache,
    CredentialSpec,
    Scrubber,
    credentials_hint,
    one_str,
    required,
)

SPECS = (CredentialSpec("key", "access key id", "T_KEY"),
         CredentialSpec("token", "session token", "T_TOKEN", required=False))


def test_one_str_strips_and_names_the_key_and_the_table_word() -> None:
    assert one_str("  subnet-1 ", "subnet_id", "aws provider a") == "subnet-1"
    with pytest.raises(ConfigError) as err:
        one_str(" ", "network", "gcp provider g", per="zone")
    assert err.value.message == ("gcp provider g: network = ' ' must be a non-empty string "
                                 "(or a table of them per zone)")
    with pytest.raises(ConfigError, match="per region"):
        one_str(3, "key_name", "w")


def test_required() -> None:
    assert required({"project": "p"}, "project", "w") == "p"
    with pytest.raises(ConfigError, match="^w: set project$"):
        required({}, "project", "w")


def test_credentials_hint_names_sources_never_values() -> None:
    assert credentials_hint({}, SPECS) == "$T_KEY/$T_TOKEN"
    assert credentials_hint({"key_file": "/etc/k", "token_env": "MY_TOK"}, SPECS) == \
        "file /etc/k/$MY_TOK"


def test_credential_cache_reads_once_scrubs_and_forgets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY", "AKIDVALUE1234")
    scrub = Scrubber()
    cache = CredentialCache({}, SPECS, "w", scrub, logging.getLogger("t"))
    assert not cache.loaded()
    creds = cache.get()
    assert creds.get("key") == "AKIDVALUE1234" and creds.get("token") is None
    assert "AKIDVALUE1234" not in repr(creds) and scrub("k=AKIDVALUE1234") == "k=<redacted>"
    monkeypatch.setenv("T_KEY", "OTHERVALUE999")
    assert cache.get() is creds  # read once
    cache.clear()
    assert cache.get().get("key") == "OTHERVALUE999"
    monkeypatch.delenv("T_KEY")
    cache.clear()
    with pytest.raises(ConfigError, match=r"access key id \(\$T_KEY\)"):
        cache.get()
