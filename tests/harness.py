"""Shared fixtures: a real immd in a temp dir, driven through the real immctl.

The daemon harness itself is bench/daemon.py, shared with the benchmarks; this file adds the
test bookkeeping (every immd a test starts is stopped, its processes reaped and its log checked
for tracebacks).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import daemon  # noqa: E402
from daemon import (  # noqa: E402,F401 - re-exported for the tests
    BIN,
    IMMCTL,
    IMMD,
    REPO,
    SYSTEM_PYTHON,
    processes_under,
    reader_copy,
    reap_under,
    wait_for_socket,
)

_ALL: list[Immd] = []


class Immd(daemon.Immd):
    """bench/daemon.py's immd, remembered so the test's teardown stops and checks it."""

    def __init__(self, root: Path, config: str | None = None) -> None:
        super().__init__(root, config)
        _ALL.append(self)


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    yield
    problems = []
    while _ALL:
        d = _ALL.pop()
        d.stop()
        d.reap()
        log = d.log.read_bytes() if d.log.exists() else b""
        # a traceback in immd's log is a bug whatever the test did: errors reach operators as
        # one-line messages; a logging error is a broken log call
        for marker in (b"Traceback (most recent call last)", b"--- Logging error ---"):
            if marker in log:
                at = log.index(marker)
                problems.append(f"{d.log}: {log[max(0, at - 300):at + 1500].decode(errors='replace')}")
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def immd(tmp_path: Path) -> Iterator[Immd]:
    d = Immd(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def make_immd(tmp_path: Path) -> Iterator[Any]:
    made: list[Immd] = []

    def make(config: str | None = None, name: str = "d") -> Immd:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        d = Immd(root, config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL 15 cluster for the whole run (tests/pgcluster.py)."""
    import pgcluster

    if not pgcluster.available():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql)")
    cluster = pgcluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """A moto_server on a free loopback port for the module: the AWS peer of the tests."""
    import urllib.request

    exe = shutil.which("moto_server") or str(BIN / "moto_server")
    if not Path(exe).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=1)  # moto can take seconds to exit on SIGTERM; it keeps no state
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def rows_after_a_cancelled_write(db: Any, insert: str, select: str) -> list[dict[str, Any]]:
    """Cancel ``db.write`` of ``insert`` while it runs in the store's writer thread; what
    ``select`` reads the moment the cancellation has returned (a store whose cancelled write
    still lands later reads nothing here)."""
    import asyncio
    import threading

    from imm.store import query

    entered, release = threading.Event(), threading.Event()

    def slow_insert(conn: Any) -> None:
        entered.set()
        release.wait(10)
        conn.execute(insert)

    async def body() -> list[dict[str, Any]]:
        task = asyncio.create_task(db.write(slow_insert))
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        asyncio.get_running_loop().call_later(0.2, release.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(await db.read(lambda c: query(c, select)))

    try:
        return asyncio.run(body())
    finally:
        release.set()
