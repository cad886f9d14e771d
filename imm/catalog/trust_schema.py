"""Tables for operators who sign, pending protected changes and their approvals.

As everywhere in the catalog, each row keeps the DSSE envelope and ledger index of the record
it was built from; the ledger, not these tables, is the history.
"""

from __future__ import annotations

import sqlite3

from .db import execute_script, migration


@migration("0010-trust-operators")
def _operators(conn: sqlite3.Connection) -> None:
    execute_script(conn, """
        CREATE TABLE operators (
            name TEXT PRIMARY KEY, key_type TEXT NOT NULL, public_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL UNIQUE, comment TEXT NOT NULL, actor TEXT NOT NULL,
            added_at TEXT NOT NULL, ledger_index INTEGER NOT NULL, envelope TEXT NOT NULL)
    """)
