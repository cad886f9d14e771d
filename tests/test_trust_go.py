"""imm's witnessed checkpoint and tiles checked by Go code not written here:
golang.org/x/mod/sumdb/note (the log's signature), transparency-dev/formats/note (the
cosignature/v1 line) and golang.org/x/mod/sumdb/tlog (tiles read through TileHashReader with
only the path adapted: Go's paths carry the tile height, tlog-tiles drops it; tree hash and
record proofs compared with 'ledger head' and 'ledger proof').

Needs the go command and the two modules: from the Go module proxy, or from local copies named
in IMM_GO_REPLACE ("golang.org/x/mod=/src/mod,github.com/transparency-dev/formats=/src/fmt").
Skipped when either is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_trust_tiles import get
from test_trust_witness import config, wait_witnessed

from harness import Immd

HERE = Path(__file__).resolve().parent / "go" / "tlogcheck"
RUN = "11111111-2222-3333-4444-555555555555"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("go") is None, reason="the go command is absent")]


def build(tmp: Path) -> Path:
    src = tmp / "tlogcheck"
    shutil.copytree(HERE, src)
    mod = ["module imm.test/tlogcheck", "", "go 1.19", "", "require (",
           "\tgithub.com/transparency-dev/formats v0.1.1", "\tgolang.org/x/mod v0.43.0", ")"]
    for pair in filter(None, os.environ.get("IMM_GO_REPLACE", "").split(",")):
        name, _, path = pair.partition("=")
        mod.append(f"replace {name} => {path}")
    (src / "go.mod").write_text("\n".join(mod) + "\n")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    cp = subprocess.run(["go", "build", "-o", str(tmp / "tlogcheck-bin"), "."], cwd=src,
                        capture_output=True, text=True, env=env, timeout=300)
    if cp.returncode != 0:
        pytest.skip(f"cannot build the Go checker (modules unavailable?): {cp.stderr[-500:]}")
    return tmp / "tlogcheck-bin"


def test_go_accepts_witnessed_checkpoint_and_tiles(make_immd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = build(tmp_path)
    a, b = make_immd(config("a"), "a"), make_immd(config("b"), "b")
    info = {}
    for name, d in (("a", a), ("b", b)):
        d.start()
        info[name] = {**d.json("witness", "info"), "socket": str(d.sock)}
        d.stop()
    a.config_path.write_text(config("a", info["b"]))
    b.config_path.write_text(config("b", info["a"]))
    a.start()
    b.start()
    builds = [{"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000 + i,
               "files": None, "artifact_id": f"us-east-1:ami-{i:017x}", "packer_run_uuid": RUN,
               "custom_data": {"version": f"1.0.{i}"}} for i in range(300)]
    (tmp_path / "m.json").write_text(json.dumps({"builds": builds, "last_run_uuid": RUN}))
    a.run("image", "import-packer", str(tmp_path / "m.json"))
    head = wait_witnessed(a, a.ledger_size(), 60)
    out = tmp_path / "out"
    out.mkdir()
    (out / "note.txt").write_text(head["witnessed_checkpoint"])
    (out / "log.vkey").write_text(info["a"]["log_vkey"])
    (out / "witness.vkey").write_text(info["b"]["witness_vkey"])
    size = head["size"]

    def fetch(d: Immd, path: str) -> None:
        st, _, data = get(d, "/" + path)
        assert st == 200, (path, st)
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)

    full, rest = divmod(size, 256)
    for n in range(full):
        fetch(a, f"tile/0/{n:03d}")
    if rest:
        fetch(a, f"tile/0/{full:03d}.p/{rest}")
    fetch(a, f"tile/1/000.p/{full}")
    idxs = [0, 255, 256, 300, size - 1]
    cp = subprocess.run([str(exe), str(out), *map(str, idxs)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lines = cp.stdout.splitlines()
    assert "verified signature: imm.a/ledger" in lines
    assert any(ln.startswith("verified signature: imm.b/witness time ") for ln in lines)
    assert f"tree hash {size} {head['root']}" in lines
    proofs = [ln.split(" ") for ln in lines if ln.startswith("proof ")]
    assert len(proofs) == len(idxs)
    for _, idx, leaf, path in proofs:
        p = a.json("ledger", "proof", "--index", idx, "--size", str(size))
        assert p["leaf_hash"] == leaf and p["path"] == path.split(",")
