"""Packer manifest import: real-looking files, several builds and runs, clear refusals."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from imm.catalog.canonical import digest_of
from imm.catalog.manifest import build_manifest
from imm.catalog.packer import artifacts_for, image_specs, parse, select_builds
from imm.errors import BadRequest

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
