"""SIGHUP re-reads the config: services and scheduled audit sweeps change without a restart,
and a broken config is refused while the running one stays in force."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness import Immd

BASE = '[providers.local]\nkind = "local"\n'
WEB = '[services.web]\ntargets = [{ provider = "local", region = "local", count = 1 }]\n'


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_sighup_reloads_services_and_audit_schedule(tmp_path: Path) -> None:
    d = Immd(tmp_path, BASE).start()
    assert d.items("service", "list") == []
    assert d.proc is not None
    cfg = tmp_path / "immd.toml"
    cfg.write_text(BASE + WEB + "[audit]\ninterval_s = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: [s["name"] for s in d.items("service", "list")] == ["web"])
    # the scheduler picks the new interval up and sweeps on its own
    def swept() -> bool:
        cp = d.run("audit", "status", "--json", check=False)
        return cp.returncode == 0 and '"actor"' in cp.stdout

    assert not swept()
    wait_for(swept, timeout=40)
    # a broken config is refused; the running one stays
    cfg.write_text(BASE + WEB + "[services.bad]\nstrategy = \"sideways\"\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: b"services not changed" in d.log.read_bytes())
    assert [s["name"] for s in d.items("service", "list")] == ["web"]
    assert d.proc.poll() is None
