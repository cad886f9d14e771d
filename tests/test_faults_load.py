"""A thousand readers at once, through the real socket.

Before the fix, aiohttp's site called ``listen()`` again with its default backlog of 128: of
1000 clients connecting at once, several hundred were refused (EAGAIN on a unix socket, which
asyncio clients report as a reset) and immd logged nothing. The clients here run as ``nobody``,
a reader that reaches the socket through its group only, with the system python (stdlib only).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import IMMD, SYSTEM_PYTHON, Immd, wait_for_socket

NOBODY = 65534
CLIENTS = 1000

# Runs as nobody. Mode "hold": open every connection first (all at once), say "connected", wait
# for a line on stdin, then send one request on each, all at once, and read every answer while
# all the connections are still open. Mode "burst": connect, ask, read, close, all at once.
CLIENT = r"""
import asyncio, collections, json, sys
sock, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
REQ = b"GET /v1/status HTTP/1.1\r\nHost: imm\r\n\r\n"

async def ask(r, w):
    w.write(REQ)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await r.readexactly(length)
    if status != "200":
        return status + " " + body[:1000].decode(errors="replace")
    return status if json.loads(body)["peer"]["uid"] == 65534 else "not me"

async def connect():
    try:
        return await asyncio.wait_for(asyncio.open_unix_connection(sock), 60)
    except Exception as e:
        return type(e).__name__ + ": " + str(e)

async def exchange(conn):
    if isinstance(conn, str):
        return "connect " + conn
    try:
        return await asyncio.wait_for(ask(*conn), 90)
    except Exception as e:
        return type(e).__name__ + ": " + str(e)

async def burst_one(go):
    await go.wait()
    conn = await connect()
    out = await exchange(conn)
    if not isinstance(conn, str):
        conn[1].close()
    return out

async def main():
    if mode == "hold":
        conns = await asyncio.gather(*(connect() for _ in range(n)))
        print(json.dumps({"connected": sum(not isinstance(c, str) for c in conns)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        answers = await asyncio.gather(*(exchange(c) for c in conns))
        for c in conns:
            if not isinstance(c, str):
                c[1].close()
    else:
        go = asyncio.Event()
        tasks = [asyncio.create_task(burst_one(go)) for _ in range(n)]
        await asyncio.sleep(0.2)
        go.set()
        answers = await asyncio.gather(*tasks)
    print(json.dumps(collections.Counter(answers)), flush=True)

asyncio.run(main())
"""


@pytest.fixture
def client_script() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="imm-load-"))
    os.chmod(d, 0o755)
    script = d / "client.py"
    script.write_text(CLIENT)
    os.chmod(script, 0o644)
    yield script
    script.unlink()
    d.rmdir()


class LimitedImmd(Immd):
    """An immd started under a hard open-file limit (like ``LimitNOFILE=`` in its unit)."""

    def __init__(self, root: Path, config: str, nofile: int) -> None:
        super().__init__(root, config)
        self.nofile = nofile

    def start(self, extra_env: dict[str, str] | None = None) -> Immd:
        args = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", IMMD,
                "--state-dir", str(self.state), "--socket", str(self.sock)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._logf, stderr=subprocess.STDOUT)
        wait_for_socket(self.sock, self.proc)
        return self


def shared(tmp_path: Path, nofile: int | None = None) -> tuple[Immd, Path]:
    """An immd whose socket 'nobody' reaches through the socket's group only (a reader)."""
    rundir = Path(tempfile.mkdtemp(prefix="imm-sock-"))
    os.chmod(rundir, 0o755)
    cfg = '[daemon]\nsocket_group = "nogroup"\nadmin_group = "imm-admin-test-absent"\n'
    d = Immd(tmp_path, cfg) if nofile is None else LimitedImmd(tmp_path, cfg, nofile)
    d.sock = rundir / "immd.sock"
    return d.start(), rundir


def clients(script: Path, sock: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SYSTEM_PYTHON, str(script), str(sock), str(CLIENTS), mode], user=NOBODY,
        group=NOBODY, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd="/")


def test_a_thousand_readers_at_once_are_all_answered(tmp_path: Path,
                                                     client_script: Path) -> None:
    d, rundir = shared(tmp_path)
    try:
        proc = clients(client_script, d.sock, "hold")
        try:
            assert proc.stdout is not None and proc.stdin is not None
            first = proc.stdout.readline()
            assert json.loads(first or "{}").get("connected") == CLIENTS, \
                (first, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
            # every connection is open: immctl still gets its answers, as admin and as reader
            assert d.json("status")["peer"]["admin"] is True
            assert d.json("status", user=NOBODY, group=NOBODY)["peer"]["admin"] is False
            # now all of them ask at once, while immctl keeps asking too
            answered: list[int] = []
            stop = threading.Event()

            def poll_status() -> None:
                while not stop.is_set():
                    answered.append(d.run("status", "--json", check=False).returncode)

            poller = threading.Thread(target=poll_status)
            poller.start()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=240)
            stop.set()
            poller.join()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        counts = json.loads(out.strip().splitlines()[-1])
        assert counts == {"200": CLIENTS}, (counts, err[-2000:])
        assert answered and set(answered) == {0}, answered
        assert d.json("status")["peer"]["admin"] is True
    finally:
        d.stop()
        rundir.rmdir()


def test_past_the_connection_limit_the_answer_is_a_clear_503(tmp_path: Path,
                                                             client_script: Path) -> None:
    """Under an open-file limit far below the burst, immd serves as many connections as its
    limit (the open-file limit less a reserve for its own work) and answers the others 503 with
    a body that says why: never a reset, never a 500 from a request that could not open the
    database, no traceback."""
    d, rundir = shared(tmp_path, nofile=400)
    try:
        proc = clients(client_script, d.sock, "burst")
        try:
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        counts = json.loads(out.strip().splitlines()[-1])
        busy = {k: v for k, v in counts.items() if k.startswith("503 ")}
        assert counts.get("200", 0) + sum(busy.values()) == CLIENTS, (counts, err[-2000:])
        assert counts.get("200", 0) >= 240, counts  # the limit: 400 less 128 kept for immd, 32 for 503s
        for answer in busy:
            error = json.loads(answer[4:])["error"]
            assert error["code"] == "busy" and "retry" in error["message"], error
            assert error["detail"] == {"limit": 240}
        # the burst is over: immctl is answered as usual
        assert d.json("status")["peer"]["admin"] is True
    finally:
        d.stop()
        rundir.rmdir()
    log = d.log.read_text()
    assert "up to 240 connections" in log
    assert "Traceback" not in log
