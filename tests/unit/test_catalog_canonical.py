"""Canonical JSON (imm.catalog.canonical): exact bytes, and the refusals that keep them exact."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from imm.catalog.canonical import canonical_json, digest_of, sha256_digest


def test_exact_bytes_sorted_keys_no_spaces_raw_utf8():
    obj = {"b": 1, "a": [1, "é", None, True, False], "c": {"z": "", "y": -3}}
    assert canonical_json(obj) == (
        b'{"a":[1,"\xc3\xa9",null,true,false],"b":1,"c":{"y":-3,"z":""}}')


def test_tuples_are_arrays_and_big_integers_stay_exact():
    assert canonical_json((1, (2,), [])) == b"[1,[2],[]]"
    assert canonical_json({"n": 2**70}) == b'{"n":1180591620717411303424}'


def test_the_same_record_in_any_key_order_has_the_same_bytes():
    a = {"x": {"k": 1, "j": 2}, "w": [3]}
    b = json.loads('{"w":[3],"x":{"j":2,"k":1}}')
    assert canonical_json(a) == canonical_json(b)


def refused(message: str):
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (1.5, "canonical JSON forbids floats (at $: 1.5); use integers or strings"),
        ({"a": [1, 2.0]}, "canonical JSON forbids floats (at $.a[1]: 2.0); use integers or strings"),
        ({"a": {"b": (0, [float("nan")])}},
         "canonical JSON forbids floats (at $.a.b[1][0]: nan); use integers or strings"),
        ([{"t": float("inf")}],
         "canonical JSON forbids floats (at $[0].t: inf); use integers or strings"),
        ({1: "x"}, "canonical JSON needs string keys (at $: 1)"),
        ({"a": {None: 1}}, "canonical JSON needs string keys (at $.a: None)"),
        ([[{"ok": 1, 2: 3}]], "canonical JSON needs string keys (at $[0][0]: 2)"),
    ],
)
def test_floats_and_non_string_keys_are_refused_with_their_path(obj, message):
    with refused(message):
        canonical_json(obj)


def test_sha256_digest():
    assert sha256_digest(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert sha256_digest(b"abc") == ("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61"
                                     "f20015ad")


def test_digest_of_hashes_the_canonical_bytes():
    assert digest_of({"b": [1], "a": "é"}) == (
        "sha256:" + hashlib.sha256('{"a":"é","b":[1]}'.encode()).hexdigest())
    with refused("canonical JSON forbids floats (at $.f: 0.1); use integers or strings"):
        digest_of({"f": 0.1})
