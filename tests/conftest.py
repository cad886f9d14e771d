"""Shared fixtures: a real immd in a temp dir, driven through the real immctl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
IMMD = str(BIN / "immd")
IMMCTL = str(BIN / "immctl")
REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def wait_for_socket(path: Path, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"immd exited with {proc.returncode}")
        if path.exists():
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise TimeoutError(f"immd did not listen on {path}")


_ALL: list[Immd] = []
_READER_COPY: Path | None = None


def reader_copy() -> Path:
    """immctl's stdlib-only modules copied where any user can read them (the checkout may sit
    under a directory other users cannot enter, such as /root)."""
    global _READER_COPY
    if _READER_COPY is None:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="immctl-reader-"))
        for rel in ("imm/__init__.py", "imm/errors.py", "imm/cli"):
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
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


class Immd:
    """One immd process plus helpers to call immctl against it."""

    def __init__(self, root: Path, config: str | None = None) -> None:
        _ALL.append(self)
        self.root = root
        self.state = root / "state"
        self.sock = root / "run" / "immd.sock"
        self.log = root / "immd.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = root / "immd.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Immd:
        args = (IMMD, "--state-dir", str(self.state), "--socket", str(self.sock), *args)
        if self.config_path:
            args += ("--config", str(self.config_path))
        env = {**os.environ, **(extra_env or {})}
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        wait_for_socket(self.sock, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
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
        self._logf.close()
        return rc

    def reap(self) -> None:
        """Kill what this immd left running on purpose (instances, haproxy): tests clean up."""
        reap_under(self.root)

    def env(self) -> dict[str, str]:
        return {**os.environ, "IMM_SOCKET": str(self.sock)}

    def run(self, *args: str, check: bool = True, user: int | None = None,
            group: int | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        cmd = [IMMCTL, *args]
        if user is not None:
            # Another user cannot run the venv's interpreter (it lives under /root); immctl is
            # stdlib-only, so the system python3 runs it straight from the source tree.
            kw.update(user=user, group=group, extra_groups=[])
            cmd = [SYSTEM_PYTHON, "-c", "import sys; from imm.cli.main import main; "
                   "sys.exit(main(sys.argv[1:]))", *args]
            kw["env"] = {**self.env(), "PYTHONPATH": str(reader_copy())}
        else:
            kw["env"] = self.env()
        cp = subprocess.run(cmd, capture_output=True, text=True,
                            input=input, timeout=timeout, **kw)
        if check and cp.returncode != 0:
            raise AssertionError(f"immctl {' '.join(args)} exited {cp.returncode}:\n"
                                 f"{cp.stdout}\n{cp.stderr}")
        return cp

    def json(self, *args: str, **kw: Any) -> Any:
        cp = self.run(*args, "--json", **kw)
        return json.loads(cp.stdout)

    def items(self, *args: str, **kw: Any) -> list[Any]:
        """A list command's --json, which is always {"items": [...], "next": ...}."""
        out = self.json(*args, **kw)
        assert set(out) == {"items", "next"}, out
        return list(out["items"])

    def fails(self, *args: str, code: int | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        cp = self.run(*args, check=False, **kw)
        assert cp.returncode != 0, f"immctl {' '.join(args)} should have failed:\n{cp.stdout}"
        if code is not None:
            assert cp.returncode == code, (cp.returncode, cp.stderr)
        assert "Traceback" not in cp.stderr
        return cp

    def ledger_size(self) -> int:
        return int(self.json("ledger", "head")["size"])


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
