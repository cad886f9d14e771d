"""A small HTTP/1.1 client over the daemon's unix socket (stdlib only: immctl starts fast)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

SYSTEM_SOCKET = Path("/run/imm/immd.sock")


def default_socket() -> str:
    env = os.environ.get("IMM_SOCKET")
    if env:
        return env
    if SYSTEM_SOCKET.exists():
        return str(SYSTEM_SOCKET)
    return os.path.expanduser("~/.local/state/imm/immd.sock")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonUnreachable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


def seg(value: str) -> str:
    """Quote one path segment (refs and channel names may hold '/', ':' and '@')."""
    return quote(value, safe="")


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float = 600.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None) -> Any:
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                path += "?" + urlencode(q)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            if self._conn is None:
                self._conn = UnixHTTPConnection(self.socket_path, self.timeout)
            self._conn.request(method, path, body=payload, headers=headers)
            resp = self._conn.getresponse()
            raw = resp.read()
        except FileNotFoundError:
            raise DaemonUnreachable(
                f"no immd socket at {self.socket_path}; start the daemon with 'immd', or point "
                "immctl at it with --socket PATH or IMM_SOCKET") from None
        except PermissionError:
            raise DaemonUnreachable(
                f"permission denied on {self.socket_path}; ask for membership of the socket's "
                "group") from None
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            self._conn = None
            raise DaemonUnreachable(f"cannot talk to immd at {self.socket_path}: {e}") from None
        ctype = resp.getheader("Content-Type", "")
        if "json" not in ctype:
            if resp.status >= 400:
                raise ApiError(resp.status, "http-error", raw.decode(errors="replace"), None)
            return raw.decode()
        data = json.loads(raw) if raw else None
        if resp.status >= 400:
            err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise ApiError(resp.status, err.get("code", "error"),
                           err.get("message", f"HTTP {resp.status}"), err.get("detail"))
        return data
