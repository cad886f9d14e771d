"""Benchmark the dashboard's pages against the JSON API calls that serve the same data.

    python bench/bench_dashboard.py [--images 100000] [--instances 10000] [--runs 15]

One in-process Daemon (SQLite state in a temp dir, the real signing key and writer thread) holds
a catalog of N images (every 10th a child of the one before, a revoked one with its cascade, a
channel) and a synthetic provider (tests/audit_plugin.py) listing M instances of one service
on one of those images, swept once by the real auditor so every instance has an observation
and a finding. Both applications are served over loopback TCP by aiohttp's test server: the API
(make_app, a bearer token) and the dashboard (make_dashboard, a session cookie). Each page is
fetched beside the API call(s) that carry the same data, interleaved, ``--runs`` times; the
figure is the median wall time of the request as the client sees it (the same HTTP stack on
both sides), and the ratio page / API.

The live rollout page's delay: a rollout of a service on in-memory peers (the engine's test
provider and router, tests/unit/rollout_world.py) holds at a canary pause while a client reads
its event stream as the page's EventSource does; the figure is the median time from an
operator's pause (or resume) returning to the stream's event showing the new state, against the
same change read by ``GET /v1/rollouts/{id}/watch`` of the API (the stream ``immctl rollout
watch`` reads) in the same run. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))


def fill(d: Any, n: int) -> dict[str, str]:
    """N images in batches of 1000 per transaction; returns a few refs the pages ask about."""
    t = time.perf_counter()
    digests: list[str] = []
    for start in range(0, n, 1000):
        def batch(conn: Any, start: int = start) -> list[str]:
            out = []
            for i in range(start, min(n, start + 1000)):
                parent = digests[-1] if i % 10 and digests else None
                row = d.catalog.add_image(
                    conn, "bench", name=f"svc{i % 100:02d}", version=str(i),
                    content_digest="sha256:" + f"{i:064x}", content_kind="file", layers=[],
                    boot_actions=[], parent=parent, labels={},
                    artifacts=[("synth", "synth-1", f"ami-{i:08x}")])
                out.append(str(row["digest"]))
                digests.append(str(row["digest"]))
            return out
        d.db.write_sync(batch)
    print(f"filled {n} images in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    d.db.write_sync(d.catalog.set_channel, "bench", "web/production", digests[1])
    d.db.write_sync(d.catalog.set_channel, "bench", "web/production", digests[2])
    d.db.write_sync(d.catalog.revoke, "bench", digests[20], "CVE-bench", True)
    return {"running": digests[1], "revoked": digests[20], "child": digests[25]}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from imm import config
    from imm.daemon.app import make_app
    from imm.daemon.core import Daemon
    from imm.daemon.dashboard.sessions import Identity, Logins
    from imm.daemon.dashboard.web import make_dashboard

    import audit_plugin

    tmp = Path(tempfile.mkdtemp(prefix="imm-bench-dash-"))
    cfg = ('[providers.synth]\nkind = "synthetic"\n'
           f'count = {args.instances}\nregion = "synth-1"\nimage_id = "ami-synth"\n'
           '[services.web]\ntargets = [{ provider = "synth", region = "synth-1", count = 2 }]\n')
    s = config.parse(cfg, "bench", state_dir=str(tmp), socket=str(tmp / "s.sock"))
    d = Daemon(s, extra_plugins=[audit_plugin])
    await asyncio.to_thread(d.open, "bench")
    refs = await asyncio.to_thread(fill, d, args.images)
    synth = d.context.providers["synth"].plugin
    synth.settings.update(digest=refs["running"], rollout="r-bench", service="web")
    api_app = make_app(d)
    logins = Logins()
    dash = make_dashboard(d, logins)
    api, ui = TestServer(api_app), TestServer(dash)
    await api.start_server()
    await ui.start_server()
    try:
        t = time.perf_counter()
        row = await d.auditor.run_sweep("bench")
        print(f"swept {row['instances']} instances in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
        assert d.tokens is not None
        token, _ = d.tokens.create(0, "root", True, "read", 3600)
        who = Identity(actor="bench (uid 0)", user="bench", admin=True)
        session = logins.redeem(logins.mint(who))
        assert session is not None
        head = await d.db.read(d.catalog.head)
        leaf = head["size"] // 2
        r, rv = refs["running"], refs["revoked"]
        pairs: list[tuple[str, str, list[str]]] = [
            ("fleet (services live, audit 200 rows, open findings)", "/ui/fleet",
             ["/v1/services/web", "/v1/audit/instances?limit=200",
              "/v1/audit/findings?open=1&limit=1"]),
            ("fleet filtered by verdict+provider+region", "/ui/fleet?verdict=ok&provider=synth"
             "&region=synth-1", ["/v1/services/web", "/v1/audit/instances?limit=200&verdict=ok"
                                 "&provider=synth&region=synth-1",
                                 "/v1/audit/findings?open=1&limit=1"]),
            ("catalog (200 images, channels, revocations)", "/ui/catalog",
             ["/v1/images?limit=200", "/v1/channels", "/v1/images?limit=200&status=revoked"]),
            ("image (artifacts, lineage)", f"/ui/images/{refs['child']}",
             [f"/v1/images/{refs['child']}"]),
            ("channel history", "/ui/channels/web/production",
             ["/v1/channels/web%2Fproduction/history"]),
            ("proof (checkpoint, leaf, inclusion proof)", f"/ui/proof?index={leaf}",
             ["/v1/ledger/head", f"/v1/ledger/proof?index={leaf}", f"/v1/ledger/leaves/{leaf}"]),
            ("compliance (findings chart, 200 open, blast radius)", "/ui/compliance",
             ["/v1/audit/findings?open=1&limit=200", "/v1/audit/blast-radius?limit=200"]),
            ("compliance, blast radius of a revoked image", f"/ui/compliance?ref={rv}",
             ["/v1/audit/findings?open=1&limit=200",
              f"/v1/audit/blast-radius?ref={rv}&limit=200"]),
            ("rollouts", "/ui/rollouts", ["/v1/rollouts?limit=100"]),
        ]
        del r
        rows = []
        async with ClientSession(cookies={"imm_dash": session.sid}) as ui_c, \
                ClientSession(headers={"Authorization": f"Bearer {token}"}) as api_c:
            async def timed(c: ClientSession, url: str) -> float:
                t0 = time.perf_counter()
                async with c.get(url) as resp:
                    body = await resp.read()
                    assert resp.status == 200, (url, resp.status, body[:300])
                return time.perf_counter() - t0

            for label, page, calls in pairs:
                ui_times, api_times = [], []
                for _ in range(args.runs):
                    ui_times.append(await timed(ui_c, str(ui.make_url(page))))
                    total = 0.0
                    for call in calls:
                        total += await timed(api_c, str(api.make_url(call)))
                    api_times.append(total)
                u, a = statistics.median(ui_times), statistics.median(api_times)
                print(f"{label:52s} page {u * 1000:8.1f} ms   API {a * 1000:8.1f} ms   "
                      f"ratio {u / a:5.2f}")
                rows.append(report.row(f"dashboard {label}", f"{u * 1000:.1f} ms",
                                       f"JSON API {a * 1000:.1f} ms", u / a,
                                       "≤ 1.5× the API and ≤ 100 ms",
                                       u / a <= 1.5 and u <= 0.1))
        return rows
    finally:
        await ui.close()
        await api.close()
        await asyncio.to_thread(d.close)
        shutil.rmtree(tmp, ignore_errors=True)


LIVE_CFG = """
[providers.mem]
kind = "memory"
[routers.lb]
kind = "memory"
[services.web]
targets = [{ provider = "mem", region = "r1", count = 2 }]
router = "lb"
route = "web"
strategy = "canary"
canary_steps = [50]
canary_pause_s = 3600
health_timeout_s = 1
batch = "1"
"""


async def live_delay(runs: int) -> list[dict[str, Any]]:
    import json

    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer
    from rollout_world import FAST, MemPlugin

    from imm import config
    from imm.daemon.app import make_app
    from imm.daemon.core import Daemon
    from imm.daemon.dashboard.sessions import Identity, Logins
    from imm.daemon.dashboard.web import make_dashboard

    tmp = Path(tempfile.mkdtemp(prefix="imm-bench-live-"))
    s = config.parse(LIVE_CFG, "bench", state_dir=str(tmp), socket=str(tmp / "s.sock"))
    d = Daemon(s, extra_plugins=[MemPlugin()], timings=FAST)
    await asyncio.to_thread(d.open, "bench")
    d.db.write_sync(d.catalog.add_image, "bench", name="app", version="1",
                    content_digest="sha256:" + "1" * 64, content_kind="file", layers=[],
                    boot_actions=[], parent=None, labels={}, artifacts=[("mem", "r1", "img-1")])
    logins = Logins()
    api, ui = TestServer(make_app(d)), TestServer(make_dashboard(d, logins))
    await api.start_server()  # the API app's cleanup_ctx starts the engine
    await ui.start_server()
    try:
        rid = (await d.engine.start("bench", "web", "app@1", None))["id"]
        while True:
            st = await d.engine.status(rid)
            ops = {x["name"]: x["op"] for x in st["plan"]}
            if st["state"] == "running" and ops.get(st["step"] or "") == "pause":
                break
            await asyncio.sleep(0.01)
        assert d.tokens is not None
        token, _ = d.tokens.create(0, "root", True, "read", 3600)
        session = logins.redeem(logins.mint(Identity("bench (uid 0)", "bench", True)))
        assert session is not None
        out: dict[str, list[float]] = {"dashboard": [], "api": []}

        async def states(resp: Any, sse: bool) -> Any:
            async for raw in resp.content:
                line = raw.decode().strip()
                if sse and line.startswith("data:"):
                    yield json.loads(line[5:])["state"]
                elif not sse and line.startswith("{"):
                    yield json.loads(line)["state"]

        for kind, url, sse, headers in (
                ("dashboard", ui.make_url(f"/ui/rollouts/{rid}/events"), True,
                 {"Cookie": f"imm_dash={session.sid}"}),
                ("api", api.make_url(f"/v1/rollouts/{rid}/watch"), False,
                 {"Authorization": f"Bearer {token}"})):
            async with ClientSession(headers=headers) as c, c.get(url) as resp:
                stream = states(resp, sse)
                assert await anext(stream) == "running"
                for i in range(runs * 2):
                    verb, want = ("pause", "paused") if i % 2 == 0 else ("resume", "running")
                    t0 = time.perf_counter()
                    await d.engine.set_state("bench", rid, verb)
                    while await anext(stream) != want:
                        pass
                    out[kind].append(time.perf_counter() - t0)
        u, a = statistics.median(out["dashboard"]), statistics.median(out["api"])
        print(f"{'live page: pause/resume to its event':52s} page {u * 1000:8.1f} ms   "
              f"API watch {a * 1000:8.1f} ms   ratio {u / a:5.2f}")
        return [report.row("dashboard live update after a state change (server-sent event)",
                           f"{u * 1000:.1f} ms", f"API watch stream {a * 1000:.1f} ms", u / a)]
    finally:
        await d.engine.set_state("bench", rid, "abort")
        await ui.close()
        await api.close()
        await asyncio.to_thread(d.close)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--instances", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--live-runs", type=int, default=20, help="pause/resume pairs timed")
    p.add_argument("--no-pages", action="store_true", help="only the live page's delay")
    p.add_argument("--json", help="write the headline rows here (bench/report.py)")
    args = p.parse_args()
    print(f"{args.images} images, {args.instances} instances, median of {args.runs} runs each",
          file=sys.stderr)
    rows = [] if args.no_pages else asyncio.run(measure(args))
    rows += asyncio.run(live_delay(args.live_runs))
    report.write(args.json, "python bench/bench_dashboard.py", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
