"""``immd``: the imm daemon.

    immd [--config FILE] [--state-dir DIR] [--socket PATH]
    immd state migrate --to postgresql://USER@HOST/DB [--password-env VAR] [--state-dir DIR]

With no ``--config`` it runs on the embedded default (local provider, SQLite state under
``~/.local/state/imm``). Under systemd it takes the socket it is handed (``LISTEN_FDS``) and
reports readiness with ``sd_notify``. SIGTERM drains in-flight requests and exits 0; SIGHUP
re-reads the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import grp
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .. import __version__, config
from ..catalog import approvals
from ..errors import ConfigError, ImmError
from ..rollout.services import load_services
from . import systemd
from .app import DASHBOARD, DASHBOARD_LISTEN, make_app
from .auth import _admin_gid, make_peer
from .core import Daemon

log = logging.getLogger("imm.daemon")

# The accept queue of every listening socket. immd accepts connections itself (see Admission):
# aiohttp's sites would call listen() again with their default of 128, and a burst of a few
# hundred clients would overflow the queue and be refused (EAGAIN on a unix socket, which
# asyncio clients report as a reset). The kernel caps it at net.core.somaxconn.
BACKLOG = 4096
# File descriptors kept for immd's own work (database connections of its worker threads, log
# files, haproxy sockets, instances' pipes, cloud connections) when client connections are
# counted against the open-file limit.
FD_RESERVE = 128
# Connections being told 503 at once; past this, immd stops accepting for a moment and the
# clients wait in the accept queue.
BUSY_SLOTS = 32


class _Counted(asyncio.Protocol):
    """Forwards every event to aiohttp's protocol and holds a slot while the connection lasts."""

    __slots__ = ("_gate", "_inner")

    def __init__(self, gate: Admission, inner: asyncio.Protocol) -> None:
        self._gate, self._inner = gate, inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.release(busy=False)
        self._inner.connection_lost(exc)


class _Busy(asyncio.Protocol):
    """Answers one request with 503 and a JSON body saying why, then hangs up. It reads the
    request head first: closing a socket with unread input resets the connection, and the
    client would see a reset instead of the answer."""

    def __init__(self, gate: Admission) -> None:
        self._gate = gate
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(2, self._answer)

    def data_received(self, data: bytes) -> None:
        self._head = (self._head + data)[-4096:]
        if b"\r\n\r\n" in self._head or b"\n\n" in self._head:
            self._answer()

    def eof_received(self) -> bool | None:
        self._answer()
        return None

    def _answer(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        body = self._gate.busy_body
        self._transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._gate.release(busy=True)


class Admission:
    """Accepts the connections of every listening socket and hands them to aiohttp while fewer
    than ``limit`` are open. Past the limit a connection is answered 503 with a body that says
    why; past ``BUSY_SLOTS`` such answers at once, immd stops accepting until a slot frees and
    the clients wait in the accept queue. Either way the open-file limit is never reached, and
    immd keeps the descriptors its own work needs: a request that could not open the database
    would end in a 500."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self._factory = factory
        self.limit = limit
        self.open = 0
        self.busy = 0
        self.refused = 0
        self._freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._socks: list[socket.socket] = []
        self.busy_body = json.dumps({"error": {
            "code": "busy", "detail": {"limit": limit},
            "message": f"immd is serving {limit} connections, its limit (the open-file limit "
                       f"less {FD_RESERVE}); retry in a moment, or raise LimitNOFILE= in its "
                       "service unit"}}).encode()

    def release(self, busy: bool) -> None:
        if busy:
            self.busy -= 1
        else:
            self.open -= 1
        self._freed.set()

    def serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._socks.append(sock)
        self._tasks.append(asyncio.create_task(self._accept(sock)))

    async def close(self) -> None:
        """Stop accepting; the open connections are aiohttp's to finish."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._socks:
            sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.open >= self.limit and self.busy >= BUSY_SLOTS:
                self._freed.clear()
                await self._freed.wait()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("not accepting connections for a second: %s (%d client "
                            "connections open)", e.strerror, self.open + self.busy)
                await asyncio.sleep(1)
                continue
            conn.setblocking(False)
            proto: asyncio.Protocol
            if self.open < self.limit:
                self.open += 1
                proto = _Counted(self, self._factory())
            else:
                self.busy += 1
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("%d client connections open, the limit: answering 503 to new "
                                "ones (%d so far)", self.open, self.refused)
                proto = _Busy(self)
            try:
                await loop.connect_accepted_socket(lambda p=proto: p, conn)  # type: ignore[misc]
            except OSError:
                conn.close()
                self.release(busy=isinstance(proto, _Busy))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="immd", description="The imm control-plane daemon.")
    p.add_argument("--config", help="TOML config file (default: the embedded default)")
    p.add_argument("--state-dir", help="override daemon.state_dir")
    p.add_argument("--socket", help="override daemon.socket")
    p.add_argument("--log-level", help="override daemon.log_level (debug, info, warning)")
    p.add_argument("--stop-fleet", action="store_true",
                   help="when immd stops, stop the embedded haproxy and every local instance "
                        "too (a sandbox); by default they keep serving while immd is down")
    p.add_argument("--print-default-config", action="store_true",
                   help="print the embedded default config and exit")
    p.add_argument("--version", action="version", version=f"immd {__version__}")
    return p.parse_args(argv)


class _BadRequestLine(logging.Filter):
    """aiohttp logs a malformed HTTP request (already answered 400) with a traceback; one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in ("BadHttpMessage", "BadStatusLine",
                                                       "InvalidHeader", "LineTooLong"):
            record.msg, record.args = "rejected a malformed HTTP request: %s", (exc,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_BadRequestLine())


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one: each client connection holds a file
    descriptor, and the usual soft limit of 1024 is below a burst of a thousand readers. Returns
    the limit in force (the service unit's ``LimitNOFILE=`` sets the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft


def bind_unix(path: Path, mode: int, group: str) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a daemon that is gone
        else:
            raise ConfigError(f"another immd is already listening on {path}; stop it or pass "
                              "another --socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never world-accessible, not even for an instant
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"daemon.tcp {host}:{port}: cannot listen there ({e.strerror}); "
                          "pick a free loopback port") from None
    sock.listen(BACKLOG)
    return sock


def settle_heap() -> None:
    """Start-up is over: what it built (modules, plugins, settings, the daemon's objects) lives
    as long as immd, so the cyclic garbage collector stops scanning it again on every full
    collection (``gc.freeze``). Full collections, which a sweep holding its chunks of listed
    instances sets off several times, then cost what is new, not the whole heap. Objects
    frozen here are still freed when their last reference goes; only a reference cycle among
    them would outlive its use."""
    gc.collect()
    gc.freeze()


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None, *,
                settle: bool = False) -> int:
    """Run immd until SIGTERM/SIGINT (or until ``stop`` is set, when embedded in a test).
    ``settle``: freeze the start-up heap (:func:`settle_heap`), as the immd command does; a
    test that starts and stops many daemons in one process does not."""
    settings = config.load(args.config, state_dir=args.state_dir, socket=args.socket)
    if args.log_level:
        settings.log_level = args.log_level
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    files = raise_fd_limit()
    me = make_peer(os.geteuid(), os.getegid(), os.getpid(), settings.admin_rule)
    daemon = Daemon(settings)
    await asyncio.to_thread(daemon.open, f"{me.actor} immd start")
    if settle:
        settle_heap()
    app = make_app(daemon)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=20)
    await runner.setup()
    assert runner.server is not None
    gate = Admission(runner.server, max(1, files - FD_RESERVE - BUSY_SLOTS))
    handed = systemd.listen_fds()
    bound: Path | None = None
    if handed:
        for sock in handed:
            gate.serve(sock)
        where = f"socket-activated fd(s) {[s.fileno() for s in handed]}"
    else:
        gate.serve(bind_unix(settings.socket, settings.socket_mode, settings.socket_group))
        bound = settings.socket
        where = str(settings.socket)
    if settings.tcp:
        host, _, port = settings.tcp.rpartition(":")
        gate.serve(bind_tcp(host.strip("[]"), int(port)))
        where += f" and tcp {settings.tcp}"
    dash_runner: web.AppRunner | None = None
    if DASHBOARD_LISTEN in app:
        dhost, dport = app[DASHBOARD_LISTEN]
        dash_runner = web.AppRunner(app[DASHBOARD], handle_signals=False, access_log=None,
                                    shutdown_timeout=5)
        await dash_runner.setup()
        try:
            await web.TCPSite(dash_runner, dhost, dport).start()
        except OSError as e:
            await dash_runner.cleanup()
            await runner.cleanup()
            await asyncio.to_thread(daemon.close)
            raise ConfigError(f"dashboard.listen {dhost}:{dport}: cannot listen ({e.strerror}); "
                              "pick a free port") from None
        where += f" and dashboard http://{dhost}:{dport}/ui/"
    log.info("immd %s serving on %s (state %s, key %s, up to %d connections)", __version__,
             where, settings.state_dir, daemon.keyring.keyid[:16], gate.limit)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        """Re-read the config; apply all of it or, if any part is wrong, none of it."""
        systemd.reloading()
        try:
            fresh = config.load(args.config, state_dir=args.state_dir, socket=args.socket)
            services = load_services(fresh.services, set(daemon.context.providers),
                                     set(daemon.context.routers), daemon.context.plugins.analysis,
                                     fresh.analysis)
            approvals.parse_protect(fresh.raw.get("protect"), fresh.source)
        except ImmError as e:
            log.error("reload refused, keeping the running config (services not changed): %s",
                      e.message)
        else:
            settings.admin_group = fresh.admin_group
            settings.owner_is_admin = fresh.owner_is_admin
            settings.audit = fresh.audit
            settings.services = fresh.services
            # [protect] reloads (checked above); [trust] (keys, witnesses) needs a restart
            settings.raw = {**settings.raw, "protect": fresh.raw.get("protect", {})}
            daemon.engine.services = services
            _admin_gid.cache_clear()
            settings.log_level = args.log_level or fresh.log_level
            logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(),
                                                 logging.INFO))
            log.info("reloaded %s (providers and routers change on restart)", fresh.source)
        systemd.notify("READY=1", "STATUS=serving")

    if threading.current_thread() is threading.main_thread():
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
    systemd.notify("READY=1", f"STATUS=serving on {where}", f"MAINPID={os.getpid()}")
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    systemd.notify("STOPPING=1", "STATUS=stopping")
    if dash_runner is not None:
        await dash_runner.cleanup()
    await gate.close()  # no new connections; runner.cleanup() finishes the open ones
    await runner.cleanup()  # stops the engine and the auditor (cleanup_ctx, see app.py)
    if args.stop_fleet:
        await asyncio.to_thread(stop_fleet, daemon)
    await asyncio.to_thread(daemon.close)
    if bound is not None:
        with contextlib.suppress(FileNotFoundError):
            bound.unlink()
    log.info("stopped")
    return 0


def stop_fleet(daemon: Daemon) -> None:
    """immd --stop-fleet: terminate every instance of the local providers and stop what the
    routers supervise (the embedded haproxy). Cloud instances are never touched."""
    for name, handle in daemon.context.providers.items():
        if handle.kind != "local":
            continue
        provider = handle.plugin
        try:
            ids = [i.id for i in provider.list_instances(None)]
            provider.terminate(ids)
        except ImmError as e:
            log.error("--stop-fleet: provider %s: %s", name, e.message)
            continue
        log.info("--stop-fleet: terminated %d instance(s) of provider %s", len(ids), name)
    for name, rhandle in daemon.context.routers.items():
        try:
            rhandle.plugin.stop()
        except ImmError as e:
            log.error("--stop-fleet: router %s: %s", name, e.message)
        else:
            log.info("--stop-fleet: stopped router %s", name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["state"]:  # immd state migrate --to postgresql://...
        from . import state_cmd

        setup_logging("info")
        return state_cmd.main(argv[1:])
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(config.default_config_text())
        return 0
    setup_logging(args.log_level or "info")
    try:
        return asyncio.run(serve(args, settle=True))
    except ImmError as e:
        log.error("%s", e.message)
        systemd.notify(f"STATUS=failed: {e.message}")
        return e.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
