"""How fast imm hashes an image file, against named peers, in the same run.

    python bench/bench_hash.py [--size-mib 2048] [--dir DIR] [--repeat 3] [--no-immd]

Writes a file of random data in a temporary directory (under DIR if given), reads it once to
warm the page cache (no cache drop: this measures hashing, not the disk), then times each row
best-of-N and prints MiB/s and the ratio to a plain hashlib loop (1 MiB reads). All rows must
agree on the digest.

The "immctl image add" row is end to end: a real immd (started here on a temporary state dir,
next to the file) is asked by the real immctl to register the file as ``bench@N``, a new N on
every run so that each run creates a signed record; the daemon hashes the file, and the row's
digest is the ``content_digest`` of immctl's ``--json`` answer. It includes immctl's start-up,
the request and the signed ledger write, so the fixed cost of one ``immctl image add`` of a
tiny file is printed under the table. ``--no-immd`` leaves the row out. immd and immctl run with
a bytecode cache in the temporary dir (as installed programs have their .pyc files) unless
``--no-pyc-cache``.

To add a row (e.g. ``immctl image add``), write a function that hashes ``path`` and returns its
``sha256:<hex>`` digest, and add a ``measure(name, fn)`` row in ``rows()`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imm.catalog.digest import file_digest  # noqa: E402

import daemon  # noqa: E402

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


class Immd(daemon.Immd):
    """The shared benchmark daemon, plus ``immctl image add`` of a fresh version each time."""

    def __init__(self, root: Path, pyc_cache: bool = True) -> None:
        super().__init__(root, pyc_cache=pyc_cache)
        self.versions = itertools.count(1)

    def image_add(self, path: Path) -> str:
        """``immctl image add PATH --name bench --version N --json``; its content digest."""
        out = subprocess.run(
            [str(self.immctl), "image", "add", str(path), "--name", "bench",
             "--version", str(next(self.versions)), "--json"],
            capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"immctl image add exited {out.returncode}: {out.stderr.strip()}")
        result = json.loads(out.stdout)
        if not result.get("created"):
            raise RuntimeError(f"immctl image add created nothing: {out.stdout[:200]}")
        return str(result["content_digest"])


def rows(path: Path, immd: Immd | None = None) -> list[Row]:
    """The table, baseline first. Add a row with ``measure("immctl image add", fn)``."""
    table = [measure("hashlib loop (1 MiB reads)", lambda: hashlib_loop(path))]
    if shutil.which("sha256sum"):
        table.append(measure("sha256sum", lambda: sha256sum(path)))
    if shutil.which("openssl"):
        table.append(measure("openssl dgst -sha256", lambda: openssl_dgst(path)))
    table.append(measure("imm file_digest", lambda: file_digest(path)))
    if immd is not None:
        table.append(measure("immctl image add", lambda: immd.image_add(path)))
    return table


def fixed_cost(immd: Immd, tmp: Path, runs: int = 7) -> float:
    """Median seconds of one ``immctl image add`` of a 1 KiB file: all but the hashing."""
    small = tmp / "small.raw"
    small.write_bytes(os.urandom(1024))
    immd.image_add(small)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        immd.image_add(small)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    ap.add_argument("--no-immd", action="store_true", help="leave out the immctl image add row")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="run immd/immctl as the environment says (e.g. PYTHONDONTWRITEBYTECODE)")
    args = ap.parse_args(argv)
    size = args.size_mib << 20
    fixed = None
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="imm-bench-", dir=args.dir) as tmp, \
            contextlib.ExitStack() as stack:
        path = Path(tmp) / "image.raw"
        make_file(path, size)
        warm(path)
        immd = None if args.no_immd else Immd(Path(tmp), pyc_cache=not args.no_pyc_cache)
        if immd is not None and not immd.available():
            print("immd/immctl not found next to this python or on PATH: "
                  "no 'immctl image add' row", file=sys.stderr)
            immd = None
        if immd is not None:
            immd.start()
            stack.callback(immd.stop)
        results = rows(path, immd)
        run(results, args.repeat)
        if immd is not None:
            fixed = fixed_cost(immd, Path(tmp))
    base = results[0].seconds
    mib = size / (1 << 20)
    print(f"file: {args.size_mib} MiB, page cache warm, best of {args.repeat}, {os.cpu_count()} "
          f"CPUs; load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in load0)}, "
          f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'row':<30} {'MiB/s':>9} {'seconds':>9} {'vs hashlib':>11}")
    for r in results:
        print(f"{r.name:<30} {mib / r.seconds:>9.0f} {r.seconds:>9.3f} {base / r.seconds:>10.2f}x")
    if fixed is not None:
        add = next(r for r in results if r.name == "immctl image add")
        print(f"immctl image add of a 1 KiB file (fixed cost: start-up, request, signed write): "
              f"{fixed * 1000:.0f} ms median; 'immctl image add' minus it: "
              f"{mib / (add.seconds - fixed):.0f} MiB/s, "
              f"{base / (add.seconds - fixed):.2f}x hashlib")
    digests = {r.digest for r in results}
    if len(digests) != 1:
        print("ERROR: rows disagree on the digest:", file=sys.stderr)
        for r in results:
            print(f"  {r.name}: {r.digest}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
