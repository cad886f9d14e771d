"""The rollout store: entries in order, each signed into the ledger, state and finish time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollout_world import World

from imm.catalog.verify import verify_ledger
from imm.errors import Conflict, NotFound
from imm.rollout.journal import active_rollout, rollout_exists


def test_entries_are_numbered_signed_and_move_the_state(tmp_path: Path) -> None:
    w = World(tmp_path)
    j = w.engine.journal

    async def main() -> dict:
        await j.create("web-1", "web", "blue-green", "sha256:new", None, {"plan": []}, "alice",
                       {"image": "sha256:new"})
        await j.record("web-1", "0-launch", "begin", {"tokens": ["t"]})
        await j.record("web-1", "complete", "complete", {}, state="completed")
        return await j.load("web-1")

    r = asyncio.run(main())
    assert [(e["seq"], e["step"], e["action"]) for e in r["journal"]] == [
        (1, "start", "start"), (2, "0-launch", "begin"), (3, "complete", "complete")]
    assert r["journal"][1]["detail"] == {"tokens": ["t"]}
    assert r["state"] == "completed" and r["finished_at"] and r["step"] == "complete"
    idx = [e["ledger_index"] for e in r["journal"]]
    assert idx == sorted(idx) and len(set(idx)) == 3
    report = w.db.write_sync(verify_ledger, w.keyring, "imm.test/ledger")
    assert report["ok"] is True, report
    w.close()


def test_one_active_rollout_and_the_lookups_audit_uses(tmp_path: Path) -> None:
    w = World(tmp_path)
    j = w.engine.journal

    async def main() -> None:
        await j.create("web-1", "web", "canary", "sha256:a", None, {}, "alice", {})
        with pytest.raises(Conflict, match="rollout web-1 of service web is running"):
            await j.create("web-2", "web", "canary", "sha256:b", None, {}, "bob", {})
        await j.create("api-1", "api", "canary", "sha256:b", None, {}, "bob", {})
        await j.record("web-1", "abort", "abort", {}, state="rolling-back")
        assert await w.db.read(active_rollout, "web") == {"id": "web-1", "state": "rolling-back"}
        await j.record("web-1", "rollback", "done", {}, state="rolled-back")
        assert await w.db.read(active_rollout, "web") is None
        assert await w.db.read(rollout_exists, "web-1") is True
        assert await w.db.read(rollout_exists, "web-9") is False
        assert sorted(r["id"] for r in await j.active()) == ["api-1"]
        with pytest.raises(NotFound, match="no rollout 'web-9'"):
            await j.record("web-9", "x", "x", {})

    asyncio.run(main())
    w.close()
