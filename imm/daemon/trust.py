"""Protected changes in the daemon: turn a protected verb into a pending change, and carry out
an approved one (rollouts through the engine; channel moves and restores happen in the catalog,
in the transaction of the last approval)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..audit import queries as audit_queries
from ..catalog import approvals, attest, checkpoint, freshness, lifecycle, witness
from ..catalog.approvals import Protect
from ..catalog.keys import load_public_pem
from ..catalog.merkle import MerkleLog
from ..errors import BadRequest, ConfigError, Conflict, ImmError
from ..rollout import approve as approve_step
from ..rollout import policy
from ..rollout.services import STRATEGIES

if TYPE_CHECKING:
    from .core import Daemon

log = logging.getLogger("imm.trust")
TRUST_KEYS = {"head_ttl", "witness_name", "witness_logs", "witnesses", "witnesses_required",
              "builders"}


class Trust:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.witness_key: Ed25519PrivateKey | None = None

    def protect(self) -> dict[str, Protect]:
        s = self.d.settings
        return approvals.parse_protect(s.raw.get("protect"), s.source)

    def section(self) -> dict[str, Any]:
        s = self.d.settings
        raw = s.raw.get("trust", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{s.source}: [trust] must be a table")
        unknown = set(raw) - TRUST_KEYS
        if unknown:
            raise ConfigError(f"{s.source}: unknown [trust] key(s) {sorted(unknown)}; known: "
                              + ", ".join(sorted(TRUST_KEYS)))
        return raw

    def head_ttl(self) -> int:
        return freshness.parse_duration(
            self.section().get("head_ttl", freshness.DEFAULT_HEAD_TTL_S),
            f"{self.d.settings.source}: [trust] head_ttl")

    async def keep_fresh(self) -> None:
        """Re-sign channel heads and the checkpoint before they grow old, for as long as immd
        runs (a restart picks up where it left: what is due is re-signed at once)."""
        while True:
            ttl = self.head_ttl()
            try:
                done = await self.d.db.write(freshness.refresh, self.d.catalog, ttl)
                if done["heads"]:
                    log.info("re-signed %d channel head(s)", done["heads"])
                await self.push_witnesses()
                revoked = await self.d.db.write(lifecycle.carry_out_revocations, self.d.catalog)
                for digest in revoked:
                    log.info("revoked %s as scheduled", digest)
            except ImmError as e:
                log.error("re-signing heads or scheduled revocations failed: %s", e.message)
            await asyncio.sleep(max(0.5, min(ttl / 4, 5.0)))

    async def channel_head(self, name: str) -> dict[str, Any]:
        return await self.d.db.write(freshness.head, self.d.catalog, name, self.head_ttl())

    async def check_config(self) -> None:
        """At start: a bad [protect] or [trust] block stops immd; unknown approvers are logged
        (operators are registered through the running daemon, so they may come later)."""
        self.head_ttl()
        blocks = self.protect()
        for svc in self.d.engine.services.values():
            if "approve" in svc.canary_steps and svc.name not in blocks:
                raise ConfigError(f"{self.d.settings.source}: service {svc.name} has an "
                                  f"\"approve\" canary step but no [protect.{svc.name}] block "
                                  "naming who approves")
        await asyncio.to_thread(self.builders)
        self.witness_logs()
        self.witnesses()
        if self.witness_name():
            self.witness_key = await asyncio.to_thread(load_or_create_key,
                                                       self.d.settings.keys_dir / "witness.pem")
        for p in self.protect().values():
            missing = await self.d.db.read(approvals.unknown_approvers, p)
            if missing:
                log.warning("[protect.%s] names approver(s) %s who are not registered operators; "
                            "its changes are refused until they are", p.name, ", ".join(missing))

    # -- protected verbs ------------------------------------------------------------------------

    async def guard_channel(self, actor: str, name: str, ref: str) -> dict[str, Any] | None:
        p = self.protect().get(name)
        if p is None:
            return None
        cat = self.d.catalog

        def req(conn: Any) -> dict[str, Any] | None:
            head = cat._channel_head(conn, name)
            digest = cat.resolve(conn, ref)
            rev = cat.revocation_of(conn, digest)
            if rev:
                raise Conflict(f"image {digest} is revoked (reason: {rev['reason']}, by "
                               f"{rev['actor']} at {rev['at']}); pick another or restore it")
            if head and head["digest"] == digest:
                return None  # unchanged: nothing to approve
            return approvals.request(conn, cat, actor, p, "channel-set", name, {
                "image": digest, "previous": head["digest"] if head else None})

        return await self.d.db.write(req)

    async def guard_rollout(self, actor: str, service: str, ref: str,
                            strategy: str | None) -> dict[str, Any] | None:
        p = self.protect().get(service)
        if p is None:
            return None
        svc = self.d.engine.service(service)
        strategy = strategy or svc.strategy
        if strategy not in STRATEGIES:
            raise BadRequest(f"strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        cat = self.d.catalog
        digest = await self.d.db.read(cat.resolve, ref)
        # refuse now what the rollout would refuse, before anyone is asked to sign it
        await self.d.db.read(policy.check, cat, self.d.keyring, svc, digest)
        return await self.d.db.write(approvals.request, cat, actor, p, "rollout-start",
                                     service, {"image": digest, "strategy": strategy})

    async def guard_undo(self, actor: str, service: str) -> dict[str, Any] | None:
        p = self.protect().get(service)
        if p is None:
            return None
        svc = self.d.engine.service(service)
        last = await self.d.engine.verbs.journal.last_completed(svc.name)
        if last is None or not last["previous_digest"]:
            raise Conflict(f"service {svc.name} has no completed rollout with a previous image "
                           "to go back to")
        await self.d.db.read(policy.check, self.d.catalog, self.d.keyring, svc,
                             last["previous_digest"])
        return await self.d.db.write(approvals.request, self.d.catalog, actor, p,
                                     "rollout-undo", service,
                                     {"image": last["previous_digest"], "undo_of": last["id"]})

    async def guard_restore(self, actor: str, ref: str) -> dict[str, Any] | None:
        blocks = {n: p for n, p in self.protect().items() if p.kind == "channel"}
        if not blocks:
            return None
        cat = self.d.catalog

        def req(conn: Any) -> dict[str, Any] | None:
            digest = cat.resolve(conn, ref)
            heads = approvals.channels_at(conn, digest)
            hit = [blocks[h] for h in heads if h in blocks]
            if not hit:
                return None
            if not approvals.is_revoked(conn, digest):
                raise Conflict(f"image {digest} is not revoked; nothing to restore")
            p = max(hit, key=lambda b: (b.approvals, b.name))
            return approvals.request(conn, cat, actor, p, "image-restore", digest,
                                     {"image": digest, "channels": heads})

        return await self.d.db.write(req)

    # -- witnessing -----------------------------------------------------------------------------

    def witness_name(self) -> str | None:
        name = self.section().get("witness_name")
        if name is None:
            return None
        try:
            checkpoint._check_name(name)
        except ValueError as e:
            raise ConfigError(f"{self.d.settings.source}: [trust] witness_name: {e}") from None
        return str(name)

    def witness_logs(self) -> dict[str, tuple[str, Any]]:
        """The logs this immd witnesses: origin -> (key name, public key)."""
        out = {}
        raw = self.section().get("witness_logs", {})
        for origin, entry in (raw.items() if isinstance(raw, dict) else []):
            where = f"{self.d.settings.source}: [trust.witness_logs.{origin!r}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("vkey"), str):
                raise ConfigError(f"{where} needs vkey = \"NAME+HASH+BASE64\" (the log's "
                                  "'immctl witness info' prints it)")
            try:
                out[origin] = witness.parse_vkey(entry["vkey"], checkpoint.ALG_ED25519, where)
            except ImmError as e:
                raise ConfigError(e.message) from None
        return out

    def witnesses(self) -> tuple[dict[str, dict[str, Any]], int]:
        """The witnesses this log asks to cosign, and how many it requires."""
        sec = self.section()
        where = f"{self.d.settings.source}: [trust]"
        raw = sec.get("witnesses", {})
        out: dict[str, dict[str, Any]] = {}
        for name, entry in (raw.items() if isinstance(raw, dict) else []):
            w = f"{where[:-1]}.witnesses.{name!r}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("vkey"), str) or not (
                    isinstance(entry.get("socket"), str) or isinstance(entry.get("url"), str)):
                raise ConfigError(f"{w} needs vkey (the witness's 'immctl witness info') and "
                                  "socket = PATH or url = \"http://127.0.0.1:PORT\"")
            try:
                vname, pub = witness.parse_vkey(entry["vkey"], witness.ALG_COSIGNATURE_V1, w)
            except ImmError as e:
                raise ConfigError(e.message) from None
            if vname != name:
                raise ConfigError(f"{w}: the vkey names {vname!r}, not {name!r}")
            out[name] = {"pub": pub, "socket": entry.get("socket"), "url": entry.get("url")}
        required = sec.get("witnesses_required", 0)
        if isinstance(required, bool) or not isinstance(required, int) or \
                not 0 <= required <= len(out):
            raise ConfigError(f"{where} witnesses_required = {required!r} must be an integer "
                              f"from 0 to the number of witnesses configured ({len(out)})")
        return out, required

    def info(self) -> dict[str, Any]:
        pub = self.d.keyring.public_key
        origin = self.d.catalog.origin
        name = self.witness_name()
        return {"origin": origin, "log_vkey": checkpoint.vkey(origin, pub),
                "witness_name": name,
                "witness_vkey": witness.cosigner_vkey(name, self.witness_key.public_key())
                if name and self.witness_key else None,
                "witnesses_required": self.witnesses()[1],
                "witnessing": sorted(self.witness_logs())}

    async def add_checkpoint(self, note: str, old_size: int,
                             proof: list[bytes]) -> dict[str, Any]:
        name = self.witness_name()
        if not name or self.witness_key is None:
            raise Conflict("this immd is not a witness; set [trust] witness_name and "
                           "[trust.witness_logs.\"ORIGIN\"] vkey in its config")
        return await self.d.db.write(witness.add_checkpoint, self.witness_logs(), note,
                                     old_size, proof, name, self.witness_key)

    async def witnessed(self, note: str | None) -> dict[str, Any]:
        _, required = self.witnesses()
        if not note:
            return {"witnessed": False, "required": required, "cosigned_by": []}
        return await self.d.db.read(witness.witnessed, note, required)

    async def push_witnesses(self) -> None:
        """Ask each configured witness to cosign the current checkpoint (once per text)."""
        configured, _ = self.witnesses()
        if not configured:
            return
        head = await self.d.db.read(self.d.catalog.head)
        note = head["checkpoint"]
        body = note[: note.rfind("\n\n") + 1]
        have = (await self.witnessed(note))["cosigned_by"]
        for name, w in configured.items():
            if name in have:
                continue
            try:
                await self._push(name, w, note, body, head["size"])
            except ImmError as e:
                log.warning("witness %s did not cosign size %d: %s", name, head["size"],
                            e.message)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("witness %s unreachable: %s", name, e)

    async def _push(self, name: str, w: dict[str, Any], note: str, body: str,
                    size: int) -> None:
        old = await self.d.db.read(witness.last_cosigned_size, name)
        for _attempt in range(2):
            proof = await self.d.db.read(lambda c, o=old: MerkleLog(c).consistency_proof(o, size)
                                         if o else [])
            status, data = await _post(w, "/v1/witness/add-checkpoint", {
                "checkpoint": note, "old_size": old, "proof": [h.hex() for h in proof]})
            err = data.get("error") if isinstance(data, dict) else None
            if status == 409 and err and isinstance(err.get("detail"), dict) \
                    and err["detail"].get("size", -1) != old and err["detail"]["size"] <= size:
                old = int(err["detail"]["size"])  # the witness knows another size: prove from it
                continue
            if status >= 400:
                raise Conflict(f"witness {name} answered {status}: "
                               f"{(err or {}).get('message', data)}")
            line = data["cosignature"]
            if not witness.verify_cosignatures(note + line, name, w["pub"]):
                raise Conflict(f"witness {name} returned a cosignature not by its key")
            await self.d.db.write(witness.record_cosignature, body, name, line, size,
                                  int(data["timestamp"]))
            log.info("witness %s cosigned size %d", name, size)
            return

    # -- attestations ---------------------------------------------------------------------------

    def builders(self) -> dict[str, Any]:
        """[trust.builders.NAME] public_key = PEM or key_file = PATH: keys whose in-toto
        attestations are imported. (Blocking when it reads a file: call off the loop.)"""
        out = {}
        raw = self.section().get("builders", {})
        for name, entry in (raw.items() if isinstance(raw, dict) else []):
            where = f"{self.d.settings.source}: [trust.builders.{name}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a table with public_key or key_file")
            pem = entry.get("public_key")
            if pem is None and isinstance(entry.get("key_file"), str):
                try:
                    pem = Path(entry["key_file"]).read_text()
                except OSError as e:
                    raise ConfigError(f"{where} key_file {entry['key_file']}: {e.strerror}") \
                        from None
            if not isinstance(pem, str):
                raise ConfigError(f"{where} needs public_key = \"PEM\" or key_file = \"PATH\"")
            try:
                out[name] = load_public_pem(pem, where)
            except ImmError as e:
                raise ConfigError(e.message) from None
        return out

    async def attest(self, actor: str, ref: str, predicate_type: str,
                     predicate: Any) -> dict[str, Any]:
        return await self.d.db.write(attest.attest, self.d.catalog, actor, ref, predicate_type,
                                     predicate)

    async def attest_packer(self, actor: str, img: dict[str, Any]) -> dict[str, Any]:
        """The Packer build's metadata (the manifest's provenance) as an attestation."""
        r = await self.attest(actor, img["digest"], attest.PACKER_BUILD,
                              img["manifest"].get("provenance") or {})
        return {k: r[k] for k in ("envelope_digest", "predicate_type", "ledger_index",
                                  "created")}

    async def import_attestation(self, actor: str, env: Any) -> dict[str, Any]:
        builders = await asyncio.to_thread(self.builders)
        return await self.d.db.write(attest.import_envelope, self.d.catalog, actor, env,
                                     builders)

    async def attestations(self, ref: str) -> dict[str, Any]:
        builders = await asyncio.to_thread(self.builders)
        ring = self.d.keyring
        own = {k: pub for k in ring.keyids() if (pub := ring.lookup(k)) is not None}
        cat = self.d.catalog

        def read(conn: Any) -> dict[str, Any]:
            digest = cat.resolve(conn, ref)
            rows = attest.listing(conn, digest)
            for r in rows:
                keys = {f"builder:{n}": k for n, k in builders.items()} if r["imported"] \
                    else own
                try:
                    attest.open_envelope(r["envelope"], keys)
                    r["verified"] = True
                except ImmError as e:
                    r["verified"], r["problem"] = False, e.message
            return {"digest": digest, "attestations": rows}

        return await self.d.db.read(read)

    # -- image lifecycle ------------------------------------------------------------------------

    async def lifecycle(self, actor: str, ref: str, action: str, at: str | None, reason: str,
                        force: bool) -> dict[str, Any]:
        when = lifecycle.parse_at(at) if action != "deprecate" else None
        cat = self.d.catalog

        def write(conn: Any) -> dict[str, Any]:
            digest = cat.resolve(conn, ref)
            running = audit_queries.running(conn, digest)
            return lifecycle.record(conn, cat, actor, digest, action, at=when, reason=reason,
                                    running=running, force=force)

        return await self.d.db.write(write)

    # -- approvals ------------------------------------------------------------------------------

    async def approve(self, actor: str, cid: str, signature: str) -> dict[str, Any]:
        view = await self.d.db.write(approvals.approve, self.d.catalog, actor, cid, signature)
        if view["state"] == "approved" and view["action"] in ("rollout-start", "rollout-undo"):
            if os.environ.get("IMM_TEST_KILL_AT") == "change-approved:after":
                log.warning("IMM_TEST_KILL_AT=change-approved:after: killing immd")
                os.kill(os.getpid(), signal.SIGKILL)
            view = await self.carry_out_rollout(cid)
        return view

    async def resume(self) -> None:
        """After a restart: carry out approved rollout changes a crash left undone (or record
        the rollout that did start before the crash)."""
        for row in await self.d.db.read(approvals.approved_rollouts):
            cid = row["id"]
            started = await self.d.db.read(approve_step.rollout_of_change, cid)
            if started:
                await self.d.db.write(approvals.mark, self.d.catalog, cid, "applied",
                                      {"rollout": started["id"]})
            else:
                log.info("carrying out approved change %s after a restart", cid)
                await self.carry_out_rollout(cid)

    async def carry_out_rollout(self, cid: str) -> dict[str, Any]:
        view = await self.d.db.read(approvals.show, cid)
        terms = view["terms"]
        who = (f"{view['requested_by']} via change {cid} approved by "
               f"{', '.join(view['approved_by'])}")
        try:
            r = await self.d.engine.verbs.start(who, view["target"], terms["image"],
                                          terms.get("strategy"), undo_of=terms.get("undo_of"))
        except ImmError as e:
            log.warning("approved change %s could not be carried out: %s", cid, e.message)
            return await self.d.db.write(approvals.mark, self.d.catalog, cid, "failed",
                                         {"error": e.message})
        return await self.d.db.write(approvals.mark, self.d.catalog, cid, "applied",
                                     {"rollout": r["id"]})


async def _post(w: dict[str, Any], path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    """POST JSON to another immd, over its unix socket or loopback URL, with a timeout."""
    timeout = aiohttp.ClientTimeout(total=10)
    if w.get("socket"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=w["socket"])
        base = "http://witness"
    else:
        connector = aiohttp.TCPConnector()
        base = str(w["url"]).rstrip("/")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s, \
            s.post(base + path, json=payload) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, {"error": {"message": text[:200]}}


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The witness's own Ed25519 key (never the log's: C2SP asks distinct keys per cosigner),
    created 0600 on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"witness key {path} is not Ed25519")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    return key


TRUST: web.AppKey[Trust] = web.AppKey("trust", Trust)
