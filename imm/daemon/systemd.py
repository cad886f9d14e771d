"""The two systemd protocols immd speaks, without libsystemd or any Python package for it.

``notify`` implements sd_notify(3) so ``Type=notify`` knows when immd is ready, reloading or
stopping; ``listen_fds`` implements sd_listen_fds(3) so immd serves on the socket that
``immd.socket`` holds open (clients queue on it while immd restarts instead of being refused);
``watchdog_interval`` reads ``WatchdogSec=``. Outside systemd each of them is a harmless no-op, so
the daemon calls them unconditionally. Both protocols are simple and stable, and a dependency
here would be one more thing to build on every distribution.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from imm.errors import ConfigError

__all__ = [
    "LISTEN_FDS_START",
    "listen_fds",
    "listen_fds_with_names",
    "notify",
    "reloading",
    "watchdog_interval",
]

#: The first file descriptor systemd hands over (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(*lines: str) -> bool:
    """Send ``VAR=value`` lines ("READY=1", "STATUS=...") to the service manager.

    Returns False, and never raises, when not run by systemd (no ``$NOTIFY_SOCKET``) or when the
    message could not be delivered: a daemon must not fail because its supervisor went away. The
    socket is non-blocking, so calling this from the event loop never stalls it. A newline in a
    line would start a new assignment, so newlines (from an error message in a STATUS=, say) are
    turned into spaces.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not lines or not address or not address.startswith(("/", "@")):
        # Unset, or a kind of address (vsock:) immd is never given.
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    message = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """Tell systemd a reload (SIGHUP) has begun; send "READY=1" when it is done.

    ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, which ``time.monotonic`` reads on Linux) lets systemd
    ≥ 253 match the message to the reload it asked for (``Type=notify-reload``).
    """
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The sockets systemd passed by socket activation, in order; [] when not socket-activated."""
    return [sock for _name, sock in listen_fds_with_names(unset_environment)]


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """The passed sockets with their ``FileDescriptorName=`` (``"unknown"`` when unnamed).

    The variables are meant for this process only (``LISTEN_PID``); they are removed from the
    environment by default so that processes immd starts (local instances) do not believe they
    were activated. Each descriptor is made close-on-exec for the same reason.
    """
    try:
        return _listen_fds_with_names()
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                os.environ.pop(name, None)


def _listen_fds_with_names() -> list[tuple[str, socket.socket]]:
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    if not pid or not count:
        return []
    if _parse_positive(pid, "LISTEN_PID") != os.getpid():
        return []  # inherited from a parent that was the activated one
    n = _parse_positive(count, "LISTEN_FDS", allow_zero=True)
    if n == 0:
        return []
    given = os.environ.get("LISTEN_FDNAMES")
    names = given.split(":") if given is not None else ["unknown"] * n
    if len(names) != n:
        raise ConfigError(
            f"LISTEN_FDNAMES={given!r} names {len(names)} sockets but LISTEN_FDS={n}; "
            "the socket unit or the program that started immd passed inconsistent variables"
        )
    result = []
    for index in range(n):
        fd = LISTEN_FDS_START + index
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ConfigError(
                f"LISTEN_FDS={n} but file descriptor {fd} is not an open socket ({e.strerror}); "
                "immd only takes ListenStream= sockets: remove other Listen*= lines from the "
                "socket unit"
            ) from e
        result.append((names[index], sock))
    return result


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects "WATCHDOG=1" (``WatchdogSec=``), or None when off.

    Ping at half this interval, as sd_watchdog_enabled(3) advises.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and _parse_positive(pid, "WATCHDOG_PID") != os.getpid():
        return None
    value = _parse_positive(usec, "WATCHDOG_USEC")
    return value / 1_000_000


def _parse_positive(value: str, variable: str, *, allow_zero: bool = False) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(
            f"{variable}={value!r} is not a {'non-negative' if allow_zero else 'positive'} "
            "integer; it is set by systemd or by whatever started immd in its place, so fix that"
        )
    return number
