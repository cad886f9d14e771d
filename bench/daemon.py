"""A real immd on a temporary state dir, and the real immctl pointed at it.

The one daemon harness of the tests (tests/conftest.py builds its fixtures on it) and the
benchmarks. It imports nothing of imm: it runs the installed ``immd`` and ``immctl`` next to
this Python (or on PATH), as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
TICK = os.sysconf("SC_CLK_TCK")


def _exe(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or str(BIN / name))


IMMD = _exe("immd")
IMMCTL = _exe("immctl")


def wait_for_socket(path: Path, proc: Any, timeout: float = 20) -> None:
    """Until something accepts on the unix socket ``path``; ``proc`` (anything with poll())
    must not exit meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"immd exited with {proc.returncode}")
        if path.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        time.sleep(0.05)
    raise TimeoutError(f"immd did not listen on {path}")


_READER_COPY: Path | None = None


def reader_copy() -> Path:
    """immctl's stdlib-only modules copied where any user can read them (the checkout may sit
    under a directory other users cannot enter, such as /root)."""
    global _READER_COPY
    if _READER_COPY is None:
        root = Path(tempfile.mkdtemp(prefix="immctl-reader-"))
        for rel in ("imm/__init__.py", "imm/errors.py", "imm/exit_codes.py", "imm/cli",
                    "imm/rollout/__init__.py",
                    "imm/rollout/states.py"):
            src = REPO / rel
            if src.is_dir():
                shutil.copytree(src, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, root / rel)
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        _READER_COPY = root
    return _READER_COPY


def processes_under(root: Path) -> list[int]:
    """Pids whose working directory or command line lies under ``root`` (instances, haproxy)."""
    prefix = str(root.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(prefix) or prefix in cmd:
            found.append(int(entry.name))
    return found


def reap_under(root: Path) -> None:
    """SIGKILL every process working under ``root`` until none is left (haproxy's master may
    be mid-reload, so look more than once)."""
    for _ in range(10):
        pids = processes_under(root)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


class Immd:
    """One immd process (state in ``root``) and immctl calls against it.

    ``config``: the text of an immd.toml to start it with. ``pyc_cache``: give immd and immctl
    a bytecode cache in ``root`` (an installed copy has its .pyc files; a
    PYTHONDONTWRITEBYTECODE shell would recompile on every run: benchmarks want the former).
    """

    def __init__(self, root: Path, config: str | None = None, *, pyc_cache: bool = False) -> None:
        self.immd = IMMD
        self.immctl = IMMCTL
        self.root = root
        self.state = root / "state"
        self.sock = root / "run" / "immd.sock"
        self.log = root / "immd.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = root / "immd.toml"
            self.config_path.write_text(config)
        self.base_env = dict(os.environ)
        if pyc_cache:
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        self.proc: subprocess.Popen[bytes] | None = None
        self._logf: Any = None

    def available(self) -> bool:
        return Path(self.immd).exists() and Path(self.immctl).exists()

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 60,
              args: tuple[str, ...] = ()) -> Immd:
        """Start immd; ``args`` are extra immd options (e.g. ``("--stop-fleet",)``)."""
        if not self.available():
            raise SystemExit("immd/immctl not found next to this python or on PATH")
        argv = [self.immd, "--state-dir", str(self.state), "--socket", str(self.sock), *args]
        if self.config_path:
            argv += ["--config", str(self.config_path)]
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**self.env, **(extra_env or {})})
        wait_for_socket(self.sock, self.proc, timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal immd and wait for it (killing it after ``timeout``); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self._logf is not None:  # a subclass may start immd its own way, without one
            self._logf.close()
            self._logf = None
        return rc

    def reap(self) -> None:
        """Kill what this immd left running on purpose (instances, haproxy)."""
        reap_under(self.root)

    # -- immctl ---------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment immctl runs in (IMM_SOCKET pointing at this immd's socket, which a
        caller may move before ``start``)."""
        return {**self.base_env, "IMM_SOCKET": str(self.sock)}

    def run(self, *args: str, check: bool = True, user: int | None = None,
            group: int | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``immctl ARGS``; as another ``user``, the stdlib-only immctl runs from a copy of the
        source any user can read, under the system python3."""
        kw: dict[str, Any] = {}
        cmd = [self.immctl, *args]
        if user is not None:
            kw.update(user=user, group=group, extra_groups=[])
            cmd = [SYSTEM_PYTHON, "-c", "import sys; from imm.cli.main import main; "
                   "sys.exit(main(sys.argv[1:]))", *args]
            kw["env"] = {**self.env, "PYTHONPATH": str(reader_copy())}
        else:
            kw["env"] = self.env
        cp = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout,
                            **kw)
        if check and cp.returncode != 0:
            raise AssertionError(f"immctl {' '.join(args)} exited {cp.returncode}:\n"
                                 f"{cp.stdout}\n{cp.stderr}")
        return cp

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.run(*args, "--json", **kw).stdout)

    def items(self, *args: str, **kw: Any) -> list[Any]:
        """A list command's --json, which is always {"items": [...], "next": ...}."""
        out = self.json(*args, **kw)
        assert set(out) == {"items", "next"}, out
        return list(out["items"])

    def fails(self, *args: str, code: int | None = None,
              **kw: Any) -> subprocess.CompletedProcess[str]:
        """``immctl ARGS`` must fail (with ``code``), with a message and no traceback."""
        cp = self.run(*args, check=False, **kw)
        assert cp.returncode != 0, f"immctl {' '.join(args)} should have failed:\n{cp.stdout}"
        if code is not None:
            assert cp.returncode == code, (cp.returncode, cp.stderr)
        assert "Traceback" not in cp.stderr
        return cp

    def ledger_size(self) -> int:
        return int(self.json("ledger", "head")["size"])

    # -- measurements ---------------------------------------------------------------------------

    def cpu(self) -> float:
        """immd's user+system CPU seconds so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def db(self) -> sqlite3.Connection:
        """A read-only connection to immd's database."""
        conn = sqlite3.connect(f"file:{self.state / 'imm.db'}?mode=ro", uri=True)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
