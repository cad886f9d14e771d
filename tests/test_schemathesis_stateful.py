"""Schemathesis against the live immd: every phase, stateful runs through the OpenAPI links.

immd serves its API on loopback TCP with bearer tokens minted over the unix socket: a reader (a
read-scoped token) and an admin fuzz it at the same time. Each run goes through the examples, coverage,
fuzzing and stateful phases with 250 examples per operation (ten times the 25 this suite ran
before), and the stateful phase follows the links of the OpenAPI document: an image created is
shown, revoked, restored, verified and given artifacts. The check is ``not_a_server_error``: no
answer may be a 5xx.

POST /v1/images reads a path on the daemon's host; the path of a generated body is pointed at a
fresh file under the daemon's ``image_roots`` (a schemathesis hook) so that creations succeed
and the links have images to follow. The figures (cases run, server errors) are printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backends import free_port
from harness import Immd

EXAMPLES = int(os.environ.get("IMM_FUZZ_EXAMPLES", "250"))  # per operation; the old run: 25
HOOKS = '''
import os, secrets
import schemathesis

ROOT = os.environ["IMM_FUZZ_IMAGE_ROOT"]

@schemathesis.hook
def map_body(context, body):
    op = context.operation
    if op is None or op.method.upper() != "POST" or op.path != "/v1/images":
        return body
    if not isinstance(body, dict):
        return body
    # a fresh file each time, under the daemon's image_roots: a creation that can succeed
    name = "fz-" + secrets.token_hex(6)
    path = os.path.join(ROOT, name + ".raw")
    with open(path, "wb") as f:
        f.write(secrets.token_bytes(256))
    return {**body, "path": path, "name": name, "version": "1"}
'''


def start_schemathesis(port: int, token: str, work: Path, root: Path,
                       label: str) -> subprocess.Popen[str]:
    (work / "imm_fuzz_hooks.py").write_text(HOOKS)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "imm_fuzz_hooks",
           "IMM_FUZZ_IMAGE_ROOT": str(root), "PYTHONPATH": str(work)}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "schemathesis"), "run",
         f"http://127.0.0.1:{port}/v1/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", str(EXAMPLES), "--seed", "1",
         "--phases", "examples,coverage,fuzzing,stateful",
         "--header", f"Authorization: Bearer {token}",
         # one worker: two threads in hypothesis's lambda description can trip CPython 3.11's
         # ast.parse ("AST constructor recursion depth mismatch"), a crash of the fuzzer
         "--workers", "1", "--no-color", "--suppress-health-check", "all",
         "--request-timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work, env=env)


def count(out: str) -> tuple[int, int]:
    """(test cases run, server errors) from schemathesis's summary."""
    m = re.search(r"(\d+) generated", out)
    cases = int(m.group(1)) if m else 0
    errors = len(re.findall(r"Server error", out))
    return cases, errors


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("IMM_FUZZ") != "1",
                    reason="the 10x stateful fuzz of both roles takes many minutes on 2 cores: "
                           "IMM_FUZZ=1 ./scripts/test tests/test_schemathesis_stateful.py runs it")
def test_schemathesis_stateful_finds_no_server_error(tmp_path: Path) -> None:
    """A reader and an admin fuzz the same immd at once (one schemathesis each)."""
    root = Path(tempfile.mkdtemp(prefix="imm-fuzz-images-"))
    port = free_port()
    d = Immd(tmp_path, f'[daemon]\ntcp = "127.0.0.1:{port}"\nimage_roots = ["{root}"]\n')
    d.start()
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        operations = len([op for ops in d_spec(d).values() for op in ops])
        for scope in ("read", "admin"):
            token = d.run("token", "create", "--ttl", "1h", "--scope", scope).stdout.strip()
            work = tmp_path / f"fuzz-{scope}"
            work.mkdir()
            procs[scope] = start_schemathesis(port, token, work, root, scope)
        outs = {scope: p.communicate(timeout=840)[0] for scope, p in procs.items()}
        figures = {}
        for scope, out in outs.items():
            cases, errors = count(out)
            figures[scope] = cases
            summary = out[out.find("Test Phases"):] if "Test Phases" in out else out[-3000:]
            print(f"\nschemathesis as {scope}: {cases} cases, {errors} server errors\n{summary}")
            assert procs[scope].returncode == 0, out[-6000:]
            assert errors == 0
        # ten times the examples of the stateless run this replaces (25 per operation)
        assert sum(figures.values()) >= 10 * 25 * operations, (figures, operations)
        assert b"Traceback" not in d.log.read_bytes()
        # the stateful phase really created images, and followed links to revoke them
        images = d.json("image", "list")
        images = images.get("items", images) if isinstance(images, dict) else images
        fuzzed = [i for i in images if str(i.get("name", "")).startswith("fz-")]
        assert fuzzed, images[:3]
        print(f"images created by the fuzzers: {len(fuzzed)}, revoked afterwards: "
              f"{sum(i.get('status') == 'revoked' for i in fuzzed)}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        d.stop()
        for f in root.iterdir():
            f.unlink()
        root.rmdir()


def d_spec(d: Immd) -> dict[str, dict[str, object]]:
    cp = subprocess.run(["curl", "-s", "--unix-socket", str(d.sock),
                         "http://imm/v1/openapi.json"], capture_output=True, text=True,
                        check=True)
    paths: dict[str, dict[str, object]] = json.loads(cp.stdout)["paths"]
    return paths


def test_openapi_links_name_real_operations_and_parameters() -> None:
    """Every link of the OpenAPI document leads to an operation that exists, and fills a
    parameter that operation has (a stateful fuzzer silently skips a broken link)."""
    from openapi_spec_validator import validate

    from imm.daemon.app import ROUTES
    from imm.daemon.openapi import LINKS, document

    doc = document(ROUTES)
    validate(doc)
    ops = {op["operationId"]: op for ops in doc["paths"].values() for op in ops.values()}
    seen = 0
    for ops_of_path in doc["paths"].values():
        for op in ops_of_path.values():
            for resp in op["responses"].values():
                for name, link in resp.get("links", {}).items():
                    target = ops.get(link["operationId"])
                    assert target is not None, (op["operationId"], name, link)
                    have = {p["name"] for p in target.get("parameters", [])}
                    for param in link["parameters"]:
                        assert param.split(".", 1)[-1] in have, (op["operationId"], name, param)
                    seen += 1
    assert seen >= sum(len(v) for v in LINKS.values())
    assert "links" in doc["paths"]["/v1/images"]["post"]["responses"]["201"]
