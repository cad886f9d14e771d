"""imm's sample app: a tiny stdlib-only HTTP/1.1 server baked into local images v1 to v4.

It listens on 127.0.0.1:$PORT (keep-alive, threaded, a deep accept backlog so a load balancer's
bursts are not dropped) and answers:

- ``GET /``        -> ``{"version": <VERSION file>, "instance": $IMM_INSTANCE_ID}``
- ``GET /healthz`` -> 200 ``ok``; 500 ``broken`` when the image holds a ``BROKEN`` file (v3);
  no answer at all (the connection is accepted and left hanging) when it holds ``HANG`` (v5)
- ``GET /metrics`` -> Prometheus text: ``app_requests_total{path="/",status="200"}``, the
  requests to ``/`` by status (health checks and scrapes are not counted)

An image holding an ``ERROR_RATE`` file (v4: ``0.1``) passes its health check but answers that
share of ``GET /`` with 500, spread evenly: only a metric analysis notices it.

Two settings slow it down, to test what happens in the middle of starting and stopping (give
them to instances with the service's ``launch = { env = { ... } }``):

- ``APP_START_DELAY_S``: seconds between the process starting and the port listening
- ``APP_DRAIN_S``: on SIGTERM, seconds it keeps answering (``Connection: close``) before it stops

Each start appends one line to ``$IMM_DATA_DIR/starts.log``: the data volume outlives instances,
so the file shows the persistent layer surviving replacements. SIGTERM shuts it down cleanly.
The image directory is read-only at run time; the app writes only to its data volume.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "VERSION").read_text(encoding="utf-8").strip()
BROKEN = (HERE / "BROKEN").exists()
HANG = (HERE / "HANG").exists()
INSTANCE = os.environ.get("IMM_INSTANCE_ID", "")
_RATE_FILE = HERE / "ERROR_RATE"
ERROR_RATE = float(_RATE_FILE.read_text(encoding="utf-8")) if _RATE_FILE.exists() else 0.0


class Counters:
    """Requests to / by status, and the error injection of ERROR_RATE."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = 0
        self.by_status: dict[int, int] = {200: 0, 500: 0}

    def next_status(self) -> int:
        with self.lock:
            self.seen += 1
            n = self.seen
            failing = int(n * ERROR_RATE) != int((n - 1) * ERROR_RATE)
            status = 500 if failing else 200
            self.by_status[status] = self.by_status.get(status, 0) + 1
        return status

    def text(self) -> bytes:
        with self.lock:
            items = sorted(self.by_status.items())
        lines = ["# HELP app_requests_total Requests to / by status.",
                 "# TYPE app_requests_total counter"]
        lines += [f'app_requests_total{{path="/",status="{s}"}} {n}' for s, n in items]
        return ("\n".join(lines) + "\n").encode()


COUNTERS = Counters()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = "imm-example/" + VERSION
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 60  # close idle keep-alive connections eventually

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            status, ctype = COUNTERS.next_status(), "application/json"
            body = json.dumps({"version": VERSION, "instance": INSTANCE,
                               **({"error": "injected"} if status == 500 else {})}).encode() + b"\n"
        elif path == "/metrics":
            status, ctype = 200, "text/plain; version=0.0.4"
            body = COUNTERS.text()
        elif path == "/healthz" and HANG:
            # never answers; the thread ends when the checker gives up and hangs up
            try:
                while self.rfile.read(1):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        elif path == "/healthz":
            status, ctype = (500, "text/plain") if BROKEN else (200, "text/plain")
            body = b"broken\n" if BROKEN else b"ok\n"
        else:
            status, ctype, body = 404, "text/plain", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if getattr(self.server, "draining", False):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("APP_ACCESS_LOG"):
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True
    allow_reuse_address = True
    draining = False


def seconds(name: str) -> float:
    raw = os.environ.get(name, "0") or "0"
    try:
        value = float(raw)
    except ValueError:
        print(f"app: {name}={raw!r} is not a number of seconds", file=sys.stderr)
        raise SystemExit(2) from None
    if not 0 <= value <= 3600:
        print(f"app: {name}={raw!r} must be between 0 and 3600 seconds", file=sys.stderr)
        raise SystemExit(2)
    return value


def record_start(port: int) -> None:
    data_dir = os.environ.get("IMM_DATA_DIR")
    if not data_dir:
        return
    line = (f"{int(time.time())} instance={INSTANCE} version={VERSION} port={port} "
            f"pid={os.getpid()}\n")
    with open(Path(data_dir) / "starts.log", "a", encoding="utf-8") as f:
        f.write(line)


def main() -> int:
    try:
        port = int(os.environ["PORT"])
    except (KeyError, ValueError):
        print("app: set PORT to the TCP port to listen on", file=sys.stderr)
        return 2
    start_delay, drain = seconds("APP_START_DELAY_S"), seconds("APP_DRAIN_S")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    if start_delay:
        print(f"app {VERSION} instance={INSTANCE} starting: listening in {start_delay:g}s",
              flush=True)
        if stopping.wait(start_delay):
            return 0
    server = Server(("127.0.0.1", port), Handler)

    def stop() -> None:
        stopping.wait()
        if drain:
            # keep answering, each answer closing its connection, then stop
            server.draining = True
            print(f"app {VERSION} instance={INSTANCE} draining for {drain:g}s", flush=True)
            time.sleep(drain)
        server.shutdown()  # waits for serve_forever() to return: called from this thread

    threading.Thread(target=stop, daemon=True).start()
    record_start(port)
    print(f"app {VERSION} instance={INSTANCE} listening on 127.0.0.1:{port}"
          f"{' (BROKEN: /healthz answers 500)' if BROKEN else ''}"
          f"{' (HANG: /healthz never answers)' if HANG else ''}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print(f"app {VERSION} instance={INSTANCE} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
