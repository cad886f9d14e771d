"""immd's start-up checks what the config says before it creates any state: a mistake in
[services] or [audit] is named, and the state directory (key, database) is not created."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.config import load
from imm.daemon.core import Daemon
from imm.errors import ConfigError

BAD = {
    "an unknown provider in a service": (
        '[services.web]\nimage = "app"\ncount = 2\ntargets = [{ provider = "nowhere", '
        'region = "r1" }]\n', "nowhere"),
    "a negative audit interval": ('[audit]\ninterval_s = -5\n', "interval_s -5"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_leaves_no_state_behind(tmp_path: Path, case: str) -> None:
    text, named = BAD[case]
    cfg = tmp_path / "immd.toml"
    cfg.write_text(text)
    state = tmp_path / "state"
    d = Daemon(load(str(cfg), state_dir=str(state), socket=str(tmp_path / "s")))
    with pytest.raises(ConfigError) as e:
        d.open("test")
    assert named in e.value.message
    assert not state.exists(), sorted(p.name for p in state.rglob("*"))


def test_a_good_config_creates_its_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = Daemon(load(None, state_dir=str(state), socket=str(tmp_path / "s")))
    d.open("test")
    try:
        assert (state / "imm.db").exists()
    finally:
        d.close()
