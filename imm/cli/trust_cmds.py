"""immctl operator / change / approve commands: people who sign for themselves.

``approve`` signs on this machine with ``ssh-keygen -Y sign -n imm`` (a key file, or a public
key file whose private half is in ssh-agent), so immd never sees a private key.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_USAGE
from .client import Client, seg
from .render import block, emit_json, emit_list, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any


class Usage(Exception):
    """Bad local input (a file that cannot be read); immctl exits 2 with the message."""


def read_text(path: str, what: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise Usage(f"{what} {path} does not exist") from None
    except OSError as e:
        raise Usage(f"cannot read {what} {path}: {e.strerror}") from None
    if len(raw) > limit:
        raise Usage(f"{what} {path} is larger than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Usage(f"{what} {path} is not UTF-8 text") from None


def guard(fn: Any) -> Any:
    def run(c: Client, a: argparse.Namespace) -> int:
        try:
            return int(fn(c, a))
        except Usage as e:
            if a.json:
                emit_json({"error": {"code": "usage", "message": str(e), "detail": None}})
            print(f"immctl: {e}", file=sys.stderr)
            return EXIT_USAGE
        except Refused as e:
            if a.json:
                emit_json({"error": {"code": "verification-failed", "message": str(e),
                                     "detail": None}})
            print(f"immctl: {e}", file=sys.stderr)
            return e.code
    return run


# -- operators ------------------------------------------------------------------------------

def cmd_operator_add(c: Client, a: argparse.Namespace) -> int:
    text = read_text(a.ssh_key, "SSH public key file", 16384)
    r = c.request("POST", "/v1/operators", {"name": a.name, "public_key": text,
                                            "source": f"SSH public key file {a.ssh_key}"})
    if a.json:
        emit_json(r)
    else:
        print(f"operator {r['name']}: {r['key_type']} {r['fingerprint']} "
              f"(ledger leaf {r['ledger_index']})")
    return 0


def cmd_operator_list(c: Client, a: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/operators")["operators"]
    if a.json:
        emit_list(rows)
    else:
        table(rows, [("name", "NAME"), ("key_type", "TYPE"), ("fingerprint", "FINGERPRINT"),
                     ("added_at", "ADDED"), ("actor", "BY"), ("ledger_index", "LEAF")],
              empty="no operators; 'immctl operator add NAME --ssh-key FILE.pub' adds one")
    return 0


def cmd_operator_remove(c: Client, a: argparse.Namespace) -> int:
    r = c.request("DELETE", f"/v1/operators/{seg(a.name)}")
    if a.json:
        emit_json(r)
    else:
        print(f"removed operator {r['name']} ({r['fingerprint']}; ledger leaf "
              f"{r['ledger_index']})")
    return 0


# -- protected changes ----------------------------------------------------------------------

def pending(r: Any, a: argparse.Namespace) -> bool:
    """If the daemon answered with a pending change (the verb is protected), say so."""
    if not (isinstance(r, dict) and r.get("pending") is True and "statement" in r):
        return False
    if a.json:
        emit_json(r)
        return True
    print(f"change {r['id']} is pending: {describe(r)}")
    print(f"  needs {r['approvals_needed']} approval(s) from: {', '.join(r['approvers'])} "
          f"(protected by [protect.\"{r['protect']}\"]), until {r['expires_at']}")
    print(f"  each approver runs: immctl approve {r['id']} --key ~/.ssh/id_ed25519")
    print(f"  (or signs 'immctl change statement {r['id']}' with ssh-keygen -Y sign -n imm and "
          f"runs immctl approve {r['id']} --signature FILE.sig)")
    return True


def describe(r: dict[str, Any]) -> str:
    t = r["terms"]
    if r["action"] == "channel-set":
        return f"channel set {r['target']} -> {t['image']} (was {t['previous'] or 'unset'})"
    if r["action"] == "rollout-start":
        return f"rollout start {r['target']} --image {t['image']} ({t['strategy']})"
    if r["action"] == "rollout-undo":
        return f"rollout undo {r['target']} (back to {t['image']}, undoing {t['undo_of']})"
    if r["action"] == "image-restore":
        return f"image restore {r['target']} (on {', '.join(t['channels'])})"
    return f"{r['action']} {r['target']}"


def show_change(r: dict[str, Any]) -> None:
    block([("change", r["id"]), ("state", r["state"]), ("what", describe(r)),
           ("requested", f"{r['created_at']} by {r['requested_by']}"),
           ("expires", r["expires_at"]),
           ("approvals", f"{len(r['approved_by'])} of {r['approvals_needed']}"
                         + (f" ({', '.join(r['approved_by'])})" if r["approved_by"] else "")),
           ("approvers", r["approvers"]), ("result", r["result"]),
           ("ledger leaf", r["ledger_index"])])
    if r["approvals"]:
        print("approvals:")
        table(r["approvals"], [("operator", "  OPERATOR"), ("fingerprint", "KEY"),
                               ("at", "AT"), ("ledger_index", "LEAF")])


def cmd_change_list(c: Client, a: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/changes", query={"all": "1" if a.all else None})["changes"]
    if a.json:
        emit_list(rows)
        return 0
    for r in rows:
        r["what"] = describe(r)
        r["count"] = f"{len(r['approved_by'])}/{r['approvals_needed']}"
    table(rows, [("id", "CHANGE"), ("state", "STATE"), ("count", "APPROVALS"), ("what", "WHAT"),
                 ("expires_at", "EXPIRES")],
          empty="no pending changes" + ("" if a.all else " (--all shows past ones)"))
    return 0


def cmd_change_show(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/changes/{seg(a.id)}")
    if a.json:
        emit_json(r)
    else:
        show_change(r)
    return 0


def cmd_change_statement(c: Client, a: argparse.Namespace) -> int:
    """The exact bytes to sign, nothing added (no newline)."""
    r = c.request("GET", f"/v1/changes/{seg(a.id)}")
    sys.stdout.flush()
    sys.stdout.buffer.write(r["statement"].encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


def cmd_change_cancel(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/changes/{seg(a.id)}/cancel", {})
    if a.json:
        emit_json(r)
    else:
        print(f"change {r['id']} cancelled")
    return 0


def ssh_sign(key: str, statement: bytes) -> str:
    """``ssh-keygen -Y sign -n imm -f KEY`` here, on the operator's machine: KEY is a private
    key file, or a public key whose private half ssh-agent holds."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise Usage("ssh-keygen is not installed (Debian: openssh-client); sign elsewhere and "
                    "pass --signature FILE")
    with tempfile.TemporaryDirectory(prefix="imm-approve-") as tmp:
        msg = f"{tmp}/statement"
        with open(msg, "wb") as f:
            f.write(statement)
        cp = subprocess.run([exe, "-Y", "sign", "-n", "imm", "-f", key, "-q", msg],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            raise Usage(f"ssh-keygen -Y sign with {key} failed: "
                        + (cp.stderr.strip() or f"exit {cp.returncode}"))
        with open(msg + ".sig") as f:
            return f.read()


def cmd_approve(c: Client, a: argparse.Namespace) -> int:
    if bool(a.key) == bool(a.signature):
        raise Usage("say how to sign: --key FILE (ssh-keygen -Y sign runs here) or "
                    "--signature FILE (a signature made with ssh-keygen -Y sign -n imm)")
    r = c.request("GET", f"/v1/changes/{seg(a.change)}")
    if a.signature:
        sig = read_text(a.signature, "signature file", 16384)
    else:
        sig = ssh_sign(a.key, r["statement"].encode("utf-8"))
    r = c.request("POST", f"/v1/changes/{seg(a.change)}/approvals", {"signature": sig})
    if a.json:
        emit_json(r)
        return 0
    print(f"approved change {r['id']} ({len(r['approved_by'])} of {r['approvals_needed']}: "
          f"{', '.join(r['approved_by'])})")
    if r["state"] == "applied":
        print(f"carried out: {describe(r)}: {r['result']}")
    elif r["state"] == "failed":
        print(f"approved, but it could not be carried out: {r['result']['error']}",
              file=sys.stderr)
        return 1
    return 0


# -- image lifecycle ----------------------------------------------------------------------------

def cmd_image_lifecycle(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/lifecycle/{a.action}", {
        "at": a.at, "reason": a.reason or "", "force": bool(a.force)})
    if a.json:
        emit_json(r)
        return 0
    what = {"deprecate": "deprecated", "expire": f"expires at {r['at']}",
            "revoke": f"revocation scheduled for {r['at']}"}[a.action]
    print(f"image {r['digest']}: {what} (ledger leaf {r['ledger_index']})")
    if r["forced_over"]:
        print(f"warning: forced although running on {', '.join(r['forced_over'])}",
              file=sys.stderr)
    return 0


def cmd_image_lifecycle_show(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/images/{seg(a.ref)}/lifecycle")
    if a.json:
        emit_json(r)
        return 0
    for w in r["status"]["warnings"]:
        print(f"warning: {w}")
    table(r["records"], [("action", "ACTION"), ("at", "AT"), ("state", "STATE"),
                         ("reason", "REASON"), ("actor", "BY"), ("ledger_index", "LEAF")],
          empty="no lifecycle records")
    return 0


# -- attestations -------------------------------------------------------------------------------

def _json_file(path: str, what: str) -> Any:
    import json

    text = read_text(path, what, 1 << 20)
    try:
        return json.loads(text)
    except ValueError as e:
        raise Usage(f"{what} {path} is not JSON ({e})") from None


def cmd_image_attest(c: Client, a: argparse.Namespace) -> int:
    predicate = _json_file(a.predicate, "predicate file")
    if not isinstance(predicate, dict):
        raise Usage(f"predicate file {a.predicate} holds a JSON {type(predicate).__name__}; an "
                    "in-toto predicate is a JSON object")
    r = c.request("POST", f"/v1/images/{seg(a.ref)}/attestations",
                  {"predicate_type": a.predicate_type, "predicate": predicate})
    if a.json:
        emit_json(r)
    else:
        print(("attested " if r["created"] else "already attested ")
              + f"{r['digest']}: {r['predicate_type']} (ledger leaf {r['ledger_index']})")
    return 0


def cmd_image_attestations(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/images/{seg(a.ref)}/attestations")
    if a.json:
        emit_list(r["attestations"])
        return 0
    for x in r["attestations"]:
        x["ok"] = "verified" if x["verified"] else f"FAILED: {x.get('problem')}"
    table(r["attestations"], [("predicate_type", "PREDICATE TYPE"), ("signer", "SIGNED BY"),
                              ("ok", "CHECK"), ("at", "AT"), ("ledger_index", "LEAF")],
          empty=f"no attestations for {r['digest']}")
    return 0


def cmd_image_import_attestation(c: Client, a: argparse.Namespace) -> int:
    env = _json_file(a.file, "attestation file")
    if not isinstance(env, dict):
        raise Usage(f"attestation file {a.file} is not a DSSE envelope (a JSON object)")
    r = c.request("POST", "/v1/attestations/import", {"envelope": env})
    if a.json:
        emit_json(r)
    else:
        print(("imported " if r["created"] else "already imported ")
              + f"{r['predicate_type']} for {r['digest']}, signed by {r['signer']} "
              f"(ledger leaf {r['ledger_index']})")
    return 0


# -- fresh metadata -----------------------------------------------------------------------------

def _duration(text: str | None) -> int | None:
    if text is None:
        return None
    from ..catalog.freshness import parse_duration
    from ..errors import ConfigError

    try:
        return parse_duration(text, "--max-age")
    except ConfigError as e:
        raise Usage(e.message) from None


def _public_key(path: str) -> tuple[Any, str]:
    from ..audit.bundle_verify import keyid_of, load_public_key

    try:
        with open(path, "rb") as f:
            pub = load_public_key(f.read(), path)
    except OSError as e:
        raise Usage(f"cannot read key {path}: {e.strerror}") from None
    except ValueError as e:
        raise Usage(str(e)) from None
    return pub, keyid_of(pub)


def _verified(fn: Any) -> Any:
    """Run an offline check; a VerificationFailed becomes exit 7 with its message."""
    from ..errors import EXIT_VERIFY_FAILED, VerificationFailed

    try:
        return fn()
    except VerificationFailed as e:
        raise Refused(e.message, EXIT_VERIFY_FAILED) from None


class Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def verified_head(c: Client, a: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The channel's signed head statement, verified and fresh (refused when expired or older
    than --max-age); with --statement FILE it is read offline (no daemon)."""
    from ..catalog.freshness import verify_head

    max_age = _duration(a.max_age)
    if a.statement:
        if not a.key:
            raise Usage("--statement checks offline and needs --key PUB.pem ('immctl keys "
                        "export' gives it)")
        import json

        try:
            doc = json.loads(read_text(a.statement, "head statement"))
        except ValueError as e:
            raise Usage(f"head statement {a.statement} is not JSON ({e})") from None
        env = doc.get("statement", doc) if isinstance(doc, dict) else doc
    else:
        doc = c.request("GET", f"/v1/channels/{seg(a.name)}/head")
        env = doc["statement"]
    if a.key:
        pub, keyid = _public_key(a.key)
    else:
        from ..audit.bundle_verify import keyid_of, load_public_key

        keyid = (env.get("signatures") or [{}])[0].get("keyid", "")
        pem = c.request("GET", "/v1/keys/export", query={"keyid": keyid})["pem"]
        pub = load_public_key(pem.encode(), "the daemon's key")
        keyid = keyid_of(pub)
    return _verified(lambda: verify_head(env, pub, keyid, a.name, max_age)), env


def cmd_channel_resolve(c: Client, a: argparse.Namespace) -> int:
    """Where a channel points, from its signed head statement."""
    body, env = verified_head(c, a)
    if a.json:
        emit_json({"channel": body["channel"], "digest": body["digest"], "seq": body["seq"],
                   "issued": body["issued"], "expires": body["expires"], "statement": env})
    else:
        print(body["digest"])
    return 0


def verify_checkpoint_offline(a: argparse.Namespace) -> int:
    """``ledger verify --checkpoint FILE --key PUB.pem [--max-age D]``: no daemon."""
    from ..catalog import checkpoint
    from ..catalog.freshness import check_age, checkpoint_time, human

    if not a.key:
        raise Usage("--checkpoint checks offline and needs --key PUB.pem ('immctl keys export')")
    pub, _ = _public_key(a.key)
    note = read_text(a.checkpoint, "checkpoint")
    origin = note.split("\n", 1)[0]
    try:
        text = checkpoint.verify_note(note, a.origin or origin, pub)
        _, size, root = checkpoint.parse_body(text)
        when = checkpoint_time(text)
    except ValueError as e:
        print(f"FAILED: {a.checkpoint}: {e}", file=sys.stderr)
        return 7
    max_age = _duration(a.max_age)
    try:
        age = _verified(lambda: check_age(when, max_age, f"checkpoint {a.checkpoint}")
                        if max_age is not None else None)
    except Refused as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return e.code
    if a.json:
        emit_json({"ok": True, "origin": a.origin or origin, "size": size, "root": root.hex(),
                   "time": when, "age_s": age})
    else:
        print(f"ok: checkpoint of {a.origin or origin} at size {size} verifies"
              + (f"; signed {human(age)} ago" if age is not None else ""))
    return 0


def check_bundle_age(path: str, max_age: str) -> int:
    """``audit verify --max-age``: the bundle's checkpoint must be young enough."""
    import csv
    import json

    from ..catalog.freshness import check_age, checkpoint_time

    seconds = _duration(max_age)
    assert seconds is not None
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline()
        if not first.startswith("{"):  # CSV: a row of column names, then the header line
            first = f.readline()
    try:
        header = json.loads(first) if first.startswith("{") else json.loads(
            next(csv.reader([first]))[-1])
        note = header["checkpoint"]
    except (ValueError, KeyError, StopIteration, IndexError, TypeError):
        raise Usage(f"cannot find the checkpoint in the header of {path}") from None
    text = note[: note.rfind("\n\n") + 1]
    _verified(lambda: check_age(checkpoint_time(text), seconds, f"the checkpoint of {path}"))
    return 0


def cmd_witness_info(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/witness")
    if a.json:
        emit_json(r)
    else:
        block([("origin", r["origin"]), ("log vkey", r["log_vkey"]),
               ("witness", r["witness_name"] or "(not a witness: set [trust] witness_name)"),
               ("witness vkey", r["witness_vkey"]), ("witnessing", r["witnessing"]),
               ("requires", f"{r['witnesses_required']} witness cosignature(s)")])
    return 0


def register(sub: Any, add: Any, group: Any) -> None:
    op = group("operator", "people who approve protected changes with their SSH keys")
    sp = add(op, "add", guard(cmd_operator_add), "register an operator's SSH public key",
             "immctl operator add sre-1 --ssh-key ~/.ssh/id_ed25519.pub")
    sp.add_argument("name", help="the operator's name, as [protect] approvers lists it")
    sp.add_argument("--ssh-key", required=True, metavar="PUBKEY_FILE",
                    help="the operator's public key (e.g. ~/.ssh/id_ed25519.pub)")
    add(op, "list", cmd_operator_list, "registered operators", "immctl operator list")
    sp = add(op, "remove", cmd_operator_remove, "remove an operator", "immctl operator remove sre-1")
    sp.add_argument("name", help="a registered operator")

    ch = group("change", "protected changes waiting for (or done after) k approvals")
    sp = add(ch, "list", cmd_change_list, "pending changes", "immctl change list")
    sp.add_argument("--all", action="store_true", help="applied, failed, cancelled too")
    sp = add(ch, "show", cmd_change_show, "one change and its approvals", "immctl change show CHANGE")
    sp.add_argument("id", help="the change id, as 'immctl change list' shows it")
    sp = add(ch, "statement", cmd_change_statement,
             "the exact bytes approvers sign (ssh-keygen -Y sign -n imm)",
             "immctl change statement CHANGE > change.txt")
    sp.add_argument("id", help="the change id")
    sp = add(ch, "cancel", cmd_change_cancel, "cancel a pending change", "immctl change cancel CHANGE")
    sp.add_argument("id", help="the change id")
    sp = add(sub, "approve", guard(cmd_approve), "approve a pending change with your SSH key",
             "immctl approve CHANGE --key ~/.ssh/id_ed25519")
    sp.add_argument("change", help="the change id, as 'immctl change list' shows it")
    sp.add_argument("--key", metavar="FILE",
                    help="your SSH private key, or its .pub with the key in ssh-agent")
    sp.add_argument("--signature", metavar="FILE", help="an SSHSIG made over the statement")
    w = group("witness", "cosigning other imm logs' checkpoints, and being cosigned")
    add(w, "info", cmd_witness_info, "this log's and this witness's verifier keys",
        "immctl witness info")
