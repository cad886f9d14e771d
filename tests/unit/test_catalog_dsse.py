"""DSSE envelopes (imm.catalog.dsse), checked against securesystemslib's DSSE implementation
both ways (it verifies what imm signs; imm verifies what it signs), against the PAE example of
the DSSE specification, and with exact refusals for every malformed envelope.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from imm.catalog import dsse
from imm.catalog.dsse import EnvelopeError

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"dsse test key").digest())
PUB = KEY.public_key()
KEYID = hashlib.sha256(PUB.public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)).hexdigest()
BODY = {"name": "web", "version": "1.0", "labels": {"team": "é"}, "n": 3}
CANONICAL = '{"labels":{"team":"é"},"n":3,"name":"web","version":"1.0"}'.encode()


def lookup(keyid: str):
    return PUB if keyid == KEYID else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def envelope(ptype: str, payload: bytes, keyid: str = KEYID, key=KEY) -> dict:
    """An envelope signed by securesystemslib, not by imm."""
    sslib = SSlibKey.from_crypto(key.public_key(), keyid=keyid)
    env = Envelope(payload=payload, payload_type=ptype, signatures={})
    env.sign(CryptoSigner(key, sslib))
    return env.to_dict()


def exactly(message: str):
    return pytest.raises(EnvelopeError, match="^" + re.escape(message) + "$")


def test_pae_matches_the_dsse_specification_example():
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")
    assert dsse.pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "


def test_payload_types_and_kinds():
    for kind in dsse.KINDS:
        ptype = dsse.payload_type(kind)
        assert ptype == f"application/vnd.imm.{kind}.v1+json"
        assert dsse.kind_of(ptype) == kind
    assert dsse.KINDS == ("image", "artifact", "channel", "revocation", "rollout", "approval",
                          "audit-bundle", "key", "audit-finding", "audit-batch", "fleet", "heal",
                          "operator", "change", "channel-head", "lifecycle", "attestation")
    with pytest.raises(ValueError, match=r"^unknown record kind 'bogus'$"):
        dsse.payload_type("bogus")
    for bad in ("application/json", "application/vnd.imm.image.v2+json",
                "application/vnd.other.image.v1+json", "vnd.imm.image.v1+json"):
        with pytest.raises(ValueError, match="^" + re.escape(f"not an imm payload type: {bad!r}") + "$"):
            dsse.kind_of(bad)


def test_sign_produces_the_exact_envelope_and_securesystemslib_accepts_it():
    env = dsse.sign("image", BODY, KEY, KEYID)
    ptype = "application/vnd.imm.image.v1+json"
    message = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(CANONICAL), CANONICAL)
    assert env == {"payloadType": ptype, "payload": b64(CANONICAL),
                   "signatures": [{"keyid": KEYID, "sig": b64(KEY.sign(message))}]}
    accepted = Envelope.from_dict(copy.deepcopy(env)).verify([SSlibKey.from_crypto(PUB, keyid=KEYID)], 1)
    assert KEYID in accepted
    assert dsse.verify(env, lookup) == ("image", BODY, KEYID)
    assert dsse.body_of(env) == BODY


def test_an_envelope_signed_by_securesystemslib_verifies():
    env = envelope("application/vnd.imm.channel.v1+json", CANONICAL)
    assert dsse.verify(env, lookup) == ("channel", BODY, KEYID)


def test_the_first_good_signature_wins_after_unknown_and_bad_ones():
    other = Ed25519PrivateKey.generate()
    good = envelope("application/vnd.imm.key.v1+json", CANONICAL)
    bad = envelope("application/vnd.imm.key.v1+json", CANONICAL, keyid=KEYID, key=other)
    unknown = envelope("application/vnd.imm.key.v1+json", CANONICAL, keyid="f" * 64, key=other)
    env = {**good, "signatures": [unknown["signatures"][0], bad["signatures"][0],
                                  good["signatures"][0]]}
    assert dsse.verify(env, lookup) == ("key", BODY, KEYID)


def test_no_valid_signature_names_every_signature_tried():
    other = Ed25519PrivateKey.generate()
    good = envelope("application/vnd.imm.key.v1+json", CANONICAL)
    bad = envelope("application/vnd.imm.key.v1+json", CANONICAL, keyid=KEYID, key=other)
    sigs = [
        {"keyid": "0123456789abcdef0123", "sig": good["signatures"][0]["sig"]},  # unknown key
        {"sig": good["signatures"][0]["sig"]},  # no keyid
        "not a signature object",
        bad["signatures"][0],  # the trusted key id, another key's signature
        {"keyid": KEYID, "sig": "not base64!"},
        {"keyid": KEYID, "sig": b64(b"short")},
        {"keyid": KEYID},  # no sig at all
    ]
    with exactly(f"no valid signature: 0123456789abcdef (unknown key), ? (unknown key), "
                 f"? (unknown key), {KEYID[:16]} (bad signature), {KEYID[:16]} (bad signature), "
                 f"{KEYID[:16]} (bad signature), {KEYID[:16]} (bad signature)"):
        dsse.verify({**good, "signatures": sigs}, lookup)


def test_a_signature_over_another_payload_type_does_not_verify():
    env = envelope("application/vnd.imm.image.v1+json", CANONICAL)
    env["payloadType"] = "application/vnd.imm.revocation.v1+json"
    with exactly(f"no valid signature: {KEYID[:16]} (bad signature)"):
        dsse.verify(env, lookup)


def test_a_signed_payload_must_be_canonical_json():
    spaced = json.dumps(BODY).encode()
    with exactly("payload is not canonical JSON"):
        dsse.verify(envelope("application/vnd.imm.image.v1+json", spaced), lookup)
    unsorted = b'{"name":"web","n":3}'
    with exactly("payload is not canonical JSON"):
        dsse.verify(envelope("application/vnd.imm.image.v1+json", unsorted), lookup)
    with pytest.raises(EnvelopeError, match=r"^payload is not JSON: Expecting value: line 1 "):
        dsse.verify(envelope("application/vnd.imm.image.v1+json", b"not json"), lookup)


def test_a_signed_payload_must_be_of_an_imm_type():
    with pytest.raises(ValueError, match=r"^not an imm payload type: 'application/json'$"):
        dsse.verify(envelope("application/json", CANONICAL), lookup)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"payload": "e30=", "signatures": [{}]}, "malformed DSSE envelope: 'payloadType'"),
        ({"payloadType": "t", "signatures": [{}]}, "malformed DSSE envelope: 'payload'"),
        ({"payloadType": "t", "payload": "e30="}, "malformed DSSE envelope: 'signatures'"),
        ({"payloadType": 5, "payload": "e30=", "signatures": [{}]},
         "malformed DSSE envelope: needs payloadType and signatures"),
        ({"payloadType": "t", "payload": "e30=", "signatures": {"keyid": "k"}},
         "malformed DSSE envelope: needs payloadType and signatures"),
        ({"payloadType": "t", "payload": "e30=", "signatures": []},
         "malformed DSSE envelope: needs payloadType and signatures"),
    ],
)
def test_malformed_envelopes(env, message):
    with exactly(message):
        dsse.verify(env, lookup)
    with exactly(message):
        dsse.body_of(env)


@pytest.mark.parametrize("payload", ["e3!0=", "e30", "e30=\n", "-_-_", "e3 0="])
def test_invalid_base64_payload_is_malformed(payload):
    env = {"payloadType": "application/vnd.imm.image.v1+json", "payload": payload,
           "signatures": [{"keyid": KEYID, "sig": ""}]}
    with pytest.raises(EnvelopeError, match=r"^malformed DSSE envelope: \S"):
        dsse.verify(env, lookup)
    with pytest.raises(EnvelopeError, match=r"^malformed DSSE envelope: \S"):
        dsse.body_of(env)


@pytest.mark.parametrize("env", [None, ["payloadType"], {"payloadType": "t", "payload": 5,
                                                         "signatures": [{}]}])
def test_what_is_not_an_envelope_is_malformed(env):
    with pytest.raises(EnvelopeError, match=r"^malformed DSSE envelope: \S"):
        dsse.verify(env, lookup)  # type: ignore[arg-type]


def test_body_of_does_not_verify():
    env = dsse.sign("rollout", BODY, Ed25519PrivateKey.generate(), "someone")
    assert dsse.body_of(env) == BODY
    with exactly("no valid signature: someone (unknown key)"):
        dsse.verify(env, lookup)


def test_a_signature_with_characters_outside_base64_does_not_verify():
    # lenient decoding would drop the stray characters and accept the signature underneath
    env = envelope("application/vnd.imm.image.v1+json", CANONICAL)
    sig = env["signatures"][0]["sig"]
    for bad in (sig[:10] + "!" + sig[10:], sig + "\n", " " + sig):
        tampered = {**env, "signatures": [{"keyid": KEYID, "sig": bad}]}
        with exactly(f"no valid signature: {KEYID[:16]} (bad signature)"):
            dsse.verify(tampered, lookup)
    assert dsse.verify(env, lookup)[0] == "image"
