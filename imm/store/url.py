"""The state URL: ``sqlite:///PATH`` (the embedded default) or ``postgresql://...`` (libpq).

``open_state`` builds the backend a URL names. The PostgreSQL password never sits in the URL: it
comes from an environment variable or a file the config names, and is handed to libpq apart.
The PostgreSQL backend is imported only when a URL asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .base import Backend, Schema

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


def sqlite_path(url: str, state_dir: Path) -> Path:
    """``sqlite:///abs/path.db``, ``sqlite:///{state_dir}/imm.db`` or ``sqlite:///~/x.db``."""
    rest = url[len(SQLITE):]
    if not rest:
        raise ConfigError(f"state.url {url!r} names no file; e.g. sqlite:///{{state_dir}}/imm.db")
    if rest.startswith("{state_dir}"):
        rest = str(state_dir) + rest[len("{state_dir}"):]
    elif rest.startswith("~"):
        rest = os.path.expanduser(rest)
    else:
        rest = "/" + rest.lstrip("/")
    return Path(rest)


def kind(url: str) -> str:
    if url.startswith(SQLITE):
        return "sqlite"
    if url.startswith(POSTGRES):
        return "postgresql"
    shown = url.split("@")[-1] if "@" in url else url
    raise ConfigError(f"state.url {shown!r} is neither sqlite:///PATH nor postgresql://...")


def password(env: str = "", file: str = "") -> str | None:
    """The database password from the environment variable ``env`` or the file ``file``."""
    if env and file:
        raise ConfigError("[state] password_env and password_file are both set; keep one")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"[state] password_env names {env!r}, which is not set in immd's "
                              f"environment")
        return value
    if file:
        try:
            return Path(file).read_text("utf-8").rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"[state] password_file {file!r} cannot be read: {e.strerror}") from None
    return None


def open_state(url: str, schemas: Sequence[Schema], *, state_dir: Path,
               password_env: str = "", password_file: str = "") -> Backend:
    """The backend ``url`` names (not opened yet: call ``open()``)."""
    if kind(url) == "sqlite":
        from .sqlite import Database as SqliteDatabase

        return SqliteDatabase(sqlite_path(url, state_dir), schemas)
    from .postgres import Database as PgDatabase
    from .postgres import check_url

    check_url(url)  # a password inside the URL is refused before anything else
    return PgDatabase(url, schemas, password=password(password_env, password_file))
