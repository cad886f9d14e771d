"""haproxy's runtime API (the admin socket): the client, and the parsing of what it answers.

Two haproxy 2.6 behaviours shape the router (both checked against the real binary):

* ``add server`` creates the server in maintenance and does not inherit ``default-server``; once
  enabled it takes traffic *before* its first health check. Hence: add with ``weight 0`` and every
  check option, ``enable health``, ``enable server``; ``set_weights`` refuses to raise a server
  from 0 until its check has passed.
* The state file restores the runtime weight only when the configured (initial) weight equals
  the one in the file, and drops a forced drain when the initial weight goes from 0 to > 0. So a
  server is written back with ``weight <srv_iweight>`` (its initial weight), never its current one.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....errors import RouterError

# srv_op_state
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
# srv_admin_state bits (haproxy server-t.h)
ADM_FMAINT, ADM_IMAINT, ADM_CMAINT = 0x01, 0x02, 0x04
ADM_FDRAIN, ADM_IDRAIN = 0x08, 0x10
ADM_RMAINT, ADM_FQDN_CHANGED = 0x20, 0x40
ADM_MAINT = ADM_FMAINT | ADM_IMAINT | ADM_CMAINT | ADM_RMAINT
ADM_DRAIN = ADM_FDRAIN | ADM_IDRAIN
# srv_check_state bits
CHK_CONFIGURED, CHK_ENABLED = 0x02, 0x04
# srv_check_status (enum healthcheck_status; its numbers are part of the state-file format).
# srv_check_result is no use for "has it been checked": it is reset to 0 when a check starts.
HCHK_UNKNOWN, HCHK_INI, HCHK_START = 0, 1, 2
HCHK_PASSED = {6, 9, 15, 16, 20}  # L4OK, L6OK, L7OKD, L7OKCD, PROCOK

_NAME_OK = re.compile(r"^[A-Za-z0-9_.:-]+$")


def server_name(name: str) -> str:
    """The haproxy server name for an imm backend name (instance ids usually pass unchanged)."""
    if _NAME_OK.match(name) and len(name) <= 64:
        return name
    safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:48]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


@dataclass
class ServerState:
    """One row of ``show servers state`` (format version 1)."""

    fields: dict[str, str]

    @property
    def backend(self) -> str:
        return self.fields["be_name"]

    @property
    def name(self) -> str:
        return self.fields["srv_name"]

    def number(self, key: str) -> int:
        try:
            return int(self.fields.get(key, "0"))
        except ValueError:
            return 0

    @property
    def host(self) -> str:
        addr = self.fields.get("srv_addr", "-")
        if addr == "-":
            addr = self.fields.get("srv_fqdn", "-")
        return addr

    @property
    def address(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.fields.get('srv_port', '0')}"

    @property
    def state(self) -> str:
        admin = self.number("srv_admin_state")
        if admin & ADM_MAINT:
            return "maint"
        if admin & ADM_DRAIN:
            return "drain"
        return "ready"

    @property
    def checked(self) -> bool:
        return bool(self.number("srv_check_state") & CHK_CONFIGURED)

    @property
    def healthy(self) -> bool | None:
        """None until the first check completes; servers without checks follow their op state."""
        op = self.number("srv_op_state")
        if not self.checked:
            return op == OP_RUNNING
        status = self.number("srv_check_status")
        if status in (HCHK_UNKNOWN, HCHK_INI, HCHK_START):
            return None
        return op == OP_RUNNING and status in HCHK_PASSED


DOWN_INTERVAL_MS = 250  # a route's default down_interval_ms, unless its check interval is shorter


def down_interval_ms(rs: Mapping[str, Any]) -> int:
    """haproxy's ``downinter`` for a route's servers: how soon a server that is down, a new one
    included (haproxy adds a server down until its first check), is checked again."""
    return int(rs.get("down_interval_ms") or min(int(rs["check_interval_ms"]), DOWN_INTERVAL_MS))


def fmt_host(host: str) -> str:
    """An address as haproxy takes it: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_servers_state(text: str) -> tuple[list[str], list[ServerState]]:
    """Parse ``show servers state`` output: (column names, rows)."""
    columns: list[str] = []
    rows: list[ServerState] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            columns = line[1:].split()
            continue
        if not columns:
            continue  # the version line
        values = line.split()
        rows.append(ServerState(dict(zip(columns, values, strict=False))))
    return columns, rows


def parse_stat_sessions(text: str) -> dict[str, int]:
    """Current sessions (``scur``) per server from ``show stat <backend> 4 -1`` CSV output."""
    header: list[str] = []
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            continue
        if not header or not line.strip():
            continue
        row = dict(zip(header, line.split(","), strict=False))
        sv = row.get("svname", "")
        if sv in ("FRONTEND", "BACKEND", ""):
            continue
        try:
            out[sv] = int(row.get("scur") or 0)
        except ValueError:
            out[sv] = 0
    return out


def state_file_text(columns: list[str], rows: list[ServerState]) -> str:
    """A server-state file haproxy accepts: admin states it would reject are normalized."""
    lines = ["1", "# " + " ".join(columns)]
    for row in rows:
        f = dict(row.fields)
        admin = int(f.get("srv_admin_state", "0") or 0)
        admin &= ~(ADM_IDRAIN | ADM_IMAINT | ADM_RMAINT | ADM_FQDN_CHANGED)
        if admin & ADM_FMAINT:
            admin &= ~ADM_FDRAIN  # maint wins; haproxy refuses FMAINT|FDRAIN in a state file
        f["srv_admin_state"] = str(admin)
        lines.append(" ".join(f.get(c, "-") for c in columns))
    return "\n".join(lines) + "\n"


class AdminSocket:
    """haproxy's runtime API: one command per connection, plain text in and out."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.path))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")



class RuntimeAPI:
    """The admin socket's commands as the router uses them, each failure named: the router,
    route and server, the command, and what to check."""

    def __init__(self, name: str, socket_path: Path, timeout_s: float, external: bool,
                 log_file: Path | None) -> None:
        self.name = name
        self.socket_path = socket_path
        self.external = external
        self.log_file = log_file
        self.socket = AdminSocket(socket_path, timeout_s)

    def command(self, cmd: str) -> str:
        """One raw command (OSError when the socket cannot be reached)."""
        return self.socket.command(cmd)

    def cmd(self, cmd: str, *, route: str | None = None, server: str | None = None,
             expect: str | None = None, check: bool = True) -> str:
        """Run one runtime API command; with ``check``, any unexpected answer is an error."""
        where = f"router {self.name}" + (f", route {route}" if route else "") + (
            f", server {server}" if server else "")
        try:
            out = self.socket.command(cmd)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            hint = ("check that haproxy runs with 'stats socket "
                    f"{self.socket_path} level admin'" if self.external
                    else f"haproxy is not answering; see {self.log_file}")
            raise RouterError(f"{where}: cannot reach the haproxy admin socket "
                              f"{self.socket_path} for '{cmd}': {e.strerror or e}; {hint}",
                              detail={"command": cmd}) from None
        except PermissionError:
            raise RouterError(f"{where}: permission denied on the haproxy admin socket "
                              f"{self.socket_path} for '{cmd}'; run immd as the socket's owner "
                              f"or give the socket a group immd is in", detail={"command": cmd}
                              ) from None
        except OSError as e:
            raise RouterError(f"{where}: haproxy admin socket {self.socket_path} failed on "
                              f"'{cmd}': {e}; check haproxy's health and load",
                              detail={"command": cmd}) from None
        if not check:
            return out
        text = out.strip()
        if (expect is not None and text.startswith(expect)) or (expect is None and not text):
            return out
        raise RouterError(f"{where}: haproxy refused '{cmd}': {text[:300] or '(no answer)'}",
                          detail={"command": cmd, "answer": text})

    def rows(self, route: str) -> list[ServerState]:
        out = self.cmd(f"show servers state {route}", route=route, check=False)
        if "Can't find backend" in out:
            raise RouterError(self.no_backend_message(route))
        return parse_servers_state(out)[1]

    def dump_rows(self) -> tuple[list[str], list[ServerState]]:
        return parse_servers_state(self.cmd("show servers state", check=False))

    def backend_exists(self, route: str) -> bool:
        return "Can't find backend" not in self.cmd(f"show servers state {route}", check=False)

    def no_backend_message(self, route: str) -> str:
        if self.external:
            return (f"router {self.name}: haproxy at {self.socket_path} has no backend {route!r}; "
                    f"add 'backend {route}' to its haproxy.cfg and reload it")
        return (f"router {self.name}: route {route!r} is not declared; call ensure_route() "
                f"with its bind address first")

    def info_pid(self) -> int | None:
        try:
            out = self.socket.command("show info")
        except OSError:
            return None
        m = re.search(r"^Pid: (\d+)$", out, re.M)
        return int(m.group(1)) if m else None


    def check_admin(self) -> None:
        level = self.cmd("show cli level", check=False).strip()
        if level != "admin":
            raise RouterError(f"router {self.name}: the haproxy admin socket {self.socket_path} "
                              f"grants level {level!r}, not 'admin'; add 'level admin' to its "
                              f"'stats socket' line")
