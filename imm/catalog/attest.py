"""Attestations: in-toto Statements v1 about an image, in DSSE envelopes.

Provenance was a free-form field only Packer import filled. The convention is an in-toto
Statement (https://in-toto.io/Statement/v1) whose subject is the artifact's digest and whose
predicate says something typed about it (SLSA provenance, a test result, a scan), signed in a
DSSE envelope with payloadType ``application/vnd.in-toto+json``.

* ``image attest`` makes one: subject ``name@version`` with the image digest, signed by the
  daemon's key (the same key id as every imm record).
* ``image import-attestation`` takes one signed elsewhere, by a builder key listed under
  ``[trust.builders.NAME]``; its subject must name an image of the catalog by image digest or
  by content digest (the bytes the builder made).

Each stored attestation is also an ``attestation`` ledger record holding the envelope, so the
ledger proves when imm learned it. A service may require predicate types
(``require_attestations``); the rollout rule ``required-attestations`` refuses an image without
one that verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import BadRequest, NotFound, VerificationFailed
from ..store import Connection
from .canonical import canonical_json
from .dsse import pae
from .keys import SigningKey, keyid_of
from .service import Catalog, now, query, query_one

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PACKER_BUILD = "https://imm.dev/attestation/packer-build/v1"  # predicate: the Packer build
URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\s]{1,2000}$")
MAX_PREDICATE = 256 * 1024


def check_predicate_type(value: Any) -> str:
    if not isinstance(value, str) or not URI.match(value):
        raise BadRequest(f"predicate type {str(value)[:100]!r} is not a URI (e.g. "
                         "https://slsa.dev/provenance/v1)")
    return value


def statement(name: str, digest: str, predicate_type: str, predicate: Any) -> dict[str, Any]:
    check_predicate_type(predicate_type)
    if not isinstance(predicate, dict):
        raise BadRequest(f"the predicate must be a JSON object, got {type(predicate).__name__}")
    if len(canonical_json(predicate)) > MAX_PREDICATE:
        raise BadRequest(f"the predicate is larger than {MAX_PREDICATE} bytes")
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}],
            "predicateType": predicate_type, "predicate": predicate}


def sign(stmt: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    payload = canonical_json(dict(stmt))
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid_of(key.public_key()),
                            "sig": base64.b64encode(sig).decode()}]}


def open_envelope(env: Any, keys: Mapping[str, Ed25519PublicKey]) -> tuple[dict[str, Any], str]:
    """Verify an in-toto DSSE envelope with any of ``keys`` (name → key); return the Statement
    and the name of the key that signed. Raises VerificationFailed / BadRequest naming why."""
    if not isinstance(env, dict) or env.get("payloadType") != PAYLOAD_TYPE:
        raise BadRequest("not an in-toto DSSE envelope: expected payloadType "
                         f"{PAYLOAD_TYPE!r}, got {str((env or {}).get('payloadType'))[:60]!r}"
                         if isinstance(env, dict) else "the attestation is not a JSON object")
    try:
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = env["signatures"]
    except (KeyError, TypeError, binascii.Error):
        sigs = None
    if not isinstance(sigs, list) or not sigs:
        raise BadRequest("malformed DSSE envelope: needs payload (base64) and signatures")
    message = pae(PAYLOAD_TYPE, payload)
    signer = None
    for s in sigs[:16]:
        try:
            raw = base64.b64decode(s["sig"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            continue
        for name, pub in keys.items():
            try:
                pub.verify(raw, message)
            except InvalidSignature:
                continue
            signer = name
            break
        if signer:
            break
    if signer is None:
        raise VerificationFailed("the attestation is not signed by a trusted key (the daemon's "
                                 f"or one of [trust.builders]: {', '.join(sorted(keys))})")
    try:
        stmt = json.loads(payload)
    except ValueError as e:
        raise BadRequest(f"the attestation's payload is not JSON ({e})") from None
    check_statement(stmt)
    return stmt, signer


def check_statement(stmt: Any) -> None:
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
        raise BadRequest(f"not an in-toto Statement v1 (_type must be {STATEMENT_TYPE})")
    subj = stmt.get("subject")
    if not isinstance(subj, list) or not subj or not all(
            isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"]
            for s in subj):
        raise BadRequest("the Statement needs at least one subject with a digest")
    check_predicate_type(stmt.get("predicateType"))
    if not isinstance(stmt.get("predicate"), dict):
        raise BadRequest("the Statement's predicate must be a JSON object")


def _store(conn: Connection, catalog: Catalog, actor: str, digest: str,
           env: dict[str, Any], stmt: dict[str, Any], signer: str, imported: bool) -> dict[str, Any]:
    env_text = canonical_json(env).decode()
    env_hash = "sha256:" + hashlib.sha256(env_text.encode()).hexdigest()
    dupe = query_one(conn, "SELECT ledger_index FROM attestations WHERE envelope_digest=?",
                     (env_hash,))
    if dupe:
        return {**show(conn, env_hash), "created": False}
    body = {"type": "attestation", "digest": digest, "predicate_type": stmt["predicateType"],
            "signer": signer, "imported": imported, "envelope": env,
            "envelope_digest": env_hash, "actor": actor, "time": now()}
    _, idx, rec = catalog.append(conn, "attestation", body)
    conn.execute("INSERT INTO attestations VALUES (?,?,?,?,?,?,?,?,?)",
                 (env_hash, digest, stmt["predicateType"], signer, int(imported), actor,
                  body["time"], idx, env_text))
    catalog.checkpoint(conn)
    return {**show(conn, env_hash), "created": True}


def attest(conn: Connection, catalog: Catalog, actor: str, ref: str,
           predicate_type: str, predicate: Any) -> dict[str, Any]:
    digest = catalog.resolve(conn, ref)
    img = query_one(conn, "SELECT name, version FROM images WHERE digest=?", (digest,))
    assert img is not None
    stmt = statement(f"{img['name']}@{img['version']}", digest, predicate_type, predicate)
    env = sign(stmt, catalog.keyring.private)
    return _store(conn, catalog, actor, digest, env, stmt, "imm", False)


def import_envelope(conn: Connection, catalog: Catalog, actor: str, env: Any,
                    builders: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    stmt, signer = open_envelope(env, builders)
    digest = None
    for s in stmt["subject"]:
        hexd = s["digest"].get("sha256")
        if not isinstance(hexd, str):
            continue
        row = query_one(conn, "SELECT digest FROM images WHERE digest=? OR content_digest=? "
                              "ORDER BY digest=? DESC LIMIT 1",
                        ("sha256:" + hexd, "sha256:" + hexd, "sha256:" + hexd))
        if row:
            digest = row["digest"]
            break
    if digest is None:
        names = [f"{s.get('name')} sha256:{str(s['digest'].get('sha256'))[:16]}…"
                 for s in stmt["subject"]]
        raise NotFound("no image in the catalog has the attestation's subject digest ("
                       + "; ".join(names) + "); register the image first")
    return _store(conn, catalog, actor, digest, env, stmt, f"builder:{signer}", True)


def show(conn: Connection, env_hash: str) -> dict[str, Any]:
    row = query_one(conn, "SELECT * FROM attestations WHERE envelope_digest=?", (env_hash,))
    if row is None:
        raise NotFound(f"no attestation {env_hash}")
    return _view(row)


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"envelope_digest": row["envelope_digest"], "digest": row["digest"],
            "predicate_type": row["predicate_type"], "signer": row["signer"],
            "imported": bool(row["imported"]), "actor": row["actor"], "at": row["at"],
            "ledger_index": row["ledger_index"], "envelope": json.loads(row["envelope"])}


def listing(conn: Connection, digest: str) -> list[dict[str, Any]]:
    return [_view(r) for r in query(conn, "SELECT * FROM attestations WHERE digest=? "
                                          "ORDER BY ledger_index", (digest,))]


def missing(conn: Connection, digest: str, required: list[str],
            keys: Mapping[str, Ed25519PublicKey]) -> list[str]:
    """The required predicate types without a good attestation: imm's own are re-verified
    with ``keys`` (the daemon's keys); imported ones were verified against a builder key when
    imported, and their imm-signed ledger record holds the envelope."""
    have = set()
    for a in listing(conn, digest):
        if a["imported"]:
            have.add(a["predicate_type"])
            continue
        try:
            stmt, _ = open_envelope(a["envelope"], keys)
        except (BadRequest, VerificationFailed):
            continue
        have.add(stmt["predicateType"])
    return [t for t in required if t not in have]


def check_rows(conn: Connection, lookup: Any, digest: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    """``image verify``: each attestation row against its imm-signed ledger record (the
    record's envelope and digest are the row's) — the in-toto envelope itself is checked by
    ``image attestations`` with the keys that signed it. Returns (rows checked, problems)."""
    from . import dsse

    where, params = ("WHERE digest=?", (digest,)) if digest else ("", ())
    rows = query(conn, f"SELECT * FROM attestations {where} ORDER BY ledger_index", params)  # noqa: S608
    problems = []
    for r in rows:
        at = {"table": "attestations", "key": r["envelope_digest"],
              "ledger_index": r["ledger_index"]}
        leaf = conn.execute("SELECT data FROM ledger_leaves WHERE idx=?",
                            (r["ledger_index"],)).fetchone()
        try:
            kind, body, _ = dsse.verify(json.loads(bytes(leaf[0])), lookup)
        except (TypeError, ValueError) as e:
            problems.append({**at, "problem": f"ledger record does not verify: {e}"})
            continue
        expected = {"kind": "attestation", "envelope_digest": r["envelope_digest"],
                    "digest": r["digest"], "predicate_type": r["predicate_type"],
                    "signer": r["signer"], "envelope": json.loads(r["envelope"])}
        got = {"kind": kind, **{k: body.get(k) for k in expected if k != "kind"}}
        for k in expected:
            if got[k] != expected[k]:
                problems.append({**at, "problem": f"{k} differs from the signed ledger record"})
                break
        else:
            text = canonical_json(expected["envelope"])
            if "sha256:" + hashlib.sha256(text).hexdigest() != r["envelope_digest"]:
                problems.append({**at, "problem": "the envelope does not hash to its digest"})
    return len(rows), problems
