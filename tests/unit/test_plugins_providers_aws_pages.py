"""The aws provider's DescribeInstances page reader against libcloud's own conversion.

``page_instances`` replaced ``EC2NodeDriver._to_node`` + ``AWSCore._to_instance`` for listing;
here both read the same hand-written pages (EC2's documented shape plus the odd corners: empty
elements, tags without values, missing fields, several reservations, a foreign namespace) and
must give equal ``Instance`` objects, field by field. moto's answers are compared the same way in
tests/test_aws.py. No network: libcloud's driver is only constructed, never called.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NodeDriver
from libcloud.utils.xml import findall, findtext

from imm.plugins.base import PluginContext
from imm.plugins.providers.aws import AWSProvider
from imm.plugins.providers.aws.pages import page_instances

REGION = "us-east-1"


def item(iid: str | None, *, state: str | None = "running", tags: dict[str, Any] | None = None,
         private: str | None = "10.0.0.5", public: str | None = None,
         launch: str | None = "2026-05-01T10:00:00.000Z", extra: str = "") -> str:
    def el(tag: str, text: str | None) -> str:
        return "" if text is None else f"<{tag}>{text}</{tag}>"

    tagset = ""
    if tags is not None:
        entries = "".join(
            "<item>" + (el("key", k) if k is not None else "") +
            (el("value", v) if v is not None and v is not ... else "") + "</item>"
            for k, v in tags.items())
        tagset = f"<tagSet>{entries}</tagSet>"
    return ("<item>" + el("instanceId", iid) + el("imageId", "ami-0abc") +
            (f"<instanceState><code>16</code>{el('name', state)}</instanceState>"
             if state is not None else "") +
            el("privateDnsName", "ip-10-0-0-5.ec2.internal") + el("instanceType", "t3.micro") +
            el("launchTime", launch) +
            "<placement><availabilityZone>us-east-1a</availabilityZone><tenancy>default"
            "</tenancy></placement>" + el("subnetId", "subnet-1") + el("vpcId", "vpc-1") +
            el("privateIpAddress", private) + el("ipAddress", public) +
            "<groupSet><item><groupId>sg-1</groupId><groupName>web</groupName></item></groupSet>"
            "<blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1"
            "</volumeId><status>attached</status></ebs></item></blockDeviceMapping>"
            + tagset + extra + "</item>")


def page(*reservations: list[str], token: str | None = None, ns: str = NAMESPACE) -> Any:
    body = "".join(f"<item><reservationId>r-{n}</reservationId><ownerId>1</ownerId>"
                   f"<instancesSet>{''.join(items)}</instancesSet></item>"
                   for n, items in enumerate(reservations))
    tok = "" if token is None else f"<nextToken>{token}</nextToken>"
    return ET.XML(f'<DescribeInstancesResponse xmlns="{ns}"><requestId>x</requestId>'
                  f"<reservationSet>{body}</reservationSet>{tok}</DescribeInstancesResponse>")


@pytest.fixture(scope="module")
def old() -> Any:
    """libcloud's conversion, as the provider listed before: (page) -> (instances, token)."""
    driver = EC2NodeDriver("AKIDEXAMPLE", "secret", region=REGION)
    provider = AWSProvider("aws-test", {"kind": "aws", "regions": [REGION]},
                           PluginContext(Path("/nonexistent"), logging.getLogger("t")))

    def convert(elem: Any) -> tuple[list[Any], str | None]:
        out = []
        for rs in findall(element=elem, xpath="reservationSet/item", namespace=NAMESPACE):
            out += [provider._to_instance(REGION, n)
                    for n in driver._to_nodes(rs, "instancesSet/item")]
        return out, findtext(element=elem, xpath="nextToken", namespace=NAMESPACE)

    return convert


def same(old: Any, elem: Any) -> list[Any]:
    want, want_token = old(elem)
    got, got_token = page_instances(elem, NAMESPACE, "aws-test", REGION)
    assert got_token == want_token
    assert [g.to_dict() for g in got] == [w.to_dict() for w in want]
    return got


def test_ordinary_items_read_as_libcloud_did(old: Any) -> None:
    got = same(old, page(
        [item("i-1", tags={"imm:service": "web", "Name": "web-0"}, public="54.1.2.3"),
         item("i-2", state="stopped", tags={"imm:service": "web"})],
        [item("i-3", state="shutting-down", private=None, public="54.1.2.4")],
        [item("i-4", state="pending", private=None, public=None, tags={})],
        token="tok-2"))
    assert [i.id for i in got] == ["i-1", "i-2", "i-3", "i-4"]
    one = got[0]
    assert one.state == "running" and one.address == "10.0.0.5" and one.image_id == "ami-0abc"
    assert one.launched_at == 1777629600 and one.tags == {"imm:service": "web", "Name": "web-0"}
    assert one.extra == {"aws_state": "running", "instance_type": "t3.micro",
                         "availability_zone": "us-east-1a", "private_ip": "10.0.0.5",
                         "public_ip": "54.1.2.3", "subnet_id": "subnet-1", "vpc_id": "vpc-1",
                         "name": "web-0"}
    assert got[1].state == "stopped" and got[1].extra["name"] == "i-2"
    assert got[2].state == "terminated" and got[2].address == "54.1.2.4"
    assert got[3].address is None and "public_ip" not in got[3].extra


def test_odd_corners_read_as_libcloud_did(old: Any) -> None:
    same(old, page([
        item("i-5", tags={"empty": "", "novalue": None, "Name": None}),  # Name without value
        item("i-6", state=None, launch=None, private="", public=""),
        item("i-7", state="rebooting", launch="2026-05-01T10:00:00Z"),
        item("", tags={None: "keyless"}),
        item(None, state=""),
        item("i-8", launch="2026-05-01T12:00:00+02:00",
             extra="<instanceId>i-dup</instanceId><tagSet><item><key>later</key><value>1</value>"
                   "</item></tagSet><placement><availabilityZone>b</availabilityZone></placement>"),
    ]))
    same(old, page())                    # an empty page ends the listing
    same(old, page([], token=""))        # and an empty nextToken
    same(old, page([item("i-9")], ns="http://example.com/other"))  # another namespace: nothing


def test_a_launch_time_neither_parser_reads_is_zero(old: Any) -> None:
    """Where libcloud's _to_node failed the whole page, one unreadable field gives 0."""
    elem = page([item("i-1", launch="yesterday"), item("i-2")])
    with pytest.raises(Exception, match="yesterday"):
        old(elem)
    got, _ = page_instances(elem, NAMESPACE, "aws-test", REGION)
    assert [i.launched_at for i in got] == [0, 1777629600]


# --------------------------------------------------------------------------- streaming regions
# stream_pages combines the regions' page iterators; the sources here are plain generators
# standing in for regions (the provider's own paging against moto is in tests/test_aws.py).


def _inst(iid: str) -> Any:
    from imm.plugins.base import Instance

    return Instance(id=iid, provider="p", region="r", image_id="ami", state="running",
                    launched_at=0)


def test_stream_hands_on_a_regions_pages_before_the_slow_region_ends() -> None:
    from imm.plugins.providers.aws.pages import stream_pages

    release = threading.Event()

    def slow() -> Any:
        yield [_inst("slow-1")]
        assert release.wait(30)
        yield [_inst("slow-2")]

    def fast() -> Any:
        yield [_inst("fast-1"), _inst("fast-2")]
        yield [_inst("fast-3")]

    it = stream_pages({"a": slow, "b": fast}, "t")
    seen = []
    while len(seen) < 4:  # everything but slow-2, which waits for release
        seen += [i.id for i in next(it)]
    assert sorted(seen) == ["fast-1", "fast-2", "fast-3", "slow-1"]
    release.set()
    assert [i.id for page in it for i in page] == ["slow-2"]


def test_stream_raises_a_regions_error_and_stops_the_others() -> None:
    from imm.errors import ProviderError
    from imm.plugins.providers.aws.pages import stream_pages

    stopped = threading.Event()

    def bad() -> Any:
        yield [_inst("bad-1")]
        raise ProviderError("region b: throttled 5 times")

    def endless() -> Any:
        try:
            n = 0
            while True:
                n += 1
                yield [_inst(f"e-{n}")]
        finally:
            stopped.set()

    seen: list[str] = []
    with pytest.raises(ProviderError, match="throttled"):
        for page in stream_pages({"a": endless, "b": bad}, "t"):
            seen += [i.id for i in page]
    assert "bad-1" in seen
    assert stopped.wait(30)  # the endless region stopped at its next page


def test_closing_the_stream_early_does_not_wait_for_a_region_in_flight() -> None:
    from imm.plugins.providers.aws.pages import stream_pages

    in_flight, answer, stopped = threading.Event(), threading.Event(), threading.Event()

    def quick() -> Any:
        yield [_inst("q-1")]

    def hanging() -> Any:
        try:
            in_flight.set()
            assert answer.wait(30)  # a request the cloud has not answered yet
            yield [_inst("h-1")]
            yield [_inst("h-2")]
        finally:
            stopped.set()

    it = stream_pages({"a": quick, "b": hanging}, "t")
    assert [i.id for i in next(it)] == ["q-1"]
    assert in_flight.wait(30)
    it.close()  # would hang here if closing waited for the hanging region
    assert not stopped.is_set()
    answer.set()
    assert stopped.wait(30)  # it stopped after its answer instead of paging on
