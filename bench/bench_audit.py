"""Benchmark audit sweeps and exports: speed, and memory that must not grow with the fleet or bundle.

    python bench/bench_audit.py [--instances 100000] [--lines 1000000] [--small-lines 100000]

Sweeps: a synthetic provider (tests/audit_plugin.py) lists N instances; the baseline is a plain
loop that only reads the same list from the same provider. The sweep runs in-process on a real
Daemon (SQLite state in a temp dir, the real writer thread, the real signing key) exactly as
immd runs it: the first sweep opens N observations (their events signed into the ledger in
batches), the second is the steady state (nothing changed, nothing rewritten). A third variant
is a fleet of pets: every instance gets two findings, so three events each.

The headline ratio pairs each of ``--repeats`` further steady sweeps with the plain loop run
just before it in the same process (same load, same heap): the median of those ratios. The
plain loop's own process (its memory) is reported too.

Exports: the ledger is filled with M observation events (one per second of synthetic time,
through the real batch-record writer), then bundles of the first 100k lines and of all M are
written with the real BundleWriter, and the small one is verified offline.

Each phase runs in its own process so its peak RSS (ru_maxrss) is its own: reported as the peak
and as the growth over the process's RSS just before the work (imports and daemon start-up
excluded). Memory that stays flat from 100k to 1M lines is the point of the export numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
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

T0 = 1767225600  # 2026-01-01T00:00:00Z: synthetic event times count seconds from here


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def daemon(state: Path, provider: str) -> Any:
    from imm import config
    from imm.daemon.core import Daemon
    from imm.daemon.main import settle_heap

    import audit_plugin

    s = config.parse(provider, "bench", state_dir=str(state), socket=str(state / "s.sock"))
    d = Daemon(s, extra_plugins=[audit_plugin])
    d.open("bench")
    settle_heap()  # as the immd command does once start-up is over
    return d


# -- phases (each in its own process) ----------------------------------------------------------

def phase_list(n: int) -> dict[str, Any]:
    import logging

    from imm.plugins.base import PluginContext

    import audit_plugin

    p = audit_plugin.SyntheticProvider("synth", {"count": n}, PluginContext(
        Path(tempfile.gettempdir()), logging.getLogger("bench")))
    before = rss_kb()
    t = time.perf_counter()
    count = sum(1 for _ in p.list_instances())
    took = time.perf_counter() - t
    assert count == n
    return {"seconds": took, "rate": n / took, "peak_kb": peak_kb(),
            "growth_kb": max(0, peak_kb() - before)}


def plain_loop(provider: Any, n: int) -> tuple[float, float]:
    """The peer: read the provider's whole list, doing nothing with it (seconds, CPU seconds)."""
    t, c = time.perf_counter(), time.process_time()
    count = sum(1 for _ in provider.list_instances())
    took, cpu = time.perf_counter() - t, time.process_time() - c
    assert count == n
    return took, cpu


def phase_sweep(n: int, pets: bool, repeats: int = 0) -> dict[str, Any]:

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        d = daemon(state, '[providers.synth]\nkind = "synthetic"\n'
                          f'count = {n}\nregion = "synth-1"\nimage_id = "ami-synth"\n')
        if not pets:
            img = d.db.write_sync(
                d.catalog.add_image, "bench", name="app", version="1",
                content_digest="sha256:" + "0" * 64, content_kind="file", layers=[],
                boot_actions=[], parent=None, labels={},
                artifacts=[("synth", "synth-1", "ami-synth")])
            # tags as a rollout leaves them: the image's digest, a known rollout, a service
            synth = d.context.providers["synth"].plugin
            synth.settings.update(digest=img["digest"], rollout="r-bench", service="web")
            d.db.write_sync(lambda c: c.execute(
                "INSERT INTO rollouts VALUES ('r-bench','web','blue-green',?,NULL,'completed',"
                "NULL,'{}','bench','t','t',NULL,NULL)", (img["digest"],)))
        before = rss_kb()
        out: dict[str, Any] = {}

        async def run() -> None:
            a = d.auditor
            for name in ("first", "steady"):
                t = time.perf_counter()
                row = await a.run_sweep("bench")
                took = time.perf_counter() - t
                assert row["state"] == "completed" and row["instances"] == n, row
                out[name] = {"seconds": took, "rate": n / took, "records": row["records"],
                             "findings": row["findings_opened"], "peak_kb": peak_kb(),
                             "growth_kb": peak_kb() - before}
            synth = d.context.providers["synth"].plugin
            pairs = []
            for _ in range(repeats):  # the peer and a steady sweep, alternately
                loop_s, loop_cpu = plain_loop(synth, n)
                t, c = time.perf_counter(), time.process_time()
                row = await a.run_sweep("bench")
                took, cpu = time.perf_counter() - t, time.process_time() - c
                assert row["state"] == "completed" and row["records"] == 0, row
                pairs.append((loop_s, took, loop_cpu, cpu))
            out["pairs"] = pairs

        asyncio.run(run())
        d.close()
    return out


def phase_fill(state: Path, m: int) -> dict[str, Any]:
    from imm.audit import events

    d = daemon(state, '[providers.x]\nkind = "synthetic"\ncount = 0\n')
    t = time.perf_counter()
    batch = 2000
    for start in range(0, m, batch):
        bodies = [{"type": "observation", "event": "open", "provider": "synth",
                   "region": "synth-1", "instance_id": f"i-{i:08x}", "image_id": "ami-synth",
                   "digest": "sha256:" + "0" * 64, "service": "web", "at": iso(T0 + i),
                   "sweep": 1, "launched_at": T0}
                  for i in range(start, min(m, start + batch))]
        d.db.write_sync(events.record_events, d.catalog, 1, "bench", bodies)
    d.db.write_sync(d.catalog.checkpoint)
    d.close()
    return {"seconds": time.perf_counter() - t, "events": m}


def phase_export(state: Path, lines: int, out: Path) -> dict[str, Any]:
    from imm.audit.export import write_bundle
    from imm.catalog.keys import KeyRing
    from imm.catalog.service import Catalog
    from imm.store.sqlite import connect

    keyring, _ = KeyRing.load_or_create(state / "keys")
    catalog = Catalog(keyring, "imm.local/ledger")
    conn = connect(state / "imm.db")
    before = rss_kb()
    t = time.perf_counter()
    with open(out, "wb") as f:
        w = write_bundle(conn, catalog, f, until=iso(T0 + lines))
    took = time.perf_counter() - t
    return {"seconds": took, "lines": w.lines + 1, "events": w.counts["observation"],
            "bytes": out.stat().st_size, "rate": w.lines / took, "peak_kb": peak_kb(),
            "growth_kb": peak_kb() - before}


def phase_verify(state: Path, bundle: Path) -> dict[str, Any]:
    from imm.audit.bundle_verify import load_public_key, verify_file

    pem = next((state / "keys").glob("*.pub.pem")).read_bytes()
    pub = load_public_key(pem)
    before = rss_kb()
    t = time.perf_counter()
    result = verify_file(bundle, pub)
    took = time.perf_counter() - t
    assert result.ok, result.failure
    return {"seconds": took, "lines": result.lines, "rate": result.lines / took,
            "peak_kb": peak_kb(), "growth_kb": peak_kb() - before}


# -- driver ------------------------------------------------------------------------------------

def child(*args: str) -> dict[str, Any]:
    cp = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True,
                        text=True)
    if cp.returncode != 0:
        raise SystemExit(f"phase {args} failed:\n{cp.stderr}")
    result: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return result


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--small-lines", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=5,
                   help="steady sweeps paired with the plain loop for the headline ratio")
    p.add_argument("--no-pets", action="store_true", help="skip the all-pets sweep")
    p.add_argument("--no-export", action="store_true", help="sweeps only")
    p.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        name, *rest = a.phase
        fn = {"list": lambda: phase_list(int(rest[0])),
              "sweep": lambda: phase_sweep(int(rest[0]), rest[1] == "pets", int(rest[2])),
              "fill": lambda: phase_fill(Path(rest[0]), int(rest[1])),
              "export": lambda: phase_export(Path(rest[0]), int(rest[1]), Path(rest[2])),
              "verify": lambda: phase_verify(Path(rest[0]), Path(rest[1]))}[name]
        print(json.dumps(fn()))
        return 0

    n = a.instances
    print(f"# audit sweep, {n} synthetic instances (each phase in its own process)")
    base = child("list", str(n))
    print(f"plain loop reading the list   {base['seconds']:7.2f} s {base['rate']:10.0f} inst/s  "
          f"peak {mb(base['peak_kb'])}, growth {mb(base['growth_kb'])}")
    variants = [("ok", "ok fleet")] + ([] if a.no_pets else [("pets", "all pets")])
    rows = []
    for kind, label in variants:
        r = child("sweep", str(n), kind, str(a.repeats if kind == "ok" else 0))
        if kind == "ok" and r["pairs"]:
            loops = [p[0] for p in r["pairs"]]
            sweeps = [p[1] for p in r["pairs"]]
            ratio = statistics.median(p[1] / p[0] for p in r["pairs"])
            cpu_ratio = statistics.median(p[3] / p[2] for p in r["pairs"])
            print(f"steady sweep / plain loop, same process, {len(r['pairs'])} pairs: "
                  + ", ".join(f"{p[1]:.2f}/{p[0]:.2f}" for p in r["pairs"])
                  + f" s; median ratio {ratio:.1f}x (CPU time: {cpu_ratio:.1f}x)")
            rows.append(report.row(
                f"audit sweep of {n:,} instances, steady (nothing changed)",
                f"{statistics.median(sweeps):.2f} s (median of {len(sweeps)}, 0 records)",
                f"plain loop listing the same instances {statistics.median(loops):.2f} s "
                "(same process, run before each sweep)",
                ratio, "<= 3x the loop's time", ratio <= 3))
        for which in ("first", "steady"):
            x = r[which]
            print(f"sweep, {label}, {which:<6}       {x['seconds']:7.2f} s {x['rate']:10.0f} "
                  f"inst/s  peak {mb(x['peak_kb'])}, growth {mb(x['growth_kb'])}  "
                  f"({x['records']} ledger records, {x['findings']} findings; "
                  f"{base['rate'] / x['rate']:.0f}x the plain loop's time)")

    report.write(a.json, "python bench/bench_audit.py", rows)
    if a.no_export:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        fill = child("fill", str(state), str(a.lines))
        print(f"\n# audit export (ledger filled with {a.lines} observation events in "
              f"{fill['seconds']:.1f} s)")
        results = {}
        for lines in (a.small_lines, a.lines):
            out = Path(tmp) / f"bundle-{lines}.jsonl"
            r = child("export", str(state), str(lines), str(out))
            results[lines] = r
            print(f"export {r['events']:>8} event lines   {r['seconds']:7.2f} s "
                  f"{r['rate']:10.0f} lines/s  {r['bytes'] / 1e6:7.0f} MB  "
                  f"peak {mb(r['peak_kb'])}, growth {mb(r['growth_kb'])}")
            if lines == a.small_lines:
                v = child("verify", str(state), str(out))
                print(f"verify offline {v['lines']:>8} lines {v['seconds']:7.2f} s "
                      f"{v['rate']:10.0f} lines/s  peak {mb(v['peak_kb'])}, "
                      f"growth {mb(v['growth_kb'])}")
            out.unlink()
        small, big = results[a.small_lines], results[a.lines]
        print(f"\n{a.lines // a.small_lines}x the lines: {big['seconds'] / small['seconds']:.1f}x "
              f"the time, peak RSS {mb(small['peak_kb'])} -> {mb(big['peak_kb'])}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
