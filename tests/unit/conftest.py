"""The domain's store tests run on both backends: every test of tests/unit/test_rollout_*.py and
test_audit_*.py (their worlds open their store through ``pgcluster.open_database``) runs once on
SQLite and once on an emptied, migrated database of the session's PostgreSQL cluster
(tests/pgcluster.py).
test_store_sqlite.py and test_store_base.py are SQLite's own; test_store_postgres.py and
test_daemon_state_cmd.py are PostgreSQL's."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pgcluster  # noqa: E402

BOTH = re.compile(r"test_(rollout|audit)_\w+$")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "store_backend" in metafunc.fixturenames and BOTH.match(module):
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    backend = getattr(request, "param", "sqlite")
    before = (pgcluster.BACKEND, pgcluster.DSN, pgcluster.CLUSTER)
    pgcluster.BACKEND = backend
    if backend == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        pgcluster.CLUSTER = cluster
        pgcluster.DSN = cluster.dsn(cluster.emptied())
        pgcluster._WORLDS.pop(pgcluster.DSN, None)  # the first world of this test is its own
    try:
        yield backend
    finally:
        pgcluster.BACKEND, pgcluster.DSN, pgcluster.CLUSTER = before
