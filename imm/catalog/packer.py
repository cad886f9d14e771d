"""Import of Packer's manifest post-processor output (``packer-manifest.json``).

The file looks like::

    {"builds": [{"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000,
                 "files": null, "artifact_id": "us-east-1:ami-0abc,us-west-2:ami-0def",
                 "packer_run_uuid": "6d5d...", "custom_data": {"version": "1.4.2"}}],
     "last_run_uuid": "6d5d..."}

Packer appends to the file on every run, so by default only the builds of the last run are
imported. One build becomes one image with one artifact per region. Validation is strict: a
hand-edited or truncated file is refused with the JSON path of what is wrong, never half
imported. What older Packer versions did not write is optional: ``custom_data`` (added in
Packer 1.3), ``files`` and ``build_time`` may be missing, in old runs appended to the same file too.

An artifact is recorded under the builder's cloud (``aws``, ``gcp``, ``azure``, ``openstack``,
else the builder type) unless a provider map says which configured provider stands for it
(``import-packer --provider NAME``, or ``[packer] providers`` in immd's config).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from imm.catalog.canonical import canonical_json, digest_of
from imm.catalog.manifest import (
    normalize_name,
    validate_label_key,
    validate_label_value,
    validate_name,
    validate_version,
)
from imm.errors import BadRequest

Artifact = tuple[str, str, str]

_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EVERY_BUILDER = "*"  # a provider map key that applies to every builder (--provider NAME)


def parse(data: bytes | str, source: str) -> dict[str, Any]:
    """Parse and validate a Packer manifest; ``source`` (a file name) goes into every error."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise BadRequest(
                f"{source}: not UTF-8 (byte {e.start}); expected the JSON file Packer's manifest "
                "post-processor writes",
                detail={"source": source},
            ) from e
    else:
        text = data
    if not text.strip():
        raise BadRequest(
            f"{source}: the file is empty; expected the JSON file Packer's manifest "
            "post-processor writes (was the build interrupted?)",
            detail={"source": source},
        )
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"{source}: nests too deeply to be a Packer manifest; give the file "
                         "Packer's manifest post-processor writes",
                         detail={"source": source}) from None
    except json.JSONDecodeError as e:
        end = text.rstrip()
        truncated = e.pos >= len(end) or not end.endswith("}")
        hint = (
            "the file ends too early: it is truncated (was the build interrupted?)"
            if truncated
            else "fix the file or let Packer write it again"
        )
        raise BadRequest(
            f"{source}: not valid JSON: {e.msg}{' ' if e.msg.endswith(' at') else ': '}"
            f"line {e.lineno} column {e.colno}; {hint}",
            detail={"source": source, "line": e.lineno, "column": e.colno},
        ) from e
    except ValueError as e:
        raise BadRequest(f"{source}: {e}", detail={"source": source}) from e

    _require(doc, dict, "", source, "an object with builds and last_run_uuid")
    builds = _field(doc, "builds", list, "", source, "a list of builds")
    if not builds:
        raise BadRequest(
            f"{source}: builds is an empty list; there is nothing to import (did the Packer "
            "build produce any artifact?)",
            detail={"source": source, "path": "builds"},
        )
    _field(doc, "last_run_uuid", str, "", source, "the uuid of the last Packer run")
    for i, build in enumerate(builds):
        _check_build(build, f"builds[{i}]", source)
    return doc


def select_builds(manifest: Mapping[str, Any], *, all_runs: bool = False) -> list[dict[str, Any]]:
    """The builds of the last run (``last_run_uuid``), or every build with ``all_runs``."""
    builds: list[dict[str, Any]] = list(manifest["builds"])
    if all_runs:
        return builds
    last = manifest["last_run_uuid"]
    chosen = [b for b in builds if b["packer_run_uuid"] == last]
    if not chosen:
        runs = sorted({b["packer_run_uuid"] for b in builds})
        raise BadRequest(
            f"last_run_uuid {last!r} matches no build (the file holds runs {', '.join(runs)}); "
            "import every run with --all-runs, or let Packer write the manifest again",
            detail={"last_run_uuid": last, "runs": runs},
        )
    return chosen


def cloud_of(builder_type: str) -> str:
    """The cloud a Packer builder type builds for: the provider kind that runs its images."""
    if builder_type.startswith("amazon-"):
        return "aws"
    return {"googlecompute": "gcp", "azure-arm": "azure", "azure-chroot": "azure",
            "openstack": "openstack"}.get(builder_type, builder_type)


def provider_for(builder_type: str, providers: Mapping[str, str] | None) -> str:
    """The provider name an artifact of ``builder_type`` is recorded under: the map's entry for
    the builder type, else for its cloud, else the cloud's name."""
    cloud = cloud_of(builder_type)
    providers = providers or {}
    return (providers.get(EVERY_BUILDER) or providers.get(builder_type) or providers.get(cloud)
            or cloud)


def artifacts_for(build: Mapping[str, Any],
                  providers: Mapping[str, str] | None = None) -> list[Artifact]:
    """``(provider, region, image_id)`` of every copy a build made."""
    return [(provider_for(build["builder_type"], providers), region, image_id)
            for _cloud, region, image_id in _artifacts(build)]


def _artifacts(build: Mapping[str, Any]) -> list[Artifact]:
    btype: str = build["builder_type"]
    artifact_id: str = build["artifact_id"]
    custom: Mapping[str, str] = build.get("custom_data") or {}
    where = f"Packer build {build['name']!r} ({btype})"
    if not artifact_id.strip():
        raise BadRequest(
            f"{where} has an empty artifact_id: it made no image to register",
            detail={"build": build["name"]},
        )
    if btype.startswith("amazon-"):
        return _aws_artifacts(artifact_id, where)
    if btype == "googlecompute":
        region = custom.get("zone") or custom.get("region") or "global"
        return [("gcp", region, artifact_id)]
    if btype == "azure-arm":
        region = custom.get("region") or custom.get("location") or "global"
        return [("azure", region, artifact_id)]
    if btype == "openstack":
        return [("openstack", custom.get("region") or "default", artifact_id)]
    return [(btype, "default", artifact_id)]


def image_specs(
    manifest: Mapping[str, Any],
    *,
    name: str | None = None,
    version: str | None = None,
    all_runs: bool = False,
    providers: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One image spec per selected build, ready for the catalog.

    Each is ``{"name", "version", "content_digest", "content_kind": "packer", "labels",
    "provenance", "artifacts"}``; ``artifacts`` is a list of ``(provider, region, image_id)``.
    The content digest is the digest of the build object as Packer wrote it.
    """
    if name is not None:
        validate_name(name)
    if version is not None:
        validate_version(version)
    specs: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for build in select_builds(manifest, all_runs=all_runs):
        spec = _spec(build, name, version, providers)
        key = (spec["name"], spec["version"])
        label = f"{build['name']} ({build['builder_type']}, run {build['packer_run_uuid']})"
        if key in seen:
            raise BadRequest(
                f"Packer builds {seen[key]} and {label} would both become {key[0]}@{key[1]}; "
                "pass --name/--version to tell them apart, or select one run (drop --all-runs)",
                detail={"name": key[0], "version": key[1]},
            )
        seen[key] = label
        specs.append(spec)
    return specs


# --- internals -------------------------------------------------------------------------------


def _spec(build: Mapping[str, Any], name: str | None, version: str | None,
          providers: Mapping[str, str] | None) -> dict[str, Any]:
    custom: Mapping[str, str] = build.get("custom_data") or {}
    if name is None:
        try:
            name = normalize_name(build["name"])
        except BadRequest as e:
            raise BadRequest(
                f"Packer build name {build['name']!r} does not make an image name ({e.message}); "
                "pass --name NAME",
                detail={"build": build["name"]},
            ) from e
    if version is None:
        version = custom.get("version") or (str(build["build_time"]) if "build_time" in build
                                            else None)
        if version is None:
            raise BadRequest(
                f"Packer build {build['name']!r} (run {build['packer_run_uuid']}) has neither "
                "custom_data.version nor build_time (an old Packer wrote it); pass --version "
                "VERSION",
                detail={"build": build["name"]},
            )
        try:
            validate_version(version)
        except BadRequest as e:
            raise BadRequest(
                f"Packer build {build['name']!r}: custom_data version {version!r} is not a valid "
                f"version ({e.message}); pass --version VERSION",
                detail={"build": build["name"]},
            ) from e
    labels: dict[str, str] = {}
    other: dict[str, str] = {}
    for key, value in custom.items():
        try:
            labels[validate_label_key(key)] = validate_label_value(key, value)
        except BadRequest:
            other[key] = value
    packer: dict[str, Any] = {
        "builder_type": build["builder_type"],
        "build_time": build.get("build_time"),
        "packer_run_uuid": build["packer_run_uuid"],
        "files": build.get("files"),
        "name": build["name"],
    }
    if other:
        packer["custom_data"] = other
    return {
        "name": name,
        "version": version,
        "content_digest": digest_of(build),
        "content_kind": "packer",
        "labels": labels,
        "provenance": {"packer": packer},
        "artifacts": artifacts_for(build, providers),
    }


def _aws_artifacts(artifact_id: str, where: str) -> list[Artifact]:
    out: list[Artifact] = []
    seen: set[str] = set()
    for pair in artifact_id.split(","):
        region, colon, ami = pair.strip().partition(":")
        if not colon or not _AWS_REGION.fullmatch(region) or not _AMI.fullmatch(ami):
            raise BadRequest(
                f"{where}: artifact_id part {pair!r} is not REGION:AMI-ID "
                "(e.g. us-east-1:ami-0abc1234def567890)",
                detail={"artifact_id": artifact_id},
            )
        if region in seen:
            raise BadRequest(
                f"{where}: artifact_id names region {region} twice ({artifact_id!r})",
                detail={"artifact_id": artifact_id},
            )
        seen.add(region)
        out.append(("aws", region, ami))
    return out


def _check_build(build: Any, path: str, source: str) -> None:
    _require(build, dict, path, source, "a build object")
    _nonempty(_field(build, "name", str, path, source, "the build name"), path, "name", source)
    _nonempty(
        _field(build, "builder_type", str, path, source, "the builder type, e.g. amazon-ebs"),
        path, "builder_type", source,
    )
    # build_time, files and custom_data: optional, as older Packer versions wrote builds
    build_time = _optional(build, "build_time", int, path, source, "Unix seconds as an integer")
    if build_time is not None and build_time < 0:
        _fail(source, f"{path}.build_time", build_time, "Unix seconds, not negative")
    files = _optional(build, "files", (list, type(None)), path, source,
                      "null or a list of files")
    for j, f in enumerate(files or ()):
        fpath = f"{path}.files[{j}]"
        _require(f, dict, fpath, source, 'an object {"name", "size"}')
        _field(f, "name", str, fpath, source, "a file name")
        if _field(f, "size", int, fpath, source, "a size in bytes") < 0:
            _fail(source, f"{fpath}.size", f["size"], "a size in bytes, not negative")
    _field(build, "artifact_id", str, path, source, "the artifact id string")
    _nonempty(
        _field(build, "packer_run_uuid", str, path, source, "the Packer run uuid"),
        path, "packer_run_uuid", source,
    )
    custom = _optional(build, "custom_data", (dict, type(None)), path, source,
                       "null or an object of strings")
    for key, value in (custom or {}).items():
        _require(value, str, _join(f"{path}.custom_data", key), source, "a string")
    try:
        canonical_json(build)
    except ValueError as e:
        raise BadRequest(
            f"{source}: {path} holds a value that cannot be hashed canonically ({e})",
            detail={"source": source, "path": path},
        ) from e


def _field(obj: dict[str, Any], key: str, types: Any, path: str, source: str, what: str) -> Any:
    fpath = _join(path, key)
    if key not in obj:
        raise BadRequest(
            f"{source}: {fpath} is missing; expected {what} (is this a file written by Packer's "
            "manifest post-processor?)",
            detail={"source": source, "path": fpath},
        )
    return _require(obj[key], types, fpath, source, what)


def _optional(obj: dict[str, Any], key: str, types: Any, path: str, source: str,
              what: str) -> Any:
    if key not in obj:
        return None
    return _require(obj[key], types, _join(path, key), source, what)


def _require(value: Any, types: Any, path: str, source: str, what: str) -> Any:
    ok = isinstance(value, types) and not (isinstance(value, bool) and types is int)
    if not ok:
        _fail(source, path or "the top level", value, what)
    return value


def _nonempty(value: str, path: str, key: str, source: str) -> None:
    if not value.strip():
        _fail(source, _join(path, key), value, "a non-empty string")


def _fail(source: str, path: str, value: Any, what: str) -> NoReturn:
    raise BadRequest(
        f"{source}: {path} is {_describe(value)}; expected {what}",
        detail={"source": source, "path": path},
    )


def _describe(value: Any) -> str:
    kind = {
        type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
        list: "a list", dict: "an object",
    }.get(type(value), type(value).__name__)
    if isinstance(value, (list, dict)):
        return kind
    shown = repr(value) if not isinstance(value, str) else json.dumps(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return kind if value is None else f"{kind} ({shown})"


def _join(path: str, key: str) -> str:
    part = key if _IDENT.fullmatch(key) else json.dumps(key)
    if not path:
        return part
    return f"{path}.{part}" if _IDENT.fullmatch(key) else f"{path}[{part}]"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object; keep one")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; use a number or a string")
