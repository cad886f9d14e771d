"""One DescribeInstances page of 1,000 instances, read three ways, per instance, on one core.

    python bench/bench_aws_pages.py [--instances 1000] [--repeat 7]

The page is the one bench/bench_scale.py's fake EC2 sends (~3.1 KB of XML per instance, shaped
like EC2's documented answer). Timed, each the median of ``--repeat`` runs in this process:

- ``parse``: ``xml.etree.ElementTree.XML`` of the page text, what libcloud's ``XmlResponse`` does
  once per page (the floor of any reader built on it);
- ``libcloud _to_node``: the conversion the ``aws`` provider used before, libcloud's
  ``EC2NodeDriver._to_nodes`` per reservation then ``AWSCore._to_instance`` per node;
- ``page_instances``: the provider's page reader now (imm/plugins/providers/aws/pages.py).

Both conversions start from the same parsed page; the two lists are checked equal first.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NodeDriver  # noqa: E402
from libcloud.utils.xml import findall  # noqa: E402

from imm.plugins.base import PluginContext  # noqa: E402
from imm.plugins.providers.aws import AWSProvider  # noqa: E402
from imm.plugins.providers.aws.pages import page_instances  # noqa: E402

REGION = "us-east-1"
TAGS = {"imm:service": "web", "imm:rollout": "r-1", "imm:slot": "blue",
        "imm:digest": "sha256:" + "ab" * 32}


def median_s(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    fleet = bench_scale.Fleet(0, 0, REGION, a.instances, TAGS)
    text = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse '
            f'xmlns="{NAMESPACE}"><requestId>0</requestId><reservationSet>'
            + "".join(fleet.item(n).decode() for n in range(a.instances))
            + "</reservationSet><nextToken>t</nextToken></DescribeInstancesResponse>")
    page = ET.XML(text)
    driver = EC2NodeDriver("AKIDEXAMPLE", "secret", region=REGION)
    provider = AWSProvider("aws-bench", {"kind": "aws", "regions": [REGION]},
                           PluginContext(Path("/nonexistent"), logging.getLogger("bench")))

    def old() -> list[Any]:
        return [provider._to_instance(REGION, n)
                for rs in findall(element=page, xpath="reservationSet/item", namespace=NAMESPACE)
                for n in driver._to_nodes(rs, "instancesSet/item")]

    def new() -> list[Any]:
        return page_instances(page, NAMESPACE, provider.name, REGION)[0]

    got, want = new(), old()
    if len(got) != a.instances or [i.to_dict() for i in got] != [i.to_dict() for i in want]:
        print("the two conversions differ", file=sys.stderr)
        return 1
    rows = [("parse (ElementTree, once per page)", median_s(lambda: ET.XML(text), a.repeat)),
            ("libcloud _to_node + _to_instance", median_s(old, a.repeat)),
            ("page_instances", median_s(new, a.repeat))]
    print(f"# one page of {a.instances} instances, {len(text) / a.instances / 1024:.1f} KiB "
          f"each, medians of {a.repeat}")
    print(f"{'step':40} {'ms/page':>9} {'µs/instance':>12}")
    for name, s in rows:
        print(f"{name:40} {s * 1000:9.1f} {s / a.instances * 1e6:12.1f}")
    print(f"-> conversion {rows[1][1] / rows[2][1]:.1f}x faster; per instance now parse + read "
          f"{(rows[0][1] + rows[2][1]) / a.instances * 1e6:.0f} µs, was "
          f"{(rows[0][1] + rows[1][1]) / a.instances * 1e6:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
