"""The audit layer: verdicts, sweeps, findings, export bundles and their offline verification.

End to end against a real immd driven through immctl: every verdict is given a real cause (a
pet started by hand, a tag edited after launch, a revoked image, a file changed inside an
instance, a channel moved, a rollout id nobody knows, an instance past its service's age, an
image row edited in SQLite), found by one sweep and resolved by the sweep after the fix. A
synthetic provider (tests/audit_plugin.py, loaded through a throw-away entry point) lists large
or shrinking fleets without starting processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imm.audit import bundle_verify
from imm.audit.events import tree_levels, tree_path, tree_root
from imm.audit.export import parse_time
from imm.audit.verdicts import Facts, ImageFacts, judge
from imm.catalog.digest import tree_digest, tree_manifest
from imm.catalog.keys import public_pem
from imm.catalog.merkle import leaf_hash, root_from_leaf_hashes, verify_inclusion
from imm.errors import BadRequest
from imm.plugins.base import Instance, LaunchRequest, PluginContext
from imm.plugins.providers.local import LocalProvider

import audit_plugin
from conftest import Immd

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


# -- unit: verdict rules ------------------------------------------------------------------------

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def inst(**kw: Any) -> Instance:
    base = {"id": "i-1", "provider": "p", "region": "r", "image_id": "ami-1", "state": "running",
            "launched_at": 1000, "tags": {"imm:digest": D1, "imm:rollout": "r-1",
                                          "imm:service": "web"}}
    base.update(kw)
    return Instance(**base)


def image(**kw: Any) -> ImageFacts:
    return ImageFacts(**{"digest": D1, "name": "app", "version": "1", "content_digest": D2,
                         "content_kind": "tree", **kw})


def facts(**kw: Any) -> Facts:
    return Facts(**{"now": 2000, "image": image(), "rollout_known": True, **kw})


def names(i: Instance, f: Facts) -> list[str]:
    return [v for v, _ in judge(i, f)]


def test_verdict_rules() -> None:
    assert judge(inst(), facts()) == [("ok", {})]
    assert names(inst(tags={}), facts(image=None)) == ["unknown-image", "outside-rollout"]
    assert judge(inst(tags={"imm:digest": D2, "imm:rollout": "r-1"}), facts())[0] == (
        "digest-mismatch", {"tag": D2, "image": D1})
    rev = {"root": D1, "reason": "CVE-1", "actor": "alice", "at": "t"}
    assert judge(inst(), facts(image=image(revocation=rev)))[0][1]["reason"] == "CVE-1"
    assert names(inst(), facts(image=image(problems=("bad",)))) == ["signature-invalid"]
    assert names(inst(), facts(artifact_problems=("bad",))) == ["signature-invalid"]
    chan = {"channel": "web/production", "channel_head": D2}
    assert names(inst(), facts(**chan)) == ["not-current-channel"]
    assert names(inst(), facts(**chan, active_rollout="r-2")) == ["ok"]  # a rollout is in flight
    assert names(inst(), facts(channel="web/production", channel_head=D1)) == ["ok"]
    assert judge(inst(), facts(rollout_known=False))[0][1]["reason"] == \
        "rollout r-1 is not in the journal"
    old = facts(service={"max_instance_age_s": 500})
    assert judge(inst(), old) == [("too-old", {"age_s": 1000, "max_instance_age_s": 500,
                                               "launched_at": 1000})]
    assert names(inst(), facts(service={"max_instance_age_s": 0})) == ["ok"]
    manifest = {"version": 1, "entries": [{"path": "a", "type": "file", "digest": "x"}]}
    changed = {"version": 1, "entries": [{"path": "a", "type": "file", "digest": "y"},
                                         {"path": "b", "type": "dir"}]}
    got = judge(inst(), facts(rehash=("sha256:other", changed), image_manifest=manifest))
    assert got == [("tampered", {"expected": D2, "found": "sha256:other", "added": ["b"],
                                 "removed": [], "changed": ["a"]})]
    assert names(inst(), facts(rehash=(D2, manifest))) == ["ok"]
    assert names(inst(), facts(rehash=("x", manifest), image=image(content_kind="file"))) == ["ok"]


def test_batch_trees_are_rfc6962() -> None:
    for n in range(1, 40):
        hashes = [leaf_hash(b"%d" % i) for i in range(n)]
        levels = tree_levels(hashes)
        root = tree_root(levels)
        assert root == root_from_leaf_hashes(hashes)
        for i in range(n):
            assert verify_inclusion(hashes[i], i, n, tree_path(levels, i), root)


def test_parse_time() -> None:
    assert parse_time("2026-03-01", "since") == "2026-03-01T00:00:00Z"
    assert parse_time("2026-03-01T02:00:00+02:00", "since") == "2026-03-01T00:00:00Z"
    assert parse_time("0", "since") == "1970-01-01T00:00:00Z"
    assert parse_time("", "since") is None
    with pytest.raises(BadRequest, match="since 'soon' is not a time"):
        parse_time("soon", "since")


# -- end to end: every verdict, found and resolved ---------------------------------------------

FLEET_CONFIG = """
[providers.local]
kind = "local"
start_check_s = 0.05
stop_timeout_s = 2

[services.web]
provider = "local"
channel = "web/production"

[services.shop]
provider = "local"
channel = "shop/production"

[services.api]
provider = "local"

[services.batch]
provider = "local"

[services.old]
provider = "local"
max_instance_age_s = {max_age}
"""


def bake(tmp: Path) -> Path:
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(tmp / "images")],
                   check=True, capture_output=True)
    return tmp / "images"


def insert_rollout(db: Path, rid: str, service: str, digest: str, state: str) -> None:
    conn = sqlite3.connect(db, timeout=30)
    with conn:
        conn.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (rid, service, "blue-green", digest, None, state, None, "{}", "test",
                      "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", None, None))
    conn.close()


def sql(db: Path, statement: str, *params: Any) -> None:
    conn = sqlite3.connect(db, timeout=30)
    with conn:
        conn.execute(statement, params)
    conn.close()


def set_tag(local: LocalProvider, iid: str, key: str, value: str) -> None:
    path = local.instances_dir / iid / "meta.json"
    meta = json.loads(path.read_text())
    meta["tags"][key] = value
    path.write_text(json.dumps(meta))


def by_instance(findings: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f["instance_id"], set()).add(f["verdict"])
    return out


@pytest.fixture
def fleet_immd(tmp_path: Path) -> Iterator[tuple[Immd, LocalProvider, dict[str, str]]]:
    env = audit_plugin.install(tmp_path / "plugins")
    env[audit_plugin.FINDINGS_LOG_ENV] = str(tmp_path / "findings.log")
    d = Immd(tmp_path, FLEET_CONFIG.format(max_age=1)).start(extra_env=env)
    local = LocalProvider("local", {"start_check_s": 0.05, "stop_timeout_s": 2},
                          PluginContext(d.state, logging.getLogger("test")))
    try:
        yield d, local, env
    finally:
        d.stop()
        local.terminate([m["id"] for m in local._metas()])


def test_every_verdict_is_found_then_resolved(fleet_immd: tuple[Immd, LocalProvider, dict[str, str]],
                                              tmp_path: Path) -> None:
    d, local, env = fleet_immd
    images = bake(tmp_path)
    digest = {v: d.json("image", "add", str(images / f"v{v}"), "--name", "app", "--version",
                        str(v))["digest"] for v in (1, 2, 3)}
    image_id = {v: d.json("image", "show", f"app@{v}")["artifacts"][0]["image_id"]
                for v in (1, 2, 3)}
    d.run("channel", "set", "web/production", "app@1")
    d.run("channel", "set", "shop/production", "app@1")
    db = d.state / "imm.db"
    insert_rollout(db, "r-1", "web", digest[1], "completed")
    # a pet: an image the provider holds but the catalog never heard of
    pet_dir = images / "pet"
    pet_dir.mkdir()
    for f in (images / "v1").iterdir():
        (pet_dir / f.name).write_bytes(f.read_bytes())
    (pet_dir / "HANDMADE").write_text("started by hand\n")
    (pet_dir / "imm-image.json").write_text('{"command": ["python3", "app.py"]}\n')
    pet_image = local.store_image(pet_dir, tree_digest(tree_manifest(pet_dir)))

    def launch(name: str, v: int | str, service: str | None, rollout: str | None = "r-1") -> str:
        img = pet_image if v == "pet" else image_id[int(v)]
        tags = {} if service is None else {
            "imm:service": service, "imm:slot": "a", "imm:digest": digest[int(v)]}
        if rollout and service:
            tags["imm:rollout"] = rollout
        got = local.launch(LaunchRequest(region="local", image_id=img, count=1, tags=tags,
                                         client_token=f"tok-{name}"))
        return got[0].id

    ids = {
        "ok": launch("ok", 1, "web"), "pet": launch("pet", "pet", None),
        "tag": launch("tag", 1, "web"), "revoked": launch("revoked", 2, "api"),
        "tampered": launch("tampered", 1, "web"), "channel": launch("channel", 1, "shop"),
        "ghost": launch("ghost", 1, "web", rollout="r-ghost"), "old": launch("old", 1, "old"),
        "forged": launch("forged", 3, "batch"),
    }
    # the causes
    set_tag(local, ids["tag"], "imm:digest", digest[2])
    d.run("channel", "set", "shop/production", "app@3")
    d.run("image", "revoke", "app@2", "--reason", "CVE-2026-0001")
    app_py = local.instances_dir / ids["tampered"] / "root" / "app.py"
    original = app_py.read_bytes()
    os.chmod(app_py, 0o644)
    app_py.write_bytes(original + b"# backdoor\n")
    sql(db, "UPDATE images SET name = 'not-app' WHERE digest = ?", digest[3])
    time.sleep(max(0.0, 2.2 - (time.time() - json.loads(
        (local.instances_dir / ids["old"] / "meta.json").read_text())["launched_at"])))

    sweep = d.json("audit", "run", "--wait")
    assert sweep["state"] == "completed" and sweep["instances"] == 9
    found = by_instance(d.json("audit", "findings", "--open"))
    assert found == {
        ids["pet"]: {"unknown-image", "outside-rollout"}, ids["tag"]: {"digest-mismatch"},
        ids["revoked"]: {"revoked"}, ids["tampered"]: {"tampered"},
        ids["channel"]: {"not-current-channel"}, ids["ghost"]: {"outside-rollout"},
        ids["old"]: {"too-old"}, ids["forged"]: {"signature-invalid"},
    }
    details = {(f["instance_id"], f["verdict"]): f["detail"]
               for f in d.json("audit", "findings", "--open")}
    assert details[(ids["tampered"], "tampered")]["changed"] == ["app.py"]
    assert "name" in details[(ids["forged"], "signature-invalid")]["problems"][0]
    assert details[(ids["revoked"], "revoked")]["reason"] == "CVE-2026-0001"
    table = d.run("audit", "findings", "--open").stdout
    assert "changed app.py" in table and "CVE-2026-0001" in table
    instances = {i["instance_id"]: i for i in d.json("audit", "instances")}
    assert instances[ids["ok"]]["verdicts"] == ["ok"]
    assert instances[ids["ok"]]["image"] == "app@1" and instances[ids["ok"]]["first_seen"]
    assert instances[ids["pet"]]["image"] is None and instances[ids["pet"]]["digest"] is None
    # the blast radius of the revocation, and no rollout can replace it (api has no channel)
    blast = d.json("audit", "blast-radius")
    assert [i["instance_id"] for i in blast["instances"]] == [ids["revoked"]]
    assert blast["services"] == {"api": 1}
    replaced = d.json("audit", "blast-radius", "app@2", "--replace")
    assert replaced["rollouts"] == [] and "no channel" in replaced["refused"]["api"]

    # a sweep with nothing changed opens nothing and resolves nothing
    again = d.json("audit", "run", "--wait")
    assert (again["findings_opened"], again["findings_resolved"], again["records"]) == (0, 0, 0)

    # the fixes
    local.terminate([ids["pet"]])
    set_tag(local, ids["tag"], "imm:digest", digest[1])
    d.run("image", "restore", "app@2")
    app_py.write_bytes(original)
    insert_rollout(db, "r-shop", "shop", digest[3], "running")
    insert_rollout(db, "r-ghost", "web", digest[1], "completed")
    sql(db, "UPDATE images SET name = 'app' WHERE digest = ?", digest[3])
    assert d.config_path is not None and d.proc is not None
    d.config_path.write_text(FLEET_CONFIG.format(max_age=3600))
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while b"reloaded" not in d.log.read_bytes():
        assert time.monotonic() < deadline, "immd did not reload its config"
        time.sleep(0.05)

    sweep = d.json("audit", "run", "--wait")
    assert sweep["findings_resolved"] == 9 and sweep["findings_opened"] == 0
    assert sweep["observations_closed"] == 1  # the pet is gone
    assert d.json("audit", "findings", "--open") == []
    instances = {i["instance_id"]: i for i in d.json("audit", "instances")}
    assert ids["pet"] not in instances and len(instances) == 8
    assert all(i["verdicts"] == ["ok"] for i in instances.values())
    resolved = {f["verdict"]: f for f in d.json("audit", "findings")}
    assert resolved["unknown-image"]["resolution"] == "the instance is gone"
    assert resolved["tampered"]["resolution"] == "the cause is gone"

    # every finding reached the imm_audit_finding hook, opened then resolved
    hooked = [json.loads(x) for x in (tmp_path / "findings.log").read_text().splitlines()]
    assert [h["status"] for h in hooked] == ["open"] * 9 + ["resolved"] * 9
    assert {h["id"] for h in hooked} == {f["id"] for f in d.json("audit", "findings")}
    # the audit records are ledger leaves like any other: the ledger still verifies
    assert d.json("ledger", "verify")["ok"]
    # and the whole story exports and verifies offline
    (tmp_path / "pub.pem").write_text(d.run("keys", "export").stdout)
    d.run("audit", "export", "--out", str(tmp_path / "b.jsonl"))
    ok = d.json("audit", "verify", str(tmp_path / "b.jsonl"), "--key", str(tmp_path / "pub.pem"))
    assert ok["ok"] and ok["counts"]["finding"] == 18 and ok["counts"]["observation"] == 10


# -- export bundles: verify, and every tampering is named ---------------------------------------

SYNTH_CONFIG = """
[providers.synth]
kind = "synthetic"
count_file = "{count_file}"
"""


@pytest.fixture
def synth_immd(tmp_path: Path) -> Iterator[tuple[Immd, Path]]:
    env = audit_plugin.install(tmp_path / "plugins")
    count = tmp_path / "count"
    d = Immd(tmp_path, SYNTH_CONFIG.format(count_file=count)).start(extra_env=env)
    try:
        yield d, count
    finally:
        d.stop()


def flip(line: bytes, pos: int) -> bytes:
    """``line`` with the byte at ``pos`` changed to another printable ASCII character."""
    c = line[pos:pos + 1]
    new = {b"0": b"1", b"a": b"b", b'"': b"'", b"{": b"[", b"}": b"]"}.get(c)
    if new is None:
        new = b"0" if c.isdigit() else (b"a" if c != b"a" else b"b")
    if new == c:
        new = b"x"
    return line[:pos] + new + line[pos + 1:]


def test_export_verifies_offline_and_names_the_failing_line(
        synth_immd: tuple[Immd, Path], tmp_path: Path) -> None:
    d, count = synth_immd
    count.write_text("12")
    first = d.json("audit", "run", "--wait")
    assert (first["instances"], first["findings_opened"]) == (12, 24)  # pets, outside rollouts
    count.write_text("8")
    second = d.json("audit", "run", "--wait")
    assert (second["observations_closed"], second["findings_resolved"]) == (4, 8)
    pem = tmp_path / "pub.pem"
    pem.write_text(d.run("keys", "export").stdout)
    bundle, csv_bundle = tmp_path / "b.jsonl", tmp_path / "b.csv"
    d.run("audit", "export", "--out", str(bundle))
    d.run("audit", "export", "--out", str(csv_bundle), "--format", "csv")
    future = d.json("audit", "export", "--out", str(tmp_path / "f.jsonl"), "--since",
                    "2999-01-01")
    past = d.json("audit", "export", "--out", str(tmp_path / "p.jsonl"), "--until", "2000-01-01")
    bad = d.fails("audit", "export", "--out", str(tmp_path / "x"), "--since", "soon", code=2)
    assert "not a time" in bad.stderr
    d.stop()  # verification needs no daemon

    ok = d.json("audit", "verify", str(bundle), "--key", str(pem))
    assert ok["ok"] and ok["counts"] == {"record": 2, "observation": 16, "finding": 32}
    assert d.json("audit", "verify", str(csv_bundle), "--key", str(pem))["ok"]
    # from a time after everything: what was still open then (8 instances, 16 findings)
    since = bundle_verify.verify_file(tmp_path / "f.jsonl", bundle_verify.load_public_key(
        pem.read_bytes()))
    assert since.ok and since.counts == {"record": 1, "observation": 8, "finding": 16}
    assert future["lines"] == 1 + 1 + 24 + 1 and past["lines"] == 2

    pub = bundle_verify.load_public_key(pem.read_bytes())
    lines = bundle.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 2 + 48 + 1

    def failing(mutated: list[bytes]) -> int | None:
        return bundle_verify.verify_lines(mutated, pub).failing_line

    assert failing(lines) is None
    for i, line in enumerate(lines):
        for pos in {0, len(line) // 3, len(line) // 2, len(line) - 2}:
            assert failing(lines[:i] + [flip(line, pos)] + lines[i + 1:]) == i + 1, (i, pos)
    for i in range(len(lines)):
        assert failing(lines[:i] + lines[i + 1:]) == i + 1, f"dropped line {i + 1}"
    for i in range(len(lines) - 1):
        swapped = lines[:i] + [lines[i + 1], lines[i]] + lines[i + 2:]
        assert failing(swapped) == i + 1, f"swapped lines {i + 1} and {i + 2}"
    other = bundle_verify.verify_lines(lines, Ed25519PrivateKey.generate().public_key())
    assert other.failing_line == 1 and "not the given key" in (other.failure or "")

    # through immctl: exit 7 and the line named
    tampered = tmp_path / "t.jsonl"
    tampered.write_bytes(b"".join(lines[:16] + [flip(lines[16], 40)] + lines[17:]))
    cp = d.fails("audit", "verify", str(tampered), "--key", str(pem), code=7)
    assert "line 17:" in cp.stderr
    other_pem = tmp_path / "other.pem"
    other_pem.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    cp = d.fails("audit", "verify", str(bundle), "--key", str(other_pem), code=7)
    assert "line 1:" in cp.stderr
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-1]))
    assert "without a signature line" in d.fails("audit", "verify", str(cut), "--key",
                                                  str(pem), code=7).stderr

    # CSV: a cell edited in a spreadsheet is named, with its row
    rows = csv_bundle.read_text().splitlines(keepends=True)
    row = next(i for i, r in enumerate(rows) if "unknown-image" in r)
    edited = tmp_path / "e.csv"
    edited.write_text("".join(rows[:row] + [rows[row].replace("unknown-image", "ok", 1)]
                              + rows[row + 1:]))
    result = bundle_verify.verify_file(edited, pub)
    assert result.failing_line == row and f"(CSV row {row + 1})" in (result.failure or "")
    assert "column 'verdict'" in (result.failure or "")


# -- the API stays responsive while a large sweep runs -----------------------------------------

def test_api_answers_while_a_large_sweep_runs(tmp_path: Path) -> None:
    env = audit_plugin.install(tmp_path / "plugins")
    d = Immd(tmp_path, '[providers.synth]\nkind = "synthetic"\ncount = 20000\n'
                       'page_size = 500\npage_delay_s = 0.03\n').start(extra_env=env)
    try:
        started = d.json("audit", "run")
        assert started["started"] is True
        t0 = time.monotonic()
        status = d.json("status")
        took = time.monotonic() - t0
        assert status["version"]
        during = d.json("audit", "status")
        assert during["state"] == "running", f"the sweep ended before immctl status ({took:.2f}s)"
        assert during["id"] == started["id"] and "progress" in during
        assert d.json("audit", "run")["started"] is False  # joining, not a second sweep
        deadline = time.monotonic() + 90
        while d.json("audit", "status")["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        final = d.json("audit", "status")
        assert final["state"] == "completed" and final["instances"] == 20000
        assert final["findings_opened"] == 40000  # pets, outside any rollout
    finally:
        d.stop()


def test_scheduled_sweeps_and_bad_input(tmp_path: Path) -> None:
    env = audit_plugin.install(tmp_path / "plugins")
    d = Immd(tmp_path, '[providers.synth]\nkind = "synthetic"\ncount = 3\n'
                       "[audit]\ninterval_s = 0.2\n").start(extra_env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            cp = d.run("audit", "status", "--json", check=False)
            if cp.returncode == 0 and json.loads(cp.stdout)["state"] == "completed":
                break
            assert time.monotonic() < deadline, "no scheduled sweep ran"
            time.sleep(0.1)
        assert json.loads(cp.stdout)["actor"] == "immd (scheduled audit)"
        assert "verdict" in d.fails("audit", "findings", "--verdict", "bogus", code=2).stderr
        assert d.fails("audit", "blast-radius", "nosuch@1", code=3)
    finally:
        d.stop()
    (tmp_path / "bad").mkdir()
    bad = Immd(tmp_path / "bad", "[audit]\ninterval_s = -1\n")
    with pytest.raises(RuntimeError, match="immd exited"):
        bad.start()
    assert b"interval_s -1 must be a number" in bad.log.read_bytes()
    bad.stop()
