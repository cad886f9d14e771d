"""Tables for operators who sign, pending protected changes and their approvals.

As everywhere in the catalog, each row keeps the DSSE envelope and ledger index of the record
it was built from; the ledger, not these tables, is the history.
"""

from __future__ import annotations

from ..store import Connection, Schema, execute_script

SCHEMA = Schema("trust")


@SCHEMA.migration("0010-trust-operators")
def _operators(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE operators (
            name TEXT PRIMARY KEY, key_type TEXT NOT NULL, public_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL UNIQUE, comment TEXT NOT NULL, actor TEXT NOT NULL,
            added_at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL)
    """)


@SCHEMA.migration("0011-trust-changes")
def _changes(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE changes (
            id TEXT PRIMARY KEY, action TEXT NOT NULL, target TEXT NOT NULL, terms TEXT NOT NULL,
            statement TEXT NOT NULL, protect TEXT NOT NULL, approvals_needed INTEGER NOT NULL,
            approvers TEXT NOT NULL, requested_by TEXT NOT NULL, created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL, state TEXT NOT NULL, result TEXT,
            ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL);
        CREATE INDEX changes_state ON changes(state);
        CREATE TABLE approvals (
            change_id TEXT NOT NULL REFERENCES changes(id), operator TEXT NOT NULL,
            fingerprint TEXT NOT NULL, signature TEXT NOT NULL, actor TEXT NOT NULL,
            at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL,
            PRIMARY KEY (change_id, operator), UNIQUE (change_id, fingerprint))
    """)


@SCHEMA.migration("0012-trust-channel-heads")
def _channel_heads(conn: Connection) -> None:
    conn.execute("""
        CREATE TABLE channel_heads (
            name TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest TEXT NOT NULL,
            issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, envelope TEXT NOT NULL)""")


@SCHEMA.migration("0013-trust-lifecycle")
def _lifecycle(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE lifecycle (
            digest TEXT NOT NULL REFERENCES images(digest), action TEXT NOT NULL,
            at INTEGER NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL, time TEXT NOT NULL,
            ledger_index INTEGER PRIMARY KEY, state TEXT NOT NULL, envelope TEXT NOT NULL);
        CREATE INDEX lifecycle_digest ON lifecycle(digest);
        CREATE INDEX lifecycle_due ON lifecycle(at) WHERE state = 'scheduled'
    """)


@SCHEMA.migration("0014-trust-witness")
def _witness(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE witness_state (
            origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
            at INTEGER NOT NULL);
        CREATE TABLE witness_cosignatures (
            body TEXT NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL, size INTEGER NOT NULL,
            at INTEGER NOT NULL, PRIMARY KEY (body, witness))
    """)


@SCHEMA.migration("0015-trust-attestations")
def _attestations(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE attestations (
            envelope_digest TEXT PRIMARY KEY, digest TEXT NOT NULL REFERENCES images(digest),
            predicate_type TEXT NOT NULL, signer TEXT NOT NULL, imported INTEGER NOT NULL,
            actor TEXT NOT NULL, at TEXT NOT NULL, ledger_index INTEGER NOT NULL,
            envelope TEXT NOT NULL);
        CREATE INDEX attestations_digest ON attestations(digest)
    """)
