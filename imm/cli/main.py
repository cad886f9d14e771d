"""``immctl``: drive immd over its unix socket.

Tables for people; ``--json`` (anywhere on the line) for scripts. Exit codes: 0 ok, 1 error,
2 bad input, 3 not found, 4 conflict, 5 forbidden, 6 refused by policy, 7 verification failed,
69 daemon unreachable. Only the standard library is imported on the way to the socket.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import (
    ERROR_CLASSES,
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .argv import split_globals
from .catalog_cmds import (
    BATCH,
    cmd_artifact_add,
    cmd_channel_history,
    cmd_channel_list,
    cmd_channel_set,
    cmd_channel_show,
    cmd_image_add,
    cmd_image_import_packer,
    cmd_image_list,
    cmd_image_restore,
    cmd_image_revoke,
    cmd_image_show,
    cmd_image_verify,
    cmd_ledger_consistency,
    cmd_ledger_head,
    cmd_ledger_leaf,
    cmd_ledger_proof,
    cmd_ledger_verify,
)
from .client import ApiError, Client, DaemonUnreachable, Fail, ascii_int, seg
from .render import block, emit_json, emit_list, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Command = Callable[[Client, argparse.Namespace], int]

# The top-level commands other modules register, in the order help lists them; a module is
# imported only when the invoked command is one of its own (or for help and the generators).
ROLLOUT_COMMANDS = ("rollout", "service", "instance")
AUDIT_COMMANDS = ("audit",)
TOKEN_COMMANDS = ("token",)
TRUST_COMMANDS = ("operator", "change", "approve", "witness")
OWN_COMMANDS = ("status", "help", "completion", "dashboard", "keys", "state", "image", "channel",
                "ledger")


def _trust(name: str, guarded: bool = True) -> Command:
    """A command of trust_cmds, imported only when it runs."""
    def run(c: Client, a: argparse.Namespace) -> int:
        from . import trust_cmds

        fn = getattr(trust_cmds, name)
        return int((trust_cmds.guard(fn) if guarded else fn)(c, a))
    return run


# -- status, keys ---------------------------------------------------------------------------

def cmd_dashboard(c: Client, a: argparse.Namespace) -> int:
    link = c.request("GET", "/v1/dashboard/link")
    if a.json:
        emit_json(link)
        return 0
    print(link["url"])
    print(f"one-time link for {link['actor']} ({link['role']}), valid {link['expires_in_s']}s; "
          "from elsewhere: ssh -L PORT:127.0.0.1:PORT this-host", file=sys.stderr)
    if a.open:
        import webbrowser  # only here: immctl starts without it

        if not webbrowser.open(link["url"]):
            print("immctl: no browser could be started here; open the link above yourself",
                  file=sys.stderr)
    return 0


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
        *_cluster_lines(s.get("cluster")),
    ])
    members = (s.get("cluster") or {}).get("members") or []
    if members:
        print("immd on this database:")
        table(members, [("holder", "  IMMD"), ("role", "ROLE"), ("epoch", "EPOCH"),
                        ("seen_at", "SEEN")])
    print("plugins:")
    table(s["plugins"], [("name", "  NAME"), ("module", "MODULE"), ("hooks", "HOOKS")])
    return 0


def _cluster_lines(c: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """This immd's role, the leader, its epoch and since when."""
    if not c:
        return []
    if c["backend"] == "sqlite":
        return [("role", f"leader (one immd on SQLite, epoch 1, since {c['since']})")]
    leader = c["leader"] or "none (the lease expired; the next immd to ask takes it)"
    return [("role", f"{c['role']} ({c['me']})"),
            ("leader", f"{leader}, epoch {c['epoch']}, since {c['since']}; "
                       f"lease {c['lease_s']:g}s")]


def cmd_keys_list(c: Client, a: argparse.Namespace) -> int:
    keys = c.request("GET", "/v1/keys")["keys"]
    if a.json:
        emit_list(keys)
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


def cmd_state_backup(c: Client, a: argparse.Namespace) -> int:
    """Stream immd's consistent copy of the state into FILE (written as the caller, mode 0600)."""
    part = a.file + ".part"
    try:  # before asking immd for a copy: an unwritable FILE costs nothing
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise Fail(f"cannot write {part}: {e.strerror}; choose a FILE you can write",
                   EXIT_USAGE) from None
    try:
        conn, resp = c.open_stream("POST", "/v1/state/backup", "application/octet-stream", {})
    except (ApiError, DaemonUnreachable):
        os.close(fd)
        os.unlink(part)
        raise
    expected = int(resp.getheader("content-length") or -1)
    size, head = 0, b""
    try:
        with os.fdopen(fd, "wb") as out:
            while data := resp.read1(1 << 20):
                if len(head) < 16:
                    head = (head + data)[:16]
                out.write(data)
                size += len(data)
    except OSError as e:
        os.unlink(part)
        raise Fail(f"backup interrupted after {size} bytes: {e}") from None
    finally:
        conn.close()
    if size != expected or head != b"SQLite format 3\x00":
        os.unlink(part)
        raise Fail(f"the backup was cut short ({size} of {expected} bytes); see the immd log")
    os.replace(part, a.file)
    if a.json:
        emit_json({"file": a.file, "bytes": size})
    else:
        print(f"backed up the state to {a.file} ({size} bytes); restore: see README "
              f"'Backup and restore'")
    return 0


def cmd_keys_rotate(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", "/v1/keys/rotate", {})
    if a.json:
        emit_json(r)
    else:
        print(f"rotated: {r['previous']} -> {r['keyid']} (announced at ledger leaf "
              f"{r['ledger_index']}, signed by the old key)")
    return 0


# -- channel resolve, help, completion --------------------------------------------------------

def cmd_channel_resolve(c: Client, a: argparse.Namespace) -> int:
    """With --provider: the provider's image id of the channel's image (Terraform's question);
    without: the image digest from the channel's signed head. --max-age (or --statement) checks
    the signed head's freshness first in both cases."""
    from . import trust_cmds

    if a.provider is None:
        return int(trust_cmds.guard(trust_cmds.cmd_channel_resolve)(c, a))
    head: dict[str, Any] | None = None
    if a.max_age or a.statement:
        def check(c: Client, a: argparse.Namespace) -> int:
            nonlocal head
            head, _ = trust_cmds.verified_head(c, a)
            return 0
        rc = trust_cmds.guard(check)(c, a)
        if rc:
            return int(rc)
    r = c.request("GET", f"/v1/channels/{seg(a.name)}/resolve",
                  query={"provider": a.provider, "region": a.region})
    if head is not None and head["digest"] != r["digest"]:
        raise Fail(f"channel {a.name} moved while it was resolved (signed head "
                   f"{head['digest'][:19]}, now {r['digest'][:19]}); run it again", EXIT_ERROR)
    if a.json:
        emit_json(r)
    else:
        print(r["image_id"])
    return 0


def cmd_help(c: Client, a: argparse.Namespace) -> int:
    from .topics import TOPICS

    words = a.topic
    if not words:
        build_parser().print_help()
        print("\nhelp topics: " + ", ".join(sorted(TOPICS))
              + "; 'immctl help COMMAND [SUBCOMMAND]' shows a command's help")
        return 0
    if len(words) == 1 and words[0] in TOPICS:
        sys.stdout.write(TOPICS[words[0]])
        return 0
    parser: Any = build_parser(only=words[0])
    for i, w in enumerate(words):
        subs = next((x.choices for x in parser._actions
                     if isinstance(x, argparse._SubParsersAction)), None)
        if not subs or w not in subs:
            where = "immctl " + " ".join(words[:i]) if i else "immctl"
            known = sorted(subs or []) + ([] if i else sorted(TOPICS))
            raise Fail(f"no command or topic {w!r} under {where.strip()}; known: "
                       f"{', '.join(known)}", EXIT_USAGE)
        parser = subs[w]
    parser.print_help()
    return 0


def cmd_completion(c: Client, a: argparse.Namespace) -> int:
    from pathlib import Path

    name = {"bash": "bash-completion/immctl", "zsh": "zsh/_immctl"}[a.shell]
    sys.stdout.write((Path(__file__).parent / "share" / name).read_text("utf-8"))
    return 0


# -- argument parsing -----------------------------------------------------------------------

class _Skipped:
    """Stands in for the parsers of commands this invocation does not use: building every
    command's parser would be most of immctl's start-up."""

    def add_parser(self, *a: Any, **k: Any) -> _Skipped:
        return self

    def add_subparsers(self, *a: Any, **k: Any) -> _Skipped:
        return self

    def add_argument(self, *a: Any, **k: Any) -> None:
        return None

    def set_defaults(self, **k: Any) -> None:
        return None


class _Only:
    """A subparsers action that builds only the parser of one name; ``built`` says whether
    that name came by (if not, the caller builds them all so argparse can list the choices)."""

    def __init__(self, action: Any, name: str) -> None:
        self.action, self.name, self.built = action, name, False

    def add_parser(self, name: str, **k: Any) -> Any:
        if name != self.name:
            return _Skipped()
        self.built = True
        return self.action.add_parser(name, **k)


def _columns() -> int:
    """What shutil.get_terminal_size() says (COLUMNS, else the terminal, else 80), without
    importing shutil (and with it bz2, lzma and fnmatch)."""
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    if cols <= 0:
        try:
            cols = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            cols = 0
    return (cols if cols > 0 else 80) - 2


class _Parser(argparse.ArgumentParser):
    """argparse makes a help formatter, which asks the terminal's width, on every
    add_argument (to check the metavar): the width is asked without importing shutil."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_columns())  # type: ignore[call-arg]


def build_parser(only: str | None = None, sub_only: str | None = None) -> argparse.ArgumentParser:
    """immctl's parser. With ``only`` (a command), just that command's parser is built (the
    others are not in it); with ``sub_only`` too, just that subcommand of the group ``only``
    (if the group has no such subcommand, all of its subcommands are built)."""
    if only is not None and only not in (*OWN_COMMANDS, *ROLLOUT_COMMANDS, *AUDIT_COMMANDS,
                                         *TOKEN_COMMANDS, *TRUST_COMMANDS):
        only = sub_only = None  # argparse refuses it and lists every command
    p = _Parser(
        prog="immctl", description="Drive immd, the control plane of an immutable fleet.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--json anywhere prints JSON for scripts; every list is "
               '{"items": [...], "next": CURSOR-or-null}.\n'
               "--socket or IMM_SOCKET picks the daemon. 'immctl help TOPIC' explains more.\n\n"
               "example:\n  immctl rollout start web --image web@v2 --wait")
    p.add_argument("--socket", help="immd's unix socket (default: $IMM_SOCKET, /run/imm/immd.sock,"
                                    " ~/.local/state/imm/immd.sock)")
    p.add_argument("--json", action="store_true", help="print JSON (anywhere on the line)")
    # prog given: argparse would otherwise format a usage line to make it
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True, prog="immctl")
    top: Any = sub if only is None else _Only(sub, only)
    filters: list[_Only] = []

    def add(parent: Any, name: str, fn: Command, help_text: str, example: str) -> Any:
        sp = parent.add_parser(name, help=help_text, description=help_text,
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="example:\n  " + example.replace("\n", "\n  "))
        sp.set_defaults(fn=fn)
        return sp

    def group(name: str, help_text: str) -> Any:
        g = top.add_parser(name, help=help_text, description=help_text)
        if isinstance(g, _Skipped):
            return g
        subs = g.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True,
                                prog=f"immctl {name}")
        if sub_only is None:
            return subs
        filters.append(_Only(subs, sub_only))
        return filters[-1]

    add(top, "status", cmd_status, "daemon status, catalog counts and loaded plugins",
        "immctl status")
    sp = add(top, "help", cmd_help, "a command's help, or a topic: json, exit-codes, refs, "
             "completion", "immctl help rollout start\nimmctl help refs")
    sp.add_argument("topic", nargs="*", metavar="TOPIC",
                    help="a command (and subcommand), or a topic")
    sp = add(top, "completion", cmd_completion, "print the bash or zsh completion script",
             "immctl completion bash > /etc/bash_completion.d/immctl")
    sp.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
    sp = add(top, "dashboard", cmd_dashboard, "print a one-time login link to the web dashboard",
             "immctl dashboard\nimmctl dashboard --open")
    sp.add_argument("--open", action="store_true",
                    help="also open the link in this machine's web browser, if it has one")

    keys = group("keys", "signing keys")
    add(keys, "list", cmd_keys_list, "list signing keys (* = current)", "immctl keys list")
    sp = add(keys, "export", cmd_keys_export, "print a public key as PEM",
             "immctl keys export > imm.pub.pem")
    sp.add_argument("--keyid", help="a retired key (default: the current one)")
    add(keys, "rotate", cmd_keys_rotate, "make a new signing key, announced by the old one",
        "immctl keys rotate")

    state = group("state", "the daemon's state")
    sp = add(state, "backup", cmd_state_backup,
             "a consistent copy of the SQLite state while immd serves (admin)",
             "immctl state backup /var/backups/imm.db")
    sp.add_argument("file", metavar="FILE", help="where to write the copy (a SQLite database)")

    img = group("image", "the image catalog")
    sp = add(img, "add", cmd_image_add, "register disk-image files or image directories",
             "immctl image add /tmp/imm-images/v2 --name web --version v2 "
             "--layer os=debian@12")
    sp.add_argument("path", nargs="+", help="one or more; several go in one request per "
                    f"{BATCH}, each its own signed record (several need [daemon] image_roots: "
                    "only one image is passed as an open descriptor)")
    sp.add_argument("--name", required=True, help="image name, e.g. web; may hold {stem} or {n} "
                    "(see --version)")
    sp.add_argument("--version", required=True,
                    help="image version, e.g. v2; with several paths, put {stem} (file name "
                         "without extension) or {n} (position, from 1) in it, e.g. '1.0-{stem}'")
    sp.add_argument("--layer", action="append", default=[], metavar="ROLE=NAME@VERSION",
                    help="a baked layer (os, runtime, framework, app); repeatable")
    sp.add_argument("--boot-action", action="append", default=[], metavar="TEXT",
                    help="something done at boot; repeatable (decides the ladder step)")
    sp.add_argument("--parent", metavar="REF", help="the image this one was built from")
    sp.add_argument("--label", action="append", default=[], metavar="K=V",
                    help="a label, e.g. team=platform; repeatable")
    sp = add(img, "import-packer", cmd_image_import_packer,
             "import builds from a Packer manifest post-processor file",
             "immctl image import-packer examples/packer-manifest.json --provider aws-prod")
    sp.add_argument("file", help="the manifest Packer's manifest post-processor wrote")
    sp.add_argument("--name", help="image name (default: each build's name)")
    sp.add_argument("--version", help="version (default: custom_data.version or build_time)")
    sp.add_argument("--attest", action="store_true",
                    help="attach each build's metadata as an in-toto attestation")
    sp.add_argument("--all-runs", action="store_true",
                    help="import every run, not only last_run_uuid's")
    sp.add_argument("--provider", metavar="NAME",
                    help="record the artifacts under this configured provider (default: "
                         "[packer] providers in immd's config, else the builder's cloud: "
                         "aws, gcp, azure, openstack)")
    sp = add(img, "list", cmd_image_list, "list images", "immctl image list --name web")
    sp.add_argument("--name", help="only images of this name")
    sp.add_argument("--status", choices=["active", "revoked"], help="only active or revoked")
    sp.add_argument("--limit", type=ascii_int, default=100, help="at most this many (default 100)")
    sp.add_argument("--all", action="store_true", help="every image, page by page")
    sp = add(img, "show", cmd_image_show, "show one image", "immctl image show web@v2")
    sp.add_argument("ref", help="digest, prefix, name@version or channel:SERVICE/STAGE")
    sp = add(img, "verify", cmd_image_verify,
             "re-verify stored rows from their signatures and the ledger",
             "immctl image verify --all")
    sp.add_argument("ref", nargs="?", help="one image (digest, prefix, name@version)")
    sp.add_argument("--all", action="store_true", help="every image, artifact and channel")
    art = img.add_parser("artifact", help="where copies of an image live",
                         description="where copies of an image live").add_subparsers(
        dest="sub2", metavar="SUBCOMMAND", required=True, prog="immctl image artifact")
    sp = add(art, "add", cmd_artifact_add, "record a copy in a provider/region",
             "immctl image artifact add web@v2 --provider aws-prod --region us-east-1 "
             "--image-id ami-0abc1234def567890")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp.add_argument("--provider", required=True, help="a configured provider name, e.g. aws-prod")
    sp.add_argument("--region", required=True, help="the region the copy is in")
    sp.add_argument("--image-id", required=True, help="the provider's id, e.g. ami-0abc...")
    sp = add(img, "revoke", cmd_image_revoke, "revoke an image so it must not run",
             "immctl image revoke web@v1 --reason CVE-2026-1234 --cascade")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp.add_argument("--reason", required=True, help="why, kept in the ledger")
    sp.add_argument("--cascade", action="store_true", help="revoke its descendants too")
    sp.add_argument("--at", metavar="TIME", help="schedule it: RFC 3339 UTC, now, or +DURATION")
    sp.add_argument("--force", action="store_true",
                    help="with --at: even if the last audit sweep saw it running")
    sp.set_defaults(action="revoke")
    sp = add(img, "deprecate", _trust("cmd_image_lifecycle"),
             "mark an image deprecated: rollouts still allowed, with a warning",
             "immctl image deprecate web@v1 --reason 'superseded by v2'")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp.add_argument("--reason", default="", help="why, kept in the ledger")
    sp.set_defaults(action="deprecate", at=None, force=False)
    sp = add(img, "expire", _trust("cmd_image_lifecycle"),
             "from --at on, rollouts to the image are refused (rule not-expired)",
             "immctl image expire web@v1 --at +30d --reason 'end of support'")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp.add_argument("--at", required=True, metavar="TIME",
                    help="RFC 3339 UTC (2026-12-31T00:00:00Z), now, or +DURATION (+7d)")
    sp.add_argument("--reason", default="", help="why, kept in the ledger")
    sp.add_argument("--force", action="store_true",
                    help="even if the last audit sweep saw it running")
    sp.set_defaults(action="expire")
    sp = add(img, "attest", _trust("cmd_image_attest"),
             "attach an in-toto Statement v1 (signed by the daemon) to an image",
             "immctl image attest web@v2 --predicate-type https://slsa.dev/provenance/v1 "
             "--predicate provenance.json")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp.add_argument("--predicate-type", required=True, metavar="URI",
                    help="the predicate's type URI, e.g. https://slsa.dev/provenance/v1")
    sp.add_argument("--predicate", required=True, metavar="FILE", help="a JSON object")
    sp = add(img, "attestations", _trust("cmd_image_attestations", guarded=False),
             "an image's attestations, each re-verified", "immctl image attestations web@v2")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp = add(img, "import-attestation", _trust("cmd_image_import_attestation"),
             "import an in-toto DSSE envelope signed by a [trust.builders] key",
             "immctl image import-attestation build-42.intoto.json")
    sp.add_argument("file", help="a DSSE envelope holding an in-toto Statement v1")
    sp = add(img, "lifecycle", _trust("cmd_image_lifecycle_show", guarded=False),
             "an image's deprecation, expiry and scheduled revocation records",
             "immctl image lifecycle web@v1")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp = add(img, "restore", cmd_image_restore, "lift a revocation", "immctl image restore web@v1")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")

    ch = group("channel", "movable, signed pointers SERVICE/STAGE -> image")
    sp = add(ch, "set", cmd_channel_set, "point a channel at an image",
             "immctl channel set web/production web@v2")
    sp.add_argument("name", help="SERVICE/STAGE, e.g. web/production")
    sp.add_argument("ref", help="the image: digest, prefix or name@version")
    sp = add(ch, "show", cmd_channel_show, "where a channel points",
             "immctl channel show web/production")
    sp.add_argument("name", help="SERVICE/STAGE")
    sp = add(ch, "resolve", cmd_channel_resolve,
             "the image a channel points at, from its signed, expiring head; with --provider "
             "the provider's image id of it (prints the id alone)",
             "immctl channel resolve web/production --provider aws-prod --region us-east-1")
    sp.add_argument("name", help="SERVICE/STAGE")
    sp.add_argument("--provider", help="a configured provider name: print its image id")
    sp.add_argument("--region", help="the region (optional when the image has one there)")
    sp.add_argument("--max-age", metavar="DURATION",
                    help="refuse a head signed longer ago (e.g. 10m, 1h)")
    sp.add_argument("--key", metavar="PUB.pem", help="the daemon's public key (default: ask it)")
    sp.add_argument("--statement", metavar="FILE",
                    help="check a saved head statement offline (needs --key)")
    sp = add(ch, "history", cmd_channel_history, "every move of a channel",
             "immctl channel history web/production")
    sp.add_argument("name", help="SERVICE/STAGE")
    add(ch, "list", cmd_channel_list, "every channel", "immctl channel list")

    led = group("ledger", "the Merkle ledger of every signed record")
    add(led, "head", cmd_ledger_head, "size, root and the signed checkpoint", "immctl ledger head")
    sp = add(led, "proof", cmd_ledger_proof, "inclusion proof of a leaf",
             "immctl ledger proof --index 1 --json")
    sp.add_argument("--index", type=ascii_int, required=True, help="the leaf, from 0")
    sp.add_argument("--size", type=ascii_int, help="tree size to prove against (default: current)")
    sp = add(led, "consistency", cmd_ledger_consistency, "consistency proof between two sizes",
             "immctl ledger consistency --from 10 --to 20")
    sp.add_argument("--from", dest="from_", type=ascii_int, required=True,
                    help="the older tree size")
    sp.add_argument("--to", type=ascii_int, help="the newer tree size (default: current)")
    sp = add(led, "leaf", cmd_ledger_leaf, "one leaf: its hash and the signed record (JSON)",
             "immctl ledger leaf 1")
    sp.add_argument("index", type=ascii_int, help="the leaf, from 0")
    sp = add(led, "verify", cmd_ledger_verify, "recompute the tree and check every signature; "
             "with --checkpoint, check an exported checkpoint offline", "immctl ledger verify")
    sp.add_argument("--checkpoint", metavar="FILE", help="a saved checkpoint (offline)")
    sp.add_argument("--key", metavar="PUB.pem", help="the log's public key (offline)")
    sp.add_argument("--origin", help="the log's origin (default: the checkpoint's first line)")
    sp.add_argument("--max-age", metavar="DURATION",
                    help="refuse a checkpoint signed longer ago (e.g. 10m, 1h)")

    if only is None or only in ROLLOUT_COMMANDS:
        from . import rollout_cmds
        rollout_cmds.register(top, add, group)
    if only is None or only in AUDIT_COMMANDS:
        from . import audit_cmds
        audit_cmds.register(top, add, group)
    if only is None or only in TOKEN_COMMANDS:
        from . import token_cmds
        token_cmds.register(top, add, group)
    if only is None or only in TRUST_COMMANDS:
        from . import trust_cmds
        trust_cmds.register(top, add, group)
    if sub_only is not None and not all(f.built for f in filters):
        return build_parser(only)  # a subcommand name argparse must refuse (or none): all of them
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse asks gettext for a translation of each word it prints or keeps (a catalog
    # search that imports locale); immctl speaks English and Python ships no catalog for
    # argparse's domain, so the words are taken as they are.
    argparse._ = str  # type: ignore[attr-defined]
    rest, as_json, sock = split_globals(argv)
    words = [a for a in rest if not a.startswith("-")][:2]  # the command and its subcommand
    parser = build_parser(*words)
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
            if cands and not all(str(x) in e.message for x in cands):
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
