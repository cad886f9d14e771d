"""The context's handles: plugin code off the event loop, under the concurrency limit (held
until the worker thread ends) and a timeout; listings paged in the thread; the plugins built
from the configuration."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from rollout_world import MemProvider, MemRouter, wait_for

from imm.config import Settings
from imm.context import Context, ProviderHandle, RouterHandle
from imm.errors import ConfigError, NotFound, PluginError, ProviderError, RouterError, Unsupported
from imm.plugins.base import Feature, Instance, LaunchRequest
from imm.plugins.hookspecs import hookimpl
from imm.plugins.manager import Plugins


class Paging(MemProvider):
    """Yields instances page by page, noting which thread produced each."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.threads: list[int] = []

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        for k in range(self.n):
            self.threads.append(threading.get_ident())
            yield Instance(f"i-{k}", self.name, "r1", "img", "running", k)


def test_listing_is_drained_in_a_worker_thread() -> None:
    p = Paging(5)
    got = asyncio.run(ProviderHandle(p).list_instances())
    assert [i.id for i in got] == [f"i-{k}" for k in range(5)]
    assert threading.get_ident() not in p.threads


def test_instance_chunks_page_in_the_thread() -> None:
    p = Paging(7)

    async def main() -> list[list[str]]:
        return [[i.id for i in c] async for c in ProviderHandle(p).instance_chunks(size=3)]

    assert asyncio.run(main()) == [["i-0", "i-1", "i-2"], ["i-3", "i-4", "i-5"], ["i-6"]]
    assert threading.get_ident() not in p.threads


def test_many_providers_list_at_once_beyond_the_loops_default_threads() -> None:
    """Six providers list together although the loop's default pool has two threads (a sweep
    of 20 account-regions on 2 CPUs got 6): each handle lists in threads of its own."""
    everyone = threading.Barrier(6, timeout=30)

    class Waiting(MemProvider):
        def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
            everyone.wait()  # a page in flight: returns only once all six are listing
            yield Instance(f"i-{self.name}", self.name, "r1", "img", "running", 0)

    handles = [ProviderHandle(Waiting(f"p{k}")) for k in range(6)]

    async def sweep(h: ProviderHandle) -> list[str]:
        return [i.id async for c in h.instance_chunks(size=10) for i in c]

    async def main() -> list[list[str]]:
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        return list(await asyncio.gather(*(sweep(h) for h in handles)))

    try:
        assert asyncio.run(main()) == [[f"i-p{k}"] for k in range(6)]
    finally:
        for h in handles:
            h.close()


def test_concurrency_limit_is_held_until_the_thread_ends() -> None:
    p = MemProvider()
    running, peak = [0], [0]
    lock = threading.Lock()
    release = threading.Event()

    def terminate(ids: Any) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1

    p.terminate = terminate  # type: ignore[method-assign]
    h = ProviderHandle(p, concurrency=2, timeout_s=0.05)

    async def main() -> None:
        calls = [asyncio.create_task(h.terminate(["i"])) for _ in range(4)]
        done = await asyncio.gather(*calls[:2], return_exceptions=True)
        # the first two timed out; their threads still run, so the next two must wait
        assert all(isinstance(d, ProviderError) for d in done)
        await wait_for(lambda: running[0] == 2)
        await asyncio.sleep(0.05)
        assert peak[0] == 2 and running[0] == 2
        assert not any(c.done() for c in calls[2:])
        release.set()
        await asyncio.gather(*calls[2:], return_exceptions=True)

    asyncio.run(main())
    assert peak[0] == 2


def test_timeout_names_the_plugin_the_call_and_the_setting() -> None:
    r = MemRouter()
    r.backends = lambda route: time.sleep(0.1) or []  # type: ignore[method-assign, func-returns-value]
    with pytest.raises(RouterError) as e:
        asyncio.run(RouterHandle(r, timeout_s=0.02).backends("web"))
    assert e.value.message == ("router lb: backends did not answer within 0.02s; check that it "
                               "is reachable, or raise call_timeout_s in [routers.lb]")


def test_plugin_errors_pass_through_unchanged() -> None:
    p = MemProvider()
    p.fail["launch"] = 1
    req = LaunchRequest(region="r1", image_id="img", count=1, tags={}, client_token="t")
    with pytest.raises(ProviderError, match=r"^provider mem: launch failed \(injected\)$"):
        asyncio.run(ProviderHandle(p).launch(req))


def test_an_optional_operation_the_plugin_lacks_is_refused_by_name() -> None:
    h = ProviderHandle(MemProvider())
    assert not h.supports(Feature.REHASH)
    with pytest.raises(Unsupported, match="does not support rehash"):
        asyncio.run(h.rehash("i-1"))


@pytest.mark.parametrize(("entry", "message"), [
    ({"concurrency": 0}, r"\[providers.p\] concurrency must be ≥ 1, got 0"),
    ({"concurrency": "many"}, r"\[providers.p\] concurrency must be an integer ≥ 1, got 'many'"),
    ({"call_timeout_s": "soon"}, r"\[providers.p\] call_timeout_s must be a number"),
    ({"call_timeout_s": 0}, r"\[providers.p\] call_timeout_s must be > 0, got 0"),
])
def test_build_refuses_bad_limits(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    s = Settings(source="t", state_dir=tmp_path, socket=tmp_path / "s",
                 providers={"p": {"kind": "local", **entry}})
    with pytest.raises(ConfigError, match=message):
        Context.build(s, None, None, None, Plugins())  # type: ignore[arg-type]


def test_build_makes_a_handle_per_configured_plugin(tmp_path: Path) -> None:
    s = Settings(source="t", state_dir=tmp_path, socket=tmp_path / "s",
                 providers={"here": {"kind": "local", "concurrency": 3, "call_timeout_s": 9}})
    ctx = Context.build(s, None, None, None, Plugins())  # type: ignore[arg-type]
    try:
        h = ctx.provider("here")
        assert (h.kind, h.concurrency, h.timeout_s) == ("local", 3, 9.0)
        with pytest.raises(NotFound, match=r"no provider named 'there' \(providers: here\)"):
            ctx.provider("there")
        with pytest.raises(NotFound, match=r"no router named 'lb' \(routers: none\)"):
            ctx.router("lb")
    finally:
        ctx.close_plugins()


class Broken(MemProvider):
    kind = "broken"

    def __init__(self, name: str, settings: Mapping[str, Any], context: Any) -> None:
        raise ValueError("region is required")


class Closing(MemProvider):
    kind = "closing"
    closed: list[str] = []

    def __init__(self, name: str, settings: Mapping[str, Any], context: Any) -> None:
        super().__init__(name)

    def close(self) -> None:
        Closing.closed.append(self.name)


class Kinds:
    @hookimpl
    def imm_register_providers(self, registry: Any) -> None:
        registry.add(Broken)
        registry.add(Closing)


def test_build_names_a_plugin_that_cannot_start_and_closes_the_others(tmp_path: Path) -> None:
    s = Settings(source="t", state_dir=tmp_path, socket=tmp_path / "s",
                 providers={"a": {"kind": "closing"}, "b": {"kind": "broken"}})
    with pytest.raises(PluginError) as e:
        Context.build(s, None, None, None, Plugins(extra=[Kinds()]))  # type: ignore[arg-type]
    assert e.value.message == "provider 'b' (broken) cannot start: region is required"
    assert Closing.closed == ["a"]
