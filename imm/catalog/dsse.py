"""DSSE envelopes (the in-toto / Sigstore signing envelope) with Ed25519 signatures.

The signature covers ``PAE(type, payload)``; any DSSE verifier (securesystemslib, sigstore)
accepts what we produce.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import canonical_json
from .keys import SigningKey

PAYLOAD_PREFIX = "application/vnd.imm."
KINDS = (
    "image", "artifact", "channel", "revocation", "rollout", "approval", "audit-bundle", "key",
    "audit-finding", "audit-batch", "fleet", "heal", "operator", "change", "channel-head",
    "lifecycle", "attestation",
)


def payload_type(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    return f"{PAYLOAD_PREFIX}{kind}.v1+json"


def kind_of(ptype: str) -> str:
    if not (ptype.startswith(PAYLOAD_PREFIX) and ptype.endswith(".v1+json")):
        raise ValueError(f"not an imm payload type: {ptype!r}")
    return ptype[len(PAYLOAD_PREFIX) : -len(".v1+json")]


def pae(ptype: str, payload: bytes) -> bytes:
    t = ptype.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(kind: str, body: Mapping[str, Any], key: SigningKey, keyid: str) -> dict[str, Any]:
    ptype = payload_type(kind)
    payload = canonical_json(dict(body))
    sig = key.sign(pae(ptype, payload))
    return {
        "payloadType": ptype,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")}],
    }


class EnvelopeError(ValueError):
    """The envelope is malformed or its signature does not verify; the message says which."""


def decode(envelope: Mapping[str, Any]) -> tuple[str, bytes, list[dict[str, str]]]:
    try:
        ptype = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = envelope["signatures"]
    except (KeyError, TypeError, binascii.Error) as e:
        raise EnvelopeError(f"malformed DSSE envelope: {e}") from None
    if not isinstance(ptype, str) or not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("malformed DSSE envelope: needs payloadType and signatures")
    return ptype, payload, sigs


def verify(
    envelope: Mapping[str, Any], lookup_key: Callable[[str], Ed25519PublicKey | None]
) -> tuple[str, dict[str, Any], str]:
    """Verify ``envelope``; return ``(kind, body, keyid)`` of the first good signature.

    ``lookup_key(keyid)`` returns the trusted public key or None. Raises EnvelopeError.
    """
    ptype, payload, sigs = decode(envelope)
    message = pae(ptype, payload)
    tried = []
    for s in sigs:
        keyid = s.get("keyid", "") if isinstance(s, dict) else ""
        pub = lookup_key(keyid)
        if pub is None:
            tried.append(f"{keyid[:16] or '?'} (unknown key)")
            continue
        try:
            pub.verify(base64.b64decode(s.get("sig", ""), validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            tried.append(f"{keyid[:16]} (bad signature)")
            continue
        try:
            body = json.loads(payload)
        except ValueError as e:
            raise EnvelopeError(f"payload is not JSON: {e}") from None
        if canonical_json(body) != payload:
            raise EnvelopeError("payload is not canonical JSON")
        return kind_of(ptype), body, keyid
    raise EnvelopeError("no valid signature: " + ", ".join(tried))


def body_of(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The payload without verifying it (for display)."""
    _, payload, _ = decode(envelope)
    result: dict[str, Any] = json.loads(payload)
    return result
