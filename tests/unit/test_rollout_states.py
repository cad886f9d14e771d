"""The rollout vocabulary is defined once and everything that spells it agrees."""

from __future__ import annotations

from pathlib import Path

from imm.daemon import routes_rollout
from imm.rollout import states
from imm.rollout.services import STRATEGIES
from imm.store.sqlite import Database


def test_active_and_terminal_partition_the_states() -> None:
    assert set(states.ACTIVE).isdisjoint(states.TERMINAL)
    assert states.RUNNING in states.ACTIVE and states.ROLLED_BACK in states.TERMINAL


def test_the_one_active_rollout_index_covers_exactly_the_active_states(tmp_path: Path) -> None:
    from imm.daemon.core import SCHEMAS

    db = Database(tmp_path / "x.db", SCHEMAS)
    db.open()
    sql = db.write_sync(lambda c: c.execute(
        "SELECT sql FROM sqlite_master WHERE name='rollouts_one_active'").fetchone()[0])
    db.close()
    spelled = sql[sql.index("IN (") + 4:sql.rindex(")")]
    assert [s.strip().strip("'") for s in spelled.split(",")] == list(states.ACTIVE)


def test_services_and_the_api_use_the_same_strategies_and_verbs() -> None:
    assert STRATEGIES is states.STRATEGIES
    by_path = {(r.method, r.path): r for r in routes_rollout.ROUTES}
    start = by_path[("POST", "/v1/rollouts")]
    assert start.body is not None
    assert start.body["properties"]["strategy"]["enum"] == list(states.STRATEGIES)
    verb = by_path[("POST", "/v1/rollouts/{id}/{verb}")]
    assert verb.query["verb"]["schema"]["enum"] == list(states.VERBS)
