"""Image lifecycle end to end: a real immd with the local provider and haproxy, an audit sweep
that sees what runs, and deprecate / expire / scheduled revoke driven through immctl."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import free_port
from harness import Immd, have

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
REPO = Path(__file__).resolve().parent.parent


def test_expire_and_revoke_at_are_refused_while_running(tmp_path: Path) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = ('[providers.local]\nkind = "local"\n\n[routers.haproxy]\nkind = "haproxy"\n'
           'stop_on_close = false\n\n[services.web]\n'
           'targets = [{ provider = "local", region = "local", count = 1 }]\n'
           'router = "haproxy"\nhealth_timeout_s = 10\ndrain_timeout_s = 2\n'
           f'route_settings = {{ bind = "127.0.0.1:{port}", health_path = "/healthz", '
           'check_interval_ms = 200, rise = 1, fall = 1 }\n')
    d = Immd(tmp_path, cfg).start()
    for v in ("v1", "v2", "v3"):
        d.run("image", "add", str(images / v), "--name", "web", "--version", v)
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    d.run("audit", "run", "--wait")
    (inst,) = [i for i in d.items("instance", "list") if i["tags"].get("imm:service") == "web"]

    size = d.ledger_size()
    cp = d.fails("image", "expire", "web@v1", "--at", "+1h", code=4)
    assert inst["id"] in cp.stderr and "--force" in cp.stderr and "(web)" in cp.stderr
    cp = d.fails("image", "revoke", "web@v1", "--reason", "CVE-2026-1", "--at", "+1h", code=4)
    assert inst["id"] in cp.stderr
    cp = d.fails("image", "expire", "web@v1", "--at", "tomorrow", code=2)
    assert "--at 'tomorrow' is not a time" in cp.stderr
    cp = d.fails("image", "expire", "web@v9", "--at", "+1h", code=3)
    assert d.ledger_size() == size

    r = d.json("image", "expire", "web@v1", "--at", "+1h", "--force")
    assert r["forced_over"] and inst["id"] in r["forced_over"][0]
    assert d.ledger_size() == size + 1
    shown = d.run("image", "show", "web@v1").stdout
    assert "warning" in shown and "expires at" in shown

    # deprecated: still rolls out, with a warning wherever it shows
    d.json("image", "deprecate", "web@v2", "--reason", "use v3")
    out = d.run("rollout", "start", "web", "--image", "web@v2", "--wait")
    assert "deprecated" in out.stderr and "use v3" in out.stderr
    assert "deprecated by" in d.run("image", "show", "web@v2").stdout

    # expired (v1 is no longer running): a rollout to it is refused by not-expired
    d.run("audit", "run", "--wait")
    d.json("image", "expire", "web@v1", "--at", "now")
    cp = d.fails("rollout", "start", "web", "--image", "web@v1", code=6)
    assert "refused by rule 'not-expired'" in cp.stderr and "expired at" in cp.stderr

    # a scheduled revocation happens by itself when its time comes
    r = d.json("image", "revoke", "web@v3", "--reason", "CVE-2026-2", "--at", "+2s")
    assert d.json("image", "show", "web@v3")["status"] == "active"
    deadline = time.monotonic() + 20
    while d.json("image", "show", "web@v3")["status"] != "revoked":
        assert time.monotonic() < deadline, "the scheduled revocation did not happen"
        time.sleep(0.5)
    rev = d.json("image", "show", "web@v3")["revocation"]
    assert rev["reason"] == "CVE-2026-2" and "scheduled at leaf" in rev["actor"]
    records = d.json("image", "lifecycle", "web@v3")["records"]
    assert records[0]["state"] == "done"
    assert d.run("image", "verify", "--all").returncode == 0
    assert d.run("ledger", "verify").returncode == 0
