"""immctl's latency as a person feels it, next to peers run in the same loop.

    python bench/bench_cli.py [--images 50] [--runs 50] [--warmup 3] [--hyperfine] [--no-pyc-cache]
                              [--dev-venv]

Starts a real immd on a temporary state dir, registers ``--images`` tiny images through the
API, then times immctl as users install it: a virtualenv made in the temporary dir (``python
-m venv --without-pip`` of the interpreter under this one), the project put on its path by a
plain ``.pth`` line (no import hook: what a wheel's files cost to import) and the script
``bin/immctl`` as pip installs it (its ``#!`` line pointed at the virtualenv's python; immctl
ships as a plain script, not a console-scripts wrapper, which would ``import re``).
``--dev-venv`` times the development virtualenv's immctl
instead, whose editable install imports pathlib, re, urllib and more at every interpreter
start (``python -c pass`` included). It times, as whole processes:

- ``immctl image list`` (default limit: one page holding every image, printed as a table)
  against ``curl -s --unix-socket SOCK http://imm/v1/images`` (the same endpoint and query);
- ``immctl --help`` (start-up, argument parsing, no request) against ``python -c pass`` run by
  the interpreter of immctl's own ``#!`` line (the start-up floor);
- ``immctl image list --json`` against that ``python -c pass`` again (the goal's figure).

Runs are interleaved (A B B A A B ...: a noisy neighbour hurts both sides alike) after
``--warmup`` untimed runs of each; the table gives the median and p95 wall time and the median
CPU time (user+system, from wait4) of each command, and the ratios immctl/peer. Output goes to
/dev/null. With ``--hyperfine`` (if installed) the same pairs are also run by
``hyperfine -N`` (not interleaved: one command's runs, then the other's) as a cross-check.

Child processes get a bytecode cache in the temporary dir (PYTHONPYCACHEPREFIX, and
PYTHONDONTWRITEBYTECODE dropped), as an installed immctl has its .pyc files; ``--no-pyc-cache``
runs them in the environment as it is. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import report  # noqa: E402

from imm.cli.client import Client  # noqa: E402

from daemon import Immd  # noqa: E402


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def shebang_python(script: str) -> str:
    with open(script, "rb") as f:
        first = f.readline().decode().strip()
    if first.startswith("#!") and "python" in first:
        return first[2:].split()[0]
    return sys.executable


def clean_venv(where: Path) -> str:
    """A virtualenv at ``where`` holding immctl as a wheel install would (see the module's
    docstring); the path of its immctl."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python3"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "imm.pth").write_text(str(REPO) + "\n")
    # the script pip installs: bin/immctl with its #! line pointed at the virtualenv's python
    shipped = (REPO / "bin" / "immctl").read_text().split("\n", 1)[1]
    script = where / "bin" / "immctl"
    script.write_text(f"#!{py}\n{shipped}")
    script.chmod(0o755)
    return str(script)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` once; (wall seconds, child CPU seconds user+system)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read() if p.stderr else b""
    if p.stderr:
        p.stderr.close()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err.decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(math.ceil(0.95 * len(s)) - 1, 0)]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


Pair = tuple[str, list[str], str, list[str]]


def interleaved(pairs: list[Pair], env: dict[str, str], runs: int,
                warmup: int) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for a, cmd_a, b, cmd_b in pairs:
        for _ in range(warmup):
            timed(cmd_a, env)
            timed(cmd_b, env)
        out[a], out[b] = ([], []), ([], [])
    for r in range(runs):
        for a, cmd_a, b, cmd_b in pairs:
            order = ((a, cmd_a), (b, cmd_b)) if r % 2 == 0 else ((b, cmd_b), (a, cmd_a))
            for name, cmd in order:
                wall, cpu = timed(cmd, env)
                out[name][0].append(wall)
                out[name][1].append(cpu)
    return out


def hyperfine(pairs: list[Pair], env: dict[str, str], runs: int, warmup: int,
              tmp: Path) -> dict[str, list[float]]:
    out = {}
    for a, cmd_a, b, cmd_b in pairs:
        export = tmp / "hyperfine.json"
        subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", str(warmup),
                        "--runs", str(runs), "--export-json", str(export),
                        "-n", a, " ".join(cmd_a), "-n", b, " ".join(cmd_b)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        for r in json.loads(export.read_text())["results"]:
            out[r["command"]] = r["times"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=50, help="images in the catalog (default 50)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per command (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per command first")
    ap.add_argument("--hyperfine", action="store_true", help="cross-check with hyperfine -N")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="run immctl as the environment says (e.g. PYTHONDONTWRITEBYTECODE)")
    ap.add_argument("--dev-venv", action="store_true",
                    help="time the development virtualenv's immctl (editable install) instead "
                         "of a clean virtualenv's")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the temporary dir")
    ap.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    args = ap.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the peer")
    if args.hyperfine and not shutil.which("hyperfine"):
        raise SystemExit("--hyperfine: hyperfine is not installed (apt-get install hyperfine)")

    with tempfile.TemporaryDirectory(prefix="imm-bench-cli-", dir=args.dir) as tmpname, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpname)
        # images are posted by path, as an API client that passes no descriptor does: immd
        # reads paths only under image_roots
        immd = Immd(tmp, f'[daemon]\nimage_roots = ["{tmp / "files"}"]\n',
                    pyc_cache=not args.no_pyc_cache).start()
        stack.callback(immd.stop)
        client = Client(str(immd.sock))
        files = tmp / "files"
        files.mkdir()
        for i in range(args.images):
            p = files / f"{i:05d}.raw"
            p.write_bytes(b"imm bench image %d\n" % i)
            client.request("POST", "/v1/images",
                           {"path": str(p), "name": f"svc{i % 10}", "version": str(i)})
        sock = str(immd.sock)
        immctl = str(immd.immctl) if args.dev_venv else clean_venv(tmp / "venv")
        list_cmd = [immctl, "image", "list"]
        curl_cmd = ["curl", "-s", "-f", "--unix-socket", sock, "http://imm/v1/images"]
        # Both sides must show the whole catalog (default limit 100 holds it up to 100 images).
        shown = json.loads(subprocess.run([*list_cmd, "--json"], capture_output=True, text=True,
                                          env=immd.env, check=True).stdout)
        got = json.loads(subprocess.run(curl_cmd, capture_output=True, check=True).stdout)
        if [i["digest"] for i in shown["items"]] != [i["digest"] for i in got["images"]]:
            raise RuntimeError("immctl image list and curl disagree on the catalog: "
                               f"{len(shown['items'])} vs {len(got['images'])} images")
        pairs: list[Pair] = [
            ("immctl image list", list_cmd, "curl --unix-socket .../v1/images", curl_cmd),
            ("immctl --help", [immctl, "--help"], "python -c pass", [shebang_python(immctl),
                                                                   "-c", "pass"]),
            ("immctl image list --json", [*list_cmd, "--json"], "python -c pass (2)",
             [shebang_python(immctl), "-c", "pass"]),
        ]
        load0 = loadavg()
        res = interleaved(pairs, immd.env, args.runs, args.warmup)
        load1 = loadavg()
        hf = hyperfine(pairs, immd.env, args.runs, args.warmup, tmp) if args.hyperfine else None
        load2 = loadavg()

    print(f"immctl latency: catalog of {args.images} images (one default page), {args.runs} runs "
          f"per command, interleaved, after {args.warmup} warm-up runs; "
          f"{'bytecode cache on' if not args.no_pyc_cache else 'environment as is'}; "
          f"{'development virtualenv (editable install)' if args.dev_venv else 'clean virtualenv'}; "
          f"{os.cpu_count()} CPUs")
    print(f"load average (1/5/15 min): start {load0}, end {load1}")
    print()
    head = (f"{'command':34} {'median':>10} {'p95':>10} {'min':>10} {'CPU med':>10}   "
            f"{'vs peer: median':>15} {'p95':>6} {'CPU':>6}")
    print(head)
    print("-" * len(head))
    for a, _, b, _ in pairs:
        wa, ca = res[a]
        wb, cb = res[b]
        print(f"{b:34} {ms(statistics.median(wb)):>10} {ms(p95(wb)):>10} {ms(min(wb)):>10} "
              f"{ms(statistics.median(cb)):>10}   {'(peer)':>15}")
        print(f"{a:34} {ms(statistics.median(wa)):>10} {ms(p95(wa)):>10} {ms(min(wa)):>10} "
              f"{ms(statistics.median(ca)):>10}   "
              f"{statistics.median(wa) / statistics.median(wb):>14.2f}x "
              f"{p95(wa) / p95(wb):>5.2f}x {statistics.median(ca) / statistics.median(cb):>5.2f}x")
    (wa, ca), (wb, cb) = res["immctl image list --json"], res["python -c pass (2)"]
    over = (statistics.median(wa) - statistics.median(wb)) * 1000
    over_cpu = (statistics.median(ca) - statistics.median(cb)) * 1000
    print(f"immctl image list --json over the interpreter's start (medians): wall {over:+.1f} ms, "
          f"CPU {over_cpu:+.1f} ms")
    # The goal is judged on CPU time (user+system of the process): on an idle machine it is
    # the wall time less the daemon's answer; on a loaded one wall time mostly measures waiting.
    report.write(args.json, "python bench/bench_cli.py", [
        report.row(f"immctl image list --json ({args.images} images, "
                   f"{'development' if args.dev_venv else 'clean'} virtualenv), median of "
                   f"{args.runs}, CPU (wall)", f"{ms(statistics.median(ca))} ({ms(statistics.median(wa))})",
                   f"python3 -c pass {ms(statistics.median(cb))} ({ms(statistics.median(wb))})",
                   over_cpu, "<= +6 ms over python (CPU)", over_cpu <= 6.0),
    ])
    print()
    print("vs peer: immctl's figure over the peer's (above 1 = immctl slower). CPU = user+system "
          "of the process, less sensitive to a loaded machine than wall time.")
    if hf is not None:
        print()
        print(f"cross-check, hyperfine -N (not interleaved; load at end {load2}):")
        for a, _, b, _ in pairs:
            ta, tb = hf[a], hf[b]
            print(f"  {b:34} median {ms(statistics.median(tb)):>9}  p95 {ms(p95(tb)):>9}")
            print(f"  {a:34} median {ms(statistics.median(ta)):>9}  p95 {ms(p95(ta)):>9}  "
                  f"{statistics.median(ta) / statistics.median(tb):.2f}x median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
