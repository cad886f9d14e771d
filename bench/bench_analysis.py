"""Analysis decision latency: one measurement and its verdict, against a bare query.

    python bench/bench_analysis.py [--n 200] [--json PATH]

Starts Debian's Prometheus on a free 127.0.0.1 port (no targets: the query,
``sum(label_replace(vector(0.1), "imm_digest", "<digest>", "", ""))``, is answered by the
query engine without stored series), then times, n times each (median and p95):

- ``bare``: one ``GET /api/v1/query`` with urllib, JSON decoded;
- ``imm``: the built-in ``prometheus`` kind's ``measure`` (templating, the same request, the
  answer checked to one number) plus ``imm.rollout.analysis.judge`` (the failure condition
  evaluated by asteval) — what a rollout step does per measurement, minus its interval.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from imm.plugins.analysis.prometheus import Prometheus
from imm.plugins.analysis_base import AnalysisTarget, Condition
from imm.rollout.analysis import judge
from imm.rollout.services import AnalysisSpec

QUERY = 'sum(label_replace(vector(0.1), "imm_digest", "${digest}", "", ""))'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    runs.sort()
    return statistics.median(runs), runs[int(len(runs) * 0.95) - 1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    args = ap.parse_args()
    n = args.n
    root = Path(tempfile.mkdtemp(prefix="imm-bench-prom-"))
    (root / "prom.yml").write_text("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    port = free_port()
    proc = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                             f"--config.file={root / 'prom.yml'}",
                             f"--storage.tsdb.path={root / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        target = AnalysisTarget("web", "web-1", "canary", "sha256:" + "ab" * 32)
        bare_q = f"{url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": QUERY.replace("${digest}", target.digest)})

        def bare() -> None:
            with urllib.request.urlopen(bare_q, timeout=5) as r:
                json.loads(r.read())

        kind = Prometheus("bench", {"url": url, "query": QUERY}, {})
        spec = AnalysisSpec(name="bench", kind="prometheus", when="each-step", measure=kind,
                            success=None, failure=Condition("c", "result >= 0.05", ("result",)))

        def imm() -> None:
            phase, _ = judge(spec, kind.measure(target).values)
            assert phase == "failed"

        rows = [("bare GET /api/v1/query", *timed(bare, n)),
                ("imm measure + judge", *timed(imm, n))]
        print(f"{'row':<26}{'median ms':>10}{'p95 ms':>10}   (n={n}, Prometheus 127.0.0.1)")
        for name, med, p95 in rows:
            print(f"{name:<26}{med:>10.2f}{p95:>10.2f}")
        print(f"overhead of imm per measurement: {rows[1][1] - rows[0][1]:.2f} ms (median)")
        (_, bare_med, _), (_, imm_med, imm_p95) = rows
        report.write(args.json, "python bench/bench_analysis.py", [
            report.row("analysis decision, one Prometheus query to its verdict (median)",
                       f"{imm_med:.2f} ms (p95 {imm_p95:.2f})",
                       f"bare GET /api/v1/query {bare_med:.2f} ms", imm_med / bare_med)])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
