"""Benchmark the trust layer against named peers.

    python bench/bench_trust.py [--verifies 200] [--heads 10000] [--images 2000]

1. Verifying one approval: imm's in-process SSHSIG check (sshsig.verify) against a bare
   ``ssh-keygen -Y verify`` of the same signature (OpenSSH, one process per check, as a script
   or git would run it), in the same run, with a key and signature made by ssh-keygen.
2. Re-signing channel heads: N channels in a catalog in a temp dir, then one refresh that
   re-signs all N heads (each a DSSE statement signed with the daemon's Ed25519 key).
3. ``image verify --all`` (verify_rows) over M images, then again with one attestation each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def bench_verify(n: int) -> None:
    from sshkeys import make_key, sign, ssh_verify

    from imm.catalog import sshsig

    tmp = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    key = make_key(tmp, "sre-1")
    pub = Path(f"{key}.pub").read_text()
    stmt = b'{"action":"channel-set","change":"c-0000abcd"}'
    sig = sign(key, stmt)
    t = time.perf_counter()
    for _ in range(n):
        sshsig.verify(sig, stmt)
    ours = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n // 4 or 1):
        assert ssh_verify(tmp, "sre-1", pub, sig, stmt).returncode == 0
    theirs = (time.perf_counter() - t) / (n // 4 or 1)
    print(f"verify one approval: imm in-process {ours * 1e6:.0f} us, ssh-keygen -Y verify "
          f"{theirs * 1e3:.1f} ms per check ({theirs / ours:.0f}x)")


def bench_heads(n: int) -> None:
    from imm.catalog import freshness
    from imm.catalog.keys import KeyRing
    from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
    from imm.catalog.service import Catalog
    from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
    from imm.store.sqlite import connect, migrate, transaction

    tmp = Path(tempfile.mkdtemp(prefix="bench-heads-"))
    ring, _ = KeyRing.load_or_create(tmp / "keys")
    conn = connect(tmp / "imm.db")

    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    cat = Catalog(ring, "bench.local/ledger")
    transaction(conn, cat.init_keys, "bench")
    transaction(conn, cat.add_image, "bench", name="web", version="1",
                content_digest="sha256:" + "a" * 64, content_kind="file", layers=[],
                boot_actions=[], parent=None, labels={})

    def fill(c: object) -> None:
        for i in range(n):
            cat.set_channel(c, "bench", f"svc{i}/prod", "web@1")  # type: ignore[arg-type]

    t = time.perf_counter()
    transaction(conn, fill)
    fill_s = time.perf_counter() - t
    now = freshness.unix_now()
    runs = []
    for k in range(3):
        t = time.perf_counter()
        done = transaction(conn, freshness.refresh, cat, 3600, now + 3600 * (k + 1))
        runs.append(time.perf_counter() - t)
        assert done["heads"] == n
    med = statistics.median(runs)
    print(f"re-sign {n} channel heads: median {med:.2f} s ({med / n * 1e6:.0f} us per head; "
          f"setting up {n} channels took {fill_s:.1f} s)")
    conn.close()


def bench_verify_all(n: int) -> None:
    """image verify --all (verify_rows) over n images, then with one attestation each."""
    from imm.catalog import attest
    from imm.catalog.keys import KeyRing
    from imm.catalog.schema import SCHEMA as CATALOG_SCHEMA
    from imm.catalog.service import Catalog
    from imm.catalog.trust_schema import SCHEMA as TRUST_SCHEMA
    from imm.catalog.verify import verify_rows
    from imm.store.sqlite import connect, migrate, transaction

    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    ring, _ = KeyRing.load_or_create(tmp / "keys")
    conn = connect(tmp / "imm.db")
    migrate(conn, (CATALOG_SCHEMA, TRUST_SCHEMA))
    cat = Catalog(ring, "bench.local/ledger")
    transaction(conn, cat.init_keys, "bench")

    def fill(c: object) -> None:
        for i in range(n):
            cat.add_image(c, "bench", name="web", version=str(i),  # type: ignore[arg-type]
                          content_digest="sha256:" + f"{i:064x}", content_kind="file",
                          layers=[], boot_actions=[], parent=None, labels={})

    transaction(conn, fill)

    def timed() -> float:
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            r = transaction(conn, verify_rows, ring)
            runs.append(time.perf_counter() - t)
            assert r["ok"], r["problems"][:3]
        return statistics.median(runs)

    without = timed()

    def att(c: object) -> None:
        for i in range(n):
            attest.attest(c, cat, "bench", f"web@{i}",  # type: ignore[arg-type]
                          "https://slsa.dev/provenance/v1", {"buildType": "bench", "i": i})

    transaction(conn, att)
    with_att = timed()
    print(f"image verify --all over {n} images: {without:.2f} s without attestations, "
          f"{with_att:.2f} s with one each ({with_att / without:.2f}x)")
    conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--verifies", type=int, default=200)
    p.add_argument("--heads", type=int, default=10000)
    p.add_argument("--images", type=int, default=2000)
    a = p.parse_args()
    bench_verify(a.verifies)
    bench_heads(a.heads)
    bench_verify_all(a.images)


if __name__ == "__main__":
    main()
