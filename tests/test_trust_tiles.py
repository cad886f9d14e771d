"""The ledger served in the C2SP tlog-tiles layout, checked by code not written in imm: an RFC
6962 tree hash and audit path written here from the RFC, and pymerkle over the entry bundles.
Both must agree with 'ledger head' and 'ledger proof'."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pymerkle

from imm.cli.client import UnixHTTPConnection

from harness import Immd

RUN = "11111111-2222-3333-4444-555555555555"


def get(d: Immd, path: str) -> tuple[int, str, bytes]:
    c = UnixHTTPConnection(str(d.sock), 30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Content-Type") or "", body


def mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 §2.1 over leaf hashes (written here, not imported from imm)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def path(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]) over leaf hashes."""
    if len(hashes) == 1:
        return []
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    if m < k:
        return [*path(m, hashes[:k]), mth(hashes[k:])]
    return [*path(m - k, hashes[k:]), mth(hashes[:k])]


def test_tiles_match_ledger_head_and_proofs(immd: Immd, tmp_path: Path) -> None:
    builds = [{"name": "web", "builder_type": "amazon-ebs", "build_time": 1700000000 + i,
               "files": None, "artifact_id": f"us-east-1:ami-{i:017x}", "packer_run_uuid": RUN,
               "custom_data": {"version": f"1.0.{i}"}} for i in range(300)]
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(json.dumps({"builds": builds, "last_run_uuid": RUN}))
    immd.run("image", "import-packer", str(manifest))
    head = immd.json("ledger", "head")
    size = head["size"]
    assert size > 512  # two full level-0 tiles, one partial, and a partial level-1 tile

    st, ctype, cp = get(immd, "/checkpoint")
    assert st == 200 and ctype.startswith("text/plain") and cp.decode() == head["checkpoint"]

    leaf_hashes: list[bytes] = []
    entries: list[bytes] = []
    full, rest = divmod(size, 256)
    for n in range(full + 1):
        suffix = f"{n:03d}" + (f".p/{rest}" if n == full else "")
        if n == full and not rest:
            break
        st, ctype, tile = get(immd, f"/tile/0/{suffix}")
        assert st == 200 and ctype == "application/octet-stream"
        assert len(tile) == 32 * (rest if n == full else 256)
        st, _, bundle = get(immd, f"/tile/entries/{suffix}")
        assert st == 200
        at, got = 0, []
        while at < len(bundle):
            (length,) = struct.unpack(">H", bundle[at:at + 2])
            got.append(bundle[at + 2:at + 2 + length])
            at += 2 + length
        hashes = [tile[i:i + 32] for i in range(0, len(tile), 32)]
        # each entry hashes (RFC 6962 leaf hash) to the matching level-0 tile hash
        assert [hashlib.sha256(b"\x00" + e).digest() for e in got] == hashes
        leaf_hashes += hashes
        entries += got
    assert len(leaf_hashes) == size

    # level 1: each hash is the tree hash of a full level-0 tile
    st, _, t1 = get(immd, f"/tile/1/000.p/{full}")
    assert st == 200 and len(t1) == 32 * full
    for k in range(full):
        assert t1[32 * k:32 * k + 32] == mth(leaf_hashes[256 * k:256 * (k + 1)])

    # the tree hash from the tiles is the ledger head's root, and pymerkle agrees from entries
    root = mth(leaf_hashes)
    assert root.hex() == head["root"]
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for e in entries:
        tree.append_entry(e)
    assert tree.get_root(size).hex() == head["root"]

    # inclusion proofs computed from tiles match 'ledger proof'
    for index in (0, 255, 256, 300, size - 1):
        p = immd.json("ledger", "proof", "--index", str(index))
        assert [h.hex() for h in path(index, leaf_hashes)] == p["path"]
        assert p["leaf_hash"] == leaf_hashes[index].hex()

    # what is not there, and malformed paths, are refused by name
    assert get(immd, f"/tile/0/{full + 1:03d}")[0] == 404
    assert get(immd, f"/tile/1/000.p/{full + 1}")[0] == 404
    for bad in ("/tile/0/1", "/tile/0/x000/001", "/tile/64/000", "/tile/0/000.p/0",
                "/tile/0/000.p/256", "/tile/0/000.p/07", "/tile/00/000", "/tile/zz/000"):
        st, _, body = get(immd, bad)
        assert st == 400, (bad, st)
        assert "bad tile path" in json.loads(body)["error"]["message"]
