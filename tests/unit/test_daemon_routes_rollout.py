"""GET /v1/rollouts/{id}/watch, the stream ``immctl rollout watch`` and ``--wait`` read: a
journal entry written while the stream reads the status it follows still wakes it at once.

The route runs in aiohttp's test server over a real engine (the in-memory provider and router of
rollout_world); the one thing forced is the order: the entry is journalled while the route's
first ``status`` read is under way, which a live rollout does only by chance."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rollout_world import SERVICE, World, run

from imm.daemon import routes_rollout
from imm.daemon.routes import DAEMON
from imm.rollout.states import PAUSED


class Holder:
    """What the route reads of the daemon: its engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine


def test_an_entry_written_while_the_status_is_read_wakes_the_stream(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(routes_rollout, "WATCH_EVERY_S", 3600.0)  # no timer to fall back on
    w = World(tmp_path, {"web": {**SERVICE, "strategy": "canary", "canary_pause_s": 30}})
    w.old_fleet(w.image("1"))
    w.image("2")

    async def body() -> list[dict[str, Any]]:
        rid = (await w.engine.start("alice", "web", "app@2"))["id"]
        await w.engine.set_state("bob", rid, "pause")
        status = w.engine.status
        reads = []

        async def status_meanwhile(r: str) -> dict[str, Any]:
            got = await status(r)
            reads.append(got["state"])
            if len(reads) == 1:  # the stream's first read: an entry is journalled under it,
                # and (the rollout being paused) nothing after it
                await w.engine.journal.record(rid, "note", "note", {"text": "meanwhile"},
                                              actor="bob")
            return got

        w.engine.status = status_meanwhile  # type: ignore[method-assign]
        app = web.Application()
        app[DAEMON] = Holder(w.engine)  # type: ignore[assignment]
        app.router.add_get("/v1/rollouts/{id}/watch", routes_rollout.rollouts_watch)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get(f"/v1/rollouts/{rid}/watch")
            lines = []
            async with asyncio.timeout(30):  # without the fix the stream waits the full hour
                async for raw in resp.content:
                    lines.append(json.loads(raw))
                    if len(lines) == 2:
                        break
            return lines

    lines = run(w, body)
    assert [line["state"] for line in lines] == [PAUSED, PAUSED]
    assert lines[1]["journal"][-1]["detail"] == {"text": "meanwhile"}, \
        "the entry written during the first read was sent"
