"""Services as the config declares them: ``[services.NAME]``.

    [services.web]
    targets = [{ provider = "local", region = "local", count = 2 }]   # or provider/region/count
    size = ""                       # instance size (cloud instance type)
    router = "haproxy"              # a [routers.NAME]
    route = "web"                   # the route in that router (haproxy backend, DNS name, LB)
    route_settings = { bind = "127.0.0.1:8080", health_path = "/healthz" }
    strategy = "blue-green"         # blue-green | rolling | canary
    health_timeout_s = 60           # a new instance must pass its health check within this
    drain_timeout_s = 30            # how long old instances' sessions may take to finish
    bake_time_s = 0                 # blue-green: keep blue this long after the switch
    batch = "50%"                   # rolling: instances per batch, a count or a percentage
    canary_steps = [10, 50]         # canary: traffic percentages before 100; "approve" holds
                                    #   the split until k approvers sign ([protect.NAME])
    approve_timeout_s = 3600        # canary: how long an "approve" step waits, then rolls back
    canary_pause_s = 5              # canary: pause (and gate) after each step
    canary_surge = 1                # canary: new instances beyond ceil(weight × count)
    min_ladder_step = 0             # refuse images below this ladder step
    channel = "web/production"      # only images published on this channel may roll out
    max_instance_age_s = 0          # audit: instances older than this are 'too-old' (0 = off)
    heal_grace_s = 30               # outside rollouts: replace an instance unhealthy this long
    heal_max_per_min = 3            # ... at most this many replacements a minute, then a finding
    quarantine_keep = 3             # replaced instances kept stopped for inspection (oldest go)
    waves = [["aws/us-east-1"], ["aws/eu-west-1", "gcp/europe-west1"]]
                                    # the targets (provider/region) in ordered waves: the
                                    #   strategy runs wave by wave, each wave baked and its
                                    #   each-wave analyses passed before the next starts; a wave
                                    #   may be a table { targets = [...], bake_s = 600 }
    wave_bake_s = 0                 # how long each wave bakes (a wave's own bake_s wins)

    [[services.web.analysis]]       # any number; see imm/rollout/analysis.py
    name = "error-ratio"
    kind = "prometheus"             # prometheus | http | compare | a plugin's kind
    when = "each-step"              # before-traffic | each-step | each-wave | background
    query = '...'                   # the kind's own keys
    failure_condition = "result >= 0.05"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import BadRequest, ConfigError
from ..plugins.analysis import AnalysisKind, AnalysisRegistry, Condition
from ..plugins.analysis_base import option
from .states import BLUE_GREEN, STRATEGIES

WHEN = ("before-traffic", "each-step", "each-wave", "background")
_COMMON = frozenset({"name", "kind", "when", "dry_run", "interval_s", "count", "initial_delay_s",
                     "failure_limit", "inconclusive_limit", "consecutive_error_limit",
                     "success_condition", "failure_condition"})


@dataclass
class AnalysisSpec:
    """One ``[[services.NAME.analysis]]`` entry, validated, with its kind built."""

    name: str
    kind: str
    when: str
    measure: AnalysisKind
    success: Condition | None
    failure: Condition | None
    dry_run: bool = False
    interval_s: float = 1.0
    count: int = 1
    initial_delay_s: float = 0.0
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "when": self.when, "dry_run": self.dry_run,
                "count": self.count, "interval_s": self.interval_s,
                "success_condition": self.success.text if self.success else None,
                "failure_condition": self.failure.text if self.failure else None}


def parse_analysis(service: str, i: int, raw: Any, kinds: AnalysisRegistry | None,
                   defaults: Mapping[str, Any]) -> AnalysisSpec:
    where = f"[[services.{service}.analysis]] #{i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    name = raw.get("name", f"analysis-{i + 1}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be lowercase letters, digits and '-'")
    where = f"[[services.{service}.analysis]] {name}"
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: kind must be a string, e.g. \"prometheus\", got {kind!r}")
    if kinds is None:
        raise ConfigError(f"{where}: no analysis kinds are registered here")
    cls = kinds.get(kind, where)
    unknown = sorted(set(raw) - _COMMON - cls.keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for kind {kind!r}; "
                          f"known: {', '.join(sorted(_COMMON | cls.keys))}")
    when = raw.get("when", "each-step")
    if when not in WHEN:
        raise ConfigError(f"{where}: when {when!r}; use one of {', '.join(WHEN)}")
    measure = cls(where, raw, defaults)
    success = (Condition(f"{where} success_condition", raw["success_condition"], cls.variables)
               if "success_condition" in raw else None)
    failure = (Condition(f"{where} failure_condition", raw["failure_condition"], cls.variables)
               if "failure_condition" in raw else None)
    if success is None and failure is None:
        raise ConfigError(f"{where}: give a success_condition or a failure_condition (or both) "
                          f"over {', '.join(cls.variables)}")
    return AnalysisSpec(
        name=name, kind=kind, when=when, measure=measure, success=success, failure=failure,
        dry_run=option(raw, where, "dry_run", False, bool),
        interval_s=option(raw, where, "interval_s", 1.0, float, 0),
        count=option(raw, where, "count", 1, int, 1),
        initial_delay_s=option(raw, where, "initial_delay_s", 0.0, float, 0),
        failure_limit=option(raw, where, "failure_limit", 0, int, 0),
        inconclusive_limit=option(raw, where, "inconclusive_limit", 0, int, 0),
        consecutive_error_limit=option(raw, where, "consecutive_error_limit", 4, int, 0))

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass
class Target:
    provider: str
    region: str
    count: int


@dataclass
class Wave:
    """Targets rolled out together; the next wave starts after this one's bake and analyses."""

    targets: list[Target]
    bake_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(t.count for t in self.targets)

    def to_param(self, number: int) -> dict[str, Any]:
        """The wave as a rollout stores it (its plan keeps it across config reloads)."""
        return {"wave": number, "bake_s": self.bake_s,
                "targets": [{"provider": t.provider, "region": t.region, "count": t.count}
                            for t in self.targets]}


@dataclass
class Service:
    name: str
    targets: list[Target]
    router: str | None
    route: str | None
    route_settings: dict[str, Any] = field(default_factory=dict)
    size: str | None = None
    strategy: str = BLUE_GREEN
    health_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    bake_time_s: float = 0.0
    batch: str = "1"
    canary_steps: list[int | str] = field(default_factory=lambda: [10, 50])
    canary_pause_s: float = 5.0
    approve_timeout_s: float = 3600.0  # an "approve" canary step waits this long, then rolls back
    canary_surge: int = 1
    min_ladder_step: int = 0
    channel: str | None = None
    max_instance_age_s: int = 0
    heal_grace_s: float = 30.0
    heal_max_per_min: int = 3
    quarantine_keep: int = 3
    settings: dict[str, Any] = field(default_factory=dict)
    analysis: list[AnalysisSpec] = field(default_factory=list)
    waves: list[Wave] = field(default_factory=list)  # empty: all targets at once, as one wave
    wave_bake_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(t.count for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, settings={}, analysis=[]))
        d.pop("settings")
        d["analysis"] = [a.to_dict() for a in self.analysis]
        return d


def _num(where: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise ConfigError(f"{where} must be a number ≥ {lo}, got {value!r}")
    return float(value)


def _int(where: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{where} must be an integer ≥ {lo}, got {value!r}")
    return value


def parse_service(name: str, raw: dict[str, Any], providers: set[str],
                  routers: set[str], kinds: AnalysisRegistry | None = None,
                  defaults: Mapping[str, Any] | None = None) -> Service:
    where = f"[services.{name}]"
    if not NAME.match(name):
        raise ConfigError(f"{where}: service names are lowercase letters, digits and '-'")
    targets_raw = raw.get("targets")
    if targets_raw is None:
        targets_raw = [{"provider": raw.get("provider"), "region": raw.get("region", "local"),
                        "count": raw.get("count", 1)}]
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ConfigError(f"{where}: targets must be a non-empty list of "
                          "{{provider, region, count}}")
    targets = []
    for i, t in enumerate(targets_raw):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: targets[{i}] must be a table")
        p = t.get("provider")
        if p not in providers:
            raise ConfigError(f"{where}: targets[{i}].provider {p!r} is not a configured provider "
                              f"(have: {', '.join(sorted(providers)) or 'none'})")
        count = t.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}: targets[{i}].count must be an integer ≥ 1")
        targets.append(Target(provider=p, region=str(t.get("region", "local")), count=count))
    router = raw.get("router")
    if router is not None and router not in routers:
        raise ConfigError(f"{where}: router {router!r} is not a configured router "
                          f"(have: {', '.join(sorted(routers)) or 'none'})")
    strategy = raw.get("strategy", BLUE_GREEN)
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    steps = raw.get("canary_steps", [10, 50])
    pcts = [s for s in steps if s != "approve"] if isinstance(steps, list) else None
    if pcts is None or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 100
                               for s in pcts) or pcts != sorted(pcts):
        raise ConfigError(f"{where}: canary_steps must be increasing percentages between 1 and 99"
                          ", with \"approve\" where a manual judgment holds the split")
    surge = raw.get("canary_surge", 1)
    if isinstance(surge, bool) or not isinstance(surge, int) or surge < 0:
        raise ConfigError(f"{where}: canary_surge must be an integer ≥ 0, got {surge!r}")
    ladder = raw.get("min_ladder_step", 0)
    if not isinstance(ladder, int) or not 0 <= ladder <= 4:
        raise ConfigError(f"{where}: min_ladder_step must be 0..4")
    batch = str(raw.get("batch", "1"))
    parse_batch(batch, 1, where)
    entries = raw.get("analysis", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: analysis must be an array of tables "
                          f"([[services.{name}.analysis]])")
    analysis = [parse_analysis(name, i, a, kinds, defaults or {}) for i, a in enumerate(entries)]
    names = [a.name for a in analysis]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: analysis names must differ, got {names}")
    wave_bake = _num(f"{where} wave_bake_s", raw.get("wave_bake_s", 0), 0)
    waves = parse_waves(where, raw.get("waves"), targets, wave_bake)
    each_wave = [a.name for a in analysis if a.when == "each-wave"]
    if each_wave and not waves:
        raise ConfigError(f"{where}: analysis {', '.join(each_wave)} runs when = \"each-wave\" "
                          "but the service has no waves; add waves = [[\"provider/region\", "
                          "...], ...] (one wave of every target is allowed) or use another when")
    return Service(
        name=name, targets=targets, router=router, waves=waves, wave_bake_s=wave_bake,
        route=str(raw.get("route", name)) if router else None,
        route_settings=dict(raw.get("route_settings", {})), size=raw.get("size") or None,
        strategy=strategy,
        health_timeout_s=_num(f"{where} health_timeout_s", raw.get("health_timeout_s", 60), 1),
        drain_timeout_s=_num(f"{where} drain_timeout_s", raw.get("drain_timeout_s", 30), 0),
        bake_time_s=_num(f"{where} bake_time_s", raw.get("bake_time_s", 0), 0),
        batch=batch, canary_steps=list(steps),
        canary_pause_s=_num(f"{where} canary_pause_s", raw.get("canary_pause_s", 5), 0),
        approve_timeout_s=_num(f"{where} approve_timeout_s", raw.get("approve_timeout_s", 3600),
                               1),
        canary_surge=surge,
        min_ladder_step=ladder, channel=raw.get("channel") or None,
        max_instance_age_s=int(raw.get("max_instance_age_s", 0)), settings=dict(raw),
        analysis=analysis,
        heal_grace_s=_num(f"{where} heal_grace_s", raw.get("heal_grace_s", 30), 0),
        heal_max_per_min=_int(f"{where} heal_max_per_min", raw.get("heal_max_per_min", 3), 1),
        quarantine_keep=_int(f"{where} quarantine_keep", raw.get("quarantine_keep", 3), 0),
    )


def target_key(provider: str, region: str) -> str:
    return f"{provider}/{region}"


def parse_waves(where: str, raw: Any, targets: list[Target], bake_s: float) -> list[Wave]:
    """``waves`` of a service: every target (``provider/region``) in exactly one wave."""
    if raw is None:
        return []
    example = 'e.g. waves = [["aws/us-east-1"], ["aws/eu-west-1", "gcp/europe-west1"]]'
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: waves must be a non-empty list of waves, each a list of "
                          f"the service's targets as \"provider/region\"; {example}, got {raw!r}")
    by_key: dict[str, list[Target]] = {}
    for t in targets:
        by_key.setdefault(target_key(t.provider, t.region), []).append(t)
    known = ", ".join(by_key)
    seen: dict[str, int] = {}
    waves: list[Wave] = []
    for n, entry in enumerate(raw, 1):
        here = f"{where}: wave {n}"
        bake = bake_s
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"targets", "bake_s"})
            if extra:
                raise ConfigError(f"{here}: unknown key(s) {', '.join(extra)}; a wave table has "
                                  "targets and bake_s")
            bake = _num(f"{here} bake_s", entry.get("bake_s", bake_s), 0)
            entry = entry.get("targets")
        if not isinstance(entry, list) or not entry:
            raise ConfigError(f"{here} must be a non-empty list of \"provider/region\" targets "
                              f"(or a table {{ targets = [...], bake_s = N }}); {example}, "
                              f"got {entry!r}")
        members: list[Target] = []
        for key in entry:
            if not isinstance(key, str) or key not in by_key:
                raise ConfigError(f"{here}: {key!r} is not one of the service's targets "
                                  f"({known}); name each as \"provider/region\"")
            if key in seen:
                raise ConfigError(f"{here}: target {key!r} is already in wave {seen[key]}; each "
                                  "target belongs to exactly one wave")
            seen[key] = n
            members += by_key[key]
        waves.append(Wave(targets=members, bake_s=bake))
    missing = [k for k in by_key if k not in seen]
    if missing:
        raise ConfigError(f"{where}: target(s) {', '.join(repr(k) for k in missing)} in no wave; "
                          "put each of the service's targets in exactly one wave")
    return waves


def parse_batch(batch: str, total: int, where: str = "batch") -> int:
    """Instances per rolling batch: a count, or a percentage of the service's count."""
    text = batch.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, int(total * pct / 100))
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise BadRequest(f"{where} {batch!r} must be a count ≥ 1 or a percentage like 25%") from None


def load_services(raw: dict[str, dict[str, Any]], providers: set[str], routers: set[str],
                  kinds: AnalysisRegistry | None = None,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Service]:
    return {name: parse_service(name, entry, providers, routers, kinds, defaults)
            for name, entry in raw.items()}
