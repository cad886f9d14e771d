"""Takeover time after kill -9 of the leader: two immd on one PostgreSQL database.

    python bench/bench_failover.py [--lease-s 10] [--repeat 5] [--json PATH]

A throwaway PostgreSQL 15 cluster (Debian's binaries, tests/pgcluster.py: initdb, fsync off) and
two immd on one database with ``[cluster] lease_s``. Each round finds the leader, SIGKILLs it
and measures, from the kill, how long until the other immd says ``leader`` in ``immctl status``
(polled every 50 ms), then starts the killed immd again (it follows). The bound is ``lease_s``:
a follower asks every ``lease_s / 4`` and a lease written lasts ``lease_s * 3/4``, so a takeover
comes at most ``lease_s`` after the leader's last renewal. Medians count. Everything started is
stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import pgcluster  # noqa: E402
from daemon import Immd, reap_under  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402


def role(d: Immd) -> str:
    cp = d.run("status", "--json", check=False)
    if cp.returncode != 0:
        return "unreachable"
    return str(json.loads(cp.stdout)["cluster"]["role"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lease-s", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not pgcluster.available():
        print("PostgreSQL 15 is not installed (apt-get install postgresql)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="imm-bench-failover-"))
    cluster = pgcluster.start()
    daemons: list[Immd] = []
    takeovers: list[float] = []
    try:
        db = cluster.new_database("bench")
        cfg = f'[state]\nurl = "{cluster.dsn(db)}"\n\n[cluster]\nlease_s = {a.lease_s:g}\n'
        for name in ("a", "b"):
            (work / name).mkdir()
        first = Immd(work / "a", cfg).start()
        second = Immd(work / "b", cfg)
        shutil.copytree(first.state / "keys", second.state / "keys")
        second.start()
        daemons += [first, second]
        for _ in range(a.repeat):
            leader = next(d for d in daemons if role(d) == "leader")
            other = next(d for d in daemons if d is not leader)
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            leader.proc.wait()
            while role(other) != "leader":
                if time.monotonic() - t0 > 3 * a.lease_s + 30:
                    raise SystemExit(f"no takeover within {3 * a.lease_s + 30:g}s")
                time.sleep(0.05)
            takeovers.append(time.monotonic() - t0)
            leader.stop()
            leader.start()  # it follows now
    finally:
        for d in daemons:
            d.stop()
            reap_under(d.root)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median(takeovers)
    print(f"takeover after kill -9 of the leader, lease_s = {a.lease_s:g}, {a.repeat} rounds")
    print(f"  median {med:.2f}s   min {min(takeovers):.2f}s   max {max(takeovers):.2f}s   "
          f"(bound: lease_s = {a.lease_s:g}s)")
    print("  rounds: " + ", ".join(f"{t:.2f}" for t in takeovers))
    # python -m bench appends the arguments to the command itself
    report.write(a.json, "python bench/bench_failover.py", [
        report.row(f"takeover after kill -9 of the leader (lease_s {a.lease_s:g})",
                   f"{med:.2f} s", f"{a.lease_s:g} s bound", med / a.lease_s,
                   "≤ lease_s", max(takeovers) <= a.lease_s)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
