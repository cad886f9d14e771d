"""The offline verifier's nesting pre-check, which runs before a recursive parse."""

from __future__ import annotations

from imm.audit.bundle_verify import json_depth_exceeds


def test_depth_counts_brackets_outside_strings() -> None:
    assert not json_depth_exceeds('{"a":[1,{"b":[]}]}', 4)
    assert json_depth_exceeds('{"a":[1,{"b":[]}]}', 3)
    assert not json_depth_exceeds('{"a":"[[[[[[[[[[[[["}', 2)  # inside a string
    assert not json_depth_exceeds('{"a":"\\"[[[[[[[["}', 2)  # an escaped quote stays inside
    assert json_depth_exceeds("[" * 200000, 32)
    assert not json_depth_exceeds("[]" * 100000, 1)  # many, but side by side
