"""immctl rollout / service / instance commands."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import EXIT_ERROR, EXIT_NOT_FOUND
from ..rollout.states import (
    ABORT,
    ACTIVE,
    BEGIN,
    COMPLETED,
    DONE,
    OP_ATTACH,
    OP_LAUNCH,
    PAUSE,
    PROMOTE,
    RESUME,
    RUNNING,
    STRATEGIES,
    TERMINAL,
    WAITS,
)
from . import trust_cmds
from .client import ApiError, Client, Fail, ascii_int, image_names, seg
from .render import block, emit_json, emit_list, short, table

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def _final_counts(r: dict[str, Any]) -> tuple[int, int, str]:
    """Launched, healthy and traffic share of the new instances of a finished rollout, from its
    journal: once it has ended its new instances are either the service or gone."""
    ops = {s["name"]: s["op"] for s in r["plan"]}
    launched: set[str] = set()
    healthy: set[str] = set()
    for j in r.get("journal") or []:
        if j["action"] != DONE:
            continue
        op = ops.get(j["step"])
        ids = j["detail"].get("instances") or []
        if op == OP_LAUNCH:
            launched.update(ids)
        elif op == OP_ATTACH and (j["detail"].get("healthy") or ids):
            healthy.update(ids)
    traffic = "-" if not launched else "100%" if r["state"] == COMPLETED else "0%"
    return len(launched), len(healthy), traffic


def _live_counts(r: dict[str, Any]) -> tuple[int, int, str]:
    new = [i for i in r["instances"] if i["new"]]
    healthy = sum(1 for i in new if i["healthy"])
    w_new = sum(i["weight"] or 0 for i in new)
    w_all = sum(i["weight"] or 0 for i in r["instances"]) or 1
    traffic = f"{100 * w_new // w_all}%" if r["instances"] else "-"
    return len(new), healthy, traffic


def _step_text(r: dict[str, Any], now: float | None = None) -> str:
    """The current step; a pause or bake counts down its seconds."""
    step = r["step"] or "-"
    if r["state"] != RUNNING:
        return step
    cur = next((s for s in r["plan"] if s["status"] == "running"), None)
    if cur is None or cur["op"] not in WAITS:
        return step
    begun = next((j for j in reversed(r.get("journal") or [])
                  if j["step"] == cur["name"] and j["action"] == BEGIN), None)
    if begun is None or "at_ms" not in begun["detail"]:
        return cur["name"]
    left = begun["detail"]["at_ms"] / 1000 + float(cur.get("seconds", 0)) - (now or time.time())
    return f"{cur['name']} {max(0, int(left + 0.999))}s left"


def progress_line(r: dict[str, Any], now: float | None = None) -> str:
    plan = r["plan"]
    done = sum(1 for s in plan if s["status"] == "done")
    launched, healthy, traffic = (_final_counts(r) if r["state"] in TERMINAL
                                  else _live_counts(r))
    waves = r.get("waves") or []
    where = ""
    if len(waves) > 1:
        cur = next((w for w in waves if w["status"] != "done"), waves[-1])
        where = f"wave {cur['wave']}/{len(waves)} "
    return (f"[{r['elapsed_s']:>4}s] {r['state']:<12} {where}step {done}/{len(plan)} "
            f"{_step_text(r, now):<10} new {launched} launched, {healthy} healthy, "
            f"traffic to new {traffic}")


def rollout_id(c: Client, ref: str) -> str:
    """A rollout id, or a service name standing for its active rollout, else its latest."""
    names = {s["name"] for s in c.request("GET", "/v1/services")["services"]}
    if ref not in names:
        return ref
    rows = c.request("GET", "/v1/rollouts", query={"service": ref, "limit": 50})["rollouts"]
    if not rows:
        raise Fail(f"service {ref} has had no rollout yet; 'immctl rollout start {ref} "
                   "--image REF' starts one", EXIT_NOT_FOUND)
    active = [x for x in rows if x["state"] in ACTIVE]
    return str((active or rows)[0]["id"])


def updates(c: Client, rid: str) -> Iterator[dict[str, Any]]:
    """The rollout each time it changes, streamed by the daemon (GET .../watch, one JSON object
    per line) until it ends; polled every 0.2 s from a daemon without that endpoint."""
    try:
        yield from c.stream_lines(f"/v1/rollouts/{seg(rid)}/watch")
        return
    except ApiError as e:
        if e.status != 404 or "no such API endpoint" not in e.message:
            raise  # a 404 naming the rollout is a real answer; no endpoint: an older daemon
    while True:
        r = c.request("GET", f"/v1/rollouts/{seg(rid)}")
        yield r
        if r["state"] in TERMINAL:
            return
        time.sleep(0.2)


def follow(c: Client, rid: str, as_json: bool) -> int:
    try:
        return _follow(c, rid, as_json)
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        service = rid.rsplit("-", 2)[0]
        print(f"immctl: stopped following; rollout {rid} goes on in immd. "
              f"'immctl rollout watch {service}' follows it again, "
              f"'immctl rollout abort {service}' rolls it back", file=sys.stderr)
        return 130


def _follow(c: Client, rid: str, as_json: bool) -> int:
    last = ""
    tty = sys.stderr.isatty()
    r: dict[str, Any] = {}
    for r in updates(c, rid):
        line = progress_line(r)
        if line != last and not as_json:
            sys.stderr.write(("\r\033[K" if tty else "") + line + ("" if tty else "\n"))
            sys.stderr.flush()
            last = line
        if r["state"] in TERMINAL:
            if tty and not as_json:
                sys.stderr.write("\n")
            break
    if as_json:
        emit_json(r)
    elif r["state"] == COMPLETED:
        print(f"rollout {rid} completed: {r['service']} runs {r['image_ref']} ({short(r['image'])})")
    else:
        print(f"rollout {rid} {r['state']}: {r['error']}", file=sys.stderr)
    return 0 if r["state"] == COMPLETED else EXIT_ERROR


def show(r: dict[str, Any], names: dict[str, str]) -> None:
    prev = r["previous"]
    block([("rollout", r["id"]), ("service", r["service"]), ("strategy", r["strategy"]),
           ("state", r["state"]), ("image", f"{r['image_ref']} ({short(r['image'])})"),
           ("previous", f"{names.get(prev, '-')} ({short(prev)})" if prev else None),
           ("started", f"{r['created_at']} by {r['actor']}"),
           ("elapsed", f"{r['elapsed_s']}s"), ("progress", progress_line(r)),
           ("error", r["error"])])
    waves = r.get("waves") or []
    if len(waves) > 1:
        print("waves:")
        table([{**w, "targets": ", ".join(w["targets"]), "bake": f"{w['bake_s']:g}s"}
               for w in waves],
              [("wave", "  WAVE"), ("targets", "TARGETS"), ("count", "INSTANCES"),
               ("bake", "BAKE"), ("status", "STATUS")])
    print("plan:")
    table(r["plan"], [("name", "  STEP"), ("status", "STATUS")])
    if r.get("analysis"):
        a = r["analysis"]
        print(f"analysis (latest): {a['name']} at {a['step']}: {a['verdict']}"
              + (" (dry run)" if a.get("dry_run") else "") + f" — {a['reason']}")
    if r["instances"]:
        print("instances:")
        table(r["instances"], [("id", "  ID"), ("new", "NEW"), ("weight", "WEIGHT"),
                               ("healthy", "HEALTHY"), ("state", "STATE")])


def cmd_start(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", "/v1/rollouts", {"service": a.service, "image": a.image,
                                           "strategy": a.strategy})
    if trust_cmds.pending(r, a):
        return 0
    for w in r.get("warnings") or []:
        print(f"warning: image {r['image_ref']} is {w}", file=sys.stderr)
    if a.wait:
        if not a.json:
            print(f"rollout {r['id']} started ({r['strategy']}, {len(r['plan'])} steps)")
        return follow(c, r["id"], a.json)
    if a.json:
        emit_json(r)
    else:
        print(f"rollout {r['id']} started; 'immctl rollout watch {a.service}' follows it")
    return 0


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/rollouts/{seg(rollout_id(c, a.id))}")
    if a.json:
        emit_json(r)
    else:
        show(r, image_names(c, [r["previous"]]))
    return 0


def cmd_analysis(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/rollouts/{seg(a.id)}/analysis")
    if a.json:
        emit_list(r["analysis"])
        return 0
    rows = []
    for x in r["analysis"]:
        last = x["measurements"][-1] if x["measurements"] else {"values": {}}
        rows.append({"step": x["step"], "name": x["name"], "kind": x["kind"],
                     "verdict": x["verdict"] + (" (dry run)" if x["dry_run"] else ""),
                     "n": len(x["measurements"]),
                     "last": ", ".join(f"{k}={v}" for k, v in last["values"].items()) or "-",
                     "ledger": x["ledger_index"]})
    table(rows, [("step", "STEP"), ("name", "ANALYSIS"), ("kind", "KIND"),
                 ("verdict", "VERDICT"), ("n", "MEASUREMENTS"), ("last", "LAST VALUE"),
                 ("ledger", "LEDGER")], empty="no analysis has run for this rollout")
    return 0


def cmd_watch(c: Client, a: argparse.Namespace) -> int:
    return follow(c, rollout_id(c, a.id), a.json)


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/rollouts", query={"service": a.service, "limit": a.limit})
    if a.json:
        emit_list(r["rollouts"])
        return 0
    names = image_names(c, [x["digest"] for x in r["rollouts"]])
    for x in r["rollouts"]:
        x["img"] = names.get(x["digest"], "-")
        x["short"] = short(x["digest"])
    table(r["rollouts"], [("id", "ID"), ("service", "SERVICE"), ("strategy", "STRATEGY"),
                          ("state", "STATE"), ("img", "IMAGE"), ("short", "DIGEST"),
                          ("created_at", "STARTED"), ("actor", "BY")], empty="no rollouts yet")
    return 0


def verb(name: str) -> Any:
    def run(c: Client, a: argparse.Namespace) -> int:
        rid = rollout_id(c, a.id)
        r = c.request("POST", f"/v1/rollouts/{seg(rid)}/{name}", {})
        if a.json:
            emit_json(r)
        else:
            print(f"rollout {rid}: {name} -> {r['state']}")
        return 0
    return run


def cmd_undo(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/services/{seg(a.service)}/undo", {})
    if trust_cmds.pending(r, a):
        return 0
    if a.wait:
        if not a.json:
            print(f"rollout {r['id']} started: {a.service} back to {r['image_ref']} "
                  f"({short(r['image'])})")
        return follow(c, r["id"], a.json)
    if a.json:
        emit_json(r)
    else:
        print(f"rollout {r['id']} started: {a.service} back to {r['image_ref']} "
              f"({short(r['image'])})")
    return 0


def cmd_service_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/services")
    if a.json:
        emit_list(r["services"])
        return 0
    table(r["services"], [("name", "SERVICE"), ("count", "COUNT"), ("strategy", "STRATEGY"),
                          ("router", "ROUTER"), ("route", "ROUTE"), ("channel", "CHANNEL")],
          empty="no services configured: declare [services.NAME] in the config")
    return 0


def _instance_rows(c: Client, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = image_names(c, [i["tags"].get("imm:digest") for i in instances])
    return [{"id": i["id"], "provider": i["provider"], "region": i["region"],
             "service": i["tags"].get("imm:service"),
             "image": names.get(i["tags"].get("imm:digest") or "", "-"),
             "digest": short(i["tags"].get("imm:digest")), "image_id": i["image_id"],
             "rollout": i["tags"].get("imm:rollout"), "address": i["address"],
             "state": i["state"]} for i in instances]


def cmd_service_show(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/services/{seg(a.name)}")
    if a.json:
        emit_json(r)
        return 0
    block([("service", r["name"]), ("count", r["count"]), ("strategy", r["strategy"]),
           ("router", f"{r['router']} route {r['route']}"), ("channel", r["channel"]),
           ("min ladder step", r["min_ladder_step"])])
    print("instances:")
    table(_instance_rows(c, r["instances"]),
          [("id", "  ID"), ("provider", "PROVIDER"), ("region", "REGION"), ("image", "IMAGE"),
           ("digest", "DIGEST"), ("rollout", "ROLLOUT"), ("address", "ADDRESS"),
           ("state", "STATE")], empty="  none running")
    return 0


def cmd_instance_list(c: Client, a: argparse.Namespace) -> int:
    if a.quarantined:
        path = "/v1/instances?quarantined=1" + (f"&service={seg(a.service)}" if a.service else "")
        held = c.request("GET", path)["instances"]
        if a.json:
            emit_list(held)
            return 0
        table(held, [("instance", "ID"), ("provider", "PROVIDER"), ("region", "REGION"),
                     ("service", "SERVICE"), ("at", "SINCE"), ("reason", "REASON")],
              empty="no quarantined instances")
        return 0
    r = c.request("GET", "/v1/instances")
    if a.json:
        emit_list(r["instances"])
        return 0
    table(_instance_rows(c, r["instances"]),
          [("id", "ID"), ("provider", "PROVIDER"), ("region", "REGION"), ("service", "SERVICE"),
           ("image", "IMAGE"), ("digest", "DIGEST"), ("image_id", "IMAGE ID"),
           ("address", "ADDRESS"), ("state", "STATE")], empty="no instances")
    return 0


def cmd_instance_terminate(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/instances/{seg(a.id)}/terminate",
                  {"provider": a.provider, "reason": a.reason})
    if a.json:
        emit_json(r)
    else:
        print(f"terminated {r['id']} ({r['provider']}/{r['region']}"
              + (f", service {r['service']}" if r.get("service") else "")
              + f"); recorded at ledger leaf {r['ledger_index']}")
    return 0


def cmd_service_down(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/services/{seg(a.name)}/down", {"reason": a.reason})
    if a.json:
        emit_json(r)
    else:
        print(f"service {r['service']} is down: drained and terminated "
              f"{len(r['terminated'])} instance(s)"
              + (f" ({', '.join(r['terminated'])})" if r["terminated"] else "")
              + f"; recorded at ledger leaf {r['ledger_index']}")
    return 0


def register(sub: Any, add: Any, group: Any) -> None:
    ro = group("rollout", "replace a service's instances with another image")
    sp = add(ro, "start", cmd_start, "start a rollout",
             "immctl rollout start web --image web@v2 --wait")
    sp.add_argument("service", help="a configured service ('immctl service list')")
    sp.add_argument("--image", required=True, metavar="REF",
                    help="the image: name@version, digest, prefix or channel:SERVICE/STAGE")
    sp.add_argument("--strategy", choices=STRATEGIES,
                    help="override the service's strategy for this rollout")
    sp.add_argument("--wait", action="store_true",
                    help="follow progress until it ends (Ctrl-C detaches; the rollout goes on)")
    for name, fn, text in (("status", cmd_status, "one rollout: plan, steps, instances"),
                           ("watch", cmd_watch, "follow a rollout until it ends"),
                           ("analysis", cmd_analysis,
                            "every analysis run of a rollout and its measurements")):
        sp = add(ro, name, fn, text, f"immctl rollout {name} web")
        sp.add_argument("id", metavar="ROLLOUT",
                        help="a rollout id, or a service: its active rollout, else its latest")
    sp = add(ro, "list", cmd_list, "recent rollouts", "immctl rollout list --service web")
    sp.add_argument("--service", help="only this service's rollouts")
    sp.add_argument("--limit", type=ascii_int, default=20, help="at most this many (default 20)")
    for name, text in ((PAUSE, "stop advancing after the current step"),
                       (RESUME, "carry on a paused rollout"),
                       (PROMOTE, "skip the remaining canary steps and pauses"),
                       (ABORT, "roll back now")):
        sp = add(ro, name, verb(name), text, f"immctl rollout {name} web")
        sp.add_argument("id", metavar="ROLLOUT",
                        help="a rollout id, or a service: its active rollout, else its latest")
    sp = add(ro, "undo", cmd_undo, "roll a service back to its previous image (a new rollout)",
             "immctl rollout undo web --wait")
    sp.add_argument("service", help="the service to roll back")
    sp.add_argument("--wait", action="store_true", help="follow progress until it ends")
    sv = group("service", "configured services")
    add(sv, "list", cmd_service_list, "every configured service", "immctl service list")
    sp = add(sv, "show", cmd_service_show, "a service and its live instances",
             "immctl service show web")
    sp.add_argument("name", help="a configured service")
    sp = add(sv, "down", cmd_service_down,
             "take a service down: drain its route, terminate every instance, record it",
             "immctl service down web")
    sp.add_argument("name", help="a configured service")
    sp.add_argument("--reason", help="why, kept in the ledger")
    ins = group("instance", "instances across every provider")
    sp = add(ins, "list", cmd_instance_list, "every instance", "immctl instance list")
    sp.add_argument("--quarantined", action="store_true",
                    help="only the instances taken out of traffic and kept for inspection")
    sp.add_argument("--service", help="with --quarantined: only this service's")
    sp = add(ins, "terminate", cmd_instance_terminate,
             "terminate one instance (refused while a rollout owns it), recorded in the ledger",
             "immctl instance terminate i-3f2a9c01")
    sp.add_argument("id", help="the instance id ('immctl instance list')")
    sp.add_argument("--provider", help="the provider, when the id alone is ambiguous")
    sp.add_argument("--reason", help="why, kept in the ledger")
