"""Transitional: the store moved to :mod:`imm.store`.

This bridge keeps the daemon and ``imm/rollout/schema.py`` working while they move to
``imm.store.sqlite.Database(path, schemas)``; it is deleted with their change. It loads only
schemas that exist in this tree and fails loudly on one that does not.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..store import Schema, execute_script
from ..store import sqlite as _sqlite

__all__ = ["Database", "execute_script", "migration"]

_ROLLOUT = Schema("rollout")
migration: Any = _ROLLOUT.migration  # the rollout schema's decorator until it declares its own SCHEMA


class Database(_sqlite.Database):
    def __init__(self, path: Path, readers: int = 4) -> None:
        schemas = []
        for module in ("imm.catalog.schema", "imm.rollout.schema", "imm.audit.schema"):
            schemas.append(getattr(importlib.import_module(module), "SCHEMA", _ROLLOUT))
        super().__init__(path, schemas, readers)
