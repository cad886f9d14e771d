"""Faults, bad input and hostile local users, each through a real immd and the real immctl.

Every test here reproduces one way immd was attacked: a recycled pid, a user on loopback TCP,
a non-root admin naming files it cannot read, bodies and paths that used to end in a 500, a
full disk, a corrupted database page, hostile input to the offline verifier, and numbers
written in other scripts' digits. Throwaway users and groups are made with useradd/groupadd
and removed afterwards; the full disk is a small tmpfs; pid reuse is made deterministic by
writing /proc/sys/kernel/ns_last_pid.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import IMMCTL, SYSTEM_PYTHON, Immd, reader_copy

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: throwaway users, "
                                "tmpfs mounts and ns_last_pid")


# -- helpers ----------------------------------------------------------------------------------

@dataclass
class Account:
    name: str
    uid: int
    gid: int


@dataclass
class Accounts:
    """Throwaway groups and users, removed after the test."""

    tag: str
    groups: list[str]
    users: list[str]

    def group(self, role: str) -> int:
        name = f"immt{role}{self.tag}"
        subprocess.run(["groupadd", name], check=True)
        self.groups.append(name)
        return grp.getgrnam(name).gr_gid

    def user(self, role: str, primary: int, extra: list[int] | None = None) -> Account:
        name = f"immt{role}{self.tag}"
        cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
               "-g", str(primary), name]
        if extra:
            cmd[1:1] = ["-G", ",".join(str(g) for g in extra)]
        subprocess.run(cmd, check=True)
        self.users.append(name)
        pw = pwd.getpwnam(name)
        return Account(name, pw.pw_uid, pw.pw_gid)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    a = Accounts(secrets.token_hex(3), [], [])
    yield a
    for u in a.users:
        subprocess.run(["userdel", u], check=False, capture_output=True)
    for g in a.groups:
        subprocess.run(["groupdel", g], check=False, capture_output=True)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="imm-faults-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def shared_immd(root: Path, public: Path, sock_group: str, admin_group: str,
                extra: str = "") -> Immd:
    """An immd whose socket other users reach through ``sock_group``."""
    cfg = (f'[daemon]\nsocket_group = "{sock_group}"\nadmin_group = "{admin_group}"\n'
           "owner_is_admin = false\n" + extra)
    d = Immd(root, cfg)
    d.sock = public / "run" / "immd.sock"
    d.sock.parent.mkdir()
    os.chmod(d.sock.parent, 0o755)
    return d


def as_user(acct: Account, script: str, *args: str, groups: list[int] | None = None,
            timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a python script as ``acct`` with exactly ``groups`` as supplementary groups."""
    return subprocess.run([SYSTEM_PYTHON, "-c", script, *args], capture_output=True, text=True,
                          user=acct.uid, group=acct.gid, extra_groups=groups or [],
                          timeout=timeout, **kw)


def raw(sock: Path, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One HTTP request on the unix socket, as root; (status, parsed JSON body)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(str(sock))
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + (body or b""))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    return status, json.loads(payload) if payload.strip() else None


def tcp(port: int, method: str, path: str, token: str | None = None,
        body: bytes | None = None) -> tuple[int, Any]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + (body or b""))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(payload)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def disk_image(where: Path, size: int = 4096, mode: int = 0o644) -> Path:
    where.write_bytes(secrets.token_bytes(size))
    os.chmod(where, mode)
    return where


# -- 1. identity from the kernel at connect time, not from a recycled pid ---------------------

RECYCLED = r"""
import os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
if os.fork():
    print(os.getpid(), flush=True)   # the pid SO_PEERCRED recorded; this process now exits
    os._exit(0)
sys.stdin.readline()                 # wait until the test has given our old pid away
body = b'{"reason": "pid reuse"}'
sock.sendall(b"POST /v1/images/" + sys.argv[2].encode() + b"/revoke HTTP/1.1\r\nHost: x\r\n"
             b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.split(b"\r\n\r\n", 1)[0].split()[1].decode(), flush=True)
"""


def take_pid(pid: int, admin_gid: int, attempts: int = 200) -> subprocess.Popen[bytes]:
    """Start a process in the admin group that gets exactly ``pid`` (ns_last_pid = pid - 1;
    other processes on the machine may race us for it, so try again until it lands)."""
    for _ in range(attempts):
        NS_LAST_PID.write_text(str(pid - 1))
        p = subprocess.Popen(["sleep", "60"], extra_groups=[admin_gid])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    pytest.fail(f"could not start a process with pid {pid} in {attempts} attempts")


def test_a_recycled_pid_does_not_lend_a_reader_an_admins_groups(
        tmp_path: Path, public_dir: Path, accounts: Accounts) -> None:
    assert os.access(NS_LAST_PID, os.W_OK), "ns_last_pid must be writable by root here"
    sock_gid = accounts.group("s")
    admin_gid = accounts.group("a")
    reader = accounts.user("r", sock_gid)
    d = shared_immd(tmp_path, public_dir, grp.getgrgid(sock_gid).gr_name,
                    grp.getgrgid(admin_gid).gr_name).start()
    img = disk_image(tmp_path / "disk.raw")
    digest = d.json("image", "add", str(img), "--name", "web", "--version", "1")["digest"]
    size = d.ledger_size()

    # the reader connects, hands the connection to a child and exits
    attacker = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", RECYCLED, str(d.sock), digest], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, user=reader.uid, group=reader.gid, extra_groups=[])
    assert attacker.stdout is not None and attacker.stdin is not None
    old_pid = int(attacker.stdout.readline())
    attacker.wait()
    # an admin's process now holds that pid
    admin = take_pid(old_pid, admin_gid)
    try:
        groups = Path(f"/proc/{old_pid}/status").read_text()
        assert f"\t{admin_gid}" in groups or f" {admin_gid}" in groups
        attacker.stdin.write("go\n")
        attacker.stdin.flush()
        status = attacker.stdout.read().strip()
    finally:
        admin.kill()
        admin.wait()
    assert status == "403", f"a reader's request was answered {status} after pid reuse"
    assert d.ledger_size() == size
    assert d.json("image", "show", "web@1")["status"] == "active"


def test_groups_come_from_the_connection_not_the_account_database(
        tmp_path: Path, public_dir: Path, accounts: Accounts) -> None:
    """A user added to the admin group after connecting (or a process that dropped the group)
    is judged by the groups it connected with: the kernel's SO_PEERGROUPS record."""
    sock_gid = accounts.group("s")
    admin_gid = accounts.group("a")
    member = accounts.user("m", sock_gid, [admin_gid])
    d = shared_immd(tmp_path, public_dir, grp.getgrgid(sock_gid).gr_name,
                    grp.getgrgid(admin_gid).gr_name).start()
    # a process of the admin-group member that dropped the group may only read
    dropped = d.json("status", user=member.uid, group=member.gid)
    assert dropped["peer"]["admin"] is False
    cp = d.fails("keys", "rotate", code=5, user=member.uid, group=member.gid)
    assert "may only read" in cp.stderr
    # with the group in its credentials it is an admin
    kw: dict[str, Any] = {"user": member.uid, "group": member.gid, "extra_groups": [admin_gid]}
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; from imm.cli.main import main; "
         "sys.exit(main(sys.argv[1:]))", "status", "--json"],
        capture_output=True, text=True, env={**d.env, "PYTHONPATH": str(reader_copy())},
        check=True, **kw)
    assert json.loads(out.stdout)["peer"]["admin"] is True


# -- 2. loopback TCP needs a token minted over the socket -------------------------------------

TCP_GET = r"""
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
auth = f"Authorization: Bearer {sys.argv[3]}\r\n" if len(sys.argv) > 3 else ""
s.sendall(f"GET {sys.argv[2]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n".encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps([int(head.split()[1]), json.loads(body)]))
"""


def test_tcp_refuses_a_user_without_a_token_and_honours_scoped_tokens(
        tmp_path: Path, public_dir: Path, accounts: Accounts) -> None:
    sock_gid = accounts.group("s")
    admin_gid = accounts.group("a")
    outsider = accounts.user("o", accounts.group("x"))  # cannot open the socket
    reader = accounts.user("r", sock_gid)
    port = free_port()
    d = shared_immd(tmp_path, public_dir, grp.getgrgid(sock_gid).gr_name,
                    grp.getgrgid(admin_gid).gr_name, f'tcp = "127.0.0.1:{port}"\n').start()
    img = disk_image(tmp_path / "disk.raw")
    d.run("image", "add", str(img), "--name", "web", "--version", "1")

    def get(who: Account, path: str, token: str | None = None) -> tuple[int, Any]:
        args = [str(port), path] + ([token] if token else [])
        cp = as_user(who, TCP_GET, *args, check=True)
        return tuple(json.loads(cp.stdout))  # type: ignore[return-value]

    # the outsider, who cannot open the 0660 socket, gets nothing over TCP
    assert d.fails("status", code=69, user=outsider.uid, group=outsider.gid)
    for path in ("/v1/status", "/v1/images", "/v1/ledger/head", "/metrics"):
        status, body = get(outsider, path)
        assert status == 401, (path, status, body)
        assert body["error"]["code"] == "unauthorized"
        assert "immctl token create" in body["error"]["message"]
    status, body = get(outsider, "/v1/status", "imm_0123456789abcdef_" + "A" * 43)
    assert status == 401 and "unknown, expired or revoked" in body["error"]["message"]

    # a reader mints a read token over the socket and reads over TCP as itself
    token = d.run("token", "create", "--ttl", "10m", user=reader.uid,
                  group=reader.gid).stdout.strip()
    status, body = get(outsider, "/v1/status", token)  # a token is a bearer credential
    assert status == 200 and body["peer"] == {"user": reader.name, "uid": reader.uid,
                                              "admin": False}
    status, body = tcp(port, "POST", "/v1/images/web@1/revoke", token, b'{"reason": "x"}')
    assert status == 403 and "scope 'read'" in body["error"]["message"]
    status, body = tcp(port, "POST", "/v1/tokens", token, b'{"ttl": "1h"}')
    assert status == 403 and "unix socket only" in body["error"]["message"]
    # a reader may not mint an admin token; an admin may
    cp = d.fails("token", "create", "--ttl", "10m", "--scope", "admin", code=5,
                 user=reader.uid, group=reader.gid)
    assert "not an admin" in cp.stderr
    admin_token = d.run("token", "create", "--ttl", "10m", "--scope", "admin").stdout.strip()
    status, body = tcp(port, "POST", "/v1/images/web@1/revoke", admin_token,
                       b'{"reason": "over tcp"}')
    assert status == 201, body
    assert d.json("image", "show", "web@1")["revocation"]["actor"].startswith("root")

    # listed by id (never the token), revocable by its owner, then refused
    mine = d.items("token", "list", user=reader.uid, group=reader.gid)
    assert [t["user"] for t in mine] == [reader.name] and "token" not in mine[0]
    assert len(d.items("token", "list")) == 2  # an admin sees every token
    # not the reader's own (picked by owner: two tokens made in one second list in id order)
    admins = [t for t in d.items("token", "list") if t["user"] != reader.name]
    d.fails("token", "revoke", admins[0]["id"], code=3, user=reader.uid, group=reader.gid)
    d.run("token", "revoke", mine[0]["id"], user=reader.uid, group=reader.gid)
    status, body = get(outsider, "/v1/status", token)
    assert status == 401
    # the token is stored only hashed and never logged
    stored = (d.state / "tokens.json").read_text()
    secret = token.rsplit("_", 1)[1]
    assert secret not in stored and secret[:12] not in d.log.read_text()
    assert oct((d.state / "tokens.json").stat().st_mode & 0o777) == "0o600"


def test_token_ttl_is_checked(immd: Immd) -> None:
    for bad in ("0s", "31d", "1w", "١h", "-5m", "5 m"):
        cp = immd.fails("token", "create", f"--ttl={bad}", code=2)
        assert repr(bad) in cp.stderr


# -- 3. immd reads only what the caller could read --------------------------------------------

def test_a_non_root_admin_cannot_make_immd_read_what_it_cannot(
        tmp_path: Path, public_dir: Path, accounts: Accounts) -> None:
    sock_gid = accounts.group("s")
    admin_gid = accounts.group("a")
    admin = accounts.user("a", sock_gid, [admin_gid])
    d = shared_immd(tmp_path, public_dir, grp.getgrgid(sock_gid).gr_name,
                    grp.getgrgid(admin_gid).gr_name).start()
    size = d.ledger_size()

    def add(path: str, name: str, code: int) -> str:
        cp = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; from imm.cli.main import main; "
             "sys.exit(main(sys.argv[1:]))", "image", "add", path, "--name", name,
             "--version", "1"], capture_output=True, text=True, timeout=120,
            env={**d.env, "PYTHONPATH": str(reader_copy())}, user=admin.uid, group=admin.gid,
            extra_groups=[admin_gid])
        assert cp.returncode == code, (path, cp.returncode, cp.stdout, cp.stderr)
        assert "Traceback" not in cp.stderr
        return cp.stderr

    # a file the admin cannot read: refused by immctl itself, nothing sent
    err = add("/etc/shadow", "shadow", 5)
    assert "permission denied" in err and "your own access" in err
    # /root: refused before anything is hashed
    t0 = time.monotonic()
    err = add("/root", "root", 5)
    assert "/root" in err and "permission denied" in err
    assert d.ledger_size() == size

    # a tree the admin owns, holding a file only root may read
    tree = public_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "imm-image.json").write_text('{"command": ["python3", "app.py"]}\n')
    (tree / "app.py").write_text("print('mine')\n")
    (tree / "sub" / "secret").write_text("root only\n")
    os.chmod(tree / "sub" / "secret", 0o600)
    for p in (tree, tree / "sub", tree / "app.py", tree / "imm-image.json"):
        os.chown(p, admin.uid, admin.gid)
    err = add(str(tree), "tree", 2)
    assert f"{tree}/sub/secret" in err and "cannot read" in err
    assert d.ledger_size() == size
    # made readable to the admin, the same tree registers, with the digest root computes
    os.chmod(tree / "sub" / "secret", 0o644)
    add(str(tree), "tree", 0)
    assert d.ledger_size() > size
    from imm.catalog.digest import tree_digest, tree_manifest

    assert d.json("image", "show", "tree@1")["content_digest"] == tree_digest(
        tree_manifest(tree))

    # a bare path over the API, without a descriptor, is refused: no image_roots configured
    script = textwrap.dedent(r"""
        import json, socket, sys
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
        body = json.dumps({"path": "/etc/shadow", "name": "x", "version": "1"}).encode()
        s.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        print(json.dumps([int(head.split()[1]), json.loads(payload)]))
    """)
    cp = as_user(admin, script, str(d.sock), groups=[admin_gid], check=True)
    status, body = json.loads(cp.stdout)
    assert status == 400 and "image_roots" in body["error"]["message"], body
    # nor does a descriptor that proves no read access: O_PATH opens without read permission
    script = textwrap.dedent(r"""
        import os, sys
        sys.path.insert(0, sys.argv[2])
        from imm.cli.client import ApiError, Client
        for path in ("/etc/shadow", "/root"):
            fd = os.open(path, os.O_PATH)
            try:
                Client(sys.argv[1]).request("POST", "/v1/images", {
                    "path": path, "name": "opath", "version": path}, pass_fd=fd)
                print("registered", path)
            except ApiError as e:
                print(e.status, e.message)
    """)
    cp = as_user(admin, script, str(d.sock), str(reader_copy()), groups=[admin_gid],
                 check=True)
    assert cp.stdout.count("400 ") == 2 and "not opened for reading" in cp.stdout, cp.stdout
    assert d.items("image", "list")[0]["name"] == "tree"
    assert time.monotonic() - t0 < 600


def test_image_roots_allow_paths_under_them_only(tmp_path: Path, make_immd: Any) -> None:
    root = tmp_path / "images"
    root.mkdir()
    img = disk_image(root / "disk.raw")
    outside = disk_image(tmp_path / "outside.raw")
    (root / "escape").symlink_to(outside)
    d = make_immd(f'[daemon]\nimage_roots = ["{root}"]\n').start()
    body = {"name": "web", "version": "1"}
    st, r = raw(d.sock, "POST", "/v1/images", json.dumps({**body, "path": str(img)}).encode())
    assert st == 201, r
    st, r = raw(d.sock, "POST", "/v1/images",
                json.dumps({**body, "path": str(outside), "version": "2"}).encode())
    assert st == 400 and "not under any of the configured image_roots" in r["error"]["message"]
    st, r = raw(d.sock, "POST", "/v1/images",
                json.dumps({**body, "path": str(root / "escape"), "version": "3"}).encode())
    assert st == 400 and "image_roots" in r["error"]["message"]


# -- 4. clear errors instead of 500 -----------------------------------------------------------

@pytest.mark.parametrize(("body", "names"), [
    (b'{"a":' * 50000 + b"1" + b"}" * 50000, "limit of 32 levels"),
    (b'{"path": "/tmp/x", "name": "w", "version": "1", "labels": ' + b"[" * 40 + b"]" * 40
     + b"}", "limit of 32 levels"),
    (b'{"path": "/tmp/x\\u0000y", "name": "w", "version": "1"}', "NUL byte"),
    (b'{"path": "/tmp/\\ud800", "name": "w", "version": "1"}', "not valid UTF-8"),
    (b'{"path": "/tmp/x", "name": "w\\udc80", "version": "1"}', "not valid UTF-8"),
    (b'{"path": "/' + b"a" * 5000 + b'", "name": "w", "version": "1"}', "4096 bytes"),
    (b'{"path": "/tmp/x", "name": "w", "version": "1", "labels": {"k\\u0000": "v"}}',
     "NUL byte"),
])
def test_bodies_that_ended_in_internal_error_are_400(immd: Immd, body: bytes,
                                                      names: str) -> None:
    size = immd.ledger_size()
    st, r = raw(immd.sock, "POST", "/v1/images", body)
    assert st == 400, (st, r)
    assert names in r["error"]["message"]
    st, r = raw(immd.sock, "PUT", "/v1/channels/web%2Fprod", body)
    assert st == 400, (st, r)
    assert immd.ledger_size() == size


def test_deep_json_in_a_packer_manifest_is_400(immd: Immd, tmp_path: Path) -> None:
    f = tmp_path / "packer-manifest.json"
    f.write_text('{"builds": ' + "[" * 100000 + "]" * 100000 + "}")
    cp = immd.fails("image", "import-packer", str(f), code=2)
    assert str(f) in cp.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    yield mnt
    for _ in range(50):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_answers_507_and_writes_nothing(small_tmpfs: Path, tmp_path: Path) -> None:
    d = Immd(tmp_path)
    d.state = small_tmpfs / "state"
    d.start()
    try:
        full_disk(d, small_tmpfs, tmp_path)
    finally:
        d.stop()


def full_disk(d: Immd, small_tmpfs: Path, tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.raw")
    d.run("image", "add", str(img), "--name", "web", "--version", "1")
    size = d.ledger_size()
    # fill the file system to the last byte it will take
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    failures = 0
    for v in range(2, 8):
        labels = [f"--label=k{i}={'v' * 200}" for i in range(20)]
        cp = d.run("image", "add", str(img), "--name", "web", "--version", str(v), *labels,
                   check=False)
        if cp.returncode == 0:
            continue
        failures += 1
        assert cp.returncode == 1, cp.stderr
        assert f"no space left under {d.state}; nothing was written" in cp.stderr
        assert "internal error" not in cp.stderr
    assert failures > 0, "the tmpfs never filled up"
    cp = d.run("channel", "set", "web/prod", "web@1", "--json", check=False)
    if cp.returncode:
        assert json.loads(cp.stdout)["error"]["status"] == 507
    # space back: the catalog carries on and verifies; nothing half-written
    filler.unlink()
    d.run("image", "add", str(img), "--name", "web", "--version", "9")
    assert d.ledger_size() > size
    d.run("image", "verify", "--all")
    d.run("ledger", "verify")


# -- 5. integrity at start, corruption reported by the verifiers ------------------------------

def corrupt_table_page(db: Path, table: str) -> None:
    """Flip the page-type byte of ``table``'s root b-tree page."""
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                        (table,)).fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        byte = f.read(1)
        f.seek((root - 1) * page_size)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupted_page_is_refused_at_start(tmp_path: Path) -> None:
    d = Immd(tmp_path).start()
    img = disk_image(tmp_path / "disk.raw")
    d.run("image", "add", str(img), "--name", "web", "--version", "1")
    assert d.stop() == 0
    db = d.state / "imm.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    corrupt_table_page(db, "ledger_leaves")
    with pytest.raises(RuntimeError, match="immd exited"):
        d.start()
    log = d.log.read_text()
    assert f"the database {db} is corrupted" in log and "backup" in log
    assert "Traceback" not in log


def test_a_ledger_that_does_not_match_its_checkpoint_is_refused_at_start(tmp_path: Path) -> None:
    d = Immd(tmp_path).start()
    img = disk_image(tmp_path / "disk.raw")
    d.run("image", "add", str(img), "--name", "web", "--version", "1")
    assert d.stop() == 0
    db = d.state / "imm.db"
    conn = sqlite3.connect(db)  # a restore that lost the last leaf
    conn.execute("DELETE FROM ledger_leaves WHERE idx = (SELECT max(idx) FROM ledger_leaves)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="immd exited"):
        d.start()
    log = d.log.read_text()
    assert "does not match its last signed checkpoint" in log and str(db) in log


def test_verifiers_report_a_corrupted_page_as_a_verification_failure(tmp_path: Path) -> None:
    d = Immd(tmp_path).start()
    img = disk_image(tmp_path / "disk.raw")
    d.run("image", "add", str(img), "--name", "web", "--version", "1")
    d.run("channel", "set", "web/prod", "web@1")
    assert d.stop() == 0
    d.start()  # passes quick_check; its readers have not read a page yet
    db = d.state / "imm.db"
    conn = sqlite3.connect(db)  # what start-up wrote goes from the WAL into the file
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.close()
    corrupt_table_page(db, "ledger_leaves")
    for args in (["image", "verify", "--all"], ["ledger", "verify"]):
        cp = d.fails(*args, code=7)
        assert "corrupted page" in cp.stderr and "backup" in cp.stderr, cp.stderr
        assert "internal error" not in cp.stderr
    d.stop(timeout=30)
    assert "internal error" not in d.log.read_text()


# -- 6. the offline verifier on hostile input -------------------------------------------------

@pytest.fixture
def pubkey(tmp_path: Path) -> Path:
    k = tmp_path / "pub.pem"
    k.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return k


def verify(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([IMMCTL, "audit", "verify", *args], capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "IMM_SOCKET": "/nonexistent"})
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp


def test_offline_verifier_refuses_deep_and_long_lines(tmp_path: Path, pubkey: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"a":' * 200000 + "1" + "}" * 200000 + "\n")
    cp = verify(str(deep), "--key", str(pubkey))
    assert cp.returncode == 2 and "limit of 32 levels" in cp.stderr, cp.stderr
    from imm.audit.bundle_verify import CSV_COLUMNS

    deep_csv = tmp_path / "deep.csv"
    deep_csv.write_text(",".join(CSV_COLUMNS) + "\n" + "," * (len(CSV_COLUMNS) - 1)
                        + "[" * 200000 + "\n")
    cp = verify(str(deep_csv), "--key", str(pubkey))
    assert cp.returncode == 2 and "limit of 32 levels" in cp.stderr, cp.stderr
    long = tmp_path / "long.jsonl"
    long.write_bytes(b'{"a":"' + b"x" * (5 << 20) + b'"}\n')
    cp = verify(str(long), "--key", str(pubkey))
    assert cp.returncode == 2 and "longer than the limit of 4194304 bytes" in cp.stderr


def test_offline_verifier_refuses_devices_and_non_pem_keys(tmp_path: Path, pubkey: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    bundle.write_text('{"type":"header"}\n')
    cp = verify("/dev/zero", "--key", str(pubkey))
    assert cp.returncode == 2 and "/dev/zero is a device" in cp.stderr
    cp = verify(str(bundle), "--key", "/dev/zero")
    assert cp.returncode == 2 and "/dev/zero is a device" in cp.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cp = verify(str(fifo), "--key", str(pubkey))
    assert cp.returncode == 2 and "is a FIFO" in cp.stderr
    notpem = tmp_path / "key.bin"
    notpem.write_bytes(secrets.token_bytes(4096))
    cp = verify(str(bundle), "--key", str(notpem))
    assert cp.returncode == 2 and "not a PEM file" in cp.stderr
    big = tmp_path / "big.pem"
    big.write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * (1 << 20))
    cp = verify(str(bundle), "--key", str(big))
    assert cp.returncode == 2 and "64 KiB" in cp.stderr


# -- 7. ASCII-only numbers --------------------------------------------------------------------

def test_numbers_in_paths_and_queries_are_ascii_only(immd: Immd, tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.raw")
    immd.run("image", "add", str(img), "--name", "web", "--version", "1")
    assert raw(immd.sock, "GET", "/v1/ledger/leaves/1")[0] == 200
    for path in ("/v1/ledger/leaves/%D9%A1",          # ARABIC-INDIC DIGIT ONE
                 "/v1/ledger/leaves/%EF%BC%91",       # FULLWIDTH DIGIT ONE
                 "/v1/ledger/leaves/%E0%A5%A7",       # DEVANAGARI DIGIT ONE
                 "/v1/ledger/proof?index=%D9%A1",
                 "/v1/ledger/proof?index=%201",
                 "/v1/ledger/proof?index=1_0",
                 "/v1/images?limit=%D9%A3",
                 "/v1/audit/sweeps/%D9%A3"):
        st, r = raw(immd.sock, "GET", path)
        assert st == 400, (path, st, r)
        assert "ASCII" in r["error"]["message"] or "0-9" in r["error"]["message"], r
    cp = immd.fails("ledger", "proof", "--index", "٣", code=2)
    assert "ASCII" in cp.stderr
