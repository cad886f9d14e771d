"""Tile paths as C2SP tlog-tiles writes them (its own examples)."""

from __future__ import annotations

import pytest

from imm.catalog import tiles
from imm.errors import BadRequest


@pytest.mark.parametrize("path, parsed", [
    ("0/x001/x234/067", (0, 1234067, None)),  # the spec's example index
    ("0/000", (0, 0, None)),
    ("2/000.p/1", (2, 0, 1)),
    ("1/x001/000.p/17", (1, 1000, 17)),
    ("entries/x001/x234/067.p/255", (None, 1234067, 255)),
])
def test_paths(path: str, parsed: tuple) -> None:
    assert tiles.parse_path(path) == parsed
    assert tiles.tile_path(*parsed) == path


@pytest.mark.parametrize("path", ["0/1234", "0/x1/000", "0/001/002", "0/x000/001", "64/000",
                                  "01/000", "0/000.p/256", "0/000.p/0", "0/000.p/", "tiles/000",
                                  "0", ""])
def test_bad_paths(path: str) -> None:
    with pytest.raises(BadRequest, match="bad tile path"):
        tiles.parse_path(path)

