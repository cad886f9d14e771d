"""``immd``: the imm daemon.

    immd [--config FILE] [--state-dir DIR] [--socket PATH]

With no ``--config`` it runs on the embedded default (local provider, SQLite state under
``~/.local/state/imm``). Under systemd it takes the socket it is handed (``LISTEN_FDS``) and
reports readiness with ``sd_notify``. SIGTERM drains in-flight requests and exits 0; SIGHUP
re-reads the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from aiohttp import web

from .. import __version__, config
from ..errors import ConfigError, ImmError
from ..rollout.services import load_services
from . import systemd
from .app import make_app
from .auth import _admin_gid, make_peer
from .core import Daemon

log = logging.getLogger("imm.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="immd", description="The imm control-plane daemon.")
    p.add_argument("--config", help="TOML config file (default: the embedded default)")
    p.add_argument("--state-dir", help="override daemon.state_dir")
    p.add_argument("--socket", help="override daemon.socket")
    p.add_argument("--log-level", help="override daemon.log_level (debug, info, warning)")
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
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run immd until SIGTERM/SIGINT (or until ``stop`` is set, when embedded in a test)."""
    settings = config.load(args.config, state_dir=args.state_dir, socket=args.socket)
    if args.log_level:
        settings.log_level = args.log_level
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    me = make_peer(os.geteuid(), os.getegid(), os.getpid(), settings.admin_rule)
    daemon = Daemon(settings)
    await asyncio.to_thread(daemon.open, f"{me.actor} immd start")
    app = make_app(daemon)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=20)
    await runner.setup()
    handed = systemd.listen_fds()
    bound: Path | None = None
    if handed:
        for sock in handed:
            sock.setblocking(False)
            await web.SockSite(runner, sock).start()
        where = f"socket-activated fd(s) {[s.fileno() for s in handed]}"
    else:
        sock = bind_unix(settings.socket, settings.socket_mode, settings.socket_group)
        bound = settings.socket
        await web.SockSite(runner, sock).start()
        where = str(settings.socket)
    if settings.tcp:
        host, _, port = settings.tcp.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        where += f" and tcp {settings.tcp}"
    log.info("immd %s serving on %s (state %s, key %s)", __version__, where, settings.state_dir,
             daemon.keyring.keyid[:16])

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        """Re-read the config; apply all of it or, if any part is wrong, none of it."""
        systemd.reloading()
        try:
            fresh = config.load(args.config, state_dir=args.state_dir, socket=args.socket)
            services = load_services(fresh.services, set(daemon.context.providers),
                                     set(daemon.context.routers))
        except ImmError as e:
            log.error("reload refused, keeping the running config (services not changed): %s",
                      e.message)
        else:
            settings.admin_group = fresh.admin_group
            settings.owner_is_admin = fresh.owner_is_admin
            settings.audit = fresh.audit
            settings.services = fresh.services
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
    await runner.cleanup()  # stops the engine and the auditor (cleanup_ctx, see app.py)
    await asyncio.to_thread(daemon.close)
    if bound is not None:
        with contextlib.suppress(FileNotFoundError):
            bound.unlink()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(config.default_config_text())
        return 0
    setup_logging(args.log_level or "info")
    try:
        return asyncio.run(serve(args))
    except ImmError as e:
        log.error("%s", e.message)
        systemd.notify(f"STATUS=failed: {e.message}")
        return e.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
