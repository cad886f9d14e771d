"""immd.toml into Settings: defaults, the admin rule, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imm.config import AdminRule, load, parse
from imm.errors import ConfigError


def test_the_admin_rule_comes_from_the_daemon_section(tmp_path: Path) -> None:
    s = parse('[daemon]\nadmin_group = "ops"\nowner_is_admin = false\n', "t.toml",
              state_dir=str(tmp_path))
    assert s.admin_rule == AdminRule("ops", owner_is_admin=False)
    assert parse("", "t.toml", state_dir=str(tmp_path)).admin_rule == AdminRule("imm-admin", True)


def test_config_does_not_load_the_daemon() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, imm.config; "
                          "print(any(m.startswith('imm.daemon') for m in sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_paths_expand_the_state_dir(tmp_path: Path) -> None:
    s = parse('[daemon]\nsocket = "{state_dir}/x.sock"\n', "t.toml", state_dir=str(tmp_path))
    assert s.state_dir == tmp_path and s.socket == tmp_path / "x.sock"
    assert s.db_path == tmp_path / "imm.db" and s.keys_dir == tmp_path / "keys"


@pytest.mark.parametrize(("text", "names"), [
    ("[daemon\n", "not valid TOML"),
    ("[nonsense]\n", "unknown section(s) ['nonsense']"),
    ("[daemon]\ncolour = 1\n", "unknown [daemon] key(s) ['colour']"),
    ('[daemon]\nsocket_mode = "0666"\n', "daemon.socket_mode 0666 gives access to everyone"),
    ('[daemon]\nsocket_mode = "rw"\n', "daemon.socket_mode 'rw' is not octal"),
    ('[daemon]\ntcp = "0.0.0.0:80"\n', "daemon.tcp '0.0.0.0:80' must be a loopback"),
    ("[daemon]\nmax_body_bytes = 10\n", "daemon.max_body_bytes 10 must be an integer ≥ 1024"),
    ('[daemon]\nowner_is_admin = "no"\n', "daemon.owner_is_admin 'no' must be true or false"),
    ('[ledger]\norigin = "a b"\n', "ledger.origin 'a b' must be one word"),
    ("[providers.x]\nregion = 'r'\n", '[providers.x] needs kind = "..."'),
    ("[providers]\nx = 1\n", "[providers.NAME] entries must be tables"),
    ("[reconcile]\ninterval_s = 0.01\n", "reconcile.interval_s 0.01 must be 0 (off) or"),
    ('[reconcile]\ninterval_s = "5s"\n', "reconcile.interval_s '5s' must be 0 (off) or"),
    ("[reconcile]\nevery = 5\n", "[reconcile] takes one key, interval_s"),
    ("[cluster]\nlease_s = 0\n", "cluster.lease_s 0 must be a number of seconds from 1 to 300"),
    ('[cluster]\nlease_s = "10s"\n', "cluster.lease_s '10s' must be a number of seconds"),
    ("[cluster]\nlease_s = 1000\n", "cluster.lease_s 1000 must be"),
    ("[cluster]\nttl = 3\n", "unknown [cluster] key(s) ['ttl']; known: ['lease_s']"),
])
def test_bad_input_names_the_file_and_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "immd.toml", state_dir=str(tmp_path))
    assert e.value.message.startswith("immd.toml: ") and names in e.value.message


def test_the_lease_defaults_to_10_seconds(tmp_path: Path) -> None:
    assert parse("", "t.toml", state_dir=str(tmp_path)).cluster_lease_s == 10.0
    assert parse("[cluster]\nlease_s = 2.5\n", "t.toml",
                 state_dir=str(tmp_path)).cluster_lease_s == 2.5


def test_load_says_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; pass an existing --config"):
        load(str(tmp_path / "absent.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot be read"):
        load(str(tmp_path / "bin.toml"))
    assert load(None, state_dir=str(tmp_path)).source == "embedded default config"


def test_the_reconciler_interval_comes_from_the_reconcile_section(tmp_path: Path) -> None:
    from imm.daemon.core import Daemon
    assert parse("", "t.toml", state_dir=str(tmp_path)).heal_interval_s == 5.0
    s = parse("[reconcile]\ninterval_s = 0.5\n", "t.toml", state_dir=str(tmp_path))
    assert s.heal_interval_s == 0.5
    assert Daemon(s).timings.heal_interval_s == 0.5
    assert parse("[reconcile]\ninterval_s = 0\n", "t.toml",
                 state_dir=str(tmp_path)).heal_interval_s == 0
