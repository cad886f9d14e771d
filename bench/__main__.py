"""Run every benchmark and rewrite the README's benchmark table from what they measured.

    python -m bench [--quick] [--only NAME ...] [--no-readme] [--readme]

Each benchmark runs as its own process (in its own process group, killed with everything it
started if it outlives ``--timeout``), writes its headline rows as JSON (bench/report.py), and
prints its full table, which is passed through. The README's table between the markers
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is then replaced by the rows measured, with
the command of each, the machine (CPUs, memory, CPU model), the load average and the date, so
the table cannot go stale. ``--quick`` runs small sizes for trying things out and leaves the
README alone unless ``--readme`` is given. Figures on a loaded machine are noisy; each row's
ratio is against a peer measured in the same run, which is the figure that counts. With
``--only``, only those benchmarks' rows are replaced and a line says when they were measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# name -> (script, full-size arguments, quick arguments)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "hash": ("bench_hash.py", ["--size-mib", "2048", "--repeat", "5"],
             ["--size-mib", "64", "--repeat", "3"]),
    "catalog": ("bench_catalog.py", ["--images", "100000", "--sample", "0", "--skip-list-verify"],
                ["--images", "2000", "--sample", "0", "--skip-list-verify"]),
    "ledger": ("bench_ledger.py", ["--leaves", "1000000", "--single", "10000"],
               ["--leaves", "20000", "--proofs", "50", "--single", "2000"]),
    "audit": ("bench_audit.py", ["--instances", "100000", "--no-pets", "--no-export"],
              ["--instances", "5000", "--no-pets", "--no-export"]),
    "rollout": ("bench_rollout.py", ["--instances", "10", "--repeat", "5"],
                ["--instances", "4", "--repeat", "2"]),
    "cli": ("bench_cli.py", ["--images", "1000", "--runs", "40"],
            ["--images", "100", "--runs", "10"]),
    "analysis": ("bench_analysis.py", ["--n", "200"], ["--n", "30"]),
    "heal": ("bench_heal.py", ["--repeat", "5"], ["--repeat", "2"]),
    "failover": ("bench_failover.py", ["--lease-s", "10", "--repeat", "5"],
                 ["--lease-s", "2", "--repeat", "3"]),
    "dashboard": ("bench_dashboard.py", ["--images", "100000", "--instances", "10000",
                                         "--runs", "11"],
                  ["--images", "2000", "--instances", "2000", "--runs", "5",
                   "--live-runs", "5"]),
    "state": ("bench_state.py", ["--images", "2000", "--runs", "9", "--signatures", "2000",
                                 "--sign-repeat", "5"],
              ["--images", "300", "--runs", "5", "--signatures", "300", "--sign-repeat", "3"]),
    # boto3 (a second peer, ~2 min at 100k) is left to a run of its own
    "scale": ("bench_scale.py", ["--instances", "100000", "--images", "1000000",
                                 "--boto3-repeat", "0"],
              ["--quick"]),
}


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    mem = "? GiB"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.0f} GiB"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {mem}, Python {platform.python_version()}"


def run_one(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    script, _, _ = SUITE[name]
    with tempfile.TemporaryDirectory(prefix="imm-bench-json-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            # everything the benchmark started is in its process group: none of it outlives it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        took = time.perf_counter() - t0
        if rc != 0 or not out.exists():
            why = "timed out" if rc is None else f"exit code {rc}"
            print(f"=== {name}: FAILED ({why}) after {took:.0f} s", flush=True)
            return {"command": f"python bench/{script}", "rows": [], "error": why}
        result: dict[str, Any] = json.loads(out.read_text())
        result["args"] = " ".join(args)
        print(f"=== {name}: done in {took:.0f} s", flush=True)
        return result


def fmt_ratio(r: dict[str, Any]) -> str:
    x = r["ratio"]
    if "ms over" in r["goal"]:
        return f"{x:+.1f} ms"
    return f"{x:.2f}×"


def table(results: dict[str, dict[str, Any]], quick: bool, load0: str, load1: str) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        f"Measured by `python -m bench{' --quick' if quick else ''}` on {date}: {machine()}; "
        f"load average {load0} at the start, {load1} at the end. Each ratio is imm against the "
        "peer measured in the same run (the machine's load hurts both alike; absolute figures "
        "are noisy, ratios less so).",
        "",
        "| figure (command) | imm | peer, same run | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results.items():
        cmd = f"`{res['command']} {res.get('args', '')}`".replace(" `", "`")
        if not res["rows"]:
            lines.append(f"| {name} ({cmd}) | failed: {res.get('error')} | | | | |")
        for r in res["rows"]:
            met = "" if r["met"] is None else ("yes" if r["met"] else "no")
            lines.append(f"| {r['figure']} ({cmd}) | {r['imm']} | {r['peer']} | "
                         f"{fmt_ratio(r)} | {r['goal']} | {met} |")
    lines.append(END)
    return "\n".join(lines)


def merged(text: str, names: list[str], load0: str, load1: str) -> str:
    """The README's table with only the rows of ``names`` replaced by the ones in ``text`` (a
    table of those alone): the other benchmarks' rows stay as their last run left them, and a
    line under the heading says which rows were measured again, when, and at what load."""
    old = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END),
                    (ROOT / "README.md").read_text(), re.S)
    if old is None:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers: nothing rewritten")
    lines = old.group(1).strip("\n").split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("| figure"))
    head, rows = lines[:first], lines[first + 2:]
    fresh = [line for line in text.split("\n") if line.startswith("| ")][2:]

    def script(line: str) -> str | None:
        m = re.search(r"`python bench/(bench_\w+\.py)", line)
        return m.group(1) if m else None

    by_name: dict[str, list[str]] = {n: [] for n in SUITE}
    for line in rows:
        owner = next((n for n, spec in SUITE.items() if spec[0] == script(line)), None)
        if owner is not None and owner not in names:
            by_name[owner].append(line)
    for line in fresh:
        owner = next((n for n, spec in SUITE.items() if spec[0] == script(line)), None)
        by_name[owner or names[0]].append(line)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    while head and not head[-1].strip():
        head.pop()
    head += ["", f"Measured again by `python -m bench --only {' '.join(names)}` on {date} "
                 f"(load average {load0} at the start, {load1} at the end): the rows of "
                 f"{', '.join(names)}; the others are from the run named above."]
    body = [row for n in SUITE for row in by_name[n]]
    return "\n".join([BEGIN, *head, "", "| figure (command) | imm | peer, same run | ratio | "
                       "goal | met |", "| --- | --- | --- | --- | --- | --- |", *body, END])


def rewrite_readme(text: str) -> None:
    readme = ROOT / "README.md"
    old = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(old):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers: nothing rewritten")
    readme.write_text(pattern.sub(lambda _: text, old))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; README left alone")
    ap.add_argument("--only", nargs="+", choices=sorted(SUITE), help="run these only")
    ap.add_argument("--readme", action="store_true", help="rewrite the README even with --quick")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark at most")
    args = ap.parse_args(argv)
    names = args.only or list(SUITE)
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = {}
    for name in names:
        _, full, quick = SUITE[name]
        results[name] = run_one(name, quick if args.quick else full, args.timeout)
    load1 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = table(results, args.quick, load0, load1)
    print("\n" + text)
    if (args.readme or not args.quick) and not args.no_readme:
        if args.only and not args.quick:
            text = merged(text, names, load0, load1)  # the other rows stay
        rewrite_readme(text)
        print("README.md: benchmark table rewritten")
    return 0 if all(r["rows"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
