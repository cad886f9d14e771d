"""Attestations end to end: in-toto Statements v1 in DSSE made by imm and checked by
independent implementations (securesystemslib's DSSE, the in-toto-attestation package's
Statement protobuf and validator); a builder's envelope made by securesystemslib and imported;
a service requiring a predicate type refuses an image without it by the rule's name."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from harness import Immd

SLSA = "https://slsa.dev/provenance/v1"


def builder_env(key: Ed25519PrivateKey, digest_hex: str, ptype: str = SLSA) -> dict:
    stmt = {"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "disk.raw", "digest": {"sha256": digest_hex}}],
            "predicateType": ptype,
            "predicate": {"buildDefinition": {"buildType": "https://example.com/packer@v1"},
                          "runDetails": {"builder": {"id": "https://ci.example.com"}}}}
    env = Envelope(json.dumps(stmt).encode(), "application/vnd.in-toto+json", {})
    env.sign(CryptoSigner(key))
    return env.to_dict()


def test_attestations_verify_independently_and_gate_rollouts(tmp_path: Path) -> None:
    builder = Ed25519PrivateKey.generate()
    pem = tmp_path / "builder.pub.pem"
    pem.write_bytes(builder.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = (f'[trust.builders.ci]\nkey_file = "{pem}"\n\n[providers.local]\nkind = "local"\n\n'
           '[services.web]\ntargets = [{ provider = "local", region = "local", count = 1 }]\n'
           f'require_attestations = ["{SLSA}"]\n')
    d = Immd(tmp_path, cfg).start()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"image bytes" * 1000)
    img = d.json("image", "add", str(disk), "--name", "web", "--version", "1")

    cp = d.fails("rollout", "start", "web", "--image", "web@1", code=6)
    assert "refused by rule 'required-attestations'" in cp.stderr and SLSA in cp.stderr

    pred = tmp_path / "provenance.json"
    pred.write_text(json.dumps({"buildDefinition": {"buildType": "https://imm.dev/bake@v1"}}))
    r = d.json("image", "attest", "web@1", "--predicate-type", SLSA, "--predicate", str(pred))
    assert r["created"] and r["signer"] == "imm"
    # securesystemslib verifies the DSSE envelope with the daemon's exported key
    pub = serialization.load_pem_public_key(d.run("keys", "export").stdout.encode())
    keyid = d.json("status")["keyid"]
    env = Envelope.from_dict(r["envelope"])
    assert keyid in env.verify([SSlibKey.from_crypto(pub, keyid=keyid)], 1)  # type: ignore[arg-type]
    # the in-toto-attestation package parses and validates the Statement
    pb = json_format.Parse(base64.b64decode(r["envelope"]["payload"]), statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.subject[0].digest["sha256"] == img["digest"].removeprefix("sha256:")
    assert pb.predicate_type == SLSA and pb.subject[0].name == "web@1"

    # the rule passes now: the next rule in line speaks (a disk image has no local artifact)
    cp = d.fails("rollout", "start", "web", "--image", "web@1", code=6)
    assert "required-attestations" not in cp.stderr
    assert "artifact-in-every-region" in cp.stderr

    # a builder's attestation over the bytes it made (the content digest), made by
    # securesystemslib, is imported and verified
    content_hex = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert img["content_digest"] == "sha256:" + content_hex
    envf = tmp_path / "builder.intoto.json"
    envf.write_text(json.dumps(builder_env(builder, content_hex, "https://example.com/test/v1")))
    r = d.json("image", "import-attestation", str(envf))
    assert r["signer"] == "builder:ci" and r["digest"] == img["digest"]
    listed = d.items("image", "attestations", "web@1")
    assert [(a["predicate_type"], a["verified"]) for a in listed] == [
        (SLSA, True), ("https://example.com/test/v1", True)]
    assert d.run("image", "verify", "--all").returncode == 0

    # bad input: named, and the ledger unchanged
    size = d.ledger_size()
    notjson = tmp_path / "pred.txt"
    notjson.write_text("buildType: packer\n")
    cp = d.fails("image", "attest", "web@1", "--predicate-type", SLSA, "--predicate",
                 str(notjson), code=2)
    assert f"predicate file {notjson} is not JSON" in cp.stderr
    notjson.write_text("[1, 2]")
    cp = d.fails("image", "attest", "web@1", "--predicate-type", SLSA, "--predicate",
                 str(notjson), code=2)
    assert "holds a JSON list" in cp.stderr
    cp = d.fails("image", "attest", "web@1", "--predicate-type", "slsa provenance",
                 "--predicate", str(pred), code=2)
    assert "predicate type 'slsa provenance' is not a URI" in cp.stderr
    envf.write_text(json.dumps(builder_env(Ed25519PrivateKey.generate(), content_hex)))
    cp = d.fails("image", "import-attestation", str(envf), code=7)
    assert "not signed by a trusted key" in cp.stderr and "ci" in cp.stderr
    envf.write_text(json.dumps(builder_env(builder, "ab" * 32)))
    cp = d.fails("image", "import-attestation", str(envf), code=3)
    assert "no image in the catalog has the attestation's subject digest" in cp.stderr
    assert d.ledger_size() == size

    # a row edited behind imm's back is caught by image verify
    db = sqlite3.connect(d.state / "imm.db")
    with db:
        db.execute("UPDATE attestations SET predicate_type='https://slsa.dev/provenance/v0.2' "
                   "WHERE signer='imm'")
    db.close()
    cp = d.fails("image", "verify", "--all", code=7)
    assert "attestations sha256:" in cp.stderr and "predicate_type differs" in cp.stderr


def test_packer_import_attaches_its_build_as_an_attestation(immd: Immd, tmp_path: Path) -> None:
    run = "11111111-2222-3333-4444-555555555555"
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(json.dumps({"builds": [{
        "name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000, "files": None,
        "artifact_id": "us-east-1:ami-0aaaaaaaaaaaaaaaa", "packer_run_uuid": run,
        "custom_data": {"version": "1.4.2"}}], "last_run_uuid": run}))
    out = immd.json("image", "import-packer", str(manifest), "--attest")
    (img,) = out["images"]
    assert img["attestation"]["created"]
    (att,) = immd.items("image", "attestations", img["digest"])
    assert att["verified"] and att["predicate_type"].endswith("/packer-build/v1")
    pb = json_format.Parse(base64.b64decode(att["envelope"]["payload"]),
                           statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.predicate["packer"]["packer_run_uuid"] == run
    size = immd.ledger_size()
    again = immd.json("image", "import-packer", str(manifest), "--attest")
    assert again["images"][0]["attestation"]["created"] is False
    assert immd.ledger_size() == size
