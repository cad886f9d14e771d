"""immctl rollout / service / instance commands."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import EXIT_ERROR
from ..rollout.states import ABORT, COMPLETED, PAUSE, PROMOTE, RESUME, STRATEGIES, TERMINAL
from .client import Client, seg
from .render import block, emit_json, short, table


def progress_line(r: dict[str, Any]) -> str:
    plan = r["plan"]
    done = sum(1 for s in plan if s["status"] == "done")
    new = [i for i in r["instances"] if i["new"]]
    healthy = sum(1 for i in new if i["healthy"])
    w_new = sum(i["weight"] or 0 for i in r["instances"] if i["new"])
    w_all = sum(i["weight"] or 0 for i in r["instances"]) or 1
    traffic = f"{100 * w_new // w_all}%" if r["instances"] else "-"
    return (f"[{r['elapsed_s']:>4}s] {r['state']:<12} step {done}/{len(plan)} "
            f"{(r['step'] or '-'):<10} new {len(new)} launched, {healthy} healthy, "
            f"traffic to new {traffic}")


def follow(c: Client, rid: str, as_json: bool) -> int:
    last = ""
    tty = sys.stderr.isatty()
    while True:
        r = c.request("GET", f"/v1/rollouts/{seg(rid)}")
        line = progress_line(r)
        if line != last and not as_json:
            sys.stderr.write(("\r\033[K" if tty else "") + line + ("" if tty else "\n"))
            sys.stderr.flush()
            last = line
        if r["state"] in TERMINAL:
            if tty and not as_json:
                sys.stderr.write("\n")
            break
        time.sleep(0.2)
    if as_json:
        emit_json(r)
    elif r["state"] == COMPLETED:
        print(f"rollout {rid} completed: {r['service']} runs {r['image_ref']} ({short(r['image'])})")
    else:
        print(f"rollout {rid} {r['state']}: {r['error']}", file=sys.stderr)
    return 0 if r["state"] == COMPLETED else EXIT_ERROR


def show(r: dict[str, Any]) -> None:
    block([("rollout", r["id"]), ("service", r["service"]), ("strategy", r["strategy"]),
           ("state", r["state"]), ("image", f"{r['image_ref']} {r['image']}"),
           ("previous", r["previous"]), ("started", f"{r['created_at']} by {r['actor']}"),
           ("elapsed", f"{r['elapsed_s']}s"), ("error", r["error"])])
    print("plan:")
    table(r["plan"], [("name", "  STEP"), ("status", "STATUS")])
    if r["instances"]:
        print("instances:")
        table(r["instances"], [("id", "  ID"), ("new", "NEW"), ("weight", "WEIGHT"),
                               ("healthy", "HEALTHY"), ("state", "STATE")])


def cmd_start(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", "/v1/rollouts", {"service": a.service, "image": a.image,
                                           "strategy": a.strategy})
    if a.wait:
        if not a.json:
            print(f"rollout {r['id']} started ({r['strategy']}, {len(r['plan'])} steps)")
        return follow(c, r["id"], a.json)
    if a.json:
        emit_json(r)
    else:
        print(f"rollout {r['id']} started; 'immctl rollout watch {r['id']}' follows it")
    return 0


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/rollouts/{seg(a.id)}")
    if a.json:
        emit_json(r)
    else:
        show(r)
    return 0


def cmd_watch(c: Client, a: argparse.Namespace) -> int:
    return follow(c, a.id, a.json)


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/rollouts", query={"service": a.service, "limit": a.limit})
    if a.json:
        emit_json(r["rollouts"])
        return 0
    for x in r["rollouts"]:
        x["img"] = short(x["digest"])
    table(r["rollouts"], [("id", "ID"), ("service", "SERVICE"), ("strategy", "STRATEGY"),
                          ("state", "STATE"), ("img", "IMAGE"), ("created_at", "STARTED"),
                          ("actor", "BY")], empty="no rollouts yet")
    return 0


def verb(name: str) -> Any:
    def run(c: Client, a: argparse.Namespace) -> int:
        r = c.request("POST", f"/v1/rollouts/{seg(a.id)}/{name}", {})
        if a.json:
            emit_json(r)
        else:
            print(f"rollout {a.id}: {name} -> {r['state']}")
        return 0
    return run


def cmd_undo(c: Client, a: argparse.Namespace) -> int:
    r = c.request("POST", f"/v1/services/{seg(a.service)}/undo", {})
    if a.wait:
        return follow(c, r["id"], a.json)
    if a.json:
        emit_json(r)
    else:
        print(f"rollout {r['id']} started: {a.service} back to {short(r['image'])}")
    return 0


def cmd_service_list(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", "/v1/services")
    if a.json:
        emit_json(r["services"])
        return 0
    table(r["services"], [("name", "SERVICE"), ("count", "COUNT"), ("strategy", "STRATEGY"),
                          ("router", "ROUTER"), ("route", "ROUTE"), ("channel", "CHANNEL")],
          empty="no services configured: declare [services.NAME] in the config")
    return 0


def cmd_service_show(c: Client, a: argparse.Namespace) -> int:
    r = c.request("GET", f"/v1/services/{seg(a.name)}")
    if a.json:
        emit_json(r)
        return 0
    block([("service", r["name"]), ("count", r["count"]), ("strategy", r["strategy"]),
           ("router", f"{r['router']} route {r['route']}"), ("channel", r["channel"]),
           ("min ladder step", r["min_ladder_step"])])
    print("instances:")
    rows = [{"id": i["id"], "provider": i["provider"], "region": i["region"],
             "digest": short(i["tags"].get("imm:digest")), "rollout": i["tags"].get("imm:rollout"),
             "address": i["address"], "state": i["state"]} for i in r["instances"]]
    table(rows, [("id", "  ID"), ("provider", "PROVIDER"), ("region", "REGION"),
                 ("digest", "IMAGE"), ("rollout", "ROLLOUT"), ("address", "ADDRESS"),
                 ("state", "STATE")])
    return 0


def cmd_instance_list(c: Client, a: argparse.Namespace) -> int:
    if a.quarantined:
        path = "/v1/instances?quarantined=1" + (f"&service={seg(a.service)}" if a.service else "")
        held = c.request("GET", path)["instances"]
        if a.json:
            emit_json(held)
            return 0
        table(held, [("instance", "ID"), ("provider", "PROVIDER"), ("region", "REGION"),
                     ("service", "SERVICE"), ("at", "SINCE"), ("reason", "REASON")],
              empty="no quarantined instances")
        return 0
    r = c.request("GET", "/v1/instances")
    if a.json:
        emit_json(r["instances"])
        return 0
    rows = [{"id": i["id"], "provider": i["provider"], "region": i["region"],
             "service": i["tags"].get("imm:service"), "digest": short(i["tags"].get("imm:digest")),
             "image_id": i["image_id"], "address": i["address"], "state": i["state"]}
            for i in r["instances"]]
    table(rows, [("id", "ID"), ("provider", "PROVIDER"), ("region", "REGION"),
                 ("service", "SERVICE"), ("digest", "IMAGE"), ("image_id", "IMAGE ID"),
                 ("address", "ADDRESS"), ("state", "STATE")], empty="no instances")
    return 0


def register(sub: Any, add: Any, group: Any) -> None:
    ro = group("rollout", "replace a service's instances with another image")
    sp = add(ro, "start", cmd_start, "start a rollout")
    sp.add_argument("service")
    sp.add_argument("--image", required=True, metavar="REF")
    sp.add_argument("--strategy", choices=STRATEGIES)
    sp.add_argument("--wait", action="store_true", help="follow progress until it ends")
    for name, fn, text in (("status", cmd_status, "one rollout: plan, steps, instances"),
                           ("watch", cmd_watch, "follow a rollout until it ends")):
        sp = add(ro, name, fn, text)
        sp.add_argument("id")
    sp = add(ro, "list", cmd_list, "recent rollouts")
    sp.add_argument("--service")
    sp.add_argument("--limit", type=int, default=20)
    for name, text in ((PAUSE, "stop advancing after the current step"),
                       (RESUME, "carry on a paused rollout"),
                       (PROMOTE, "skip the remaining canary steps and pauses"),
                       (ABORT, "roll back now")):
        sp = add(ro, name, verb(name), text)
        sp.add_argument("id")
    sp = add(ro, "undo", cmd_undo, "roll a service back to its previous image (a new rollout)")
    sp.add_argument("service")
    sp.add_argument("--wait", action="store_true")
    sv = group("service", "configured services")
    add(sv, "list", cmd_service_list, "every configured service")
    sp = add(sv, "show", cmd_service_show, "a service and its live instances")
    sp.add_argument("name")
    ins = group("instance", "instances across every provider")
    sp = add(ins, "list", cmd_instance_list, "every instance")
    sp.add_argument("--quarantined", action="store_true",
                    help="only the instances taken out of traffic and kept for inspection")
    sp.add_argument("--service", help="with --quarantined: only this service's")
