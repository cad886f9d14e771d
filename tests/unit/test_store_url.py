"""The state URL: which backend it names, where a SQLite file goes, where the password comes from,
and the [state] section of the config that carries it."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm import config
from imm.errors import ConfigError
from imm.store.sqlite import Database as SqliteDatabase
from imm.store.url import kind, open_state, password, sqlite_path


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///var/lib/imm/imm.db", Path("/s")) == Path("/var/lib/imm/imm.db")
    assert sqlite_path("sqlite:///{state_dir}/x.db", Path("/s")) == Path("/s/x.db")
    with pytest.raises(ConfigError, match="names no file"):
        sqlite_path("sqlite:///", Path("/s"))


def test_the_default_is_sqlite_under_the_state_dir(tmp_path: Path) -> None:
    s = config.parse("", "t.toml", state_dir=str(tmp_path))
    assert s.state_location == f"sqlite:///{tmp_path}/imm.db"
    db = open_state(s.state_location, [], state_dir=tmp_path)
    assert isinstance(db, SqliteDatabase) and db.path == tmp_path / "imm.db"


def test_an_unknown_scheme_or_key_is_refused_without_showing_a_password() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse('[state]\nurl = "mysql://u:pw@h/d"\n', "t.toml")
    assert "pw" not in e.value.message and "sqlite:///PATH or postgresql://" in e.value.message
    with pytest.raises(ConfigError, match="unknown \\[state\\] key"):
        config.parse('[state]\npassword = "x"\n', "t.toml")
    with pytest.raises(ConfigError, match="neither"):
        kind("redis://h")


def test_the_password_comes_from_an_env_var_or_a_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMM_T_PW", "from-env")
    assert password("IMM_T_PW") == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert password(file=str(tmp_path / "pw")) == "from-file"
    assert password() is None
    with pytest.raises(ConfigError, match="both set"):
        password("IMM_T_PW", str(tmp_path / "pw"))
    with pytest.raises(ConfigError, match="cannot be read"):
        password(file=str(tmp_path / "missing"))
