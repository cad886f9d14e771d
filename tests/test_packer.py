"""Packer manifest import: real-looking files, several builds and runs, clear refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from imm.catalog.canonical import digest_of
from imm.catalog.manifest import build_manifest
from imm.catalog.packer import artifacts_for, image_specs, parse, select_builds
from imm.errors import BadRequest

from harness import Immd

RUN1 = "6d5d3185-fa95-44e1-8775-9e64fe2e2d8f"
RUN2 = "b1c2d3e4-0000-4a4a-9b9b-123456789abc"

# What Packer's manifest post-processor writes after two runs of a template with an AWS and a
# GCE source (the second run also built a qemu image).
MANIFEST: dict[str, Any] = {
    "builds": [
        {
            "name": "web",
            "builder_type": "amazon-ebs",
            "build_time": 1700000000,
            "files": None,
            "artifact_id": "us-east-1:ami-0aaaaaaaaaaaaaaaa",
            "packer_run_uuid": RUN1,
            "custom_data": None,
        },
        {
            "name": "web",
            "builder_type": "amazon-ebs",
            "build_time": 1700086400,
            "files": None,
            "artifact_id": "eu-west-1:ami-0123456789abcdef0,us-east-1:ami-0fedcba9876543210",
            "packer_run_uuid": RUN2,
            "custom_data": {"version": "1.4.2", "tier": "frontend", "Built By": "ci job #42"},
        },
        {
            "name": "web-gce",
            "builder_type": "googlecompute",
            "build_time": 1700086460,
            "files": None,
            "artifact_id": "web-1-4-2-1700086460",
            "packer_run_uuid": RUN2,
            "custom_data": {"version": "1.4.2", "zone": "europe-west1-b"},
        },
        {
            "name": "Web_QEMU",
            "builder_type": "qemu",
            "build_time": 1700086500,
            "files": [{"name": "output-web/web.qcow2", "size": 1073741824}],
            "artifact_id": "VM",
            "packer_run_uuid": RUN2,
            "custom_data": {},
        },
    ],
    "last_run_uuid": RUN2,
}


def manifest_bytes(doc: Any = None) -> bytes:
    return json.dumps(MANIFEST if doc is None else doc, indent=2).encode()


def mutated(fn: Any) -> bytes:
    doc = copy.deepcopy(MANIFEST)
    fn(doc)
    return manifest_bytes(doc)


def test_parse_keeps_builds_as_read() -> None:
    doc = parse(manifest_bytes(), "packer-manifest.json")
    assert doc == MANIFEST
    assert parse(manifest_bytes().decode(), "m.json") == MANIFEST
    assert parse(b"\xef\xbb\xbf" + manifest_bytes(), "bom.json") == MANIFEST


def test_select_builds_last_run_by_default() -> None:
    doc = parse(manifest_bytes(), "m.json")
    assert [b["packer_run_uuid"] for b in select_builds(doc)] == [RUN2, RUN2, RUN2]
    assert len(select_builds(doc, all_runs=True)) == 4


def test_select_builds_unknown_last_run() -> None:
    doc = parse(mutated(lambda d: d.update(last_run_uuid="nope")), "m.json")
    with pytest.raises(BadRequest, match=rf"last_run_uuid 'nope' matches no build .*{RUN1}.*"
                                         "--all-runs"):
        select_builds(doc)


def test_artifacts_aws_multi_region() -> None:
    assert artifacts_for(MANIFEST["builds"][1]) == [
        ("aws", "eu-west-1", "ami-0123456789abcdef0"),
        ("aws", "us-east-1", "ami-0fedcba9876543210"),
    ]


@pytest.mark.parametrize(
    ("build", "want"),
    [
        ({"builder_type": "googlecompute", "artifact_id": "img-1", "custom_data": None},
         [("gcp", "global", "img-1")]),
        ({"builder_type": "googlecompute", "artifact_id": "img-1",
          "custom_data": {"region": "us-central1"}}, [("gcp", "us-central1", "img-1")]),
        ({"builder_type": "azure-arm", "artifact_id": "/subscriptions/s/images/web",
          "custom_data": {"location": "westeurope"}},
         [("azure", "westeurope", "/subscriptions/s/images/web")]),
        ({"builder_type": "azure-arm", "artifact_id": "x", "custom_data": None},
         [("azure", "global", "x")]),
        ({"builder_type": "openstack", "artifact_id": "0b1c-uuid", "custom_data": None},
         [("openstack", "default", "0b1c-uuid")]),
        ({"builder_type": "openstack", "artifact_id": "0b1c-uuid",
          "custom_data": {"region": "RegionOne"}}, [("openstack", "RegionOne", "0b1c-uuid")]),
        ({"builder_type": "docker", "artifact_id": "sha256:abcd", "custom_data": None},
         [("docker", "default", "sha256:abcd")]),
        ({"builder_type": "amazon-ebs", "artifact_id": "us-gov-west-1:ami-12345678",
          "custom_data": None}, [("aws", "us-gov-west-1", "ami-12345678")]),
    ],
)
def test_artifacts_other_builders(build: dict[str, Any], want: list[tuple[str, str, str]]) -> None:
    assert artifacts_for({"name": "b", **build}) == want


@pytest.mark.parametrize(
    ("artifact_id", "why"),
    [
        ("ami-0abc1234", "part 'ami-0abc1234' is not REGION:AMI-ID"),
        ("us-east-1:ami-0abc1234,", "part '' is not REGION:AMI-ID"),
        ("us-east-1:vol-0abc1234", "part 'us-east-1:vol-0abc1234'"),
        ("US-EAST-1:ami-0abc1234", "is not REGION:AMI-ID"),
        ("us-east-1:ami-0abc1234,us-east-1:ami-0abc9999", "names region us-east-1 twice"),
        ("", "empty artifact_id"),
    ],
)
def test_bad_aws_artifact_ids(artifact_id: str, why: str) -> None:
    build = {"name": "web", "builder_type": "amazon-ebs", "artifact_id": artifact_id,
             "custom_data": None}
    with pytest.raises(BadRequest, match=why):
        artifacts_for(build)


def test_image_specs_last_run() -> None:
    doc = parse(manifest_bytes(), "m.json")
    specs = image_specs(doc)
    assert [(s["name"], s["version"]) for s in specs] == [
        ("web", "1.4.2"), ("web-gce", "1.4.2"), ("web_qemu", "1700086500"),
    ]
    aws = specs[0]
    assert aws["content_kind"] == "packer"
    assert aws["content_digest"] == digest_of(MANIFEST["builds"][1])
    assert aws["labels"] == {"version": "1.4.2", "tier": "frontend"}
    assert aws["provenance"] == {
        "packer": {
            "builder_type": "amazon-ebs", "build_time": 1700086400, "packer_run_uuid": RUN2,
            "files": None, "name": "web", "custom_data": {"Built By": "ci job #42"},
        }
    }
    assert aws["artifacts"] == [
        ("aws", "eu-west-1", "ami-0123456789abcdef0"),
        ("aws", "us-east-1", "ami-0fedcba9876543210"),
    ]
    assert specs[1]["artifacts"] == [("gcp", "europe-west1-b", "web-1-4-2-1700086460")]
    assert specs[2]["provenance"]["packer"]["files"] == [
        {"name": "output-web/web.qcow2", "size": 1073741824}
    ]
    assert specs[2]["artifacts"] == [("qemu", "default", "VM")]
    # every spec makes a valid manifest
    for s in specs:
        build_manifest(name=s["name"], version=s["version"], content_digest=s["content_digest"],
                       content_kind=s["content_kind"], labels=s["labels"],
                       provenance=s["provenance"])


def test_image_specs_all_runs_and_overrides() -> None:
    doc = parse(manifest_bytes(), "m.json")
    specs = image_specs(doc, all_runs=True)
    assert specs[0]["version"] == "1700000000"  # no custom_data: the build time
    assert specs[0]["labels"] == {} and "custom_data" not in specs[0]["provenance"]["packer"]
    one = {"builds": [MANIFEST["builds"][1]], "last_run_uuid": RUN2}
    [spec] = image_specs(one, name="team/web", version="2.0")
    assert (spec["name"], spec["version"]) == ("team/web", "2.0")


def test_image_specs_same_name_version_is_refused() -> None:
    doc = parse(manifest_bytes(), "m.json")
    with pytest.raises(BadRequest, match=r"would both become app@1.*pass --name/--version"):
        image_specs(doc, name="app", version="1")
    two_runs = mutated(lambda d: d["builds"][0].update(custom_data={"version": "1.4.2"}))
    with pytest.raises(BadRequest, match=r"web@1.4.2.*select one run"):
        image_specs(parse(two_runs, "m.json"), all_runs=True)


def test_image_specs_bad_names_and_versions() -> None:
    bad_name = mutated(lambda d: d["builds"][1].update(name="!!!"))
    with pytest.raises(BadRequest, match=r"build name '!!!' does not make an image name.*--name"):
        image_specs(parse(bad_name, "m.json"))
    bad_version = mutated(lambda d: d["builds"][1]["custom_data"].update(version="1 2"))
    with pytest.raises(BadRequest, match=r"custom_data version '1 2'.*--version VERSION"):
        image_specs(parse(bad_version, "m.json"))
    with pytest.raises(BadRequest, match="bad image name 'Bad'"):
        image_specs(parse(manifest_bytes(), "m.json"), name="Bad")


def test_content_digest_changes_with_any_build_field() -> None:
    doc = parse(manifest_bytes(), "m.json")
    before = image_specs(doc)[0]["content_digest"]
    other = parse(mutated(lambda d: d["builds"][1].update(build_time=1700086401)), "m.json")
    assert image_specs(other)[0]["content_digest"] != before


# --- refusals: every one names the file, the JSON path and what was expected -------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", r"m\.json: the file is empty"),
        (b"  \n", r"m\.json: the file is empty"),
        (manifest_bytes()[:200],
         r"m\.json: not valid JSON: Unterminated string starting at line 9 column 7; "
         "the file ends too early: it is truncated"),
        (b'{"builds": [}',
         r"m\.json: not valid JSON: Expecting value: line 1 column 13; fix the file"),
        (b"\xff\xfe{}", r"m\.json: not UTF-8"),
        (b"[]", r"m\.json: the top level is a list; expected an object"),
        (b'{"last_run_uuid": "x"}', r"m\.json: builds is missing; expected a list of builds"),
        (b'{"builds": [], "last_run_uuid": "x"}', r"m\.json: builds is an empty list"),
        (b'{"builds": {}, "last_run_uuid": "x"}', r"builds is an object; expected a list"),
        (b'{"builds": [1], "last_run_uuid": "x"}', r"builds\[0\] is a number \(1\); expected a "
                                                   "build object"),
        (b'{"builds": [{"name": NaN}]}', r"NaN is not valid JSON"),
        (b'{"builds": [], "builds": []}', r"key 'builds' appears twice"),
    ],
)
def test_malformed_files(data: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse(data, "m.json")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.pop("last_run_uuid"), r"last_run_uuid is missing"),
        (lambda d: d["builds"][1].pop("artifact_id"),
         r"builds\[1\]\.artifact_id is missing; expected the artifact id string"),
        (lambda d: d["builds"][1].update(artifact_id=["us-east-1:ami-0abc"]),
         r"builds\[1\]\.artifact_id is a list; expected the artifact id string"),
        (lambda d: d["builds"][0].update(build_time="1700000000"),
         r'builds\[0\]\.build_time is a string \("1700000000"\); expected Unix seconds'),
        (lambda d: d["builds"][0].update(build_time=1.7e9),
         r"builds\[0\]\.build_time is a number \(1700000000\.0\); expected Unix seconds"),
        (lambda d: d["builds"][0].update(build_time=True), r"build_time is a boolean"),
        (lambda d: d["builds"][0].update(build_time=-1), r"build_time is a number \(-1\); expected "
                                                         "Unix seconds, not negative"),
        (lambda d: d["builds"][3]["files"][0].pop("size"), r"builds\[3\]\.files\[0\]\.size is "
                                                           "missing"),
        (lambda d: d["builds"][3].update(files="web.qcow2"),
         r"builds\[3\]\.files is a string .*expected null or a list of files"),
        (lambda d: d["builds"][2].update(custom_data={"zone": 3}),
         r"builds\[2\]\.custom_data\.zone is a number \(3\); expected a string"),
        (lambda d: d["builds"][2].update(custom_data={"my zone": None}),
         r'builds\[2\]\.custom_data\["my zone"\] is null; expected a string'),
        (lambda d: d["builds"][2].update(custom_data=["a"]), r"custom_data is a list; expected "
                                                             "null or an object"),
        (lambda d: d["builds"][2].update(name=""), r"builds\[2\]\.name is a string \(\"\"\); "
                                                   "expected a non-empty string"),
        (lambda d: d["builds"][2].pop("packer_run_uuid"), r"builds\[2\]\.packer_run_uuid is "
                                                          "missing"),
        (lambda d: d["builds"][2].update(extra={"ratio": 0.5}),
         r"builds\[2\] holds a value that cannot be hashed canonically.*floats"),
    ],
)
def test_wrong_fields_name_the_json_path(change: Any, why: str) -> None:
    with pytest.raises(BadRequest, match=why) as e:
        parse(mutated(change), "packer-manifest.json")
    assert e.value.message.startswith("packer-manifest.json: ")


def test_unknown_build_fields_are_kept_and_hashed() -> None:
    data = mutated(lambda d: d["builds"][1].update(future_field={"x": 1}))
    doc = parse(data, "m.json")
    assert doc["builds"][1]["future_field"] == {"x": 1}
    assert image_specs(doc)[0]["content_digest"] == digest_of(doc["builds"][1])


# --- manifests as Packer versions really write them -------------------------------------------

# Packer 1.0-1.2 (JSON templates): no custom_data in a build (added in Packer 1.3). A QEMU
# build lists its output files; the docker builder's artifact is the committed image's id.
PACKER_1_0 = {
    "builds": [
        {"name": "amazon-ebs", "builder_type": "amazon-ebs", "build_time": 1496275200,
         "files": None, "artifact_id": "us-east-1:ami-1a2b3c4d,us-west-2:ami-5e6f7a8b",
         "packer_run_uuid": "5e9a1f0c-2c43-6a1b-6d4e-3f1c7b2a9d10"},
        {"name": "qemu", "builder_type": "qemu", "build_time": 1496275260,
         "files": [{"name": "output-qemu/packer-qemu", "size": 2147483648}],
         "artifact_id": "VM", "packer_run_uuid": "5e9a1f0c-2c43-6a1b-6d4e-3f1c7b2a9d10"},
        {"name": "docker", "builder_type": "docker", "build_time": 1496275300, "files": None,
         "artifact_id": "sha256:4b8e3c6f1a2d5e7f9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a",
         "packer_run_uuid": "5e9a1f0c-2c43-6a1b-6d4e-3f1c7b2a9d10"},
    ],
    "last_run_uuid": "5e9a1f0c-2c43-6a1b-6d4e-3f1c7b2a9d10",
}

# Packer 1.9-1.11 (HCL2): a build is named after its source block; custom_data is written
# (null when the template sets none). GCE images are global; Azure managed images are ids.
CURRENT_RUN = "c0ffee00-1111-4222-8333-944445555666"
PACKER_CURRENT = {
    "builds": [
        {"name": "web", "builder_type": "amazon-ebs", "build_time": 1764892800, "files": None,
         "artifact_id": "ap-southeast-2:ami-0aa11bb22cc33dd44,eu-central-1:ami-0ee55ff66aa77bb88,"
                        "us-east-1:ami-0cc99dd00ee11ff22",
         "packer_run_uuid": CURRENT_RUN, "custom_data": {"version": "2.3.0", "git_sha": "9f1c2e7"}},
        {"name": "web", "builder_type": "googlecompute", "build_time": 1764892900, "files": None,
         "artifact_id": "web-2-3-0-1764892900", "packer_run_uuid": CURRENT_RUN,
         "custom_data": {"version": "2.3.0"}},
        {"name": "web", "builder_type": "azure-arm", "build_time": 1764893000, "files": None,
         "artifact_id": "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/"
                        "images/providers/Microsoft.Compute/images/web-2.3.0",
         "packer_run_uuid": CURRENT_RUN, "custom_data": {"version": "2.3.0",
                                                         "location": "westeurope"}},
        {"name": "web", "builder_type": "qemu", "build_time": 1764893100,
         "files": [{"name": "output-web/web-2.3.0.qcow2", "size": 1073741824}],
         "artifact_id": "VM", "packer_run_uuid": CURRENT_RUN, "custom_data": None},
        {"name": "web", "builder_type": "docker", "build_time": 1764893200, "files": None,
         "artifact_id": "sha256:9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d",
         "packer_run_uuid": CURRENT_RUN, "custom_data": None},
    ],
    "last_run_uuid": CURRENT_RUN,
}


def test_a_packer_1_0_manifest_imports_without_custom_data() -> None:
    doc = parse(manifest_bytes(PACKER_1_0), "old.json")
    specs = {s["name"]: s for s in image_specs(doc)}
    assert set(specs) == {"amazon-ebs", "qemu", "docker"}
    ebs = specs["amazon-ebs"]
    assert ebs["version"] == "1496275200" and ebs["labels"] == {}
    assert ebs["artifacts"] == [("aws", "us-east-1", "ami-1a2b3c4d"),
                                ("aws", "us-west-2", "ami-5e6f7a8b")]
    assert specs["qemu"]["artifacts"] == [("qemu", "default", "VM")]
    assert specs["qemu"]["provenance"]["packer"]["files"] == PACKER_1_0["builds"][1]["files"]
    assert specs["docker"]["artifacts"] == [
        ("docker", "default", PACKER_1_0["builds"][2]["artifact_id"])]


def test_a_current_manifest_with_every_builder() -> None:
    doc = parse(manifest_bytes(PACKER_CURRENT), "packer-manifest.json")
    # five builds of one source name would all be web@2.3.0: say so, and how to split them
    with pytest.raises(BadRequest, match="would both become web@2.3.0"):
        image_specs(doc)
    arts = [artifacts_for(b) for b in doc["builds"]]
    assert arts[0] == [("aws", "ap-southeast-2", "ami-0aa11bb22cc33dd44"),
                       ("aws", "eu-central-1", "ami-0ee55ff66aa77bb88"),
                       ("aws", "us-east-1", "ami-0cc99dd00ee11ff22")]
    assert arts[1] == [("gcp", "global", "web-2-3-0-1764892900")]
    assert arts[2] == [("azure", "westeurope", PACKER_CURRENT["builds"][2]["artifact_id"])]
    assert arts[3] == [("qemu", "default", "VM")]
    assert arts[4][0][0] == "docker"
    one = copy.deepcopy(PACKER_CURRENT)
    one["builds"] = one["builds"][:1]
    (spec,) = image_specs(parse(manifest_bytes(one), "m.json"))
    assert spec["version"] == "2.3.0" and spec["labels"] == {"version": "2.3.0", "git_sha": "9f1c2e7"}


def test_runs_appended_by_different_packer_versions() -> None:
    """Packer appends every run to the same file: builds of a 1.0-era run stay beside the
    current run's, and neither refuses the other."""
    doc = copy.deepcopy(PACKER_CURRENT)
    doc["builds"] = PACKER_1_0["builds"] + doc["builds"][:1]
    parsed = parse(manifest_bytes(doc), "appended.json")
    (latest,) = image_specs(parsed)
    assert latest["version"] == "2.3.0"
    assert {s["name"] for s in image_specs(parsed, all_runs=True)} == {
        "amazon-ebs", "qemu", "docker", "web"}


def test_a_build_without_build_time_or_version_asks_for_one() -> None:
    doc = copy.deepcopy(PACKER_1_0)
    for b in doc["builds"]:
        del b["build_time"], b["files"]
    parsed = parse(manifest_bytes(doc), "m.json")
    with pytest.raises(BadRequest, match="neither custom_data.version nor build_time.*--version"):
        image_specs(parsed)
    assert {s["version"] for s in image_specs(parsed, version="7")} == {"7"}


def test_provider_maps_record_artifacts_under_configured_names() -> None:
    build = PACKER_CURRENT["builds"][0]
    assert {a[0] for a in artifacts_for(build, {"aws": "aws-prod"})} == {"aws-prod"}
    assert {a[0] for a in artifacts_for(build, {"aws": "x", "amazon-ebs": "aws-ebs"})} == {
        "aws-ebs"}
    assert {a[0] for a in artifacts_for(build, {"*": "only", "aws": "x"})} == {"only"}
    assert artifacts_for(PACKER_CURRENT["builds"][1], {"aws": "aws-prod"})[0][0] == "gcp"
    specs = image_specs(parse(manifest_bytes(PACKER_1_0), "m.json"), providers={"aws": "prod"})
    assert {a[0] for s in specs for a in s["artifacts"]} == {"prod", "qemu", "docker"}


# --- through immd ------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "packer-manifest.json"
AWS = """
[providers.aws-prod]
kind = "aws"
regions = ["us-east-1", "eu-west-1"]
"""
SERVICE = """
[services.web]
targets = [{ provider = "aws-prod", region = "us-east-1", count = 2 }]
"""


def test_the_example_manifest_imports_under_the_configured_aws_provider(tmp_path: Path) -> None:
    d = Immd(tmp_path, AWS + SERVICE).start()
    (img,) = d.json("image", "import-packer", str(EXAMPLE))["images"]
    assert (img["name"], img["version"]) == ("web", "1.4.2")
    arts = {(a["provider"], a["region"], a["image_id"])
            for a in d.json("image", "show", "web@1.4.2")["artifacts"]}
    assert arts == {("aws-prod", "eu-west-1", "ami-0123456789abcdef0"),
                    ("aws-prod", "us-east-1", "ami-0fedcba9876543210")}
    out = d.run("image", "import-packer", str(EXAMPLE), "--all-runs").stdout
    assert "registered web@1764547200" in out and "aws-prod/us-east-1/ami-0a1b2c3d4e5f60718" in out
    cp = d.fails("image", "import-packer", str(EXAMPLE), "--provider", "nope", code=2)
    assert "provider 'nope' is not configured; configured: aws-prod" in cp.stderr


def test_a_refusal_names_the_artifact_under_another_provider(tmp_path: Path) -> None:
    # two AWS accounts: no single provider stands for "aws", so Packer's artifacts land under
    # the cloud's name, and the refusal says where they are and how to fix it
    d = Immd(tmp_path, AWS + AWS.replace("aws-prod", "aws-dr") + SERVICE).start()
    d.run("image", "import-packer", str(EXAMPLE))
    cp = d.fails("rollout", "start", "web", "--image", "web@1.4.2", code=6)
    assert "refused by rule 'artifact-in-every-region'" in cp.stderr
    assert "recorded in us-east-1 under provider 'aws' (ami-0fedcba9876543210)" in cp.stderr
    assert "--provider aws-prod" in cp.stderr
    # the fix the hint gives works: the same build, recorded under aws-prod, resolves there
    d.run("channel", "set", "web/production", "web@1.4.2")
    miss = d.fails("channel", "resolve", "web/production", "--provider", "aws-prod",
                   "--region", "us-east-1", code=3).stderr
    assert "under provider 'aws' in us-east-1 (ami-0fedcba9876543210)" in miss
    d.run("image", "import-packer", str(EXAMPLE), "--provider", "aws-prod", "--version", "1.4.2b")
    d.run("channel", "set", "web/production", "web@1.4.2b")
    got = d.run("channel", "resolve", "web/production", "--provider", "aws-prod",
                "--region", "us-east-1").stdout
    assert got == "ami-0fedcba9876543210\n"


def test_the_config_maps_builders_to_providers(tmp_path: Path) -> None:
    cfg = AWS + AWS.replace("aws-prod", "aws-dr") + '\n[packer]\nproviders = { amazon-ebs = "aws-dr" }\n'
    d = Immd(tmp_path, cfg).start()
    d.run("image", "import-packer", str(EXAMPLE))
    assert {a["provider"] for a in d.json("image", "show", "web@1.4.2")["artifacts"]} == {"aws-dr"}


def test_a_manifest_nested_too_deeply_is_refused_naming_the_file() -> None:
    deep = '{"builds": ' + "[" * 100000 + "]" * 100000 + "}"
    with pytest.raises(BadRequest, match=r"^old-manifest\.json: nests too deeply"):
        parse(deep, "old-manifest.json")
