"""Metric analysis end to end: a real immd, its haproxy, the example app and a real Prometheus.

Prometheus (Debian's 2.42) scrapes the instances through file-based service discovery; the
target file is written by immd itself (``[analysis] prometheus_sd_file``), labelled with each
instance's service, rollout, image digest and role. v4 passes its health check but answers
10 % of requests with 500: only the error-ratio analysis catches it, at the first canary step.
v2 passes the same analysis; a dry-run analysis with a threshold every image breaks is
recorded as failed and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backends import LoadClient, free_port
from harness import Immd, have
from test_e2e_rollout import BASE, images, instances, register, service  # noqa: F401

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (have("haproxy") and have("prometheus")),
                                 reason="haproxy and prometheus are needed")]

RATIO = ('sum(rate(app_requests_total{imm_digest="${digest}",status="500"}[5s])) / '
         'sum(rate(app_requests_total{imm_digest="${digest}"}[5s]))')
RATE = 'sum(rate(app_requests_total{imm_digest="${digest}",imm_role="${role}"}[5s]))'


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus scraping every second whatever the target file lists; (url, that file)."""
    root = tmp_path / "prom"
    root.mkdir()
    targets = root / "targets.json"
    (root / "prom.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: imm\n"
        f"  file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n")
    port = free_port()
    log = (root / "prom.log").open("wb")
    proc = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus", f"--config.file={root / 'prom.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.05)
        yield url, targets
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


SECRET = "e2e-hook-secret"


class Hooks(ThreadingHTTPServer):
    """A webhook receiver checking every body's HMAC-SHA256 signature."""

    daemon_threads = True

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.bad = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if hmac.compare_digest(self.headers.get("X-Imm-Signature", ""), want):
                    outer.events.append(json.loads(body))
                    self.send_response(204)
                else:
                    outer.bad += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def analysis_config(prom_url: str, sd_file: Path, port: int, hook_url: str) -> str:
    return (BASE
            + f'[notifications.hook]\nkind = "webhook"\nurl = "{hook_url}"\n'
              'secret_env = "IMM_E2E_HOOK_SECRET"\nservices = ["web"]\n'
              'events = ["rollout.started", "rollout.completed", "rollout.rolled-back", '
              '"analysis.failed"]\n\n'
            + f'[analysis]\nprometheus_url = "{prom_url}"\nprometheus_sd_file = "{sd_file}"\n\n'
            + service("web", port, count=2, strategy="canary", canary_steps=[50],
                      canary_pause_s=0)
            + "\n[[services.web.analysis]]\n"
              'name = "error-ratio"\nkind = "prometheus"\nwhen = "each-step"\n'
              f"query = '{RATIO}'\n"
              'failure_condition = "result >= 0.05"\n'
              # Prometheus applies new targets at most every 5 s: wait, and let measurements
              # without data count as inconclusive meanwhile
              "initial_delay_s = 5\ninterval_s = 1\ncount = 4\ninconclusive_limit = 8\n"
            + "\n[[services.web.analysis]]\n"
              'name = "vs-stable"\nkind = "compare"\n'
              f"query = '{RATIO}'\n"
              'failure_condition = "canary > stable * 1.1 + 0.02"\ncount = 1\n'
            + "\n[[services.web.analysis]]\n"
              'name = "api-ratio"\nkind = "http"\n'
              # Prometheus' own HTTP API as the web peer: how many of the service's targets are up
              f'url = "{prom_url}/api/v1/query?query=count(up%7Bimm_service%3D%22${{service}}%22%7D)"\n'
              'json_path = "$.data.result[0].value[1]"\n'
              'success_condition = "result >= 2"\ncount = 1\n'
            + "\n[[services.web.analysis]]\n"
              'name = "rate-trial"\nkind = "prometheus"\ndry_run = true\n'
              f"query = '{RATE}'\n"
              'failure_condition = "result > 1"\ncount = 1\n')


def ledger_body(d: Immd, index: int) -> dict:
    con = sqlite3.connect(f"file:{d.state / 'imm.db'}?mode=ro", uri=True)
    try:
        (data,) = con.execute("SELECT data FROM ledger_leaves WHERE idx=?", (index,)).fetchone()
    finally:
        con.close()
    return json.loads(base64.b64decode(json.loads(data)["payload"]))


def test_error_ratio_analysis_rolls_v4_back_and_lets_v2_through(
        tmp_path: Path, images: Path, prometheus: tuple[str, Path]) -> None:  # noqa: F811
    prom_url, sd_file = prometheus
    port = free_port()
    hooks = Hooks()
    d = Immd(tmp_path, analysis_config(prom_url, sd_file, port, hooks.url)).start(
        extra_env={"IMM_E2E_HOOK_SECRET": SECRET})
    register(d, images, "v1", "v2", "v4")
    d.run("rollout", "start", "web", "--image", "web@v1", "--strategy", "blue-green", "--wait")
    v1 = {i["id"] for i in instances(d, "web")}
    groups = json.loads(sd_file.read_text())
    assert {g["labels"]["imm_instance"] for g in groups} == v1, "immd wrote the targets"
    assert {g["labels"]["imm_role"] for g in groups} == {"stable"}

    # v4: healthy, but 10 % of its answers are 500 → rolled back at the first canary step
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        cp = d.run("rollout", "start", "web", "--image", "web@v4", "--wait", check=False)
        stats = load.stop()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    rid = d.items("rollout", "list", "--service", "web")[0]["id"]
    st = d.json("rollout", "status", rid)
    assert st["state"] == "rolled-back"
    m = re.match(r"analysis error-ratio \(prometheus\) failed: result = ([0-9.e-]+) meets "
                 r'failure_condition "result >= 0.05" \(query: sum\(rate\(app_requests_total'
                 r'\{imm_digest="(sha256:[0-9a-f]+)",status="500"\}', st["error"])
    assert m, st["error"]
    ratio = float(m.group(1))
    assert 0.05 <= ratio <= 0.2, ratio
    assert m.group(2) == st["image"], "the query was templated with v4's digest"
    assert st["analysis"]["step"] == "4-pause", "the first canary step"
    runs = d.items("rollout", "analysis", rid)
    assert [(a["name"], a["verdict"]) for a in runs] == [("error-ratio", "failed")]
    body = ledger_body(d, runs[0]["ledger_index"])
    assert body["action"] == "analysis" and body["rollout"] == rid
    recorded = float(body["detail"]["measurements"][-1]["values"]["result"])
    assert recorded == pytest.approx(ratio, rel=1e-5), "the signed record holds the value"
    # the only failed requests are v4's 500s, while it held its share of the traffic
    assert stats.failed > 0 and all('"v4"' in e for e in stats.errors), stats
    assert stats.failed < 0.1 * stats.total, stats
    live = instances(d, "web")
    assert len(live) == 2 and {i["tags"]["imm:digest"] for i in live} != {st["image"]}

    # v2 through the same config completes; the dry run records its failing value
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        r = d.json("rollout", "start", "web", "--image", "web@v2", "--wait", check=False)
        stats = load.stop()
    assert r["state"] == "completed", r["error"]
    assert stats.failed == 0 and stats.ok > 100, stats
    runs = d.items("rollout", "analysis", r["id"])
    assert [(a["name"], a["verdict"], a["dry_run"]) for a in runs] == [
        ("error-ratio", "successful", False), ("vs-stable", "successful", False),
        ("api-ratio", "successful", False), ("rate-trial", "failed", True)]
    vs = runs[1]["measurements"][0]["values"]
    assert set(vs) == {"canary", "stable"} and float(vs["canary"]) < 0.05, vs
    assert f'stable: sum(rate(app_requests_total{{imm_digest="{r["previous"]}"' in runs[1]["query"]
    assert float(runs[2]["measurements"][0]["values"]["result"]) >= 2
    ok = [x for x in runs[0]["measurements"] if x["phase"] == "successful"]
    assert ok and all(float(x["values"]["result"]) < 0.05 for x in ok)
    trial = runs[3]["measurements"][0]
    assert float(trial["values"]["result"]) > 1, trial
    assert runs[3]["reason"].startswith("analysis rate-trial (prometheus) failed: result = ")
    assert ledger_body(d, runs[3]["ledger_index"])["detail"]["dry_run"] is True
    groups = json.loads(sd_file.read_text())
    assert {g["labels"]["imm_digest"] for g in groups} == {r["image"]}
    listing = d.run("rollout", "analysis", r["id"]).stdout
    assert "rate-trial" in listing and "failed (dry run)" in listing

    # the webhook heard it all, signed: the v4 analysis failure and rollback, v2's dry run
    deadline = time.monotonic() + 15
    while len(hooks.events) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    hooks.shutdown()
    assert hooks.bad == 0
    got = [(e["event"], e["rollout"], e.get("dry_run")) for e in hooks.events]
    v1 = got[0][1]
    assert got == [("rollout.started", v1, None), ("rollout.completed", v1, None),
                   ("rollout.started", rid, None), ("analysis.failed", rid, False),
                   ("rollout.rolled-back", rid, None), ("rollout.started", r["id"], None),
                   ("analysis.failed", r["id"], True), ("rollout.completed", r["id"], None)]
    assert "result = " in hooks.events[4]["reason"]
