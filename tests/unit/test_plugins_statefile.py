"""imm.plugins.statefile: the one atomic, durable state file of the plugins."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imm.errors import RouterError
from imm.plugins import statefile
from imm.plugins.statefile import RouteState, atomic_write, write_json


def test_atomic_write_replaces_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["state.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, "three", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(statefile.os, "fsync", spy)
    target = tmp_path / "state.json"
    atomic_write(target, "x")
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.endswith(".tmp")
    assert Path(synced[1]) == tmp_path  # the rename made durable


def test_route_state_round_trip_and_missing_file(tmp_path: Path) -> None:
    st = RouteState(tmp_path / "dns" / "edge.json", "dns router edge", "what DNS holds")
    assert st.load() == {}
    routes = {"web": {"i-1": {"address": "10.0.0.1", "weight": 50, "state": "ready"}}}
    st.save(routes)
    assert st.load() == routes
    write_json(st.path, {"version": 1, "routes": ["not", "a", "table"]})
    assert st.load() == {}


def test_an_unreadable_route_state_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "edge.json"
    path.write_text("{half")
    with pytest.raises(RouterError) as err:
        RouteState(path, "cloudlb router lb", "what the load balancer holds").load()
    assert str(path) in err.value.message and "cloudlb router lb" in err.value.message
    assert "move it away to start from what the load balancer holds" in err.value.message


def test_move_into_place_renames_a_checked_file_durably(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new, cfg = tmp_path / "haproxy.cfg.new", tmp_path / "haproxy.cfg"
    atomic_write(new, "global\n", mode=0o644)
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(statefile.os, "fsync", spy)
    statefile.move_into_place(new, cfg)
    assert cfg.read_text() == "global\n" and not new.exists()
    assert synced == [str(tmp_path)]
