"""catalog.resolve: a channel's image id in one provider/region, with refusals that say what is
there instead (the real store and catalog in a temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imm.catalog.keys import KeyRing
from imm.catalog.resolve import other_provider_hint, resolve_artifact
from imm.catalog.service import Catalog
from imm.daemon.core import SCHEMAS
from imm.errors import Conflict, NotFound
from imm.store.sqlite import Database


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[tuple[Database, Catalog]]:
    keyring, _ = KeyRing.load_or_create(tmp_path / "keys")
    db = Database(tmp_path / "imm.db", SCHEMAS)
    db.open()
    catalog = Catalog(keyring, "imm.test/ledger")
    db.write_sync(catalog.init_keys, "test")
    yield db, catalog
    db.close()


def image(db: Database, catalog: Catalog, version: str, artifacts: list[tuple[str, str, str]]
          ) -> str:
    row = db.write_sync(catalog.add_image, "test", name="web", version=version,
                        content_digest="sha256:" + version.encode().hex().ljust(64, "0")[:64],
                        content_kind="file", layers=[], boot_actions=[], parent=None, labels={},
                        artifacts=artifacts)
    return str(row["digest"])


def resolve(db: Database, catalog: Catalog, *args: Any) -> dict[str, Any]:
    return db.write_sync(resolve_artifact, catalog, *args)


def test_the_head_image_id_in_one_provider_and_region(cat: tuple[Database, Catalog]) -> None:
    db, catalog = cat
    image(db, catalog, "1", [("aws-prod", "us-east-1", "ami-1"), ("aws-prod", "eu-west-1",
                                                                 "ami-2")])
    db.write_sync(catalog.set_channel, "t", "web/prod", "web@1")
    got = resolve(db, catalog, "web/prod", "aws-prod", "eu-west-1")
    assert (got["image_id"], got["image"], got["region"]) == ("ami-2", "web@1", "eu-west-1")
    with pytest.raises(NotFound, match="several regions of aws-prod .*pass --region"):
        resolve(db, catalog, "web/prod", "aws-prod", None)
    with pytest.raises(NotFound, match="no artifact in gcp; it has aws-prod/eu-west-1, "
                                       "aws-prod/us-east-1"):
        resolve(db, catalog, "web/prod", "gcp", None)


def test_an_artifact_under_another_provider_name_is_named(cat: tuple[Database, Catalog]) -> None:
    db, catalog = cat
    digest = image(db, catalog, "2", [("aws", "us-east-1", "ami-9")])
    db.write_sync(catalog.set_channel, "t", "web/prod", "web@2")
    with pytest.raises(NotFound, match="recorded under provider 'aws' in us-east-1 \\(ami-9\\)"):
        resolve(db, catalog, "web/prod", "aws-prod", "us-east-1")
    hint = db.write_sync(other_provider_hint, digest, "aws-prod", "us-east-1", "web@2")
    assert "under provider 'aws' (ami-9), not 'aws-prod'" in hint
    assert "--provider aws-prod --region us-east-1 --image-id ami-9" in hint
    assert db.write_sync(other_provider_hint, digest, "aws-prod", "eu-west-1", "web@2") == ""


def test_a_revoked_head_or_missing_channel_is_refused(cat: tuple[Database, Catalog]) -> None:
    db, catalog = cat
    image(db, catalog, "3", [("aws-prod", "us-east-1", "ami-3")])
    with pytest.raises(NotFound, match="channel 'web/prod' does not exist"):
        resolve(db, catalog, "web/prod", "aws-prod", None)
    db.write_sync(catalog.set_channel, "t", "web/prod", "web@3")
    db.write_sync(catalog.revoke, "t", "web@3", "CVE-2026-1", False)
    with pytest.raises(Conflict, match="revoked \\(reason: CVE-2026-1"):
        resolve(db, catalog, "web/prod", "aws-prod", None)
