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


def _plain(obj: Any) -> bool:
    """True when ``obj`` is made of str, int, bool, None, dicts with str keys, lists and tuples
    only: the quick check, without the paths _reject_floats builds for its message."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return True
    if t is dict:
        return all(type(k) is str and _plain(v) for k, v in obj.items())
    if t is list or t is tuple:
        return all(_plain(v) for v in obj)
    return False  # a float, or a subclass: the careful walk decides


def canonical_json(obj: Any) -> bytes:
    if not _plain(obj):
        _reject_floats(obj)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(obj: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``obj``."""
    return sha256_digest(canonical_json(obj))
