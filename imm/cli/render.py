"""Output for people (aligned tables, key: value blocks) and for scripts (--json)."""

from __future__ import annotations

import sys

from .fastjson import dumps

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def emit_json(data: Any) -> None:
    sys.stdout.write(dumps(data) + "\n")  # json.dumps(data, indent=2, ensure_ascii=False,
    # default=str), without importing json


def emit_list(items: Sequence[Any], next_cursor: Any = None) -> None:
    """Every list command's --json: ``{"items": [...], "next": CURSOR-or-null}``."""
    emit_json({"items": list(items), "next": next_cursor})


def short(digest: str | None, n: int = 19) -> str:
    if not digest:
        return "-"
    return digest[:n]


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
          empty: str = "(none)") -> None:
    if not rows:
        print(empty)
        return
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, (list, tuple)):
            return ",".join(str(x) for x in v) or "-"
        return str(v)

    # a first header written "  ID" indents the whole table (a table under a heading)
    first = columns[0][1]
    indent = " " * (len(first) - len(first.lstrip()))
    columns = [(columns[0][0], first.lstrip()), *columns[1:]]
    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    out = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip()]
    for c in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    sys.stdout.write("\n".join(indent + line for line in out) + "\n")


def block(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v) or "-"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) or "-"
        print(f"{k.ljust(width)}  {'-' if v is None else v}")
