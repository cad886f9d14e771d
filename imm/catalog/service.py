"""The catalog: images, artifacts, channels, revocations and keys as signed ledger records.

Every mutation here runs inside one database transaction (``Database.write``): it builds a record,
signs it as a DSSE envelope, appends the envelope to the Merkle ledger, writes the rows that
index it, and signs a fresh checkpoint (or, with ``defer_checkpoints``, leaves the checkpoint to
the store's batch hook, which signs one per committed batch of writes). If anything raises, the
transaction (or the call's savepoint) rolls back and the catalog, ledger and checkpoint are as
they were.

Functions take the connection first so they can be handed straight to ``Database.write/read``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ..errors import Ambiguous, BadRequest, ConfigError, Conflict, NotFound
from ..store import Connection, now, query, query_one
from . import checkpoint, dsse
from .canonical import canonical_json, sha256_digest
from .checkpoint import checkpoint_size
from .keys import KeyRing, SigningKey, keyid_of, public_pem
from .manifest import build_manifest
from .merkle import MerkleLog

HEX64 = re.compile(r"^[0-9a-f]{64}$")
PREFIX = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")
CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}$")
PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_ID = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,511}$")  # Azure ids start with "/"


class Catalog:
    def __init__(self, keyring: KeyRing, origin: str) -> None:
        self.keyring = keyring
        self.origin = origin
        # True when the store signs one checkpoint per committed batch (Database.add_batch_hook
        # with checkpoint_if_behind): records then leave the checkpoint to it.
        self.defer_checkpoints = False
        # the last signing key and its key id (serializing the public key for every record
        # cost more than the ledger append); replaced whole, so readers see a matching pair
        self._keyid: tuple[SigningKey, str] | None = None

    # -- records and the ledger ---------------------------------------------------------------

    def _sign_with(self, key: SigningKey, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        known = self._keyid
        if known is None or known[0] is not key:
            known = self._keyid = (key, keyid_of(key.public_key()))
        return dsse.sign(kind, body, key, known[1])

    def append(self, conn: Connection, kind: str, body: dict[str, Any],
               key: SigningKey | None = None) -> tuple[dict[str, Any], int, str]:
        """Sign ``body`` and append it to the ledger; returns (envelope, index, envelope text)."""
        env = self._sign_with(key or self.keyring.private, kind, body)
        text = canonical_json(env).decode("utf-8")
        idx = MerkleLog(conn).append(text.encode("utf-8"), int(datetime.now(UTC).timestamp()))
        return env, idx, text

    def checkpoint(self, conn: Connection, when: int | None = None) -> str | None:
        """Sign a checkpoint of the ledger as it is, after a record was appended; or, when
        ``defer_checkpoints`` is set, leave it to the store's batch hook
        (:meth:`checkpoint_if_behind`), which signs one per committed batch or interval. With
        ``when`` (re-signing a head to keep it fresh) it always signs, at that time."""
        if self.defer_checkpoints and when is None:
            return None
        return self.sign_checkpoint(conn, when)

    def sign_checkpoint(self, conn: Connection, when: int | None = None) -> str:
        """Sign the current head; its text carries the time (see freshness.py)."""
        log = MerkleLog(conn)
        note = checkpoint.sign(self.origin, log.size(), log.root(), self.origin,
                               self.keyring.private,
                               int(datetime.now(UTC).timestamp()) if when is None else when)
        conn.execute("INSERT INTO meta(key, value) VALUES ('checkpoint', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (note,))
        return note

    def checkpoint_if_behind(self, conn: Connection) -> str | None:
        """The batch hook: sign a checkpoint when the stored one is not of the ledger's size.
        It runs inside the batch's transaction, so the checkpoint commits with the leaves it
        covers: ``ledger head`` is always a signed checkpoint of a committed tree."""
        size = MerkleLog(conn).size()
        row = query_one(conn, "SELECT value FROM meta WHERE key='checkpoint'")
        if row is not None and checkpoint_size(row["value"]) == size:
            return None
        return self.sign_checkpoint(conn)

    # -- keys ---------------------------------------------------------------------------------

    def init_keys(self, conn: Connection, actor: str) -> None:
        """At start: record the genesis key, finish an interrupted rotation, or refuse a stranger."""
        staged = self.keyring.staged_rotation()
        known = {r["keyid"]: r for r in query(conn, "SELECT keyid, action FROM keys")}
        latest = query_one(conn, "SELECT keyid FROM keys ORDER BY ledger_index DESC LIMIT 1")
        if staged is not None:
            if latest and latest["keyid"] == keyid_of(staged.public_key()):
                self.keyring.commit_rotation(staged)  # crashed after commit: finish it
            else:
                self.keyring.abort_rotation()  # crashed before commit: drop it
        if not known:
            body = {"type": "key", "action": "genesis", "keyid": self.keyring.keyid,
                    "public_key": public_pem(self.keyring.public_key), "previous": None,
                    "actor": actor, "time": now()}
            env, idx, text = self.append(conn, "key", body)
            conn.execute(
                "INSERT INTO keys VALUES (?,?,?,?,?,?,?,?)",
                (body["keyid"], body["public_key"], "genesis", None, body["time"], actor, idx, text),
            )
            self.checkpoint(conn)
        elif self.keyring.keyid not in known:
            raise ConfigError(
                f"the signing key in {self.keyring.description} (key id {self.keyring.keyid[:16]}) "
                f"is not in this catalog's key history; restore the right key file or start "
                f"with an empty state dir"
            )

    def keys(self, conn: Connection) -> list[dict[str, Any]]:
        rows = query(conn, "SELECT keyid, action, previous, created_at, actor, ledger_index "
                           "FROM keys ORDER BY ledger_index")
        for r in rows:
            r["current"] = r["keyid"] == self.keyring.keyid
        return rows

    def rotate_key(self, conn: Connection, actor: str,
                   new: SigningKey) -> dict[str, Any]:
        """Announce ``new`` with a record signed by the current key (the caller commits the file)."""
        old = self.keyring.keyid
        new_id = keyid_of(new.public_key())
        body = {"type": "key", "action": "rotate", "keyid": new_id,
                "public_key": public_pem(new.public_key()), "previous": old, "actor": actor,
                "time": now()}
        env, idx, text = self.append(conn, "key", body)
        conn.execute("INSERT INTO keys VALUES (?,?,?,?,?,?,?,?)",
                     (new_id, body["public_key"], "rotate", old, body["time"], actor, idx, text))
        # The checkpoint is signed with the new key once it is in force; sign this one with it.
        log = MerkleLog(conn)
        note = checkpoint.sign(self.origin, log.size(), log.root(), self.origin, new,
                               int(datetime.now(UTC).timestamp()))
        conn.execute("INSERT INTO meta(key, value) VALUES ('checkpoint', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (note,))
        return {"previous": old, "keyid": new_id, "ledger_index": idx, "envelope": env}

    # -- refs ---------------------------------------------------------------------------------

    def resolve(self, conn: Connection, ref: str) -> str:
        """Turn a ref into a full digest, or raise NotFound/Ambiguous listing candidates."""
        if not isinstance(ref, str) or not ref.strip():
            raise BadRequest("an image ref is required: a digest, a digest prefix (≥12 hex), "
                             "name@version or channel:SERVICE/STAGE")
        ref = ref.strip()
        if ref.startswith("channel:"):
            name = ref[len("channel:"):]
            row = self._channel_head(conn, name)
            if row is None:
                known = [r["name"] for r in query(conn, "SELECT DISTINCT name FROM channel_history "
                                                        "ORDER BY name LIMIT 20")]
                raise NotFound(f"channel {name!r} does not exist",
                               detail={"candidates": known})
            return str(row["digest"])
        if "@" in ref:
            name, _, version = ref.rpartition("@")
            row = query_one(conn, "SELECT digest FROM images WHERE name=? AND version=?",
                            (name, version))
            if row:
                return str(row["digest"])
            versions = [r["version"] for r in query(
                conn, "SELECT version FROM images WHERE name=? ORDER BY created_at DESC LIMIT 20",
                (name,))]
            if versions:
                raise NotFound(f"image {name!r} has no version {version!r}; known versions: "
                               + ", ".join(versions), detail={"candidates": versions})
            raise NotFound(f"no image named {name!r}; 'immctl image list' shows the catalog")
        if PREFIX.match(ref):
            hexpart = ref.removeprefix("sha256:")
            rows = query(conn, "SELECT digest, name, version FROM images WHERE digest >= ? "
                               "AND digest < ? ORDER BY digest LIMIT 11",
                         ("sha256:" + hexpart, "sha256:" + hexpart + "g"))
            if len(rows) == 1:
                return str(rows[0]["digest"])
            if not rows:
                raise NotFound(f"no image has a digest starting with {ref!r}")
            cands = [f"{r['digest']} ({r['name']}@{r['version']})" for r in rows[:10]]
            raise Ambiguous(f"digest prefix {ref!r} matches {len(rows)} images; give more "
                            "hex digits: " + "; ".join(cands), detail={"candidates": cands})
        if ref.startswith("sha256:"):
            raise BadRequest(f"bad digest {ref!r}: expected sha256: followed by 12 to 64 "
                             "lowercase hex digits")
        raise BadRequest(f"cannot read image ref {ref!r}: use a digest, a digest prefix "
                         "(≥12 hex), name@version or channel:SERVICE/STAGE")

    # -- images -------------------------------------------------------------------------------

    def add_image(self, conn: Connection, actor: str, *, name: str, version: str,
                  content_digest: str, content_kind: str, layers: list[dict[str, Any]],
                  boot_actions: list[str], parent: str | None, labels: dict[str, str],
                  provenance: dict[str, Any] | None = None,
                  artifacts: Iterable[tuple[str, str, str]] = ()) -> dict[str, Any]:
        parent_digest = self.resolve(conn, parent) if parent else None
        manifest = build_manifest(
            name=name, version=version, content_digest=content_digest, content_kind=content_kind,
            layers=layers, boot_actions=boot_actions, parent=parent_digest, labels=labels,
            provenance=provenance or {})
        manifest_text = canonical_json(manifest)
        digest = sha256_digest(manifest_text)  # image_digest(manifest), its text kept
        # one look-up for both: this very image, or another under its name@version
        same = query(conn, "SELECT digest FROM images WHERE digest=? OR (name=? AND version=?)",
                     (digest, name, version))
        created = not any(r["digest"] == digest for r in same)
        if created:
            if same:
                clash = same[0]
                raise Conflict(
                    f"{name}@{version} is already {clash['digest']} with other content or "
                    "manifest; images are immutable: register a new version",
                    detail={"existing": clash["digest"]})
            body = {"type": "image", "digest": digest, "manifest": manifest, "actor": actor,
                    "time": now()}
            env, idx, text = self.append(conn, "image", body)
            manifest_str = manifest_text.decode()
            conn.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (digest, name, version, content_digest, content_kind, parent_digest,
                 manifest["ladder_step"], manifest_str, actor, body["time"],
                 self.keyring.keyid, idx, text))
        artifacts = list(artifacts)
        for provider, region, image_id in artifacts:
            self._add_artifact(conn, actor, digest, provider, region, image_id)
        if created or artifacts:
            self.checkpoint(conn)
        if created and not artifacts:
            # what show() would read back: a new image has no revocation, artifact or channel
            # yet (each of those names an existing image)
            result = self._image_view_of(
                {"digest": digest, "name": name, "version": version,
                 "content_digest": content_digest, "content_kind": content_kind,
                 "parent": parent_digest, "ladder_step": manifest["ladder_step"],
                 "manifest": manifest_str, "created_at": body["time"], "actor": actor,
                 "keyid": self.keyring.keyid, "ledger_index": idx, "envelope": text},
                rev=None, arts=[], chans=[])
        else:
            result = self.show(conn, digest)
        result["created"] = created
        return result

    def show(self, conn: Connection, ref: str) -> dict[str, Any]:
        digest = self.resolve(conn, ref)
        row = query_one(conn, "SELECT * FROM images WHERE digest=?", (digest,))
        if row is None:
            raise NotFound(f"image {digest} does not exist")
        return self._image_view(conn, row)

    def _image_view(self, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        digest = row["digest"]
        rev = query_one(conn, "SELECT root, reason, actor, at, ledger_index FROM revocations "
                              "WHERE digest=?", (digest,))
        arts = query(conn, "SELECT provider, region, image_id, created_at, ledger_index "
                           "FROM artifacts WHERE digest=? ORDER BY provider, region", (digest,))
        chans = [r["name"] for r in query(
            conn, "SELECT h.name FROM channel_history h JOIN (SELECT name, max(seq) s FROM "
                  "channel_history GROUP BY name) m ON h.name=m.name AND h.seq=m.s "
                  "WHERE h.digest=?", (digest,))]
        return self._image_view_of(row, rev=rev, arts=arts, chans=chans)

    @staticmethod
    def _image_view_of(row: dict[str, Any], *, rev: dict[str, Any] | None,
                       arts: list[dict[str, Any]], chans: list[str]) -> dict[str, Any]:
        digest = row["digest"]
        return {
            "digest": digest, "name": row["name"], "version": row["version"],
            "content_digest": row["content_digest"], "content_kind": row["content_kind"],
            "parent": row["parent"], "ladder_step": row["ladder_step"],
            "manifest": json.loads(row["manifest"]), "created_at": row["created_at"],
            "actor": row["actor"], "keyid": row["keyid"], "ledger_index": row["ledger_index"],
            "status": "revoked" if rev else "active", "revocation": rev, "artifacts": arts,
            "channels": chans, "envelope": json.loads(row["envelope"]),
        }

    def list_images(self, conn: Connection, *, name: str | None = None,
                    limit: int = 100, after: str | None = None,
                    status: str | None = None) -> dict[str, Any]:
        where, params = [], []
        if name:
            where.append("i.name = ?")
            params.append(name)
        if after:
            where.append("(i.created_at, i.digest) > (SELECT created_at, digest FROM images "
                         "WHERE digest = ?)")
            params.append(after)
        if status == "revoked":
            where.append("r.digest IS NOT NULL")
        elif status == "active":
            where.append("r.digest IS NULL")
        sql = ("SELECT i.digest, i.name, i.version, i.ladder_step, i.created_at, i.content_kind, "  # noqa: S608
               "i.parent, r.digest IS NOT NULL AS revoked, "
               "(SELECT count(*) FROM artifacts a WHERE a.digest = i.digest) AS artifacts "
               "FROM images i LEFT JOIN revocations r ON r.digest = i.digest "
               + ("WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY i.created_at, i.digest LIMIT ?")
        rows = query(conn, sql, [*params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        for r in rows:
            r["status"] = "revoked" if r.pop("revoked") else "active"
        return {"images": rows, "next": rows[-1]["digest"] if more and rows else None}

    # -- artifacts ----------------------------------------------------------------------------

    def _add_artifact(self, conn: Connection, actor: str, digest: str, provider: str,
                      region: str, image_id: str) -> dict[str, Any]:
        for what, value, rx in (("provider", provider, PROVIDER), ("region", region, REGION),
                                ("image id", image_id, IMAGE_ID)):
            if not isinstance(value, str) or not rx.match(value):
                raise BadRequest(f"bad {what} {value!r}: must match {rx.pattern}")
        row = query_one(conn, "SELECT digest FROM artifacts WHERE provider=? AND region=? AND "
                              "image_id=?", (provider, region, image_id))
        if row:
            if row["digest"] != digest:
                raise Conflict(f"artifact {provider}/{region}/{image_id} already belongs to "
                               f"image {row['digest']}; one cloud image holds one image")
            return {"provider": provider, "region": region, "image_id": image_id,
                    "digest": digest, "created": False}
        body = {"type": "artifact", "digest": digest, "provider": provider, "region": region,
                "image_id": image_id, "actor": actor, "time": now()}
        env, idx, text = self.append(conn, "artifact", body)
        conn.execute("INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?)",
                     (provider, region, image_id, digest, actor, body["time"], idx, text))
        return {**body, "ledger_index": idx, "envelope": env, "created": True}

    def add_artifact(self, conn: Connection, actor: str, ref: str, provider: str,
                     region: str, image_id: str) -> dict[str, Any]:
        digest = self.resolve(conn, ref)
        result = self._add_artifact(conn, actor, digest, provider, region, image_id)
        if result["created"]:
            self.checkpoint(conn)
        return result

    def artifact_image(self, conn: Connection, provider: str, region: str,
                       image_id: str) -> str | None:
        row = query_one(conn, "SELECT digest FROM artifacts WHERE provider=? AND region=? AND "
                              "image_id=?", (provider, region, image_id))
        return None if row is None else str(row["digest"])

    # -- revocation ---------------------------------------------------------------------------

    def descendants(self, conn: Connection, digest: str) -> list[str]:
        rows = query(conn, """
            WITH RECURSIVE d(digest) AS (
              SELECT digest FROM images WHERE parent = ?
              UNION SELECT i.digest FROM images i JOIN d ON i.parent = d.digest)
            SELECT digest FROM d ORDER BY digest""", (digest,))
        return [r["digest"] for r in rows]

    def revoke(self, conn: Connection, actor: str, ref: str, reason: str,
               cascade: bool) -> dict[str, Any]:
        if not isinstance(reason, str) or not reason.strip():
            raise BadRequest("a revocation needs --reason TEXT (e.g. a CVE id)")
        if len(reason) > 1024:
            raise BadRequest(f"reason is {len(reason)} characters; keep it under 1024")
        digest = self.resolve(conn, ref)
        targets = [digest] + (self.descendants(conn, digest) if cascade else [])
        marks = ",".join("?" * len(targets))
        already = {r["digest"] for r in query(
            conn, f"SELECT digest FROM revocations WHERE digest IN ({marks})", targets)}  # noqa: S608
        new = [d for d in targets if d not in already]
        if not new:
            raise Conflict(f"image {digest} is already revoked"
                           + (" with all its descendants" if cascade else "")
                           + "; 'immctl image restore' undoes a revocation")
        body = {"type": "revocation", "action": "revoke", "root": digest, "digests": new,
                "cascade": cascade, "reason": reason.strip(), "actor": actor, "time": now()}
        env, idx, text = self.append(conn, "revocation", body)
        conn.executemany("INSERT INTO revocations VALUES (?,?,?,?,?,?,?)",
                         [(d, digest, body["reason"], actor, body["time"], idx, text) for d in new])
        self.checkpoint(conn)
        return {"root": digest, "revoked": new, "already_revoked": sorted(already),
                "ledger_index": idx, "envelope": env}

    def restore(self, conn: Connection, actor: str, ref: str) -> dict[str, Any]:
        """Lift the revocation of ``ref``, and of everything its own cascade revoked."""
        digest = self.resolve(conn, ref)
        rows = query(conn, "SELECT digest FROM revocations WHERE digest=? OR root=? "
                           "ORDER BY digest", (digest, digest))
        if not rows:
            raise Conflict(f"image {digest} is not revoked; nothing to restore")
        digests = [r["digest"] for r in rows]
        body = {"type": "revocation", "action": "restore", "root": digest, "digests": digests,
                "actor": actor, "time": now()}
        env, idx, text = self.append(conn, "revocation", body)
        conn.executemany("DELETE FROM revocations WHERE digest=?", [(d,) for d in digests])
        self.checkpoint(conn)
        return {"root": digest, "restored": digests, "ledger_index": idx, "envelope": env}

    def revocation_of(self, conn: Connection, digest: str) -> dict[str, Any] | None:
        return query_one(conn, "SELECT root, reason, actor, at, ledger_index FROM revocations "
                               "WHERE digest=?", (digest,))

    # -- channels -----------------------------------------------------------------------------

    def _check_channel(self, name: str) -> None:
        if not isinstance(name, str) or not CHANNEL.match(name):
            raise BadRequest(f"bad channel name {name!r}: use SERVICE/STAGE, e.g. web/production "
                             "(lowercase letters, digits, . _ -)")

    def _channel_head(self, conn: Connection, name: str) -> dict[str, Any] | None:
        self._check_channel(name)
        return query_one(conn, "SELECT * FROM channel_history WHERE name=? ORDER BY seq DESC "
                               "LIMIT 1", (name,))

    def set_channel(self, conn: Connection, actor: str, name: str,
                    ref: str) -> dict[str, Any]:
        head = self._channel_head(conn, name)
        digest = self.resolve(conn, ref)
        rev = self.revocation_of(conn, digest)
        if rev:
            raise Conflict(f"image {digest} is revoked (reason: {rev['reason']}, by "
                           f"{rev['actor']} at {rev['at']}); pick another or restore it")
        if head and head["digest"] == digest:
            return {**self.channel(conn, name), "changed": False}
        seq = (head["seq"] + 1) if head else 1
        body = {"type": "channel", "channel": name, "seq": seq, "digest": digest,
                "previous": head["digest"] if head else None, "actor": actor, "time": now()}
        env, idx, text = self.append(conn, "channel", body)
        conn.execute("INSERT INTO channel_history VALUES (?,?,?,?,?,?,?,?)",
                     (name, seq, digest, body["previous"], actor, body["time"], idx, text))
        self.checkpoint(conn)
        return {**self.channel(conn, name), "changed": True}

    def channel(self, conn: Connection, name: str) -> dict[str, Any]:
        head = self._channel_head(conn, name)
        if head is None:
            raise NotFound(f"channel {name!r} does not exist; 'immctl channel set {name} REF' "
                           "creates it")
        img = query_one(conn, "SELECT name, version FROM images WHERE digest=?", (head["digest"],))
        return {"name": name, "digest": head["digest"], "seq": head["seq"],
                "image": f"{img['name']}@{img['version']}" if img else None,
                "updated_at": head["at"], "actor": head["actor"],
                "ledger_index": head["ledger_index"], "envelope": json.loads(head["envelope"])}

    def channels(self, conn: Connection) -> list[dict[str, Any]]:
        return query(conn, """
            SELECT h.name, h.digest, h.seq, h.at AS updated_at, h.actor,
                   i.name || '@' || i.version AS image
            FROM channel_history h
            JOIN (SELECT name, max(seq) s FROM channel_history GROUP BY name) m
              ON h.name = m.name AND h.seq = m.s
            LEFT JOIN images i ON i.digest = h.digest ORDER BY h.name""")

    def channel_history(self, conn: Connection, name: str) -> list[dict[str, Any]]:
        self._check_channel(name)
        rows = query(conn, """
            SELECT h.seq, h.digest, h.previous, h.at, h.actor, h.ledger_index,
                   i.name || '@' || i.version AS image
            FROM channel_history h LEFT JOIN images i ON i.digest = h.digest
            WHERE h.name = ? ORDER BY h.seq""", (name,))
        if not rows:
            raise NotFound(f"channel {name!r} does not exist")
        return rows

    # -- ledger -------------------------------------------------------------------------------

    def counts(self, conn: Connection) -> dict[str, int]:
        """How much the catalog holds (``immctl status``, the /metrics gauges)."""
        one = lambda sql: int(conn.execute(sql).fetchone()[0])  # noqa: E731
        return {
            "images": one("SELECT count(*) FROM images"),
            "revoked": one("SELECT count(*) FROM revocations"),
            "artifacts": one("SELECT count(*) FROM artifacts"),
            "channels": one("SELECT count(DISTINCT name) FROM channel_history"),
            "ledger_size": one("SELECT count(*) FROM ledger_leaves"),
        }

    def head(self, conn: Connection) -> dict[str, Any]:
        log = MerkleLog(conn)
        note = query_one(conn, "SELECT value FROM meta WHERE key='checkpoint'")
        return {"size": log.size(), "root": log.root().hex(), "origin": self.origin,
                "checkpoint": note["value"] if note else None}

    def proof(self, conn: Connection, index: int, size: int | None) -> dict[str, Any]:
        log = MerkleLog(conn)
        n = log.size() if size is None else size
        path = log.inclusion_proof(index, n)
        _, leaf_hash = log.leaf(index)
        return {"index": index, "size": n, "leaf_hash": leaf_hash.hex(),
                "path": [h.hex() for h in path], "root": log.root(n).hex()}

    def consistency(self, conn: Connection, old: int, new: int | None) -> dict[str, Any]:
        log = MerkleLog(conn)
        n = log.size() if new is None else new
        if old > n:
            raise BadRequest(f"--from {old} is larger than --to {n}; a consistency proof goes "
                             "from an older, smaller tree to a newer one")
        path = log.consistency_proof(old, n)
        return {"from": old, "to": n, "path": [h.hex() for h in path],
                "old_root": log.root(old).hex(), "new_root": log.root(n).hex()}

    def leaf(self, conn: Connection, index: int) -> dict[str, Any]:
        data, leaf_hash = MerkleLog(conn).leaf(index)
        return {"index": index, "leaf_hash": leaf_hash.hex(), "data": json.loads(data)}
