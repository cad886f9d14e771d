"""The catalog's tables, as numbered migrations.

Every table that holds signed state keeps the DSSE envelope it was built from and the ledger
index of that envelope, so ``image verify --all`` re-checks each row from its signature and the
ledger rather than trusting columns.
"""

from __future__ import annotations

from ..store import Connection, Schema, execute_script
from . import merkle

SCHEMA = Schema("catalog")


@SCHEMA.migration("0001-catalog")
def _catalog(conn: Connection) -> None:
    execute_script(
        conn,
        merkle.SCHEMA
        + """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE keys (
            keyid TEXT PRIMARY KEY, public_pem TEXT NOT NULL, action TEXT NOT NULL,
            previous TEXT, created_at TEXT NOT NULL, actor TEXT NOT NULL,
            ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL);
        CREATE TABLE images (
            digest TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL,
            content_digest TEXT NOT NULL, content_kind TEXT NOT NULL, parent TEXT,
            ladder_step INTEGER NOT NULL, manifest TEXT NOT NULL, actor TEXT NOT NULL,
            created_at TEXT NOT NULL, keyid TEXT NOT NULL, ledger_index INTEGER NOT NULL,
            envelope TEXT NOT NULL, UNIQUE (name, version));
        CREATE INDEX images_parent ON images(parent);
        CREATE INDEX images_content ON images(content_digest);
        CREATE TABLE artifacts (
            provider TEXT NOT NULL, region TEXT NOT NULL, image_id TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES images(digest), actor TEXT NOT NULL,
            created_at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL,
            PRIMARY KEY (provider, region, image_id));
        CREATE INDEX artifacts_digest ON artifacts(digest);
        CREATE TABLE channel_history (
            name TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL REFERENCES images(digest),
            previous TEXT, actor TEXT NOT NULL, at TEXT NOT NULL, ledger_index INTEGER NOT NULL,
            envelope TEXT NOT NULL, PRIMARY KEY (name, seq));
        CREATE INDEX channel_history_digest ON channel_history(digest);
        CREATE TABLE revocations (
            digest TEXT PRIMARY KEY REFERENCES images(digest), root TEXT NOT NULL,
            reason TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL,
            ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL);
        CREATE INDEX revocations_root ON revocations(root);
        """
    )


@SCHEMA.migration("0004-images-created")
def _images_created(conn: Connection) -> None:
    # image list pages by (created_at, digest): without this every page re-sorts the table
    conn.execute("CREATE INDEX images_created ON images(created_at, digest)")


@SCHEMA.migration("0005-ledger-sparse-nodes")
def _ledger_sparse_nodes(conn: Connection) -> None:
    # subtrees below merkle.MIN_STORED_LEVEL are hashed from their leaves, no longer stored
    conn.execute("DELETE FROM ledger_nodes WHERE level < ?", (merkle.MIN_STORED_LEVEL,))
