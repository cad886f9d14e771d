"""examples/terraform: the external data source program, run exactly as Terraform's external
provider runs it — the program list from main.tf (with ${path.module} expanded), the query as
a JSON object of strings on stdin, a JSON object of strings expected on stdout, stderr shown
on failure — against a real immd. Terraform itself is not installed here; the protocol is the
documented one of the hashicorp/external provider."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import BIN, REPO, Immd

EXAMPLE = REPO / "examples" / "terraform"


def program() -> list[str]:
    tf = (EXAMPLE / "main.tf").read_text()
    m = re.search(r"^\s*program\s*=\s*(\[.*?\])\s*$", tf, re.M)
    assert m, "main.tf has no program = [...]"
    return [x.replace("${path.module}", str(EXAMPLE)) for x in json.loads(m.group(1))]


def query_of_main_tf() -> dict[str, str]:
    tf = (EXAMPLE / "main.tf").read_text()
    body = re.search(r"query = \{(.*?)\n  \}", tf, re.S)
    assert body
    q = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', body.group(1)))
    q["channel"] = re.search(r'default = "([^"]+)"', tf).group(1)  # var.channel
    return q


def external(query: dict[str, str], sock: Path) -> subprocess.CompletedProcess[str]:
    # Terraform runs the program in its working directory with its own environment.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "IMM_SOCKET": str(sock)}
    return subprocess.run(program(), input=json.dumps(query), capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


@pytest.fixture
def immd(tmp_path: Path) -> Immd:
    d = Immd(tmp_path, '[providers.aws-prod]\nkind = "aws"\nregions = ["us-east-1"]\n').start()
    for v in ("1.4.1", "1.4.2"):
        p = tmp_path / f"{v}.raw"
        p.write_bytes(hashlib.sha256(v.encode()).digest() * 64)
        d.run("image", "add", str(p), "--name", "web", "--version", v)
    d.run("image", "artifact", "add", "web@1.4.1", "--provider", "aws-prod", "--region",
          "us-east-1", "--image-id", "ami-0aaaaaaaaaaaaaaa1")
    d.run("image", "artifact", "add", "web@1.4.2", "--provider", "aws-prod", "--region",
          "us-east-1", "--image-id", "ami-0fedcba9876543210")
    return d


def test_the_example_program_answers_terraform_in_one_call(immd: Immd) -> None:
    immd.run("channel", "set", "web/production", "web@1.4.2")
    query = query_of_main_tf()
    assert query == {"channel": "web/production", "provider": "aws-prod", "region": "us-east-1"}
    done = external(query, immd.sock)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert all(isinstance(v, str) for v in result.values()), result  # external's contract
    assert result["image_id"] == "ami-0fedcba9876543210" and result["image"] == "web@1.4.2"
    assert result["digest"] == immd.json("image", "show", "web@1.4.2")["digest"]
    # the channel moves: the next plan sees the new image
    immd.run("channel", "set", "web/production", "web@1.4.1")
    assert json.loads(external(query, immd.sock).stdout)["image_id"] == "ami-0aaaaaaaaaaaaaaa1"


def test_the_same_over_http(immd: Immd) -> None:
    immd.run("channel", "set", "web/production", "web@1.4.2")
    out = subprocess.run(
        ["curl", "-s", "--unix-socket", str(immd.sock),
         "http://imm/v1/channels/web%2Fproduction/resolve?provider=aws-prod&region=us-east-1"],
        capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    assert (r["image_id"], r["image"], r["region"]) == ("ami-0fedcba9876543210", "web@1.4.2",
                                                         "us-east-1")


def test_failures_reach_terraform_on_stderr(immd: Immd) -> None:
    done = external({"channel": "web/production", "provider": "aws-prod"}, immd.sock)
    assert done.returncode == 3 and "channel 'web/production' does not exist" in done.stderr
    immd.run("channel", "set", "web/production", "web@1.4.2")
    done = external({"channel": "web/production", "provider": "aws-prod", "region": "eu-west-1"},
                    immd.sock)
    assert done.returncode == 3 and "no artifact in aws-prod/eu-west-1" in done.stderr
    assert "it has aws-prod/us-east-1" in done.stderr
    immd.run("image", "revoke", "web@1.4.2", "--reason", "CVE-2026-1234")
    done = external({"channel": "web/production", "provider": "aws-prod"}, immd.sock)
    assert done.returncode == 4 and "revoked (reason: CVE-2026-1234" in done.stderr
    done = external({"provider": "aws-prod"}, immd.sock)
    assert done.returncode == 2 and "needs channel" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
