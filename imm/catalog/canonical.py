"""Canonical JSON: the one encoding everything hashed or signed goes through.

UTF-8, keys sorted, ``separators=(",", ":")``, no floats, no NaN. Times are integer Unix seconds
or RFC 3339 strings, never floats, so the same record always has the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _reject_floats(obj: Any, path: str = "$") -> None:
    if isinstance(obj, float):
        raise ValueError(f"canonical JSON forbids floats (at {path}: {obj!r}); use integers or strings")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"canonical JSON needs string keys (at {path}: {k!r})")
            _reject_floats(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _reject_floats(v, f"{path}[{i}]")


def canonical_json(obj: Any) -> bytes:
    _reject_floats(obj)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(obj: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``obj``."""
    return sha256_digest(canonical_json(obj))
