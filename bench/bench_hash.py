"""How fast imm hashes an image file, against named peers, in the same run.

    python bench/bench_hash.py [--size-mib 2048] [--dir DIR] [--repeat 3]

Writes a file of random data in a temporary directory (under DIR if given), reads it once to
warm the page cache (no cache drop: this measures hashing, not the disk), then times each row
best-of-N and prints MiB/s and the ratio to a plain hashlib loop (1 MiB reads). All rows must
agree on the digest.

To add a row (e.g. ``immctl image add``), write a function that hashes ``path`` and returns its
``sha256:<hex>`` digest, and add a ``measure(name, fn)`` row in ``rows()`` below.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imm.catalog.digest import file_digest  # noqa: E402

BLOCK = 64 << 20


@dataclass
class Row:
    name: str
    fn: Callable[[], str]
    seconds: float = float("inf")
    digest: str = ""


# --- rows: add new peers here ---------------------------------------------------------------


def measure(name: str, fn: Callable[[], str]) -> Row:
    """A row of the table: ``fn`` hashes the test file and returns its ``sha256:<hex>``.

    Rows are timed round-robin (row 1, row 2, ..., row 1, ...) so that a noisy neighbour on a
    shared machine hurts every row alike; the best run of each counts.
    """
    return Row(name, fn)


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.split()[0]


def openssl_dgst(path: Path) -> str:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)],
                         capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.split()[0]


def hashlib_loop(path: Path) -> str:
    """The baseline: what anyone would write."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def rows(path: Path) -> list[Row]:
    """The table, baseline first. Add a row with ``measure("immctl image add", fn)``."""
    table = [measure("hashlib loop (1 MiB reads)", lambda: hashlib_loop(path))]
    if shutil.which("sha256sum"):
        table.append(measure("sha256sum", lambda: sha256sum(path)))
    if shutil.which("openssl"):
        table.append(measure("openssl dgst -sha256", lambda: openssl_dgst(path)))
    table.append(measure("imm file_digest", lambda: file_digest(path)))
    return table


def run(table: list[Row], repeat: int) -> None:
    for _ in range(repeat):
        for row in table:
            t0 = time.perf_counter()
            row.digest = row.fn()
            row.seconds = min(row.seconds, time.perf_counter() - t0)


# --- harness ---------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    block = os.urandom(min(BLOCK, size))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def warm(path: Path) -> None:
    buf = bytearray(4 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048, help="size of the test file (MiB)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the temporary file")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best counts")
    args = ap.parse_args(argv)
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="imm-bench-", dir=args.dir) as tmp:
        path = Path(tmp) / "image.raw"
        make_file(path, size)
        warm(path)
        results = rows(path)
        run(results, args.repeat)
    base = results[0].seconds
    mib = size / (1 << 20)
    print(f"file: {args.size_mib} MiB, page cache warm, best of {args.repeat}")
    print(f"{'row':<30} {'MiB/s':>9} {'vs hashlib':>11}")
    for r in results:
        print(f"{r.name:<30} {mib / r.seconds:>9.0f} {base / r.seconds:>10.2f}x")
    digests = {r.digest for r in results}
    if len(digests) != 1:
        print("ERROR: rows disagree on the digest:", file=sys.stderr)
        for r in results:
            print(f"  {r.name}: {r.digest}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
