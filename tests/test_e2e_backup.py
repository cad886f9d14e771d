"""``immctl state backup FILE`` while immd serves writes, then a restore into a fresh state dir.

The copy comes from SQLite's online backup API in immd; the test restores it the way the README
says (the file as STATE_DIR/imm.db beside the keys), starts immd on it and runs ``ledger verify``.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

from harness import Immd
from test_e2e_catalog import add


def test_backup_during_writes_restores_into_a_fresh_state_dir(immd: Immd, tmp_path: Path) -> None:
    add(immd, tmp_path, "web", "0")
    stop = threading.Event()
    written: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            n = 1
            while not stop.is_set():
                add(immd, tmp_path, "web", str(n))
                written.append(str(n))
                n += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 2 and t.is_alive():
            stop.wait(0.05)
        before = immd.ledger_size()
        out = tmp_path / "backup.db"
        r = immd.json("state", "backup", str(out))
        after = immd.ledger_size()
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert r["bytes"] == out.stat().st_size and out.stat().st_mode & 0o077 == 0
    db = sqlite3.connect(out)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    size = db.execute("SELECT COUNT(*) FROM ledger_leaves").fetchone()[0]
    images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    db.close()
    assert before <= size <= after and images >= 3
    assert not list(immd.state.glob(".backup-*")), "immd left its temp copy behind"
    # restore: the copy as imm.db beside the keys, in a fresh state dir
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r2 = Immd(fresh)
    r2.state.mkdir(mode=0o700)
    shutil.copytree(immd.state / "keys", r2.state / "keys")
    shutil.copy(out, r2.state / "imm.db")
    r2.start()
    try:
        assert r2.ledger_size() == size
        assert r2.run("ledger", "verify").returncode == 0
        assert r2.run("image", "verify", "--all").returncode == 0
        assert len(r2.json("image", "list")["items"]) == images
        add(r2, tmp_path, "web", "restored")  # it keeps appending after the restore
        assert r2.run("ledger", "verify").returncode == 0
    finally:
        r2.stop()


def test_backup_to_an_unwritable_file_names_it(immd: Immd) -> None:
    # (a reader is refused with 403/exit 5: tests/test_e2e_api.py, every mutating route)
    cp = immd.fails("state", "backup", "/nonexistent/dir/b.db", code=2)
    assert "/nonexistent/dir/b.db.part" in cp.stderr and "Traceback" not in cp.stderr
    assert not list(immd.state.glob(".backup-*"))
