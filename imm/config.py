"""Typed settings read from TOML.

``immd`` with no ``--config`` runs on the embedded default (``imm/default_config/immd.toml``);
``--state-dir`` and ``--socket`` override the paths of any config.
"""

from __future__ import annotations

import grp
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_NAME = "immd.toml"
SECTIONS = {"daemon", "state", "ledger", "providers", "routers", "services", "audit", "plugins",
            "packer", "protect", "trust", "analysis", "notifications", "signer", "dashboard",
            "reconcile", "cluster"}
DAEMON_KEYS = {
    "state_dir", "socket", "socket_mode", "socket_group", "admin_group", "owner_is_admin",
    "max_body_bytes", "tcp", "log_level", "image_roots",
}
STATE_KEYS = {"url", "password_env", "password_file"}
CLUSTER_KEYS = {"lease_s"}
# [cluster] lease_s bounds: shorter leases fail over sooner but renew more often (every lease_s/4)
LEASE_MIN_S, LEASE_MAX_S = 1, 300


@dataclass(frozen=True)
class AdminRule:
    """Who may change things: root, members of ``group``, and (``owner_is_admin``) the user
    immd runs as. A system install sets owner_is_admin = false: local instances run as immd's
    user, and they must not be able to roll out or revoke."""

    group: str
    owner_is_admin: bool = True


@dataclass
class Settings:
    source: str
    state_dir: Path
    socket: Path
    socket_mode: int = 0o660
    socket_group: str = ""
    admin_group: str = "imm-admin"
    owner_is_admin: bool = True
    max_body_bytes: int = 1 << 20
    tcp: str = ""
    # directories immd may read images from by path, for API clients that cannot pass a
    # descriptor; none by default: immctl passes the image as an open descriptor
    image_roots: list[Path] = field(default_factory=list)
    log_level: str = "info"
    ledger_origin: str = "imm.local/ledger"
    # sqlite:///PATH or postgresql://... ("" = sqlite under state_dir); the password is never here
    state_url: str = ""
    state_password_env: str = ""
    state_password_file: str = ""
    # One ledger checkpoint per committed batch of writes (0), or at most one per this many ms
    # (the head then trails the last records by at most that long; it is always signed and of
    # a committed tree).
    checkpoint_interval_ms: int = 0
    # [reconcile] interval_s: how often the fleet reconciler compares each service with its
    # desired state (0 = off)
    heal_interval_s: float = 5.0
    # [cluster] lease_s: with several immd on one PostgreSQL database, the longest a dead
    # leader's work waits before another immd takes it over (imm/store/lease.py)
    cluster_lease_s: float = 10.0
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, Any] = field(default_factory=dict)
    # [packer] providers: builder type or cloud (aws, gcp, azure, openstack) -> provider name
    packer_providers: dict[str, str] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)  # [analysis]: prometheus_url, ...
    notifications: dict[str, Any] = field(default_factory=dict)  # [notifications.NAME]
    signer: dict[str, Any] = field(default_factory=dict)  # [signer]: kind + that kind's keys
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def admin_rule(self) -> AdminRule:
        return AdminRule(self.admin_group, self.owner_is_admin)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "imm.db"

    @property
    def state_location(self) -> str:
        """The state URL in force: ``[state] url`` or SQLite under the state dir."""
        return self.state_url or f"sqlite:///{self.db_path}"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"


def default_config_text() -> str:
    return (resources.files("imm") / "default_config" / DEFAULT_CONFIG_NAME).read_text("utf-8")


def _err(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _table(source: str, data: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    """Section ``[name]`` of ``data`` (empty when absent); refused unless a table of ``keys``."""
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise _err(source, f"[{name}] must be a table")
    bad = set(section) - keys
    if bad:
        raise _err(source, f"unknown [{name}] key(s) {sorted(bad)}; known: {sorted(keys)}")
    return section


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expand(path: str, state_dir: str | None = None) -> Path:
    if state_dir is not None:
        path = path.replace("{state_dir}", state_dir)
    return Path(os.path.expanduser(path)).absolute()


def parse(text: str, source: str, *, state_dir: str | None = None,
          socket: str | None = None) -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _err(source, f"not valid TOML: {e}") from None
    unknown = set(data) - SECTIONS
    if unknown:
        raise _err(source, f"unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    d = _table(source, data, "daemon", DAEMON_KEYS)
    sd = state_dir if state_dir is not None else str(d.get("state_dir", "~/.local/state/imm"))
    state = _expand(sd)
    sock = _expand(socket if socket is not None else str(d.get("socket", "{state_dir}/immd.sock")),
                   str(state))
    try:
        mode = int(str(d.get("socket_mode", "0660")), 8)
    except ValueError:
        raise _err(source, f"daemon.socket_mode {d.get('socket_mode')!r} is not octal") from None
    if mode & 0o007:
        raise _err(source, f"daemon.socket_mode {mode:04o} gives access to everyone; use 0660")
    group = str(d.get("socket_group", ""))
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise _err(source, f"daemon.socket_group {group!r} does not exist") from None
    tcp = str(d.get("tcp", ""))
    if tcp:
        host, _, port = tcp.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "[::1]", "::1") or not port.isdigit():
            raise _err(source, f"daemon.tcp {tcp!r} must be a loopback host:port, e.g. 127.0.0.1:8765")
    max_body = d.get("max_body_bytes", 1 << 20)
    if not isinstance(max_body, int) or max_body < 1024:
        raise _err(source, f"daemon.max_body_bytes {max_body!r} must be an integer ≥ 1024")
    owner_is_admin = d.get("owner_is_admin", True)
    if not isinstance(owner_is_admin, bool):
        raise _err(source, f"daemon.owner_is_admin {owner_is_admin!r} must be true or false")
    roots = d.get("image_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and r.startswith("/")
                                              and "\0" not in r for r in roots):
        raise _err(source, f"daemon.image_roots {roots!r} must be a list of absolute directory "
                           "paths")
    image_roots = [Path(os.path.realpath(r)) for r in roots]
    st = _table(source, data, "state", STATE_KEYS)
    for key in STATE_KEYS:
        if not isinstance(st.get(key, ""), str):
            raise _err(source, f"state.{key} must be a string")
    state_url = str(st.get("url", ""))
    if state_url and not state_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        shown = state_url.rsplit("@", 1)[-1]
        raise _err(source, f"state.url {shown!r} must be sqlite:///PATH or postgresql://...")
    if state_url.startswith("sqlite:///"):
        state_url = state_url.replace("{state_dir}", str(state))
    signer = data.get("signer", {"kind": "file"})
    if not isinstance(signer, dict) or not isinstance(signer.setdefault("kind", "file"), str):
        raise _err(source, '[signer] must be a table with kind = "file" or "pkcs11" (or a plugin\'s)')
    ledger = data.get("ledger", {})
    origin = str(ledger.get("origin", "imm.local/ledger"))
    if not origin or any(c in origin for c in " +\n\t"):
        raise _err(source, f"ledger.origin {origin!r} must be one word without spaces or '+'")
    cp_interval = ledger.get("checkpoint_interval_ms", 0)
    if isinstance(cp_interval, bool) or not isinstance(cp_interval, int) \
            or not 0 <= cp_interval <= 60_000:
        raise _err(source, f"ledger.checkpoint_interval_ms {cp_interval!r} must be an integer "
                           "from 0 (one checkpoint per committed batch) to 60000")
    reconcile = data.get("reconcile", {})
    if not isinstance(reconcile, dict) or set(reconcile) - {"interval_s"}:
        raise _err(source, "[reconcile] takes one key, interval_s = SECONDS (how often the fleet "
                           "reconciler runs; 0 = off)")
    heal_interval = reconcile.get("interval_s", 5.0)
    if not _is_number(heal_interval) or not (heal_interval == 0 or 0.1 <= heal_interval <= 3600):
        raise _err(source, f"reconcile.interval_s {heal_interval!r} must be 0 (off) or a number "
                           "of seconds from 0.1 to 3600")

    lease_s = _table(source, data, "cluster", CLUSTER_KEYS).get("lease_s", 10)
    if not _is_number(lease_s) or not LEASE_MIN_S <= lease_s <= LEASE_MAX_S:
        raise _err(source, f"cluster.lease_s {lease_s!r} must be a number of seconds from "
                           f"{LEASE_MIN_S} to {LEASE_MAX_S} (how long a dead leader's rollouts "
                           "wait for another immd; default 10)")

    def tables(name: str) -> dict[str, dict[str, Any]]:
        section = data.get(name, {})
        if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
            raise _err(source, f"[{name}.NAME] entries must be tables")
        return {k: dict(v) for k, v in section.items()}

    providers = tables("providers")
    routers = tables("routers")
    for what, entries in (("providers", providers), ("routers", routers)):
        for name, entry in entries.items():
            if "kind" not in entry:
                raise _err(source, f"[{what}.{name}] needs kind = \"...\"")
    packer_section = data.get("packer", {})
    if not isinstance(packer_section, dict) or set(packer_section) - {"providers"}:
        raise _err(source, "[packer] takes one key, providers = { BUILDER-TYPE-OR-CLOUD = "
                           "\"PROVIDER\" }")
    packer_providers = packer_section.get("providers", {})
    if not isinstance(packer_providers, dict):
        raise _err(source, "[packer] providers must be a table, e.g. { amazon-ebs = \"aws-prod\" }")
    for key, value in packer_providers.items():
        if value not in providers:
            raise _err(source, f"[packer] providers.{key} = {value!r} is not a configured "
                               f"provider; configured: {', '.join(sorted(providers)) or 'none'}")
    return Settings(
        source=source, state_dir=state, socket=sock, socket_mode=mode, socket_group=group,
        admin_group=str(d.get("admin_group", "imm-admin")), owner_is_admin=owner_is_admin,
        max_body_bytes=max_body, tcp=tcp, image_roots=image_roots,
        log_level=str(d.get("log_level", "info")), ledger_origin=origin,
        checkpoint_interval_ms=cp_interval, heal_interval_s=float(heal_interval),
        cluster_lease_s=float(lease_s), providers=providers,
        routers=routers, services=tables("services"), audit=dict(data.get("audit", {})),
        plugins=dict(data.get("plugins", {})), packer_providers=dict(packer_providers),
        analysis=dict(data.get("analysis", {})),
        notifications=dict(data.get("notifications", {})),
        raw=data, signer=signer, state_url=state_url,
        state_password_env=str(st.get("password_env", "")),
        state_password_file=str(st.get("password_file", "")),
    )


def load(path: str | None = None, *, state_dir: str | None = None,
         socket: str | None = None) -> Settings:
    if path is None:
        return parse(default_config_text(), "embedded default config", state_dir=state_dir,
                     socket=socket)
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing --config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    return parse(text, str(p), state_dir=state_dir, socket=socket)
