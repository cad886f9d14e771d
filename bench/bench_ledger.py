"""Benchmark the ledger (imm.catalog.merkle.MerkleLog) against pymerkle's SqliteTree.

    python bench/bench_ledger.py [--leaves 1000000] [--proofs 1000] [--record-size 200]
                                 [--json PATH]

Both sides persist to a temporary SQLite file with the same pragmas (WAL, synchronous=NORMAL)
and are fed the same records. pymerkle's SqliteTree is the like-for-like comparison: it is
pymerkle's persistent backend, storing leaves in SQLite. It stores no interior nodes; it
recomputes subtree roots from the leaves and keeps those of >= 128 leaves in an in-memory LRU
cache (its default), so its first proof at a size is slow (cold cache) and later ones reuse the
cache: both the cold first proof and the mean over all proofs are shown. (pymerkle's
InmemoryTree keeps the whole tree as Python objects in RAM, not persisted, so it is not measured.)

Reported per side: bulk append rate, single-append rate with each append committed before the
next (imm: BEGIN IMMEDIATE, MerkleLog.append, COMMIT; pymerkle: append_entry, which commits each
entry; the two sides interleaved in rounds at the same tree size), root time, and the mean
time of inclusion and consistency proofs at N leaves over the same random challenges. Every imm
proof is checked with imm's RFC 9162 verifiers (untimed), and imm's root is checked against
pymerkle's.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from pymerkle import SqliteTree  # noqa: E402

from imm.catalog.merkle import (  # noqa: E402
    SCHEMA,
    MerkleLog,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


def records(n: int, size: int, start: int = 0, seed: int = 1) -> Iterator[bytes]:
    """``n`` distinct records of ``size`` bytes: a 12-digit counter + fixed random padding."""
    pad = random.Random(seed).randbytes(max(size - 12, 0))
    for i in range(start, start + n):
        yield b"%012d" % i + pad


def pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def db_size_mb(conn: sqlite3.Connection, path: Path) -> float:
    """Size of the database once the WAL is checkpointed into it."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def mean_us(times: list[float]) -> float:
    return statistics.fmean(times) * 1e6 if times else float("nan")


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def fmt_us(x: float) -> str:
    return f"{x:,.1f} µs" if x < 10_000 else f"{x / 1000:,.1f} ms"


def bench_imm(path: Path, n: int, rec: int, challenges: dict, single: int, batch: int) -> dict:
    out: dict = {}
    conn = sqlite3.connect(path, isolation_level=None)
    pragmas(conn)
    conn.executescript(SCHEMA)
    log = MerkleLog(conn)

    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        conn.execute("BEGIN")
        log.append_many((d, 1_700_000_000) for d in records(k, rec, start=done))
        conn.execute("COMMIT")
        done += k
    out["bulk_s"] = time.perf_counter() - t0
    out["bulk_rate"] = n / out["bulk_s"]
    out["db_mb"] = db_size_mb(conn, path)

    root = log.root()
    out["root_us"] = mean_us([timed(log.root)[0] for _ in range(100)])
    out["root"] = root

    times = []
    for idx in challenges["inclusion"]:
        t = time.perf_counter()
        proof = log.inclusion_proof(idx, n)
        times.append(time.perf_counter() - t)
        lh = log.leaf(idx)[1]
        assert verify_inclusion(lh, idx, n, proof, root), f"imm inclusion proof {idx} failed"
    out["incl_us"] = mean_us(times)
    out["incl_len"] = len(proof)

    times = []
    for old in challenges["consistency"]:
        t = time.perf_counter()
        proof = log.consistency_proof(old, n)
        times.append(time.perf_counter() - t)
        assert verify_consistency(old, n, log.root(old), root, proof), f"consistency {old} failed"
    out["cons_us"] = mean_us(times)

    dt, problems = timed(log.verify_all)
    assert problems == [], problems[:3]
    out["verify_all_s"] = dt
    conn.close()
    return out


def bench_pymerkle(path: Path, n: int, rec: int, challenges: dict, single: int, budget: float) -> dict:
    out: dict = {}
    tree = SqliteTree(str(path))
    pragmas(tree.con)

    dt, _ = timed(lambda: tree.append_entries(records(n, rec)))
    out["bulk_s"] = dt
    out["bulk_rate"] = n / dt
    out["db_mb"] = db_size_mb(tree.con, path)

    dt, root = timed(tree.get_root)
    out["root_cold_us"] = dt * 1e6
    out["root_us"] = mean_us([timed(tree.get_root)[0] for _ in range(100)])
    out["root"] = root

    # Cold inclusion proof: fresh cache.
    tree.cache_clear()
    idx0 = challenges["inclusion"][0]
    dt, _ = timed(lambda: tree.prove_inclusion(idx0 + 1, n))
    out["incl_cold_us"] = dt * 1e6
    times = []
    deadline = time.perf_counter() + budget
    for idx in challenges["inclusion"]:
        t = time.perf_counter()
        proof = tree.prove_inclusion(idx + 1, n)
        times.append(time.perf_counter() - t)
        if t > deadline:
            break
    out["incl_us"] = mean_us(times)
    out["incl_count"] = len(times)
    out["last_incl"] = (idx, proof.path[1:])

    tree.cache_clear()
    old0 = challenges["consistency"][0]
    dt, _ = timed(lambda: tree.prove_consistency(old0, n))
    out["cons_cold_us"] = dt * 1e6
    times = []
    deadline = time.perf_counter() + budget
    for old in challenges["consistency"]:
        t = time.perf_counter()
        tree.prove_consistency(old, n)
        times.append(time.perf_counter() - t)
        if t > deadline:
            break
    out["cons_us"] = mean_us(times)
    out["cons_count"] = len(times)

    tree.close()
    return out


def single_appends(imm_path: Path, pm_path: Path | None, n: int, rec: int, single: int,
                   rounds: int = 10) -> dict[str, float]:
    """Single appends, each committed before the next, interleaved in ``rounds`` so that a noisy
    neighbour hurts both sides alike: imm (BEGIN IMMEDIATE, MerkleLog.append, COMMIT) and
    pymerkle (append_entry, which commits each entry). Both append the same records."""
    conn = sqlite3.connect(imm_path, isolation_level=None)
    pragmas(conn)
    log = MerkleLog(conn)
    tree = None
    if pm_path is not None:
        tree = SqliteTree(str(pm_path))
        pragmas(tree.con)
    per = max(single // rounds, 1)
    t_imm = t_pm = 0.0
    done = 0
    while done < single:
        k = min(per, single - done)
        batch = list(records(k, rec, start=n + done))
        t0 = time.perf_counter()
        for d in batch:
            conn.execute("BEGIN IMMEDIATE")
            log.append(d, 1_700_000_000)
            conn.execute("COMMIT")
        t_imm += time.perf_counter() - t0
        if tree is not None:
            t0 = time.perf_counter()
            for d in batch:
                tree.append_entry(d)
            t_pm += time.perf_counter() - t0
        done += k
    assert log.size() == n + single
    problems = log.verify_all()
    assert problems == [], problems[:3]
    out = {"imm": single / t_imm}
    if tree is not None:
        assert tree.get_root() == log.root(), "pymerkle's root differs from imm's after appends"
        out["pymerkle"] = single / t_pm
        tree.close()
    conn.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--leaves", type=int, default=1_000_000, help="N (default 1000000)")
    ap.add_argument("--record-size", type=int, default=200, help="bytes per leaf (default 200)")
    ap.add_argument("--proofs", type=int, default=1000, help="random proofs of each kind")
    ap.add_argument("--single", type=int, default=10_000, help="single appends timed")
    ap.add_argument("--batch", type=int, default=250_000, help="imm leaves per transaction")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-pymerkle", action="store_true")
    ap.add_argument(
        "--pymerkle-budget",
        type=float,
        default=120.0,
        help="seconds of pymerkle proofs of each kind at most; fewer proofs are then averaged",
    )
    ap.add_argument("--dir", help="directory for the databases (default: a temp dir)")
    ap.add_argument("--json", help="write the headline rows here (for python -m bench)")
    args = ap.parse_args()
    n = args.leaves
    if n < 2:
        ap.error("--leaves must be at least 2")

    rng = random.Random(args.seed)
    challenges = {
        "inclusion": [rng.randrange(n) for _ in range(args.proofs)],
        "consistency": [rng.randrange(1, n) for _ in range(args.proofs)],
    }
    print(
        f"N={n:,} leaves of {args.record_size} bytes, {args.proofs} random proofs of each kind, "
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        imm = bench_imm(Path(tmp) / "imm.db", n, args.record_size, challenges, args.single, args.batch)
        print(f"imm done in {time.perf_counter() - t:.1f} s", flush=True)
        pm = None
        if not args.skip_pymerkle:
            t = time.perf_counter()
            pm = bench_pymerkle(
                Path(tmp) / "pymerkle.db",
                n,
                args.record_size,
                challenges,
                args.single,
                args.pymerkle_budget,
            )
            print(f"pymerkle done in {time.perf_counter() - t:.1f} s", flush=True)
            assert pm["root"] == imm["root"], "pymerkle's root differs from imm's"
            # Same leaf, same tree: pymerkle's inclusion path (minus its base) equals RFC PATH.
            conn = sqlite3.connect(Path(tmp) / "imm.db")
            last, path = pm["last_incl"]
            assert MerkleLog(conn).inclusion_proof(last, n) == path
            conn.close()
        t = time.perf_counter()
        rates = single_appends(Path(tmp) / "imm.db",
                               None if pm is None else Path(tmp) / "pymerkle.db",
                               n, args.record_size, args.single)
        imm["single_rate"] = rates["imm"]
        if pm is not None:
            pm["single_rate"] = rates["pymerkle"]
        print(f"single appends (interleaved) done in {time.perf_counter() - t:.1f} s", flush=True)

    print()
    print(f"root at N: {imm['root'].hex()} (identical in imm and pymerkle: {pm is not None})")
    print(f"sample leaf hash: {leaf_hash(next(records(1, args.record_size))).hex()}")
    print()
    rows = [
        ("bulk append", "bulk_rate", fmt_rate, "higher"),
        ("single append", "single_rate", fmt_rate, "higher"),
        ("root at N (mean of 100)", "root_us", fmt_us, "lower"),
        ("inclusion proof, mean", "incl_us", fmt_us, "lower"),
        ("consistency proof, mean", "cons_us", fmt_us, "lower"),
    ]
    head = f"{'':26} {'imm':>14} {'pymerkle':>14} {'imm/pymerkle':>14}"
    print(head)
    print("-" * len(head))
    for label, key, f, better in rows:
        a = imm[key]
        if pm is None:
            print(f"{label:26} {f(a):>14}")
            continue
        b = pm[key]
        ratio = a / b
        note = f"{ratio:,.3g}x ({better} is better)"
        print(f"{label:26} {f(a):>14} {f(b):>14} {note:>14}")
    if pm is not None:
        print(f"{'root, cold cache (1st)':26} {'-':>14} {fmt_us(pm['root_cold_us']):>14}")
        print(f"{'inclusion, cold (1st)':26} {'-':>14} {fmt_us(pm['incl_cold_us']):>14}")
        print(f"{'consistency, cold (1st)':26} {'-':>14} {fmt_us(pm['cons_cold_us']):>14}")
    print()
    print(
        f"imm: bulk load {imm['bulk_s']:.1f} s in {-(-n // args.batch)} transaction(s), "
        f"database {imm['db_mb']:.0f} MB, verify_all {imm['verify_all_s']:.1f} s, "
        f"inclusion path length {imm['incl_len']}"
    )
    if pm is not None:
        for kind, key in (("inclusion", "incl_count"), ("consistency", "cons_count")):
            if pm[key] < args.proofs:
                print(f"pymerkle {kind}: time budget hit, mean over the first {pm[key]} proofs")
        print(
            f"pymerkle (SqliteTree, default cache: subroots >= 128 leaves, LRU 1 GiB): bulk load "
            f"{pm['bulk_s']:.1f} s in one transaction, database {pm['db_mb']:.0f} MB; "
            "single append commits per entry (pymerkle offers no other way)"
        )
        ratio = imm["single_rate"] / pm["single_rate"]
        report.write(args.json, "python bench/bench_ledger.py", [
            report.row(f"ledger append, each committed, at {n:,} leaves", fmt_rate(imm["single_rate"]),
                       f"pymerkle SqliteTree append_entry (commits each) {fmt_rate(pm['single_rate'])}",
                       ratio, ">= 1.0x", ratio >= 1.0),
            report.row(f"inclusion proof at {n:,} leaves", fmt_us(imm["incl_us"]),
                       f"pymerkle prove_inclusion {fmt_us(pm['incl_us'])}",
                       pm["incl_us"] / imm["incl_us"]),
        ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
