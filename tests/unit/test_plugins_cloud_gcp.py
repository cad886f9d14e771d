"""imm.plugins.cloud.gcp: the Google auth the gcp provider and cloudlb's GCE flavour share."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imm.errors import ConfigError
from imm.plugins.cloud import Scrubber
from imm.plugins.cloud.gcp import GCPAuth, with_reason

LOG = logging.getLogger("test")
KEY = ("-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC7\n"  # a fake
       "-----END PRIVATE KEY-----\n")


def auth(tmp_path: Path, **settings: object) -> tuple[GCPAuth, Scrubber]:
    scrub = Scrubber()
    return GCPAuth(settings, "gcp provider g", tmp_path / "tok.json", scrub, LOG), scrub


def key_file(tmp_path: Path, **fields: object) -> Path:
    data = {"type": "service_account", "client_email": "imm@p.iam.gserviceaccount.com",
            "private_key": KEY, "private_key_id": "abcdef0123456789", "project_id": "proj-1"}
    data.update(fields)
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def test_a_service_account_key_is_read_once_and_its_secrets_scrubbed(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    a, scrub = auth(tmp_path, service_account_file=str(path))
    assert a.project_setting is None
    user, key = a.credentials()
    assert user == "imm@p.iam.gserviceaccount.com" and key["private_key"] == KEY
    assert a.project == "proj-1"  # taken from the key
    path.unlink()
    assert a.credentials() == (user, key)  # cached, not read again
    assert "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC7" not in scrub(f"oops {KEY}")
    assert "abcdef0123456789" not in scrub("id abcdef0123456789")
    assert str(path) in a.hint and "service account key" in a.hint


def test_settings_are_checked_without_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_type = 'XX'"):
        auth(tmp_path, auth_type="XX")
    with pytest.raises(ConfigError, match="do not belong in the config file"):
        auth(tmp_path, private_key="k")
    with pytest.raises(ConfigError, match="needs client_id"):
        auth(tmp_path, auth_type="IA", project="p")
    with pytest.raises(ConfigError, match="set project"):
        auth(tmp_path, auth_type="GCE")
    with pytest.raises(ConfigError, match="not both"):
        auth(tmp_path, service_account_file="/x", credentials_env="X")
    a, _ = auth(tmp_path, service_account_file="/nonexistent/key.json")  # no I/O yet
    with pytest.raises(ConfigError, match="cannot read the service account key /nonexistent"):
        a.credentials()


def test_a_key_that_is_not_a_service_account_key_is_named(tmp_path: Path) -> None:
    a, _ = auth(tmp_path, service_account_file=str(key_file(tmp_path, type="authorized_user")))
    with pytest.raises(ConfigError, match="is not a service account key"):
        a.credentials()
    b, _ = auth(tmp_path, service_account_file=str(key_file(tmp_path, project_id=None)))
    with pytest.raises(ConfigError, match="set project"):
        b.credentials()


def test_gce_auth_uses_the_vm_account_and_ia_needs_a_token_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scrub = Scrubber()
    g = GCPAuth({"auth_type": "gce", "project": "p"}, "w", tmp_path / "t", scrub, LOG,
                sa_email="vm@p.iam")
    assert g.credentials() == ("vm@p.iam", None) and g.project == "p"
    monkeypatch.setenv("GCP_CLIENT_SECRET", "s3cr3t-value")
    ia, scrub = auth(tmp_path, auth_type="IA", project="p", client_id="cid")
    with pytest.raises(ConfigError, match="needs a token cache"):
        ia.credentials()
    (tmp_path / "tok.json").write_text(json.dumps({"refresh_token": "r-token-123456"}))
    assert ia.credentials() == ("cid", "s3cr3t-value")
    assert "r-token-123456" not in scrub("r-token-123456") and "s3cr3t" not in scrub("s3cr3t-value")


def test_with_reason_puts_the_google_reason_in_front() -> None:
    class Err(Exception):
        def __init__(self, value: object, code: object = None, http_code: int = 400) -> None:
            self.value, self.code, self.http_code = value, code, http_code

    e = with_reason(Err({"reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}))
    assert e.value == "rateLimitExceeded: Rate Limit Exceeded" and e.code == "rateLimitExceeded"
    e = with_reason(Err("alreadyExists: x", code="alreadyExists"))
    assert e.value == "alreadyExists: x"  # not doubled
    e = with_reason(Err({"code": "QUOTA_EXCEEDED", "message": "m"}, http_code=200))
    assert e.value == "QUOTA_EXCEEDED: m" and e.http_code is None
