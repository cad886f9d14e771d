"""imm.plugins.cloud.drivers: the one per-region driver cache."""

from __future__ import annotations

import threading

import pytest

from imm.errors import BadRequest
from imm.plugins.cloud import DriverCache


def test_one_driver_per_region_made_on_first_use() -> None:
    made: list[str] = []

    def make(region: str) -> object:
        made.append(region)
        return {"region": region}

    cache = DriverCache("aws provider p", ["us-east-1", "eu-west-1"], make)
    assert made == []  # nothing at construction
    d1, lock1 = cache.get("us-east-1")
    d2, lock2 = cache.get("us-east-1")
    assert d1 is d2 and lock1 is lock2 and made == ["us-east-1"]
    d3, lock3 = cache.get("eu-west-1")
    assert d3 == {"region": "eu-west-1"} and lock3 is not lock1
    assert cache.cached() == ["eu-west-1", "us-east-1"]
    cache.clear()
    assert cache.cached() == []
    assert cache.get("us-east-1")[0] is not d1 and made[-1] == "us-east-1"


def test_an_unconfigured_region_is_refused_naming_the_configured_ones() -> None:
    cache = DriverCache("azure provider az", ["westeurope"], lambda r: r, what="location")
    with pytest.raises(BadRequest) as err:
        cache.get("eastus")
    assert err.value.message == ("azure provider az: location 'eastus' is not configured "
                                 "(locations: westeurope)")


def test_a_failed_build_is_not_cached() -> None:
    calls = []

    def make(region: str) -> object:
        calls.append(region)
        if len(calls) == 1:
            raise RuntimeError("token endpoint down")
        return object()

    cache = DriverCache("p", ["r"], make)
    with pytest.raises(RuntimeError):
        cache.get("r")
    assert cache.get("r") is not None and len(calls) == 2


def test_concurrent_first_use_builds_once() -> None:
    made = []
    gate = threading.Barrier(8)

    def make(region: str) -> object:
        made.append(region)
        return object()

    cache = DriverCache("p", ["r"], make)
    got = []

    def worker() -> None:
        gate.wait()
        got.append(cache.get("r")[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(d) for d in got}) == 1
