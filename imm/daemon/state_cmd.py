"""``immd state migrate --to postgresql://...``: copy a SQLite state into an empty PostgreSQL
database and prove the copy.

Everything happens in one PostgreSQL transaction: the schema is created, every table copied, then
the copy is checked (the same ledger size and root as the source, every ledger leaf and every
signed row re-verified against the signing keys); on any problem the transaction rolls back and
the target is left exactly as it was. A target that already holds tables is refused. Stop immd
first (or accept that writes made during the copy stay behind in SQLite).
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import config
from ..catalog.keys import PublicKeys
from ..catalog.merkle import MerkleLog
from ..catalog.verify import verify_ledger, verify_rows
from ..errors import BadRequest, Conflict, VerificationFailed
from ..store import Schema
from ..store.sqlite import ordered
from ..store.url import kind, password, sqlite_path

CHUNK = 2000


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="immd state", description="Move imm's state.")
    sub = p.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("migrate", help="copy the SQLite state into an empty PostgreSQL database")
    m.add_argument("--to", required=True, help="postgresql://USER@HOST[:PORT]/DB (no password)")
    m.add_argument("--password-env", default="", help="environment variable holding the password")
    m.add_argument("--password-file", default="", help="file holding the password")
    m.add_argument("--config", help="TOML config file (default: the embedded default)")
    m.add_argument("--state-dir", help="override daemon.state_dir")
    return p.parse_args(argv)


def _source(settings: config.Settings) -> Path:
    url = settings.state_location
    if kind(url) != "sqlite":
        raise BadRequest(f"the state in force is {url.split('@')[-1]!r}, not SQLite: nothing to "
                         f"migrate from")
    path = sqlite_path(url, settings.state_dir)
    if not path.exists():
        raise BadRequest(f"no SQLite state at {path}; pass the --state-dir or --config of the "
                         f"immd to migrate")
    return path


def migrate(settings: config.Settings, to: str, schemas: Sequence[Schema], *,
            password_env: str = "", password_file: str = "") -> dict[str, Any]:
    from ..store.postgres import LEDGER_HEAD_LOCK, MIGRATION_LOCK, Database, PgConnection, redact

    if kind(to) != "postgresql":
        raise BadRequest(f"--to {redact(to)!r} must be a postgresql:// URL")
    src_path = _source(settings)
    keyring = PublicKeys(settings.keys_dir)  # verifies only: the private key may be on a token
    if not keyring.keyids():
        raise BadRequest(f"no public keys (*.pub.pem) in {settings.keys_dir}: the copy cannot "
                         f"be re-verified; point --state-dir at the state's directory")
    target = Database(to, schemas, password=password(password_env, password_file))
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    try:
        src.execute("BEGIN")  # one snapshot of the source for the whole copy
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "AND name != '_migrations' ORDER BY rowid")]  # creation order: FK targets first
        src_log = MerkleLog(src)
        size, root = src_log.size(), src_log.root()
        with target.connect() as raw, raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (LEDGER_HEAD_LOCK,))
            present = [r[0] for r in raw.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "ORDER BY tablename").fetchall()]
            if present:
                raise Conflict(f"the target {redact(to)} is not empty (tables {present[:5]}"
                               f"{'…' if len(present) > 5 else ''}); migrate into a new, empty "
                               f"database")
            conn = PgConnection(raw)
            raw.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at BIGINT)")
            for m in ordered(schemas):
                m.apply(conn)
                raw.execute("INSERT INTO _migrations(name, applied_at) "
                            "VALUES (%s, extract(epoch FROM now())::bigint)", (m.name,))
            copied: dict[str, int] = {}
            for table in tables:
                cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
                order = "rowid" if table in ("rollouts", "observations") else "1"
                cur = src.execute(f"SELECT {', '.join(cols)} FROM {table} "  # noqa: S608
                                  f"ORDER BY {order}")
                sql = (f"INSERT INTO {table} ({', '.join(cols)}) "  # noqa: S608
                       f"VALUES ({', '.join('?' * len(cols))})")
                n = 0
                while rows := cur.fetchmany(CHUNK):
                    conn.executemany(sql, rows)
                    n += len(rows)
                copied[table] = n
            for table in ("findings", "sweeps"):  # identity columns continue after the copy
                raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                            f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
            log = MerkleLog(conn)
            if (log.size(), log.root()) != (size, root):
                raise VerificationFailed(f"the copy's ledger ({log.size()} leaves, root "
                                         f"{log.root().hex()[:16]}) is not the source's ({size}, "
                                         f"{root.hex()[:16]}); nothing was written")
            ledger = verify_ledger(conn, keyring, settings.ledger_origin)
            signed = verify_rows(conn, keyring)
            if not (ledger["ok"] and signed["ok"]):
                raise VerificationFailed(
                    "the copy does not verify; nothing was written",
                    detail={"ledger": ledger["problems"][:20], "rows": signed["problems"][:20]})
    finally:
        src.close()
    return {"from": str(src_path), "to": redact(to), "ledger_size": size, "root": root.hex(),
            "tables": copied, "rows_verified": signed["checked"]}


def main(argv: list[str]) -> int:
    import json
    import logging

    from ..errors import ImmError
    from .core import SCHEMAS

    args = parse_args(argv)
    try:
        settings = config.load(args.config, state_dir=args.state_dir)
        result = migrate(settings, args.to, SCHEMAS, password_env=args.password_env,
                         password_file=args.password_file)
    except ImmError as e:
        logging.getLogger("imm.daemon").error("%s", e.message)
        return e.exit_code
    print(json.dumps(result, indent=2))
    return 0
