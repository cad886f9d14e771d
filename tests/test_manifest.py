"""Image manifests: validation with clear messages, canonical form, stable digests."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest

from imm.catalog.canonical import canonical_json
from imm.catalog.manifest import (
    build_manifest,
    image_digest,
    normalize_name,
    parse_digest,
    parse_label,
    parse_layer,
    validate_labels,
    validate_manifest,
    validate_name,
    validate_version,
)
from imm.errors import BadRequest

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def base(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "team/web", "version": "1.4.2", "content_digest": D1, "content_kind": "tree",
    }
    args.update(kw)
    return build_manifest(**args)


# --- names, versions, digests ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "team/web", "a", "web-1.2_x", "0day", "a" * 128])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Web", "-web", ".web", "team//web", "team/", "team/.hidden", "team/../x",
             "we b", "a" * 129, "web@1", "/web"],
)
def test_bad_names_say_the_rule(name: str) -> None:
    with pytest.raises(BadRequest) as e:
        validate_name(name)
    assert repr(name) in e.value.message and "starting with a letter or digit" in e.value.message


@pytest.mark.parametrize(
    ("raw", "want"),
    [("Ubuntu_22.04 Web", "ubuntu_22.04-web"), ("amazon-ebs.web", "amazon-ebs.web"),
     ("--Team/ Web!", "team/web-")],
)
def test_normalize_name(raw: str, want: str) -> None:
    assert normalize_name(raw) == want


def test_normalize_name_gives_up_on_nothing() -> None:
    with pytest.raises(BadRequest, match="bad image name"):
        normalize_name("!!!")


@pytest.mark.parametrize("v", ["1", "1.4.2", "2024.11.20+build.7", "v1.0-rc1", "A_b", "9" * 64])
def test_valid_versions(v: str) -> None:
    assert validate_version(v) == v


@pytest.mark.parametrize("v", ["", "-1", ".1", "1 2", "1/2", "1@2", "9" * 65, "é"])
def test_bad_versions(v: str) -> None:
    with pytest.raises(BadRequest, match=r"bad version .*: use 1-64 characters"):
        validate_version(v)


def test_parse_digest() -> None:
    assert parse_digest(D1) == D1
    for bad in ["a" * 64, "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha512:" + "a" * 64,
                "sha256:" + "a" * 12, 5]:
        with pytest.raises(BadRequest, match="bad digest .*sha256: followed by 64 lowercase"):
            parse_digest(bad)  # type: ignore[arg-type]


# --- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [("tier=frontend", ("tier", "frontend")), ("example.com/team=ops", ("example.com/team", "ops")),
     ("a=", ("a", "")), ("k=v=w", ("k", "v=w")), ("k=hello world", ("k", "hello world")),
     ("app.kubernetes.io/name=web", ("app.kubernetes.io/name", "web")),
     ("K_1.x=ünïcode", ("K_1.x", "ünïcode"))],
)
def test_parse_label(text: str, pair: tuple[str, str]) -> None:
    assert parse_label(text) == pair


@pytest.mark.parametrize(
    ("text", "why"),
    [("novalue", "expected KEY=VALUE"), ("=v", "bad label key ''"), ("-a=v", "bad label key"),
     ("a-=v", "bad label key"), ("Bad_Prefix/x=v", "bad label key"), ("a/b/c=v", "bad label key"),
     ("x" * 64 + "=v", "bad label key"), ("k=" + "v" * 257, "at most 256 printable"),
     ("k=a\nb", "no control characters"), ("k=\x00", "no control characters")],
)
def test_bad_labels(text: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse_label(text)


def test_validate_labels() -> None:
    assert validate_labels(None) == {}
    assert validate_labels({"tier": "web"}) == {"tier": "web"}
    with pytest.raises(BadRequest, match="'tier'.*is not a string"):
        validate_labels({"tier": 3})  # type: ignore[dict-item]


# --- layers ----------------------------------------------------------------------------------


def test_parse_layer() -> None:
    assert parse_layer("runtime=python@3.12.1") == {
        "role": "runtime", "name": "python", "version": "3.12.1"
    }
    assert parse_layer(f"os=debian@12#{D2}") == {
        "role": "os", "name": "debian", "version": "12", "digest": D2
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [("python@3.12", "expected ROLE=NAME@VERSION"), ("lang=python@3", "role 'lang' is not one"),
     ("os=debian", "expected ROLE=NAME@VERSION"), ("os=Debian@12", "bad image name 'Debian'"),
     ("os=debian@", "bad version ''"), ("os=debian@12#sha256:xyz", "bad digest"),
     ("OS=debian@12", "role 'OS'")],
)
def test_bad_layers(text: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse_layer(text)


# --- build_manifest --------------------------------------------------------------------------


def test_build_manifest_shape_and_order() -> None:
    m = base(
        layers=["app=web@1.4.2", "os=debian@12", {"role": "runtime", "name": "python",
                                                   "version": "3.12"}],
        boot_actions=["render /etc/web.conf", "set hostname"],
        parent=D2, labels={"tier": "frontend"}, provenance={"git": {"commit": "abc"}},
    )
    assert m == {
        "name": "team/web", "version": "1.4.2", "content_digest": D1, "content_kind": "tree",
        "layers": [
            {"role": "os", "name": "debian", "version": "12"},
            {"role": "runtime", "name": "python", "version": "3.12"},
            {"role": "app", "name": "web", "version": "1.4.2"},
        ],
        "boot_actions": ["render /etc/web.conf", "set hostname"],
        "parent": D2, "labels": {"tier": "frontend"}, "provenance": {"git": {"commit": "abc"}},
        "ladder_step": 4,
    }
    assert image_digest(m) == "sha256:" + hashlib.sha256(canonical_json(m)).hexdigest()


def test_defaults_and_ladder() -> None:
    m = base()
    assert (m["layers"], m["boot_actions"], m["parent"], m["labels"], m["provenance"]) == (
        [], [], None, {}, {}
    )
    assert m["ladder_step"] == 0
    m3 = base(layers=["os=debian@12", "runtime=jre@21", "app=svc@2"],
              boot_actions=["curl -O https://cdn.example.com/plugin.jar"])
    assert m3["ladder_step"] == 3


def test_boot_action_order_matters_for_digest() -> None:
    a = base(boot_actions=["one", "two"])
    b = base(boot_actions=["two", "one"])
    assert image_digest(a) != image_digest(b)


def test_same_inputs_same_digest_in_another_process() -> None:
    m = base(layers=["os=debian@12"], labels={"b": "2", "a": "1"}, provenance={"z": 1, "é": "x"})
    code = (
        "from imm.catalog.manifest import build_manifest, image_digest\n"
        "print(image_digest(build_manifest(name='team/web', version='1.4.2', content_digest="
        f"{D1!r}, content_kind='tree', layers=['os=debian@12'], labels={{'a': '1', 'b': '2'}}, "
        "provenance={'é': 'x', 'z': 1})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == image_digest(m)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"content_digest": "sha256:abc"}, "bad digest 'sha256:abc' for content digest"),
        ({"content_digest": "SHA256:" + "a" * 64}, "bad digest"),
        ({"parent": "web@1"}, "bad digest 'web@1' for parent"),
        ({"content_kind": "iso"}, "bad content kind 'iso': expected one of file, tree, packer"),
        ({"name": "Web"}, "bad image name 'Web'"),
        ({"version": ""}, "bad version ''"),
        ({"layers": ["os=debian@12", "os=ubuntu@24.04"]},
         "layer role 'os' given twice .*os=debian@12 and os=ubuntu@24.04"),
        ({"layers": [{"role": "os", "name": "debian"}]}, "a layer has role, name, version"),
        ({"layers": [{"role": "os", "name": "d", "version": "1", "x": 1}]}, "got name, role"),
        ({"layers": "os=debian@12"}, "layers must be a list"),
        ({"boot_actions": [""]}, "bad boot action 0: '' must be a non-empty string"),
        ({"boot_actions": ["ok", "   "]}, "bad boot action 1"),
        ({"boot_actions": ["x" * 1025]}, "1025 characters, at most 1024"),
        ({"boot_actions": "render config"}, "not one string"),
        ({"labels": {"bad key": "v"}}, "bad label key 'bad key'"),
        ({"provenance": {"t": 1.5}}, "bad provenance: canonical JSON forbids floats"),
        ({"provenance": ["x"]}, "provenance must be an object"),
    ],
)
def test_build_manifest_refuses(kw: dict[str, Any], why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        base(**kw)


def test_provenance_is_copied() -> None:
    prov: dict[str, Any] = {"git": {"commit": "abc"}}
    m = base(provenance=prov)
    prov["git"]["commit"] = "changed"
    assert m["provenance"] == {"git": {"commit": "abc"}}


def test_validate_manifest_roundtrip_and_forgery() -> None:
    m = base(layers=["os=debian@12", "runtime=python@3", "app=web@1"],
             boot_actions=["pip install flask"])
    assert validate_manifest(json.loads(canonical_json(m))) == m
    forged = dict(m, ladder_step=4)
    with pytest.raises(BadRequest, match="ladder_step differ.*must be 3"):
        validate_manifest(forged)
    with pytest.raises(BadRequest, match="missing field.*ladder_step; unknown field.*x"):
        validate_manifest({k: v for k, v in dict(m, x=1).items() if k != "ladder_step"})
    unsorted = dict(m, layers=list(reversed(m["layers"])))
    with pytest.raises(BadRequest, match="layers differ"):
        validate_manifest(unsorted)
