"""A throwaway PostgreSQL 15 cluster (Debian's binaries) for the tests, and the store the tests
parametrised over both backends open.

One cluster per test session (initdb ~0.4 s), a fresh database per test. The cluster trusts local
socket connections (the tests' own) and asks TCP peers for a SCRAM password, so a wrong password
can be tested against the real server. ``BACKEND``/``DSN`` are set by the ``store_backend`` fixture
of tests/unit/conftest.py; ``open_database`` builds the store those tests run on.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "imm-test-password"

BACKEND = "sqlite"
DSN = ""
CLUSTER: Any = None  # the session's cluster while a test runs on PostgreSQL

_counter = itertools.count(1)


def available() -> bool:
    return (BIN / "initdb").exists() and shutil.which("runuser") is not None


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd="/", check=True,
                   capture_output=True, timeout=60)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@dataclass
class Cluster:
    directory: Path
    port: int
    _template: str = ""

    @property
    def socket_dir(self) -> str:
        return str(self.directory)

    def dsn(self, dbname: str = "postgres") -> str:
        """A URL over the unix socket (trusted: no password)."""
        return f"postgresql://postgres@/{dbname}?host={self.directory}&port={self.port}"

    def tcp_url(self, dbname: str = "postgres", user: str = "imm") -> str:
        """A URL over TCP (a SCRAM password is required)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as c:
            cur = c.execute(statement)  # type: ignore[call-overload]
            return cur.fetchall() if cur.description else []

    def new_database(self, prefix: str = "t", template: str = "") -> str:
        name = f"{prefix}{next(_counter)}"
        self.sql(f"CREATE DATABASE {name} OWNER imm" + (f" TEMPLATE {template}" if template else ""))
        return name

    def emptied(self) -> str:
        """The database the parametrised tests share, every table emptied and every identity
        restarted: a test starts on a fresh, migrated store (CREATE DATABASE costs 1-1.7 s here;
        TRUNCATE a few ms). Tests run one at a time, so none sees another's rows."""
        name = self.migrated_template()
        tables = [r[0] for r in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = "
                                         "'public' AND tablename != '_migrations'", name)]
        self.sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE", name)
        return name

    def migrated_template(self) -> str:
        """A database with every schema of immd applied, made once."""
        if not self._template:
            from imm.daemon.core import SCHEMAS
            from imm.store.postgres import Database

            name = self.new_database("imm_template_")
            db = Database(self.dsn(name), SCHEMAS)
            db.open()
            db.close()
            self._template = name
        return self._template

    def stop(self) -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", f"{self.directory}/data", "-m", "immediate", "-w",
                     "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def start() -> Cluster:
    d = Path(tempfile.mkdtemp(prefix="imm-pg-"))  # not under tmp_path: postgres must traverse it
    d.chmod(0o711)
    shutil.chown(d, "postgres")
    port = free_port()
    _as_postgres(str(BIN / "initdb"), "-D", f"{d}/data", "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "--no-sync", "--no-locale", "-E", "UTF8")
    _as_postgres(str(BIN / "pg_ctl"), "-D", f"{d}/data", "-l", f"{d}/log", "-w", "start", "-o",
                 f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off "
                 f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
    cluster = Cluster(d, port)
    cluster.sql(f"CREATE ROLE imm LOGIN PASSWORD '{PASSWORD}'")
    return cluster


# the state directory each PostgreSQL database of this test stands for: a test that opens a
# second world (another tmp dir) gets a database of its own, as it would get a SQLite file
_WORLDS: dict[str, Path] = {}
_SECOND: dict[str, str] = {}


def open_database(tmp: Path, schemas: Sequence[Any]) -> Any:
    """The store a parametrised test runs on: SQLite in ``tmp`` or a fresh PostgreSQL database."""
    if BACKEND == "postgresql":
        from imm.store.postgres import Database as PgDatabase

        dsn = DSN
        first = _WORLDS.setdefault(DSN, tmp)
        if first != tmp:
            key = f"{DSN}|{tmp}"
            if key not in _SECOND:
                _SECOND[key] = CLUSTER.dsn(CLUSTER.new_database("w"))
            dsn = _SECOND[key]
        return PgDatabase(dsn, schemas)
    from imm.store.sqlite import Database

    return Database(tmp / "imm.db", schemas)
