"""A revoked image still running: the audit finds its blast radius, and replaces it by rolling
each affected service to its channel's head, under load, with no failed request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backends import LoadClient, free_port
from harness import Immd, have
from test_e2e_rollout import BASE, images, instances, register, service  # noqa: F401

pytestmark = pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")


def test_blast_radius_is_replaced_from_the_channel(tmp_path: Path, images: Path  # noqa: F811
                                                   ) -> None:
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=2, channel="web/production")).start()
    register(d, images, "v1", "v2")
    d.run("channel", "set", "web/production", "web@v1")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    d.run("channel", "set", "web/production", "web@v2")
    d.run("image", "revoke", "web@v1", "--reason", "CVE-2026-7777")
    d.json("audit", "run", "--wait")
    radius = d.json("audit", "blast-radius", "web@v1")
    assert radius["total"] == 2 and radius["services"] == {"web": 2}
    findings = d.items("audit", "findings", "--open")
    rows = findings["findings"] if isinstance(findings, dict) else findings
    assert sum(1 for f in rows if f["verdict"] == "revoked") == 2
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        r = d.json("audit", "blast-radius", "web@v1", "--replace")
        assert len(r["rollouts"]) == 1 and not r["refused"], r
        end = d.json("rollout", "watch", r["rollouts"][0]["id"])
        assert end["state"] == "completed"
        time.sleep(0.5)
        stats = load.stop()
    assert stats.failed == 0, stats
    v2 = d.json("image", "show", "web@v2")["digest"]
    assert {i["tags"]["imm:digest"] for i in instances(d, "web")} == {v2}
    d.json("audit", "run", "--wait")
    assert d.json("audit", "blast-radius", "web@v1")["total"] == 0
    findings = d.items("audit", "findings", "--open")
    rows = findings["findings"] if isinstance(findings, dict) else findings
    assert not [f for f in rows if f["verdict"] == "revoked"], rows
