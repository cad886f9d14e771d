"""The dashboard through aiohttp's test client over a real daemon (SQLite state, signing key,
catalog): login links, cookies, CSRF, the 404 page, the 400 on a long query, a reader refused.

The browser side (real Chromium) is tests/test_e2e_dashboard.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from rollout_world import FAST, MemPlugin, settle
from sshkeys import make_key, needs_ssh_keygen, sign

from imm import config
from imm.catalog import approvals, lifecycle, operators
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
            # scripts only from the dashboard's own static files, no inline script or style
            assert re.sub(r'<script src="/ui/static/[a-z]+\.js" defer></script>', "",
                          text).count("<script") == 0
            assert "style=" not in text
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
        # every page that takes an id or a ref: an error page naming it, never a traceback
        for path, status in [("/ui/changes/nope", 400), ("/ui/changes/c-00000000", 404),
                             ("/ui/images/nope@1", 404),
                             ("/ui/images/%00", 400), ("/ui/channels/nope/x", 404),
                             ("/ui/channels/a%2F..", 400), ("/ui/compliance?ref=nope@1", 404),
                             ("/ui/proof?index=-1", 400), ("/ui/rollouts/nope/events", 404),
                             ("/ui/compliance/export?format=xml", 400)]:
            r = await client.get(path)
            text = await r.text()
            assert r.status == status and r.content_type == "text/html", (path, text[:300])
            assert "Traceback" not in text and 'id="error"' in text, path

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


# -- actions through the engine, with in-memory peers -----------------------------------------
# The provider and router are the stateful in-memory stand-ins of the engine's unit tests
# (rollout_world.py), registered as plugins of kind "memory": what is tested here is that each
# action of the page reaches the same engine call as immctl's route, with the session's actor,
# and that a reader's action does not happen.

FLEET = """
[providers.mem]
kind = "memory"

[routers.lb]
kind = "memory"

[services.web]
targets = [{ provider = "mem", region = "r1", count = 2 }]
router = "lb"
route = "web"
strategy = "canary"
canary_steps = STEPS
canary_pause_s = PAUSE
health_timeout_s = 1
batch = "1"
"""


def run_fleet(tmp_path: Path, body: Callable[[TestClient, Logins, Daemon], Awaitable[Any]],
              steps: str = "[50]", extra: str = "", pause_s: int = 30) -> Any:
    cfg = tmp_path / "immd.toml"
    cfg.write_text(FLEET.replace("STEPS", steps).replace("PAUSE", str(pause_s)) + extra)
    settings = config.load(str(cfg), state_dir=str(tmp_path / "state"),
                           socket=str(tmp_path / "immd.sock"))
    daemon = Daemon(settings, extra_plugins=[MemPlugin()], timings=FAST)
    daemon.open("test (uid 0) setup")
    logins = Logins()

    async def go() -> Any:
        await daemon.engine.startup()
        try:
            async with TestClient(TestServer(make_dashboard(daemon, logins))) as client:
                return await body(client, logins, daemon)
        finally:
            await daemon.engine.shutdown()

    try:
        return asyncio.run(go())
    finally:
        daemon.close()


def add_image(d: Daemon, version: str, parent: str | None = None) -> str:
    row = d.db.write_sync(
        d.catalog.add_image, "test", name="app", version=version,
        content_digest="sha256:" + version.encode().hex().ljust(64, "0")[:64],
        content_kind="file", layers=[], boot_actions=[], parent=parent, labels={},
        artifacts=[("mem", "r1", f"img-{version}")])
    return str(row["digest"])


async def as_(client: TestClient, logins: Logins, who: Identity) -> str:
    """Log in as ``who`` (dropping any other session); the session's CSRF token."""
    client.session.cookie_jar.clear()
    await login(client, logins, who)
    sess = logins.session(client.session.cookie_jar.filter_cookies(
        client.make_url("/ui/"))[COOKIE].value)
    assert sess is not None
    return sess.csrf


async def post(client: TestClient, path: str, csrf: str, **fields: str) -> tuple[int, str]:
    r = await client.post(path, data={"csrf": csrf, **fields}, allow_redirects=False)
    return r.status, (r.headers.get("Location") or await r.text())


def by(status: dict[str, Any], action: str) -> list[str]:
    return [j["actor"] for j in status["journal"] if j["action"] == action]


def test_admin_actions_reach_the_engine_with_the_sessions_actor_and_readers_are_refused(
        tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, d: Daemon) -> None:
        add_image(d, "v1")
        add_image(d, "v2")
        eng = d.engine
        first = await eng.start("test (uid 0)", "web", "app@v1", None)
        await settle(eng, first["id"], ("running",))
        await eng.set_state("test (uid 0)", first["id"], "promote")
        await settle(eng, first["id"])
        rid = (await eng.start("test (uid 0)", "web", "app@v2", None))["id"]
        await wait_for_step(eng, rid, "pause")
        # a reader sees every action disabled, and with a valid token is refused anyway
        token = await as_(client, logins, READER)
        page = await (await client.get(f"/ui/rollouts/{rid}")).text()
        for verb in ("pause", "resume", "promote", "abort"):
            assert re.search(rf'id="{verb}" disabled', page), verb
            status, text = await post(client, f"/ui/rollouts/{rid}/{verb}", token)
            assert status == 403 and "may only read" in text, verb
        status, text = await post(client, "/ui/services/web/undo", token)
        assert status == 403 and "may only read" in text
        after = await eng.status(rid)
        assert after["state"] == "running" and not any(
            by(after, v) for v in ("pause", "resume", "promote", "abort"))
        assert len(await eng.list(None, 10)) == 2  # no undo rollout was started
        # the admin: pause, resume, promote, each journalled with the session's actor
        token = await as_(client, logins, ADMIN)
        page = await (await client.get(f"/ui/rollouts/{rid}")).text()
        assert re.search(r'id="pause">', page) and re.search(r'id="resume" disabled', page)
        assert await post(client, f"/ui/rollouts/{rid}/pause", token) == (
            303, f"/ui/rollouts/{rid}")
        assert (await eng.status(rid))["state"] == "paused"
        status, text = await post(client, f"/ui/rollouts/{rid}/pause", token)
        assert status == 409 and "only a running rollout can be paused" in text
        assert (await post(client, f"/ui/rollouts/{rid}/resume", token))[0] == 303
        assert (await post(client, f"/ui/rollouts/{rid}/promote", token))[0] == 303
        done = await settle(eng, rid)
        assert done["state"] == "completed"
        assert by(done, "pause") == by(done, "resume") == by(done, "promote") == [ADMIN.actor]
        status, text = await post(client, f"/ui/rollouts/{rid}/explode", token)
        assert status == 404
        # undo: back to v1, started by the admin; then aborted from its page
        status, where = await post(client, "/ui/services/web/undo", token)
        assert status == 303 and where.startswith("/ui/rollouts/")
        back = where.rsplit("/", 1)[1]
        st = await eng.status(back)
        assert st["actor"] == ADMIN.actor and st["image"] == first["image"]
        await wait_for_step(eng, back, "pause")
        assert (await post(client, f"/ui/rollouts/{back}/abort", token))[0] == 303
        gone = await settle(eng, back)
        assert gone["state"] == "rolled-back" and by(gone, "abort") == [ADMIN.actor]
        # the abort is a signed ledger record naming the admin
        leaf = [j for j in gone["journal"] if j["action"] == "abort"][0]["ledger_index"]
        envelope = (await d.db.read(d.catalog.leaf, leaf))["data"]
        record = json.loads(base64.b64decode(envelope["payload"]))
        assert (record["action"], record["actor"]) == ("abort", ADMIN.actor)

    run_fleet(tmp_path, body)


async def wait_for_step(eng: Any, rid: str, op: str) -> dict[str, Any]:
    """Wait until the rollout is running a step of ``op`` (e.g. the canary's pause)."""
    for _ in range(3000):
        st = await eng.status(rid)
        ops = {s["name"]: s["op"] for s in st["plan"]}
        if st["state"] == "running" and ops.get(st["step"] or "") == op:
            return st
        assert st["state"] not in ("completed", "rolled-back", "failed"), st
        await asyncio.sleep(0.01)
    raise AssertionError(f"rollout {rid} never reached a {op} step")


@needs_ssh_keygen
def test_an_admin_approves_the_canarys_manual_judgment_with_a_pasted_ssh_signature(
        tmp_path: Path) -> None:
    key = make_key(tmp_path, "sre-1")
    pub = Path(f"{key}.pub").read_text()
    protect = '\n[protect.web]\napprovers = ["sre-1"]\n'

    async def body(client: TestClient, logins: Logins, d: Daemon) -> None:
        await d.db.write(operators.add, d.catalog, "test (uid 0)", "sre-1", pub)
        add_image(d, "v1")
        rid = (await d.engine.start("test (uid 0)", "web", "app@v1", None))["id"]
        await wait_for_step(d.engine, rid, "approve")
        token = await as_(client, logins, READER)
        page = await (await client.get(f"/ui/rollouts/{rid}")).text()
        m = re.search(r'href="/ui/changes/([^"]+)"', page)
        assert m, page
        cid = m.group(1)
        view = await d.db.read(approvals.show, cid)
        sig = await asyncio.to_thread(sign, key, view["statement"].encode())
        change_page = await (await client.get(f"/ui/changes/{cid}")).text()
        assert 'id="approve" disabled' in change_page
        status, text = await post(client, f"/ui/changes/{cid}/approve", token, signature=sig)
        assert status == 403 and "may only read" in text
        assert (await d.db.read(approvals.show, cid))["approved_by"] == []
        token = await as_(client, logins, ADMIN)
        status, text = await post(client, f"/ui/changes/{cid}/approve", token,
                                  signature="-----BEGIN SSH SIGNATURE-----\nnope\n")
        assert status == 422 and "refused" in text, (status, text)
        assert (await d.db.read(approvals.show, cid))["approved_by"] == []
        status, where = await post(client, f"/ui/changes/{cid}/approve", token,
                                   signature=sig.replace("\n", "\r\n"))
        assert (status, where) == (303, f"/ui/changes/{cid}")
        view = await d.db.read(approvals.show, cid)
        assert view["approved_by"] == ["sre-1"] and view["approvals"]
        st = await settle(d.engine, rid, ("completed",))
        assert st["state"] == "completed"
        assert any(a["operator"] == "sre-1" for a in view["approvals"])

    run_fleet(tmp_path, body, steps='[50, "approve"]', extra=protect, pause_s=0)


async def events(resp: Any) -> Any:
    """The ``rollout`` events of a text/event-stream response, decoded, as they arrive."""
    name, data = "", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            if name == "rollout":
                yield json.loads("\n".join(data))
            name, data = "", []


def test_the_rollout_page_streams_each_step_with_one_more_chart_point(tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, d: Daemon) -> None:
        add_image(d, "v1")
        rid = (await d.engine.start("test (uid 0)", "web", "app@v1", None))["id"]
        await wait_for_step(d.engine, rid, "pause")
        await as_(client, logins, READER)
        page = await (await client.get(f"/ui/rollouts/{rid}")).text()
        assert re.search(rf'data-events="/ui/rollouts/{rid}/events\?seen=[0-9a-f]{{32}}"', page)
        assert '<script src="/ui/static/live.js" defer></script>' in page
        assert 'id="traffic"' in page and "<svg" in page  # drawn on the server: no script needed
        r = await client.get(f"/ui/rollouts/{rid}/events")
        assert r.status == 200 and r.content_type == "text/event-stream"
        seen = []
        async for ev in events(r):
            seen.append(ev)
            st = await d.engine.status(rid)
            if len(seen) == 1:
                assert ev["state"] == "running" and 'id="state">running' in ev["html"]
                await d.engine.set_state("test (uid 0)", rid, "promote")
        st = await d.engine.status(rid)
        assert st["state"] == "completed" and seen[-1]["state"] == "completed"
        done = [j for j in st["journal"] if j["action"] == "done"]
        # one point at the start and one per finished step, growing event by event
        assert seen[-1]["points"] == 1 + len(done)
        assert seen[-1]["html"].count('class="pt"') == 1 + len(done)
        points = [ev["points"] for ev in seen]
        assert points == sorted(points) and len(set(points)) > 2
        assert 'id="state">completed' in seen[-1]["html"]
        # the last point is 100 % on the new image
        assert "new image: 100%" in seen[-1]["html"]
        r = await client.get("/ui/rollouts/nope/events")
        assert r.status == 404 and "no rollout" in await r.text()

    run_fleet(tmp_path, body)


def test_the_proof_page_shows_a_leafs_inclusion_proof_under_the_signed_checkpoint(
        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def text_of(html: str, id_: str) -> str:
        m = re.search(rf'id="{id_}"[^>]*>(.*?)</', html, re.S)
        assert m, id_
        return unescape(m.group(1)).strip()

    async def body(client: TestClient, logins: Logins, d: Daemon) -> None:
        for v in ("v1", "v2", "v3"):
            add_image(d, v)
        await as_(client, logins, READER)
        html = await (await client.get("/ui/proof?index=1")).text()
        assert '<script src="/ui/static/proof.js" defer></script>' in html
        note = text_of(html, "checkpoint")
        origin, size, root_b64 = note.split("\n")[:3]
        name, khash, kb64 = text_of(html, "vkey").split("+", 2)
        pub = base64.b64decode(kb64)[1:]
        sig = base64.b64decode(note.split("\n\n", 1)[1].split(" ")[-1])
        assert sig[:4].hex() == khash and name == origin
        Ed25519PublicKey.from_public_bytes(pub).verify(sig[4:], note.split("\n\n")[0].encode()
                                                       + b"\n")
        data = base64.b64decode(text_of(html, "leaf-data"))
        leaf = hashlib.sha256(b"\0" + data).digest()
        assert leaf.hex() == text_of(html, "leaf-hash")
        path = [bytes.fromhex(h) for h in re.findall(r"<li>([0-9a-f]{64})</li>", html)]
        # RFC 9162 2.1.3.2, in Python: the page's path leads to the checkpoint's root
        fn, sn, r = 1, int(size) - 1, leaf
        for p in path:
            if fn % 2 or fn == sn:
                r = hashlib.sha256(b"\1" + p + r).digest()
                while fn % 2 == 0 and fn:
                    fn, sn = fn >> 1, sn >> 1
            else:
                r = hashlib.sha256(b"\1" + r + p).digest()
            fn, sn = fn >> 1, sn >> 1
        assert sn == 0 and base64.b64encode(r).decode() == root_b64
        # without an index: the last leaf the checkpoint covers; bad indexes: 400 and 404 pages
        html = await (await client.get("/ui/proof")).text()
        assert f'data-index="{int(size) - 1}"' in html
        r = await client.get("/ui/proof?index=abc")
        assert r.status == 400 and "not a leaf index" in await r.text()
        r = await client.get("/ui/proof?index=999999")
        assert r.status == 404 and "not covered by the signed checkpoint" in await r.text()
        for name_ in ("proof.js", "live.js"):
            r = await client.get(f"/ui/static/{name_}")
            assert r.status == 200 and r.content_type == "text/javascript"
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")

    run_fleet(tmp_path, body)


def test_fleet_catalog_and_compliance_pages_show_the_audit_and_filter_on_the_server(
        tmp_path: Path) -> None:
    async def body(client: TestClient, logins: Logins, d: Daemon) -> None:
        v1 = add_image(d, "v1")
        v2 = add_image(d, "v2", parent=v1)
        await d.db.write(d.catalog.set_channel, "test (uid 0)", "web/prod", "app@v1")
        await d.db.write(d.catalog.set_channel, "test (uid 0)", "web/prod", "app@v2")
        rid = (await d.engine.start("test (uid 0)", "web", "app@v1", None))["id"]
        await wait_for_step(d.engine, rid, "pause")
        await d.engine.set_state("test (uid 0)", rid, "promote")
        await settle(d.engine, rid)
        await d.db.write(d.catalog.revoke, "test (uid 0)", "app@v1", "CVE-2026-1", True)
        await d.auditor.run_sweep("test (uid 0)")
        await as_(client, logins, READER)

        async def get(path: str, status: int = 200) -> str:
            r = await client.get(path)
            text = await r.text()
            assert r.status == status, (path, text[:3000])
            return text

        # fleet: the last sweep's verdict per instance, open findings, server-side filters
        html = await get("/ui/fleet")
        assert html.count("<td class=\"bad\">revoked</td>") == 2 and "revoked 2" in html
        html = await get("/ui/fleet?verdict=revoked&provider=mem&region=r1&service=web")
        assert html.count("<td class=\"bad\">revoked</td>") == 2
        for q in ("verdict=ok", "region=elsewhere", "provider=nope", "service=other"):
            html = await get(f"/ui/fleet?{q}")
            assert "revoked</td>" not in html, q
        assert "Undo last rollout of web" in await get("/ui/fleet")
        assert "Undo last rollout of web" not in await get("/ui/fleet?service=other")
        assert "not one of" in await get("/ui/fleet?verdict=bogus", 400)
        assert "not a cursor" in await get("/ui/fleet?after=x", 400)
        # catalog: the revocation and its cascade, the channel's history, the image's lineage
        html = await get("/ui/catalog")
        assert "CVE-2026-1" in html and "with its ancestor" in html
        assert html.count("revoked itself") == 1
        html = await get("/ui/channels/web/prod")
        assert html.index("app@v2") < html.index("app@v1")  # newest first
        assert "does not exist" in await get("/ui/channels/nope/x", 404)
        await d.db.write(lifecycle.record, d.catalog, "test (uid 0)", "app@v2", "deprecate",
                         at=None, reason="use v3", running=[], force=False)
        html = await get(f"/ui/images/{v2}")
        assert "in the cascade of" in html and "img-v2" in html and "app@v1" in html
        assert "deprecated by test (uid 0)" in html and "use v3" in html
        assert 'id="lineage"' in html
        await get("/ui/images/app@v9", 404)
        assert "app@v2" in await get("/ui/catalog?status=revoked&name=app")
        assert "not one of" in await get("/ui/catalog?status=maybe", 400)
        # compliance: findings over time, the blast radius, the export
        html = await get("/ui/compliance")
        # both findings opened in one sweep: one point, two open
        assert 'id="findings"' in html and html.count('class="pt"') == 1
        assert "open findings: 2 at 0 h" in html
        assert re.search(r'id="blast-total">2 running instance', html)
        html = await get("/ui/compliance?ref=app@v2")
        assert re.search(r'id="blast-total">0 running instance', html)
        await get("/ui/compliance?ref=app@v9", 404)
        r = await client.get("/ui/compliance/export?format=jsonl")
        lines = (await r.text()).splitlines()
        assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
        assert len(lines) > 3 and all(json.loads(line) for line in lines)
        client.session.cookie_jar.clear()
        r = await client.get("/ui/compliance/export?format=jsonl")
        assert r.status == 401

    run_fleet(tmp_path, body)
