"""Test peers for router and rollout tests: a threaded HTTP backend and a keep-alive load client.

``Backend(name)`` answers ``/`` with its name (body and ``X-Backend`` header) and ``/healthz``
with 200, or 500 after ``set_healthy(False)``. It is a ``ThreadingHTTPServer`` with a deep accept
queue and HTTP/1.1 keep-alive, so it takes the concurrency of a load test on its own (the stdlib
default backlog of 5 drops connections at 16 clients)::

    with Backend("blue") as b, LoadClient(f"http://127.0.0.1:{port}/") as load:
        router.add("web", "blue", b.address)
        ...
        stats = load.stop()
        assert stats.failed == 0 and set(stats.by_backend) == {"blue"}
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float = 5.0,
               interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server
    timeout = 60  # an idle keep-alive connection is dropped after this

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        backend = self.server.backend
        if self.path.split("?", 1)[0] == "/healthz":
            with backend._lock:
                backend.health_hits += 1
            self._reply(200 if backend.healthy else 500, b"ok\n" if backend.healthy else b"sick\n")
            return
        with backend._lock:
            backend.hits += 1
            backend.active += 1
        try:
            if backend.delay_s:
                time.sleep(backend.delay_s)
            self._reply(200, backend.name.encode() + b"\n")
        finally:
            with backend._lock:
                backend.active -= 1

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.do_GET()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.backend.name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # peers hanging up are normal
            super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class Backend:
    """An HTTP backend on 127.0.0.1 that names itself; see the module docstring."""

    def __init__(self, name: str, *, healthy: bool = True, delay_s: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.healthy = healthy
        self.delay_s = delay_s
        self.hits = 0  # requests for anything but /healthz
        self.health_hits = 0
        self.active = 0  # requests being answered right now
        self._lock = threading.Lock()
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def start(self) -> Backend:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"backend-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and drop open connections, like a terminated instance."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        with self._server.conn_lock:
            conns = list(self._server.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, port={self.port}, healthy={self.healthy})"


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    by_backend: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few failures, for messages

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def __str__(self) -> str:
        return (f"ok={self.ok} failed={self.failed} by_backend={dict(self.by_backend)} "
                f"errors={self.errors[:5]}")


class LoadClient:
    """``concurrency`` threads, each with its own keep-alive connection, sending GETs in a loop.

    A request counts as ok on a 200; anything else (status, reset, timeout) counts as failed and
    the thread reconnects. ``by_backend`` counts which backend answered (``X-Backend``).
    ``on_answer(backend, error)``, if given, is called for every request after it is counted
    (from the client's threads), for a caller that times the answers.
    """

    def __init__(self, url: str, concurrency: int = 8, *, timeout_s: float = 5.0,
                 pause_s: float = 0.0, max_errors: int = 20,
                 on_answer: Callable[[str | None, str | None], None] | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.max_errors = max_errors
        self.on_answer = on_answer
        self._stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadClient:
        self._stop.clear()
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stats(self) -> LoadStats:
        """A snapshot of the counters so far."""
        with self._lock:
            s = self._stats
            return LoadStats(s.ok, s.failed, Counter(s.by_backend), list(s.errors))

    def reset(self) -> LoadStats:
        """Return the counters so far and start counting from zero."""
        with self._lock:
            s, self._stats = self._stats, LoadStats()
            return s

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 2)
        self._threads.clear()
        return self.stats()

    def __enter__(self) -> LoadClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, backend: str | None, error: str | None) -> None:
        with self._lock:
            if error is None:
                self._stats.ok += 1
                self._stats.by_backend[backend or "?"] += 1
            else:
                self._stats.failed += 1
                if len(self._stats.errors) < self.max_errors:
                    self._stats.errors.append(error)
        if self.on_answer is not None:
            self.on_answer(backend, error)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            c = conn or http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            conn = c
            try:
                c.request("GET", self.path)
                resp = c.getresponse()
                body = resp.read()
                if resp.status == 200:
                    self._record(resp.getheader("X-Backend") or body.decode().strip(), None)
                else:
                    self._record(None, f"HTTP {resp.status}: {body[:80]!r}")
                if resp.will_close:
                    c.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self._record(None, f"{type(e).__name__}: {e}")
                c.close()
                conn = None
            if self.pause_s:
                self._stop.wait(self.pause_s)
        if conn is not None:
            conn.close()
