"""What a benchmark hands to ``python -m bench``: its headline rows, as JSON.

Each benchmark takes ``--json PATH`` and, when given, writes there a list of rows, each a
dict with ``figure`` (what was measured), ``imm`` and ``peer`` (formatted figures), ``ratio``
(a float, imm against the peer in the same run, oriented as ``goal`` says), ``goal`` (the
text of the goal, or "") and ``met`` (bool, or None when there is no goal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row(figure: str, imm: str, peer: str, ratio: float, goal: str = "",
        met: bool | None = None) -> dict[str, Any]:
    return {"figure": figure, "imm": imm, "peer": peer, "ratio": ratio, "goal": goal, "met": met}


def write(path: Path | str | None, command: str, rows: list[dict[str, Any]]) -> None:
    if path is None:
        return
    Path(path).write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
