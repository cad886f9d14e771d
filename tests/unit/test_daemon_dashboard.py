"""The dashboard through aiohttp's test client over a real daemon (SQLite state, signing key,
catalog): login links, cookies, CSRF, the 404 page, the 400 on a long query, a reader refused.

The browser side (real Chromium) is tests/test_e2e_dashboard.py.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from imm import config
from imm.daemon.core import Daemon
from imm.daemon.dashboard import listen_address
from imm.daemon.dashboard.sessions import Identity, Logins
from imm.daemon.dashboard.web import COOKIE, make_dashboard
from imm.errors import ConfigError

ADMIN = Identity(actor="alice (uid 1000)", user="alice", admin=True)
READER = Identity(actor="bob (uid 1001)", user="bob", admin=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(tmp_path: Path, body: Callable[[TestClient, Logins, Clock, Daemon], Awaitable[Any]]) -> Any:
    settings = config.load(None, state_dir=str(tmp_path / "state"),
                           socket=str(tmp_path / "immd.sock"))
    daemon = Daemon(settings)
    daemon.open("test (uid 0) setup")
    clock = Clock()
    logins = Logins(clock=clock)

    async def go() -> Any:
        async with TestClient(TestServer(make_dashboard(daemon, logins))) as client:
            return await body(client, logins, clock, daemon)

    try:
        return asyncio.run(go())
    finally:
        daemon.close()


async def login(client: TestClient, logins: Logins, who: Identity) -> str:
    token = logins.mint(who)
    r = await client.get(f"/ui/login?t={token}", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ui/fleet"
    cookie = r.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and int(cookie["max-age"]) > 0
    return token


def test_a_link_works_once_and_expires(tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, clock: Clock, _d: Daemon) -> None:
        token = await login(client, logins, READER)
        client.session.cookie_jar.clear()
        again = await client.get(f"/ui/login?t={token}", allow_redirects=False)
        assert again.status == 403 and "already used or expired" in await again.text()
        assert COOKIE not in again.cookies
        late = logins.mint(READER)
        clock.now += logins.link_ttl + 1
        r = await client.get(f"/ui/login?t={late}", allow_redirects=False)
        assert r.status == 403
        r = await client.get("/ui/fleet", allow_redirects=False)
        assert r.status == 401 and "immctl dashboard" in await r.text()

    run(tmp_path, body)


def test_no_cookie_no_page_and_every_response_has_a_strict_csp(tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, clock: Clock, d: Daemon) -> None:
        for path in ("/ui/fleet", "/ui/rollouts", "/ui/catalog", "/ui/proof", "/ui/rollouts/x"):
            r = await client.get(path, allow_redirects=False)
            assert r.status == 401, path
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
        disk = tmp_path / "disk.raw"
        disk.write_bytes(b"x" * 4096)
        spec = {"name": "web", "version": "v1", "layers": [],
                "boot_actions": [], "parent": None, "labels": {}}
        await d.add_image("test (uid 0)", str(disk), spec, fd=os.open(disk, os.O_RDONLY))
        await login(client, logins, READER)
        for path in ("/ui/fleet", "/ui/rollouts", "/ui/catalog", "/ui/proof"):
            r = await client.get(path)
            text = await r.text()
            assert r.status == 200, (path, text[:500])
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert "<script" not in text and "style=" not in text
            assert "reader" in text
        assert "web@v1" in await (await client.get("/ui/catalog")).text()
        # the session expires
        clock.now += logins.session_ttl + 1
        assert (await client.get("/ui/fleet", allow_redirects=False)).status == 401

    run(tmp_path, body)


def test_unknown_ids_get_a_404_page_and_a_long_query_a_400(tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, clock: Clock, _d: Daemon) -> None:
        await login(client, logins, ADMIN)
        r = await client.get("/ui/rollouts/no-such-rollout")
        text = await r.text()
        assert r.status == 404 and "no rollout &#39;no-such-rollout&#39;" in text
        assert "Traceback" not in text and r.content_type == "text/html"
        r = await client.get("/ui/nothing-here")
        assert r.status == 404 and "there is no page at /ui/nothing-here" in await r.text()
        r = await client.get("/ui/fleet?q=" + "a" * 5000)
        assert r.status == 400 and "at most 1024" in await r.text()

    run(tmp_path, body)


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def test_actions_need_the_session_csrf_token_and_an_admin(tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, clock: Clock, d: Daemon) -> None:
        # a rollout that has really been started needs a service; the refusal comes first, so a
        # journal without rows proves nothing was aborted
        await login(client, logins, READER)
        page = await (await client.get("/ui/rollouts/r1")).text()  # 404 page has no form
        assert "csrf" not in page
        # a reader: right token, still refused; the disabled button is only a hint
        sess = logins.session(client.session.cookie_jar.filter_cookies(
            client.make_url("/ui/"))[COOKIE].value)
        assert sess is not None
        r = await client.post("/ui/rollouts/r1/abort", data={"csrf": sess.csrf},
                              allow_redirects=False)
        assert r.status == 403 and "may only read" in await r.text()
        # an admin with no token or another session's token: refused before anything happens
        client.session.cookie_jar.clear()
        await login(client, logins, ADMIN)
        for data in ({}, {"csrf": sess.csrf}, {"csrf": ""}):
            r = await client.post("/ui/rollouts/r1/abort", data=data, allow_redirects=False)
            assert r.status == 403 and "CSRF" in await r.text(), data
        # with its own token the admin reaches the engine, which names the unknown rollout
        mine = logins.session(client.session.cookie_jar.filter_cookies(
            client.make_url("/ui/"))[COOKIE].value)
        assert mine is not None
        r = await client.post("/ui/rollouts/r1/abort", data={"csrf": mine.csrf},
                              allow_redirects=False)
        assert r.status == 404 and "no rollout &#39;r1&#39;" in await r.text()
        assert await d.engine.list(None, 10) == []

    run(tmp_path, body)


@pytest.mark.parametrize("value,msg", [
    ("0.0.0.0:8780", "must be a loopback host:port"),
    ("127.0.0.1:x", "must be a loopback host:port"),
    ("127.0.0.1:70000", "must be a loopback host:port"),
    (8780, "must be a string"),
])
def test_listen_must_be_a_loopback_address(value: Any, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        listen_address({"dashboard": {"listen": value}}, "immd.toml")
    assert listen_address({}, "x") is None
    assert listen_address({"dashboard": {"listen": "127.0.0.1:8780"}}, "x") == ("127.0.0.1", 8780)
    with pytest.raises(ConfigError, match="unknown key"):
        listen_address({"dashboard": {"port": 1}}, "x")


def test_links_come_only_from_the_unix_socket_and_only_when_the_dashboard_is_on(
        tmp_path: Path) -> None:
    from imm.daemon.app import make_app

    async def go(raw_dashboard: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        settings = config.load(None, state_dir=str(tmp_path / "state"),
                               socket=str(tmp_path / "immd.sock"))
        if raw_dashboard is not None:
            settings.raw["dashboard"] = raw_dashboard
        daemon = Daemon(settings)
        await asyncio.to_thread(daemon.open, "test (uid 0) setup")
        try:
            # aiohttp's test server is TCP on loopback: with a bearer token the API knows the
            # caller, and the link route still refuses, because only the unix socket is where
            # immctl asks
            assert daemon.tokens is not None
            token, _ = daemon.tokens.create(0, "root", True, "read", 600)
            async with TestClient(TestServer(make_app(daemon))) as client:
                r = await client.get("/v1/dashboard/link",
                                     headers={"Authorization": f"Bearer {token}"})
                return r.status, await r.json()
        finally:
            daemon.close()

    status, body = asyncio.run(go(None))
    assert status == 409 and "the dashboard is off" in body["error"]["message"]
    status, body = asyncio.run(go({"listen": "127.0.0.1:8780"}))
    assert status == 403 and "only over the unix socket" in body["error"]["message"]
