"""Bake the sample app into local directory images: ``OUT_DIR/v1``, ``v2``, ``v3``, ``v4``.

    python examples/bake.py OUT_DIR [--version v1|v2|v3|v4 | --all]

An image is a directory holding the app, a ``VERSION`` file and ``imm-image.json`` (the command
the local provider runs, the health path, the declared data volumes). v3 also holds ``BROKEN``:
its ``/healthz`` answers 500, to show a failed health gate rolling a rollout back. v4 holds
``ERROR_RATE`` (``0.1``): it passes its health check but answers 10 % of ``GET /`` with 500,
which only a metric analysis (its ``/metrics``, ``app_requests_total`` by status) catches. v5
holds ``HANG``: its ``/healthz`` accepts the connection and never answers (a check that hangs).

The bake is deterministic: fixed contents and modes, no timestamps, so baking again gives the
same content digest. When ``imm`` is importable the digest of each image is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "app"
VERSIONS = ("v1", "v2", "v3", "v4", "v5")
BROKEN_VERSIONS = frozenset({"v3"})
HANGING_VERSIONS = frozenset({"v5"})
ERROR_RATES = {"v4": "0.1"}  # share of GET / answered 500
IMAGE_SPEC = {"command": ["python3", "app.py"], "health_path": "/healthz", "volumes": ["data"]}


def image_files(version: str) -> dict[str, bytes]:
    files = {
        "app.py": (APP_DIR / "app.py").read_bytes(),
        "VERSION": f"{version}\n".encode(),
        "imm-image.json": (json.dumps(IMAGE_SPEC, indent=2, sort_keys=True) + "\n").encode(),
    }
    if version in BROKEN_VERSIONS:
        files["BROKEN"] = b"this image's /healthz answers 500 on purpose\n"
    if version in HANGING_VERSIONS:
        files["HANG"] = b"this image's /healthz never answers, on purpose\n"
    if version in ERROR_RATES:
        files["ERROR_RATE"] = f"{ERROR_RATES[version]}\n".encode()
    return files


def bake(out_dir: Path, version: str) -> Path:
    """Write ``out_dir/version`` afresh (built beside it, then renamed into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / version
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=out_dir))
    try:
        for name, data in sorted(image_files(version).items()):
            path = tmp / name
            path.write_bytes(data)
            os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)  # noqa: S103 (an image is meant to be world-readable)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def content_digest(path: Path) -> str | None:
    try:
        from imm.catalog.digest import tree_digest, tree_manifest
    except ImportError:
        return None
    return tree_digest(tree_manifest(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bake the sample app into local images.")
    parser.add_argument("out_dir", type=Path, help="directory to write v1/ ... v4/ into")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", choices=VERSIONS, help="bake only this version")
    which.add_argument("--all", action="store_true", help="bake every version (the default)")
    args = parser.parse_args(argv)
    for version in [args.version] if args.version else list(VERSIONS):
        path = bake(args.out_dir, version)
        digest = content_digest(path)
        print(f"{version}\t{path}" + (f"\t{digest}" if digest else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
