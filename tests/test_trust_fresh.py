"""Fresh metadata end to end: checkpoints carry their time, channel heads expire and are
re-signed in the background (across a restart), and the offline verifiers refuse what is older
than --max-age, naming its age."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import Immd

TTL = '[trust]\nhead_ttl = "16s"\n'


def checkpoint_time(note: str) -> int:
    text = note[: note.rfind("\n\n") + 1]
    (line,) = [ln for ln in text.splitlines()[3:] if ln.startswith("time ")]
    return int(line.split()[1])


def test_stale_checkpoints_and_expired_heads_are_refused(tmp_path: Path) -> None:
    d = Immd(tmp_path, TTL).start()
    img = tmp_path / "disk.raw"
    img.write_bytes(b"v1" * 4096)
    digest = d.json("image", "add", str(img), "--name", "web", "--version", "1")["digest"]
    d.run("channel", "set", "web/production", "web@1")
    pub = tmp_path / "imm.pub.pem"
    pub.write_text(d.run("keys", "export").stdout)

    # the checkpoint's text carries its time as an extension line; it still verifies
    head = d.json("ledger", "head")
    cp = tmp_path / "checkpoint"
    cp.write_text(head["checkpoint"])
    lines = head["checkpoint"].split("\n\n")[0].splitlines()
    assert lines[3].startswith("time ") and len(lines) == 4
    ok = d.json("ledger", "verify", "--checkpoint", str(cp), "--key", str(pub),
                "--max-age", "1h")
    assert ok["ok"] and ok["size"] == head["size"] and ok["age_s"] < 3600

    # the head, online and saved for later
    assert d.run("channel", "resolve", "web/production", "--max-age", "1m").stdout.strip() \
        == digest
    saved = tmp_path / "head.json"
    saved.write_text(d.run("channel", "resolve", "web/production", "--json").stdout)
    body = json.loads(saved.read_text())
    assert body["digest"] == digest and body["expires"] > body["issued"]
    ok = d.run("channel", "resolve", "web/production", "--statement", str(saved), "--key",
               str(pub))
    assert ok.stdout.strip() == digest
    export = tmp_path / "bundle.jsonl"
    d.run("audit", "export", "--out", str(export))
    d.run("audit", "verify", str(export), "--key", str(pub), "--max-age", "1h")
    export_csv = tmp_path / "bundle.csv"
    d.run("audit", "export", "--out", str(export_csv), "--format", "csv")
    d.run("audit", "verify", str(export_csv), "--key", str(pub), "--max-age", "1h")
    d.stop()

    time.sleep(16.5)  # past the head's 16 s life, with no daemon to re-sign anything
    cp_ = d.fails("channel", "resolve", "web/production", "--statement", str(saved), "--key",
                  str(pub), code=7)
    assert "the head of channel web/production expired at" in cp_.stderr
    assert "ago" in cp_.stderr
    cp_ = d.fails("ledger", "verify", "--checkpoint", str(cp), "--key", str(pub), "--max-age",
                  "2s", code=7)
    assert f"checkpoint {cp} is " in cp_.stderr and "older than the --max-age 2s" in cp_.stderr
    cp_ = d.fails("audit", "verify", str(export), "--key", str(pub), "--max-age", "2s", code=7)
    assert "older than the --max-age 2s" in cp_.stderr
    cp_ = d.fails("audit", "verify", str(export_csv), "--key", str(pub), "--max-age", "2s",
                  code=7)
    assert "older than the --max-age 2s" in cp_.stderr
    cp_ = d.fails("ledger", "verify", "--checkpoint", str(cp), "--key", str(pub), "--max-age",
                  "soon", code=2)
    assert "--max-age 'soon' is not a duration" in cp_.stderr
    # an altered checkpoint time does not verify
    forged = tmp_path / "forged"
    t = checkpoint_time(head["checkpoint"])
    forged.write_text(head["checkpoint"].replace(f"time {t}\n", f"time {t + 10}\n"))
    cp_ = d.fails("ledger", "verify", "--checkpoint", str(forged), "--key", str(pub), code=7)
    assert "bad signature" in cp_.stderr

    # after a restart the daemon re-signs what went stale, and keeps doing it
    d.start()
    time.sleep(17)  # longer than a head lives
    assert d.run("channel", "resolve", "web/production", "--max-age", "16s").stdout.strip() \
        == digest
    fresh = d.json("ledger", "head")
    assert fresh["size"] == head["size"]  # re-signing adds nothing to the log
    assert checkpoint_time(fresh["checkpoint"]) > t
    cp.write_text(fresh["checkpoint"])
    d.run("ledger", "verify", "--checkpoint", str(cp), "--key", str(pub), "--max-age", "16s")
    assert d.run("ledger", "verify").returncode == 0
