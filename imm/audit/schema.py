"""Audit tables: observations, findings, sweeps, and the audit events committed to the ledger.

Every change an audit sweep makes (an observation opened or closed, a finding opened or
resolved) is an *event*. The events of one sweep chunk are committed together by one signed
ledger record (kind ``audit-finding``, body type ``audit-batch``) whose ``root`` is the RFC 6962
Merkle root over the events' canonical JSON. ``audit_events`` keeps each event's exact bytes
and ``audit_records`` the leaf hashes of each batch, so an export proves every event with two
inclusion proofs (event -> batch root, batch record -> ledger checkpoint) without re-signing.

``observations`` and ``findings`` are the current state, rebuilt from nothing but sweeps; their
``*_ledger_index`` / ``*_entry`` columns name the event that opened or closed them.
"""

from __future__ import annotations

from ..store import Connection, Schema, execute_script

SCHEMA = Schema("audit")


@SCHEMA.migration("0003-audit")
def _audit(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE observations (
            provider TEXT NOT NULL, region TEXT NOT NULL, instance_id TEXT NOT NULL,
            image_id TEXT NOT NULL, digest TEXT, service TEXT, state TEXT NOT NULL,
            launched_at INTEGER NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
            closed_at TEXT, last_sweep INTEGER NOT NULL, verdicts TEXT NOT NULL,
            ledger_index INTEGER NOT NULL, entry INTEGER NOT NULL,
            close_ledger_index INTEGER, close_entry INTEGER,
            PRIMARY KEY (provider, region, instance_id, image_id));
        CREATE INDEX observations_unseen ON observations(provider, last_sweep)
            WHERE closed_at IS NULL;
        CREATE INDEX observations_instance ON observations(provider, instance_id)
            WHERE closed_at IS NULL;
        CREATE INDEX observations_digest ON observations(digest) WHERE closed_at IS NULL;
        CREATE TABLE findings (
            id INTEGER PRIMARY KEY, provider TEXT NOT NULL, region TEXT NOT NULL,
            instance_id TEXT NOT NULL, image_id TEXT NOT NULL, service TEXT,
            verdict TEXT NOT NULL, detail TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
            opened_at TEXT NOT NULL, resolved_at TEXT, resolution TEXT,
            open_ledger_index INTEGER NOT NULL, open_entry INTEGER NOT NULL,
            resolve_ledger_index INTEGER, resolve_entry INTEGER);
        CREATE UNIQUE INDEX findings_one_open ON findings(provider, region, instance_id, verdict)
            WHERE status = 'open';
        CREATE INDEX findings_open_instance ON findings(provider, instance_id)
            WHERE status = 'open';
        CREATE TABLE sweeps (
            id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT,
            instances INTEGER NOT NULL DEFAULT 0, findings_opened INTEGER NOT NULL DEFAULT 0,
            findings_resolved INTEGER NOT NULL DEFAULT 0,
            observations_opened INTEGER NOT NULL DEFAULT 0,
            observations_closed INTEGER NOT NULL DEFAULT 0, records INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL, error TEXT, actor TEXT NOT NULL);
        CREATE TABLE audit_records (
            ledger_index INTEGER PRIMARY KEY, sweep INTEGER NOT NULL, at TEXT NOT NULL,
            entries INTEGER NOT NULL, root BLOB NOT NULL, hashes BLOB NOT NULL);
        CREATE TABLE audit_events (
            ledger_index INTEGER NOT NULL, entry INTEGER NOT NULL, type TEXT NOT NULL,
            event TEXT NOT NULL, at TEXT NOT NULL, ends_at TEXT, body TEXT NOT NULL,
            PRIMARY KEY (ledger_index, entry)) WITHOUT ROWID;
        CREATE INDEX audit_events_at ON audit_events(at)
        """)


@SCHEMA.migration("0006-observations-open")
def _observations_open(conn: Connection) -> None:
    # a sweep reads each listed instance's open observation by (provider, instance_id) and
    # compares these columns: the index answers it without visiting the table
    execute_script(conn, """
        DROP INDEX observations_instance;
        CREATE INDEX observations_open ON observations(provider, instance_id, region, image_id,
            digest, service, state, verdicts) WHERE closed_at IS NULL
        """)
