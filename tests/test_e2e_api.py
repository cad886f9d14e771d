"""The API's edges: authorization by peer credentials, bad input, OpenAPI (fuzzed by
schemathesis in tests/test_schemathesis_stateful.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imm.cli.client import UnixHTTPConnection

from harness import Immd, reader_copy

NOBODY = 65534


def raw(sock: Path, method: str, path: str, body: bytes | None = None,
        ctype: str = "application/json") -> tuple[int, dict]:
    conn = UnixHTTPConnection(str(sock), timeout=30)
    headers = {"Content-Type": ctype} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert "json" in resp.getheader("Content-Type", ""), data[:200]
    return resp.status, json.loads(data)


@pytest.fixture
def shared_immd(tmp_path: Path) -> Iterator[Immd]:
    """An immd whose socket is reachable by 'nobody' through the socket's group only."""
    rundir = Path(tempfile.mkdtemp(prefix="imm-sock-"))
    os.chmod(rundir, 0o755)
    cfg = (
        "[daemon]\n"
        'socket_group = "nogroup"\n'
        'admin_group = "imm-admin-test-absent"\n'
        "max_body_bytes = 65536\n"
    )
    d = Immd(tmp_path, cfg)
    d.sock = rundir / "immd.sock"
    d.start()
    yield d
    d.stop()
    rundir.rmdir()


def test_readers_read_and_get_403_on_every_mutating_call(shared_immd: Immd,
                                                          tmp_path: Path) -> None:
    d = shared_immd
    img = tmp_path / "disk.raw"
    img.write_bytes(b"x" * 4096)
    os.chmod(tmp_path, 0o755)
    os.chmod(img, 0o644)
    d.run("image", "add", str(img), "--name", "web", "--version", "1")
    st = os.stat(d.sock)
    assert st.st_gid == NOBODY and (st.st_mode & 0o777) == 0o660
    size = d.ledger_size()
    # reads work for the reader
    status = d.json("status", user=NOBODY, group=NOBODY)
    assert status["peer"]["admin"] is False and status["peer"]["uid"] == NOBODY
    assert d.json("image", "show", "web@1", user=NOBODY, group=NOBODY)["name"] == "web"
    # every mutating route of the OpenAPI document answers 403 to the reader
    doc = d.json("status")  # noqa: F841 - the admin can read too
    spec = json.loads(subprocess.run(
        ["curl", "-s", "--unix-socket", str(d.sock), "http://imm/v1/openapi.json"],
        capture_output=True, text=True, check=True).stdout) if _have_curl() else None
    script = r"""
import json, sys
sys.path.insert(0, %r)
from imm.cli.client import UnixHTTPConnection
sock = sys.argv[1]
def req(m, p, b=None):
    c = UnixHTTPConnection(sock, 30); c.request(m, p, body=b, headers={"Content-Type": "application/json"})
    r = c.getresponse(); return r.status, r.read()
st, body = req("GET", "/v1/openapi.json")
spec = json.loads(body)
out = {}
for path, ops in spec["paths"].items():
    if path.startswith("/v1/tokens"):
        continue  # readers mint and revoke their own tokens (tests/test_faults_security.py)
    for method in ops:
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
            p = path.replace("{ref}", "web%%401").replace("{name}", "web%%2Fprod")
            s, b = req(method.upper(), p, b"{}")
            out[method.upper() + " " + path] = [s, json.loads(b)["error"]["code"]]
print(json.dumps(out))
""" % str(reader_copy())
    cp = subprocess.run(["/usr/bin/python3", "-c", script, str(d.sock)], capture_output=True,
                        text=True, user=NOBODY, group=NOBODY, extra_groups=[], check=True)
    results = json.loads(cp.stdout)
    assert len(results) >= 7, results
    assert all(v == [403, "forbidden"] for v in results.values()), results
    if spec is not None:
        mutating = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops
                    if m.upper() in ("POST", "PUT", "PATCH", "DELETE")
                    and not p.startswith("/v1/tokens")}
        assert mutating == set(results)
    # and through immctl, with a message saying what is needed
    drop = tempfile.mkdtemp(prefix="imm-drop-")  # where 'nobody' may write a backup FILE
    os.chmod(drop, 0o777)
    for args in (["image", "revoke", "web@1", "--reason", "x"], ["keys", "rotate"],
                 ["channel", "set", "web/prod", "web@1"], ["image", "restore", "web@1"],
                 ["image", "artifact", "add", "web@1", "--provider", "aws", "--region",
                  "us-east-1", "--image-id", "ami-1"],
                 ["state", "backup", str(Path(drop) / "state-copy.db")]):
        cp = d.fails(*args, code=5, user=NOBODY, group=NOBODY)
        assert "may only read" in cp.stderr
    assert d.ledger_size() == size
    assert os.listdir(drop) == []  # no copy and no .part left by the refused backup
    os.rmdir(drop)
    # someone outside the socket's group cannot even connect
    cp = d.fails("status", user=NOBODY, group=NOBODY + 1 if _gid_exists(NOBODY + 1) else 1,
                 code=69)
    assert "permission denied" in cp.stderr.lower()


def _have_curl() -> bool:
    from shutil import which
    return which("curl") is not None


def _gid_exists(gid: int) -> bool:
    import grp
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


PACKER_OK = {
    "builds": [{"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000,
                "files": None, "artifact_id": "us-east-1:ami-0abc1234,eu-west-1:ami-0def5678",
                "packer_run_uuid": "r1", "custom_data": None}],
    "last_run_uuid": "r1",
}


def test_bad_input_is_named_and_changes_nothing(immd: Immd, tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"y" * 1000)
    immd.run("image", "add", str(disk), "--name", "web", "--version", "1")
    size = immd.ledger_size()
    packer_bad = {
        "notjson.json": "{ this is not json",
        "truncated.json": json.dumps(PACKER_OK)[:60],
        "nobuilds.json": json.dumps({"builds": [], "last_run_uuid": "r1"}),
        "wrongtype.json": json.dumps({**PACKER_OK, "builds": [{**PACKER_OK["builds"][0],
                                                               "build_time": "yesterday"}]}),
        "badami.json": json.dumps({**PACKER_OK, "builds": [{**PACKER_OK["builds"][0],
                                                            "artifact_id": "us-east-1"}]}),
        "list.json": "[1, 2]",
    }
    for name, text in packer_bad.items():
        (tmp_path / name).write_text(text)
        cp = immd.fails("image", "import-packer", str(tmp_path / name), code=2)
        assert name in cp.stderr, (name, cp.stderr)
    cases = [
        (["image", "show", "nosuch@1"], 3, "nosuch"),
        (["image", "show", "sha256:0123456789ab"], 3, "sha256:0123456789ab"),
        (["image", "show", "sha256:xyz"], 2, "sha256:xyz"),
        (["image", "show", "sha256:" + "0" * 70], 2, "sha256:"),
        (["image", "add", str(tmp_path / "missing.raw"), "--name", "w", "--version", "1"], 2,
         "missing.raw"),
        (["image", "add", str(disk), "--name", "web", "--version", "2", "--label", "bad key=v"],
         2, "bad key"),
        (["image", "add", str(disk), "--name", "web", "--version", "2", "--label", "novalue"],
         2, "novalue"),
        (["image", "add", str(disk), "--name", "Web App", "--version", "2"], 2, "Web App"),
        (["image", "add", str(disk), "--name", "web", "--version", "-1"], 2, "-1"),
        (["image", "add", str(disk), "--name", "web", "--version", "3", "--layer", "kernel=x@1"],
         2, "kernel"),
        (["image", "add", str(disk), "--name", "web", "--version", "3", "--parent", "nope@1"],
         3, "nope"),
        (["image", "add", str(disk), "--name", "web", "--version", "1", "--label", "a=b"], 4,
         "web@1"),
        (["image", "revoke", "nosuch@1", "--reason", "x"], 3, "nosuch"),
        (["image", "revoke", "web@1", "--reason", "   "], 2, "reason"),
        (["channel", "set", "Web Prod", "web@1"], 2, "Web Prod"),
        (["channel", "set", "web/prod", "web@9"], 3, "web"),
        (["channel", "show", "web/none"], 3, "web/none"),
        (["image", "artifact", "add", "web@1", "--provider", "aws", "--region", "us east",
          "--image-id", "ami-1"], 2, "us east"),
        (["ledger", "proof", "--index", "999"], 2, "999"),
        (["ledger", "consistency", "--from", "5", "--to", "2"], 2, "5"),
        (["keys", "export", "--keyid", "abc"], 2, "abc"),
    ]
    for args, code, needle in cases:
        cp = immd.fails(*args, code=code)
        assert needle in cp.stderr, (args, cp.stderr)
        js = immd.run(*args, "--json", check=False)
        err = json.loads(js.stdout)["error"]
        assert err["message"] and err["code"]
    # raw API: oversized, non-JSON, wrong shapes, unknown endpoints
    big = json.dumps({"manifest": "x" * (2 << 20)}).encode()
    st, body = raw(immd.sock, "POST", "/v1/images/import-packer", big)
    assert st == 413 and body["error"]["code"] == "payload-too-large"
    st, body = raw(immd.sock, "POST", "/v1/images", b"not json at all")
    assert st == 400 and "not JSON" in body["error"]["message"]
    st, body = raw(immd.sock, "POST", "/v1/images", b"[1,2]")
    assert st == 400 and "object" in body["error"]["message"]
    st, body = raw(immd.sock, "POST", "/v1/images", json.dumps(
        {"path": "relative/x", "name": "w", "version": "1"}).encode())
    assert st == 400 and "relative/x" in body["error"]["message"]
    st, body = raw(immd.sock, "POST", "/v1/images", json.dumps(
        {"path": "/nonexistent/x.raw", "name": "w", "version": "1"}).encode())
    assert st == 400 and "/nonexistent/x.raw" in body["error"]["message"]
    st, body = raw(immd.sock, "POST", "/v1/images", json.dumps(
        {"path": str(disk), "name": 5, "version": "1"}).encode())
    assert st == 400 and "'name'" in body["error"]["message"]
    st, body = raw(immd.sock, "GET", "/v1/nope")
    assert st == 404 and body["error"]["code"] == "not-found"
    st, body = raw(immd.sock, "DELETE", "/v1/images")
    assert st in (403, 405)
    st, body = raw(immd.sock, "GET", "/v1/ledger/proof?index=abc")
    assert st == 400 and "abc" in body["error"]["message"]
    st, body = raw(immd.sock, "GET", "/v1/images?limit=0")
    assert st == 400
    assert immd.ledger_size() == size
    assert immd.items("image", "list")[0]["name"] == "web"
    assert len(immd.items("image", "list")) == 1
    # and the daemon never answered with a traceback
    assert b"Traceback" not in immd.log.read_bytes()


def test_packer_import(immd: Immd, tmp_path: Path) -> None:
    manifest = {
        "builds": [
            {"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000,
             "files": None, "artifact_id": "us-east-1:ami-0aaa1111", "packer_run_uuid": "run-1",
             "custom_data": None},
            {"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000500,
             "files": None, "artifact_id": "us-east-1:ami-0bbb2222,eu-west-1:ami-0ccc3333",
             "packer_run_uuid": "run-2", "custom_data": {"version": "2.0.1", "team": "web"}},
            {"name": "web-gce", "builder_type": "googlecompute", "build_time": 1700000500,
             "files": [{"name": "x", "size": 10}], "artifact_id": "web-2-0-1",
             "packer_run_uuid": "run-2", "custom_data": None},
        ],
        "last_run_uuid": "run-2",
    }
    f = tmp_path / "packer-manifest.json"
    f.write_text(json.dumps(manifest))
    size = immd.ledger_size()
    r = immd.json("image", "import-packer", str(f))
    imgs = {i["name"]: i for i in r["images"]}
    assert set(imgs) == {"web", "web-gce"}
    web = imgs["web"]
    assert web["version"] == "2.0.1" and web["content_kind"] == "packer"
    assert {(a["provider"], a["region"], a["image_id"]) for a in web["artifacts"]} == {
        ("aws", "us-east-1", "ami-0bbb2222"), ("aws", "eu-west-1", "ami-0ccc3333")}
    assert imgs["web-gce"]["artifacts"][0]["provider"] == "gcp"
    # 2 images + 3 artifacts, one checkpoint
    assert immd.ledger_size() == size + 5
    again = immd.json("image", "import-packer", str(f))
    assert all(not i["created"] for i in again["images"]) and immd.ledger_size() == size + 5
    allruns = immd.json("image", "import-packer", str(f), "--all-runs")
    assert len(allruns["images"]) == 3
    assert immd.run("image", "verify", "--all").returncode == 0


def test_openapi_is_valid(immd: Immd) -> None:
    from openapi_spec_validator import validate

    st, spec = raw(immd.sock, "GET", "/v1/openapi.json")
    assert st == 200
    validate(spec)
    assert "/v1/images" in spec["paths"] and "/metrics" in spec["paths"]


def test_metrics_prometheus_text(immd: Immd, tmp_path: Path) -> None:
    immd.run("status")
    conn = UnixHTTPConnection(str(immd.sock), timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    assert 'imm_http_requests_total{method="GET",route="/v1/status",status="200"} 1' in text
    assert "imm_ledger_size 1" in text
    assert "# TYPE imm_http_request_duration_seconds histogram" in text
