"""``immctl``: drive immd over its unix socket.

Tables for people; ``--json`` (anywhere on the line) for scripts. Exit codes: 0 ok, 1 error,
2 bad input, 3 not found, 4 conflict, 5 forbidden, 6 refused by policy, 7 verification failed,
69 daemon unreachable. Only the standard library is imported on the way to the socket.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import (
    ERROR_CLASSES,
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
)
from . import audit_cmds, rollout_cmds
from .client import ApiError, Client, DaemonUnreachable, Fail, seg
from .render import block, emit_json, short, table

Command = Callable[[Client, argparse.Namespace], int]


# -- status, keys ---------------------------------------------------------------------------

def cmd_status(c: Client, a: argparse.Namespace) -> int:
    s = c.request("GET", "/v1/status")
    if a.json:
        emit_json(s)
        return 0
    cat = s["catalog"]
    block([
        ("immd", f"{s['version']} (pid {s['pid']}, up {s['uptime_s']}s)"),
        ("config", s["config"]), ("state dir", s["state_dir"]), ("socket", s["socket"]),
        ("signing key", s["keyid"]),
        ("you", f"{s['peer']['user']} ({'admin' if s['peer']['admin'] else 'reader'})"),
        ("images", f"{cat['images']} ({cat['revoked']} revoked), {cat['artifacts']} artifacts"),
        ("channels", cat["channels"]), ("ledger", f"{cat['ledger_size']} leaves"),
        ("providers", s["providers"]), ("routers", s["routers"]),
    ])
    print("plugins:")
    table(s["plugins"], [("name", "  NAME"), ("module", "MODULE"), ("hooks", "HOOKS")])
    return 0


def cmd_keys_list(c: Client, a: argparse.Namespace) -> int:
    keys = c.request("GET", "/v1/keys")["keys"]
    if a.json:
        emit_json(keys)
        return 0
    for k in keys:
        k["mark"] = "*" if k["current"] else ""
    table(keys, [("mark", ""), ("keyid", "KEY ID"), ("action", "ACTION"),
                 ("created_at", "CREATED"), ("actor", "BY"), ("ledger_index", "LEAF")])
    return 0


def cmd_keys_export(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/keys/export", query={"keyid": a.keyid})
    if a.json:
        emit_json(r)
    else:
        sys.stdout.write(r["pem"])
    return 0


def cmd_keys_rotate(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", "/v1/keys/rotate", {})
    if a.json:
        emit_json(r)
    else:
        print(f"rotated: {r['previous']} -> {r['keyid']} (announced at ledger leaf "
              f"{r['ledger_index']}, signed by the old key)")
    return 0


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
    ])
    arts = img.get("artifacts") or []
    if arts:
        print("artifacts:")
        table(arts, [("provider", "  PROVIDER"), ("region", "REGION"), ("image_id", "IMAGE ID")])


def cmd_image_add(c: Client, a: argparse.Namespace) -> int:
    path = os.path.abspath(a.path)
    if not os.path.exists(path):
        raise Fail(f"path {a.path} does not exist; give the disk image file or image directory",
                   EXIT_USAGE)
    r = c.request("POST", "/v1/images", {
        "path": path, "name": a.name, "version": a.version, "layers": a.layer,
        "boot_actions": a.boot_action, "parent": a.parent, "labels": a.label})
    if a.json:
        emit_json(r)
    else:
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
        "all_runs": a.all_runs})
    if a.json:
        emit_json(r)
        return 0
    for img in r["images"]:
        arts = ", ".join(f"{x['provider']}/{x['region']}/{x['image_id']}" for x in img["artifacts"])
        print(("registered " if img["created"] else "already registered ")
              + f"{img['name']}@{img['version']} {img['digest']}  [{arts}]")
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
        emit_json(rows if a.all else {"images": rows, "next": after})
        return 0
    for r in rows:
        r["short"] = short(r["digest"])
    table(rows, [("short", "DIGEST"), ("name", "NAME"), ("version", "VERSION"),
                 ("ladder_step", "LADDER"), ("status", "STATUS"), ("artifacts", "ARTIFACTS"),
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
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/restore", {})
    if a.json:
        emit_json(r)
    else:
        print(f"restored {len(r['restored'])} image(s) (ledger leaf {r['ledger_index']}):")
        for dg in r["restored"]:
            print(f"  {dg}")
    return 0


# -- channels -------------------------------------------------------------------------------

def cmd_channel_set(c: Client, a: argparse.Namespace) -> int:
    r = c.request("PUT", f"/v1/channels/{seg(a.name)}", {"ref": a.ref})
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
        emit_json(r)
    else:
        for h in r["history"]:
            h["short"] = short(h["digest"])
        table(r["history"], [("seq", "#"), ("image", "IMAGE"), ("short", "DIGEST"),
                             ("at", "AT"), ("actor", "BY"), ("ledger_index", "LEAF")])
    return 0


def cmd_channel_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/channels")
    if a.json:
        emit_json(r["channels"])
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
        print("checkpoint:")
        sys.stdout.write(r["checkpoint"] or "(none)\n")
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


def cmd_ledger_verify(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/ledger/verify")
    if a.json:
        emit_json(r)
    elif r["ok"]:
        cp = r["checkpoint"]
        print(f"ok: {r['size']} leaves, root {r['root']}; checkpoint at size "
              f"{cp.get('size')} verifies and matches")
    else:
        print(f"FAILED: {len(r['problems'])} problem(s) in {r['size']} leaves", file=sys.stderr)
        for p in r["problems"]:
            where = (f"leaf {p['index']}" if "index" in p else
                     f"checkpoint {p.get('checkpoint')}" if "checkpoint" in p else
                     f"node level {p.get('level')} index {p.get('idx')}")
            print(f"  {where}: {p['problem']}", file=sys.stderr)
    return 0 if r["ok"] else EXIT_VERIFY_FAILED


# -- argument parsing -----------------------------------------------------------------------

class _Skipped:
    """Stands in for the subcommands of groups this invocation does not use: building every
    group's parsers would be a third of immctl's start-up."""

    def add_parser(self, *a: Any, **k: Any) -> _Skipped:
        return self

    def add_subparsers(self, *a: Any, **k: Any) -> _Skipped:
        return self

    def add_argument(self, *a: Any, **k: Any) -> None:
        return None

    def set_defaults(self, **k: Any) -> None:
        return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """immctl's parser; with ``only``, just that command group gets its subcommands."""
    p = argparse.ArgumentParser(
        prog="immctl", description="Drive immd, the control plane of an immutable fleet.",
        epilog="--json anywhere prints JSON for scripts. --socket or IMM_SOCKET picks the daemon.")
    p.add_argument("--socket", help="immd's unix socket (default: $IMM_SOCKET, /run/imm/immd.sock,"
                                    " ~/.local/state/imm/immd.sock)")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def add(parent: Any, name: str, fn: Command, help_text: str) -> Any:
        sp = parent.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(fn=fn)
        return sp

    def group(name: str, help_text: str) -> Any:
        g = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            return _Skipped()
        return g.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)

    add(sub, "status", cmd_status, "daemon status, catalog counts and loaded plugins")

    keys = group("keys", "signing keys")
    add(keys, "list", cmd_keys_list, "list signing keys (* = current)")
    sp = add(keys, "export", cmd_keys_export, "print a public key as PEM")
    sp.add_argument("--keyid", help="a retired key (default: the current one)")
    add(keys, "rotate", cmd_keys_rotate, "make a new signing key, announced by the old one")

    img = group("image", "the image catalog")
    sp = add(img, "add", cmd_image_add, "register a disk-image file or image directory")
    sp.add_argument("path")
    sp.add_argument("--name", required=True)
    sp.add_argument("--version", required=True)
    sp.add_argument("--layer", action="append", default=[], metavar="ROLE=NAME@VERSION",
                    help="a baked layer (os, runtime, framework, app); repeatable")
    sp.add_argument("--boot-action", action="append", default=[], metavar="TEXT",
                    help="something done at boot; repeatable (decides the ladder step)")
    sp.add_argument("--parent", metavar="REF", help="the image this one was built from")
    sp.add_argument("--label", action="append", default=[], metavar="K=V")
    sp = add(img, "import-packer", cmd_image_import_packer,
             "import builds from a Packer manifest post-processor file")
    sp.add_argument("file")
    sp.add_argument("--name", help="image name (default: each build's name)")
    sp.add_argument("--version", help="version (default: custom_data.version or build_time)")
    sp.add_argument("--all-runs", action="store_true",
                    help="import every run, not only last_run_uuid's")
    sp = add(img, "list", cmd_image_list, "list images")
    sp.add_argument("--name")
    sp.add_argument("--status", choices=["active", "revoked"])
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--all", action="store_true", help="every image, page by page")
    sp = add(img, "show", cmd_image_show, "show one image")
    sp.add_argument("ref")
    sp = add(img, "verify", cmd_image_verify,
             "re-verify stored rows from their signatures and the ledger")
    sp.add_argument("ref", nargs="?")
    sp.add_argument("--all", action="store_true")
    art = img.add_parser("artifact", help="where copies of an image live").add_subparsers(
        dest="sub2", metavar="SUBCOMMAND", required=True)
    sp = add(art, "add", cmd_artifact_add, "record a copy in a provider/region")
    sp.add_argument("ref")
    sp.add_argument("--provider", required=True)
    sp.add_argument("--region", required=True)
    sp.add_argument("--image-id", required=True)
    sp = add(img, "revoke", cmd_image_revoke, "revoke an image so it must not run")
    sp.add_argument("ref")
    sp.add_argument("--reason", required=True)
    sp.add_argument("--cascade", action="store_true", help="revoke its descendants too")
    sp = add(img, "restore", cmd_image_restore, "lift a revocation")
    sp.add_argument("ref")

    ch = group("channel", "movable, signed pointers SERVICE/STAGE -> image")
    sp = add(ch, "set", cmd_channel_set, "point a channel at an image")
    sp.add_argument("name")
    sp.add_argument("ref")
    sp = add(ch, "show", cmd_channel_show, "where a channel points")
    sp.add_argument("name")
    sp = add(ch, "history", cmd_channel_history, "every move of a channel")
    sp.add_argument("name")
    add(ch, "list", cmd_channel_list, "every channel")

    led = group("ledger", "the Merkle ledger of every signed record")
    add(led, "head", cmd_ledger_head, "size, root and the signed checkpoint")
    sp = add(led, "proof", cmd_ledger_proof, "inclusion proof of a leaf")
    sp.add_argument("--index", type=int, required=True)
    sp.add_argument("--size", type=int)
    sp = add(led, "consistency", cmd_ledger_consistency, "consistency proof between two sizes")
    sp.add_argument("--from", dest="from_", type=int, required=True)
    sp.add_argument("--to", type=int)
    add(led, "verify", cmd_ledger_verify, "recompute the tree and check every signature")

    rollout_cmds.register(sub, add, group)
    audit_cmds.register(sub, add, group)
    return p


def split_globals(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Take --json and --socket from anywhere on the line."""
    rest: list[str] = []
    as_json, sock = False, None
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--socket":
            sock = next(args, None)
            if sock is None:
                rest.append(arg)  # argparse says "--socket: expected one argument"
        elif arg.startswith("--socket="):
            sock = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, as_json, sock


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, as_json, sock = split_globals(argv)
    command = next((a for a in rest if not a.startswith("-")), None)
    parser = build_parser(only=command)
    args = parser.parse_args(rest)
    args.json = as_json
    client = Client(sock)
    try:
        return int(args.fn(client, args))
    except DaemonUnreachable as e:
        if as_json:
            emit_json({"error": {"code": "unavailable", "message": str(e), "detail": None}})
        print(f"immctl: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ApiError as e:
        if as_json:
            emit_json({"error": {"code": e.code, "message": e.message, "detail": e.detail,
                                 "status": e.status}})
        else:
            print(f"immctl: {e.message}", file=sys.stderr)
            cands = e.detail.get("candidates") if isinstance(e.detail, dict) else None
            if cands:
                print("candidates:\n  " + "\n  ".join(map(str, cands)), file=sys.stderr)
        cls = ERROR_CLASSES.get(e.code)
        return cls.exit_code if cls else EXIT_ERROR
    except Fail as e:
        if as_json:
            emit_json({"error": {"code": "usage" if e.code == EXIT_USAGE else "error",
                                 "message": str(e), "detail": None}})
        print(f"immctl: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
