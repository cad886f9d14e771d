"""GET /v1/rollouts/{id}/watch, the stream ``immctl rollout watch`` and ``--wait`` read: a
journal entry written while the stream reads the status it follows still wakes it at once.

The route runs in aiohttp's test server; the engine under it is a scripted stand-in with the
two calls the route makes (``status``, ``changed``), so the order of those calls can be forced:
the entry lands while ``status`` is being read, which a real engine does only by chance."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from imm.daemon import routes_rollout
from imm.daemon.routes import DAEMON


class ScriptedEngine:
    """A rollout that gets one journal entry while its first status is being read."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        self.reads = 0

    async def changed(self, rid: str, timeout_s: float) -> bool:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            self.waiters.remove(fut)

    def entry(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)

    async def status(self, rid: str) -> dict[str, Any]:
        self.reads += 1
        if self.reads == 1:
            state = {"id": rid, "state": "running", "step": "0-launch"}
            self.entry()  # the next step is journalled while this status is read
            return state
        return {"id": rid, "state": "completed", "step": "complete"}


class Holder:
    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine


def test_an_entry_written_while_the_status_is_read_wakes_the_stream(monkeypatch: Any) -> None:
    monkeypatch.setattr(routes_rollout, "WATCH_EVERY_S", 3600.0)  # no timer to fall back on
    engine = ScriptedEngine()

    async def main() -> list[dict[str, Any]]:
        app = web.Application()
        app[DAEMON] = Holder(engine)  # type: ignore[assignment]
        app.router.add_get("/v1/rollouts/{id}/watch", routes_rollout.rollouts_watch)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/v1/rollouts/r1/watch")
            lines = []
            async with asyncio.timeout(30):  # without the fix the stream waits the full hour
                async for raw in resp.content:
                    lines.append(json.loads(raw))
            return lines

    lines = asyncio.run(main())
    assert [line["state"] for line in lines] == ["running", "completed"]
