"""systemd integration: sd_notify and socket activation against real sockets, the unit files
checked by systemd's own tools, and immd started the way immd.socket starts it.

Real peers only: notify() is heard by a datagram socket the test binds, listen_fds() receives
sockets from ``systemd-socket-activate`` (systemd's tool for exactly this), the units go through
``systemd-analyze verify``/``security`` and the sysusers/tmpfiles snippets through
``systemd-sysusers``/``systemd-tmpfiles`` into a scratch root.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imm.daemon import systemd
from imm.errors import ConfigError

UNITS = Path(__file__).resolve().parent.parent / "systemd"
VENV_BIN = Path(sys.executable).parent
IMMD = VENV_BIN / "immd"


def _mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux >= 6.3), the in-kernel MemoryDenyWriteExecute."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_GET_MDWE = 66
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


# A wrapper that turns on the kernel's MemoryDenyWriteExecute for itself and everything it execs
# (the flag is inherited and kept across execve), then execs its arguments. systemd 252 enforces
# MemoryDenyWriteExecute=yes with a seccomp filter with the same effect: no mapping that is both
# writable and executable, no making a writable mapping executable.
MDWE_EXEC = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit("PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()))
    os.execvp(sys.argv[1], sys.argv[1:])
    """
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="imm-sd-", dir="/tmp") as name:
        yield Path(name)


class Listener:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def receive(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, line: str, timeout: float, after: int = -1) -> int:
        """Read until a message later than index ``after`` holds ``line``; that message's index."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after + 1, len(self.messages)):
                if line in self.messages[index].split("\n"):
                    return index
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} within {timeout}s; got {self.messages}")
            try:
                self.receive(remaining)
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener(short_dir: Path) -> Iterator[tuple[str, Listener]]:
    address = str(short_dir / "notify.sock")
    listener = Listener(address)
    yield address, listener
    listener.close()


# --- notify() ------------------------------------------------------------------------------


def test_notify_sends_lines_to_a_path_socket(path_listener, monkeypatch) -> None:
    address, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    assert systemd.notify("READY=1", "STATUS=serving on /run/imm/immd.sock")

    assert listener.receive() == "READY=1\nSTATUS=serving on /run/imm/immd.sock"


def test_notify_sends_to_an_abstract_socket(monkeypatch) -> None:
    name = f"imm-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    listener = Listener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert systemd.notify("STOPPING=1")

        assert listener.receive() == "STOPPING=1"
    finally:
        listener.close()


def test_notify_keeps_a_multi_line_status_on_one_line(path_listener, monkeypatch) -> None:
    address, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    systemd.notify("STATUS=reload failed:\nline 3: unknown key", "READY=1")

    assert listener.receive().split("\n") == [
        "STATUS=reload failed: line 3: unknown key",
        "READY=1",
    ]


def test_reloading_sends_the_monotonic_time_systemd_matches_reloads_by(
    path_listener, monkeypatch
) -> None:
    address, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert systemd.reloading()

    lines = dict(line.split("=", 1) for line in listener.receive().split("\n"))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines["RELOADING"] == "1"
    assert before <= int(lines["MONOTONIC_USEC"]) <= after


def test_notify_outside_systemd_is_a_quiet_no(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_to_a_socket_that_is_gone_does_not_raise(short_dir, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@imm-test-nobody-listens-{time.monotonic_ns()}")
    assert systemd.notify("READY=1") is False


# --- listen_fds() ----------------------------------------------------------------------------

# Run by systemd-socket-activate once the test connects: takes the sockets, accepts the test's
# connection on the first one and answers with what it found.
ACTIVATED_CHILD = textwrap.dedent(
    """
    import fcntl, json, os
    from imm.daemon import systemd
    named = systemd.listen_fds_with_names()
    report = {
        "names": [name for name, _ in named],
        "families": [sock.family.name for _, sock in named],
        "types": [sock.type.name for _, sock in named],
        "addresses": [sock.getsockname() for _, sock in named],
        "cloexec": [fcntl.fcntl(s, fcntl.F_GETFD) & fcntl.FD_CLOEXEC != 0 for _, s in named],
        "environment_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }
    connection, _ = named[0][1].accept()
    connection.sendall(json.dumps(report).encode())
    connection.close()
    """
)


def _wait_for_path(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode} early")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


needs_socket_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is missing (Debian package systemd)",
)


@needs_socket_activate
def test_listen_fds_takes_the_sockets_systemd_passes(short_dir) -> None:
    api, metrics = short_dir / "api.sock", short_dir / "metrics.sock"
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(api),
            "-l",
            str(metrics),
            "--fdname=api:metrics",
            sys.executable,
            "-c",
            ACTIVATED_CHILD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_path(metrics, process)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(str(api))
            report = json.loads(client.makefile("rb").read())
        assert process.wait(timeout=30) == 0
    finally:
        _stop(process)

    assert report == {
        "names": ["api", "metrics"],
        "families": ["AF_UNIX", "AF_UNIX"],
        "types": ["SOCK_STREAM", "SOCK_STREAM"],
        "addresses": [str(api), str(metrics)],
        "cloexec": [True, True],
        "environment_left": [],
    }


def _run_child(program: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_listen_fds_can_leave_the_environment_for_a_second_look() -> None:
    out = _run_child(
        """
        import os, socket
        from imm.daemon import systemd
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        os.dup2(listener.fileno(), 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        first = systemd.listen_fds(unset_environment=False)
        print(len(first), first[0].getsockname() == listener.getsockname(),
              sorted(k for k in os.environ if k.startswith("LISTEN_")))
        """
    )
    assert out == "1 True ['LISTEN_FDS', 'LISTEN_PID']"


def test_listen_fds_names_an_fd_that_is_not_a_socket() -> None:
    out = _run_child(
        """
        import os
        from imm.daemon import systemd
        from imm.errors import ConfigError
        read_end, _ = os.pipe()
        os.dup2(read_end, 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        try:
            systemd.listen_fds()
        except ConfigError as e:
            print(e)
        """
    )
    assert "file descriptor 3 is not an open socket" in out


def test_listen_fds_ignores_variables_meant_for_another_process(monkeypatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "immd")

    assert systemd.listen_fds() == []
    assert not [k for k in os.environ if k.startswith("LISTEN_")]


def test_listen_fds_without_activation_is_empty(monkeypatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == []


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a non-negative integer"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "immd"}, "names 1 sockets but LISTEN_FDS=2"),
    ],
)
def test_listen_fds_refuses_inconsistent_variables(monkeypatch, variables, message) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=message):
        systemd.listen_fds()
    assert not [k for k in os.environ if k.startswith("LISTEN_")]


# --- watchdog_interval() ---------------------------------------------------------------------


def test_watchdog_interval(monkeypatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() is None

    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None


# --- the unit files --------------------------------------------------------------------------

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian package systemd)",
)


@pytest.fixture
def installable_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart= names the immd of this environment.

    ``systemd-analyze verify`` fails when the ExecStart= binary does not exist, and /usr/bin/immd
    only exists where a distribution package installed imm; operators of a pip install change the
    path the same way, with a drop-in (see the comment in immd.service). It does not check that
    User= exists, so the imm user need not be created for this.
    """
    assert IMMD.exists(), (
        f"{IMMD} is missing: install the project into this venv (pip install -e .)"
    )
    for unit in ("immd.service", "immd.socket"):
        text = (UNITS / unit).read_text()
        text = text.replace("ExecStart=/usr/bin/immd ", f"ExecStart={IMMD} ")
        (tmp_path / unit).write_text(text)
    assert (
        f"ExecStart={IMMD} --config /etc/imm/immd.toml" in (tmp_path / "immd.service").read_text()
    )
    return tmp_path


@needs_analyze
def test_units_pass_systemd_analyze_verify(installable_units: Path) -> None:
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(installable_units / "immd.service"),
            str(installable_units / "immd.socket"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # verify exits 0 on warnings such as an unknown or misspelled key; any line about our units
    # is a finding. (Lines about the host's own units are not ours to judge.)
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(installable_units) in line or "immd." in line
    ]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


@needs_analyze
def test_service_hardening_stays_in_the_ok_band(installable_units: Path) -> None:
    # systemd-analyze rates exposure 0.0-10.0 (threshold in tenths); immd.service is at 1.7 on
    # systemd 252. 2.5 leaves room for other systemd versions' weights, not for dropped settings.
    done = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--threshold=25",
            "--no-pager",
            str(installable_units / "immd.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are missing (Debian package systemd)",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles needs root to chown")
def test_sysusers_and_tmpfiles_create_the_user_groups_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, snippet in (
        ("systemd-sysusers", "imm.sysusers"),
        ("systemd-tmpfiles", "imm.tmpfiles"),
    ):
        args = [tool, f"--root={root}"] + (["--create"] if tool == "systemd-tmpfiles" else [])
        done = subprocess.run(
            [*args, str(UNITS / snippet)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    users = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert set(groups) >= {"imm", "imm-admin"}
    imm_uid, imm_gid = int(users["imm"][2]), int(groups["imm"][2])
    assert int(users["imm"][3]) == imm_gid
    assert users["imm"][6] in ("/usr/sbin/nologin", "/sbin/nologin")

    def described(path: str) -> tuple[str, int, int]:
        st = (root / path).stat()
        return oct(st.st_mode & 0o7777), st.st_uid, st.st_gid

    assert described("var/lib/imm") == ("0o700", imm_uid, imm_gid)
    assert described("run/imm") == ("0o750", imm_uid, imm_gid)
    assert described("etc/imm") == ("0o750", 0, imm_gid)


# --- MemoryDenyWriteExecute=yes --------------------------------------------------------------

needs_mdwe = pytest.mark.skipif(
    not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)"
)

UNDER_MDWE = textwrap.dedent(
    """
    import importlib, mmap, pkgutil, ssl
    import imm
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        raise SystemExit("W+X memory was allowed: the sandbox is not on")
    # Every module, so every C extension and shared library they load (a library that wants an
    # executable stack fails right here, with an ImportError).
    for module in pkgutil.walk_packages(imm.__path__, "imm."):
        importlib.import_module(module.name)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"checkpoint"), b"checkpoint")
    ssl.create_default_context()
    import aiohttp.web, libcloud.compute.providers, dns.update, sqlite_utils
    print("ok")
    """
)


@needs_mdwe
def test_imm_and_its_dependencies_run_without_writable_executable_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", UNDER_MDWE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


# --- immd, socket-activated --------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def _get_status(sock: Path) -> dict[str, object]:
    connection = UnixHTTPConnection(sock, timeout=60)
    try:
        connection.request("GET", "/v1/status")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    status = json.loads(body)
    assert isinstance(status, dict), status
    return status


@needs_socket_activate
@pytest.mark.parametrize(
    "sandbox",
    ["plain", pytest.param("memory-deny-write-execute", marks=needs_mdwe)],
)
def test_immd_serves_on_the_socket_systemd_hands_over_and_stops_cleanly(
    short_dir: Path, path_listener, sandbox: str
) -> None:
    notify_address, notify = path_listener
    sock = short_dir / "immd.sock"
    command = [
        "systemd-socket-activate",
        "-l",
        str(sock),
        "--fdname=immd",
        "-E",
        f"NOTIFY_SOCKET={notify_address}",
        str(IMMD),
        "--state-dir",
        str(short_dir / "state"),
        "--socket",
        str(sock),
    ]
    if sandbox != "plain":
        command = [sys.executable, "-c", MDWE_EXEC, *command]
    log = short_dir / "immd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for_path(sock, process)
        # The first connection is what makes systemd-socket-activate exec immd: it waits in the
        # listen queue meanwhile, as it would while immd.service restarts.
        assert "version" in _get_status(sock)
        ready = notify.wait_for("READY=1", timeout=30)

        process.send_signal(signal.SIGHUP)  # systemctl reload
        reloading = notify.wait_for("RELOADING=1", timeout=10, after=ready)
        assert "MONOTONIC_USEC=" in notify.messages[reloading]
        ready = notify.wait_for("READY=1", timeout=30, after=reloading)
        assert "version" in _get_status(sock)

        process.send_signal(signal.SIGTERM)  # systemctl stop
        assert process.wait(timeout=60) == 0
        notify.wait_for("STOPPING=1", timeout=5, after=ready)
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        _stop(process)
    # The socket is systemd's: immd must leave it for the next activation.
    assert sock.is_socket()


# --- the README's install, into a scratch root ---------------------------------------------

@needs_analyze
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles needs root to chown")
def test_install_script_gives_a_root_that_systemd_analyze_verifies(tmp_path: Path) -> None:
    """scripts/install-systemd (what the README's install section runs) into a scratch root:
    units, the venv drop-in, sysusers, tmpfiles, config and LoadCredential=, then
    ``systemd-analyze verify`` on the installed units with their drop-ins."""
    root = tmp_path / "root"
    creds = root / "etc/imm/credentials"
    creds.mkdir(parents=True)
    (creds / "aws-secret-access-key").write_text("not-a-real-secret\n")
    readme = (UNITS.parent / "README.md").read_text()
    assert "sudo ./scripts/install-systemd --venv /opt/imm/venv" in readme
    done = subprocess.run(
        [str(UNITS.parent / "scripts/install-systemd"), "--root", str(root), "--venv",
         str(VENV_BIN.parent)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    units = root / "etc/systemd/system"
    venv_conf = (units / "immd.service.d/10-venv.conf").read_text()
    assert f"ExecStart=\nExecStart={IMMD} --config /etc/imm/immd.toml" in venv_conf
    cred_conf = (units / "immd.service.d/20-credentials.conf").read_text()
    assert ("LoadCredential=aws-secret-access-key:/etc/imm/credentials/aws-secret-access-key"
            in cred_conf)
    groups = {line.split(":")[0]: int(line.split(":")[2])
              for line in (root / "etc/group").read_text().splitlines()}
    assert {"imm", "imm-admin"} <= set(groups)
    st = (root / "etc/imm/immd.toml").stat()
    assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o640", 0, groups["imm"])
    assert oct((root / "etc/imm/credentials").stat().st_mode & 0o777) == "0o700"
    assert oct((root / "var/lib/imm").stat().st_mode & 0o777) == "0o700"

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(units / "immd.service"), str(units / "immd.socket")],
        capture_output=True, text=True, timeout=120)
    ours = [line for line in (verify.stdout + verify.stderr).splitlines()
            if str(root) in line or "immd." in line]
    assert verify.returncode == 0 and not ours, verify.stdout + verify.stderr
    # the drop-ins are really read: a misspelled key in one is reported
    (units / "immd.service.d/30-typo.conf").write_text("[Service]\nLoadCredentia=x\n")
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "immd.service")],
                            capture_output=True, text=True, timeout=120)
    assert "LoadCredentia" in verify.stdout + verify.stderr
