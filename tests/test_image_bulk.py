"""Registering many images at once: ``immctl image add`` of several paths, one request per
batch, each image its own signed record; a bad one registers none. Several paths go by path, not
as descriptors, so immd reads them only under ``[daemon] image_roots`` (tmp_path here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import Immd


def rooted(make_immd: Any, root: Path) -> Immd:
    return make_immd(f'[daemon]\nimage_roots = ["{root}"]\n').start()


def test_many_paths_register_in_one_request_each_its_own_signed_record(
        make_immd: Any, tmp_path: Path) -> None:
    immd = rooted(make_immd, tmp_path)
    files = []
    for i in range(5):
        f = tmp_path / f"disk-{i}.raw"
        f.write_bytes(b"image %d\n" % i)
        files.append(str(f))
    size0 = immd.ledger_size()
    out = immd.json("image", "add", *files, "--name", "web", "--version", "1.{n}-{stem}")
    got = {(r["name"], r["version"]) for r in out["images"]}
    assert got == {("web", f"1.{i + 1}-disk-{i}") for i in range(5)}
    assert all(r["created"] for r in out["images"])
    assert immd.ledger_size() == size0 + 5  # five records, not one
    assert immd.json("ledger", "verify")["ok"]
    head = immd.json("ledger", "head")
    assert head["size"] == size0 + 5 and f"\n{size0 + 5}\n" in head["checkpoint"]
    # again: nothing new, still one answer per image
    again = immd.json("image", "add", *files, "--name", "web", "--version", "1.{n}-{stem}")
    assert [r["created"] for r in again["images"]] == [False] * 5


def test_a_bad_image_in_a_batch_registers_none_and_is_named(make_immd: Any, tmp_path: Path) -> None:
    immd = rooted(make_immd, tmp_path)
    good, other, dup = (tmp_path / f"{n}.raw" for n in ("good", "other", "dup"))
    for f in (good, other, dup):
        f.write_bytes(f.name.encode())
    r = immd.run("image", "add", str(good), str(other), "--name", "web", "--version", "9",
                 check=False)
    assert r.returncode == 2 and "{stem}" in r.stderr  # same version twice: refused unsent
    immd.json("image", "add", str(good), str(other), "--name", "web", "--version", "9{n}")
    size = immd.ledger_size()
    # web@91 again (the same content: nothing new), then web@92 with other content: a conflict
    r = immd.run("image", "add", str(good), str(dup), "--name", "web", "--version", "9{n}",
                 check=False)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "images[1]" in r.stderr and "web@92" in r.stderr
    assert immd.ledger_size() == size  # all or none
    missing = tmp_path / "nope.raw"
    r = immd.run("image", "add", str(good), str(missing), "--name", "x", "--version", "{n}",
                 check=False)
    assert r.returncode == 2 and "nope.raw" in r.stderr
    assert immd.ledger_size() == size
