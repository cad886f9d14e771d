"""Rollout tables: the rollouts and their journal (each entry also a signed ledger record)."""

from __future__ import annotations

from ..store import Connection, Schema, execute_script

SCHEMA = Schema("rollout")


# A migration is history: its SQL stays as it was applied. The index's states are
# imm.rollout.states.ACTIVE (tests/unit/test_rollout_schema.py checks they agree).
@SCHEMA.migration("0002-rollout")
def _rollout(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE rollouts (
            id TEXT PRIMARY KEY, service TEXT NOT NULL, strategy TEXT NOT NULL,
            digest TEXT NOT NULL, previous_digest TEXT, state TEXT NOT NULL, step TEXT,
            params TEXT NOT NULL, actor TEXT NOT NULL, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, finished_at TEXT, error TEXT);
        CREATE UNIQUE INDEX rollouts_one_active ON rollouts(service)
            WHERE state IN ('running', 'paused', 'rolling-back');
        CREATE INDEX rollouts_service ON rollouts(service, created_at);
        CREATE TABLE rollout_journal (
            rollout TEXT NOT NULL REFERENCES rollouts(id), seq INTEGER NOT NULL,
            step TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL, actor TEXT NOT NULL,
            at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL,
            PRIMARY KEY (rollout, seq))
        """)


@SCHEMA.migration("0003-heal")
def _heal(conn: Connection) -> None:
    execute_script(conn, """
        CREATE TABLE heal_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, action TEXT NOT NULL,
            instance TEXT, provider TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL,
            at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL);
        CREATE INDEX heal_events_service ON heal_events(service, seq);
        CREATE TABLE quarantine (
            instance TEXT NOT NULL, provider TEXT NOT NULL, service TEXT NOT NULL,
            region TEXT NOT NULL, digest TEXT, reason TEXT NOT NULL, at TEXT NOT NULL,
            state TEXT NOT NULL, ledger_index INTEGER NOT NULL,
            PRIMARY KEY (provider, instance));
        CREATE INDEX quarantine_service ON quarantine(service, at)
        """)
