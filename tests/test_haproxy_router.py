"""The haproxy router against the real haproxy binary (no mocks): embedded and external modes."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imm.context import RouterHandle
from imm.errors import BadRequest, HealthTimeout, RouterError
from imm.plugins.base import PluginContext
from imm.plugins.registry import RouterRegistry
from imm.plugins.routers.haproxy import (
    AdminSocket,
    HAProxyRouter,
    imm_register_routers,
    server_name,
)
from imm.plugins.routers.haproxy.router import embedded_socket_path

from backends import Backend, LoadClient, free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="needs the haproxy binary (apt-get install haproxy)")

FAST_CHECKS = {"health_path": "/healthz", "check_interval_ms": 200, "rise": 2, "fall": 2,
               "maxconn": 200}


def route_settings(port: int | None = None) -> dict[str, Any]:
    return {"bind": f"127.0.0.1:{port or free_port()}", **FAST_CHECKS}


def get(port: int, path: str = "/", timeout_s: float = 5) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode().strip()
    finally:
        conn.close()


def port_of(settings: dict[str, Any]) -> int:
    return int(settings["bind"].rpartition(":")[2])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def worker_pid(sock: Path) -> int:
    out = AdminSocket(sock, 5).command("show info")
    return int(next(line for line in out.splitlines() if line.startswith("Pid: "))[5:])


def kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 3
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not alive(pid):
            return


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: a unix socket path must fit in 107 bytes; pytest's tmp_path often does not.
    d = Path(tempfile.mkdtemp(prefix="imm-hx-", dir="/tmp"))
    yield d
    for pidfile in d.rglob("haproxy.pid"):  # whatever a failed test left running
        try:
            kill_group(int(pidfile.read_text()))
        except ValueError:
            pass
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_router(workdir: Path) -> Iterator[Callable[..., HAProxyRouter]]:
    made: list[HAProxyRouter] = []

    def make(name: str = "edge", **settings: Any) -> HAProxyRouter:
        if "admin_socket" not in settings:
            settings.setdefault("dir", str(workdir / name))
        settings.setdefault("supervise_interval_s", 0.2)
        settings.setdefault("stop_on_close", True)  # these tests check that close() stops it
        r = HAProxyRouter(name, settings, PluginContext(workdir, logging.getLogger(f"t.{name}")))
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def make_backend() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str, **kw: Any) -> Backend:
        b = Backend(name, **kw).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def serve(router: HAProxyRouter, route: str, backend: Backend, weight: int = 100) -> None:
    router.add(route, backend.name, backend.address)
    assert router.wait_healthy(route, backend.name, timeout_s=5)
    router.set_weights(route, {backend.name: weight})


def view(router: HAProxyRouter, route: str) -> dict[str, tuple[str, int, str, bool | None]]:
    return {b.name: (b.address, b.weight, b.state, b.healthy) for b in router.backends(route)}


# -- settings ----------------------------------------------------------------------------------


def test_bad_settings_are_refused_with_the_key_named(workdir: Path) -> None:
    ctx = PluginContext(workdir, logging.getLogger("t"))
    with pytest.raises(BadRequest, match="unknown setting.*colour"):
        HAProxyRouter("r", {"colour": "blue"}, ctx)
    # an external haproxy's socket is only connected to: the whole sun_path is usable
    with pytest.raises(BadRequest, match="longer than the 107 a unix socket allows"):
        HAProxyRouter("r", {"admin_socket": "/tmp/" + "x" * 120}, ctx)
    r = HAProxyRouter("r", {"dir": str(workdir / "r")}, ctx)
    with pytest.raises(BadRequest, match="'bind' must be"):
        r.ensure_route("web", {"health_path": "/healthz"})
    with pytest.raises(BadRequest, match="route name"):
        r.ensure_route("web site", {"bind": "127.0.0.1:1"})
    with pytest.raises(BadRequest, match="rise must be"):
        r.ensure_route("web", {"bind": "127.0.0.1:1", "rise": 0})
    registry = RouterRegistry()
    imm_register_routers(registry)
    assert registry.get("haproxy") is HAProxyRouter
    assert server_name("i-0abc123") == "i-0abc123"
    odd = server_name("web/1 blue")
    assert odd != server_name("web/1_blue") and all(c.isalnum() or c in "_.:-" for c in odd)


# -- embedded mode -----------------------------------------------------------------------------


def test_a_directory_too_deep_for_haproxys_socket_gets_it_in_a_short_private_one(
        make_router: Callable[..., HAProxyRouter], workdir: Path) -> None:
    """haproxy binds "<path>.<pid>.tmp" then renames it, so it takes socket paths of at most
    97 bytes: up to that the socket is in the router's directory; a deeper directory (a long
    state dir) gets it in a short private directory under /tmp, linked from its own, and a
    restarted immd on that directory finds the same haproxy there."""
    pad = 97 - len(str(workdir / "admin.sock")) - 1
    longest = workdir / ("d" * pad)
    assert len(str(longest / "admin.sock")) == 97
    r = make_router(dir=str(longest))
    r.start()
    assert (longest / "admin.sock").is_socket() and not (longest / "admin.sock").is_symlink()
    r.close()

    deep = workdir / ("e" * 40) / ("f" * 60)
    short = embedded_socket_path(deep)
    assert len(str(short)) <= 97 and short.parent != deep
    try:
        r = make_router(dir=str(deep), stop_on_close=False)
        r.start()
        web = route_settings()
        r.ensure_route("web", web)
        assert short.is_socket() and (deep / "admin.sock").resolve() == short
        assert stat.S_IMODE(short.parent.lstat().st_mode) == 0o700
        worker = worker_pid(short)
        again = make_router(dir=str(deep))  # immd restarted: it adopts the running haproxy
        again.start()
        assert worker_pid(short) == worker and again.backends("web") == []
        assert get(port_of(web))[0] == 503
        again.close()
    finally:
        shutil.rmtree(short.parent, ignore_errors=True)


def test_a_short_socket_directory_somebody_else_could_have_made_is_refused(
        make_router: Callable[..., HAProxyRouter], workdir: Path) -> None:
    deep = workdir / ("g" * 50) / ("h" * 50)
    short = embedded_socket_path(deep)
    short.parent.mkdir(mode=0o755)
    os.chmod(short.parent, 0o755)  # open to others, as another user's mkdir in /tmp would be
    try:
        r = make_router(dir=str(deep))
        with pytest.raises(RouterError, match=f"{short.parent} .* is not a private directory"):
            r.start()
        assert not short.exists()
    finally:
        shutil.rmtree(short.parent, ignore_errors=True)


def test_a_config_haproxy_rejects_is_refused_with_haproxys_own_words(
        make_router: Callable[..., HAProxyRouter], workdir: Path) -> None:
    # the real haproxy, given one more config file holding a directive it does not know
    extra = workdir / "extra.cfg"
    extra.write_text("global\n    no-such-directive 1\n")
    wrapper = workdir / "haproxy-plus"
    wrapper.write_text(f'#!/bin/sh\nexec haproxy "$@" -f {extra}\n')
    wrapper.chmod(0o755)
    r = make_router(binary=str(wrapper))
    with pytest.raises(RouterError, match="haproxy rejects the generated config .*no-such-directive"):
        r.start()
    # a rollout's later call says why the router is down, not only that it is
    r.ensure_route("web", route_settings())  # declared; it is created once haproxy runs
    with pytest.raises(RouterError, match="not started, because haproxy rejects .*no-such-directive"):
        r.add("web", "i-1", "127.0.0.1:9")


def test_embedded_start_route_and_stop(make_router: Callable[..., HAProxyRouter],
                                       workdir: Path) -> None:
    r = make_router()
    r.start()
    r.start()  # idempotent
    sock = workdir / "edge" / "admin.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    master = int((workdir / "edge" / "haproxy.pid").read_text())
    assert alive(master)

    web = route_settings()
    r.ensure_route("web", web)
    cfg = (workdir / "edge" / "haproxy.cfg").read_text()
    for line in ("frontend fe_web", f"bind {web['bind']}", "balance roundrobin",
                 "option httpchk GET /healthz", "http-check expect status 200",
                 "option redispatch", "retries 3", "load-server-state-from-file global",
                 "level admin expose-fd listeners"):
        assert line in cfg
    assert r.backends("web") == []
    assert get(port_of(web))[0] == 503  # no server yet

    worker = worker_pid(sock)
    r.ensure_route("web", web)  # same settings: no reload
    assert worker_pid(sock) == worker
    with pytest.raises(RouterError, match="route 'api' is not declared"):
        r.backends("api")
    with socket.socket() as busy:  # a port somebody else holds: refused before any reload
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bind = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(RouterError, match=f"route api: cannot bind {bind}"):
            r.ensure_route("api", {"bind": bind})
    with pytest.raises(BadRequest, match="already used by route 'web'"):
        r.ensure_route("api", {"bind": web["bind"]})
    assert worker_pid(sock) == worker and get(port_of(web))[0] == 503

    r.close()
    r.close()
    wait_until(lambda: not alive(master), 5)
    with pytest.raises(OSError):
        get(port_of(web))


def test_new_server_takes_no_traffic_until_healthy_and_weighted(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    web = route_settings()
    r.ensure_route("web", web)
    blue = make_backend("blue")
    serve(r, "web", blue)

    with LoadClient(f"http://127.0.0.1:{port_of(web)}/", concurrency=8) as load:
        wait_until(lambda: blue.hits > 20)
        green = make_backend("green")
        r.add("web", "green", green.address)
        address, weight, state, healthy = view(r, "web")["green"]
        assert (address, weight, state) == (green.address, 0, "ready")
        assert healthy in (None, True)  # None until its first check completes
        wait_until(lambda: green.health_hits >= 3)  # checked several times by now...
        assert green.hits == 0  # ...and still no traffic at weight 0
        assert r.wait_healthy("web", "green", timeout_s=5)
        assert green.hits == 0

        r.set_weights("web", {"green": 100})
        wait_until(lambda: green.hits > 20)

        r.drain("web", "blue")
        assert view(r, "web")["blue"][2] == "drain"
        time.sleep(0.1)  # requests already routed to blue finish
        drained_at = blue.hits
        time.sleep(0.5)
        assert blue.hits == drained_at

        r.remove("web", "blue")
        assert list(view(r, "web")) == ["green"]
        r.remove("web", "blue")  # absent is not an error
        stats = load.stop()
    assert stats.failed == 0, stats
    assert stats.by_backend["blue"] > 0 and stats.by_backend["green"] > 0


def test_remove_waits_for_sessions_then_cuts_at_drain_timeout(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router(drain_timeout_s=0.6)
    r.start()
    web = route_settings()
    r.ensure_route("web", web)

    def slow_request(into: list[Any]) -> threading.Thread:
        def run() -> None:
            try:
                into.append(get(port_of(web), timeout_s=60))
            except OSError as e:
                into.append(e)
        t = threading.Thread(target=run)
        t.start()
        return t

    slow = make_backend("slow", delay_s=0.4)
    serve(r, "web", slow)
    result: list[Any] = []
    t = slow_request(result)
    wait_until(lambda: r.backends("web")[0].sessions == 1)
    r.remove("web", "slow")  # waits for the session in flight: no drain timeout, no error
    t.join(5)
    assert result == [(200, "slow")]
    assert r.backends("web") == []

    stuck = make_backend("stuck", delay_s=30)
    serve(r, "web", stuck)
    result.clear()
    t = slow_request(result)
    wait_until(lambda: r.backends("web")[0].sessions == 1)
    started = time.monotonic()
    with pytest.raises(RouterError, match=r"server stuck: 'del server web/stuck' refused.*"
                                          r"1 session\(s\) left.*in maint.*call remove again"):
        r.remove("web", "stuck")  # haproxy 2.6 cannot cut a request waiting on its server
    assert time.monotonic() - started >= 0.6  # it gave the session the whole drain timeout
    assert view(r, "web")["stuck"][2] == "maint"  # no new traffic meanwhile
    stuck.close()  # the instance is terminated: its connections close
    t.join(5)
    assert result and result[0] != (200, "stuck")
    r.remove("web", "stuck")
    assert r.backends("web") == []


def test_blue_green_switch_under_load_loses_no_request(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    web = route_settings()
    r.ensure_route("web", web)
    blues = [make_backend("blue-1"), make_backend("blue-2")]
    for b in blues:
        serve(r, "web", b)

    with LoadClient(f"http://127.0.0.1:{port_of(web)}/", concurrency=12) as load:
        wait_until(lambda: all(b.hits > 10 for b in blues))
        greens = [make_backend("green-1"), make_backend("green-2")]
        for g in greens:
            r.add("web", g.name, g.address)
        for g in greens:
            assert r.wait_healthy("web", g.name, timeout_s=5)
        r.set_weights("web", {"green-1": 100, "green-2": 100, "blue-1": 0, "blue-2": 0})
        for b in blues:
            r.remove("web", b.name)
            b.close()  # the instance is terminated
        during = load.reset()
        wait_until(lambda: load.stats().ok > 200)
        after = load.stop()
    assert sorted(view(r, "web")) == ["green-1", "green-2"]
    assert during.failed == 0 and after.failed == 0, (during, after)
    assert set(during.by_backend) == {"blue-1", "blue-2", "green-1", "green-2"}
    assert set(after.by_backend) == {"green-1", "green-2"}


def test_reload_keeps_dynamic_servers_weights_states_and_health(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend],
        workdir: Path) -> None:
    r = make_router()
    r.start()
    web = route_settings()
    r.ensure_route("web", web)
    a, b, c = make_backend("a"), make_backend("b"), make_backend("c")
    sick = make_backend("sick", healthy=False)
    serve(r, "web", a, 100)
    r.add("web", "web/b 1", b.address)  # a name haproxy cannot take as is
    assert r.wait_healthy("web", "web/b 1")
    r.set_weights("web", {"web/b 1": 30})
    serve(r, "web", c, 50)
    r.drain("web", "c")
    r.add("web", "sick", sick.address)
    wait_until(lambda: view(r, "web")["sick"][3] is False)
    before = view(r, "web")
    assert before == {
        "a": (a.address, 100, "ready", True), "web/b 1": (b.address, 30, "ready", True),
        "c": (c.address, 50, "drain", True), "sick": (sick.address, 0, "ready", False)}

    sock = workdir / "edge" / "admin.sock"
    old_worker = worker_pid(sock)
    with LoadClient(f"http://127.0.0.1:{port_of(web)}/", concurrency=8) as load:
        wait_until(lambda: load.stats().ok > 50)
        api = route_settings()
        r.ensure_route("api", api)  # a new route: config rewritten, haproxy reloaded
        assert worker_pid(sock) != old_worker
        assert view(r, "web") == before
        assert r.backends("api") == []
        assert get(port_of(api))[0] == 503
        load.reset()
        wait_until(lambda: load.stats().ok > 200)
        stats = load.stop()
    assert stats.failed == 0, stats
    assert set(stats.by_backend) == {"a", "b"}  # not the drained c, not the sick one
    assert 1.5 < stats.by_backend["a"] / stats.by_backend["b"] < 6  # weights 100:30

    r.remove("web", "web/b 1")  # servers written into the config can be removed too
    assert sorted(view(r, "web")) == ["a", "c", "sick"]


def test_failing_health_check_keeps_server_out(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    web = route_settings()
    r.ensure_route("web", web)
    good = make_backend("good")
    serve(r, "web", good)
    sick = make_backend("sick", healthy=False)
    with LoadClient(f"http://127.0.0.1:{port_of(web)}/", concurrency=4) as load:
        r.add("web", "sick", sick.address)
        wait_until(lambda: r.health("web")["sick"] is False)
        wait_until(lambda: sick.health_hits >= 4)
        assert r.health("web") == {"good": True, "sick": False}
        assert not r.wait_healthy("web", "sick", timeout_s=0.3)
        with pytest.raises(RouterError, match=r"sick \(healthy=False\).*/healthz"):
            r.set_weights("web", {"sick": 100})
        assert view(r, "web")["sick"][1] == 0
        assert sick.hits == 0

        sick.set_healthy(True)  # it recovers: now it may take traffic
        assert r.wait_healthy("web", "sick", timeout_s=5)
        r.set_weights("web", {"sick": 100})
        wait_until(lambda: sick.hits > 10)
        stats = load.stop()
    assert stats.failed == 0, stats


def test_restarts_haproxy_that_died_with_its_servers(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend],
        workdir: Path) -> None:
    r = make_router()
    r.start()
    web = route_settings()
    r.ensure_route("web", web)
    a = make_backend("a")
    serve(r, "web", a, 42)
    pidfile = workdir / "edge" / "haproxy.pid"
    master = int(pidfile.read_text())
    os.killpg(master, signal.SIGKILL)

    def restarted() -> bool:
        try:
            return int(pidfile.read_text()) != master and get(port_of(web)) == (200, "a")
        except (OSError, ValueError):
            return False

    wait_until(restarted, 10)
    assert view(r, "web") == {"a": (a.address, 42, "ready", True)}


def test_adopts_haproxy_left_running_by_a_previous_immd(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend],
        workdir: Path) -> None:
    a = make_backend("a")
    web = route_settings()
    d = workdir / "edge"
    # The first immd: starts haproxy, adds a server, and dies without closing anything.
    script = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from imm.plugins.base import PluginContext
        from imm.plugins.routers.haproxy import HAProxyRouter
        r = HAProxyRouter("edge", {{"dir": {str(d)!r}}},
                          PluginContext(Path({str(workdir)!r}), logging.getLogger("first")))
        r.start()
        r.ensure_route("web", {web!r})
        r.add("web", "a", {a.address!r})
        assert r.wait_healthy("web", "a", 5)
        r.set_weights("web", {{"a": 7}})
        sys.stdout.flush()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30,
                   cwd=Path(__file__).resolve().parent.parent)
    master = int((d / "haproxy.pid").read_text())
    assert alive(master)
    assert get(port_of(web)) == (200, "a")  # traffic never stopped

    r = make_router(stop_on_close=False)
    r.start()
    assert int((d / "haproxy.pid").read_text()) == master  # adopted, not a second haproxy
    worker = worker_pid(d / "admin.sock")
    r.ensure_route("web", web)  # what the new immd does at start: nothing to change
    assert worker_pid(d / "admin.sock") == worker
    assert view(r, "web") == {"a": (a.address, 7, "ready", True)}
    r.close()  # stop_on_close=False: haproxy keeps serving
    assert alive(master) and get(port_of(web)) == (200, "a")

    # The next immd comes up with a changed setting: it adopts, then reloads to apply it.
    r = make_router(timeouts={"client": "31s"})
    r.start()
    assert int((d / "haproxy.pid").read_text()) == master
    assert worker_pid(d / "admin.sock") != worker
    assert "timeout client 31s" in (d / "haproxy.cfg").read_text()
    assert view(r, "web") == {"a": (a.address, 7, "ready", True)}
    r.close()
    wait_until(lambda: not alive(master), 5)


# -- external mode -----------------------------------------------------------------------------


@pytest.fixture
def external_haproxy(workdir: Path, make_backend: Callable[..., Backend]
                     ) -> Iterator[dict[str, Any]]:
    static = make_backend("static1")
    port = free_port()
    sock, op_sock = workdir / "ext.sock", workdir / "ext-op.sock"
    cfg = workdir / "ext.cfg"
    cfg.write_text(textwrap.dedent(f"""
        global
            stats socket {sock} mode 600 level admin
            stats socket {op_sock} mode 600 level operator
        defaults
            mode http
            option redispatch
            retries 3
            timeout connect 2s
            timeout client 10s
            timeout server 10s
        frontend fe_app
            bind 127.0.0.1:{port}
            default_backend app
        backend app
            balance roundrobin
            option httpchk GET /healthz
            http-check expect status 200
            server static1 {static.address} check inter 200 rise 1 fall 2
    """))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: sock.exists() and get(port)[0] == 200, 5)
        yield {"socket": sock, "operator_socket": op_sock, "port": port, "static": static}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_external_mode_drives_an_existing_haproxy(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend],
        external_haproxy: dict[str, Any]) -> None:
    r = make_router("ext", admin_socket=str(external_haproxy["socket"]))
    r.start()
    r.ensure_route("app", {"check_interval_ms": 200, "rise": 2, "fall": 2})
    static = external_haproxy["static"]
    assert view(r, "app") == {"static1": (static.address, 1, "ready", True)}
    with pytest.raises(RouterError, match=r"no backend 'nope'.*haproxy\.cfg.*'backend nope'"):
        r.ensure_route("nope", {})

    dyn = make_backend("dyn")
    serve(r, "app", dyn, 1)
    r.remove("app", "static1")  # a server from the operator's config can be retired too
    assert sorted(view(r, "app")) == ["dyn"]
    assert get(external_haproxy["port"]) == (200, "dyn")
    r.close()


def test_external_mode_errors_name_the_socket_and_the_fix(
        make_router: Callable[..., HAProxyRouter], external_haproxy: dict[str, Any],
        workdir: Path) -> None:
    missing = workdir / "nowhere.sock"
    with pytest.raises(RouterError) as e:
        make_router("bad", admin_socket=str(missing)).start()
    assert str(missing) in e.value.message and "stats socket" in e.value.message
    assert "show cli level" in e.value.message

    with pytest.raises(RouterError, match="level 'operator'.*'level admin'"):
        make_router("op", admin_socket=str(external_haproxy["operator_socket"])).start()


# -- wait_health: the router watches the servers' check state on its admin socket ----------------


def test_wait_health_returns_once_the_check_passes(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    r.ensure_route("web", route_settings())
    b = make_backend("late", healthy=False)
    r.add("web", "late", b.address)
    wait_until(lambda: r.health("web")["late"] is False)  # its checks fail for now
    handle = RouterHandle(r)

    async def main() -> dict[str, bool | None]:
        waiting = asyncio.ensure_future(handle.wait_health("web", ["late"], 30))
        hits = b.health_hits
        # the wait has watched more failing checks
        await asyncio.to_thread(wait_until, lambda: b.health_hits >= hits + 2)
        assert not waiting.done(), "a failing server is not healthy"
        b.set_healthy(True)
        return await waiting

    assert asyncio.run(main()) == {"late": True}
    handle.close()


def test_wait_health_times_out_naming_the_route_and_each_backend(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    r.ensure_route("web", route_settings())
    good, sick = make_backend("good"), make_backend("sick", healthy=False)
    r.add("web", "good", good.address)
    r.add("web", "sick", sick.address)
    wait_until(lambda: r.health("web") == {"good": True, "sick": False})
    with pytest.raises(HealthTimeout) as e:
        r.wait_health("web", ["good", "sick", "gone"], 0.3)
    assert e.value.message.startswith(
        "router edge, route web: 2 of 3 backend(s) did not pass the health check within 0.3s: "
        "gone (not in the route), sick (failing its check);"), e.value.message
    assert e.value.detail["unhealthy"] == ["gone", "sick"]
    assert isinstance(e.value, RouterError) and e.value.status == 504
    with pytest.raises(RouterError, match="no backend 'nope'|nope"):
        r.wait_health("nope", ["good"], 0.3)


def test_wait_health_is_cut_short_by_the_callers_wake_up(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend]) -> None:
    r = make_router()
    r.start()
    r.ensure_route("web", route_settings())
    sick = make_backend("sick", healthy=False)
    r.add("web", "sick", sick.address)
    wait_until(lambda: r.health("web")["sick"] is False)
    handle = RouterHandle(r)

    async def main() -> dict[str, bool | None]:
        wake = asyncio.Event()
        # a health timeout far beyond the test's: only the wake-up can end this wait in time
        waiting = asyncio.ensure_future(handle.wait_health("web", ["sick"], 3600, wake))
        hits = sick.health_hits
        await asyncio.to_thread(wait_until, lambda: sick.health_hits >= hits + 1)
        assert not waiting.done()
        wake.set()  # what a pause or an abort does to a rollout's wait
        async with asyncio.timeout(30):
            return await waiting

    assert asyncio.run(main()) == {"sick": False}
    handle.close()


def test_a_new_server_is_first_checked_after_the_down_interval(
        make_router: Callable[..., HAProxyRouter], make_backend: Callable[..., Backend],
        workdir: Path) -> None:
    # haproxy adds a server down and checks a down server every 'downinter': with an hourly
    # check interval, only the down interval can bring the new server up within the test
    r = make_router()
    r.start()
    r.ensure_route("web", {**route_settings(), "check_interval_ms": 3_600_000,
                           "down_interval_ms": 20, "rise": 1})
    b = make_backend("new")
    r.add("web", "new", b.address)
    assert r.wait_health("web", ["new"], 30) == {"new": True}
    r.ensure_route("other", route_settings())  # a reload writes the live servers out
    cfg = (workdir / "edge" / "haproxy.cfg").read_text()
    assert "server new 127.0.0.1:" in cfg and "check inter 3600000 downinter 20 rise 1" in cfg
    assert r.health("web") == {"new": True}
    with pytest.raises(BadRequest, match="down_interval_ms"):
        r.ensure_route("bad", {**route_settings(), "down_interval_ms": 0})
