"""immctl's catalog commands: images, artifacts, channels and the ledger."""

from __future__ import annotations

import os
import sys

from ..exit_codes import (
    EXIT_FORBIDDEN,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
)
from .client import Client, Fail, seg
from .render import block, emit_json, emit_list, short, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    import argparse
    from typing import Any

# -- images ---------------------------------------------------------------------------------

def show_image(img: dict[str, Any]) -> None:
    m = img["manifest"]
    rev = img.get("revocation")
    block([
        ("digest", img["digest"]), ("name", f"{img['name']}@{img['version']}"),
        ("status", img["status"] + (f" ({rev['reason']}; by {rev['actor']} at {rev['at']})"
                                    if rev else "")),
        ("content", f"{img['content_kind']} {img['content_digest']}"),
        ("parent", img["parent"]), ("ladder step", img["ladder_step"]),
        ("layers", [f"{x['role']}={x['name']}@{x['version']}" for x in m.get("layers", [])]),
        ("boot actions", m.get("boot_actions", [])), ("labels", m.get("labels", {})),
        ("channels", img.get("channels", [])),
        ("created", f"{img['created_at']} by {img['actor']}"),
        ("signed by", img["keyid"]), ("ledger leaf", img["ledger_index"]),
    ] + [("warning", w) for w in (img.get("lifecycle") or {}).get("warnings", [])])
    arts = img.get("artifacts") or []
    if arts:
        print("artifacts:")
        table(arts, [("provider", "  PROVIDER"), ("region", "REGION"), ("image_id", "IMAGE ID")])


def open_image(path: str) -> int:
    """Open an image file or directory with the caller's own access: immd reads through this
    descriptor, never by path, so it reads nothing the caller could not."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Fail(f"path {path} does not exist; give the disk image file or image directory",
                   EXIT_USAGE) from None
    except PermissionError:
        raise Fail(f"cannot read {path}: permission denied; immd reads an image with your own "
                   "access, so you must be able to read it", EXIT_FORBIDDEN) from None
    except OSError as e:
        raise Fail(f"cannot open {path}: {e.strerror}", EXIT_USAGE) from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        os.close(fd)
        raise Fail(f"{path} is not a regular file or directory; an image is a disk file or a "
                   "directory tree", EXIT_USAGE)
    return fd


BATCH = 500  # images per request of a bulk add (the daemon takes up to 1000)


def _image_body(a: argparse.Namespace, given: str, n: int) -> dict[str, object]:
    path = os.path.abspath(given)
    if not os.path.exists(path):
        raise Fail(f"path {given} does not exist; give the disk image file or image directory",
                   EXIT_USAGE)
    base = os.path.basename(path.rstrip("/"))
    stem = base.split(".", 1)[0] or base
    fill = {"stem": stem, "n": str(n)}
    try:
        name, version = a.name.format(**fill), a.version.format(**fill)
    except (KeyError, IndexError, ValueError) as e:
        raise Fail(f"--name {a.name!r} / --version {a.version!r}: only the placeholders {{stem}} "
                   f"and {{n}} may appear ({e})", EXIT_USAGE) from None
    return {"path": path, "name": name, "version": version, "layers": a.layer,
            "boot_actions": a.boot_action, "parent": a.parent, "labels": a.label}


def cmd_image_add(c: Client, a: argparse.Namespace) -> int:
    paths: list[str] = a.path
    if len(paths) > 1:
        return _image_add_many(c, a, paths)
    body = _image_body(a, paths[0], 1)
    fd = open_image(str(body["path"]))
    try:
        r = c.request("POST", "/v1/images", body, pass_fd=fd)
    finally:
        os.close(fd)
    if a.json:
        emit_json(r)
    else:
        print(("registered " if r["created"] else "already registered ")
              + f"{r['name']}@{r['version']} {r['digest']}")
    return 0


def _image_add_many(c: Client, a: argparse.Namespace, paths: list[str]) -> int:
    if not any(p in a.name + a.version for p in ("{stem}", "{n}")):
        raise Fail(f"{len(paths)} paths need distinct versions (or names): put {{stem}} (the "
                   "file name without extension) or {n} (its position, from 1) in --version or "
                   "--name, e.g. --version '1.0-{stem}'", EXIT_USAGE)
    bodies = [_image_body(a, p, k) for k, p in enumerate(paths, 1)]
    results: list[dict[str, object]] = []
    for k in range(0, len(bodies), BATCH):
        r = c.request("POST", "/v1/images/batch", {"images": bodies[k:k + BATCH]})
        results.extend(r["images"])
    if a.json:
        emit_json({"images": results})
    else:
        for r in results:
            print(("registered " if r["created"] else "already registered ")
                  + f"{r['name']}@{r['version']} {r['digest']}")
    return 0


def cmd_image_import_packer(c: Client, a: argparse.Namespace) -> int:
    try:
        with open(a.file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise Fail(f"Packer manifest {a.file} does not exist", EXIT_USAGE) from None
    except OSError as e:
        raise Fail(f"cannot read Packer manifest {a.file}: {e.strerror}", EXIT_USAGE) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Fail(f"Packer manifest {a.file} is not UTF-8 text", EXIT_USAGE) from None
    r = c.request("POST", "/v1/images/import-packer", {
        "manifest": text, "source": a.file, "name": a.name, "version": a.version,
        "all_runs": a.all_runs, "provider": a.provider, "attest": a.attest})
    if a.json:
        emit_json(r)
        return 0
    for img in r["images"]:
        arts = ", ".join(f"{x['provider']}/{x['region']}/{x['image_id']}" for x in img["artifacts"])
        print(("registered " if img["created"] else "already registered ")
              + f"{img['name']}@{img['version']} {img['digest']}  [{arts}]"
              + (" (attested)" if img.get("attestation") else ""))
    return 0


def cmd_image_list(c: Client, a: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = c.request("GET", "/v1/images", query={
            "name": a.name, "status": a.status, "after": after,
            "limit": 1000 if a.all else a.limit})
        rows.extend(page["images"])
        after = page["next"]
        if not a.all or not after:
            break
    if a.json:
        emit_list(rows, None if a.all else after)
        return 0
    for r in rows:
        r["short"] = short(r["digest"])
        r["image"] = f"{r['name']}@{r['version']}"
    table(rows, [("image", "IMAGE"), ("short", "DIGEST"), ("ladder_step", "LADDER"),
                 ("status", "STATUS"), ("artifacts", "ARTIFACTS"),
                 ("created_at", "CREATED")], empty="no images; add one with 'immctl image add'")
    if after and not a.all:
        print(f"(more: --all, or --limit above {a.limit})")
    return 0


def cmd_image_show(c: Client, a: argparse.Namespace) -> int:
    img = c.request("GET", f"/v1/images/{seg(a.ref)}")
    if a.json:
        emit_json(img)
    else:
        show_image(img)
    return 0


def cmd_image_verify(c: Client, a: argparse.Namespace) -> int:
    if not a.all and not a.ref:
        raise Fail("say which: immctl image verify REF, or --all", EXIT_USAGE)
    r = c.request("GET", "/v1/verify/images", query={"ref": None if a.all else a.ref})
    if a.json:
        emit_json(r)
    elif r["ok"]:
        print(f"ok: {r['checked']} rows re-verified from their signed envelopes and the ledger")
    else:
        print(f"FAILED: {len(r['problems'])} problem(s) in {r['checked']} rows", file=sys.stderr)
        for p in r["problems"]:
            print(f"  {p['table']} {p['key']} (leaf {p['ledger_index']}): {p['problem']}",
                  file=sys.stderr)
    return 0 if r["ok"] else EXIT_VERIFY_FAILED


def cmd_artifact_add(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/artifacts", {
        "provider": a.provider, "region": a.region, "image_id": a.image_id})
    if a.json:
        emit_json(r)
    else:
        print(("recorded " if r["created"] else "already recorded ")
              + f"{a.provider}/{a.region}/{a.image_id} -> {r['digest']}")
    return 0


def cmd_image_revoke(c: Client, a: argparse.Namespace) -> int:
    from . import trust_cmds  # imported when used: immctl starts quicker
    if a.at:
        return int(trust_cmds.guard(trust_cmds.cmd_image_lifecycle)(c, a))
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/revoke",
                  {"reason": a.reason, "cascade": a.cascade})
    if a.json:
        emit_json(r)
    else:
        print(f"revoked {len(r['revoked'])} image(s) (ledger leaf {r['ledger_index']}):")
        for dg in r["revoked"]:
            print(f"  {dg}")
    return 0


def cmd_image_restore(c: Client, a: argparse.Namespace) -> int:
    from . import trust_cmds  # imported when used: immctl starts quicker
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/restore", {})
    if trust_cmds.pending(r, a):
        return 0
    if a.json:
        emit_json(r)
    else:
        print(f"restored {len(r['restored'])} image(s) (ledger leaf {r['ledger_index']}):")
        for dg in r["restored"]:
            print(f"  {dg}")
    return 0


# -- channels -------------------------------------------------------------------------------

def cmd_channel_set(c: Client, a: argparse.Namespace) -> int:
    from . import trust_cmds  # imported when used: immctl starts quicker
    r = c.request("PUT", f"/v1/channels/{seg(a.name)}", {"ref": a.ref})
    if trust_cmds.pending(r, a):
        return 0
    if a.json:
        emit_json(r)
    else:
        print(f"{a.name} -> {r['image']} {r['digest']}" + ("" if r["changed"] else " (unchanged)"))
    return 0


def cmd_channel_show(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/channels/{seg(a.name)}")
    if a.json:
        emit_json(r)
    else:
        block([("channel", r["name"]), ("image", r["image"]), ("digest", r["digest"]),
               ("move", r["seq"]), ("updated", f"{r['updated_at']} by {r['actor']}"),
               ("ledger leaf", r["ledger_index"])])
    return 0


def cmd_channel_history(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/channels/{seg(a.name)}/history")
    if a.json:
        emit_list(r["history"])
    else:
        for h in r["history"]:
            h["short"] = short(h["digest"])
        table(r["history"], [("seq", "#"), ("image", "IMAGE"), ("short", "DIGEST"),
                             ("at", "AT"), ("actor", "BY"), ("ledger_index", "LEAF")])
    return 0


def cmd_channel_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/channels")
    if a.json:
        emit_list(r["channels"])
    else:
        for h in r["channels"]:
            h["short"] = short(h["digest"])
        table(r["channels"], [("name", "CHANNEL"), ("image", "IMAGE"), ("short", "DIGEST"),
                              ("updated_at", "UPDATED"), ("actor", "BY")],
              empty="no channels; 'immctl channel set SERVICE/STAGE REF' creates one")
    return 0


# -- ledger ---------------------------------------------------------------------------------

def cmd_ledger_head(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/ledger/head")
    if a.json:
        emit_json(r)
    else:
        block([("size", r["size"]), ("root", r["root"])])
        if r.get("required"):
            block([("witnessed", f"{'yes' if r['witnessed'] else 'no'} "
                                 f"({len(r['cosigned_by'])} of {r['required']} required: "
                                 f"{', '.join(r['cosigned_by']) or 'none yet'})")])
        print("checkpoint:")
        sys.stdout.write((r.get("witnessed_checkpoint") or r["checkpoint"]) or "(none)\n")
    return 0


def cmd_ledger_proof(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/ledger/proof", query={"index": a.index, "size": a.size})
    if a.json:
        emit_json(r)
    else:
        block([("index", r["index"]), ("tree size", r["size"]), ("leaf hash", r["leaf_hash"]),
               ("root", r["root"])])
        print("path:")
        for h in r["path"]:
            print(f"  {h}")
    return 0


def cmd_ledger_consistency(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/ledger/consistency", query={"from": a.from_, "to": a.to})
    if a.json:
        emit_json(r)
    else:
        block([("from", r["from"]), ("to", r["to"]), ("old root", r["old_root"]),
               ("new root", r["new_root"])])
        print("path:")
        for h in r["path"]:
            print(f"  {h}")
    return 0


def cmd_ledger_leaf(c: Client, a: argparse.Namespace) -> int:
    emit_json(c.request("GET", f"/v1/ledger/leaves/{a.index}"))
    return 0


def cmd_ledger_verify(c: Client, a: argparse.Namespace) -> int:
    from . import trust_cmds  # imported when used: immctl starts quicker
    if a.checkpoint:
        return int(trust_cmds.guard(lambda _c, a: trust_cmds.verify_checkpoint_offline(a))(c, a))
    r = c.request("GET", "/v1/ledger/verify")
    if a.json:
        emit_json(r)
    elif r["ok"]:
        cp = r["checkpoint"]
        print(f"ok: {r['size']} leaves, root {r['root']}; checkpoint at size "
              f"{cp.get('size')} verifies and matches")
    else:
        where = "the ledger" if r["size"] is None else f"{r['size']} leaves"
        print(f"FAILED: {len(r['problems'])} problem(s) in {where}", file=sys.stderr)
        for p in r["problems"]:
            where = (f"leaf {p['index']}" if "index" in p else
                     f"checkpoint {p.get('checkpoint')}" if "checkpoint" in p else
                     f"node level {p.get('level')} index {p.get('idx')}")
            print(f"  {where}: {p['problem']}", file=sys.stderr)
    return 0 if r["ok"] else EXIT_VERIFY_FAILED
