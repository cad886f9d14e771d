"""A real immd on a temporary state dir, and the real immctl pointed at it (for benchmarks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


class Immd:
    def __init__(self, root: Path, pyc_cache: bool = True) -> None:
        """``pyc_cache``: give immd and immctl a bytecode cache in ``root`` (an installed copy
        has its .pyc files; a PYTHONDONTWRITEBYTECODE shell would recompile on every run)."""
        bindir = Path(sys.executable).parent
        self.immd = str(bindir / "immd") if (bindir / "immd").exists() else shutil.which("immd")
        self.immctl = (str(bindir / "immctl") if (bindir / "immctl").exists()
                       else shutil.which("immctl"))
        self.root = root
        self.sock = root / "immd.sock"
        self.state = root / "state"
        self.env = {**os.environ, "IMM_SOCKET": str(self.sock)}
        if pyc_cache:
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        self.proc: subprocess.Popen[bytes] | None = None

    def available(self) -> bool:
        return bool(self.immd and self.immctl)

    def start(self, timeout_s: float = 60) -> Immd:
        if not self.available():
            raise SystemExit("immd/immctl not found next to this python or on PATH")
        self.logf = open(self.root / "immd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(self.immd), "--state-dir", str(self.state), "--socket", str(self.sock)],
            stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"immd exited with {self.proc.returncode}; see {self.logf.name}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.sock))
                return self
            time.sleep(0.05)
        raise TimeoutError(f"immd did not listen on {self.sock}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.logf.close()

    def cpu(self) -> float:
        """immd's user+system CPU seconds so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.state / 'imm.db'}?mode=ro", uri=True)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
