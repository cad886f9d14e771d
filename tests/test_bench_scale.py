"""The scale benchmark's fake EC2 (bench/bench_scale.py) against the real clients it stands in
front of: boto3 (the benchmark's peer) and imm's ``aws`` provider through libcloud's unchanged
``ec2`` driver. It must page by instance with MaxResults, answer an empty token bucket with EC2's
503 RequestLimitExceeded, and reject what EC2 rejects; and the benchmark's bulk catalog records
must be the ones the catalog itself writes."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_scale  # noqa: E402

TAGS = {"imm:service": "web", "imm:rollout": "r-1", "imm:digest": "sha256:" + "ab" * 32}


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    # 2 accounts x 2 regions, 30 instances each
    spec = {"accounts": 2, "regions": bench_scale.REGIONS[:2], "instances": 120, "tags": TAGS}
    with bench_scale.fake_ec2(0, spec) as url:
        yield url


def client(url: str, account: int = 0, region: str = "us-east-1", attempts: int = 1) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ec2", aws_access_key_id=bench_scale.access_key(account),
        aws_secret_access_key=bench_scale.SECRET, region_name=region, endpoint_url=url,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}))


def test_pages_count_instances_and_carry_the_fleet_tags(fake: str) -> None:
    bench_scale.fake_control(fake, latency=0, bucket=100, refill=20, start=100)
    pages = list(client(fake).get_paginator("describe_instances").paginate(
        PaginationConfig={"PageSize": 7}))
    sizes = [sum(len(r["Instances"]) for r in p["Reservations"]) for p in pages]
    assert sizes == [7, 7, 7, 7, 2]
    inst = pages[0]["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}.items() >= TAGS.items()
    ids = {i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]}
    assert len(ids) == 30
    other = client(fake, account=1, region="eu-west-1").describe_instances()
    assert not ids & {i["InstanceId"] for r in other["Reservations"] for i in r["Instances"]}


def test_filters_select_and_bad_requests_are_refused_as_ec2_does(fake: str) -> None:
    from botocore.exceptions import ClientError

    bench_scale.fake_control(fake, latency=0, bucket=100, refill=20, start=100)
    c = client(fake)
    none = c.describe_instances(Filters=[{"Name": "tag:imm:service", "Values": ["db"]}])
    assert none["Reservations"] == []
    with pytest.raises(ClientError) as e:
        c.describe_instances(MaxResults=2000)
    assert e.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.describe_instances(Filters=[{"Name": "owner-alias", "Values": ["x"]}])
    assert e.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        client(fake, account=7).describe_instances()
    assert e.value.response["Error"]["Code"] == "AuthFailure"


def test_an_empty_bucket_is_throttled_with_requestlimitexceeded(fake: str) -> None:
    from botocore.exceptions import ClientError

    bench_scale.fake_control(fake, latency=0, bucket=2, refill=0.5, start=2)
    c = client(fake)
    c.describe_instances()
    c.describe_instances()
    with pytest.raises(ClientError) as e:
        c.describe_instances()
    assert e.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert client(fake, region="eu-west-1").describe_instances()  # its own bucket
    assert bench_scale.fake_control(fake)["throttled"] == 1


def test_the_aws_provider_pages_and_retries_throttling_through_libcloud(
        fake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imm.plugins.base import PluginContext
    from imm.plugins.providers.aws import AWSProvider

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bench_scale.access_key(1))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bench_scale.SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # a drained bucket refilling 20/s: the first page of each region is throttled
    bench_scale.fake_control(fake, latency=0, bucket=1, refill=20, start=0)
    p = AWSProvider("acct1", {"kind": "aws", "regions": bench_scale.REGIONS[:2],
                              "endpoint": fake, "page_size": 10, "backoff_base_s": 0.1,
                              "backoff_max_s": 0.5, "retries": 8},
                    PluginContext(tmp_path, logging.getLogger("test")))
    got = list(p.list_instances())
    assert len(got) == 60 and len({i.id for i in got}) == 60
    assert {i.region for i in got} == set(bench_scale.REGIONS[:2])
    assert got[0].tags.items() >= TAGS.items() and got[0].state == "running"
    st = bench_scale.fake_control(fake)
    assert st["pages"] == 6 and st["throttled"] >= 2


def test_bulk_catalog_records_are_the_catalogs_own_and_the_ledger_verifies(
        tmp_path: Path) -> None:
    from imm import config
    from imm.catalog.merkle import MerkleLog
    from imm.daemon.core import Daemon

    s = config.parse("", "test", state_dir=str(tmp_path), socket=str(tmp_path / "s.sock"))
    d = Daemon(s, extra_plugins=[])
    d.open("test")
    try:
        bench_scale.build_catalog(d, 12, check_every=1)  # raises if a record differs
        shown = d.db.read_sync(d.catalog.show, "svc05@1.0.0")
        assert shown["name"] == "svc05" and shown["ledger_index"] >= 1
        assert d.db.read_sync(lambda c: MerkleLog(c).verify_all()) == []
        checked = asyncio.run(d.verify_images(None))  # every envelope against the key
        assert checked["ok"] is True and checked["checked"] >= 12, checked
    finally:
        d.close()
