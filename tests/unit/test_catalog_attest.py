"""in-toto Statements and their DSSE envelopes, without a daemon."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imm.catalog import attest
from imm.errors import BadRequest, VerificationFailed

DIGEST = "sha256:" + "c" * 64


def test_sign_and_open() -> None:
    key = Ed25519PrivateKey.generate()
    stmt = attest.statement("web@1", DIGEST, "https://slsa.dev/provenance/v1", {"a": 1})
    env = attest.sign(stmt, key)
    got, signer = attest.open_envelope(env, {"k": key.public_key()})
    assert signer == "k" and got == stmt
    assert got["subject"][0]["digest"] == {"sha256": "c" * 64}
    with pytest.raises(VerificationFailed, match="not signed by a trusted key"):
        attest.open_envelope(env, {"other": Ed25519PrivateKey.generate().public_key()})
    tampered = dict(env, payload=base64.b64encode(json.dumps({**stmt, "predicate": {}})
                                                  .encode()).decode())
    with pytest.raises(VerificationFailed):
        attest.open_envelope(tampered, {"k": key.public_key()})


@pytest.mark.parametrize("ptype, predicate, needle", [
    ("not a uri", {}, "is not a URI"),
    ("https://x/y", [1], "must be a JSON object"),
    ("https://x/y", "text", "must be a JSON object"),
])
def test_bad_statements(ptype: str, predicate: object, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        attest.statement("web@1", DIGEST, ptype, predicate)


def test_not_an_in_toto_envelope() -> None:
    with pytest.raises(BadRequest, match="payloadType"):
        attest.open_envelope({"payloadType": "application/vnd.imm.image.v1+json"}, {})
    with pytest.raises(BadRequest, match="malformed DSSE"):
        attest.open_envelope({"payloadType": attest.PAYLOAD_TYPE, "payload": "%%"}, {})
