"""A small HTTP/1.1 client over the daemon's unix socket (stdlib only: immctl starts fast)."""

from __future__ import annotations

import _socket  # not socket.py: its enums and selectors cost more than the rest of immctl
import io
import os

from ..exit_codes import EXIT_ERROR
from .fastjson import loads, quote, urlencode  # json and urllib.parse cost more than the rest

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

SYSTEM_SOCKET = "/run/imm/immd.sock"


def default_socket() -> str:
    env = os.environ.get("IMM_SOCKET")
    if env:
        return env
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return os.path.expanduser("~/.local/state/imm/immd.sock")


class Response:
    """An HTTP/1.1 response read from the socket: Content-Length or chunked bodies."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("the daemon closed the connection without an answer")
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while True:
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left: int | None = int(length) if length is not None and not self._chunked else None
        self._chunk_left = 0
        self._done = self._left == 0
        self.will_close = (self.headers.get("connection", "").lower() == "close"
                           or (not self._chunked and self._left is None))

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def read1(self, n: int = 1 << 16) -> bytes:
        """Up to ``n`` bytes of the body; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                size_line = self._rfile.readline(65537)
                if not size_line:
                    raise ConnectionError("the daemon closed the connection mid-answer")
                self._chunk_left = int(size_line.split(b";")[0].strip() or b"0", 16)
                if self._chunk_left == 0:
                    while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._done = True
                    return b""
            data = self._rfile.read(min(n, self._chunk_left))
            if not data:
                raise ConnectionError("the daemon closed the connection mid-answer")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._rfile.readline(3)  # the CRLF after each chunk
            return bytes(data)
        if self._left is None:  # until the connection closes
            data = self._rfile.read1(n)
            self._done = not data
            return bytes(data)
        data = self._rfile.read(min(n, self._left))
        if not data:
            raise ConnectionError("the daemon closed the connection mid-answer")
        self._left -= len(data)
        self._done = self._left == 0
        return bytes(data)

    def read(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            data = self.read1(1 << 20)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class _SocketReader(io.RawIOBase):
    """The read side of a socket as a raw stream under io.BufferedReader: what
    socket.makefile("rb") gives, without importing socket.py."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._sock.recv_into(b)


class UnixHTTPConnection:
    """HTTP/1.1 with keep-alive over a unix socket, in a few lines of the standard library:
    http.client would pull in email and ssl, a fifth of immctl's start-up."""

    def __init__(self, path: str, timeout: float) -> None:
        self.unix_path = path
        self.timeout = timeout
        self.sock: _socket.socket | None = None
        self._rfile: Any = None

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._rfile = io.BufferedReader(_SocketReader(sock))

    def close(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self._rfile = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "User-Agent: immctl"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def getresponse(self) -> Response:
        resp = Response(self._rfile)
        return resp

    def send_fd(self, fd: int) -> None:
        """Pass the open descriptor ``fd`` to the daemon (SCM_RIGHTS, on one byte)."""
        import array

        assert self.sock is not None
        self.sock.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                      array.array("i", [fd]).tobytes())])


class DaemonUnreachable(Exception):
    pass


class Fail(Exception):
    """A command that cannot go on: its message for the user and immctl's exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def ascii_int(text: str) -> int:
    """An integer argument in ASCII digits (int() would take '٣' for 3)."""
    import argparse

    body = text[1:] if text.startswith("-") else text
    if not body or not body.isascii() or not body.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (ASCII digits 0-9)")
    return int(text)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


def seg(value: str) -> str:
    """Quote one path segment (refs and channel names may hold '/', ':' and '@')."""
    return quote(value)


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float = 600.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None

    def unreachable(self, e: BaseException) -> DaemonUnreachable:
        """The one message for a socket immctl cannot talk through, by what went wrong."""
        if isinstance(e, FileNotFoundError):
            return DaemonUnreachable(
                f"no immd socket at {self.socket_path}; start the daemon with 'immd', or point "
                "immctl at it with --socket PATH or IMM_SOCKET")
        if isinstance(e, PermissionError):
            return DaemonUnreachable(
                f"permission denied on {self.socket_path}; ask for membership of the socket's "
                "group")
        return DaemonUnreachable(f"cannot talk to immd at {self.socket_path}: {e}")

    def open_stream(self, method: str, path: str, accept: str,
                    body: Any = None) -> tuple[UnixHTTPConnection, Any]:
        """Send one request on a connection of its own and return it with the response, whose
        body the caller reads as it arrives (an export, a backup, a watch) and then closes the
        connection. A refused request raises ApiError, its connection already closed."""
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        headers = {"Accept": accept}
        payload = None
        if body is not None:
            import json

            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            if resp.status < 400:
                return conn, resp
            raw = resp.read()
        except (ConnectionError, OSError, ValueError) as e:
            conn.close()
            raise self.unreachable(e) from None
        conn.close()
        try:
            err = loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            err = {"code": "http-error", "message": raw.decode(errors="replace")[:300]}
        raise ApiError(resp.status, err.get("code", "error"), err.get("message", ""),
                       err.get("detail"))

    def stream_lines(self, path: str) -> Iterator[Any]:
        """GET ``path`` and yield each JSON line of its (chunked) answer as it arrives, on a
        connection of its own that is closed at the end."""
        conn, resp = self.open_stream("GET", path, "application/x-ndjson")
        try:
            buf = b""
            while True:
                data = resp.read1(1 << 16)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield loads(line)
            if buf.strip():
                yield loads(buf)
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, pass_fd: int | None = None) -> Any:
        """One API call; with ``pass_fd``, the open descriptor goes along: the daemon asks
        for it with ``100 Continue`` once it has checked the request, and reads through it."""
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                path += "?" + urlencode(q)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            import json

            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if pass_fd is not None:
            headers["X-Imm-Pass-Fd"] = "1"
        try:
            if self._conn is None:
                self._conn = UnixHTTPConnection(self.socket_path, self.timeout)
            self._conn.request(method, path, body=payload, headers=headers)
            resp = self._conn.getresponse()
            if resp.status == 100 and pass_fd is not None:
                self._conn.send_fd(pass_fd)
                resp = self._conn.getresponse()
            raw = resp.read()
            if resp.will_close:
                self._conn.close()
                self._conn = None
        except (ConnectionError, OSError, ValueError) as e:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise self.unreachable(e) from None
        ctype = resp.getheader("Content-Type") or ""
        if "json" not in ctype:
            if resp.status >= 400:
                raise ApiError(resp.status, "http-error", raw.decode(errors="replace"), None)
            return raw.decode()
        data = loads(raw) if raw else None
        if resp.status >= 400:
            err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise ApiError(resp.status, err.get("code", "error"),
                           err.get("message", f"HTTP {resp.status}"), err.get("detail"))
        return data


def image_names(c: Client, digests: Any) -> dict[str, str]:
    """``name@version`` of each digest the catalog knows (one lookup per distinct digest):
    tables show names people think in, with a digest prefix beside them."""
    out: dict[str, str] = {}
    for dg in sorted({x for x in digests if x}):
        try:
            img = c.request("GET", f"/v1/images/{seg(dg)}")
        except ApiError:
            continue  # not in the catalog (a pet): the table shows the digest alone
        out[dg] = f"{img['name']}@{img['version']}"
    return out
