"""immctl audit: sweeps, findings, instances, blast radius, signed exports and their verification.

``audit verify`` runs offline: it needs the bundle and a public key, never the daemon, and
imports its verifier only when it runs so immctl stays quick to start for everything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import EXIT_ERROR, EXIT_USAGE, EXIT_VERIFY_FAILED
from .client import Client, Fail
from .render import block, emit_json, emit_list, short, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any

TERMINAL = ("completed", "partial", "failed", "aborted")


class _Progress:
    """At most one progress line a second on stderr (rewritten in place on a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()  # nothing in the first second: a quick job shows its end
        self.shown = False

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self.last < 1.0):
            return
        self.last = now
        self.shown = True
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + ("" if self.tty else "\n"))
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")


def _fail(message: str, code: int = EXIT_ERROR) -> Exception:
    return Fail(message, code)


def summarize(verdict: str, detail: dict[str, Any] | None) -> str:
    """One line saying why, for people."""
    d = detail or {}
    if verdict == "unknown-image":
        return f"image id {d.get('image_id')} is in no catalog artifact"
    if verdict == "digest-mismatch":
        return f"tag says {short(d.get('tag'))}, image is {short(d.get('image'))}"
    if verdict == "revoked":
        return f"image revoked: {d.get('reason')} (by {d.get('actor')})"
    if verdict == "signature-invalid":
        problems = d.get("problems") or ["?"]
        return str(problems[0]) + (f" (+{len(problems) - 1})" if len(problems) > 1 else "")
    if verdict == "not-current-channel":
        return f"{d.get('channel')} points at {short(d.get('head'))}"
    if verdict == "outside-rollout":
        return str(d.get("reason"))
    if verdict == "too-old":
        return f"{d.get('age_s')}s old, service allows {d.get('max_instance_age_s')}s"
    if verdict == "tampered":
        parts = [f"{k} {', '.join(d[k])}" for k in ("changed", "added", "removed") if d.get(k)]
        return "; ".join(parts) or f"tree is {short(d.get('found'))}"
    return ""


# -- sweeps ---------------------------------------------------------------------------------

def _sweep_line(s: dict[str, Any]) -> str:
    p = s.get("progress") or {}
    providers = ", ".join(f"{n} {v['instances']} ({v['state']})"
                          for n, v in sorted((p.get("providers") or {}).items()))
    return (f"sweep {s['id']} {s['state']}: {p.get('instances', s['instances'])} instance(s)"
            + (f" [{providers}]" if providers else ""))


def cmd_run(c: Client, a: argparse.Namespace) -> int:
    s = c.request("POST", "/v1/audit/sweeps", {})
    if not a.wait:
        if a.json:
            emit_json(s)
        else:
            print(f"sweep {s['id']} " + ("started" if s["started"] else "already running")
                  + "; 'immctl audit status' follows it")
        return 0
    progress = _Progress(a.json)
    while s["state"] == "running":
        progress.show(_sweep_line(s))
        time.sleep(0.3)
        s = c.request("GET", f"/v1/audit/sweeps/{s['id']}")
    progress.show(_sweep_line(s), force=True)  # the final counts, not the first poll's
    progress.done()
    if a.json:
        emit_json(s)
    else:
        show_sweep(s)
        opened = c.request("GET", "/v1/audit/findings", query={"open": 1, "limit": 1})["open"]
        print("open findings: " + (", ".join(f"{v} {n}" for v, n in opened.items()) or "none"))
    return 0 if s["state"] == "completed" else EXIT_ERROR


def show_sweep(s: dict[str, Any]) -> None:
    block([("sweep", s["id"]), ("state", s["state"]), ("started", f"{s['started_at']} by "
                                                                   f"{s['actor']}"),
           ("finished", s["finished_at"]),
           ("instances", (s.get("progress") or {}).get("instances", s["instances"])),
           ("observations", f"{s['observations_opened']} opened, "
                            f"{s['observations_closed']} closed"),
           ("findings", f"{s['findings_opened']} opened, {s['findings_resolved']} resolved"),
           ("ledger records", s["records"]), ("error", s["error"])])
    p = s.get("progress")
    if p:
        print("progress:")
        table([{"name": n, **v} for n, v in sorted(p["providers"].items())],
              [("name", "  PROVIDER"), ("instances", "INSTANCES"), ("state", "STATE"),
               ("error", "ERROR")])


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    s = c.request("GET", "/v1/audit/sweeps/latest")
    if a.json:
        emit_json(s)
    else:
        show_sweep(s)
    return 0


# -- findings, instances ----------------------------------------------------------------------

def _pages(c: Client, path: str, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = c.request("GET", path, query={**query, "after": after, "limit": 5000})
        rows += page[key]
        after = page["next"]
        if not after:
            return rows


def cmd_findings(c: Client, a: argparse.Namespace) -> int:
    rows = _pages(c, "/v1/audit/findings", "findings",
                  {"open": 1 if a.open else None, "verdict": a.verdict, "instance": a.instance})
    if a.json:
        emit_list(rows)
        return 0
    for r in rows:
        r["why"] = summarize(r["verdict"], r["detail"])
        r["where"] = f"{r['provider']}/{r['region']}"
    table(rows, [("id", "ID"), ("verdict", "VERDICT"), ("instance_id", "INSTANCE"),
                 ("where", "WHERE"), ("service", "SERVICE"), ("status", "STATUS"),
                 ("opened_at", "OPENED"), ("resolved_at", "RESOLVED"), ("why", "WHY")],
          empty="no open findings" if a.open else "no findings")
    return 0


def cmd_instances(c: Client, a: argparse.Namespace) -> int:
    rows = _pages(c, "/v1/audit/instances", "instances",
                  {"verdict": a.verdict, "service": a.service})
    if a.json:
        emit_list(rows)
        return 0
    for r in rows:
        r["where"] = f"{r['provider']}/{r['region']}"
        r["img"] = r["image"] or r["image_id"]
    table(rows, [("instance_id", "INSTANCE"), ("where", "WHERE"), ("service", "SERVICE"),
                 ("img", "IMAGE"), ("first_seen", "SINCE"), ("state", "STATE"),
                 ("verdicts", "VERDICTS")],
          empty="no instances seen; 'immctl audit run --wait' sweeps the providers")
    return 0


def cmd_blast_radius(c: Client, a: argparse.Namespace) -> int:
    if a.replace:
        if not a.ref:
            raise _fail("--replace needs a REF: the image whose blast radius to replace",
                        EXIT_USAGE)
        r = c.request("POST", "/v1/audit/blast-radius", {"ref": a.ref, "replace": True})
    else:
        r = c.request("GET", "/v1/audit/blast-radius", query={"ref": a.ref})
    if a.json:
        emit_json(r)
        return 0
    for img in r["images"]:
        img["short"] = short(img["digest"])
        img["status"] = "revoked" if img["revoked"] else "active"
    table(r["images"], [("short", "DIGEST"), ("image", "IMAGE"), ("status", "STATUS"),
                        ("reason", "REASON")], empty="no revoked images")
    services = ", ".join(f"{k or '-'} ({v})" for k, v in r["services"].items())
    print(f"\n{r['total']} running instance(s)"
          + (f" in services {services}" if services else "")
          + (f" (as of sweep {r['as_of']['id']}, {r['as_of']['finished_at']})"
             if r.get("as_of") else " (no sweep has run yet)"))
    for i in r["instances"]:
        i["where"] = f"{i['provider']}/{i['region']}"
    if r["instances"]:
        table(r["instances"], [("instance_id", "INSTANCE"), ("where", "WHERE"),
                               ("service", "SERVICE"), ("image", "IMAGE"),
                               ("first_seen", "SINCE")])
    for svc, why in (r.get("refused") or {}).items():
        print(f"not replaced: {svc}: {why}", file=sys.stderr)
    for ro in r.get("rollouts") or []:
        print(f"started rollout {ro.get('id')} of {ro.get('service')}")
    return 0


# -- export and verify ------------------------------------------------------------------------

def cmd_export(c: Client, a: argparse.Namespace) -> int:
    query = {k: v for k, v in (("since", a.since), ("until", a.until), ("format", a.format))
             if v}
    from urllib.parse import urlencode

    path = "/v1/audit/export" + ("?" + urlencode(query) if query else "")
    conn, resp = c.open_stream("GET", path, "application/x-ndjson, text/csv")
    to_stdout = a.out == "-"
    part = a.out + ".part"
    out = sys.stdout.buffer if to_stdout else open(part, "wb")  # noqa: SIM115 - closed below
    progress = _Progress(a.json)
    lines = size = 0
    tail = b""
    try:
        while True:
            data = resp.read1(1 << 20)
            if not data:
                break
            out.write(data)
            size += len(data)
            lines += data.count(b"\n")
            tail = (tail + data)[-4096:]
            progress.show(f"export: {lines} lines, {size / 1e6:.1f} MB")
        progress.show(f"export: {lines} lines, {size / 1e6:.1f} MB", force=True)
    except OSError as e:
        raise _fail(f"export interrupted after {lines} lines: {e}") from None
    finally:
        progress.done()
        conn.close()
        if not to_stdout:
            out.close()
    last = tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    if b'"type":"signature"' not in last.replace(b'""', b'"'):
        if not to_stdout:
            os.unlink(part)
        raise _fail(f"the export was cut short after {lines} lines (no signature line); "
                    "see the immd log")
    if not to_stdout:
        os.replace(part, a.out)
    if a.json:
        emit_json({"out": a.out, "lines": lines, "bytes": size, "format": a.format or "jsonl"})
    elif not to_stdout:
        print(f"wrote {a.out}: {lines} lines, {size} bytes; check it with 'immctl audit verify "
              f"{a.out} --key PUB.pem' ('immctl keys export' gives the key)")
    return 0


def cmd_verify(c: Client, a: argparse.Namespace) -> int:
    from ..audit.bundle_verify import Refused, read_public_key, verify_file

    try:
        pub = read_public_key(a.key)
    except OSError as e:
        raise _fail(f"cannot read key {a.key}: {e.strerror}", EXIT_USAGE) from None
    except ValueError as e:  # Refused, or not an Ed25519 PEM public key
        raise _fail(str(e), EXIT_USAGE) from None
    try:
        result = verify_file(a.file, pub)
    except OSError as e:
        raise _fail(f"cannot read bundle {a.file}: {e.strerror}", EXIT_USAGE) from None
    except Refused as e:
        raise _fail(f"{a.file}: {e}", EXIT_USAGE) from None
    if result.ok and a.max_age:
        from . import trust_cmds

        rc = trust_cmds.guard(lambda _c, a: trust_cmds.check_bundle_age(a.file, a.max_age))(c, a)
        if rc:
            return int(rc)
    if a.json:
        emit_json(result.to_dict())
    elif result.ok:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items())) or "no events"
        print(f"ok: {a.file}: {result.lines} lines ({counts}) proven against the checkpoint at "
              f"ledger size {result.checkpoint_size}; signature by {a.key} verifies")
    else:
        print(f"FAILED: {a.file}: {result.failure}", file=sys.stderr)
    return 0 if result.ok else EXIT_VERIFY_FAILED


def register(sub: Any, add: Any, group: Any) -> None:
    g = group("audit", "prove what runs: sweeps, findings, signed exports")
    sp = add(g, "run", cmd_run, "sweep every provider now and judge every instance",
             "immctl audit run --wait")
    sp.add_argument("--wait", action="store_true", help="wait for it, progress on stderr")
    add(g, "status", cmd_status, "the latest sweep and its progress", "immctl audit status")
    sp = add(g, "findings", cmd_findings, "findings: instances that are not ok",
             "immctl audit findings --open --verdict tampered")
    sp.add_argument("--open", action="store_true", help="only open findings")
    sp.add_argument("--verdict", help="only this verdict (e.g. tampered)")
    sp.add_argument("--instance", help="only this instance id")
    sp = add(g, "instances", cmd_instances,
             "every instance the sweeps see: its image, since when, its verdicts",
             "immctl audit instances --service web")
    sp.add_argument("--verdict", help="only instances with this verdict")
    sp.add_argument("--service", help="only this service")
    sp = add(g, "blast-radius", cmd_blast_radius,
             "running instances on an image or its descendants (default: any revoked image)",
             "immctl audit blast-radius web@v1")
    sp.add_argument("ref", nargs="?", help="digest, prefix, name@version or channel:S/T")
    sp.add_argument("--replace", action="store_true",
                    help="start rollouts replacing them with each service's channel head")
    sp = add(g, "export", cmd_export, "write a signed audit bundle of a time range",
             "immctl audit export --out q4.jsonl --since 2026-10-01T00:00:00Z")
    sp.add_argument("--out", required=True, help="the bundle file ('-' for stdout)")
    sp.add_argument("--since", help="from this time (RFC 3339, a date, or Unix seconds)")
    sp.add_argument("--until", help="up to (not including) this time")
    sp.add_argument("--format", choices=["jsonl", "csv"], help="JSON Lines (default) or CSV")
    sp = add(g, "verify", cmd_verify,
             "check a bundle offline: signature, checkpoint, every line's proof, order",
             "immctl audit verify q4.jsonl --key imm.pub.pem")
    sp.add_argument("file", help="a bundle written by 'immctl audit export'")
    sp.add_argument("--key", required=True, help="the public key PEM ('immctl keys export')")
    sp.add_argument("--max-age", metavar="DURATION",
                    help="refuse a bundle whose checkpoint was signed longer ago (e.g. 1h)")

