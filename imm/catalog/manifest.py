"""Image manifests: the canonical JSON that describes one image and whose digest is its id.

A manifest holds no timestamps or host-specific values, so the same bytes described the same
way give the same image digest on every machine. Every value is validated here, with errors
that name the value and the rule it broke.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from imm.catalog.canonical import canonical_json, digest_of
from imm.catalog.ladder import ROLES, ladder_step
from imm.errors import BadRequest

CONTENT_KINDS = ("file", "tree", "packer")
MAX_BOOT_ACTION = 1024
MAX_LABEL_VALUE = 256

NAME_RULE = (
    "1-128 characters of a-z 0-9 . _ - and /, starting with a letter or digit, "
    "each /-separated part starting with a letter or digit (e.g. web or team/web)"
)
VERSION_RULE = "1-64 characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
DIGEST_RULE = "sha256: followed by 64 lowercase hex digits"
LABEL_KEY_RULE = (
    "an optional DNS-subdomain prefix and /, then a name of at most 63 characters: letters, "
    "digits, - _ . , starting and ending with a letter or digit (e.g. tier or example.com/tier)"
)

_NAME = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
_NAME_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LAYER = re.compile(r"(?P<role>[^=]*)=(?P<name>[^@#]*)@(?P<version>[^#]*)(?:#(?P<digest>.*))?")
_LAYER_KEYS = {"role", "name", "version", "digest"}


def validate_name(s: str) -> str:
    """Return the image name ``s`` if it follows :data:`NAME_RULE`, else raise BadRequest."""
    if (
        not isinstance(s, str)
        or not _NAME.fullmatch(s)
        or not all(_NAME_PART.fullmatch(part) for part in s.split("/"))
    ):
        raise BadRequest(f"bad image name {s!r}: use {NAME_RULE}", detail={"name": repr(s)})
    return s


def normalize_name(s: str) -> str:
    """Best-effort image name from a free-form one (e.g. a Packer build name): lower-case, runs
    of other characters turned into ``-``. Raise BadRequest when nothing valid remains."""
    parts = []
    for part in str(s).lower().split("/"):
        part = re.sub(r"[^a-z0-9._-]+", "-", part)
        part = re.sub(r"^[^a-z0-9]+", "", part)
        if part:
            parts.append(part)
    return validate_name("/".join(parts)[:128].rstrip("/"))


def validate_version(s: str) -> str:
    """Return the version ``s`` if it follows :data:`VERSION_RULE`, else raise BadRequest."""
    if not isinstance(s, str) or not _VERSION.fullmatch(s):
        raise BadRequest(f"bad version {s!r}: use {VERSION_RULE}", detail={"version": repr(s)})
    return s


def parse_digest(s: str) -> str:
    """Return ``s`` if it is a full image or content digest, else raise BadRequest."""
    if not isinstance(s, str) or not _DIGEST.fullmatch(s):
        raise BadRequest(f"bad digest {s!r}: expected {DIGEST_RULE}", detail={"digest": repr(s)})
    return s


def validate_label_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise BadRequest(f"bad label key {key!r}: use {LABEL_KEY_RULE}", detail={"key": repr(key)})
    prefix, slash, name = key.rpartition("/")
    ok = bool(_LABEL_NAME.fullmatch(name))
    if slash:
        ok = ok and 0 < len(prefix) <= 253 and all(
            _DNS_LABEL.fullmatch(p) for p in prefix.split(".")
        )
    if not ok:
        raise BadRequest(f"bad label key {key!r}: use {LABEL_KEY_RULE}", detail={"key": key})
    return key


def validate_label_value(key: str, value: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(
            f"bad value for label {key!r}: {value!r} is not a string", detail={"key": key}
        )
    if len(value) > MAX_LABEL_VALUE or not value.isprintable():
        raise BadRequest(
            f"bad value for label {key!r}: {value[:40]!r}{'...' if len(value) > 40 else ''} "
            f"must be at most {MAX_LABEL_VALUE} printable characters, no control characters",
            detail={"key": key},
        )
    return value


def parse_label(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` (the value may be empty) into a validated ``(key, value)``."""
    key, eq, value = str(text).partition("=")
    if not eq:
        raise BadRequest(
            f"bad label {text!r}: expected KEY=VALUE, e.g. tier=frontend", detail={"label": text}
        )
    return validate_label_key(key), validate_label_value(key, value)


def validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Return a plain dict of validated labels (``None`` gives ``{}``)."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise BadRequest(f"labels must be an object of strings, not {type(labels).__name__}")
    return {validate_label_key(k): validate_label_value(k, v) for k, v in labels.items()}


def parse_layer(text: str) -> dict[str, str]:
    """Parse ``ROLE=NAME@VERSION[#sha256:<hex>]`` into a layer dict.

    ROLE is one of os, runtime, framework, app; the digest, when known, pins the layer's bytes.
    """
    m = _LAYER.fullmatch(str(text))
    if not m:
        raise BadRequest(
            f"bad layer {text!r}: expected ROLE=NAME@VERSION[#sha256:<hex>] with ROLE one of "
            f"{', '.join(ROLES)}, e.g. runtime=python@3.12.1",
            detail={"layer": text},
        )
    layer = {"role": m["role"], "name": m["name"], "version": m["version"]}
    if m["digest"] is not None:
        layer["digest"] = m["digest"]
    return _check_layer(layer, f"layer {text!r}")


def build_manifest(
    *,
    name: str,
    version: str,
    content_digest: str,
    content_kind: str,
    layers: Iterable[Mapping[str, str] | str] = (),
    boot_actions: Iterable[str] = (),
    parent: str | None = None,
    labels: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate everything and return the canonical manifest of one image.

    ``layers`` are dicts from :func:`parse_layer` or their ``ROLE=NAME@VERSION`` text; each role
    at most once; they are stored in role order (os, runtime, framework, app). Boot actions
    keep their order. The ladder step is derived, never taken from the caller.
    """
    validate_name(name)
    validate_version(version)
    content_digest = _digest_field(content_digest, "content digest")
    if content_kind not in CONTENT_KINDS:
        raise BadRequest(
            f"bad content kind {content_kind!r}: expected one of {', '.join(CONTENT_KINDS)}",
            detail={"content_kind": repr(content_kind)},
        )
    checked_layers = _check_layers(layers)
    actions = _check_boot_actions(boot_actions)
    if parent is not None:
        parent = _digest_field(parent, "parent")
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "content_digest": content_digest,
        "content_kind": content_kind,
        "layers": checked_layers,
        "boot_actions": actions,
        "parent": parent,
        "labels": validate_labels(labels),
        "provenance": _check_provenance(provenance),
        "ladder_step": ladder_step(checked_layers, actions),
    }
    return manifest


def validate_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Check a manifest received from elsewhere (API, envelope): it must be exactly what
    :func:`build_manifest` makes of its own fields, so a forged ladder step or an unsorted or
    extra field is refused."""
    if not isinstance(manifest, Mapping):
        raise BadRequest(f"an image manifest must be an object, not {type(manifest).__name__}")
    expected = {
        "name", "version", "content_digest", "content_kind", "layers", "boot_actions", "parent",
        "labels", "provenance", "ladder_step",
    }
    missing, extra = expected - manifest.keys(), manifest.keys() - expected
    if missing or extra:
        raise BadRequest(
            "bad image manifest: "
            + "; ".join(
                f"{what} field(s) {', '.join(sorted(keys))}"
                for what, keys in (("missing", missing), ("unknown", extra))
                if keys
            ),
        )
    rebuilt = build_manifest(**{k: manifest[k] for k in expected - {"ladder_step"}})
    differ = sorted(
        k for k in expected if canonical_json(rebuilt[k]) != canonical_json(manifest[k])
    )
    if differ:
        raise BadRequest(
            f"bad image manifest for {rebuilt['name']}@{rebuilt['version']}: field(s) "
            f"{', '.join(differ)} differ from what the manifest's own values give "
            f"(e.g. ladder_step must be {rebuilt['ladder_step']}, layers in role order); "
            "rebuild it rather than editing it",
            detail={"fields": differ},
        )
    return rebuilt


def image_digest(manifest: Mapping[str, Any]) -> str:
    """The image digest: ``sha256:`` of the manifest's canonical JSON."""
    return digest_of(manifest)


# --- internals -------------------------------------------------------------------------------


def _digest_field(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise BadRequest(
            f"bad digest {value!r} for {what}: expected {DIGEST_RULE}",
            detail={what.replace(" ", "_"): repr(value)},
        )
    return value


def _check_layer(layer: Mapping[str, Any], what: str) -> dict[str, str]:
    if not isinstance(layer, Mapping):
        raise BadRequest(f"bad {what}: expected ROLE=NAME@VERSION or an object")
    unknown = set(layer) - _LAYER_KEYS
    if unknown or not {"role", "name", "version"} <= set(layer):
        raise BadRequest(
            f"bad {what}: a layer has role, name, version and optionally digest "
            f"(got {', '.join(sorted(map(str, layer)))})"
        )
    if layer["role"] not in ROLES:
        raise BadRequest(
            f"bad {what}: role {layer['role']!r} is not one of {', '.join(ROLES)}",
            detail={"role": repr(layer["role"])},
        )
    out = {
        "role": layer["role"],
        "name": _in_context(validate_name, layer["name"], what),
        "version": _in_context(validate_version, layer["version"], what),
    }
    if "digest" in layer:
        out["digest"] = _digest_field(layer["digest"], f"{what}")
    return out


def _in_context(check: Any, value: Any, what: str) -> str:
    try:
        return str(check(value))
    except BadRequest as e:
        raise BadRequest(f"{what}: {e.message}", detail=e.detail) from e


def _check_layers(layers: Iterable[Mapping[str, str] | str]) -> list[dict[str, str]]:
    if isinstance(layers, (str, Mapping)):
        raise BadRequest("layers must be a list of ROLE=NAME@VERSION strings or layer objects")
    by_role: dict[str, dict[str, str]] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, str):
            checked = parse_layer(layer)
        else:
            checked = _check_layer(layer, f"layer {i}")
        role = checked["role"]
        if role in by_role:
            raise BadRequest(
                f"layer role {role!r} given twice ({_layer_text(by_role[role])} and "
                f"{_layer_text(checked)}): an image has at most one layer per role",
                detail={"role": role},
            )
        by_role[role] = checked
    return [by_role[r] for r in ROLES if r in by_role]


def _layer_text(layer: Mapping[str, str]) -> str:
    return f"{layer['role']}={layer['name']}@{layer['version']}"


def _check_boot_actions(actions: Iterable[str]) -> list[str]:
    if isinstance(actions, str):
        raise BadRequest("boot actions must be a list of strings, not one string")
    out = []
    for i, action in enumerate(actions):
        if not isinstance(action, str) or not action.strip():
            raise BadRequest(
                f"bad boot action {i}: {action!r} must be a non-empty string",
                detail={"index": i},
            )
        if len(action) > MAX_BOOT_ACTION:
            raise BadRequest(
                f"bad boot action {i}: {action[:40]!r}... is {len(action)} characters, "
                f"at most {MAX_BOOT_ACTION}; move long scripts into the image",
                detail={"index": i},
            )
        out.append(action)
    return out


def _check_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    if provenance is None:
        return {}
    if not isinstance(provenance, Mapping):
        raise BadRequest(f"provenance must be an object, not {type(provenance).__name__}")
    try:
        out: dict[str, Any] = json.loads(canonical_json(dict(provenance)))  # a deep, plain copy
    except (ValueError, TypeError) as e:
        raise BadRequest(f"bad provenance: {e}") from e
    return out
